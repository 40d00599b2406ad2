//! Pass-through behaviour the differential test does not cover: permissions for other
//! users, ownership of what they create, xattrs, sparse files (SEEK_DATA/SEEK_HOLE), statfs.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::process::Command;

use testkit::*;

/// Runs `sh -c script` as user `nobody`; returns whether it succeeded.
fn as_nobody(script: &str) -> bool {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .status()
        .unwrap()
        .success()
}

#[test]
fn permissions_and_ownership_follow_the_caller() {
    let tmp = scratch();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("vms");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("secret.img"), b"root only").unwrap();
    fs::set_permissions(dir.join("secret.img"), fs::Permissions::from_mode(0o600)).unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    let secret = m.path("secret.img");
    assert!(
        !as_nobody(&format!("cat {}", secret.display())),
        "nobody read a 0600 root file"
    );
    assert!(!as_nobody(&format!("echo x >> {}", secret.display())));
    // A shared directory: what nobody creates is owned by nobody.
    fs::create_dir(m.path("shared")).unwrap();
    fs::set_permissions(m.path("shared"), fs::Permissions::from_mode(0o777)).unwrap();
    let mine = m.path("shared/mine");
    assert!(as_nobody(&format!("echo hello > {}", mine.display())));
    let md = fs::metadata(&mine).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
    assert_eq!(fs::read(&mine).unwrap(), b"hello\n");
    // The sealed and active logs are read-only even for root, and unreadable for nobody
    // when the tracker's umask makes them so: at least nobody cannot write them.
    assert!(!as_nobody(&format!(
        "echo x >> {}",
        m.path("secret.img.hrl").display()
    )));
    m.unmount();
}

#[test]
fn xattrs_sparse_files_and_statfs_pass_through() {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    fs::create_dir_all(&dir).unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));

    // xattrs
    let f = m.path("note.txt");
    fs::write(&f, b"x").unwrap();
    let path = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
    let name = c"user.hrl";
    // SAFETY: valid C strings and buffers for every call below.
    unsafe {
        assert_eq!(
            libc::setxattr(path.as_ptr(), name.as_ptr(), b"yes".as_ptr().cast(), 3, 0),
            0,
            "setxattr: {}",
            std::io::Error::last_os_error()
        );
        let mut buf = [0u8; 16];
        let n = libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        );
        assert_eq!(&buf[..n as usize], b"yes");
        let mut list = [0u8; 256];
        let n = libc::listxattr(path.as_ptr(), list.as_mut_ptr().cast(), list.len());
        assert!(list[..n as usize]
            .split(|b| *b == 0)
            .any(|x| x == b"user.hrl"));
        assert_eq!(libc::removexattr(path.as_ptr(), name.as_ptr()), 0);
        let n = libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        );
        assert_eq!(n, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENODATA)
        );
    }

    // A sparse disk stays sparse and reports its data and holes.
    let disk = m.path("sparse.raw");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&disk)
        .unwrap();
    file.set_len(64 << 20).unwrap();
    file.write_all_at(&[1u8; 4096], 32 << 20).unwrap();
    file.sync_all().unwrap();
    // SAFETY: plain lseek on an open descriptor.
    let data = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_DATA) };
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(file.as_raw_fd(), 32 << 20, libc::SEEK_HOLE) };
    assert_eq!(data, 32 << 20);
    assert!(hole > (32 << 20) && hole < (64 << 20), "hole at {hole}");
    let md = fs::metadata(&disk).unwrap();
    assert!(
        md.blocks() * 512 < (1 << 20),
        "the image was filled in: {} blocks",
        md.blocks()
    );
    drop(file);

    // statfs is the backing filesystem's.
    let a = run(Command::new("stat")
        .args(["-f", "-c", "%b %S"])
        .arg(&m.mountpoint));
    let m_stat = a.clone();
    m.unmount();
    let b = run(Command::new("stat").args(["-f", "-c", "%b %S"]).arg(&dir));
    assert_eq!(m_stat, b);
}

/// A shared read-only mapping of `len` bytes of `f`, unmapped on drop.
struct Mapping(*mut libc::c_void, usize);

impl Mapping {
    fn of(f: &fs::File, len: usize) -> Mapping {
        // SAFETY: a fresh mapping of an open descriptor; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        Mapping(p, len)
    }
    fn bytes(&self) -> Vec<u8> {
        // SAFETY: the mapping holds self.1 readable bytes until drop.
        unsafe { std::slice::from_raw_parts(self.0 as *const u8, self.1) }.to_vec()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `of` with this length.
        unsafe { libc::munmap(self.0, self.1) };
    }
}

/// Writable opens of a disk bypass the kernel's page cache (parallel direct writes) while
/// read-only opens keep it: a reader that has the disk cached, read or mapped, must still
/// see every write at once, of any size and alignment, and through a writer's shared mapping.
#[test]
fn readers_see_writes_of_a_disk_at_once() {
    const LEN: usize = 1 << 20;
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    fs::create_dir_all(&dir).unwrap();
    let mut model = pattern(1, LEN);
    fs::write(dir.join("d.img"), &model).unwrap();
    let base = tmp.path().join("base.img");
    fs::copy(dir.join("d.img"), &base).unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    let reader = fs::File::open(m.path("d.img")).unwrap();
    let writer = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("d.img"))
        .unwrap();
    let mapped = Mapping::of(&reader, LEN);
    let read_all = || {
        let mut buf = vec![0u8; LEN];
        reader.read_exact_at(&mut buf, 0).unwrap();
        buf
    };
    assert!(read_all() == model && mapped.bytes() == model, "cached");
    // Odd sizes and offsets, inside a page, across pages, a whole aligned block.
    for (i, &(off, len)) in [
        (4097usize, 1usize),
        (12345, 3000),
        (8192, 4096),
        (LEN - 7, 7),
    ]
    .iter()
    .enumerate()
    {
        let data = pattern(10 + i as u64, len);
        writer.write_all_at(&data, off as u64).unwrap();
        model[off..off + len].copy_from_slice(&data);
        assert!(read_all() == model, "write {i}: a cached reader sees it");
        assert!(
            mapped.bytes() == model,
            "write {i}: a reader's mapping sees it"
        );
        let mut back = vec![0u8; len];
        writer.read_exact_at(&mut back, off as u64).unwrap();
        assert_eq!(back, data, "write {i}: the writer reads it back");
    }
    // A writer's shared writable mapping: its bytes reach readers once synced.
    // SAFETY: a fresh mapping of an open descriptor; checked below, unmapped at the end.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            writer.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "a shared writable mapping of a disk");
    let data = pattern(20, 5000);
    // SAFETY: [100, 5100) lies inside the LEN-byte mapping.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), (p as *mut u8).add(100), data.len());
        assert_eq!(libc::msync(p, LEN, libc::MS_SYNC), 0);
        libc::munmap(p, LEN);
    }
    model[100..5100].copy_from_slice(&data);
    assert!(
        read_all() == model,
        "a mapped write, synced, reaches a cached reader"
    );
    drop((mapped, reader, writer));
    m.seal();
    m.unmount();
    assert!(
        fs::read(dir.join("d.img")).unwrap() == model,
        "the image has every write"
    );
    assert_replay_equals(&base, &dir, "d.img", &dir.join("d.img"));
}

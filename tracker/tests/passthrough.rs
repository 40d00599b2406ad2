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

//! Replay: change a disk through every path (pwrite, O_DIRECT, shared mmap, truncate, punch,
//! zero range, fallocate, copy_file_range, O_TRUNC), seal, replay the sealed logs onto the
//! pre-mount copy: the result equals the live disk byte for byte.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use testkit::*;

const MIB: u64 = 1 << 20;

fn direct_write(path: &std::path::Path, off: u64, data: &[u8]) {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap();
    let layout = std::alloc::Layout::from_size_align(data.len(), 4096).unwrap();
    // SAFETY: layout has non-zero size; the buffer is filled before use and freed below.
    unsafe {
        let buf = std::alloc::alloc(layout);
        std::ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len());
        let n = libc::pwrite(f.as_raw_fd(), buf.cast(), data.len(), off as i64);
        std::alloc::dealloc(buf, layout);
        assert_eq!(n, data.len() as isize, "O_DIRECT pwrite");
    }
}

fn mmap_write(path: &std::path::Path, off: u64, data: &[u8]) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = (off as usize + data.len()).next_multiple_of(4096);
    // SAFETY: a shared mapping of a file we keep open; unmapped below.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        std::ptr::copy_nonoverlapping(data.as_ptr(), p.cast::<u8>().add(off as usize), data.len());
        assert_eq!(libc::msync(p, len, libc::MS_SYNC), 0, "msync");
        libc::munmap(p, len);
    }
}

fn fallocate(path: &std::path::Path, mode: i32, off: u64, len: u64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    // SAFETY: plain syscall.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
    assert_eq!(
        r,
        0,
        "fallocate mode {mode}: {}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn every_change_path_replays_byte_for_byte() {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    let run_dir = tmp.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let disk_name = "disk0.img";
    std::fs::write(dir.join(disk_name), pattern(1, 16 * MIB as usize)).unwrap();
    let base = tmp.path().join("base.img");
    std::fs::copy(dir.join(disk_name), &base).unwrap();

    let m = Mounted::in_place(&dir, &run_dir);
    let disk = m.path(disk_name);

    // Plain positioned writes, unaligned and large.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    f.write_all_at(&pattern(2, 4096), 12288).unwrap();
    f.write_all_at(&pattern(3, 1000), 777).unwrap();
    f.write_all_at(&pattern(4, 3 * MIB as usize), 5 * MIB + 123)
        .unwrap();
    f.sync_all().unwrap();
    drop(f);
    // O_DIRECT.
    direct_write(&disk, MIB, &pattern(5, 65536));
    // Shared writable mmap.
    mmap_write(&disk, 2 * MIB + 100, &pattern(6, 10000));
    let first = m.seal();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].disk, disk_name);
    assert!(first[0].records >= 5, "records: {}", first[0].records);

    // Grow by truncate, write past the old end, punch, zero, allocate.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    f.set_len(20 * MIB).unwrap();
    f.write_all_at(&pattern(7, 8192), 19 * MIB).unwrap();
    drop(f);
    fallocate(
        &disk,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        3 * MIB,
        MIB,
    );
    fallocate(&disk, libc::FALLOC_FL_ZERO_RANGE, 7 * MIB + 4096, 20000);
    fallocate(&disk, 0, 20 * MIB, 2 * MIB);
    // copy_file_range from a plain file into the disk.
    let src = m.path("payload.bin");
    std::fs::write(&src, pattern(8, 300_000)).unwrap();
    let fi = File::open(&src).unwrap();
    let fo = OpenOptions::new().write(true).open(&disk).unwrap();
    let mut oi: i64 = 1000;
    let mut oo: i64 = (9 * MIB) as i64;
    let mut left = 200_000usize;
    while left > 0 {
        // SAFETY: valid fds and offset pointers.
        let n = unsafe {
            libc::copy_file_range(fi.as_raw_fd(), &mut oi, fo.as_raw_fd(), &mut oo, left, 0)
        };
        assert!(
            n > 0,
            "copy_file_range: {}",
            std::io::Error::last_os_error()
        );
        left -= n as usize;
    }
    drop(fo);
    drop(fi);
    m.seal();

    // Shrink, and a write that leaves a hole past the end.
    let f = OpenOptions::new().write(true).open(&disk).unwrap();
    f.set_len(15 * MIB + 5).unwrap();
    f.write_all_at(b"tail", 17 * MIB).unwrap();
    drop(f);
    let sealed = m.seal();
    assert_eq!(sealed[0].seq, first[0].seq + 2);

    let logs = sealed_logs(&m.mountpoint, disk_name);
    assert_eq!(logs.len(), 3);
    let out = scratch();
    let replayed = replay(&base, &logs, out.path());
    assert_files_equal(&replayed, &disk);

    // O_TRUNC empties the disk: recorded too.
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&disk)
        .unwrap()
        .write_all_at(b"fresh start", 0)
        .unwrap();
    m.seal();
    let logs = sealed_logs(&m.mountpoint, disk_name);
    let out2 = scratch();
    let replayed = replay(&base, &logs, out2.path());
    assert_files_equal(&replayed, &disk);
    m.unmount();

    // After a clean unmount the active log is closed cleanly and the backing image matches.
    let replayed_again = scratch();
    let r = replay(&base, &sealed_logs(&dir, disk_name), replayed_again.path());
    assert_files_equal(&r, &dir.join(disk_name));
    let (_, rec) =
        hrl::log::LogWriter::open_append(&hrl::naming::active_log_path(&dir.join(disk_name)))
            .unwrap();
    assert!(rec.was_clean, "active log was not closed cleanly");
    assert_eq!(rec.torn_at, None);
}

#[test]
fn separate_mountpoint_tracks_too() {
    let tmp = scratch();
    let backing = tmp.path().join("backing");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let m = Mounted::separate(&backing, &mnt, &tmp.path().join("run"));
    // A disk created through the mount starts its own chain.
    std::fs::write(m.path("new.raw"), pattern(9, 200_000)).unwrap();
    let sealed = m.seal();
    assert_eq!(sealed.len(), 1);
    assert_eq!(sealed[0].disk, "new.raw");
    let empty = tmp.path().join("empty.raw");
    File::create(&empty).unwrap();
    let out = scratch();
    let r = replay(&empty, &sealed_logs(&backing, "new.raw"), out.path());
    assert_files_equal(&r, &backing.join("new.raw"));
    m.unmount();
}

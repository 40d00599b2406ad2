//! Crash safety: kill -9 of the tracker mid-write, and a backing filesystem that fills up.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hrl::control::Request;
use testkit::*;

const MIB: usize = 1 << 20;

#[test]
fn kill_9_mid_write_loses_nothing_outside_reported_extents() {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let size = 32 * MIB;
    std::fs::write(dir.join("vm.img"), pattern(1, size)).unwrap();
    let base = tmp.path().join("base.img");
    std::fs::copy(dir.join("vm.img"), &base).unwrap();

    let m = Mounted::in_place(&dir, &run);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let path = m.path("vm.img");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let Ok(f) = OpenOptions::new().write(true).open(&path) else {
                    return 0u64;
                };
                let mut n = 0u64;
                let mut seed = w * 1_000_003 + 7;
                while !stop.load(Ordering::Relaxed) {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let len = 512 + (seed >> 40) as usize % (64 * 1024);
                    let off = (seed >> 20) as usize % (size - len);
                    if f.write_all_at(&pattern(seed, len), off as u64).is_err() {
                        break;
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    m.seal();
    std::thread::sleep(Duration::from_millis(300));
    m.seal();
    std::thread::sleep(Duration::from_millis(300));
    m.kill9();
    stop.store(true, Ordering::Relaxed);
    let written: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(written > 10, "the writers barely ran ({written} writes)");

    let m = Mounted::in_place(&dir, &run);
    let st = m.request(&Request::Status).status.unwrap();
    let unclean = st.disks[0].unclean_extents.clone();
    assert!(
        !unclean.is_empty(),
        "writes were in flight at the kill: some extents must be reported"
    );
    // The recovered active log is sealed like any other.
    m.seal();
    m.unmount();

    let logs = sealed_logs(&dir, "vm.img");
    assert!(logs.len() >= 3);
    let out = scratch();
    let replayed = replay(&base, &logs, out.path());
    let a = std::fs::read(&replayed).unwrap();
    let b = std::fs::read(dir.join("vm.img")).unwrap();
    assert_eq!(a.len(), b.len());
    let inside = |i: usize| {
        unclean
            .iter()
            .any(|&(o, l)| (i as u64) >= o && (i as u64) < o + l)
    };
    let mut differing = 0usize;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        if x != y {
            differing += 1;
            assert!(inside(i), "byte {i} differs but lies in no reported extent");
        }
    }
    eprintln!(
        "{written} writes, {} unclean extents, {differing} differing bytes (all covered)",
        unclean.len()
    );
}

/// Unmounts a tmpfs on drop.
struct TmpfsGuard(std::path::PathBuf);
impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        force_unmount(&self.0);
    }
}

/// A tmpfs of `size` (e.g. "12m") mounted at `<tmp>/small`, holding an empty `vms` directory:
/// a backing filesystem that runs out of space. Returns the `vms` path and the unmount guard.
fn small_backing(tmp: &std::path::Path, size: &str) -> (std::path::PathBuf, TmpfsGuard) {
    let small = tmp.join("small");
    std::fs::create_dir_all(&small).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&small));
    let guard = TmpfsGuard(small.clone());
    let dir = small.join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    (dir, guard)
}

#[test]
fn enospc_refuses_the_write_and_replay_still_matches() {
    let tmp = scratch();
    let (dir, _g) = small_backing(tmp.path(), "12m");
    std::fs::write(dir.join("d.raw"), pattern(3, 4 * MIB)).unwrap();
    let base = tmp.path().join("base.raw");
    std::fs::copy(dir.join("d.raw"), &base).unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    // A filler to free later, so the seal has room once the writers have hit the wall.
    std::fs::write(m.path("filler"), vec![0u8; MIB]).unwrap();

    let f = OpenOptions::new()
        .write(true)
        .open(m.path("d.raw"))
        .unwrap();
    let mut refused = None;
    for i in 0..200u64 {
        let off = (i * 37 * 4096) % (4 * MIB as u64 - 65536);
        match f.write_all_at(&pattern(i + 10, 65536), off) {
            Ok(()) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the writes never ran out of space");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    // Another write still fails, and changes nothing.
    let before = std::fs::read(m.path("d.raw")).unwrap();
    assert!(f.write_all_at(&[0xEE; 65536], 0).is_err());
    assert_eq!(std::fs::read(m.path("d.raw")).unwrap(), before);
    drop(f);
    std::fs::remove_file(m.path("filler")).unwrap();
    m.seal();
    assert_replay_equals(&base, &dir, "d.raw", &m.path("d.raw"));
    m.unmount();
}

/// fallocate calls the backing filesystem refuses after their record is logged (ZERO_RANGE is
/// not supported on tmpfs; growing past the free space is ENOSPC): the writer gets the error
/// and the log still replays to exactly the image.
#[test]
fn refused_fallocate_keeps_replay_exact() {
    use std::os::fd::AsRawFd;
    let tmp = scratch();
    let (dir, _g) = small_backing(tmp.path(), "12m");
    std::fs::write(dir.join("d.raw"), pattern(7, 2 * MIB)).unwrap();
    let base = tmp.path().join("base.raw");
    std::fs::copy(dir.join("d.raw"), &base).unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("d.raw"))
        .unwrap();
    let fallocate = |mode: i32, off: i64, len: i64| {
        // SAFETY: plain syscall on an open descriptor.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) };
        (rc == 0)
            .then_some(())
            .ok_or_else(std::io::Error::last_os_error)
    };
    let e = fallocate(libc::FALLOC_FL_ZERO_RANGE, 4096, 65536).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}");
    let e = fallocate(libc::FALLOC_FL_ZERO_RANGE, MIB as i64, 4 * MIB as i64).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}");
    let e = fallocate(0, 0, 64 * MIB as i64).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    // What the filesystem can do still works and is logged.
    fallocate(
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        8192,
        4096,
    )
    .unwrap();
    drop(f);
    m.seal();
    assert_replay_equals(&base, &dir, "d.raw", &m.path("d.raw"));
    m.unmount();
}

/// An image changed while no tracker was mounted — even with its mtime put back — is reported
/// at the next mount: the whole disk is unclean (and marked) until a resync clears it. A clean
/// unmount and remount without such a change reports nothing.
#[test]
fn offline_edit_is_reported_as_unclean_at_mount() {
    use std::os::unix::fs::MetadataExt;
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("d.img"), pattern(8, 3 * MIB)).unwrap();
    let run_dir = tmp.path().join("run");
    let m = Mounted::in_place(&dir, &run_dir);
    std::fs::write(m.path("d.img"), pattern(9, 3 * MIB)).unwrap();
    m.unmount();
    let m = Mounted::in_place(&dir, &run_dir);
    let st = m.request(&Request::Status).status.unwrap();
    assert!(st.disks[0].unclean_extents.is_empty(), "{:?}", st.disks[0]);
    m.unmount();

    // The offline edit, with the mtime set back as `cp -p` or `touch -r` would.
    let img = dir.join("d.img");
    let before = std::fs::metadata(&img).unwrap();
    let f = OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(b"offline", MIB as u64 + 5).unwrap();
    drop(f);
    let c = std::ffi::CString::new(img.to_str().unwrap()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: before.atime(),
            tv_nsec: before.atime_nsec(),
        },
        libc::timespec {
            tv_sec: before.mtime(),
            tv_nsec: before.mtime_nsec(),
        },
    ];
    // SAFETY: valid C string and two timespecs.
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) },
        0
    );
    assert_eq!(
        std::fs::metadata(&img).unwrap().mtime_nsec(),
        before.mtime_nsec()
    );

    let m = Mounted::in_place(&dir, &run_dir);
    let st = m.request(&Request::Status).status.unwrap();
    let unclean = &st.disks[0].unclean_extents;
    let covered: u64 = unclean.iter().map(|&(_, len)| len).sum();
    assert!(
        unclean.iter().any(|&(off, _)| off == 0) && covered >= 3 * MIB as u64,
        "the whole disk must be reported unclean: {unclean:?}"
    );
    m.unmount();
}

#[test]
fn sigterm_unmounts_and_closes_logs_cleanly() {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("d.img"), pattern(5, MIB)).unwrap();
    let mut m = Mounted::in_place(&dir, &tmp.path().join("run"));
    std::fs::write(m.path("d.img"), pattern(6, MIB)).unwrap();
    let mut child = m.child.take().unwrap();
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let st = child.wait().unwrap();
    assert!(st.success(), "tracker exited with {st} on SIGTERM");
    assert!(!is_mounted(&dir));
    let (_, rec) =
        hrl::log::LogWriter::open_append(&hrl::naming::active_log_path(&dir.join("d.img")))
            .unwrap();
    assert!(rec.was_clean && rec.torn_at.is_none());
    assert!(rec.records >= 1);
    // The marks of the unshipped write survive the clean stop (only the shipper's `clear`
    // after a committed point removes them: the bitmap alone covers what is not in a point),
    // and the new mount reports just that range, nothing past the disk.
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    let st = m.request(&Request::Status).status.unwrap();
    let unclean = &st.disks[0].unclean_extents;
    assert!(!unclean.is_empty(), "the unshipped write stays marked");
    assert!(
        unclean.iter().all(|&(off, len)| off + len <= MIB as u64),
        "{unclean:?}"
    );
    m.unmount();
}

/// Free bytes of the filesystem holding `p`.
fn free_bytes(p: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: zeroed statvfs is a valid out-buffer; valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

#[test]
fn acked_logs_read_through_the_mount_free_their_space() {
    let tmp = scratch();
    let (dir, _g) = small_backing(tmp.path(), "48m");
    std::fs::write(dir.join("d.raw"), vec![0u8; MIB]).unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    let f = OpenOptions::new()
        .write(true)
        .open(m.path("d.raw"))
        .unwrap();
    let start_free = free_bytes(&dir);
    // 20 rounds of 8 MiB of logged writes: far more than the 48 MiB filesystem holds, unless
    // acked logs really go away (the shipper reads them through the mount).
    for round in 0..20u64 {
        for i in 0..8u64 {
            f.write_all_at(&pattern(round * 8 + i, MIB), 0).unwrap();
        }
        for s in m.seal() {
            let data = std::fs::read(m.path(&s.log)).unwrap();
            assert_eq!(data.len() as u64, s.bytes);
            let r = m.request(&Request::Ack {
                disk: s.disk.clone(),
                seq: s.seq,
                disk_id: None,
            });
            assert!(r.ok, "{:?}", r.error);
        }
        wait_until(
            Duration::from_secs(10),
            &format!("round {round}: the space of acked logs to be freed"),
            || free_bytes(&dir) + 4 * (MIB as u64) >= start_free,
        );
    }
    drop(f);
    m.unmount();
}

/// Writes `path` in 4 KiB steps until the filesystem is full (ENOSPC).
fn fill_up(path: &std::path::Path) {
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .unwrap();
    let page = vec![0x5Au8; 4096];
    let mut off = 0u64;
    loop {
        match f.write_all_at(&page, off) {
            Ok(()) => off += 4096,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                return;
            }
        }
    }
}

/// A full backing filesystem: creating a disk, or growing one so far that its bitmap must
/// grow, is refused with ENOSPC (the bitmap's blocks are reserved before they are mapped;
/// before, the tracker died of SIGBUS), and everything works again once there is room.
#[test]
fn full_filesystem_refuses_new_disks_and_bitmap_growth_with_enospc() {
    let tmp = scratch();
    let (dir, _g) = small_backing(tmp.path(), "8m");
    std::fs::write(dir.join("d.raw"), pattern(21, MIB)).unwrap();
    let base = tmp.path().join("base.raw");
    std::fs::copy(dir.join("d.raw"), &base).unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    fill_up(&m.path("filler"));

    let e = std::fs::write(m.path("new.img"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert!(
        !m.path("new.img").exists(),
        "a disk that cannot be tracked is not created"
    );
    // 200 GiB needs a second page of bitmap (one page covers 128 GiB of 4 MiB extents).
    let f = OpenOptions::new()
        .write(true)
        .open(m.path("d.raw"))
        .unwrap();
    let e = f.set_len(200 << 30).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert_eq!(f.metadata().unwrap().len(), MIB as u64);
    let st = m.request(&Request::Status).status.unwrap();
    assert_eq!(
        st.disks.len(),
        1,
        "the tracker is alive and still tracks d.raw"
    );

    std::fs::remove_file(m.path("filler")).unwrap();
    f.set_len(200 << 30).unwrap();
    f.write_all_at(b"far out", (150 << 30) + 5).unwrap();
    std::fs::write(m.path("new.img"), b"now there is room").unwrap();
    drop(f);
    assert_eq!(m.seal().len(), 2);
    // The replay of a 200 GiB sparse image: compare only the written bytes and the size.
    let out = scratch();
    let replayed = out.path().join("r.raw");
    std::fs::copy(&base, &replayed).unwrap();
    hrl::log::apply_logs(&sealed_logs(&dir, "d.raw"), &replayed).unwrap();
    let r = std::fs::File::open(&replayed).unwrap();
    assert_eq!(r.metadata().unwrap().len(), 200 << 30);
    let mut buf = [0u8; 7];
    r.read_exact_at(&mut buf, (150 << 30) + 5).unwrap();
    assert_eq!(&buf, b"far out");
    m.unmount();
}

/// A bitmap with a header of zeros (left by a tracker that died creating it) vouches for
/// nothing: the mount goes ahead and reports the whole disk unclean (before, the mount
/// failed: "not a valid dirty bitmap").
#[test]
fn zero_header_bitmap_means_the_whole_disk_is_unclean() {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("d.raw"), pattern(22, 3 * MIB)).unwrap();
    std::fs::write(dir.join("d.raw.hrl-bitmap"), vec![0u8; 8192]).unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    let st = m.request(&Request::Status).status.unwrap();
    assert_eq!(st.disks[0].unclean_extents, vec![(0, 3 * MIB as u64)]);
    m.unmount();
}

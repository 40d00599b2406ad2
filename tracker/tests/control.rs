//! The control protocol over a real mount: seal/pending/ack/status/mode/dirty/clear, the
//! read-only logs, and disk creation, rename and removal recorded in the logs.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;

use hrl::control::{DiskMode, Request};
use hrl::log::{LogReader, Record};
use testkit::*;

fn records(path: &std::path::Path) -> Vec<Record> {
    LogReader::open(path)
        .unwrap()
        .map(|r| r.unwrap())
        .filter(|r| !matches!(r, Record::Seal(_)))
        .collect()
}

#[test]
fn seal_ack_pending_and_status() {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.img"), pattern(1, 1 << 20)).unwrap();
    std::fs::write(dir.join("b.qcow2"), pattern(2, 1 << 20)).unwrap();
    std::fs::write(dir.join("notes.txt"), b"not a disk").unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));

    let f = OpenOptions::new()
        .write(true)
        .open(m.path("a.img"))
        .unwrap();
    f.write_all_at(b"hello", 10).unwrap();
    std::fs::write(m.path("notes.txt"), b"changed").unwrap();

    let st = m.request(&Request::Status).status.unwrap();
    let names: Vec<_> = st.disks.iter().map(|d| d.disk.as_str()).collect();
    assert_eq!(
        names,
        ["a.img", "b.qcow2"],
        "only disk patterns are tracked"
    );
    assert_eq!(st.socket, m.socket().display().to_string());
    assert!(st.disks.iter().all(|d| d.unclean_extents.is_empty()));

    // One seal covers every disk; an untouched disk still gets an (empty) log.
    let sealed = m.seal();
    assert_eq!(sealed.len(), 2);
    let a = sealed.iter().find(|s| s.disk == "a.img").unwrap();
    let b = sealed.iter().find(|s| s.disk == "b.qcow2").unwrap();
    assert_eq!(a.records, 1);
    assert_eq!(b.records, 0);
    assert_eq!(a.prev_hash, "0".repeat(64));
    let second = m.seal();
    let a2 = second.iter().find(|s| s.disk == "a.img").unwrap();
    assert_eq!(a2.seq, a.seq + 1);
    assert_eq!(
        a2.prev_hash, a.hash,
        "chain: next log names the sealed hash"
    );
    hrl::log::verify_sealed(&m.path(&a2.log), Some(&hrl::from_hex(&a.hash).unwrap())).unwrap();

    let pending = m.request(&Request::Pending).disks.unwrap();
    assert_eq!(pending.len(), 4);
    // Logs are read-only in the mounted view.
    let e = OpenOptions::new()
        .write(true)
        .open(m.path(&a.log))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    assert_eq!(
        std::fs::remove_file(m.path(&a.log))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EPERM)
    );
    assert_eq!(
        std::fs::write(m.path("x.img.hrl"), b"forged")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EPERM)
    );
    assert!(std::fs::read(m.path(&a.log)).unwrap().len() as u64 == a.bytes);

    let r = m.request(&Request::Ack {
        disk: "a.img".into(),
        seq: a.seq,
        disk_id: None,
    });
    assert!(r.ok, "{:?}", r.error);
    assert!(!m.path(&a.log).exists());
    assert!(m.path(&a2.log).exists());
    let pending = m.request(&Request::Pending).disks.unwrap();
    assert_eq!(pending.len(), 3);
    let bad = m.request(&Request::Ack {
        disk: "nope.img".into(),
        seq: 1,
        disk_id: None,
    });
    assert!(!bad.ok);
    assert!(bad.error.unwrap().contains("nope.img"));
    drop(f);
    m.unmount();
}

#[test]
fn bitmap_mode_marks_instead_of_logging_and_clear_drops_marks() {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    // Extents are 4 MiB (tracker's EXTENT_SIZE): a 16 MiB disk has four.
    const E: u64 = 4 << 20;
    std::fs::write(dir.join("d.raw"), vec![0u8; 4 * E as usize]).unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    let r = m.request(&Request::Mode {
        disk: "d.raw".into(),
        mode: DiskMode::Bitmap,
    });
    assert!(r.ok);
    let f = OpenOptions::new()
        .write(true)
        .open(m.path("d.raw"))
        .unwrap();
    f.write_all_at(&[1u8; 100], E + 5).unwrap();
    let dirty = m
        .request(&Request::Dirty {
            disk: "d.raw".into(),
        })
        .extents
        .unwrap();
    assert_eq!(dirty, vec![(E, E)]);
    let s = m.request(&Request::Seal);
    let sealed = s.disks.unwrap();
    assert_eq!(sealed[0].records, 0, "bitmap mode logs nothing");
    assert_eq!(sealed[0].mode, DiskMode::Bitmap);
    // A seal does not clear bitmap-mode marks: only `clear` after a resync does.
    assert_eq!(
        m.request(&Request::Dirty {
            disk: "d.raw".into()
        })
        .extents
        .unwrap()
        .len(),
        1
    );
    // A write after the seal stays marked through a clear up to that seal.
    f.write_all_at(&[2u8; 10], 3 * E).unwrap();
    let r = m.request(&Request::Clear {
        disk: "d.raw".into(),
        upto_seal: s.seal_id.unwrap(),
    });
    assert!(r.ok, "{:?}", r.error);
    let dirty = m
        .request(&Request::Dirty {
            disk: "d.raw".into(),
        })
        .extents
        .unwrap();
    assert_eq!(dirty, vec![(3 * E, E)]);
    drop(f);
    m.unmount();
}

#[test]
fn creating_renaming_and_removing_disks_is_recorded() {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    std::fs::write(m.path("one.img"), b"first disk").unwrap();
    std::fs::rename(m.path("one.img"), m.path("two.img")).unwrap();
    std::fs::write(m.path("two.img"), b"rewritten").unwrap();
    let sealed = m.seal();
    assert_eq!(sealed.len(), 1);
    assert_eq!(sealed[0].disk, "two.img");
    let recs = records(&m.path(&sealed[0].log));
    assert!(recs.contains(&Record::Rename {
        name: "two.img".into()
    }));
    assert!(m.path("two.img.hrl").exists() && !m.path("one.img.hrl").exists());

    // Renamed to a non-disk name: the disk is removed from tracking, its last log says so.
    std::fs::rename(m.path("two.img"), m.path("two.bak")).unwrap();
    let pending = m.request(&Request::Pending).disks.unwrap();
    let last = pending.iter().max_by_key(|p| p.seq).unwrap();
    assert_eq!(records(&m.path(&last.log)).last(), Some(&Record::Delete));
    assert!(m.request(&Request::Status).status.unwrap().disks.is_empty());

    // A file renamed onto a disk name becomes a new disk; unlink records a delete.
    std::fs::write(m.path("tmp.part"), b"converted image").unwrap();
    std::fs::rename(m.path("tmp.part"), m.path("three.vhdx")).unwrap();
    let s = m.seal();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].disk, "three.vhdx");
    std::fs::remove_file(m.path("three.vhdx")).unwrap();
    let pending = m.request(&Request::Pending).disks.unwrap();
    let last3 = pending
        .iter()
        .filter(|p| p.disk == "three.vhdx")
        .max_by_key(|p| p.seq)
        .unwrap();
    assert_eq!(records(&m.path(&last3.log)), vec![Record::Delete]);
    assert!(!m.path("three.vhdx.hrl-bitmap").exists());
    m.unmount();
    // Pending logs of removed disks survive a restart.
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    let again = m.request(&Request::Pending).disks.unwrap();
    assert_eq!(again.len(), pending.len());
    m.unmount();
}

#[test]
fn include_patterns_choose_the_disks() {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.disk"), b"tracked").unwrap();
    std::fs::write(dir.join("b.img"), b"not tracked with --include").unwrap();
    let m = Mounted::start(
        &dir,
        &dir,
        &tmp.path().join("run"),
        &["--include", "*.disk", "--include", "*.vol"],
    );
    std::fs::write(m.path("c.vol"), b"new").unwrap();
    let st = m.request(&Request::Status).status.unwrap();
    let names: Vec<_> = st.disks.iter().map(|d| d.disk.as_str()).collect();
    assert_eq!(names, ["a.disk", "c.vol"]);
    assert!(!m.path("b.img.hrl").exists());
    m.unmount();
}

/// `open_disk` and `open_log` hand out read-only descriptors of the backing files
/// themselves (not of the mount), which reading does not count as reads through the mount;
/// the active log, unknown disks, non-disks and names that are not one plain name are
/// refused without a descriptor.
#[test]
fn backing_descriptors_are_read_only_and_skip_the_mount() {
    use hrl_tracker::control_server::request_descriptor;
    use std::os::unix::fs::MetadataExt;

    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.img"), pattern(5, 1 << 20)).unwrap();
    std::fs::write(dir.join("sub").join("b.img"), pattern(6, 4096)).unwrap();
    std::fs::write(dir.join("notes.txt"), b"not a disk").unwrap();
    let backing = std::fs::metadata(dir.join("a.img")).unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    let socket = m.socket();
    let mut model = pattern(5, 1 << 20);
    let f = OpenOptions::new()
        .write(true)
        .open(m.path("a.img"))
        .unwrap();
    f.write_all_at(b"through the mount", 4096).unwrap();
    model[4096..4096 + 17].copy_from_slice(b"through the mount");
    drop(f);
    let sealed = m.seal();
    let a = sealed.iter().find(|s| s.disk == "a.img").unwrap().clone();
    let counters = || m.request(&Request::Status).counters.unwrap();
    let before = counters();

    // The disk: the backing inode, read-only, the content the mount shows.
    let (r, fd) = request_descriptor(
        &socket,
        &Request::OpenDisk {
            disk: "a.img".into(),
        },
    )
    .unwrap();
    assert!(r.ok && r.fd == Some(true), "{r:?}");
    let disk = std::fs::File::from(fd.expect("a descriptor with the answer"));
    let md = disk.metadata().unwrap();
    assert_eq!((md.dev(), md.ino()), (backing.dev(), backing.ino()));
    let mounted = std::fs::metadata(m.path("a.img")).unwrap();
    assert_ne!(
        md.dev(),
        mounted.dev(),
        "a descriptor of the mount, not of the backing file"
    );
    let mut got = vec![0u8; model.len()];
    disk.read_exact_at(&mut got, 0).unwrap();
    assert!(
        got == model,
        "the descriptor reads what was written through the mount"
    );
    let e = disk.write_at(b"x", 0).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EBADF),
        "a disk descriptor is writable"
    );
    // SAFETY: fcntl F_GETFD/F_GETFL on a descriptor we own.
    let (fd_flags, fl) = unsafe {
        use std::os::fd::AsRawFd;
        (
            libc::fcntl(disk.as_raw_fd(), libc::F_GETFD),
            libc::fcntl(disk.as_raw_fd(), libc::F_GETFL),
        )
    };
    assert!(fd_flags & libc::FD_CLOEXEC != 0, "not close-on-exec");
    assert_eq!(fl & libc::O_ACCMODE, libc::O_RDONLY);

    // A sealed log listed in pending: the same bytes as through the mount, read-only.
    let (r, fd) = request_descriptor(
        &socket,
        &Request::OpenLog {
            disk: "a.img".into(),
            seq: a.seq,
            disk_id: Some(a.disk_id.clone()),
        },
    )
    .unwrap();
    assert!(r.ok, "{r:?}");
    let log = std::fs::File::from(fd.unwrap());
    assert_eq!(
        log.write_at(b"x", 0).unwrap_err().raw_os_error(),
        Some(libc::EBADF)
    );
    let mut log_bytes = vec![0u8; a.bytes as usize];
    log.read_exact_at(&mut log_bytes, 0).unwrap();
    let after = counters();
    assert_eq!(
        (after.reads, after.bytes_read),
        (before.reads, before.bytes_read),
        "reading through the descriptors went through the mount"
    );
    assert!(after.descriptors_passed >= before.descriptors_passed + 2);
    assert_eq!(log_bytes, std::fs::read(m.path(&a.log)).unwrap());
    assert!(
        counters().reads > after.reads,
        "reads through the mount are counted"
    );

    // Refusals: no descriptor, an error that says why.
    let st = m.request(&Request::Status).status.unwrap();
    let active = st
        .disks
        .iter()
        .find(|d| d.disk == "a.img")
        .unwrap()
        .active_seq;
    let refused = [
        Request::OpenLog {
            disk: "a.img".into(),
            seq: active,
            disk_id: None,
        },
        Request::OpenLog {
            disk: "a.img".into(),
            seq: a.seq + 100,
            disk_id: None,
        },
        Request::OpenLog {
            disk: "a.img".into(),
            seq: a.seq,
            disk_id: Some("0".repeat(32)),
        },
        Request::OpenLog {
            disk: "../vms/a.img".into(),
            seq: a.seq,
            disk_id: None,
        },
        Request::OpenDisk {
            disk: "nope.img".into(),
        },
        Request::OpenDisk {
            disk: "notes.txt".into(),
        },
        Request::OpenDisk {
            disk: a.log.clone(),
        },
        Request::OpenDisk {
            disk: "sub/b.img".into(),
        },
        Request::OpenDisk {
            disk: "../vms/a.img".into(),
        },
        Request::OpenDisk {
            disk: "./a.img".into(),
        },
        Request::OpenDisk { disk: "..".into() },
        Request::OpenDisk { disk: ".".into() },
        Request::OpenDisk { disk: "".into() },
    ];
    for req in &refused {
        let (r, fd) = request_descriptor(&socket, req).unwrap();
        assert!(
            !r.ok && fd.is_none() && r.error.is_some(),
            "{req:?} was answered {r:?} (descriptor: {})",
            fd.is_some()
        );
    }
    drop((disk, log));
    m.unmount();
}

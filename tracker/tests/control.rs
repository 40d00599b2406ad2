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

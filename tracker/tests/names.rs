//! Names and descriptors over a real mount: a disk renamed over another, a new disk under
//! the old name of a renamed one, hard links to disks, unreadable logs at mount, and a
//! crawl of more files than the tracker may have descriptors.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::os::unix::fs::FileExt;
use std::path::Path;

use hrl::control::{Request, SealedLog};
use testkit::*;

fn pending(m: &Mounted) -> Vec<SealedLog> {
    m.request(&Request::Pending).disks.unwrap()
}

/// Logs of one disk id, in sequence order, as paths in `dir`.
fn chain_of(logs: &[SealedLog], id: &str, dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<&SealedLog> = logs.iter().filter(|l| l.disk_id == id).collect();
    v.sort_by_key(|l| l.seq);
    v.iter().map(|l| dir.join(&l.log)).collect()
}

fn write_at(path: &Path, data: &[u8], off: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, off).unwrap();
}

/// `mv a.img b.img` while both have logs with the same sequence numbers: the seals go on,
/// each disk's chain (by id) replays to what it was, and a restart keeps them apart.
#[test]
fn rename_over_a_disk_keeps_sealing_and_keeps_chains_apart() {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.img"), pattern(1, 1 << 20)).unwrap();
    std::fs::write(dir.join("b.img"), pattern(2, 1 << 20)).unwrap();
    let base_a = tmp.path().join("base-a");
    std::fs::copy(dir.join("a.img"), &base_a).unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    write_at(&m.path("a.img"), b"a-one", 100);
    write_at(&m.path("b.img"), b"b-one", 200);
    let first = m.seal();
    let id_a = first
        .iter()
        .find(|s| s.disk == "a.img")
        .unwrap()
        .disk_id
        .clone();
    let id_b = first
        .iter()
        .find(|s| s.disk == "b.img")
        .unwrap()
        .disk_id
        .clone();

    std::fs::rename(m.path("a.img"), m.path("b.img")).unwrap();
    write_at(&m.path("b.img"), b"a-two", 300);
    // Before: "b.img.2.hrl already exists" — the retired b.img sealed seq 2 at the rename.
    let second = m.seal();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].disk, "b.img");
    assert_eq!(second[0].disk_id, id_a);
    write_at(&m.path("b.img"), b"a-three", 400);
    m.seal();
    let logs = pending(&m);
    let a_chain = chain_of(&logs, &id_a, &dir);
    assert_eq!(a_chain.len(), 3);
    let out = scratch();
    assert_files_equal(&replay(&base_a, &a_chain, out.path()), &m.path("b.img"));
    assert_eq!(
        chain_of(&logs, &id_b, &dir).len(),
        2,
        "b.img's logs stay pending"
    );

    // Acking by id releases only that disk's logs, though both went by the name b.img.
    let r = m.request(&Request::Ack {
        disk: "b.img".into(),
        seq: 2,
        disk_id: Some(id_b.clone()),
    });
    assert!(r.ok, "{:?}", r.error);
    let logs = pending(&m);
    assert!(chain_of(&logs, &id_b, &dir).is_empty());
    assert_eq!(chain_of(&logs, &id_a, &dir).len(), 3);
    m.unmount();

    // After a restart the chain is still a.img's (by id), and sealing goes on.
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    let logs = pending(&m);
    assert_eq!(chain_of(&logs, &id_a, &dir).len(), 3);
    assert!(logs.iter().all(|l| l.disk == "b.img"));
    let again = m.seal();
    assert_eq!(again[0].disk_id, id_a);
    assert_eq!(again[0].seq, 4);
    m.unmount();
}

/// A new disk under the old name of a renamed disk whose logs are pending: no collision, and
/// after a restart each chain stays with its disk.
#[test]
fn new_disk_under_a_renamed_disks_old_name() {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.img"), pattern(3, 1 << 20)).unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    write_at(&m.path("a.img"), b"old", 0);
    let id_old = m.seal()[0].disk_id.clone();
    std::fs::rename(m.path("a.img"), m.path("c.img")).unwrap();
    std::fs::write(m.path("a.img"), pattern(4, 1 << 16)).unwrap();
    // Before: the new disk's first log wanted a.img.1.hrl, the renamed disk's pending log.
    let sealed = m.seal();
    assert_eq!(sealed.len(), 2, "both disks seal");
    let id_new = sealed
        .iter()
        .find(|s| s.disk == "a.img")
        .unwrap()
        .disk_id
        .clone();
    assert_ne!(id_new, id_old);
    m.unmount();

    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    let logs = pending(&m);
    let old: Vec<&SealedLog> = logs.iter().filter(|l| l.disk_id == id_old).collect();
    assert_eq!(old.len(), 2);
    assert!(old.iter().all(|l| l.disk == "c.img"), "{old:?}");
    let again = m.seal();
    let a = again.iter().find(|s| s.disk == "a.img").unwrap();
    let c = again.iter().find(|s| s.disk == "c.img").unwrap();
    assert_eq!(
        (a.disk_id.as_str(), c.disk_id.as_str()),
        (id_new.as_str(), id_old.as_str())
    );
    assert_eq!(c.seq, 3);
    m.unmount();
}

/// Hard links to disks are refused through the mount (EMLINK); one made behind the
/// tracker's back is reported at mount, and the disk is tracked under one name.
#[test]
fn hard_links_to_disks_are_refused_and_reported() {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.img"), pattern(5, 1 << 16)).unwrap();
    std::fs::write(dir.join("notes.txt"), b"plain").unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    for (from, to) in [
        ("a.img", "b.img"),
        ("a.img", "a.copy"),
        ("a.img", "sub/a.img"),
        ("notes.txt", "n.img"),
    ] {
        let e = std::fs::hard_link(m.path(from), m.path(to)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EMLINK), "{from} -> {to}: {e}");
        assert!(!m.path(to).exists());
    }
    std::fs::hard_link(m.path("notes.txt"), m.path("sub/notes")).unwrap();
    m.unmount();

    // A link made while unmounted: one disk, under the name whose log exists, with a warning.
    std::fs::hard_link(dir.join("a.img"), dir.join("0.img")).unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    let st = m.request(&Request::Status).status.unwrap();
    assert_eq!(st.disks.len(), 1, "{:?}", st.disks);
    assert_eq!(st.disks[0].disk, "a.img");
    assert!(
        st.disks[0].warnings.iter().any(|w| w.contains("0.img")),
        "{:?}",
        st.disks[0].warnings
    );
    m.unmount();
}

/// A junk file with a log's name does not keep the directory from mounting: it is set
/// aside, its disk is compared in full (whole disk unclean) with a warning, the others are
/// tracked as usual.
#[test]
fn a_junk_log_is_quarantined_and_the_rest_mounts() {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.img"), pattern(6, 1 << 20)).unwrap();
    std::fs::write(dir.join("b.img"), pattern(7, 1 << 20)).unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    m.seal();
    m.unmount();
    std::fs::write(dir.join("a.img.7.hrl"), b"junk, not a log").unwrap();
    std::fs::write(dir.join("gone.img.3.hrl"), b"more junk").unwrap();

    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n == "a.img.7.hrl"), "{names:?}");
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("a.img.7.hrl.quarantined-")),
        "{names:?}"
    );
    assert!(names
        .iter()
        .any(|n| n.starts_with("gone.img.3.hrl.quarantined-")));
    let st = m.request(&Request::Status).status.unwrap();
    let a = st.disks.iter().find(|d| d.disk == "a.img").unwrap();
    let b = st.disks.iter().find(|d| d.disk == "b.img").unwrap();
    assert_eq!(
        a.unclean_extents,
        vec![(0, 1 << 20)],
        "a.img is compared in full"
    );
    assert!(
        a.warnings.iter().any(|w| w.contains("a.img.7.hrl")),
        "{:?}",
        a.warnings
    );
    assert!(b.unclean_extents.is_empty() && b.warnings.is_empty());
    // Both still seal, and the good log of a.img stays pending.
    let sealed = m.seal();
    assert_eq!(sealed.len(), 2);
    assert_eq!(pending(&m).iter().filter(|l| l.disk == "a.img").count(), 2);
    // The quarantined file is not a disk and is read-only like the other hrl files.
    let q = names
        .iter()
        .find(|n| n.starts_with("a.img.7.hrl.q"))
        .unwrap();
    assert_eq!(
        std::fs::remove_file(m.path(q)).unwrap_err().raw_os_error(),
        Some(libc::EPERM)
    );
    // `clear` after the full compare ends the warning.
    let r = m.request(&Request::Clear {
        disk: "a.img".into(),
        upto_seal: u64::MAX,
    });
    assert!(r.ok);
    let st = m.request(&Request::Status).status.unwrap();
    assert!(st.disks.iter().all(|d| d.warnings.is_empty()));
    m.unmount();
}

/// A crawl of more files than the tracker may hold descriptors (open file limit 256): every
/// stat and read works, and so do seal and status afterwards.
#[test]
fn crawling_more_files_than_descriptors_keeps_the_control_socket() {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    let many = dir.join("many");
    std::fs::create_dir_all(&many).unwrap();
    std::fs::write(dir.join("a.img"), pattern(8, 1 << 20)).unwrap();
    const FILES: usize = 1500;
    for i in 0..FILES {
        std::fs::write(many.join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    let m = Mounted::start_limited(&dir, &tmp.path().join("run"), 256);
    for round in 0..2 {
        for i in 0..FILES {
            let p = m.path(&format!("many/f{i}"));
            let md = std::fs::metadata(&p)
                .unwrap_or_else(|e| panic!("round {round}: stat {}: {e}", p.display()));
            assert!(md.is_file());
        }
    }
    // Early files (their descriptors long evicted) still open and read.
    for i in [0, 1, 7, FILES / 2] {
        assert_eq!(
            std::fs::read_to_string(m.path(&format!("many/f{i}"))).unwrap(),
            format!("file {i}")
        );
    }
    write_at(&m.path("a.img"), b"after the crawl", 4096);
    assert_eq!(m.seal().len(), 1);
    let st = m.request(&Request::Status).status.unwrap();
    assert_eq!(st.disks.len(), 1);
    m.unmount();
}

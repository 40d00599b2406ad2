//! A write that bypasses the mount, then a metadata change of the same disk through the
//! mount (found by the chaos test, seed 20019: a write through a bind mount of the directory,
//! then `mv` of the disk over another through the mount): the metadata change moves the
//! image's ctime legitimately, but must not renew the stamp over the bypass write's change
//! of the mtime — the next seal must still report the disk changed outside the tracker.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{FileExt, PermissionsExt};

use common::*;
use hrl::control::Request;

const MIB: usize = 1 << 20;

/// Seals; returns the seal id and each disk's changed-outside flag.
fn seal_flags(m: &Mounted) -> (u64, Vec<(String, bool)>) {
    let r = m.request(&Request::Seal);
    assert!(r.ok, "{:?}", r.error);
    let flags = r
        .disks
        .unwrap()
        .into_iter()
        .map(|l| (l.disk, l.changed_outside))
        .collect();
    (r.seal_id.unwrap(), flags)
}

#[test]
fn a_bypass_write_then_a_rename_or_chmod_through_the_mount_is_still_caught() {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("d.img"), pattern(1, 8 * MIB)).unwrap();
    std::fs::write(dir.join("e.img"), pattern(2, 2 * MIB)).unwrap();
    let run = tmp.path().join("run");
    // Descriptors of the raw files opened before the mount: writes through them bypass it.
    let open = |n: &str| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(n))
            .unwrap()
    };
    let (raw_d, raw_e) = (open("d.img"), open("e.img"));
    let m = Mounted::start(&dir, &dir, &run, &["--force"]);
    let (id, _) = seal_flags(&m);
    for disk in ["d.img", "e.img"] {
        let r = m.request(&Request::Clear {
            disk: disk.into(),
            upto_seal: id,
        });
        assert!(r.ok, "{:?}", r.error);
    }
    // Bypass writes (sizes unchanged), then metadata changes through the mount.
    raw_d.write_all_at(&pattern(3, MIB), MIB as u64).unwrap();
    raw_e.write_all_at(&pattern(4, 4096), 0).unwrap();
    std::fs::rename(m.path("d.img"), m.path("r.img")).unwrap();
    std::fs::set_permissions(m.path("e.img"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let (_, flags) = seal_flags(&m);
    assert!(
        flags.contains(&("r.img".into(), true)),
        "a bypass write before a rename through the mount was not caught: {flags:?}"
    );
    assert!(
        flags.contains(&("e.img".into(), true)),
        "a bypass write before a chmod through the mount was not caught: {flags:?}"
    );
    drop((raw_d, raw_e));
    m.unmount();
}

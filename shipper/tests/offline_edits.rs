//! Offline edits across clean remounts (found by the chaos test, seed 2): an edit made while
//! the tracker was unmounted is reported unclean at the next mount, and that report must
//! stand through further clean unmounts and mounts (another offline edit in between) until a
//! sync resyncs it. The point after must equal the disks.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../tracker/tests/common/mod.rs"]
mod tracker_common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use common::{ok, shipper_bin};
use tracker_common::{pattern, scratch, Mounted};

fn shipper(run: &Path, state: &Path, args: &[&str]) -> std::process::Output {
    Command::new(shipper_bin())
        .args(args)
        .env("HRL_RUN_DIR", run)
        .env("HRL_STATE_DIR", state)
        .env("HRL_LOG", "warn")
        .output()
        .unwrap()
}

/// Writes `len` bytes at `off` into the raw file, keeping its mtime if `keep_mtime`.
fn offline_write(p: &Path, off: u64, len: usize, seed: u64, keep_mtime: bool) {
    let meta = std::fs::metadata(p).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(&pattern(seed, len), off).unwrap();
    if keep_mtime {
        let t = std::fs::FileTimes::new()
            .set_modified(meta.modified().unwrap())
            .set_accessed(meta.accessed().unwrap());
        f.set_times(t).unwrap();
    }
}

#[test]
fn an_offline_edit_stands_through_a_second_offline_edit_and_clean_remount() {
    let tmp = scratch();
    let (dir, run, state) = (
        tmp.path().join("vm"),
        tmp.path().join("run"),
        tmp.path().join("state"),
    );
    let store = tmp.path().join("store");
    for d in [&dir, &run, &state, &store] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(dir.join("d0.img"), pattern(1, 8 << 20)).unwrap();
    std::fs::write(dir.join("d1.img"), pattern(2, 4 << 20)).unwrap();
    let url = format!("file://{}", store.display());
    let d = dir.display().to_string();
    let sync = ["sync", "--dir", &d, "--target", &url, "--group", "vm"];
    let m = Mounted::in_place(&dir, &run);
    ok(&shipper(&run, &state, &sync));
    m.unmount();
    // First offline edit (mtime moves): the next mount reports d1 unclean.
    offline_write(&dir.join("d1.img"), 3_300_728, 33_360, 3, false);
    let m = Mounted::in_place(&dir, &run);
    m.unmount();
    // Second offline edit, of the other disk, mtime restored; then mount and sync.
    offline_write(&dir.join("d0.img"), 1 << 20, 4096, 4, true);
    let m = Mounted::in_place(&dir, &run);
    ok(&shipper(&run, &state, &sync));
    let to = tmp.path().join("restore");
    let to_s = to.display().to_string();
    ok(&shipper(
        &run,
        &state,
        &[
            "restore", "--target", &url, "--group", "vm", "--point", "latest", "--to", &to_s,
        ],
    ));
    for disk in ["d0.img", "d1.img"] {
        let (got, want) = (
            std::fs::read(to.join(disk)).unwrap(),
            std::fs::read(dir.join(disk)).unwrap(),
        );
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        assert!(
            got.len() == want.len() && first.is_none(),
            "{disk}: the latest point differs from the disk (first at byte {first:?}, {} vs {} bytes)",
            got.len(),
            want.len()
        );
    }
    m.unmount();
}

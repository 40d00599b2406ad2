//! Bitmap tracking keeps no log (the 50% rule, found by the chaos test's `fifty_percent`):
//! when a disk switches to bitmap mode, what its active log holds is dropped — the extents
//! stay marked — so a released disk stops taking space on the host even when no seal
//! follows (store refusing, replication paused), and the chain goes on.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::FileExt;

use common::{pattern, scratch, Mounted};
use hrl::control::{DiskMode, Request};

#[test]
fn switching_to_bitmap_mode_empties_the_active_log_and_keeps_the_marks() {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.img"), pattern(1, 4 << 20)).unwrap();
    let run = tmp.path().join("run");
    let m = Mounted::in_place(&dir, &run);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.path("a.img"))
        .unwrap();
    f.write_all_at(&pattern(2, 1 << 20), 1 << 20).unwrap();
    let status = |m: &Mounted| {
        let st = m.request(&Request::Status).status.unwrap();
        st.disks.into_iter().find(|d| d.disk == "a.img").unwrap()
    };
    let before = status(&m);
    assert!(before.active_log_bytes > 1 << 20, "{before:?}");
    let r = m.request(&Request::Mode {
        disk: "a.img".into(),
        mode: DiskMode::Bitmap,
    });
    assert!(r.ok, "{:?}", r.error);
    let after = status(&m);
    assert_eq!(after.mode, DiskMode::Bitmap);
    assert_eq!(
        after.active_log_bytes,
        hrl::log::HEADER_LEN,
        "bitmap mode keeps no log: {after:?}"
    );
    assert_eq!(after.active_seq, before.active_seq, "same log, same chain");
    assert!(after.dirty_extents > 0, "the dropped write stays marked");
    let on_disk = std::fs::metadata(dir.join("a.img.hrl")).unwrap().len();
    assert_eq!(on_disk, hrl::log::HEADER_LEN, "the file itself is emptied");
    // Writes in bitmap mode are not logged; the chain seals and the tracker restarts.
    f.write_all_at(&pattern(3, 4096), 0).unwrap();
    drop(f);
    assert_eq!(status(&m).active_log_bytes, hrl::log::HEADER_LEN);
    let sealed = m.seal();
    assert_eq!(sealed.len(), 1);
    m.unmount();
    let m = Mounted::in_place(&dir, &run);
    let st = status(&m);
    assert!(st.warnings.is_empty(), "{st:?}");
    m.unmount();
}

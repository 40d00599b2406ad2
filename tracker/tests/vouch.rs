//! Who vouches for an image while no tracker can see its changes: the stamp the tracker keeps
//! (image size, mtime, ctime after its last change), the active log a clean stop recorded,
//! and the dirty bitmap itself. Whenever one of them is missing or does not match, the whole
//! disk is reported unclean (the shipper then compares every block); the raw directory is
//! never exposed while a tracker still serves it; a dead mount is always detached.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hrl::control::Request;
use testkit::*;

const MIB: usize = 1 << 20;

/// A directory with one 32 MiB disk `d.img` and a copy of it as `base.img` beside the
/// directory (the replica before any log).
fn setup(tmp: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let dir = tmp.join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("d.img"), pattern(1, 32 * MIB)).unwrap();
    let base = tmp.join("base.img");
    std::fs::copy(dir.join("d.img"), &base).unwrap();
    (dir, tmp.join("run"), base)
}

fn write_at(path: &Path, off: u64, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, off).unwrap();
}

/// Writes into the image behind every tracker's back, then puts its mtime back as
/// `touch -r` would.
fn offline_edit(img: &Path, off: u64, restore_mtime: bool) {
    let before = std::fs::metadata(img).unwrap();
    write_at(img, off, b"offline edit");
    if restore_mtime {
        let st = Command::new("touch")
            .arg("-d")
            .arg(format!("@{}.{:09}", before.mtime(), before.mtime_nsec()))
            .arg(img)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(std::fs::metadata(img).unwrap().mtime(), before.mtime());
    }
}

fn unclean_of(m: &Mounted) -> Vec<(u64, u64)> {
    let st = m.request(&Request::Status).status.unwrap();
    st.disks[0].unclean_extents.clone()
}

fn covers(extents: &[(u64, u64)], off: u64) -> bool {
    extents.iter().any(|&(o, l)| off >= o && off < o + l)
}

fn assert_whole_disk(unclean: &[(u64, u64)], what: &str) {
    let covered: u64 = unclean.iter().map(|&(_, l)| l).sum();
    assert!(
        covers(unclean, 0) && covered >= 32 * MIB as u64,
        "{what}: the whole disk must be reported unclean, got {unclean:?}"
    );
}

/// Number of mounts at `dir` in this namespace.
fn mounts_at(dir: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_string_lossy();
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(&*d))
        .count()
}

/// Issue 16.4: SIGTERM (systemctl stop) while a VM holds a disk open. The mount stays until
/// the disk is closed (never detached lazily), so a write at the directory's path in the
/// meantime still goes through the tracker and is logged; the stop then completes cleanly.
#[test]
fn sigterm_while_a_disk_is_busy_never_exposes_the_raw_directory() {
    let tmp = scratch();
    let (dir, run, base) = setup(tmp.path());
    let mut m = Mounted::in_place(&dir, &run);
    let vm = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("d.img"))
        .unwrap();
    vm.write_all_at(b"vm write before the stop", 5 * MIB as u64)
        .unwrap();
    let mut child = m.child.take().unwrap();
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the tracker must serve on while a disk is open"
    );
    assert!(
        is_mounted(&dir),
        "the busy mount must not be detached (the raw directory would be exposed)"
    );
    // Another program writes at the directory's path meanwhile, and the VM goes on.
    write_at(
        &dir.join("d.img"),
        20 * MIB as u64,
        b"written at the path during the stop",
    );
    vm.write_all_at(b"vm write during the stop", 9 * MIB as u64)
        .unwrap();
    drop(vm);
    let st = wait_exit(
        &mut child,
        Duration::from_secs(20),
        "the tracker after the disk was closed",
    );
    assert!(st.success(), "tracker exited with {st}");
    assert!(!is_mounted(&dir));

    // Every write is in the logs: sealed, they replay onto the base to exactly the image.
    let m = Mounted::in_place(&dir, &run);
    assert!(unclean_of(&m).is_empty(), "a clean stop reports nothing");
    m.seal();
    m.unmount();
    assert_replay_equals(&base, &dir, "d.img", &dir.join("d.img"));
}

/// Issue 16.4, second half: if the raw path becomes reachable anyway (an operator's
/// `umount -l` of the busy mount), a change there is not vouched for by the final clean
/// stop: the next start reports the whole disk unclean.
#[test]
fn a_lazily_detached_mount_stops_vouching_for_the_image() {
    let tmp = scratch();
    let (dir, run_dir, _) = setup(tmp.path());
    for tracked_write_after in [false, true] {
        let mut m = Mounted::in_place(&dir, &run_dir);
        let vm = OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.path("d.img"))
            .unwrap();
        vm.write_all_at(b"vm", 0).unwrap();
        run(Command::new("umount").arg("-l").arg(&dir));
        assert!(!is_mounted(&dir));
        // The raw directory is exposed now: this write reaches the image untracked.
        write_at(&dir.join("d.img"), 20 * MIB as u64, b"raw write");
        if tracked_write_after {
            vm.write_all_at(b"vm after the raw write", 6 * MIB as u64)
                .unwrap();
        }
        drop(vm);
        let mut child = m.child.take().unwrap();
        let st = wait_exit(
            &mut child,
            Duration::from_secs(20),
            "the tracker after the lazy detach",
        );
        assert!(st.success(), "tracker exited with {st}");
        let m = Mounted::in_place(&dir, &run_dir);
        assert_whole_disk(
            &unclean_of(&m),
            &format!("raw write in a lazy detach (tracked write after: {tracked_write_after})"),
        );
        // The shipper's resync would clear this report; here the next round starts over.
        m.request(&Request::Clear {
            disk: "d.img".into(),
            upto_seal: u64::MAX,
        });
        m.unmount();
    }
}

/// Issue 16.5: the bitmap file lost (moved aside, as the tracker's own error for a bad bitmap
/// says) while unmounted, plus an offline edit with the mtime put back: no bitmap vouches
/// for the image, so the whole disk is unclean.
#[test]
fn a_lost_bitmap_means_the_whole_disk_is_unclean() {
    for restore_mtime in [true, false] {
        let tmp = scratch();
        let (dir, run, _) = setup(tmp.path());
        let m = Mounted::in_place(&dir, &run);
        write_at(&m.path("d.img"), MIB as u64, b"tracked");
        m.seal();
        m.unmount();
        std::fs::rename(
            hrl::naming::bitmap_path(&dir.join("d.img")),
            tmp.path().join("moved-aside.hrl-bitmap"),
        )
        .unwrap();
        offline_edit(&dir.join("d.img"), 24 * MIB as u64, restore_mtime);
        let m = Mounted::in_place(&dir, &run);
        assert_whole_disk(&unclean_of(&m), "bitmap lost");
        // One tracked write after the remount does not make it trusted again.
        write_at(&m.path("d.img"), 2 * MIB as u64, b"tracked after");
        assert_whole_disk(&unclean_of(&m), "bitmap lost, then a tracked write");
        m.unmount();
        // The report stands across a clean stop until a resync clears it.
        let m = Mounted::in_place(&dir, &run);
        assert_whole_disk(&unclean_of(&m), "bitmap lost, after a clean restart");
        m.unmount();
    }
}

/// Issue 16.6: the active log deleted, or cut shorter (at a record boundary or inside a
/// record), while unmounted with a sealed log pending. The clean stop had cleared the marks
/// that log covered, so its ranges are unknown now: the whole disk is unclean.
#[test]
fn a_lost_or_shortened_active_log_means_the_whole_disk_is_unclean() {
    for damage in ["delete", "cut inside a record", "cut at a record boundary"] {
        let tmp = scratch();
        let (dir, run, _) = setup(tmp.path());
        let m = Mounted::in_place(&dir, &run);
        write_at(&m.path("d.img"), MIB as u64, b"sealed and pending");
        m.seal();
        write_at(&m.path("d.img"), 12 * MIB as u64, &pattern(3, 8192));
        let boundary = std::fs::metadata(hrl::naming::active_log_path(&dir.join("d.img")))
            .unwrap()
            .len();
        write_at(&m.path("d.img"), 28 * MIB as u64, &pattern(4, 8192));
        m.unmount();
        let active = hrl::naming::active_log_path(&dir.join("d.img"));
        let len = std::fs::metadata(&active).unwrap().len();
        match damage {
            "delete" => std::fs::remove_file(&active).unwrap(),
            "cut inside a record" => {
                let f = OpenOptions::new().write(true).open(&active).unwrap();
                f.set_len(len - 100).unwrap();
            }
            _ => {
                let f = OpenOptions::new().write(true).open(&active).unwrap();
                f.set_len(boundary).unwrap();
            }
        }
        let m = Mounted::in_place(&dir, &run);
        assert_whole_disk(&unclean_of(&m), damage);
        m.unmount();
    }
    // Control: an untouched log after a clean stop reports nothing.
    let tmp = scratch();
    let (dir, run, _) = setup(tmp.path());
    let m = Mounted::in_place(&dir, &run);
    write_at(&m.path("d.img"), MIB as u64, b"x");
    m.unmount();
    let m = Mounted::in_place(&dir, &run);
    assert!(unclean_of(&m).is_empty());
    m.unmount();
}

/// Issue 16.8: kill -9 of the tracker, then an offline edit before the remount. The stamp the
/// tracker kept after its last change no longer matches, so the whole disk is unclean;
/// without the edit only the marked extents are (a crash stays a targeted resync).
#[test]
fn kill_9_then_an_offline_edit_reports_the_whole_disk() {
    for edit in [None, Some(false), Some(true)] {
        let tmp = scratch();
        let (dir, run, _) = setup(tmp.path());
        let m = Mounted::in_place(&dir, &run);
        write_at(&m.path("d.img"), MIB as u64, b"tracked before the kill");
        m.kill9();
        if let Some(restore_mtime) = edit {
            offline_edit(&dir.join("d.img"), 24 * MIB as u64, restore_mtime);
        }
        let m = Mounted::in_place(&dir, &run);
        let unclean = unclean_of(&m);
        assert!(
            covers(&unclean, MIB as u64),
            "the marked extent: {unclean:?}"
        );
        match edit {
            None => assert!(
                !covers(&unclean, 24 * MIB as u64),
                "without an offline edit only the marks are unclean: {unclean:?}"
            ),
            Some(_) => assert_whole_disk(&unclean, "offline edit after kill -9"),
        }
        m.unmount();
    }
}

/// Issue 16.11: after kill -9 the dead mount is detached every time — even while the kernel
/// still answers `stat` from cached attributes — and no later write lands in the raw
/// directory: after 10 rounds every write replays from the logs.
#[test]
fn the_dead_mount_of_a_killed_tracker_is_always_detached() {
    let tmp = scratch();
    let (dir, run, base) = setup(tmp.path());
    let mut m = Mounted::in_place(&dir, &run);
    for round in 0..10u64 {
        write_at(
            &m.path("d.img"),
            round * 3 * MIB as u64,
            &pattern(round, 4096),
        );
        m.seal();
        // Attributes cached by the kernel right before the kill.
        std::fs::metadata(&dir).unwrap();
        std::fs::metadata(m.path("d.img")).unwrap();
        m.kill9_leaving_the_dead_mount();
        assert_eq!(mounts_at(&dir), 1, "round {round}: the dead mount is there");
        m = Mounted::in_place(&dir, &run);
        assert_eq!(
            mounts_at(&dir),
            1,
            "round {round}: the dead mount must be detached, not mounted over"
        );
        write_at(
            &m.path("d.img"),
            round * 3 * MIB as u64 + 8192,
            b"after the remount",
        );
    }
    m.seal();
    m.unmount();
    assert_eq!(mounts_at(&dir), 0);
    assert_replay_equals(&base, &dir, "d.img", &dir.join("d.img"));
}

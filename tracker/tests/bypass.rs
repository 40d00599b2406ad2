//! Writers that bypass the mount (a descriptor, a shared mapping or a loop device opened
//! before it, a bind mount of the directory, a shell inside it): `mount` refuses them by
//! name; with `--force` the disks they reach are reported unclean, and a write they make
//! later is caught by the next seal. Disk-looking files the tracker cannot track are reported
//! in `status`, never skipped in silence.
#![allow(clippy::unwrap_used)]

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hrl::control::{MountStatus, Request};
use testkit::*;

const MIB: usize = 1 << 20;

fn setup(tmp: &Path) -> (PathBuf, PathBuf) {
    let dir = tmp.join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("d.img"), pattern(1, 8 * MIB)).unwrap();
    std::fs::write(dir.join("e.img"), pattern(2, 2 * MIB)).unwrap();
    (dir, tmp.join("run"))
}

fn status(m: &Mounted) -> MountStatus {
    m.request(&Request::Status).status.unwrap()
}

/// Whether `disk` is reported unclean as a whole, changed outside the tracker.
fn whole_disk_unclean(st: &MountStatus, disk: &str) -> bool {
    let d = st.disks.iter().find(|d| d.disk == disk).unwrap();
    d.changed_outside.is_some() && d.unclean_extents.iter().any(|&(off, _)| off == 0)
}

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

/// The issue's reproduction: a writer holds the disk open before the mount. The mount is
/// refused naming pid, command and file; with --force it mounts, the disk is unclean as a
/// whole, and once cleared, a later write through the old descriptor (1 MiB at 4 MiB,
/// fsynced) is caught by the next seal, while the tracker's own writes never are.
#[test]
fn writer_before_mount_is_refused_and_with_force_every_bypass_write_is_caught() {
    let tmp = scratch();
    let (dir, run_dir) = setup(tmp.path());
    let src = tmp.path().join("src");
    std::fs::write(&src, pattern(3, MIB)).unwrap();
    let mut h = Holder::descriptor(&dir.join("d.img"), "<>");

    let err = Mounted::refused(&dir, &run_dir, &[]);
    let named = format!("pid {} (bash) has d.img open for writing", h.pid());
    assert!(err.contains(&named), "{err}");
    assert!(
        err.contains("--force") && err.contains("mount the tracker before"),
        "{err}"
    );
    assert!(!err.contains("e.img"), "only the held disk is named: {err}");

    let m = Mounted::start(&dir, &dir, &run_dir, &["--force"]);
    let st = status(&m);
    assert!(whole_disk_unclean(&st, "d.img"), "{st:?}");
    assert!(!whole_disk_unclean(&st, "e.img"), "{st:?}");
    let (id, flags) = seal_flags(&m);
    assert!(flags.contains(&("d.img".into(), true)), "{flags:?}");
    // The shipper resynced it and clears the marks: clean from here on.
    assert!(
        m.request(&Request::Clear {
            disk: "d.img".into(),
            upto_seal: id
        })
        .ok
    );
    assert!(!whole_disk_unclean(&status(&m), "d.img"));

    // The tracker's own writes are no bypass.
    std::fs::write(m.path("d.img"), pattern(4, 8 * MIB)).unwrap();
    let (_, flags) = seal_flags(&m);
    assert!(flags.iter().all(|(_, f)| !f), "false alarm: {flags:?}");

    h.command(&format!("4 {}", src.display()));
    let (_, flags) = seal_flags(&m);
    assert!(
        flags.contains(&("d.img".into(), true)),
        "bypass write not caught: {flags:?}"
    );
    assert!(flags.contains(&("e.img".into(), false)), "{flags:?}");
    assert!(whole_disk_unclean(&status(&m), "d.img"));
    // Reported once: the next seal without a new bypass write is quiet.
    let (_, flags) = seal_flags(&m);
    assert!(flags.iter().all(|(_, f)| !f), "{flags:?}");
    m.unmount();
}

/// A bypass write just before a clean unmount (no seal in between) is not lost with the
/// tracker: the next mount reports the whole disk unclean.
#[test]
fn bypass_write_before_a_clean_unmount_is_reported_after_the_remount() {
    let tmp = scratch();
    let (dir, run_dir) = setup(tmp.path());
    let src = tmp.path().join("src");
    std::fs::write(&src, pattern(8, MIB)).unwrap();
    let mut h = Holder::descriptor(&dir.join("d.img"), "<>");
    let m = Mounted::start(&dir, &dir, &run_dir, &["--force"]);
    let (id, _) = seal_flags(&m);
    assert!(
        m.request(&Request::Clear {
            disk: "d.img".into(),
            upto_seal: id
        })
        .ok
    );
    h.command(&format!("2 {}", src.display()));
    m.unmount();
    drop(h);
    let m = Mounted::in_place(&dir, &run_dir);
    let st = status(&m);
    let d = st.disks.iter().find(|d| d.disk == "d.img").unwrap();
    let covered: u64 = d.unclean_extents.iter().map(|&(_, len)| len).sum();
    assert!(
        covered >= 8 * MIB as u64,
        "the whole disk must be unclean: {d:?}"
    );
    m.unmount();
}

/// A read-only opener before the mount is no bypass: the mount goes ahead, and writes
/// through the mount raise no alarm at the seal.
#[test]
fn read_only_opener_before_mount_is_allowed_without_false_alarm() {
    let tmp = scratch();
    let (dir, run_dir) = setup(tmp.path());
    let _h = Holder::descriptor(&dir.join("d.img"), "<");
    let m = Mounted::in_place(&dir, &run_dir);
    let st = status(&m);
    assert!(
        st.disks
            .iter()
            .all(|d| d.unclean_extents.is_empty() && d.changed_outside.is_none()),
        "{st:?}"
    );
    std::fs::write(m.path("d.img"), pattern(5, 8 * MIB)).unwrap();
    let (_, flags) = seal_flags(&m);
    assert!(flags.iter().all(|(_, f)| !f), "{flags:?}");
    m.unmount();
}

/// A loop device attached before the mount writes straight to the backing file: refused,
/// naming the device; a read-only loop device is allowed.
#[test]
fn loop_device_attached_before_mount_is_refused_and_named() {
    let tmp = scratch();
    let (dir, run_dir) = setup(tmp.path());
    let attach = |extra: &[&str], disk: &str| {
        run(Command::new("losetup")
            .args(["-f", "--show"])
            .args(extra)
            .arg(dir.join(disk)))
        .trim()
        .to_string()
    };
    let ro = attach(&["-r"], "e.img");
    let _undo_ro = Undo(vec![vec!["losetup".into(), "-d".into(), ro.clone()]]);
    let dev = attach(&[], "d.img");
    let undo = Undo(vec![vec!["losetup".into(), "-d".into(), dev.clone()]]);
    let err = Mounted::refused(&dir, &run_dir, &[]);
    assert!(
        err.contains(&format!("loop device {dev} is attached to d.img")),
        "{err}"
    );
    assert!(
        !err.contains(&ro),
        "a read-only loop device is no bypass: {err}"
    );
    drop(undo);
    let m = Mounted::in_place(&dir, &run_dir);
    m.unmount();
}

/// A MAP_SHARED writable mapping made before the mount (its descriptor closed): refused by
/// name; with --force, a later write through the mapping is caught by the next seal.
#[test]
fn shared_writable_mapping_before_mount_is_refused_and_caught_with_force() {
    let tmp = scratch();
    let (dir, run_dir) = setup(tmp.path());
    let mut h = Holder::mapping(&dir.join("d.img"));
    let err = Mounted::refused(&dir, &run_dir, &[]);
    let named = format!(
        "pid {} (python3) has d.img mapped shared and writable",
        h.pid()
    );
    assert!(err.contains(&named), "{err}");

    let m = Mounted::start(&dir, &dir, &run_dir, &["--force"]);
    let (id, _) = seal_flags(&m);
    assert!(
        m.request(&Request::Clear {
            disk: "d.img".into(),
            upto_seal: id
        })
        .ok
    );
    let (_, flags) = seal_flags(&m);
    assert!(flags.iter().all(|(_, f)| !f), "{flags:?}");
    h.command(&format!("{} 170", 3 * MIB));
    let (_, flags) = seal_flags(&m);
    assert!(
        flags.contains(&("d.img".into(), true)),
        "mapping write not caught: {flags:?}"
    );
    drop(h);
    m.unmount();
}

/// A bind mount of the directory made before the mount, and a process working inside it:
/// both reach the backing files by path, so the mount is refused naming them.
#[test]
fn bind_mount_and_process_inside_the_directory_are_refused() {
    let tmp = scratch();
    let (dir, run_dir) = setup(tmp.path());
    let alias = tmp.path().join("container-images");
    std::fs::create_dir_all(&alias).unwrap();
    let st = Command::new("mount")
        .arg("--bind")
        .arg(&dir)
        .arg(&alias)
        .status()
        .unwrap();
    assert!(st.success());
    let undo = Undo(vec![vec!["umount".into(), alias.display().to_string()]]);
    let err = Mounted::refused(&dir, &run_dir, &[]);
    let named = format!("{} is another mount of the directory", alias.display());
    assert!(err.contains(&named), "{err}");
    drop(undo);

    let mut shell = Command::new("sleep")
        .arg("600")
        .current_dir(&dir)
        .spawn()
        .unwrap();
    let err = Mounted::refused(&dir, &run_dir, &[]);
    let _ = shell.kill();
    let _ = shell.wait();
    let named = format!(
        "pid {} (sleep) has its working directory in the directory",
        shell.id()
    );
    assert!(err.contains(&named), "{err}");
    let m = Mounted::in_place(&dir, &run_dir);
    m.unmount();
}

/// A disk whose name is not valid UTF-8, and a disk name that is a symlink to a file
/// outside the directory, are not tracked, and `status` says so for as long as they exist.
#[test]
fn untrackable_disk_files_are_reported_in_status() {
    let tmp = scratch();
    let (dir, run_dir) = setup(tmp.path());
    let latin1 = std::ffi::OsStr::from_bytes(b"disk\xe9.img");
    std::fs::write(dir.join(latin1), pattern(6, MIB)).unwrap();
    let outside = tmp.path().join("elsewhere.img");
    std::fs::write(&outside, pattern(7, MIB)).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("link.img")).unwrap();
    std::os::unix::fs::symlink("d.img", dir.join("alias.img")).unwrap();
    let m = Mounted::in_place(&dir, &run_dir);
    let st = status(&m);
    let names: Vec<&str> = st.disks.iter().map(|d| d.disk.as_str()).collect();
    assert_eq!(names, ["d.img", "e.img"]);
    assert_eq!(st.untracked.len(), 2, "{:?}", st.untracked);
    assert!(
        st.untracked
            .iter()
            .any(|u| u.contains("disk\u{fffd}.img") && u.contains("not valid UTF-8")),
        "{:?}",
        st.untracked
    );
    assert!(
        st.untracked
            .iter()
            .any(|u| u.contains("link.img") && u.contains(&*outside.to_string_lossy())),
        "{:?}",
        st.untracked
    );
    let out = run(Command::new(tracker_bin())
        .arg("status")
        .arg(&dir)
        .env("HRL_RUN_DIR", &run_dir));
    assert!(out.contains("warning: link.img is not tracked"), "{out}");
    m.unmount();
}

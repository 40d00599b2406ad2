#![allow(clippy::unwrap_used)]
//! Failover, fencing and reverse replication against real tracker mounts and real stores
//! (local directory, moto S3, Azurite). The recovery host is this machine under another
//! host name (its own UTS namespace) with its own state directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use testkit::*;

const RECOVERY: &str = "hrl-recovery-host";

/// `hrl-shipper ARGS` as host `host` with state directory `state`.
fn as_host(s: &Site, host: &str, state: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--uts", "sh", "-c", "hostname \"$0\" && exec \"$@\"", host])
        .arg(shipper_bin())
        .args(args)
        .envs(s.server.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("HRL_RUN_DIR", &s.run_dir)
        .env("HRL_STATE_DIR", state)
        .env("HRL_LOG", "info");
    c
}

fn run_as(s: &Site, host: &str, state: &Path, args: &[&str]) -> Output {
    as_host(s, host, state, args).output().unwrap()
}

fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_str(ok(out).trim()).unwrap()
}

/// The recovery host's side: its directory and state directory.
struct Recovery {
    dir: PathBuf,
    state: PathBuf,
}

fn recovery(s: &Site) -> Recovery {
    Recovery {
        dir: s.tmp.path().join("recovery"),
        state: s.tmp.path().join("state-recovery"),
    }
}

/// `failover --json` on the recovery host into `r.dir`, with `more` arguments.
fn failover(s: &Site, r: &Recovery, more: &[&str]) -> Output {
    let dir = r.dir.display().to_string();
    let mut args = vec![
        "failover",
        "--target",
        &s.server.url,
        "--group",
        &s.group,
        "--to",
        &dir,
        "--json",
    ];
    args.extend_from_slice(more);
    run_as(s, RECOVERY, &r.state, &args)
}

/// `sync --json` of the recovery directory on the recovery host.
fn sync_recovery(s: &Site, r: &Recovery) -> Output {
    let dir = r.dir.display().to_string();
    run_as(
        s,
        RECOVERY,
        &r.state,
        &[
            "sync",
            "--dir",
            &dir,
            "--target",
            &s.server.url,
            "--group",
            &s.group,
            "--json",
        ],
    )
}

/// `got` holds exactly the bytes of `want`, and the ext4 on it checks clean.
fn assert_same_and_fsck_clean(got: &Path, want: &Path) {
    assert_same_file(got, want);
    run(Command::new("e2fsck").args(["-fn"]).arg(got));
}

/// Reverse replication from the recovery site continues the group's chain: with the tracker
/// mounted over `r.dir`, a write (of `seed`) and a sync commit point `point` with no base copy.
fn assert_reverse_replication_continues(s: &Site, r: &Recovery, seed: u8, point: u64) {
    let rm = Mounted::in_place(&r.dir, &s.run_dir);
    write_at(
        &rm.path("disk0.img"),
        50 << 20,
        &random_bytes(&[seed], 65536),
    );
    let rep = json_of(&sync_recovery(s, r));
    assert_eq!(rep["base_copies"].as_array().unwrap().len(), 0, "{rep}");
    assert_eq!(rep["point"], point, "{rep}");
}

fn write_at(path: &Path, off: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, off).unwrap();
    f.sync_all().unwrap();
}

/// Bytes of `disk`'s logs on the host (active and sealed).
fn logged_bytes(dir: &Path, disk: &str) -> u64 {
    let active = dir.join(format!("{disk}.hrl"));
    sealed_logs(dir, disk)
        .iter()
        .chain([&active])
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn new_disk(path: &Path, len: usize, seed: u8) {
    std::fs::write(path, random_bytes(&[seed], len)).unwrap();
}

/// Unplanned failover to an older point (by id), the old primary fenced when it comes
/// back (its sync refuses, Critical, its logs stay, `status` names the owner), and reverse
/// replication from the recovery host with no base copy and about the changed bytes.
fn unplanned_failover_fences_the_old_primary_and_replicates_back(kind: ServerKind) {
    let s = Site::new(kind);
    let m = s.mount();
    new_disk(&m.path("disk0.img"), 8 << 20, 1);
    new_disk(&m.path("disk1.raw"), 2 << 20, 2);
    assert_eq!(s.sync()["point"], 1);
    let point1 = s.snapshot(1);
    write_at(&m.path("disk0.img"), 1 << 20, &random_bytes(&[3], 300_000));
    assert_eq!(s.sync()["point"], 2);

    // The primary is lost; the recovery host fails over to point 1.
    let r = recovery(&s);
    let out = json_of(&failover(&s, &r, &["--point", "1"]));
    assert_eq!(out["point"], 1, "{out}");
    assert!(out["bytes_downloaded"].as_u64().unwrap() > 0, "{out}");
    for d in ["disk0.img", "disk1.raw"] {
        assert_same_file(&r.dir.join(d), &point1.join(d));
    }

    // The old primary comes back: its next cycle is fenced, nothing is committed, its logs
    // stay on the host, and `status` says who owns the group.
    write_at(&m.path("disk1.raw"), 0, &random_bytes(&[4], 4096));
    let out = s.try_sync(&[]);
    assert!(!out.status.success(), "the fenced primary committed");
    let err = stderr(&out);
    assert!(err.contains(&format!("owned by host {RECOVERY}")), "{err}");
    assert!(
        err.contains("fenced") && err.contains("failover planned"),
        "{err}"
    );
    assert_eq!(s.points(), 2);
    assert!(
        logged_bytes(&s.dir, "disk1.raw") > 4096,
        "the fenced primary's change left its host"
    );
    let st = s.status();
    assert_eq!(st["health"], "Critical", "{st}");
    assert!(st["fenced_by"].as_str().unwrap().contains(RECOVERY), "{st}");
    let human = ok(&s.shipper(&["status", "--dir", s.dir.to_str().unwrap()], &[]));
    assert!(human.contains("role: fenced"), "{human}");
    drop(m);

    // Reverse replication: mount the tracker over the recovery directory and sync.
    let rm = Mounted::in_place(&r.dir, &s.run_dir);
    let changed = random_bytes(&[5], 1 << 20);
    write_at(&rm.path("disk0.img"), 3 << 20, &changed);
    let rep = json_of(&sync_recovery(&s, &r));
    assert_eq!(
        rep["point"], 3,
        "point 2 was fenced, its id stays taken: {rep}"
    );
    assert_eq!(rep["base_copies"].as_array().unwrap().len(), 0, "{rep}");
    let up = rep["log_bytes_uploaded"].as_u64().unwrap();
    assert!(
        up as f64 <= 1.05 * changed.len() as f64,
        "the first cycle after the failover uploaded {up} bytes for {} changed: {rep}",
        changed.len()
    );
    let st = json_of(&run_as(
        &s,
        RECOVERY,
        &r.state,
        &["status", "--dir", r.dir.to_str().unwrap(), "--json"],
    ));
    assert_eq!(st[0]["epoch"], 2, "{st}");
    assert_eq!(st[0]["disks"][0]["state"], "replicating", "{st}");
    // `points` says point 2 is fenced.
    let listing = ok(&s.shipper(
        &["points", "--target", &s.server.url, "--group", &s.group],
        &[],
    ));
    let fenced: Vec<&str> = listing.lines().filter(|l| l.contains("fenced")).collect();
    assert_eq!(fenced.len(), 1, "{listing}");
    // The store's latest point is the recovery host's disks.
    let restored = s.tmp.path().join("restore-latest");
    ok(&s.try_restore("latest", &restored));
    rm.unmount();
    for d in ["disk0.img", "disk1.raw"] {
        assert_same_file(&restored.join(d), &r.dir.join(d));
    }
}

#[test]
fn unplanned_failover_local() {
    unplanned_failover_fences_the_old_primary_and_replicates_back(ServerKind::Local);
}

#[test]
fn unplanned_failover_moto() {
    unplanned_failover_fences_the_old_primary_and_replicates_back(ServerKind::Moto);
}

#[test]
fn unplanned_failover_azurite() {
    unplanned_failover_fences_the_old_primary_and_replicates_back(ServerKind::Azurite);
}

/// Holds the primary's sync at stop point `at`, takes the group over meanwhile, lets the
/// sync go on; returns whether it succeeded and its stderr.
fn race(s: &Site, r: &Recovery, at: &str) -> (bool, String) {
    let err_file = s.tmp.path().join(format!("race-{at}.stderr"));
    let mut sync = s.cmd("sync", &["--json"]);
    sync.env("HRL_SHIPPER_STOP_AT", at)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_file).unwrap());
    let mut child = KillOnDrop::spawn(&mut sync);
    let marker = s.state.join(format!("stopped-at-{at}"));
    wait_until(Duration::from_secs(60), "the sync to pause", || {
        marker.exists()
    });
    let out = json_of(&failover(s, r, &[]));
    assert_eq!(out["epoch"], 2, "{out}");
    signal(child.id(), "CONT");
    let status = wait_exit(&mut child.0, Duration::from_secs(60), "the held sync");
    (
        status.success(),
        std::fs::read_to_string(&err_file).unwrap(),
    )
}

/// The race between a takeover and a commit on the old owner, both ways round
/// (docs/store-layout.md, "Ownership"): a takeover before the owner's last check stops the
/// commit; a takeover between that check and the manifest leaves a point its old owner
/// committed after losing the group, which is fenced (not `latest`, not in the new
/// owner's chain), and the old owner acks nothing.
#[test]
fn a_takeover_racing_a_commit_fences_it() {
    for (at, committed) in [("before-commit", false), ("in-commit", true)] {
        let s = Site::new(ServerKind::Local);
        let m = s.mount();
        new_disk(&m.path("disk0.img"), 4 << 20, 1);
        assert_eq!(s.sync()["point"], 1);
        write_at(&m.path("disk0.img"), 0, &random_bytes(&[2], 100_000));
        let r = recovery(&s);
        let (succeeded, err) = race(&s, &r, at);
        assert!(!succeeded, "{at}: the old owner's sync succeeded");
        assert!(err.contains("fenced"), "{at}: {err}");
        assert_eq!(s.points(), 1 + usize::from(committed), "{at}");
        assert!(
            !sealed_logs(&s.dir, "disk0.img").is_empty(),
            "{at}: the old owner acked its logs"
        );
        assert!(logged_bytes(&s.dir, "disk0.img") > 100_000, "{at}");
        drop(m);
        // The new owner continues from point 1 either way.
        let rm = Mounted::in_place(&r.dir, &s.run_dir);
        write_at(&rm.path("disk0.img"), 1 << 20, &random_bytes(&[3], 4096));
        let rep = json_of(&sync_recovery(&s, &r));
        assert_eq!(
            rep["base_copies"].as_array().unwrap().len(),
            0,
            "{at}: {rep}"
        );
        assert_eq!(rep["point"], 2 + u64::from(committed), "{at}: {rep}");
        let restored = s.tmp.path().join("restore-latest");
        ok(&s.try_restore("latest", &restored));
        rm.unmount();
        assert_same_file(&restored.join("disk0.img"), &r.dir.join("disk0.img"));
    }
}

/// Bad input: an unknown group or point, a directory that is not empty, a live tracker
/// mount (for a failover and a `--prepare` alike); each a clear error and nothing changed
/// (no owner record taken, no file made).
#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let s = Site::new(ServerKind::Local);
    let m = s.mount();
    new_disk(&m.path("disk0.img"), 1 << 20, 1);
    assert_eq!(s.sync()["point"], 1);
    let r = recovery(&s);
    let owners = || {
        std::fs::read_dir(s.store_group().join("owner"))
            .unwrap()
            .count()
    };
    let dir = r.dir.display().to_string();
    let fail = |args: &[&str], want: &str| {
        let out = run_as(&s, RECOVERY, &r.state, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    };
    let url = s.server.url.clone();
    fail(
        &[
            "failover", "--target", &url, "--group", "nope", "--to", &dir,
        ],
        "has no recovery points",
    );
    fail(
        &[
            "failover", "--target", &url, "--group", "vm1", "--to", &dir, "--point", "7",
        ],
        "recovery point 7 does not exist",
    );
    std::fs::create_dir_all(&r.dir).unwrap();
    std::fs::write(r.dir.join("other.txt"), b"x").unwrap();
    fail(
        &["failover", "--target", &url, "--group", "vm1", "--to", &dir],
        "is not empty",
    );
    fail(
        &[
            "failover",
            "--prepare",
            "--target",
            &url,
            "--group",
            "vm1",
            "--to",
            &dir,
        ],
        "is not empty",
    );
    let live = s.dir.display().to_string();
    let live_before = names(&s.dir);
    for prepare in [false, true] {
        let mut args = vec![
            "failover", "--target", &url, "--group", "vm1", "--to", &live,
        ];
        if prepare {
            args.push("--prepare");
        }
        fail(&args, "is a live tracker mount");
    }
    assert_eq!(
        names(&s.dir),
        live_before,
        "a refused prepare changed the mount"
    );
    assert_eq!(owners(), 1, "a refused failover took the group");
    assert_eq!(std::fs::read_dir(&r.dir).unwrap().count(), 1);
    assert!(
        !r.state.join("prepare.key").exists(),
        "a refused prepare made its key"
    );
    drop(m);
    // A point chosen by time.
    std::fs::remove_file(r.dir.join("other.txt")).unwrap();
    let now = run(Command::new("date").args(["-u", "-d", "2 seconds", "+%Y-%m-%dT%H:%M:%SZ"]));
    let out = json_of(&run_as(
        &s,
        RECOVERY,
        &r.state,
        &[
            "failover",
            "--target",
            &url,
            "--group",
            "vm1",
            "--to",
            &dir,
            "--point",
            now.trim(),
            "--json",
        ],
    ));
    assert_eq!(out["point"], 1, "{out}");
    assert_eq!(owners(), 2);
}

/// Blocks of `block` bytes in which two files of equal size differ.
fn differing_blocks(a: &Path, b: &Path, block: usize) -> u64 {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(a.len(), b.len());
    a.chunks(block)
        .zip(b.chunks(block))
        .filter(|(x, y)| x != y)
        .count() as u64
}

/// ext4 on a loop device over `disk` (a file under a tracker mount): `f` runs with the
/// filesystem mounted at `mnt`; unmounted and detached after.
fn on_ext4(disk: &Path, mnt: &Path, fresh: bool, f: impl FnOnce(&Path)) {
    if fresh {
        let fs = LoopFs::create(disk, mnt);
        f(&fs.mnt);
    } else {
        let dev = run(Command::new("losetup").args(["-f", "--show"]).arg(disk))
            .trim()
            .to_string();
        let _undo = Undo(vec![vec!["losetup".into(), "-d".into(), dev.clone()]]);
        std::fs::create_dir_all(mnt).unwrap();
        run(Command::new("mount").arg(&dev).arg(mnt));
        let _umount = Undo(vec![vec!["umount".into(), mnt.display().to_string()]]);
        f(mnt);
    }
}

/// Failback: the original host comes back with its old disk (ext4, with a change of its
/// own made after it lost the group), and `failover` onto that directory downloads only
/// what differs from the recovery host's latest point (<= 1.1x the differing blocks), the
/// disk equals the point byte for byte and fscks clean, and replication resumes with no
/// base copy; `--full` downloads everything.
#[test]
fn failback_onto_the_old_disks_is_a_delta() {
    const BLOCK: usize = 256 * 1024;
    let s = Site::new(ServerKind::Local);
    let m = s.mount();
    let disk = m.path("disk0.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mnt = s.tmp.path().join("mnt");
    on_ext4(&disk, &mnt, true, |fs| {
        std::fs::write(fs.join("a.bin"), random_bytes(&[1], 8 << 20)).unwrap();
    });
    assert_eq!(s.sync()["point"], 1);
    let r = recovery(&s);
    ok(&failover(&s, &r, &[]));
    // The old primary, fenced, still changes its disk (the change it cannot ship).
    on_ext4(&disk, &mnt, false, |fs| {
        std::fs::write(fs.join("lost.bin"), random_bytes(&[2], 512 << 10)).unwrap();
    });
    drop(m);
    // The recovery host works: a file changed, replicated.
    let rm = Mounted::in_place(&r.dir, &s.run_dir);
    on_ext4(&rm.path("disk0.img"), &mnt, false, |fs| {
        write_at(&fs.join("a.bin"), 1 << 20, &random_bytes(&[3], 600 << 10));
    });
    let rep = json_of(&sync_recovery(&s, &r));
    assert_eq!(rep["base_copies"].as_array().unwrap().len(), 0, "{rep}");
    rm.unmount();
    let want = r.dir.join("disk0.img");
    let differing = differing_blocks(&s.dir.join("disk0.img"), &want, BLOCK);
    assert!(differing > 0);

    // Failback (unplanned here: the original host takes the group back).
    let dir = s.dir.display().to_string();
    let args = [
        "failover",
        "--target",
        &s.server.url,
        "--group",
        &s.group,
        "--to",
        &dir,
        "--json",
    ];
    let out = json_of(&s.shipper(&args, &[]));
    assert_eq!(out["disks"][0]["how"], "delta", "{out}");
    let down = out["bytes_downloaded"].as_u64().unwrap();
    let limit = 1.1 * (differing as usize * BLOCK) as f64;
    assert!(
        down as f64 <= limit,
        "downloaded {down} bytes for {differing} differing blocks of {BLOCK}: {out}"
    );
    assert_same_and_fsck_clean(&s.dir.join("disk0.img"), &want);
    assert!(
        std::fs::read_dir(&s.dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with("hrl-failback")),
        "the failback marker stayed"
    );

    // Replication resumes from the original host with no base copy.
    let m = s.mount();
    write_at(&m.path("disk0.img"), 40 << 20, &random_bytes(&[4], 8192));
    let rep = s.sync();
    assert_eq!(rep["base_copies"].as_array().unwrap().len(), 0, "{rep}");
    drop(m);

    // --full downloads every disk whole.
    let mut full = args.to_vec();
    full.push("--full");
    let out = json_of(&s.shipper(&full, &[]));
    assert_eq!(out["disks"][0]["how"], "full", "{out}");
    assert!(
        out["bytes_downloaded"].as_u64().unwrap() >= 8 << 20,
        "{out}"
    );
    let latest = s.tmp.path().join("latest");
    ok(&s.try_restore("latest", &latest));
    assert_same_file(&s.dir.join("disk0.img"), &latest.join("disk0.img"));
}

/// Planned failover on ext4 in a disk: refused (naming the file, nothing changed) while the
/// disk is open for writing; then the directory goes read-only (EROFS), the final point is
/// shipped and handed over; `failover` on the recovery host defaults to that point and its
/// disks equal the source byte for byte; replication continues there with no base copy.
fn planned_failover_is_lossless(kind: ServerKind) {
    let s = Site::new(kind);
    let m = s.mount();
    let disk = m.path("disk0.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mnt = s.tmp.path().join("mnt");
    on_ext4(&disk, &mnt, true, |fs| {
        std::fs::write(fs.join("a.bin"), random_bytes(&[1], 4 << 20)).unwrap();
    });
    assert_eq!(s.sync()["point"], 1);
    on_ext4(&disk, &mnt, false, |fs| {
        std::fs::write(fs.join("b.bin"), random_bytes(&[2], 1 << 20)).unwrap();
    });
    // Owner records are counted on a local store (the others: the points).
    let local = matches!(kind, ServerKind::Local);
    let owners = || match local {
        true => std::fs::read_dir(s.store_group().join("owner")).map_or(0, |d| d.count()),
        false => 1,
    };
    let dir = s.dir.display().to_string();
    let planned = |json: bool| {
        let mut a = vec![
            "failover",
            "planned",
            "--dir",
            &dir,
            "--target",
            &s.server.url,
            "--group",
            &s.group,
        ];
        if json {
            a.push("--json");
        }
        s.shipper(&a, &[])
    };
    // Refused while the disk is open for writing.
    let writer = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    let out = planned(false);
    assert!(!out.status.success(), "planned failover with a writer");
    assert!(stderr(&out).contains("disk0.img"), "{}", stderr(&out));
    assert_eq!(
        (s.points(), owners()),
        (1, 1),
        "a refused hand-over changed the store"
    );
    use std::os::unix::fs::FileExt;
    writer.write_all_at(b"still writable", 0).unwrap();
    writer.write_all_at(&[0u8; 14], 0).unwrap();
    drop(writer);

    let h = json_of(&planned(true));
    assert_eq!(h["point"], 2, "{h}");
    // Writes after the hand-over are refused: nothing can diverge from point 2.
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let e = std::fs::write(m.path("new.img"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let human = ok(&s.shipper(&["status", "--dir", &dir], &[]));
    assert!(human.contains("handed it over at point 2"), "{human}");
    // The primary's next sync is fenced.
    assert!(!s.try_sync(&[]).status.success());

    let r = recovery(&s);
    let out = json_of(&failover(&s, &r, &[]));
    assert_eq!(
        out["point"], 2,
        "the handed-over point is the default: {out}"
    );
    assert_same_and_fsck_clean(&r.dir.join("disk0.img"), &disk);
    drop(m);
    assert_reverse_replication_continues(&s, &r, 3, 3);
}

#[test]
fn planned_failover_local() {
    planned_failover_is_lossless(ServerKind::Local);
}

#[test]
fn planned_failover_moto() {
    planned_failover_is_lossless(ServerKind::Moto);
}

#[test]
fn planned_failover_azurite() {
    planned_failover_is_lossless(ServerKind::Azurite);
}

/// A failback killed (-9) in the middle of its in-place delta leaves the marker and no
/// tracker files, so a tracker mounted over it treats the disk as new (another disk id, a
/// full copy: never a clean disk); running the failover again finishes it.
#[test]
fn a_failback_killed_mid_delta_is_finished_by_running_it_again() {
    let s = Site::new(ServerKind::Local);
    let m = s.mount();
    new_disk(&m.path("disk0.img"), 8 << 20, 1);
    assert_eq!(s.sync()["point"], 1);
    drop(m);
    let r = recovery(&s);
    ok(&failover(&s, &r, &[]));
    let rm = Mounted::in_place(&r.dir, &s.run_dir);
    write_at(&rm.path("disk0.img"), 2 << 20, &random_bytes(&[2], 1 << 20));
    let point_id = json_of(&sync_recovery(&s, &r))["point"].as_u64().unwrap();
    rm.unmount();
    let disk_id = s.manifest(point_id)["disks"][0]["disk_id"]
        .as_str()
        .unwrap()
        .to_string();

    let dir = s.dir.display().to_string();
    let args = [
        "failover",
        "--target",
        &s.server.url,
        "--group",
        &s.group,
        "--to",
        &dir,
        "--json",
    ];
    let marker = s.state.join("stopped-at-mid-failback");
    kill9_at_stop_point(s.command(&args, &[]), &marker, "mid-failback");
    let failback = s.dir.join(format!(".{disk_id}.hrl-failback"));
    assert!(failback.exists(), "no marker after an interrupted delta");
    assert!(!s.dir.join("disk0.img.hrl-bitmap").exists());
    {
        let m = s.mount();
        let st = m.status_json();
        let id = st["disks"][0]["disk_id"].as_str().unwrap();
        assert_ne!(
            id, disk_id,
            "the tracker took the half-done disk for the replica: {st}"
        );
    }
    let out = json_of(&s.shipper(&args, &[]));
    assert_eq!(out["disks"][0]["how"], "delta", "{out}");
    assert_same_file(&s.dir.join("disk0.img"), &r.dir.join("disk0.img"));
    assert!(!failback.exists(), "the marker stayed");
}

/// `failover --prepare --json` on the recovery host into `r.dir` (state dir `state`).
fn prepare_as(s: &Site, r: &Recovery, state: &Path, more: &[&str]) -> Command {
    let dir = r.dir.display().to_string();
    let mut args = vec![
        "failover",
        "--prepare",
        "--target",
        &s.server.url,
        "--group",
        &s.group,
        "--to",
        &dir,
        "--json",
    ];
    args.extend_from_slice(more);
    as_host(s, RECOVERY, state, &args)
}

fn prepare(s: &Site, r: &Recovery) -> serde_json::Value {
    json_of(&prepare_as(s, r, &r.state, &[]).output().unwrap())
}

/// How the first disk was brought up, from a failover's or a prepare's JSON.
fn how(v: &serde_json::Value) -> String {
    v["disks"][0]["how"].as_str().unwrap().to_string()
}

/// Every file under `root` with its size and modification time (a local store's objects).
fn tree(root: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if md.is_dir() {
                todo.push(e.path());
            } else {
                out.push((e.path(), md.len(), md.modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// What a prepare may leave: the hidden disks and the marker, and in the state directory
/// only the key (no shipper state, no tracker files, no final names).
fn assert_only_prepared(r: &Recovery, disk_id: &str) {
    let mut want = vec![
        ".hrl-prepared.json".to_string(),
        format!(".{disk_id}.hrl-prepared"),
    ];
    want.sort();
    assert_eq!(
        names(&r.dir),
        want,
        "a prepare left more than its hidden disk and marker"
    );
    let state: Vec<String> = names(&r.state)
        .into_iter()
        .filter(|n| !n.starts_with("stopped-at-"))
        .collect();
    assert_eq!(
        state,
        vec!["prepare.key".to_string()],
        "a prepare wrote state"
    );
}

/// Prepared failover: `--prepare` while the primary is live and writing (and committing a
/// point meanwhile), again after more points (only the logs since), a planned failover on
/// the primary, then the final pass downloads no more than 1.1x the blocks that differ
/// from the prepared disk; the disk equals the primary's byte for byte and fscks clean, and
/// reverse replication continues with no base copy. A prepare takes nothing and writes
/// nothing to the store.
fn prepared_failover(kind: ServerKind) {
    const BLOCK: usize = 256 * 1024;
    let s = Site::new(kind);
    let m = s.mount();
    let disk = m.path("disk0.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mnt = s.tmp.path().join("mnt");
    on_ext4(&disk, &mnt, true, |fs| {
        std::fs::write(fs.join("a.bin"), random_bytes(&[1], 8 << 20)).unwrap();
    });
    assert_eq!(s.sync()["point"], 1);
    let local = matches!(kind, ServerKind::Local);
    let store_tree = || match local {
        true => tree(&s.store_group()),
        false => Vec::new(),
    };
    let r = recovery(&s);

    // The first prepare runs while the primary writes and commits a point.
    let mut cmd = prepare_as(&s, &r, &r.state, &[]);
    let first = std::thread::scope(|scope| {
        let job = scope.spawn(move || cmd.output().unwrap());
        on_ext4(&disk, &mnt, false, |fs| {
            let f = std::fs::File::create(fs.join("b.bin")).unwrap();
            use std::os::unix::fs::FileExt;
            for i in 0..16u64 {
                f.write_all_at(&random_bytes(&[2, i as u8], 64 << 10), i << 16)
                    .unwrap();
                f.sync_all().unwrap();
            }
        });
        let p = s.sync();
        let out = job.join().unwrap();
        (p, out)
    });
    assert_eq!(first.0["point"], 2, "{}", first.0);
    let first = json_of(&first.1);
    assert_eq!(how(&first), "full", "{first}");
    let disk_id = names(&r.dir)
        .iter()
        .find_map(|n| {
            n.strip_prefix('.')?
                .strip_suffix(".hrl-prepared")
                .map(str::to_string)
        })
        .unwrap();
    let hidden = r.dir.join(format!(".{disk_id}.hrl-prepared"));
    assert_only_prepared(&r, &disk_id);

    // More points; a second prepare fetches only the logs since, writes nothing to the store.
    on_ext4(&disk, &mnt, false, |fs| {
        std::fs::write(fs.join("c.bin"), random_bytes(&[3], 1 << 20)).unwrap();
    });
    assert_eq!(s.sync()["point"], 3);
    let before = store_tree();
    let second = prepare(&s, &r);
    assert_eq!(how(&second), "prepared", "{second}");
    assert_eq!(second["point"], 3, "{second}");
    assert_eq!(store_tree(), before, "a prepare wrote to the store");
    assert_only_prepared(&r, &disk_id);
    on_ext4(&disk, &mnt, false, |fs| {
        std::fs::write(fs.join("d.bin"), random_bytes(&[4], 1 << 20)).unwrap();
    });
    assert_eq!(s.sync()["point"], 4);

    // Planned failover on the primary, then the final pass.
    let dir = s.dir.display().to_string();
    let h = json_of(&s.shipper(
        &[
            "failover",
            "planned",
            "--dir",
            &dir,
            "--target",
            &s.server.url,
            "--group",
            &s.group,
            "--json",
        ],
        &[],
    ));
    assert_eq!(h["point"], 5, "{h}");
    let differing = differing_blocks(&hidden, &disk, BLOCK);
    assert!(differing > 0);
    let out = json_of(&failover(&s, &r, &[]));
    assert_eq!(out["point"], 5, "{out}");
    assert_eq!(how(&out), "prepared", "{out}");
    let down = out["bytes_downloaded"].as_u64().unwrap();
    let limit = 1.1 * (differing as usize * BLOCK) as f64;
    assert!(
        down as f64 <= limit,
        "the final pass downloaded {down} bytes for {differing} differing blocks of {BLOCK}: {out}"
    );
    assert_same_and_fsck_clean(&r.dir.join("disk0.img"), &disk);
    assert!(
        !hidden.exists() && !r.dir.join(".hrl-prepared.json").exists(),
        "the prepared disk or its marker stayed: {:?}",
        names(&r.dir)
    );
    drop(m);
    assert_reverse_replication_continues(&s, &r, 5, 6);
}

#[test]
fn prepared_failover_local() {
    prepared_failover(ServerKind::Local);
}

#[test]
fn prepared_failover_moto() {
    prepared_failover(ServerKind::Moto);
}

/// A prepare killed (-9) at its pause point `mid-prepare` (its disk changed in part, its
/// entry already gone) is finished by running it again (a delta). Only the prepare's own,
/// intact marker is trusted: an edited entry (claiming the latest point), a cut marker, one
/// signed under another state directory's key, and a prepared disk written after its
/// prepare all fall back to the delta and still give the point's bytes; the final pass
/// names the disk.
#[test]
fn prepare_is_resumable_and_trusts_only_its_own_marker() {
    let s = Site::new(ServerKind::Local);
    let m = s.mount();
    let disk = m.path("disk0.img");
    new_disk(&disk, 8 << 20, 1);
    assert_eq!(s.sync()["point"], 1);
    let disk_id = s.manifest(1)["disks"][0]["disk_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = recovery(&s);
    let hidden = r.dir.join(format!(".{disk_id}.hrl-prepared"));
    let marker = r.dir.join(".hrl-prepared.json");
    let owners = || {
        std::fs::read_dir(s.store_group().join("owner"))
            .unwrap()
            .count()
    };
    let mut n = 1u8;
    let mut new_point = || {
        n += 1;
        write_at(&disk, u64::from(n) * 300_000, &random_bytes(&[n], 100_000));
        s.sync()["point"].as_u64().unwrap()
    };
    let before = tree(&s.store_group());
    let p = prepare(&s, &r);
    assert_eq!(how(&p), "full", "{p}");
    assert_eq!(
        tree(&s.store_group()),
        before,
        "a prepare wrote to the store"
    );
    assert_only_prepared(&r, &disk_id);
    assert_same_file(&hidden, &disk);

    // Killed half way through catching up over two logs: the entry is gone, the rerun deltas.
    new_point();
    new_point();
    let paused = r.state.join("stopped-at-mid-prepare");
    let mut cmd = prepare_as(&s, &r, &r.state, &[]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = spawn_paused_at(cmd, &paused, "mid-prepare");
    signal(child.id(), "KILL");
    let _ = child.0.wait();
    let left: serde_json::Value = serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    assert_eq!(left["disks"].as_array().unwrap().len(), 0, "{left}");
    let p = prepare(&s, &r);
    assert_eq!(how(&p), "delta", "{p}");
    assert_same_file(&hidden, &disk);
    new_point();
    let p = prepare(&s, &r);
    assert_eq!(how(&p), "prepared", "{p}");
    assert_same_file(&hidden, &disk);

    // An entry edited to claim the latest point.
    let latest = new_point();
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    let e = s.manifest(latest)["disks"][0].clone();
    v["disks"][0]["point"] = latest.into();
    v["disks"][0]["last_seq"] = e["last_seq"].clone();
    v["disks"][0]["chain_hash"] = e["last_chain_hash"].clone();
    std::fs::write(&marker, serde_json::to_vec(&v).unwrap()).unwrap();
    let p = prepare(&s, &r);
    assert_eq!(how(&p), "delta", "an edited marker was trusted: {p}");
    assert_same_file(&hidden, &disk);

    // A cut marker.
    new_point();
    let bytes = std::fs::read(&marker).unwrap();
    std::fs::write(&marker, &bytes[..bytes.len() / 2]).unwrap();
    let p = prepare(&s, &r);
    assert_eq!(how(&p), "delta", "a cut marker was trusted: {p}");
    assert_same_file(&hidden, &disk);

    // A marker signed under another key (another state directory): foreign both ways.
    new_point();
    let other = s.tmp.path().join("state-other");
    let p = json_of(&prepare_as(&s, &r, &other, &[]).output().unwrap());
    assert_eq!(
        how(&p),
        "delta",
        "another key's prepare trusted the marker: {p}"
    );
    new_point();
    let p = prepare(&s, &r);
    assert_eq!(how(&p), "delta", "a foreign marker was trusted: {p}");
    assert_same_file(&hidden, &disk);

    // The prepared disk written after its prepare.
    new_point();
    let p = prepare(&s, &r);
    assert_eq!(how(&p), "prepared", "{p}");
    write_at(&hidden, 5 << 20, b"written after the prepare");
    new_point();
    let p = prepare(&s, &r);
    assert_eq!(
        how(&p),
        "delta",
        "a prepared disk written since was trusted: {p}"
    );
    assert_same_file(&hidden, &disk);
    assert_eq!(owners(), 1, "a prepare took the group");

    // The final pass catches up and names the disk.
    new_point();
    drop(m);
    let out = json_of(&failover(&s, &r, &[]));
    assert_eq!(how(&out), "prepared", "{out}");
    assert_same_file(&r.dir.join("disk0.img"), &s.dir.join("disk0.img"));
    assert_eq!(owners(), 2);
    assert!(!hidden.exists() && !marker.exists(), "{:?}", names(&r.dir));
}

/// Which disks the final pass finds: `Prepared`, a recovery directory where `disk0.img` was
/// prepared (`--prepare`, then caught up) and `disk1.img` is new; `Delta`, a failback onto
/// the original directory, `disk0.img` there at its size (by delta) and `disk1.img` new.
/// Between the two both renames run: a prepared disk's over its final name (`Prepared`)
/// and a restored one's (both); the first disk named is the prepared one in `Prepared`, the
/// restored one in `Delta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Final {
    Prepared,
    Delta,
}

/// One side's failover: the directory, the state directory and the host name (None: this
/// machine's).
struct Side {
    dir: PathBuf,
    state: PathBuf,
    host: Option<&'static str>,
}

impl Side {
    /// `hrl-shipper ARGS` on this side.
    fn command(&self, s: &Site, args: &[&str]) -> Command {
        match self.host {
            Some(h) => as_host(s, h, &self.state, args),
            None => {
                let mut c = s.command(args, &[]);
                c.env("HRL_STATE_DIR", &self.state);
                c
            }
        }
    }

    /// `failover --json` into this side's directory, with `more` arguments.
    fn failover(&self, s: &Site, more: &[&str]) -> Command {
        let dir = self.dir.display().to_string();
        let mut args = vec![
            "failover",
            "--target",
            &s.server.url,
            "--group",
            &s.group,
            "--to",
            &dir,
            "--json",
        ];
        args.extend_from_slice(more);
        self.command(s, &args)
    }

    /// `failover planned --json` of this side's directory (mounted), which must succeed.
    fn planned(&self, s: &Site) -> serde_json::Value {
        let dir = self.dir.display().to_string();
        let args = [
            "failover",
            "planned",
            "--dir",
            &dir,
            "--target",
            &s.server.url,
            "--group",
            &s.group,
            "--json",
        ];
        json_of(&self.command(s, &args).output().unwrap())
    }

    /// `sync --json` of this side's directory.
    fn sync(&self, s: &Site) -> Output {
        let dir = self.dir.display().to_string();
        let args = [
            "sync",
            "--dir",
            &dir,
            "--target",
            &s.server.url,
            "--group",
            &s.group,
            "--json",
        ];
        self.command(s, &args).output().unwrap()
    }
}

/// The group's owner records in the local store, by epoch.
fn owner_records(s: &Site) -> Vec<serde_json::Value> {
    let mut v: Vec<serde_json::Value> = std::fs::read_dir(s.store_group().join("owner"))
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    v.sort_by_key(|r| r["epoch"].as_u64().unwrap());
    v
}

/// The disk ids of point `id`, by disk name.
fn disk_ids(s: &Site, id: u64) -> Vec<(String, String)> {
    let m = s.manifest(id);
    let mut v: Vec<(String, String)> = m["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["disk_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

const DISKS: [&str; 2] = ["disk0.img", "disk1.img"];

/// Builds the group of two disks for the final pass `kind`; returns the side that runs it,
/// the point it must rebuild and the directory holding that point's disks (the source at
/// its seal). The tracker mounts are gone when this returns.
fn final_pass_setup(s: &Site, kind: Final) -> (Side, u64, PathBuf) {
    let m = s.mount();
    new_disk(&m.path("disk0.img"), 4 << 20, 1);
    assert_eq!(s.sync()["point"], 1);
    let r = recovery(s);
    match kind {
        Final::Prepared => {
            assert_eq!(how(&prepare(s, &r)), "full");
            write_at(&m.path("disk0.img"), 1 << 20, &random_bytes(&[2], 200_000));
            new_disk(&m.path("disk1.img"), 2 << 20, 3);
            assert_eq!(s.sync()["point"], 2);
            let dir = s.dir.display().to_string();
            let h = s.shipper_ok(
                &[
                    "failover",
                    "planned",
                    "--dir",
                    &dir,
                    "--target",
                    &s.server.url,
                    "--group",
                    &s.group,
                    "--json",
                ],
                &[],
            );
            assert_eq!(h["point"], 3, "{h}");
            drop(m);
            let side = Side {
                dir: r.dir,
                state: r.state,
                host: Some(RECOVERY),
            };
            (side, 3, s.dir.clone())
        }
        Final::Delta => {
            drop(m);
            ok(&failover(s, &r, &[]));
            let rm = Mounted::in_place(&r.dir, &s.run_dir);
            write_at(&rm.path("disk0.img"), 1 << 20, &random_bytes(&[2], 200_000));
            new_disk(&rm.path("disk1.img"), 2 << 20, 3);
            let p = json_of(&sync_recovery(s, &r))["point"].as_u64().unwrap();
            rm.unmount();
            let side = Side {
                dir: s.dir.clone(),
                state: s.state.clone(),
                host: None,
            };
            (side, p, r.dir)
        }
    }
}

/// Files a finished failover must not leave in its directory: prepared disks, their
/// marker, failback markers, partial restores, temporary directories.
fn assert_no_leftovers(dir: &Path) {
    let left: Vec<String> = names(dir)
        .into_iter()
        .filter(|n| {
            n.ends_with(".hrl-prepared")
                || n.starts_with(".hrl-prepared.json")
                || n.ends_with(".hrl-failback")
                || n.ends_with(".hrl-restoring")
                || n.starts_with(".hrl-prepare-")
                || n.starts_with(".hrl-failback-logs")
                || n.starts_with(".hrl-restore-logs")
        })
        .collect();
    assert!(
        left.is_empty(),
        "the failover left {left:?} in {}",
        dir.display()
    );
}

/// A failover of `kind` killed (-9) at stop point `at` of its final pass, then run again
/// (with `more` arguments: `--full`, or none): the rerun finishes it. Every disk equals the
/// point, the group was taken once (one more owner record, this host's, at the point; the
/// rerun reports the same point, epoch and previous owner), nothing of the failover is
/// left; with the tracker mounted over the directory a sync commits the next point, with
/// no base copy, continuing the chain (same disk ids), and it restores to the disks.
fn killed_final_pass_is_finished_by_running_it_again(kind: Final, at: &str, more: &[&str]) {
    let s = Site::new(ServerKind::Local);
    let (side, point, source) = final_pass_setup(&s, kind);
    let owners_before = owner_records(&s).len();
    let marker = side.state.join(format!("stopped-at-{at}"));
    let st = kill9_at_stop_point(side.failover(&s, &[]), &marker, at);
    assert!(
        !st.success(),
        "{kind:?} {at}: the killed failover succeeded"
    );
    let taken = owner_records(&s).len() > owners_before;
    let after_takeover = FAILOVER_FINAL_PASS_STOPS
        .iter()
        .position(|p| *p == at)
        .unwrap()
        >= 2;
    assert_eq!(taken, after_takeover, "{kind:?} {at}: owner records");

    let out = side.failover(&s, more).output().unwrap();
    let v = json_of(&out);
    let ctx = format!("{kind:?} {at} {more:?}: {v}");
    let records = owner_records(&s);
    assert_eq!(records.len(), owners_before + 1, "{ctx}: {records:?}");
    let last = records.last().unwrap();
    assert_eq!(last["point"], point, "{ctx}: {last}");
    assert_eq!(last["state"], "active", "{ctx}: {last}");
    let host = match side.host {
        Some(h) => h.to_string(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .to_string(),
    };
    assert_eq!(last["host"], host.as_str(), "{ctx}: {last}");
    assert_eq!(
        last["dir"],
        side.dir.canonicalize().unwrap().to_str().unwrap(),
        "{ctx}"
    );
    assert_eq!(v["point"], point, "{ctx}");
    assert_eq!(v["epoch"], last["epoch"], "{ctx}");
    assert!(
        v["previous_owner"].as_str().is_some_and(|o| !o.is_empty()),
        "{ctx}: the rerun does not say whom the group was taken from"
    );
    let hows: Vec<(String, String)> = v["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["how"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        hows.iter().map(|h| h.0.as_str()).collect::<Vec<_>>(),
        DISKS,
        "{ctx}"
    );
    let allowed: &[&str] = if more.contains(&"--full") {
        &["full"][..]
    } else {
        &["full", "delta", "prepared", "kept"][..]
    };
    assert!(
        hows.iter().all(|h| allowed.contains(&h.1.as_str())),
        "{ctx}"
    );
    for d in DISKS {
        assert_same_file(&side.dir.join(d), &source.join(d));
    }
    assert_no_leftovers(&side.dir);

    // Reverse replication continues the chain from the point.
    let ids = disk_ids(&s, point);
    let m = Mounted::in_place(&side.dir, &s.run_dir);
    write_at(&m.path("disk1.img"), 4096, &random_bytes(&[9], 8192));
    let rep = json_of(&side.sync(&s));
    assert_eq!(
        rep["base_copies"].as_array().unwrap().len(),
        0,
        "{ctx}: {rep}"
    );
    let next = rep["point"].as_u64().unwrap();
    assert!(next > point, "{ctx}: {rep}");
    assert_eq!(disk_ids(&s, next), ids, "{ctx}: the chain did not continue");
    m.unmount();
    let restored = s.restore(next);
    for d in DISKS {
        assert_same_file(&restored.join(d), &side.dir.join(d));
    }
}

#[test]
fn a_failover_killed_after_the_first_rename_is_finished_by_running_it_again() {
    for kind in [Final::Prepared, Final::Delta] {
        killed_final_pass_is_finished_by_running_it_again(kind, "failover-after-rename", &[]);
    }
}

#[test]
fn a_failover_killed_before_its_takeover_is_finished_by_running_it_again() {
    for kind in [Final::Prepared, Final::Delta] {
        killed_final_pass_is_finished_by_running_it_again(kind, "failover-before-takeover", &[]);
    }
}

#[test]
fn a_failover_killed_after_its_takeover_is_finished_by_running_it_again() {
    for kind in [Final::Prepared, Final::Delta] {
        killed_final_pass_is_finished_by_running_it_again(kind, "failover-after-takeover", &[]);
    }
}

#[test]
fn a_failover_killed_mid_reverse_is_finished_by_running_it_again() {
    for kind in [Final::Prepared, Final::Delta] {
        killed_final_pass_is_finished_by_running_it_again(kind, "failover-mid-reverse", &[]);
    }
}

#[test]
fn a_failover_killed_after_reverse_is_finished_by_running_it_again() {
    for kind in [Final::Prepared, Final::Delta] {
        killed_final_pass_is_finished_by_running_it_again(kind, "failover-after-reverse", &[]);
    }
}

/// After a kill anywhere in the final pass, the operator runs the failover with `--full`
/// instead: every disk is downloaded whole and the result is the same.
#[test]
fn a_killed_failover_finished_with_full_is_the_same() {
    for (i, at) in FAILOVER_FINAL_PASS_STOPS.iter().enumerate() {
        let kind = [Final::Prepared, Final::Delta][i % 2];
        killed_final_pass_is_finished_by_running_it_again(kind, at, &["--full"]);
    }
}

/// A failover killed after its takeover and not run again: the directory is used as it
/// is. Mounted and synced, it commits a point that restores to its disks (with the tracker
/// files whole, `failover-after-reverse`: the shipper state missing, the same chain, no
/// copy but a resync against the point); a planned failover from there hands over a point
/// that restores to them too; the failover run again afterwards takes that point.
#[test]
fn a_failover_killed_after_its_takeover_and_used_as_it_is_corrupts_nothing() {
    for at in &FAILOVER_FINAL_PASS_STOPS[2..] {
        let s = Site::new(ServerKind::Local);
        let (side, point, _) = final_pass_setup(&s, Final::Prepared);
        let marker = side.state.join(format!("stopped-at-{at}"));
        kill9_at_stop_point(side.failover(&s, &[]), &marker, at);
        let m = Mounted::in_place(&side.dir, &s.run_dir);
        write_at(&m.path("disk0.img"), 8192, &random_bytes(&[7], 4096));
        let rep = json_of(&side.sync(&s));
        let next = rep["point"].as_u64().unwrap();
        if *at == "failover-after-reverse" {
            let copies = rep["base_copies"].as_array().unwrap();
            assert!(
                copies.iter().all(|c| c["resync"].is_object()),
                "{at}: a base copy: {rep}"
            );
            assert_eq!(disk_ids(&s, next), disk_ids(&s, point), "{at}: {rep}");
        }
        let h = side.planned(&s);
        let handed = h["point"].as_u64().unwrap();
        assert!(handed > next, "{at}: {h}");
        m.unmount();
        for p in [next, handed] {
            let restored = s.restore(p);
            for d in DISKS {
                assert_same_file(&restored.join(d), &side.dir.join(d));
            }
        }
        let v = json_of(&side.failover(&s, &[]).output().unwrap());
        assert_eq!(v["point"], handed, "{at}: {v}");
        assert_eq!(owner_records(&s).last().unwrap()["state"], "active", "{at}");
        for d in DISKS {
            let restored = s.tmp.path().join(format!("restore-{handed}"));
            assert_same_file(&side.dir.join(d), &restored.join(d));
        }
    }
}

/// A failback killed before its takeover (the group still the recovery host's), then the
/// operator hands the group over from the recovery host (a planned failover: a new point)
/// and runs the failback again: it takes the handed-over point (the disks the killed run
/// named are brought to it), takes the group once, and replication continues from there.
#[test]
fn a_failback_killed_before_its_takeover_then_handed_over_takes_the_new_point() {
    for at in &FAILOVER_FINAL_PASS_STOPS[..2] {
        let s = Site::new(ServerKind::Local);
        let (side, _, source) = final_pass_setup(&s, Final::Delta);
        let owners_before = owner_records(&s).len();
        let marker = side.state.join(format!("stopped-at-{at}"));
        kill9_at_stop_point(side.failover(&s, &[]), &marker, at);
        let other = Side {
            dir: source.clone(),
            state: recovery(&s).state,
            host: Some(RECOVERY),
        };
        let m = Mounted::in_place(&source, &s.run_dir);
        write_at(&m.path("disk1.img"), 0, &random_bytes(&[8], 4096));
        let h = other.planned(&s);
        let handed = h["point"].as_u64().unwrap();
        m.unmount();
        let v = json_of(&side.failover(&s, &[]).output().unwrap());
        assert_eq!(v["point"], handed, "{at}: {v}");
        for d in DISKS {
            assert_same_file(&side.dir.join(d), &source.join(d));
        }
        assert_no_leftovers(&side.dir);
        let records = owner_records(&s);
        assert_eq!(records.len(), owners_before + 2, "{at}: {records:?}");
        let last = records.last().unwrap();
        assert_eq!(last["point"], handed, "{at}: {last}");
        assert_eq!(last["state"], "active", "{at}: {last}");
        let m = Mounted::in_place(&side.dir, &s.run_dir);
        write_at(&m.path("disk0.img"), 0, &random_bytes(&[9], 4096));
        let rep = json_of(&side.sync(&s));
        assert_eq!(
            rep["base_copies"].as_array().unwrap().len(),
            0,
            "{at}: {rep}"
        );
        assert_eq!(
            disk_ids(&s, rep["point"].as_u64().unwrap()),
            disk_ids(&s, handed),
            "{at}: {rep}"
        );
    }
}

/// Failback by delta onto disks whose size changed: on the recovery host `disk0.img` is cut
/// and extended back to its size (logs that truncate, the point at the base's size) and
/// `disk1.img` grown with a write past its old end (the point larger than its base); on the
/// fenced original host `disk1.img` was cut offline (held at a third size). Both come back
/// by delta: the point's logs and the blocks that differ from the base are all that is
/// downloaded (not the 12 MiB of random data whole), every disk equals the point, and
/// replication continues with no base copy.
#[test]
fn failback_by_delta_handles_disks_whose_size_changed() {
    let s = Site::new(ServerKind::Local);
    let m = s.mount();
    new_disk(&m.path("disk0.img"), 8 << 20, 1);
    new_disk(&m.path("disk1.img"), 4 << 20, 2);
    assert_eq!(s.sync()["point"], 1);
    drop(m);
    let r = recovery(&s);
    ok(&failover(&s, &r, &[]));
    let rm = Mounted::in_place(&r.dir, &s.run_dir);
    let set_len = |p: &Path, len: u64| {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.set_len(len).unwrap();
        f.sync_all().unwrap();
    };
    set_len(&rm.path("disk0.img"), 6 << 20);
    set_len(&rm.path("disk0.img"), 8 << 20);
    write_at(&rm.path("disk0.img"), 1 << 20, &random_bytes(&[3], 65536));
    write_at(&rm.path("disk1.img"), 5 << 20, &random_bytes(&[4], 65536));
    let rep = json_of(&sync_recovery(&s, &r));
    let point = rep["point"].as_u64().unwrap();
    rm.unmount();
    assert_eq!(
        std::fs::metadata(r.dir.join("disk1.img")).unwrap().len(),
        (5 << 20) + 65536
    );
    // The fenced original host cuts its copy of disk1 (offline).
    set_len(&s.dir.join("disk1.img"), 3 << 20);

    let dir = s.dir.display().to_string();
    let args = [
        "failover",
        "--target",
        &s.server.url,
        "--group",
        &s.group,
        "--to",
        &dir,
        "--json",
    ];
    let out = json_of(&s.shipper(&args, &[]));
    assert_eq!(out["point"], point, "{out}");
    for d in out["disks"].as_array().unwrap() {
        assert_eq!(d["how"], "delta", "{out}");
    }
    let down = out["bytes_downloaded"].as_u64().unwrap();
    // The logs (two 64 KiB writes) and disk1's cut megabyte (4 blocks of 256 KiB).
    assert!(
        down <= (1 << 20) + 4 * 65536,
        "the delta downloaded {down} bytes: {out}"
    );
    for d in DISKS {
        assert_same_file(&s.dir.join(d), &r.dir.join(d));
    }
    let m = s.mount();
    write_at(&m.path("disk0.img"), 0, &random_bytes(&[5], 4096));
    let rep = s.sync();
    assert_eq!(rep["base_copies"].as_array().unwrap().len(), 0, "{rep}");
}

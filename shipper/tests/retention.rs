//! Retention on real stores, through the real tracker: `prune` keeps the points its policy
//! names, merges the logs up to the oldest kept one into new bases, deletes the others and
//! collects their objects; every kept point restores byte-identical to a copy taken at its
//! seal; `verify --point all` passes; a kill -9 during the merge or the sweep leaves every
//! kept point restorable and the next prune finishes; a sync racing prunes loses nothing.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testkit::*;

const DISK: &str = "r.img";
const DISK_SIZE: u64 = 8 << 20;

/// A site with one tracked disk of 8 MiB.
fn site(kind: ServerKind) -> (Site, Mounted) {
    let s = Site::new(kind);
    std::fs::File::create(s.dir.join(DISK))
        .unwrap()
        .set_len(DISK_SIZE)
        .unwrap();
    let m = s.mount();
    (s, m)
}

/// Writes 40 KB of `seed`'s pattern at a place that depends on the seed (through the mount).
fn write(s: &Site, seed: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(s.dir.join(DISK))
        .unwrap();
    let off = (seed * 1_234_567) % (DISK_SIZE - 50_000);
    f.write_all_at(&pattern(seed, 40_000), off).unwrap();
}

/// A write, a sync, and a copy of the disk as sealed: (point, snapshot).
fn point(s: &Site, seed: u64) -> (u64, PathBuf) {
    write(s, seed);
    let p = s.sync()["point"].as_u64().unwrap();
    (p, s.snapshot(p))
}

/// `prune --json` with `more`, which must succeed: its report.
fn prune(s: &Site, more: &[&str], extra: &[(String, String)]) -> serde_json::Value {
    let mut a = vec![
        "prune",
        "--target",
        &s.server.url,
        "--group",
        &s.group,
        "--json",
    ];
    a.extend_from_slice(more);
    let out = ok(&s.shipper(&a, extra));
    serde_json::from_str(out.trim()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// A retention (ms) that holds every point sealed after `cut` and none before it (the
/// points around `cut` are 1.5 s away from it, far more than a prune takes to start).
fn window_since(cut: Instant) -> String {
    format!("{}ms", cut.elapsed().as_millis())
}

/// Three old points, a cut, three new ones: returns the new ones with their snapshots.
fn old_and_new(s: &Site) -> (Instant, Vec<(u64, PathBuf)>) {
    for seed in 1..=3 {
        point(s, seed);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let cut = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let new = (4..=6).map(|seed| point(s, seed)).collect();
    (cut, new)
}

fn assert_restores(s: &Site, kept: &[(u64, PathBuf)]) {
    for (p, snap) in kept {
        let to = s.tmp.path().join(format!("check-{p}-{}", rand_suffix()));
        ok(&s.try_restore(&p.to_string(), &to));
        assert_same_file(&to.join(DISK), &snap.join(DISK));
    }
    ok(&s.verify("all"));
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Every object key of the local store's group (relative to it).
fn local_objects(s: &Site) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(&s.store_group(), &s.store_group(), &mut out);
    out
}

fn prune_keeps_the_window_and_collects_the_rest(kind: ServerKind) {
    let (s, _tracker) = site(kind);
    let (cut, new) = old_and_new(&s);
    let before = ok(&s.verify("all"));
    let r = prune(
        &s,
        &["--retention", &window_since(cut), "--grace", "0s"],
        &[],
    );
    assert_eq!(ids(&r["kept"]), vec![4, 5, 6], "{r}");
    assert_eq!(ids(&r["removed"]), vec![1, 2, 3], "{r}");
    assert_eq!(r["merge"]["disks_merged"], 1, "{r}");
    assert_eq!(r["merge"]["points_rewritten"], 3, "{r}");
    assert!(r["sweep"]["deleted_objects"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(s.points(), 3);
    for gone in ["1", "3"] {
        let out = s.try_restore(gone, &s.tmp.path().join(format!("gone-{gone}")));
        assert!(!out.status.success(), "point {gone} was pruned");
    }
    assert_restores(&s, &new);
    assert!(before.contains("6 point(s)"), "{before}");
    // The oldest kept point restores from its merged base alone.
    let restored = s.tmp.path().join("oldest");
    let out = ok(&s.try_restore("4", &restored));
    assert!(out.contains("0 logs applied"), "{out}");
    // A second prune has nothing left to do.
    let again = prune(&s, &["--retention", "1h", "--grace", "0s"], &[]);
    assert_eq!(again["merge"]["points_rewritten"], 0, "{again}");
    assert_eq!(again["sweep"]["deleted_objects"], 0, "{again}");
    if kind == ServerKind::Local {
        let objs = local_objects(&s);
        assert!(
            !objs.iter().any(|k| k.ends_with("base.idx")),
            "the first base is collected: {objs:?}"
        );
        let m4 = s.manifest(4);
        let after = m4["disks"][0]["base"]["after_seq"].as_u64().unwrap();
        for k in objs.iter().filter(|k| k.contains("/logs/")) {
            let name = k.rsplit('/').next().unwrap();
            let first: u64 = name.split('-').next().unwrap().parse().unwrap();
            assert!(first > after, "log {k} is older than the merged base");
        }
    }
}

#[test]
fn prune_keeps_the_window_and_collects_the_rest_local() {
    prune_keeps_the_window_and_collects_the_rest(ServerKind::Local);
}

#[test]
fn prune_keeps_the_window_and_collects_the_rest_s3_moto() {
    prune_keeps_the_window_and_collects_the_rest(ServerKind::Moto);
}

#[test]
fn prune_keeps_the_window_and_collects_the_rest_azurite() {
    prune_keeps_the_window_and_collects_the_rest(ServerKind::Azurite);
}

/// Within the grace period nothing is collected; a dry run changes nothing (it does not
/// merge, so it counts only what expiring points frees).
#[test]
fn grace_period_and_dry_run_delete_nothing() {
    let (s, _tracker) = site(ServerKind::Local);
    let snaps: Vec<_> = (1..=3).map(|seed| point(&s, seed)).collect();
    let all = local_objects(&s);
    let dry = prune(
        &s,
        &["--retention", "0s", "--grace", "0s", "--dry-run"],
        &[],
    );
    assert_eq!(ids(&dry["removed"]), vec![1, 2], "{dry}");
    assert_eq!(local_objects(&s), all, "a dry run changes nothing");
    let r = prune(&s, &["--retention", "0s", "--grace", "1h"], &[]);
    assert_eq!(r["sweep"]["deleted_objects"], 0, "{r}");
    assert!(r["sweep"]["awaiting_objects"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(s.points(), 1);
    assert_restores(&s, &snaps[2..]);
}

/// A point a reader holds a lease on is kept and left as it is.
#[test]
fn a_leased_point_is_kept() {
    let (s, _tracker) = site(ServerKind::Local);
    let snaps: Vec<_> = (1..=3).map(|seed| point(&s, seed)).collect();
    let lease = s.store_group().join("leases/test-1-ab.json");
    std::fs::create_dir_all(lease.parent().unwrap()).unwrap();
    let expires = rand_suffix() as u64 + 600_000_000_000;
    std::fs::write(
        &lease,
        format!(
            r#"{{"version":1,"point":1,"host":"t","purpose":"restore","expires_ns":{expires}}}"#
        ),
    )
    .unwrap();
    let r = prune(&s, &["--retention", "0s", "--grace", "0s"], &[]);
    assert_eq!(ids(&r["kept"]), vec![1, 3], "{r}");
    assert_eq!(ids(&r["leased"]), vec![1], "{r}");
    assert_restores(&s, &[snaps[0].clone(), snaps[2].clone()]);
}

fn kill9_during(at: &str) {
    let (s, _tracker) = site(ServerKind::Local);
    let (cut, new) = old_and_new(&s);
    let retention = window_since(cut);
    let mut a: Vec<String> = ["prune", "--target", &s.server.url, "--group", &s.group]
        .iter()
        .map(|x| x.to_string())
        .collect();
    a.extend(["--retention", &retention, "--grace", "0s"].map(String::from));
    let cmd = s.command(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    kill9_at_stop_point(cmd, &s.state.join(format!("stopped-at-{at}")), at);
    // Killed: every kept point restores, every remaining point verifies.
    assert_restores(&s, &new);
    let r = prune(
        &s,
        &["--retention", &window_since(cut), "--grace", "0s"],
        &[],
    );
    assert_eq!(ids(&r["kept"]), vec![4, 5, 6], "{r}");
    assert_restores(&s, &new);
    let again = prune(
        &s,
        &["--retention", &window_since(cut), "--grace", "0s"],
        &[],
    );
    assert_eq!(again["merge"]["points_rewritten"], 0, "finished: {again}");
    assert_eq!(again["sweep"]["deleted_objects"], 0, "finished: {again}");
    assert!(
        !local_objects(&s).iter().any(|k| k.ends_with("base.idx")),
        "the first base is collected by the run after the kill"
    );
}

#[test]
fn kill9_during_merge_then_prune_finishes() {
    kill9_during("mid-merge");
}

#[test]
fn kill9_during_sweep_then_prune_finishes() {
    kill9_during("mid-gc");
}

/// Syncs (one process after another) while prunes run in a loop beside them (another
/// process each), keeping only the latest point: every sync commits, and the latest point
/// restores to the disk as sealed. The grace period (3 s) is longer than a sync here; with
/// `--grace 0s` this test fails (a sync finds the base it continues collected, and refuses
/// to commit).
#[test]
fn a_sync_racing_prunes_loses_nothing() {
    let (s, _tracker) = site(ServerKind::Local);
    point(&s, 1);
    let done = std::sync::atomic::AtomicBool::new(false);
    let collected = std::thread::scope(|scope| {
        let pruner = scope.spawn(|| {
            let mut collected = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let r = prune(&s, &["--retention", "0s", "--grace", "3s"], &[]);
                collected += r["sweep"]["deleted_objects"].as_u64().unwrap();
            }
            collected
        });
        // Stops the pruner even when a sync fails (the panic unwinds through this).
        struct Done<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let stop = Done(&done);
        let mut last = None;
        for seed in 2..=14 {
            last = Some(point(&s, seed));
            std::thread::sleep(Duration::from_millis(700));
        }
        drop(stop);
        let collected = pruner.join().unwrap();
        assert_restores(&s, &[last.unwrap()]);
        collected
    });
    assert!(collected > 0, "the prunes collected something meanwhile");
}

/// The service prunes after its cycles (at most once per `--prune-every`), and `status`
/// shows what the last prune found.
#[test]
fn the_service_prunes_after_cycles() {
    let (s, _tracker) = site(ServerKind::Local);
    let svc = s.service(&[
        "--interval",
        "1s",
        "--retention",
        "0s",
        "--prune-every",
        "1s",
        "--prune-grace",
        "0s",
    ]);
    let wait = Duration::from_secs(90);
    let mut last = 0;
    for seed in 1..=3 {
        write(&s, seed);
        let st = s.wait_status(wait, "a point after the write", |st| {
            st["last_point_id"].as_u64().unwrap_or(0) > last + 1
        });
        last = st["last_point_id"].as_u64().unwrap();
    }
    s.wait_status(wait, "a prune keeping one point", |st| {
        st["retention"]["retained_points"] == 1 && st["retention"]["last_error"].is_null()
    });
    s.stop_service(svc);
    assert!(s.points() <= 2, "the service pruned the older points");
    let dir = s.dir.display().to_string();
    let text = ok(&s.shipper(&["status", "--dir", &dir], &[]));
    assert!(text.contains("retention: "), "{text}");
    // The latest point holds the disk as it is (nothing wrote since the last write's point).
    let latest = s.status()["last_point_id"].as_u64().unwrap();
    assert!(latest >= last);
    let snap = s.snapshot(latest);
    assert_restores(&s, &[(latest, snap)]);
}

/// `sync --retention` prunes after its cycle.
#[test]
fn sync_with_a_retention_prunes() {
    let (s, _tracker) = site(ServerKind::Local);
    for seed in 1..=2 {
        point(&s, seed);
    }
    write(&s, 3);
    ok(&s.output("sync", &["--retention", "0s", "--prune-grace", "0s"], &[]));
    assert_eq!(s.points(), 1);
    assert_eq!(s.status()["retention"]["retained_points"], 1);
    let snap = s.snapshot(3);
    assert_restores(&s, &[(3, snap)]);
}

/// `sync` with hooks: `(pre, post)` shell commands; the post hook leaves a marker.
fn hooked_sync(s: &Site, pre: &str, timeout: &str) -> (serde_json::Value, bool) {
    let marker = s.tmp.path().join("post-ran");
    let _ = std::fs::remove_file(&marker);
    let post = format!("touch {}", marker.display());
    let out = ok(&s.output(
        "sync",
        &[
            "--json",
            "--pre-seal",
            pre,
            "--post-seal",
            &post,
            "--hook-timeout",
            timeout,
        ],
        &[],
    ));
    (serde_json::from_str(out.trim()).unwrap(), marker.exists())
}

/// App-consistent points: a pre hook that succeeds tags the point `app`; one that fails
/// or times out gives a crash-consistent point and a Warning; the post hook ran every
/// time. `latest-app` picks the app point; `keep_app_consistent` keeps it past the window.
#[test]
fn app_consistent_hooks_success_failure_timeout() {
    let (s, _tracker) = site(ServerKind::Local);
    write(&s, 1);
    let (r, post) = hooked_sync(&s, "true", "30s");
    let app_point = r["point"].as_u64().unwrap();
    let app_snap = s.snapshot(app_point);
    assert!(post, "post hook ran after success");
    assert_eq!(s.manifest(app_point)["kind"], "app");
    assert_eq!(s.status()["health"], "Normal");

    write(&s, 2);
    let (r, post) = hooked_sync(&s, "exit 3", "30s");
    assert!(post, "post hook ran after a failed pre hook");
    assert!(s.manifest(r["point"].as_u64().unwrap())["kind"].is_null());
    let st = s.status();
    assert_eq!(st["health"], "Warning", "{st}");
    assert!(
        st["hook_warning"].as_str().unwrap().contains("failed"),
        "{st}"
    );

    write(&s, 3);
    let (r, post) = hooked_sync(&s, "sleep 30", "1s");
    assert!(post, "post hook ran after a timed-out pre hook");
    let last = r["point"].as_u64().unwrap();
    assert!(s.manifest(last)["kind"].is_null());
    assert!(s.status()["hook_warning"]
        .as_str()
        .unwrap()
        .contains("timed out"));

    let list = ok(&s.shipper(
        &["points", "--target", &s.server.url, "--group", &s.group],
        &[],
    ));
    assert!(list.contains(" app "), "{list}");
    let to = s.tmp.path().join("latest-app");
    let out = ok(&s.try_restore("latest-app", &to));
    assert!(
        out.contains(&format!("restored point {app_point} ")),
        "{out}"
    );
    assert_same_file(&to.join(DISK), &app_snap.join(DISK));

    let r = prune(
        &s,
        &[
            "--retention",
            "0s",
            "--keep-app-consistent",
            "1",
            "--grace",
            "0s",
        ],
        &[],
    );
    assert_eq!(ids(&r["kept"]), vec![app_point, last], "{r}");
    let last_snap = s.snapshot(last);
    assert_restores(&s, &[(app_point, app_snap), (last, last_snap)]);
}

/// ext4 on a loop device over a tracked disk: after a prune that merges, each kept point
/// restores byte-identical to the image as sealed (the filesystem frozen meanwhile) and
/// fsck finds it clean.
#[test]
fn ext4_points_restore_after_a_merge() {
    let s = Site::new(ServerKind::Local);
    let img = s.dir.join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let tracker = s.mount();
    let fs = LoopFs::create(&img, &s.tmp.path().join("mnt"));
    let snaps = s.tmp.path().join("snaps");
    std::fs::create_dir_all(&snaps).unwrap();
    let mut cut = None;
    let mut kept = Vec::new();
    for i in 1..=5u64 {
        std::fs::write(fs.mnt.join(format!("f{i}.bin")), pattern(i, 2 << 20)).unwrap();
        if i > 1 {
            std::fs::remove_file(fs.mnt.join(format!("f{}.bin", i - 1))).unwrap();
        }
        fs.freeze();
        let p = s.sync()["point"].as_u64().unwrap();
        let snap = snaps.join(format!("{p}.img"));
        std::fs::copy(&img, &snap).unwrap();
        fs.thaw();
        if i == 3 {
            std::thread::sleep(Duration::from_millis(1500));
            cut = Some(Instant::now());
            std::thread::sleep(Duration::from_millis(1500));
        }
        if i > 3 {
            kept.push((p, snap));
        }
    }
    drop(fs);
    drop(tracker);
    let r = prune(
        &s,
        &["--retention", &window_since(cut.unwrap()), "--grace", "0s"],
        &[],
    );
    assert_eq!(ids(&r["kept"]), vec![4, 5], "{r}");
    assert_eq!(r["merge"]["points_rewritten"], 2, "{r}");
    for (p, snap) in &kept {
        let to = s.restore(*p);
        let restored = to.join("fs.img");
        assert_same_file(&restored, snap);
        let fsck = std::process::Command::new("fsck.ext4")
            .args(["-n", "-f"])
            .arg(&restored)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "fsck of point {p}: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
    }
    ok(&s.verify("all"));
}

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
/// merge: `sweep` counts only what expiring points frees, `merge_plan` what a merge would).
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

/// Manifest `id` as `points --json` gives it (any store).
fn manifest_of(s: &Site, id: u64, env: &[(String, String)]) -> serde_json::Value {
    let out = ok(&s.shipper(
        &[
            "points",
            "--target",
            &s.server.url,
            "--group",
            &s.group,
            "--json",
        ],
        env,
    ));
    let all: serde_json::Value = serde_json::from_str(&out).unwrap();
    let found = all.as_array().unwrap().iter().find(|m| m["id"] == id);
    found
        .unwrap_or_else(|| panic!("no point {id}: {all}"))
        .clone()
}

/// The (first, last) sequences of every log the proxy saw read (GET), in order.
fn logs_read(proxy: &proxy::FaultyProxy) -> Vec<(u64, u64)> {
    proxy
        .targets("GET")
        .iter()
        .filter(|t| t.contains("/logs/"))
        .map(|t| {
            let name = t.split('?').next().unwrap().rsplit('/').next().unwrap();
            hrl::store::parse_log_name(name).unwrap_or_else(|| panic!("a log key: {t}"))
        })
        .collect()
}

/// After a prune merged the old logs into a new base, a forced checksum resync (`resync
/// --disk --now`), a restore of the oldest retained point and one of the latest read no
/// log from before the window — though the old logs are all still in the store (the grace
/// period keeps them): every log GET a recording proxy in front of moto sees is of a
/// sequence after the merged base, and the oldest point reads none.
#[test]
fn resync_after_a_merge_reads_no_log_older_than_the_window() {
    let (s, _tracker) = site(ServerKind::Moto);
    let (cut, new) = old_and_new(&s);
    let r = prune(
        &s,
        &["--retention", &window_since(cut), "--grace", "1h"],
        &[],
    );
    assert_eq!(r["merge"]["points_rewritten"], 3, "{r}");
    assert_eq!(r["sweep"]["deleted_objects"], 0, "the old logs stay: {r}");
    let oldest = manifest_of(&s, 4, &[]);
    let merged_at = oldest["disks"][0]["base"]["after_seq"].as_u64().unwrap();
    assert!(merged_at > 1, "point 4 starts from a merged base: {oldest}");

    let proxy = proxy::FaultyProxy::start(s.server.port);
    let env = proxy.env_for(&s.server);
    let out = ok(&s.output("resync", &["--disk", DISK, "--now", "--json"], &env));
    let read = logs_read(&proxy);
    assert!(
        !read.is_empty(),
        "the resync read the window's logs through the proxy: {out}"
    );
    assert!(
        read.iter().all(|(first, _)| *first > merged_at),
        "the resync read a log from before the window (merged base after {merged_at}): {read:?}"
    );
    for (p, snap) in [&new[0], &new[2]] {
        proxy.clear_seen();
        let to = s.tmp.path().join(format!("through-proxy-{p}"));
        let dest = to.display().to_string();
        let p_arg = p.to_string();
        ok(&s.shipper(
            &[
                "restore",
                "--target",
                &s.server.url,
                "--group",
                &s.group,
                "--point",
                &p_arg,
                "--to",
                &dest,
            ],
            &env,
        ));
        assert_same_file(&to.join(DISK), &snap.join(DISK));
        let read = logs_read(&proxy);
        assert!(
            read.iter().all(|(first, _)| *first > merged_at),
            "the restore of point {p} read a log from before the window: {read:?}"
        );
        if *p == 4 {
            assert!(
                read.is_empty(),
                "point 4 restores from its base alone: {read:?}"
            );
        }
    }
}

/// `verify --point 2 --json`-less run held at its pause point `verify-leased` (its lease
/// taken, its manifest read, nothing checked yet); output to `<tmp>/verify.out`.
fn paused_verify(s: &Site, point: &str) -> (KillOnDrop, PathBuf) {
    let out = s.tmp.path().join(format!("verify-{point}.out"));
    let mut cmd = s.command(
        &[
            "verify",
            "--target",
            &s.server.url,
            "--group",
            &s.group,
            "--point",
            point,
        ],
        &[],
    );
    cmd.stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::process::Stdio::null());
    let marker = s.state.join("stopped-at-verify-leased");
    (spawn_paused_at(cmd, &marker, "verify-leased"), out)
}

/// Lets a paused verify go on; asserts it passed.
fn finish_verify(mut v: KillOnDrop, out: &Path) {
    signal(v.id(), "CONT");
    let st = wait_exit(&mut v.0, Duration::from_secs(120), "the verify");
    let text = std::fs::read_to_string(out).unwrap();
    assert!(
        st.success() && text.contains("all good"),
        "verify: {st}: {text}"
    );
}

/// Leases in the local store's group.
fn leases(s: &Site) -> Vec<String> {
    local_objects(s)
        .into_iter()
        .filter(|k| k.starts_with("leases/"))
        .collect()
}

/// `verify` reads its point under a lease (as restore and mount do): held after its
/// manifest is read, a prune at `--grace 0s` that would expire the point keeps it (leased,
/// not rewritten) and collects nothing it names, and the verify then passes. Without the
/// lease the prune removes the point and collects its log, and the verify fails.
#[test]
fn a_prune_keeps_what_a_verify_is_reading() {
    let (s, _tracker) = site(ServerKind::Local);
    for seed in 1..=3 {
        point(&s, seed);
    }
    let (v, out) = paused_verify(&s, "2");
    assert_eq!(leases(&s).len(), 1, "verify holds a lease while it reads");
    let r = prune(&s, &["--retention", "0s", "--grace", "0s"], &[]);
    assert_eq!(ids(&r["leased"]), vec![2], "{r}");
    assert_eq!(ids(&r["removed"]), vec![1], "{r}");
    finish_verify(v, &out);
    assert!(leases(&s).is_empty(), "verify deleted its lease");
    // Unleased now: the next prune removes it.
    let r = prune(&s, &["--retention", "0s", "--grace", "0s"], &[]);
    assert_eq!(ids(&r["removed"]), vec![2], "{r}");
    ok(&s.verify("all"));
}

/// A lease taken while a prune runs, after the prune read the leases (it holds at its pause
/// point `prune-leases-read`): the verify reads the manifest as it was before the merge;
/// the prune goes on, merges, expires that point, and its sweep — which reads the leases
/// again just before deleting — keeps what the verify reads. Without that second look the
/// sweep (`--grace 0s`) collects the point's log and the verify fails.
#[test]
fn a_lease_taken_during_a_prune_keeps_what_the_reader_reads() {
    let (s, _tracker) = site(ServerKind::Local);
    for seed in 1..=3 {
        point(&s, seed);
    }
    let prune_out = s.tmp.path().join("prune.out");
    let mut cmd = s.command(
        &[
            "prune",
            "--target",
            &s.server.url,
            "--group",
            &s.group,
            "--retention",
            "0s",
            "--grace",
            "0s",
            "--json",
        ],
        &[],
    );
    cmd.stdout(std::fs::File::create(&prune_out).unwrap())
        .stderr(std::process::Stdio::null());
    let mut p = spawn_paused_at(
        cmd,
        &s.state.join("stopped-at-prune-leases-read"),
        "prune-leases-read",
    );
    let (v, out) = paused_verify(&s, "2");
    signal(p.id(), "CONT");
    let st = wait_exit(&mut p.0, Duration::from_secs(120), "the prune");
    let text = std::fs::read_to_string(&prune_out).unwrap();
    assert!(st.success(), "prune: {st}: {text}");
    let r: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(
        ids(&r["removed"]),
        vec![1, 2],
        "the policy saw no lease: {r}"
    );
    finish_verify(v, &out);
}

/// `prune --dry-run` says what a merge would do and free: the disks it would rebase, the
/// points it would rewrite, and the indexes and logs no kept point would need afterwards —
/// exactly the objects under `disks/` the real prune then collects (chunks aside).
#[test]
fn a_dry_run_reports_what_the_merge_would_free() {
    let (s, _tracker) = site(ServerKind::Local);
    let (cut, new) = old_and_new(&s);
    let retention = window_since(cut);
    let root = s.store_group();
    let before = local_objects(&s);
    let size = |k: &String| std::fs::metadata(root.join(k)).unwrap().len();
    let sizes: std::collections::HashMap<String, u64> =
        before.iter().map(|k| (k.clone(), size(k))).collect();
    let dry = prune(
        &s,
        &["--retention", &retention, "--grace", "0s", "--dry-run"],
        &[],
    );
    assert_eq!(local_objects(&s), before, "a dry run changes nothing");
    let plan = &dry["merge_plan"];
    assert_eq!(plan["disks"], 1, "{dry}");
    assert_eq!(plan["points_rewritten"], 3, "{dry}");
    assert_eq!(dry["merge"]["points_rewritten"], 0, "{dry}");
    let real = prune(&s, &["--retention", &retention, "--grace", "0s"], &[]);
    assert!(real["merge_plan"].is_null(), "{real}");
    let after = local_objects(&s);
    let gone: Vec<&String> = before
        .iter()
        .filter(|k| k.starts_with("disks/") && !after.contains(k))
        .collect();
    assert!(gone.iter().any(|k| k.ends_with("base.idx")), "{gone:?}");
    assert!(gone.iter().any(|k| k.contains("/logs/")), "{gone:?}");
    assert_eq!(
        plan["frees_objects"],
        gone.len(),
        "dry: {dry}\ngone: {gone:?}"
    );
    let gone_bytes: u64 = gone.iter().map(|k| sizes[*k]).sum();
    assert_eq!(
        plan["frees_bytes"], gone_bytes,
        "dry: {dry}\ngone: {gone:?}"
    );
    assert_restores(&s, &new);
}

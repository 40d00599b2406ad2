//! Crashes, outages and bad input: kill -9 at the two dangerous instants, a store that goes
//! away and comes back, wrong credentials, broken chains, damaged objects, typos.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::*;

/// A site served by the stand-in tracker, with one 4 MiB disk `disk0.img`.
fn site(kind: ServerKind) -> Site {
    let e = Site::with_stand_in(kind);
    e.tracker().add_disk("disk0.img", 4 << 20);
    e
}

fn data(seed: u8, len: usize) -> Vec<u8> {
    random_bytes(&[seed, 3], len)
}

/// Runs `sync` stopped at `at` (test hook) and kills it with SIGKILL there.
fn sync_killed_at(e: &Site, at: &str) {
    let marker = e.state.join(format!("stopped-at-{at}"));
    let st = kill9_at_stop_point(e.cmd("sync", &[]), &marker, at);
    assert!(!st.success());
}

#[test]
fn kill_between_upload_and_commit_then_next_run_continues() {
    let e = site(ServerKind::Local);
    e.tracker().write("disk0.img", 0, &data(1, 100_000));
    ok(&e.try_sync(&[]));
    e.tracker().write("disk0.img", 1 << 20, &data(2, 50_000));
    sync_killed_at(&e, "after-upload");
    assert_eq!(
        e.points(),
        1,
        "no point may be committed before its manifest"
    );
    assert!(
        e.tracker().pending_count() > 0,
        "logs must stay on the host until a point holds them"
    );
    e.tracker().write("disk0.img", 2 << 20, &data(3, 10_000));
    ok(&e.try_sync(&[]));
    let snap = e.copy_disk("disk0.img", "after.img");
    assert_eq!(e.points(), 2);
    assert_eq!(e.tracker().pending_count(), 0);
    let to = e.tmp.path().join("r");
    ok(&e.try_restore("latest", &to));
    assert_same_file(&to.join("disk0.img"), &snap);
}

#[test]
fn kill_between_commit_and_ack_applies_nothing_twice() {
    let e = site(ServerKind::Local);
    e.tracker().write("disk0.img", 0, &data(1, 100_000));
    ok(&e.try_sync(&[]));
    e.tracker().write("disk0.img", 4096, &data(2, 8192));
    sync_killed_at(&e, "after-commit");
    let snap2 = e.copy_disk("disk0.img", "p2.img");
    assert_eq!(e.points(), 2, "the point was committed before the crash");
    assert!(
        e.tracker().pending_count() > 0,
        "the crash came before the ack"
    );
    // An overlapping write: replaying the committed log twice would be visible if the old
    // write landed after this one.
    e.tracker().write("disk0.img", 0, &data(4, 16384));
    ok(&e.try_sync(&[]));
    let snap3 = e.copy_disk("disk0.img", "p3.img");
    assert_eq!(e.points(), 3);
    assert_eq!(
        e.tracker().pending_count(),
        0,
        "committed logs are acked by the next run"
    );
    for (p, snap) in [("2", &snap2), ("3", &snap3)] {
        let to = e.tmp.path().join(format!("r{p}"));
        ok(&e.try_restore(p, &to));
        assert_same_file(&to.join("disk0.img"), snap);
    }
}

#[test]
fn broken_chain_is_critical_until_resync() {
    let e = site(ServerKind::Local);
    e.tracker().write("disk0.img", 0, &data(1, 100_000));
    ok(&e.try_sync(&[]));
    e.tracker().write("disk0.img", 8192, &data(2, 4096));
    e.tracker().seal_now();
    e.tracker().lose_sealed_log("disk0.img");
    e.tracker().write("disk0.img", 16384, &data(3, 4096));
    let out = e.try_sync(&[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("log chain of disk disk0.img is broken") && err.contains("--resync"),
        "{err}"
    );
    assert_eq!(e.points(), 1, "no point papers over a broken chain");
    let st = e.status();
    assert_eq!(st["health"], "Critical");
    assert_eq!(st["disks"][0]["state"], "resync_required");
    // The operator's resync takes a new base; only changed chunks upload.
    let out = ok(&e.output("sync", &["--resync", "--json"], &[]));
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["base_copies"][0]["uploaded_chunks"], 1, "{r}");
    let snap = e.copy_disk("disk0.img", "s.img");
    assert_eq!(e.status()["health"], "Normal");
    let to = e.tmp.path().join("r");
    ok(&e.try_restore("latest", &to));
    assert_same_file(&to.join("disk0.img"), &snap);
}

#[test]
fn truncated_sealed_log_is_refused_and_nothing_is_committed() {
    let e = site(ServerKind::Local);
    ok(&e.try_sync(&[]));
    e.tracker().write("disk0.img", 0, &data(5, 200_000));
    e.tracker().seal_now();
    let log = std::fs::read_dir(&e.dir)
        .unwrap()
        .map(|x| x.unwrap().path())
        .find(|p| {
            matches!(
                hrl::naming::classify(p.file_name().unwrap().to_str().unwrap()),
                Some(hrl::naming::HrlFile::SealedLog { .. })
            )
        })
        .unwrap();
    let len = std::fs::metadata(&log).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let out = e.try_sync(&[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("does not verify") && err.contains("resync"),
        "{err}"
    );
    assert_eq!(e.points(), 1);
}

#[test]
fn damaged_objects_in_the_store_fail_restore_cleanly() {
    let e = site(ServerKind::Local);
    e.tracker().write("disk0.img", 0, &data(1, 300_000));
    ok(&e.try_sync(&[]));
    e.tracker().write("disk0.img", 0, &data(2, 5000));
    ok(&e.try_sync(&[]));
    let store = e.store_group();
    let verify = || {
        e.shipper(
            &["verify", "--target", &e.server.url, "--group", "vm1"],
            &[],
        )
    };
    assert!(ok(&verify()).contains("all good"));
    // A damaged chunk.
    let chunk = walk(&store.join("chunks"))[0].clone();
    let mut bytes = std::fs::read(&chunk).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&chunk, &bytes).unwrap();
    let to = e.tmp.path().join("r1");
    let out = e.try_restore("latest", &to);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    assert!(
        !to.join("disk0.img").exists(),
        "a damaged restore must leave no disk behind"
    );
    let out = verify();
    assert!(!out.status.success());
    let name = chunk.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        stderr(&out).contains("is damaged") && stderr(&out).contains(&name),
        "{}",
        stderr(&out)
    );
    std::fs::write(&chunk, {
        bytes[n / 2] ^= 0xff;
        &bytes
    })
    .unwrap();
    // A truncated log object.
    let log = walk(&store.join("disks"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|x| x == "hrl"))
        .unwrap();
    let b = std::fs::read(&log).unwrap();
    std::fs::write(&log, &b[..b.len() / 2]).unwrap();
    let to = e.tmp.path().join("r2");
    let out = e.try_restore("latest", &to);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("damaged") || stderr(&out).contains("verify"),
        "{}",
        stderr(&out)
    );
    assert!(!to.join("disk0.img").exists());
    let out = verify();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    // A damaged manifest.
    std::fs::write(
        store.join("points").join(format!("{:020}.json", 2)),
        b"{not json",
    )
    .unwrap();
    let out = e.try_restore("2", &e.tmp.path().join("r3"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("recovery point 2") && stderr(&out).contains("damaged"),
        "{}",
        stderr(&out)
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn bad_urls_and_config_typos_are_clear_errors() {
    let e = site(ServerKind::Local);
    let out = e.shipper(
        &[
            "sync",
            "--dir",
            e.dir.to_str().unwrap(),
            "--group",
            "vm1",
            "--target",
            "ftp://x/y",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown target URL scheme \"ftp\""),
        "{}",
        stderr(&out)
    );
    let cfg = e.tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "target = \"{}\"\n[[dir]]\npath = \"{}\"\nintreval = \"30s\"\n",
            e.server.url,
            e.dir.display()
        ),
    )
    .unwrap();
    let out = e.shipper(&["run", "--config", cfg.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("intreval") && err.contains(cfg.to_str().unwrap()),
        "{err}"
    );
    let out = e.try_restore("7", &e.tmp.path().join("r"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no recovery points"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn wrong_credentials_are_critical_without_retry_storm() {
    let e = site(ServerKind::Azurite);
    let wrong = vec![(
        "AZURE_STORAGE_ACCOUNT_KEY".to_string(),
        "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=".to_string(),
    )];
    let out = e.try_sync(&wrong);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refused the credentials"),
        "{}",
        stderr(&out)
    );
    assert_eq!(e.status()["health"], "Critical", "{}", stderr(&out));
    // The service stops the directory in Critical and does not retry on the back-off.
    let log = e.tmp.path().join("run.log");
    let child = e.spawn_service(
        &["--interval", "1s", "--retry-unit", "1s"],
        &wrong,
        Some(&log),
    );
    // Wait for the service's own verdict, then give it several intervals and retry units in
    // which a retry storm would show.
    wait_until(
        Duration::from_secs(60),
        "the service to stop in Critical",
        || {
            std::fs::read_to_string(&log)
                .unwrap()
                .contains("replication stopped (Critical)")
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    let st = e.status();
    assert_eq!(st["health"], "Critical");
    assert!(st["next_retry_ns"].is_null());
    drop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("replication stopped (Critical)").count(),
        1,
        "{text}"
    );
    assert!(!text.contains("will retry"), "{text}");
}

#[test]
fn store_outage_backs_off_with_warning_then_recovers() {
    let mut e = site(ServerKind::Azurite);
    e.tracker().write("disk0.img", 0, &data(1, 100_000));
    let mut child = e.service(&["--interval", "1s", "--retry-unit", "1s"]);
    e.wait_status(Duration::from_secs(60), "the first point", |s| {
        s["last_point_id"].as_u64().is_some_and(|p| p >= 1)
    });
    e.server.stop();
    e.tracker().write("disk0.img", 1 << 20, &data(2, 70_000));
    let st = e.wait_status(Duration::from_secs(60), "a warning", |s| {
        s["health"] == "Warning" && !s["next_retry_ns"].is_null()
    });
    assert!(st["last_error"].as_str().unwrap().len() > 10);
    let first_point = st["last_point_id"].as_u64().unwrap();
    let st = e.wait_status(Duration::from_secs(60), "back-off to grow", |s| {
        s["attempt"].as_u64().is_some_and(|a| a >= 2)
    });
    assert_eq!(st["health"], "Warning");
    // The logs wait on the host, and status counts them.
    assert!(
        st["disks"][0]["unshipped_bytes"].as_u64().unwrap() >= 70_000,
        "{st}"
    );
    assert!(st["last_point_id"].as_u64().unwrap() == first_point);
    e.server.spawn();
    e.tracker().write("disk0.img", 2 << 20, &data(3, 30_000));
    let st = e.wait_status(Duration::from_secs(60), "recovery", |s| {
        s["health"] == "Normal"
            && s["last_point_id"]
                .as_u64()
                .is_some_and(|p| p > first_point + 1)
    });
    assert!(st["last_error"].is_null());
    // SIGTERM stops the service cleanly.
    signal(child.id(), "TERM");
    let code = wait_exit(
        &mut child.0,
        Duration::from_secs(20),
        "the service after SIGTERM",
    );
    assert!(code.success(), "{code}");
    ok(&e.try_sync(&[]));
    let snap = e.copy_disk("disk0.img", "s.img");
    let to = e.tmp.path().join("r");
    ok(&e.try_restore("latest", &to));
    assert_same_file(&to.join("disk0.img"), &snap);
}

#[test]
fn run_with_config_protects_every_directory_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let state = tmp.path().join("state");
    let store = tmp.path().join("store");
    let mut trackers = Vec::new();
    for name in ["vma", "vmb"] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let t = FakeTracker::start(&dir, &run);
        t.add_disk("d.img", 1 << 20);
        t.write(
            "d.img",
            0,
            &data(name.len() as u8 + name.as_bytes()[2], 50_000),
        );
        trackers.push((dir, t));
    }
    let cfg = tmp.path().join("shipper.toml");
    std::fs::write(
        &cfg,
        format!(
            "target = \"{}\"\nretry_unit = \"1s\"\n[[dir]]\npath = \"{}\"\ninterval = \"1s\"\ngroup = \"vma\"\n[[dir]]\npath = \"{}\"\ninterval = \"2s\"\ngroup = \"second\"\n",
            store.display(),
            trackers[0].0.display(),
            trackers[1].0.display()
        ),
    )
    .unwrap();
    let mut child = KillOnDrop::spawn(
        shipper_command(
            &["run", "--config", cfg.to_str().unwrap()],
            &[],
            &run,
            &state,
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null()),
    );
    let points = |group: &str| {
        let out = shipper(
            &[
                "points",
                "--target",
                store.to_str().unwrap(),
                "--group",
                group,
                "--json",
            ],
            &[],
            &run,
            &state,
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0)
    };
    wait_until(
        Duration::from_secs(60),
        "the service to keep both directories replicating",
        || points("vma") >= 3 && points("second") >= 2,
    );
    signal(child.id(), "TERM");
    wait_exit(
        &mut child.0,
        Duration::from_secs(20),
        "the service after SIGTERM",
    );
    let out = ok(&shipper(&["status", "--json"], &[], &run, &state));
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st.as_array().unwrap().len(), 2);
    for (dir, _) in &trackers {
        let group = if dir.ends_with("vma") {
            "vma"
        } else {
            "second"
        };
        let to = tmp.path().join(format!("restore-{group}"));
        ok(&shipper(
            &[
                "restore",
                "--target",
                store.to_str().unwrap(),
                "--group",
                group,
                "--to",
                to.to_str().unwrap(),
            ],
            &[],
            &run,
            &state,
        ));
        assert_same_file(&to.join("d.img"), &dir.join("d.img"));
    }
}

#[test]
fn pause_stops_cycles_until_resume() {
    let e = site(ServerKind::Local);
    e.tracker().write("disk0.img", 0, &data(1, 10_000));
    ok(&e.try_sync(&[]));
    let d = e.dir.to_str().unwrap();
    ok(&e.shipper(&["pause", "--dir", d], &[]));
    let out = e.try_sync(&[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("paused") && stderr(&out).contains("resume"),
        "{}",
        stderr(&out)
    );
    let st = e.status();
    assert_eq!(st["paused"], true);
    assert_eq!(st["disks"][0]["state"], "paused");
    // The service skips cycles while paused, and picks up on resume.
    let _child = e.service(&["--interval", "1s", "--retry-unit", "1s"]);
    e.tracker().write("disk0.img", 8192, &data(2, 10_000));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(e.points(), 1, "a paused directory must not ship");
    ok(&e.shipper(&["resume", "--dir", d], &[]));
    wait_until(Duration::from_secs(30), "a point after resume", || {
        e.points() >= 2
    });
    assert_eq!(e.status()["disks"][0]["state"], "replicating");
}

/// A missing bucket or container is not something waiting fixes: Critical, with its name.
fn missing_bucket_is_critical(kind: ServerKind, url: &str) {
    let e = site(kind);
    e.tracker().write("disk0.img", 0, &data(1, 10_000));
    let out = e.shipper(
        &["sync", "--dir", e.dir.to_str().unwrap(), "--target", url],
        &[],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("nosuchbucket") && err.contains("create it, or fix the target URL"),
        "{err}"
    );
    assert_eq!(e.status()["health"], "Critical", "{err}");
}

#[test]
fn s3_moto_missing_bucket_is_critical() {
    missing_bucket_is_critical(ServerKind::Moto, "s3://nosuchbucket/x");
}

#[test]
fn azurite_missing_container_is_critical() {
    missing_bucket_is_critical(ServerKind::Azurite, "az://nosuchbucket/x");
}

/// An operator's `sync` while the service runs waits for the service's cycle instead of
/// racing it for the same point.
#[test]
fn sync_beside_the_running_service_does_not_race() {
    let e = site(ServerKind::Local);
    e.tracker().write("disk0.img", 0, &data(1, 10_000));
    let _child = e.service(&["--interval", "100ms", "--retry-unit", "1s"]);
    wait_until(Duration::from_secs(30), "the service's first point", || {
        e.points() >= 1
    });
    for i in 0..8u8 {
        e.tracker()
            .write("disk0.img", u64::from(i) * 8192, &data(i + 2, 8192));
        let out = e.try_sync(&[]);
        assert!(
            out.status.success(),
            "sync {i} failed beside the service: {}",
            stderr(&out)
        );
    }
    assert!(e.points() >= 9);
    assert_ne!(e.status()["health"], "Critical");
}

/// Outside the resync window the service leaves a disk that needs a resync in bitmap mode
/// (Warning, saying why) and nothing runs; `resync --now` runs it at once, beside the
/// service, reading only the marked blocks.
#[test]
fn resync_waits_for_its_window_unless_requested() {
    let e = site(ServerKind::Local);
    e.tracker().write("disk0.img", 0, &data(1, 100_000));
    ok(&e.try_sync(&[]));
    e.tracker()
        .set_mode("disk0.img", hrl::control::DiskMode::Bitmap);
    e.tracker().write("disk0.img", 1 << 20, &data(2, 50_000));
    let hour: u32 = String::from_utf8(Command::new("date").arg("+%H").output().unwrap().stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let window = format!("{:02}:00-{:02}:00", (hour + 2) % 24, (hour + 3) % 24);
    let log = e.tmp.path().join("run.log");
    let child = e.spawn_service(
        &[
            "--interval",
            "1s",
            "--retry-unit",
            "1s",
            "--resync-window",
            &window,
        ],
        &[],
        Some(&log),
    );
    let st = e.wait_status(
        Duration::from_secs(60),
        "the service to defer the resync",
        |st| {
            st["last_error"]
                .as_str()
                .is_some_and(|m| m.contains("waits for the resync window"))
        },
    );
    assert_eq!(st["health"], "Warning");
    assert_eq!(st["disks"][0]["state"], "resync_required", "{st:#}");
    assert!(st["disks"][0]["resync_reason"].is_string(), "{st:#}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(e.points(), 1, "no point while the resync waits");
    let out = ok(&e.output("resync", &["--now", "--json"], &[]));
    drop(child);
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["base_copies"].as_array().unwrap().len(), 1, "{r}");
    let rs = &r["base_copies"][0]["resync"];
    assert_eq!(rs["kind"], "targeted", "{r}");
    // One 256 KiB block holds the bitmap-mode write: only it is read and sent.
    assert_eq!(rs["bytes_read"], 256 * 1024, "{r}");
    assert_eq!(rs["blocks_differing"], 1, "{r}");
    assert!(rs["bytes_sent"].as_u64().unwrap() > 0, "{r}");
    let snap = e.copy_disk("disk0.img", "s.img");
    let to = e.tmp.path().join("r");
    ok(&e.try_restore("latest", &to));
    assert_same_file(&to.join("disk0.img"), &snap);
    let bad = e.shipper(
        &[
            "run",
            "--dir",
            e.dir.to_str().unwrap(),
            "--group",
            "vm1",
            "--resync-window",
            "9-17",
        ],
        &[],
    );
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("HH:MM-HH:MM"), "{}", stderr(&bad));
}

/// `resync --pause` holds a resync back inside the window (Warning, saying so, no point);
/// `resync --resume` lets the service run it, and the replica is exact.
#[test]
fn resync_pause_and_resume() {
    let e = site(ServerKind::Local);
    e.tracker().write("disk0.img", 0, &data(1, 100_000));
    ok(&e.try_sync(&[]));
    e.tracker()
        .set_mode("disk0.img", hrl::control::DiskMode::Bitmap);
    e.tracker().write("disk0.img", 2 << 20, &data(4, 70_000));
    let dir = e.dir.to_str().unwrap().to_string();
    let out = ok(&e.shipper(&["resync", "--dir", &dir, "--pause"], &[]));
    assert!(out.contains("paused"), "{out}");
    let _child = e.service(&[
        "--interval",
        "1s",
        "--retry-unit",
        "1s",
        "--resync-window",
        "any",
    ]);
    let wait = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        e.wait_status(Duration::from_secs(60), what, f)
    };
    let st = wait("the paused resync", &|st| {
        st["last_error"]
            .as_str()
            .is_some_and(|m| m.contains("an operator paused"))
    });
    assert_eq!(st["health"], "Warning");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(e.points(), 1, "no point while resyncs are paused");
    let out = ok(&e.shipper(&["resync", "--dir", &dir, "--resume"], &[]));
    assert!(out.contains("resumed"), "{out}");
    let st = wait("the resync point", &|st| {
        st["last_point_id"].as_u64().is_some_and(|p| p >= 2) && st["health"] == "Normal"
    });
    assert_eq!(st["disks"][0]["last_resync"]["kind"], "targeted", "{st:#}");
    drop(_child);
    let snap = e.copy_disk("disk0.img", "s.img");
    let to = e.tmp.path().join("r");
    ok(&e.try_restore("latest", &to));
    assert_same_file(&to.join("disk0.img"), &snap);
}

/// `verify` fails on every point restore refuses: here a point whose recorded size is not
/// the size its base and logs restore to (what the old seal recorded after a shrink).
#[test]
fn verify_fails_on_a_point_restore_refuses_for_its_size() {
    let e = site(ServerKind::Local);
    e.tracker().write("disk0.img", 0, &data(1, 100_000));
    ok(&e.try_sync(&[]));
    e.tracker().write("disk0.img", 8192, &data(2, 5000));
    ok(&e.try_sync(&[]));
    assert!(e.verify("2").status.success());
    let mut m = e.manifest(2);
    let size = m["disks"][0]["disk_size"].as_u64().unwrap();
    m["disks"][0]["disk_size"] = (size + 4096).into();
    std::fs::write(e.manifest_path(2), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let out = e.try_restore("2", &e.tmp.path().join("r"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("restores to"), "{}", stderr(&out));
    let out = e.verify("2");
    assert!(
        !out.status.success(),
        "verify passed a point restore refuses"
    );
    assert!(
        stderr(&out).contains(&format!("restores to {size} bytes")),
        "{}",
        stderr(&out)
    );
}

/// A chunk, a log or an index lost from the store: the next cycle commits nothing (Critical,
/// naming what is missing) instead of a point that cannot be restored; `sync --resync`
/// uploads a new base (the lost chunk again), after which every check passes and the latest
/// point is the disk.
#[test]
fn lost_store_objects_block_the_next_point_and_resync_repairs_them() {
    let e = site(ServerKind::Local);
    let store = e.store_group();
    e.tracker().write("disk0.img", 0, &data(1, 3 << 20));
    ok(&e.try_sync(&[]));
    for (i, what) in ["chunk", "log", "index"].iter().enumerate() {
        let seed = 10 * i as u8;
        // A point with a log on top of its base.
        e.tracker()
            .write("disk0.img", 3 << 20, &data(seed + 1, 50_000));
        ok(&e.try_sync(&[]));
        let last = e.points() as u64;
        let m = e.manifest(last);
        let d = &m["disks"][0];
        assert!(
            d["last_seq"].as_u64() > d["base"]["after_seq"].as_u64(),
            "{m}"
        );
        let victims: Vec<PathBuf> = match *what {
            // The first block's chunk: no later write touches that block, so the new base
            // needs this very chunk again.
            "chunk" => vec![store.join(hrl::store::chunk_key(&hrl::chunk::block_digest(
                &data(1, 3 << 20)[..256 << 10],
            )))],
            "index" => vec![store.join(d["base"]["index_key"].as_str().unwrap())],
            _ => {
                let logs = store
                    .join("disks")
                    .join(d["disk_id"].as_str().unwrap())
                    .join("g1/logs");
                let after = d["base"]["after_seq"].as_u64().unwrap();
                walk(&logs)
                    .into_iter()
                    .filter(|p| {
                        let name = p.file_name().unwrap().to_str().unwrap();
                        name.split('-').next().unwrap().parse::<u64>().unwrap() > after
                    })
                    .collect()
            }
        };
        assert!(
            !victims.is_empty() && victims.iter().all(|v| v.exists()),
            "{victims:?}"
        );
        for v in &victims {
            std::fs::remove_file(v).unwrap();
        }
        e.tracker()
            .write("disk0.img", 1 << 20, &data(seed + 2, 70_000));
        let out = e.try_sync(&[]);
        assert!(
            !out.status.success(),
            "lost {what}: a point was committed that cannot be restored"
        );
        let err = stderr(&out);
        assert!(
            err.contains("no recovery point committed") && err.contains("--resync"),
            "lost {what}: {err}"
        );
        assert_eq!(e.points() as u64, last, "lost {what}");
        assert_eq!(e.status()["health"], "Critical", "lost {what}");
        // The repair.
        ok(&e.output("sync", &["--resync"], &[]));
        if *what == "chunk" {
            assert!(
                victims[0].exists(),
                "resync did not upload the lost chunk again"
            );
        }
        let v = e.verify("latest");
        assert!(v.status.success(), "lost {what}: {}", stderr(&v));
        let snap = e.copy_disk("disk0.img", &format!("s{i}.img"));
        let to = e.tmp.path().join(format!("r{i}"));
        ok(&e.try_restore("latest", &to));
        assert_same_file(&to.join("disk0.img"), &snap);
        assert_eq!(e.status()["health"], "Normal", "lost {what}");
    }
}

/// The wall clock stepped back between two points: points stay ordered by id, and a lookup
/// by time never returns a point committed after a later-timed one. (The step is made by
/// rewriting point 3's seal time in the store: stepping this machine's clock would disturb
/// every other test running on it.)
#[test]
fn a_time_lookup_after_a_clock_step_back_returns_the_point_of_that_time() {
    let e = site(ServerKind::Local);
    for i in 0..3u8 {
        e.tracker()
            .write("disk0.img", 4096 * u64::from(i), &data(i, 4096));
        ok(&e.try_sync(&[]));
    }
    let t2 = e.manifest(2)["time_ns"].as_u64().unwrap();
    let mut m3 = e.manifest(3);
    m3["time_ns"] = (t2 - 3_600_000_000_000).into();
    std::fs::write(e.manifest_path(3), serde_json::to_vec_pretty(&m3).unwrap()).unwrap();
    let at = humantime::format_rfc3339_nanos(std::time::UNIX_EPOCH + Duration::from_nanos(t2))
        .to_string();
    let out = ok(&e.try_restore(&at, &e.tmp.path().join("r")));
    assert!(out.contains("restored point 2 "), "{out}");
    let list = ok(&e.shipper(
        &["points", "--target", &e.server.url, "--group", "vm1"],
        &[],
    ));
    let line3 = list
        .lines()
        .find(|l| l.trim_start().starts_with("3 "))
        .unwrap();
    assert!(line3.contains("went back"), "{list}");
    ok(&e.try_restore("3", &e.tmp.path().join("r3")));
}

/// The environment of `e`'s moto server with the shipper sent through `proxy`.
fn through(e: &Site, proxy: &proxy::FaultyProxy) -> Vec<(String, String)> {
    e.server
        .env
        .iter()
        .map(|(k, v)| {
            if k == "AWS_ENDPOINT" {
                (k.clone(), format!("http://127.0.0.1:{}", proxy.port))
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

/// The store kept the manifest but its reply was lost; the retry is told the point exists.
/// The shipper recognises its own manifest (same bytes) and counts the point as committed —
/// not "committed by another shipper", Critical, stopped for good.
#[test]
fn a_lost_reply_to_the_manifest_put_still_commits_the_point() {
    let e = site(ServerKind::Moto);
    let proxy = proxy::FaultyProxy::start(e.server.port);
    proxy.add(proxy::Rule {
        method: "PUT",
        contains: "/points/".into(),
        fault: proxy::Fault::LoseReply,
        times: 1,
    });
    let env = through(&e, &proxy);
    e.tracker().write("disk0.img", 0, &data(1, 100_000));
    let a = e.args("sync");
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = shipper(&args, &env, &e.run_dir, &e.state);
    assert_eq!(proxy.faults(), 1, "the manifest's reply was never lost");
    ok(&out);
    assert_eq!(e.points(), 1);
    assert_eq!(e.status()["health"], "Normal");
    e.tracker().write("disk0.img", 50_000, &data(2, 20_000));
    ok(&shipper(&args, &env, &e.run_dir, &e.state));
    assert_eq!(e.points(), 2);
    let to = e.tmp.path().join("r");
    ok(&e.try_restore("latest", &to));
    assert_same_file(&to.join("disk0.img"), &e.copy_disk("disk0.img", "s.img"));
}

/// Incomplete multipart uploads of moto's bucket (ListMultipartUploads).
fn multipart_uploads(port: u16, bucket: &str) -> usize {
    run(Command::new("python3").arg("-c").arg(format!(
        "import urllib.request\nprint(urllib.request.urlopen('http://127.0.0.1:{port}/{bucket}?uploads').read().decode())"
    )))
    .matches("<UploadId>")
    .count()
}

/// A multipart upload of a large log that fails part way (the store refuses one part) is
/// aborted: no incomplete upload stays in the bucket, stored and billed but never visible.
/// The cycle reports a recoverable error, and the next one ships the log.
#[test]
fn a_failed_multipart_upload_is_aborted() {
    let e = site(ServerKind::Moto);
    let proxy = proxy::FaultyProxy::start(e.server.port);
    let env = through(&e, &proxy);
    let a = e.args("sync");
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    ok(&shipper(&args, &env, &e.run_dir, &e.state));
    // 40 MiB of incompressible data: a log above the single-PUT limit, in three parts.
    e.tracker().write("disk0.img", 0, &data(5, 40 << 20));
    proxy.add(proxy::Rule {
        method: "PUT",
        contains: "partNumber=2".into(),
        fault: proxy::Fault::Refuse,
        times: 1000,
    });
    let out = shipper(&args, &env, &e.run_dir, &e.state);
    assert!(!out.status.success(), "the upload did not fail");
    assert!(proxy.faults() > 0);
    assert_eq!(
        multipart_uploads(e.server.port, &e.server.bucket),
        0,
        "an incomplete upload was left"
    );
    assert_eq!(e.status()["health"], "Warning");
    // What the cycle had in its work directory is gone too.
    let work = e.state.join("work").join("vm1");
    assert_eq!(std::fs::read_dir(&work).map_or(0, |d| d.count()), 0);
    assert_eq!(e.points(), 1);
}

/// Runs the shipper as another host (its own UTS namespace and host name, its own state).
fn shipper_as_host(e: &Site, host: &str, args: &[&str], state: &Path) -> std::process::Output {
    Command::new("unshare")
        .args(["--uts", "sh", "-c", "hostname \"$0\" && exec \"$@\"", host])
        .arg(shipper_bin())
        .args(args)
        .envs(e.server.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("HRL_RUN_DIR", &e.run_dir)
        .env("HRL_STATE_DIR", state)
        .env("HRL_LOG", "info")
        .output()
        .unwrap()
}

/// Two directories with the same name get different default groups (host and path), each
/// restores to its own disk; a second host shipping into a group it does not own is
/// stopped (Critical) with an error naming the owner, and nothing is written; a group from
/// before owner records is claimed by the host of its latest point, another host fenced.
#[test]
fn groups_are_per_host_and_directory_and_another_host_is_fenced() {
    let e = site(ServerKind::Local);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    // A second directory also called "vm1", elsewhere.
    let dir2 = e.tmp.path().join("other").join("vm1");
    std::fs::create_dir_all(&dir2).unwrap();
    let t2 = FakeTracker::start(&dir2, &e.run_dir);
    t2.add_disk("disk0.img", 4 << 20);
    t2.write("disk0.img", 0, &data(7, 100_000));
    e.tracker().write("disk0.img", 0, &data(8, 100_000));
    let mut groups = Vec::new();
    for d in [&e.dir, &dir2] {
        let dir = d.to_str().unwrap();
        ok(&e.shipper(&["sync", "--dir", dir, "--target", &e.server.url], &[]));
        let st = ok(&e.shipper(&["status", "--dir", dir, "--json"], &[]));
        let st: serde_json::Value = serde_json::from_str(&st).unwrap();
        groups.push(st[0]["group"].as_str().unwrap().to_string());
    }
    assert_ne!(groups[0], groups[1]);
    for (g, d) in groups.iter().zip([&e.dir, &dir2]) {
        assert!(
            g.starts_with(&format!("{host}-")) && g.ends_with("-vm1"),
            "{g}"
        );
        let to = e.tmp.path().join(format!("r-{g}"));
        ok(&e.shipper(
            &[
                "restore",
                "--target",
                &e.server.url,
                "--group",
                g,
                "--to",
                to.to_str().unwrap(),
            ],
            &[],
        ));
        assert_same_file(&to.join("disk0.img"), &d.join("disk0.img"));
    }
    // Host "other" ships the first directory into the first directory's group.
    let state_b = e.tmp.path().join("state-b");
    let dir = e.dir.to_str().unwrap();
    let args = [
        "sync",
        "--dir",
        dir,
        "--group",
        &groups[0],
        "--target",
        &e.server.url,
    ];
    let store = e.server.local_path().join(&groups[0]);
    let points = || std::fs::read_dir(store.join("points")).unwrap().count();
    e.tracker().write("disk0.img", 0, &data(9, 1000));
    let out = shipper_as_host(&e, "hrl-other-host", &args, &state_b);
    assert!(
        !out.status.success(),
        "another host committed into the group"
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!("owned by host {host} directory")),
        "{err}"
    );
    assert_eq!(points(), 1);
    // A group without an owner record (written before them): its latest point's host owns it.
    std::fs::remove_dir_all(store.join("owner")).unwrap();
    let out = shipper_as_host(&e, "hrl-other-host", &args, &state_b);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("host {host} (it committed point 1")),
        "{}",
        stderr(&out)
    );
    ok(&e.shipper(&args, &[]));
    assert!(store.join("owner").join(format!("{:020}.json", 1)).exists());
    assert_eq!(points(), 2);
}

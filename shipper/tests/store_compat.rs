//! A store written by the release before the store layer was rewritten (issue 8) still
//! restores and verifies: `tests/fixtures/store-v1` was made by that release's binaries
//! (`make.sh` there: two disks, chunk size 64 KiB, a base, logs, a resync's new base, a grown
//! disk), with the sha256 of every disk at each point. No mount; root only because restore
//! gives each disk the owner recorded at its seal (root).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn shipper_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hrl-shipper"))
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1")
}

/// A copy of the fixture store (nothing may change the committed one).
fn store_copy(tmp: &Path) -> PathBuf {
    let to = tmp.join("store");
    std::fs::create_dir_all(&to).unwrap();
    let st = Command::new("cp")
        .arg("-r")
        .arg(fixture().join("fixture"))
        .arg(&to)
        .status()
        .unwrap();
    assert!(st.success());
    to
}

fn shipper(state: &Path, args: &[&str]) -> std::process::Output {
    Command::new(shipper_bin())
        .args(args)
        .env("HRL_STATE_DIR", state)
        .output()
        .unwrap()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_store_of_the_previous_release_restores_every_point_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_copy(tmp.path());
    let state = tmp.path().join("state");
    let target = store.to_str().unwrap();
    for point in 1..=4 {
        let to = tmp.path().join(format!("r{point}"));
        let p = point.to_string();
        let out = shipper(
            &state,
            &[
                "restore",
                "--group",
                "fixture",
                "--target",
                target,
                "--point",
                &p,
                "--to",
                to.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "restore of point {point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sums =
            std::fs::read_to_string(fixture().join(format!("point-{point}.sha256"))).unwrap();
        let mut disks = 0;
        for line in sums.lines() {
            let (want, name) = line.split_once("  ").unwrap();
            assert_eq!(sha256(&to.join(name)), want, "point {point} disk {name}");
            disks += 1;
        }
        assert_eq!(disks, 2);
    }
    let out = shipper(
        &state,
        &[
            "verify", "--group", "fixture", "--target", target, "--point", "all",
        ],
    );
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_damaged_chunk_of_the_old_store_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_copy(tmp.path());
    let chunks = store.join("fixture/chunks");
    let sub = std::fs::read_dir(&chunks)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let chunk = std::fs::read_dir(&sub)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&chunk, b"not zstd").unwrap();
    let out = shipper(
        &tmp.path().join("state"),
        &[
            "verify",
            "--group",
            "fixture",
            "--target",
            store.to_str().unwrap(),
            "--point",
            "all",
        ],
    );
    assert!(!out.status.success());
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let name = chunk.file_name().unwrap().to_string_lossy().to_string();
    assert!(err.contains("is damaged") && err.contains(&name), "{err}");
}

/// A group of the previous release (its `owner.json`, no epochs) can be failed over: the
/// old record is read as epoch 0, the takeover creates epoch 1 at the latest point, the
/// disks are those of point 4, and every old point stays in the chain.
#[test]
fn a_group_of_the_previous_release_fails_over() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_copy(tmp.path());
    let target = store.to_str().unwrap();
    let to = tmp.path().join("failover");
    let state = tmp.path().join("state");
    let out = shipper(
        &state,
        &[
            "failover",
            "--group",
            "fixture",
            "--target",
            target,
            "--to",
            to.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "failover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["point"].as_u64(), v["epoch"].as_u64()),
        (Some(4), Some(1)),
        "{v}"
    );
    assert!(
        v["previous_owner"].as_str().unwrap().contains("host vm"),
        "{v}"
    );
    let sums = std::fs::read_to_string(fixture().join("point-4.sha256")).unwrap();
    for line in sums.lines() {
        let (want, name) = line.split_once("  ").unwrap();
        assert_eq!(sha256(&to.join(name)), want, "disk {name}");
    }
    assert!(
        store.join("fixture/owner.json").exists(),
        "the old record is kept"
    );
    assert!(store.join(format!("fixture/owner/{:020}.json", 1)).exists());
    let out = shipper(
        &state,
        &[
            "verify", "--group", "fixture", "--target", target, "--point", "latest",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains('4'));
}

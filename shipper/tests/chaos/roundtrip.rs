//! `failover_round_trip`: the world's directory fails over to a second directory (planned:
//! read-only, final point, hand-over; or unplanned: the primary just stops), 2 times in 3
//! after a `failover --prepare` there while the primary still runs (and writes, and may
//! commit); half the time the second directory, mounted, commits a point of its own; then
//! the group fails back onto the first directory by delta (every disk it holds, at any
//! size), and the world goes on there.
//! Half the time one of the two failovers is killed (-9) at a stop point of its final pass
//! (after the first rename, before or after the takeover, between a disk's tracker files,
//! before the shipper state) and run again: the rerun must finish it (same oracle).
//! Every point committed on the way is checked by the oracle like any sync's.

use std::os::unix::fs::FileExt;
use std::path::Path;

use super::action::Action;
use super::oracle::{self, Reference};
use super::rng::Rng;
use super::world::{last_lines, Finding, SyncHow, SyncOutcome, World, GROUP};
use crate::tracker_common::Mounted;

/// JSON of a `failover` (or `--prepare`) into `to`; a failure is a finding.
fn failover(w: &World, to: &Path, prepare: bool) -> Result<serde_json::Value, Finding> {
    let to_s = to.display().to_string();
    let mut args = vec![
        "failover", "--target", &w.url, "--group", GROUP, "--to", &to_s, "--json",
    ];
    if prepare {
        args.push("--prepare");
    }
    let o = w.tool(&args);
    if !o.status.success() {
        return Err(format!(
            "{} failed: {}",
            args.join(" "),
            last_lines(&String::from_utf8_lossy(&o.stderr), 3)
        ));
    }
    serde_json::from_slice(&o.stdout).map_err(|e| format!("failover --json: {e}"))
}

/// A failover into `to`, first killed (-9) at stop point `kill` when it gets there, then run
/// again (the rerun must finish it). `what` says so.
fn final_pass(
    w: &World,
    to: &Path,
    kill: Option<&str>,
    what: &mut Vec<String>,
) -> Result<serde_json::Value, Finding> {
    if let Some(at) = kill {
        let to_s = to.display().to_string();
        let args = [
            "failover", "--target", &w.url, "--group", GROUP, "--to", &to_s, "--json",
        ];
        let marker = w.state.join(format!("stopped-at-{at}"));
        let stopped = crate::common::kill9_if_it_reaches(
            w.cmd(&args),
            &marker,
            at,
            std::time::Duration::from_secs(60),
        );
        what.push(match stopped {
            true => format!("failover into {} killed at {at}, run again", to.display()),
            false => format!("(failover into {} did not reach {at})", to.display()),
        });
    }
    failover(w, to, false)
}

/// The disks' names and how each was brought up, from a failover's JSON.
fn hows(v: &serde_json::Value) -> Vec<(String, String)> {
    v["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            (
                d["name"].as_str().unwrap_or_default().to_string(),
                d["how"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A write of up to 128 KiB inside a disk of `dir` (none if it has no disk).
fn write_in(dir: &Path, rng: &mut Rng) -> Result<String, Finding> {
    let disks = oracle::read_disks(dir).map_err(|e| e.to_string())?;
    let names: Vec<&String> = disks.keys().collect();
    if names.is_empty() {
        return Ok("no disk to write".into());
    }
    let name = names[rng.below(names.len() as u64) as usize];
    let len = disks[name].len() as u64;
    let n = 1 + rng.below(128 << 10).min(len.max(1));
    let off = rng.below(len.saturating_sub(n).max(1));
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(name))
        .and_then(|f| f.write_all_at(&rng.bytes(n as usize), off))
        .map_err(|e| format!("write {name} in {}: {e}", dir.display()))?;
    Ok(format!("write {name} @{off}+{n}"))
}

pub fn failover_round_trip(w: &mut World, act: &Action, rng: &mut Rng) -> Result<String, Finding> {
    if w.objects_lost {
        return Ok("(an object was lost: skipped)".into());
    }
    w.set_store_ro(false);
    w.outage_syncs = 0;
    let planned = act.a % 2 == 0;
    let prepare = (act.a / 2) % 3 != 0;
    let commit_there = act.b % 2 == 0;
    // Some of the time one of the two failovers is killed in its final pass and run again.
    let kill = crate::common::FAILOVER_FINAL_PASS_STOPS
        .get(((act.b >> 1) % 10) as usize)
        .copied();
    let kill_failback = (act.b >> 8) % 2 == 0;
    let mut what = vec![format!(
        "{}{}",
        if planned { "planned" } else { "unplanned" },
        if prepare { ", prepared" } else { "" }
    )];
    let second = w.work.join(format!("second-{}", act.c % 1_000_000));
    let _ = std::fs::remove_dir_all(&second);

    // While the primary is live: a prepare, then a change it does not have yet.
    if prepare {
        let p = failover(w, &second, true)?;
        what.push(format!("prepare of point {}: {:?}", p["point"], hows(&p)));
        what.push(write_in(&w.dir, rng)?);
        if act.c % 2 == 0 {
            super::ops::sync_now(w, SyncHow::Plain)?;
            what.push("sync".into());
        }
    }

    // The switch: planned (a final point, handed over) or the primary just stops.
    if planned {
        let dir = w.dir.display().to_string();
        let o = w.tool(&[
            "failover", "planned", "--dir", &dir, "--target", &w.url, "--group", GROUP, "--json",
        ]);
        let out = SyncOutcome {
            success: o.status.success(),
            killed: false,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        };
        let reference = Reference::Exact(w.snapshot()?);
        w.after_sync(&out, &reference)?;
        if !out.success {
            // Refused before the hand-over: the directory is writable, the group ours.
            what.push(format!(
                "planned failover refused: {}",
                last_lines(&out.stderr, 1)
            ));
            return Ok(what.join("; "));
        }
    }
    w.unmount()?;
    let f = final_pass(w, &second, kill.filter(|_| !kill_failback), &mut what)?;
    let point = f["point"].as_u64().unwrap_or_default();
    what.push(format!("failover to point {point}: {:?}", hows(&f)));
    let there = oracle::read_disks(&second).map_err(|e| e.to_string())?;
    // (A point the oracle did not check, the service's, is not compared.)
    let want = w.checked_digests(point);
    if want.is_some() && want != Some(oracle::digests(&there)) {
        return Err(format!(
            "the failover to point {point} did not rebuild its disks: {:?} vs {:?}",
            oracle::digests(&there),
            w.checked_digests(point)
        ));
    }

    // Half the time the second directory commits a point (reverse replication).
    if commit_there {
        let m = std::panic::catch_unwind(|| Mounted::start(&second, &second, &w.run, &[]))
            .map_err(|_| "hrl-tracker mount of the second directory failed".to_string())?;
        what.push(write_in(&second, rng)?);
        let dir = second.display().to_string();
        let o = w.tool(&[
            "sync", "--dir", &dir, "--target", &w.url, "--group", GROUP, "--json",
        ]);
        let out = SyncOutcome {
            success: o.status.success(),
            killed: false,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        };
        let reference = Reference::Exact(oracle::read_disks(&second).map_err(|e| e.to_string())?);
        w.after_sync(&out, &reference)?;
        if !out.success {
            return Err(format!(
                "the second directory's sync failed: {}",
                last_lines(&out.stderr, 3)
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if v["base_copies"].as_array().is_some_and(|b| !b.is_empty()) {
            return Err(format!(
                "reverse replication made a base copy after the failover: {v}"
            ));
        }
        what.push(format!("point {} committed from there", v["point"]));
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.unmount()))
            .map_err(|_| "unmount of the second directory failed".to_string())?;
    }

    // Failback onto the first directory: what is not a disk of the point goes aside first.
    let latest = w.point_ids()?.last().copied().unwrap_or_default();
    let keep = w.point_disk_names(latest)?;
    // The disks the directory holds (at any size) come back by delta.
    let held: Vec<String> = keep
        .iter()
        .filter(|n| std::fs::symlink_metadata(w.path(n)).is_ok_and(|m| m.is_file()))
        .cloned()
        .collect();
    aside(w, &keep)?;
    let b = final_pass(w, &w.dir.clone(), kill.filter(|_| kill_failback), &mut what)?;
    what.push(format!("failback to point {}: {:?}", b["point"], hows(&b)));
    for (name, how) in hows(&b) {
        if held.contains(&name) && how != "delta" {
            return Err(format!(
                "the failback took {name} {how} though the directory held it (any size comes by delta)"
            ));
        }
    }
    let back = oracle::read_disks(&w.dir).map_err(|e| e.to_string())?;
    let want = w.checked_digests(latest);
    if want.is_some() && want != Some(oracle::digests(&back)) {
        return Err(format!(
            "the failback to point {latest} did not give its disks: {:?} vs {:?}",
            oracle::digests(&back),
            w.checked_digests(latest)
        ));
    }
    let _ = std::fs::remove_dir_all(&second);
    w.mount()?;
    Ok(what.join("; "))
}

/// Moves every entry of the world's directory that is neither a disk in `keep` nor one of
/// their tracker files into `work/aside` (a failback refuses a directory holding others).
fn aside(w: &mut World, keep: &[String]) -> Result<(), Finding> {
    use hrl::naming::{classify, HrlFile};
    let to = w.work.join("aside");
    for e in std::fs::read_dir(&w.dir).map_err(|e| e.to_string())? {
        let e = e.map_err(|e| e.to_string())?;
        let name = e.file_name();
        let s = name.to_string_lossy();
        let ours = keep.iter().any(|k| *k == s)
            || match classify(&s) {
                Some(HrlFile::ActiveLog { disk })
                | Some(HrlFile::SealedLog { disk, .. })
                | Some(HrlFile::Bitmap { disk }) => keep.contains(&disk),
                _ => false,
            };
        if !ours {
            let dest = to.join(format!("{}-{}", hrl::now_ns(), s));
            // Across filesystems (the small ext4 of `full_fs`) it is removed instead.
            let moved = std::fs::rename(e.path(), &dest).or_else(|_| {
                match e.file_type().is_ok_and(|t| t.is_dir()) {
                    true => std::fs::remove_dir_all(e.path()),
                    false => std::fs::remove_file(e.path()),
                }
            });
            moved.map_err(|err| format!("move {s} aside: {err}"))?;
            w.note(format!("   -> {s} moved aside for the failback"));
        }
    }
    Ok(())
}

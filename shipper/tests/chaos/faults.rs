//! Action kinds for the faults of issue 18 and the rest of issue 16 (full filesystem, dead
//! mount, the 50% rule under the service, bind-mount alias, odd names, junk logs, descriptor
//! exhaustion, the work dir after a killed upload). Each checks what the tool must say or do
//! beside the oracle's checks of the syncs it runs.

use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hrl::control::{DiskMode, DiskStatus, Request};

use super::action::Action;
use super::rng::Rng;
use super::world::{Finding, SyncHow, World, GROUP};
use crate::common::KillOnDrop;
use crate::tracker_common::{is_mounted, tracker_bin, Mounted};

const MIB: u64 = 1 << 20;

/// Unshipped log bytes of a disk as the tracker counts them (active log past its header and
/// sealed logs not acked).
fn unshipped(w: &World, disk: &str) -> u64 {
    disk_status(w, disk).map_or(0, |s| {
        s.active_log_bytes.saturating_sub(hrl::log::HEADER_LEN) + s.pending_sealed_bytes
    })
}

/// Why the shipper's status says the disk waits for a resync ("" if it does not).
fn shipper_reason(w: &World, disk: &str) -> String {
    let dir = w.dir.display().to_string();
    let o = w.tool(&["status", "--dir", &dir, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    v[0]["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["disk"] == disk)
        .and_then(|d| d["resync_reason"].as_str().map(String::from))
        .unwrap_or_default()
}

/// The tracker's view of one disk (through the control socket).
fn disk_status(w: &World, disk: &str) -> Option<DiskStatus> {
    let m = w.mount.as_ref()?;
    let st = m.request(&Request::Status).status?;
    st.disks.into_iter().find(|d| d.disk == disk)
}

fn tracker_alive(w: &mut World) -> Result<(), Finding> {
    let Some(m) = w.mount.as_mut() else {
        return Err("no tracker mounted".into());
    };
    if let Some(c) = m.child.as_mut() {
        if let Ok(Some(st)) = c.try_wait() {
            return Err(format!("the tracker died ({st})"));
        }
    }
    if !is_mounted(&w.dir) {
        return Err("the mount is gone".into());
    }
    Ok(())
}

/// `hrl-tracker status DIR` (text): what an operator reads.
fn tracker_status_text(w: &World) -> Result<String, Finding> {
    let o = Command::new(tracker_bin())
        .arg("status")
        .arg(&w.dir)
        .env("HRL_RUN_DIR", &w.run)
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "hrl-tracker status failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// The directory's filesystem filled (a filler file beside the directory) but for a few KiB:
/// a write, a growth and a new disk through the mount each work or get ENOSPC, never another
/// error, and the tracker lives on; a sync while full commits a correct point or says why;
/// once space is freed replication goes on (the syncs after it check the points).
pub fn full_fs(w: &mut World, act: &Action, rng: &mut Rng) -> Result<String, Finding> {
    let Some(fs) = w.fs_mount.clone() else {
        return Ok("(the directory is not on its own filesystem)".into());
    };
    let filler = fs.join("filler");
    let left = act.b % (512 * 1024);
    let free = free_bytes(&fs).unwrap_or(0);
    let _ = Command::new("fallocate")
        .args(["-l", &free.saturating_sub(left).max(4096).to_string()])
        .arg(&filler)
        .status();
    let mut what = vec![format!(
        "filesystem filled ({} B left)",
        free_bytes(&fs).unwrap_or(0)
    )];
    let mut attempt = |label: String, r: std::io::Result<()>| -> Result<(), Finding> {
        match r {
            Ok(()) => what.push(format!("{label}: ok")),
            Err(e) if no_space(&e) => what.push(format!("{label}: ENOSPC")),
            Err(e) => return Err(format!("full filesystem: {label}: {e} (expected ENOSPC)")),
        }
        Ok(())
    };
    if let Some(d) = w.pick(".img", act.a) {
        let p = w.path(&d);
        let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        let off = rng.below(size + 64 * 1024);
        let n = 64 * 1024 + rng.below(256 * 1024) as usize;
        let data = rng.bytes(n);
        let r = OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|f| f.write_all_at(&data, off));
        attempt(format!("write {d} @{off}+{}", data.len()), r)?;
        let to = size + MIB + rng.below(64 * MIB);
        let r = OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_len(to));
        attempt(format!("grow {d} to {to}"), r)?;
    }
    let name = w.fresh_name("img");
    let r = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(w.path(&name))
        .and_then(|f| {
            f.set_len(2 * MIB)?;
            f.write_all_at(&rng.bytes(128 * 1024), rng.below(MIB))
        });
    attempt(format!("create {name}"), r)?;
    tracker_alive(w).map_err(|e| format!("full filesystem: {e}"))?;
    super::ops::sync_now(w, SyncHow::Plain)?;
    let _ = std::fs::remove_file(&filler);
    tracker_alive(w).map_err(|e| format!("after the full filesystem: {e}"))?;
    Ok(what.join("; "))
}

fn free_bytes(p: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we own; c is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0)
        .then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// kill -9 of the tracker, its dead mount left in place, mount again (the tracker must detach
/// it itself); the next write must be tracked (it reaches the active log).
pub fn dead_mount(w: &mut World, act: &Action, rng: &mut Rng) -> Result<String, Finding> {
    let Some(d) = w.pick(".img", act.a) else {
        return Ok("(no disk)".into());
    };
    let mut m = w.mount.take().ok_or("not mounted")?;
    if let Some(mut c) = m.child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    std::mem::forget(m); // its Drop would detach the dead mount
    if !is_mounted(&w.dir) {
        return Err("the killed tracker's mount vanished by itself".into());
    }
    // A stat of the disk now gets ENOTCONN (or cached attributes).
    let _ = std::fs::metadata(w.path(&d));
    w.mount()?;
    let before = disk_status(w, &d);
    let p = w.path(&d);
    let off = rng.below(std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0).max(1));
    OpenOptions::new()
        .write(true)
        .open(&p)
        .and_then(|f| f.write_all_at(&rng.bytes(4096), off))
        .map_err(|e| format!("write {d} after the remount over a dead mount: {e}"))?;
    let after = disk_status(w, &d);
    // Logged in log mode; in bitmap mode (after the 50% rule) the marks hold it.
    let tracked = match (&before, &after) {
        (Some(b), Some(a)) if a.mode == DiskMode::Bitmap => a.dirty_extents > 0 && b.mode == a.mode,
        (Some(b), Some(a)) => {
            a.active_seq == b.active_seq && a.active_log_bytes > b.active_log_bytes
        }
        _ => false,
    };
    if !tracked {
        return Err(format!(
            "after a mount over a dead mount, a write to {d} was not tracked (before {before:?}, after {after:?})"
        ));
    }
    Ok(format!(
        "kill -9, mount over the dead mount, write {d} @{off} logged"
    ))
}

/// The 50% rule under the service (`hrl-shipper run`): more than half of a 24 MiB disk
/// written between cycles, with the store writable, refusing (read-only: the cycles fail),
/// or replication paused. Within 30 s the disk must be in bitmap tracking with its logs
/// released; then the service stops, the faults end, and a sync must resync it.
pub fn fifty_percent(w: &mut World, act: &Action, rng: &mut Rng) -> Result<String, Finding> {
    let disk = "big.img";
    let p = w.path(disk);
    // A store outage still running from an earlier action ends first: each variant sets the
    // store's state itself (seed 30051 started the "store ok" service into a read-only store).
    w.set_store_ro(false);
    w.outage_syncs = 0;
    if !p.exists() {
        let f = std::fs::File::create(&p).map_err(|e| format!("create {disk}: {e}"))?;
        f.set_len(24 * MIB).map_err(|e| e.to_string())?;
        super::ops::sync_now(w, SyncHow::Plain)?;
    }
    let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
    let how = ["store ok", "store refusing", "paused"][(act.a % 3) as usize];
    match how {
        "store refusing" => w.set_store_ro(true),
        "paused" => {
            let o = w.tool(&["pause", "--dir", &w.dir.display().to_string()]);
            if !o.status.success() {
                return Err(format!("pause: {}", String::from_utf8_lossy(&o.stderr)));
            }
        }
        _ => {}
    }
    let before = w.snapshot()?;
    let service = w.start_service()?;
    if how == "store ok" {
        // Its first cycle runs at once, with nothing writing: that point is the disks now.
        let max = w.max_point;
        let committed = wait_for(Duration::from_secs(120), || {
            w.point_ids().is_ok_and(|ids| ids.iter().any(|&i| i > max))
        });
        if !committed {
            let log = std::fs::read_to_string(w.work.join("service.stderr")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            return Err(format!(
                "the service's first cycle committed no point within 120 s; tracker: {:?}; shipper: {}; its log ends:\n{}",
                disk_status(w, disk),
                shipper_reason(w, disk),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        let done = super::world::SyncOutcome {
            success: true,
            killed: false,
            stderr: String::new(),
        };
        w.after_sync(&done, &super::oracle::Reference::Exact(before))?;
    }
    // More than half of the disk, in 1 MiB writes.
    let f = OpenOptions::new()
        .write(true)
        .open(&p)
        .map_err(|e| e.to_string())?;
    let n = size / MIB / 2 + 1 + act.b % 4;
    for _ in 0..n {
        let off = rng.below(size / MIB) * MIB;
        f.write_all_at(&rng.bytes(MIB as usize), off)
            .map_err(|e| format!("write {disk}: {e}"))?;
    }
    drop(f);
    // The rule ran (the shipper says why the disk waits) and the logs are within budget;
    // a retry may switch the disk back to log mode meanwhile (its resync), then the budget
    // releases again: the logs stay bounded.
    let half = size / 2;
    let released = wait_for(Duration::from_secs(30), || {
        shipper_reason(w, disk).contains("50%") && unshipped(w, disk) <= half
    });
    let more = OpenOptions::new()
        .write(true)
        .open(&p)
        .and_then(|f| f.write_all_at(&rng.bytes(MIB as usize), 0));
    std::thread::sleep(Duration::from_secs(2));
    let st = disk_status(w, disk);
    let grew = released && unshipped(w, disk) > half + 2 * MIB;
    drop(service);
    w.set_store_ro(false);
    let _ = w.tool(&["resume", "--dir", &w.dir.display().to_string()]);
    // The service may have committed points while the writes ran: not the oracle's.
    w.skip_points()?;
    more.map_err(|e| format!("write {disk} after the release: {e}"))?;
    if !released {
        return Err(format!(
            "50% rule ({how}): {n} MiB written to the {size}-byte {disk}, 30 s later its logs were not released: {st:?}"
        ));
    }
    if grew {
        return Err(format!(
            "50% rule ({how}): after the release the logs of {disk} grow past the budget again: {st:?}"
        ));
    }
    Ok(format!(
        "50% rule ({how}): {n} MiB into {disk}, logs released"
    ))
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    f()
}

/// A bind mount of the image directory made before the tracker mounts: the mount must be
/// refused naming it; with `--force` a write through the alias must be caught at the next
/// seal (the sync after it checks the point).
pub fn bind_alias(w: &mut World, act: &Action, rng: &mut Rng) -> Result<String, Finding> {
    let Some(d) = w.pick(".img", act.a) else {
        return Ok("(no disk)".into());
    };
    w.unmount()?;
    let alias = w.work.join("alias");
    std::fs::create_dir_all(&alias).map_err(|e| e.to_string())?;
    let bound = Command::new("mount")
        .arg("--bind")
        .arg(&w.dir)
        .arg(&alias)
        .status()
        .is_ok_and(|s| s.success());
    if !bound {
        w.mount()?;
        return Ok("(bind mount failed)".into());
    }
    let _alias = Unbind(alias.clone());
    let refusal = std::panic::catch_unwind(|| Mounted::refused(&w.dir, &w.run, &[]));
    let refusal =
        match refusal {
            Ok(s) => s,
            Err(_) => return Err(
                "a bind mount of the directory made before the mount: the mount was not refused"
                    .into(),
            ),
        };
    if !refusal.contains(&alias.display().to_string()) {
        return Err(format!(
            "the refused mount does not name the bind mount {}: {refusal}",
            alias.display()
        ));
    }
    w.mount_how(None, &["--force"])?;
    super::ops::sync_now(w, SyncHow::Plain)?;
    let p = alias.join(&d);
    let off = rng.below(std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0).max(1));
    OpenOptions::new()
        .write(true)
        .open(&p)
        .and_then(|f| f.write_all_at(&rng.bytes(4096), off))
        .map_err(|e| format!("write {d} through the bind mount: {e}"))?;
    Ok(format!(
        "bind mount refused, --force, write {d} @{off} through the alias"
    ))
}

/// Removes a bind mount on drop.
struct Unbind(PathBuf);

impl Drop for Unbind {
    fn drop(&mut self) {
        for _ in 0..20 {
            if !is_mounted(&self.0) {
                return;
            }
            let ok = Command::new("umount")
                .arg(&self.0)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A disk-looking file whose name is not UTF-8 and a disk name that is a symlink to a file
/// outside the directory, made while unmounted: after the mount `status` must list both as
/// not tracked. Both are removed again (through the mount).
pub fn odd_names(w: &mut World, _act: &Action, rng: &mut Rng) -> Result<String, Finding> {
    w.unmount()?;
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.img");
    let outside = w.work.join("outside.img");
    std::fs::write(&outside, rng.bytes(64 * 1024)).map_err(|e| e.to_string())?;
    std::fs::write(w.dir.join(odd), rng.bytes(64 * 1024)).map_err(|e| e.to_string())?;
    let link = w.fresh_name("img");
    std::os::unix::fs::symlink(&outside, w.path(&link)).map_err(|e| e.to_string())?;
    w.mount()?;
    let text = tracker_status_text(w)?;
    let _ = std::fs::remove_file(w.dir.join(odd));
    let _ = std::fs::remove_file(w.path(&link));
    let odd_listed = text
        .lines()
        .any(|l| l.contains("caf") && l.contains("not tracked"));
    let link_listed = text
        .lines()
        .any(|l| l.contains(&link) && l.contains("not tracked"));
    if !odd_listed || !link_listed {
        return Err(format!(
            "status does not list the untracked disk-looking files (non-UTF-8 name: {odd_listed}, symlink {link}: {link_listed}):\n{text}"
        ));
    }
    Ok(format!(
        "non-UTF-8 caf\\xe9.img and symlink {link} listed as not tracked"
    ))
}

/// A junk file named like a sealed log of a disk, put there while unmounted: the mount must
/// come up (the file set aside, the disk marked for a full compare, a warning in status).
pub fn junk_hrl(w: &mut World, act: &Action, rng: &mut Rng) -> Result<String, Finding> {
    let Some(d) = w.pick(".img", act.a) else {
        return Ok("(no disk)".into());
    };
    let id = disk_status(w, &d).map(|s| s.disk_id).unwrap_or_default();
    w.unmount()?;
    let junk = hrl::naming::sealed_log_path(&w.path(&d), 900 + act.b % 50, &id);
    let len = rng.below(8192) as usize;
    std::fs::write(&junk, rng.bytes(len)).map_err(|e| e.to_string())?;
    w.mount()?;
    if junk.exists() {
        return Err(format!(
            "the junk log {} is still there after the mount (not quarantined)",
            junk.display()
        ));
    }
    let st = disk_status(w, &d);
    let flagged = st
        .as_ref()
        .is_some_and(|s| !s.warnings.is_empty() && !s.unclean_extents.is_empty());
    if !flagged {
        return Err(format!(
            "after the junk log of {d} was quarantined, the disk has no warning or is not marked for a full compare: {st:?}"
        ));
    }
    Ok(format!(
        "junk {} ({len} B) quarantined",
        junk.file_name().unwrap_or_default().to_string_lossy()
    ))
}

/// The tracker under a low open file limit (prlimit) and a crawl of many files in a
/// subdirectory of the mount: the control socket keeps answering and a sync works (the
/// oracle checks its point). Then the files go and the tracker is remounted unlimited.
pub fn fd_exhaust(w: &mut World, act: &Action, _rng: &mut Rng) -> Result<String, Finding> {
    w.unmount()?;
    w.mount_how(Some(256), &[])?;
    let crawl = w.dir.join("crawl");
    let files = 400 + act.b % 300;
    let r = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(&crawl)?;
        for i in 0..files {
            std::fs::write(crawl.join(format!("f{i}")), i.to_string())?;
        }
        for round in 0..2 {
            for i in 0..files {
                let _ = round;
                std::fs::metadata(crawl.join(format!("f{i}")))?;
            }
        }
        Ok(())
    })();
    r.map_err(|e| format!("crawl of {files} files under a 256-descriptor limit: {e}"))?;
    tracker_status_text(w).map_err(|e| format!("after the crawl: {e}"))?;
    super::ops::sync_now(w, SyncHow::Plain)?;
    std::fs::remove_dir_all(&crawl).map_err(|e| format!("remove the crawl: {e}"))?;
    w.unmount()?;
    w.mount()?;
    Ok(format!("crawl of {files} files under 256 descriptors"))
}

/// kill -9 of a sync after a big write (mid upload, most often): the next sync that
/// succeeds leaves the shipper's work directory empty.
pub fn workdir_leak(w: &mut World, act: &Action, rng: &mut Rng) -> Result<String, Finding> {
    let Some(d) = w.pick(".img", act.a) else {
        return Ok("(no disk)".into());
    };
    let p = w.path(&d);
    let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0).max(MIB);
    let len = (MIB + rng.below(2 * MIB)).min(size);
    let off = rng.below(size - len + 1);
    OpenOptions::new()
        .write(true)
        .open(&p)
        .and_then(|f| f.write_all_at(&rng.bytes(len as usize), off))
        .map_err(|e| format!("write {d}: {e}"))?;
    let ms = 100 + act.b % 1200;
    super::ops::sync_now(w, SyncHow::KillAfter(ms))?;
    let out = w.run_sync(SyncHow::Plain);
    let reference = super::oracle::Reference::Exact(w.snapshot()?);
    w.after_sync(&out, &reference)?;
    if out.success {
        let work = w.state.join("work").join(GROUP);
        let left: Vec<String> = std::fs::read_dir(&work)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if !left.is_empty() {
            return Err(format!(
                "after a sync killed at {ms} ms and a sync that succeeded, the work dir still holds {left:?}"
            ));
        }
    }
    Ok(format!(
        "write {d} @{off}+{len}, sync killed after {ms} ms, next sync {}",
        if out.success {
            "ok, work dir empty"
        } else {
            "failed"
        }
    ))
}

/// A running `hrl-shipper run` for the chaos directory, killed (SIGTERM, then -9) on drop.
pub struct Service(pub KillOnDrop);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0 .0.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0 .0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

//! What the logs may take on the host, checked in every state of a directory — while a cycle
//! runs, while it waits to retry, while paused, while Critical — not only after a failed
//! cycle: a store that accepts reads but not writes (or flaps) made each retry switch the
//! disk back to log mode, and the logs then grew unchecked for a whole back-off delay.
//!
//! - The 50% rule: a disk whose unshipped logs exceed half its size goes to bitmap-only
//!   tracking and resync required; its logs are released. The tracker marks every range of
//!   the released logs before deleting them, so its bitmap alone covers them.
//! - The unshipped-bytes figure of every disk is refreshed at each check.
//! - Free space: below [`MIN_FREE_PERCENT`] of the image directory's filesystem the
//!   directory is in Warning, before a VM gets ENOSPC.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use hrl::control::DiskMode;
use tracing::{debug, warn};

use crate::replicate::tracker::TrackerClient;
use crate::service::status::{DirStatus, DiskState, Health};

/// How often the budget is checked, whatever the directory is doing.
pub const TICK: Duration = Duration::from_secs(1);

/// Free space (percent of the filesystem holding the images) below which the directory is in
/// Warning.
pub const MIN_FREE_PERCENT: u64 = 10;

/// A disk in log mode whose unshipped logs exceed half its size.
fn over_budget(d: &hrl::control::DiskStatus) -> bool {
    d.mode == DiskMode::Log
        && d.disk_size > 0
        && crate::service::status::unshipped_bytes(d) > d.disk_size / 2
}

/// Resolves once a disk of `dir` is over its log budget (checked every [`TICK`]); never while
/// the tracker cannot be reached. The service runs it beside a cycle and cancels the cycle
/// when it resolves, so that [`enforce`] can release the logs.
pub async fn exceeded(dir: &Path) {
    loop {
        tokio::time::sleep(TICK).await;
        let Ok(mut t) = TrackerClient::connect(dir).await else {
            continue;
        };
        if let Ok(st) = t.status().await {
            if st.disks.iter().any(over_budget) {
                return;
            }
        }
    }
}

/// Free-space warning for the filesystem of `dir`, if it is below the threshold.
pub fn space_warning(dir: &Path) -> Option<String> {
    let (total, free) = fs_space(dir)?;
    if total == 0 || free.saturating_mul(100) >= total.saturating_mul(MIN_FREE_PERCENT) {
        return None;
    }
    Some(format!(
        "only {} of {} free on the filesystem of {} (below {MIN_FREE_PERCENT}%): free some before the VMs get ENOSPC (the logs waiting to ship are the .hrl files beside the disks)",
        crate::service::status::human_bytes(free),
        crate::service::status::human_bytes(total),
        dir.display(),
    ))
}

/// (total, available to unprivileged writers) bytes of the filesystem of `dir`.
fn fs_space(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the struct we own; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

/// Records the free-space warning in `s` (raising the directory to Warning) or clears it.
pub fn apply_space_warning(s: &mut DirStatus, dir: &Path) {
    s.space_warning = space_warning(dir);
    if s.space_warning.is_some() {
        s.health = s.health.max(Health::Warning);
    }
}

/// One check: refreshes the unshipped figures and the free-space warning, and applies the
/// 50% rule. Skipped (Ok(false)) while another process runs a cycle of the directory (an
/// operator's `sync`: releasing logs under it would break its point). Returns whether the
/// status changed.
pub async fn enforce(dir: &Path, state_dir: &Path, status: &Mutex<DirStatus>) -> Result<bool> {
    let Some(_lock) = crate::service::lock::CycleLock::try_acquire(state_dir, dir)? else {
        debug!(dir = %dir.display(), "a cycle is running elsewhere; the log budget is checked later");
        return Ok(false);
    };
    let before = status.lock().map(|s| s.clone()).ok();
    let mut t = TrackerClient::connect(dir).await?;
    let st = t.status().await?;
    let pending = t.pending().await?;
    for d in &st.disks {
        // The tracker's own id for the disk; a disk with no sealed log yet has one too, so
        // its resync job is dropped below like any other (older trackers: from its logs).
        let id = if d.disk_id.is_empty() {
            pending
                .iter()
                .find(|l| l.disk == d.disk)
                .map(|l| l.disk_id.clone())
                .unwrap_or_default()
        } else {
            d.disk_id.clone()
        };
        if let Ok(mut s) = status.lock() {
            let entry = s.disk_mut(&d.disk, &id);
            entry.unshipped_bytes = crate::service::status::unshipped_bytes(d);
            entry.disk_size = d.disk_size;
        }
        if over_budget(d) {
            release(&mut t, dir, state_dir, status, d, &id, &pending).await?;
        }
    }
    if let Ok(mut s) = status.lock() {
        apply_space_warning(&mut s, dir);
        return Ok(before.as_ref() != Some(&*s));
    }
    Ok(false)
}

/// The 50% rule for one disk: bitmap tracking, resync required, its logs released (the
/// tracker marks their ranges first).
async fn release(
    t: &mut TrackerClient,
    dir: &Path,
    state_dir: &Path,
    status: &Mutex<DirStatus>,
    d: &hrl::control::DiskStatus,
    id: &str,
    pending: &[hrl::control::SealedLog],
) -> Result<()> {
    let unshipped = crate::service::status::unshipped_bytes(d);
    warn!(disk = %d.disk, unshipped, size = d.disk_size, "unshipped logs exceed 50% of the disk: switching to bitmap tracking, resync required");
    t.set_mode(&d.disk, DiskMode::Bitmap).await?;
    // The tracker marks the released logs' ranges itself; the shipper's copy of them is a
    // cache that saves reading the bitmap's coarser extents when it is at hand.
    let logs: Vec<&hrl::control::SealedLog> = pending.iter().filter(|l| l.disk == d.disk).collect();
    let logs = crate::replicate::local::logs(t, dir, &logs).await?;
    let dropped =
        tokio::task::spawn_blocking(move || crate::replicate::resync::source_extents(&logs))
            .await
            .map_err(|e| anyhow::anyhow!("log reader failed: {e}"))?;
    if let Ok(mut s) = status.lock() {
        let entry = s.disk_mut(&d.disk, id);
        match dropped {
            Ok(Some(e)) => entry.resync_extents.extend(e),
            _ => entry.resync_full = true,
        }
        entry.resync_extents = merge_extents(std::mem::take(&mut entry.resync_extents));
        // An interrupted resync counted on the logs after its seal: plan it again (the
        // marks, unclean extents and the ranges kept here still cover it all).
        if !id.is_empty() {
            crate::replicate::resync::drop_job(state_dir, id);
        }
        entry.resync_reason = Some(
            "unshipped logs exceeded 50% of the disk size (logs dropped, bitmap tracking)".into(),
        );
    }
    if let Some(max) = pending
        .iter()
        .filter(|l| l.disk == d.disk)
        .map(|l| l.seq)
        .max()
    {
        t.ack(&d.disk, (!id.is_empty()).then_some(id), max).await?;
    }
    if let Ok(mut s) = status.lock() {
        // Released logs: the directory waits for a resync, whatever its last cycle did.
        s.health = s.health.max(Health::Warning);
        let entry = s.disk_mut(&d.disk, id);
        entry.state = DiskState::ResyncRequired;
        entry.health = Health::Critical;
        entry.unshipped_bytes = 0;
        entry.last_error = Some(
            "unshipped logs exceeded 50% of the disk size; a resync runs when the store is reachable"
                .into(),
        );
    }
    Ok(())
}

/// Sorts and merges byte ranges (keeps the state file small).
fn merge_extents(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.retain(|e| e.1 > 0);
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (off, len) in v {
        match out.last_mut() {
            Some(last) if off <= last.0 + last.1 => {
                last.1 = last.1.max(off + len - last.0);
            }
            _ => out.push((off, len)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn merge_extents_joins_overlaps_and_neighbours() {
        assert_eq!(
            super::merge_extents(vec![(10, 5), (0, 10), (30, 1), (12, 2), (40, 0)]),
            vec![(0, 15), (30, 1)]
        );
    }

    #[test]
    fn space_warning_reads_the_filesystem() {
        // The root filesystem of a test machine is not that full; a real check, not a mock.
        let w = super::space_warning(std::path::Path::new("/"));
        let (total, free) = super::fs_space(std::path::Path::new("/")).unwrap();
        assert!(total > 0);
        assert_eq!(w.is_some(), free * 100 < total * super::MIN_FREE_PERCENT);
    }
}

//! The background service: per protected directory, a cycle every interval; recoverable
//! errors back off on schedule (Warning), non-recoverable ones stop the directory in
//! Critical until an operator acts (a successful `hrl-shipper sync` clears it). While the
//! store is unreachable, a disk whose unshipped logs pass half its size is switched to
//! bitmap-only tracking (resync required), so logs stop eating the host's disk.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use hrl::control::DiskMode;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::cycle::{run_cycle, Protected};
use crate::retry::{classify, delay, ErrorClass};
use crate::status::{self, DirStatus, DiskState, Health};
use crate::tracker_client::TrackerClient;

/// One directory's schedule.
pub struct DirJob {
    pub protected: Protected,
    pub interval: Duration,
    pub retry_unit: Duration,
}

fn save(p: &Protected, status: &Mutex<DirStatus>) {
    if let Ok(mut s) = status.lock() {
        s.updated_ns = hrl::now_ns();
        if let Err(e) = status::save(&p.state_dir, &s) {
            warn!("cannot save status: {e:#}");
        }
    }
}

/// Sleeps `d` or until shutdown; true when shutting down.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.changed() => true,
    }
}

/// Runs cycles for one directory until `stop` turns true.
pub async fn run_dir(job: DirJob, mut stop: watch::Receiver<bool>) {
    let p = &job.protected;
    let initial = status::load(&p.state_dir, &p.dir)
        .ok()
        .flatten()
        .filter(|s| s.group == p.store.group);
    let status = Mutex::new(
        initial.unwrap_or_else(|| DirStatus::new(&p.dir, &p.store.group, &p.store.target.url)),
    );
    if let Ok(mut s) = status.lock() {
        s.target = p.store.target.url.clone();
        s.interval_ns = Some(job.interval.as_nanos() as u64);
        // A restart is the operator acting: try again.
        if s.health == Health::Critical {
            s.health = Health::Warning;
        }
        s.next_retry_ns = None;
    }
    save(p, &status);
    info!(dir = %p.dir.display(), group = %p.store.group, interval = ?job.interval, "protecting directory");
    loop {
        let paused = status::is_paused(&p.state_dir, &p.dir);
        if let Ok(mut s) = status.lock() {
            if s.paused != paused {
                info!(dir = %p.dir.display(), paused, "replication pause changed");
            }
            s.paused = paused;
        }
        if paused {
            save(p, &status);
            if sleep_or_stop(job.interval, &mut stop).await {
                break;
            }
            continue;
        }
        let result = tokio::select! {
            r = run_cycle(p, &status) => Some(r),
            _ = stop.changed() => None,
        };
        let wait = match result {
            None => break,
            Some(Ok(report)) => {
                info!(dir = %p.dir.display(), point = report.point_id, log_bytes = report.log_bytes_uploaded, "cycle done");
                if let Ok(mut s) = status.lock() {
                    s.health = Health::Normal;
                    s.last_error = None;
                    s.attempt = 0;
                    s.next_retry_ns = None;
                }
                save(p, &status);
                job.interval
            }
            Some(Err(e)) if e.downcast_ref::<crate::cycle::ResyncDeferred>().is_some() => {
                info!(dir = %p.dir.display(), "{e:#}");
                if let Ok(mut s) = status.lock() {
                    s.health = s.health.max(Health::Warning);
                    s.last_error = Some(format!("{e:#}"));
                    s.attempt = 0;
                    s.next_retry_ns = Some(hrl::now_ns() + job.interval.as_nanos() as u64);
                }
                // No point is made meanwhile, so the other disks' logs pile up too.
                if let Err(e) = enforce_log_budget(&p.dir, &p.state_dir, &status).await {
                    warn!(dir = %p.dir.display(), "cannot check the log budget: {e:#}");
                }
                save(p, &status);
                job.interval
            }
            Some(Err(e)) => match classify(&e) {
                ErrorClass::Recoverable => {
                    let attempt = status.lock().map(|s| s.attempt + 1).unwrap_or(1);
                    let d = delay(attempt, job.retry_unit);
                    warn!(dir = %p.dir.display(), attempt, retry_in = ?d, "cycle failed, will retry: {e:#}");
                    if let Ok(mut s) = status.lock() {
                        s.health = s.health.max(Health::Warning);
                        s.last_error = Some(format!("{e:#}"));
                        s.attempt = attempt;
                        s.next_retry_ns = Some(hrl::now_ns() + d.as_nanos() as u64);
                    }
                    save(p, &status);
                    if let Err(e) = enforce_log_budget(&p.dir, &p.state_dir, &status).await {
                        warn!(dir = %p.dir.display(), "cannot check the log budget: {e:#}");
                    }
                    save(p, &status);
                    d
                }
                ErrorClass::Fatal => {
                    let e = crate::retry::with_hint(e);
                    error!(dir = %p.dir.display(), "replication stopped (Critical): {e:#}");
                    if let Ok(mut s) = status.lock() {
                        s.health = Health::Critical;
                        s.last_error = Some(format!("{e:#}"));
                        s.next_retry_ns = None;
                    }
                    save(p, &status);
                    // Wait for the operator: a successful `sync` rewrites the state file.
                    loop {
                        if sleep_or_stop(job.interval, &mut stop).await {
                            return;
                        }
                        if let Ok(Some(s)) = status::load(&p.state_dir, &p.dir) {
                            if s.health != Health::Critical {
                                info!(dir = %p.dir.display(), "operator cleared the Critical state; resuming");
                                if let Ok(mut cur) = status.lock() {
                                    *cur = s;
                                }
                                break;
                            }
                        }
                    }
                    Duration::ZERO
                }
            },
        };
        if sleep_or_stop(wait, &mut stop).await {
            break;
        }
    }
    info!(dir = %p.dir.display(), "stopped");
}

/// The 50% rule: a disk whose unshipped logs exceed half its size goes to bitmap-only
/// tracking and resync required; its logs are released (the resync copies the whole disk,
/// and the bitmap keeps every change marked meanwhile).
pub async fn enforce_log_budget(
    dir: &Path,
    state_dir: &Path,
    status: &Mutex<DirStatus>,
) -> Result<()> {
    let mut t = TrackerClient::connect(dir).await?;
    let st = t.status().await?;
    let pending = t.pending().await?;
    for d in &st.disks {
        let unshipped = crate::status::unshipped_bytes(d);
        let id = pending
            .iter()
            .find(|l| l.disk == d.disk)
            .map(|l| l.disk_id.clone())
            .unwrap_or_default();
        if let Ok(mut s) = status.lock() {
            let entry = s.disk_mut(&d.disk, &id);
            entry.unshipped_bytes = unshipped;
            entry.disk_size = d.disk_size;
        }
        if d.mode == DiskMode::Log && d.disk_size > 0 && unshipped > d.disk_size / 2 {
            warn!(disk = %d.disk, unshipped, size = d.disk_size, "unshipped logs exceed 50% of the disk: switching to bitmap tracking, resync required");
            t.set_mode(&d.disk, DiskMode::Bitmap).await?;
            // The logs about to be released may hold changes whose marks are already
            // cleared: keep their extents for the resync (or compare every block).
            let logs: Vec<std::path::PathBuf> = pending
                .iter()
                .filter(|l| l.disk == d.disk)
                .map(|l| dir.join(&l.log))
                .collect();
            let dropped = tokio::task::spawn_blocking(move || crate::resync::log_extents(&logs))
                .await
                .map_err(|e| anyhow::anyhow!("log reader failed: {e}"))?;
            if let Ok(mut s) = status.lock() {
                let entry = s.disk_mut(&d.disk, &id);
                match dropped {
                    Ok(Some(e)) => entry.resync_extents.extend(merge_extents(e)),
                    _ => entry.resync_full = true,
                }
                entry.resync_extents = merge_extents(std::mem::take(&mut entry.resync_extents));
                // An interrupted resync counted on the logs after its seal: plan it again
                // (the marks, unclean extents and the ranges kept here still cover it all).
                if !id.is_empty() {
                    crate::resync::drop_job(state_dir, &id);
                }
                entry.resync_reason = Some(
                    "unshipped logs exceeded 50% of the disk size (logs dropped, bitmap tracking)"
                        .into(),
                );
            }
            if let Some(max) = pending
                .iter()
                .filter(|l| l.disk == d.disk)
                .map(|l| l.seq)
                .max()
            {
                t.ack(&d.disk, (!id.is_empty()).then_some(id.as_str()), max)
                    .await?;
            }
            if let Ok(mut s) = status.lock() {
                let entry = s.disk_mut(&d.disk, &id);
                entry.state = DiskState::ResyncRequired;
                entry.health = Health::Critical;
                entry.last_error = Some("unshipped logs exceeded 50% of the disk size; a resync runs when the store is reachable".into());
            }
        }
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
}

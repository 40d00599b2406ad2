//! The background service: per protected directory, a cycle every interval; recoverable
//! errors back off on schedule (Warning), non-recoverable ones stop the directory in
//! Critical until an operator acts (a successful `hrl-shipper sync` clears it). While the
//! store is unreachable, a disk whose unshipped logs pass half its size is switched to
//! bitmap-only tracking (resync required), so logs stop eating the host's disk — checked
//! every second whatever the directory is doing (budget.rs). A damaged state file stops the
//! directory in Critical (the 50% rule still runs) until `hrl-shipper sync --reconcile`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::replicate::cycle::{run_cycle, Protected};
use crate::service::retry::{classify, delay, ErrorClass};
use crate::service::status::{self, DirStatus, Health};

/// One directory's schedule.
pub struct DirJob {
    pub protected: Protected,
    pub interval: Duration,
    pub retry_unit: Duration,
    /// Prunes of the group after cycles (`None`: never).
    pub retention: Option<crate::service::retention::Retention>,
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

/// Sleeps `d` (true: shutting down), checking the log budget every tick meanwhile; the
/// status is saved when a check changed it and `persist` says so.
async fn wait_watching(
    d: Duration,
    stop: &mut watch::Receiver<bool>,
    p: &Protected,
    status: &Mutex<DirStatus>,
    persist: bool,
) -> bool {
    let until = tokio::time::Instant::now() + d;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        if sleep_or_stop(left.min(crate::replicate::budget::TICK), stop).await {
            return true;
        }
        match crate::replicate::budget::enforce(&p.dir, &p.state_dir, status).await {
            Ok(true) if persist => save(p, status),
            Ok(_) => {}
            Err(e) => debug!(dir = %p.dir.display(), "cannot check the log budget: {e:#}"),
        }
    }
}

/// The directory's state at start: the saved one, or a new one; a damaged file is an error
/// (never replaced in silence).
fn initial_status(p: &Protected) -> anyhow::Result<DirStatus> {
    let saved = status::load(&p.state_dir, &p.dir)?.filter(|s| s.group == p.store.group);
    Ok(saved.unwrap_or_else(|| DirStatus::new(&p.dir, &p.store.group, &p.store.target.url)))
}

/// Waits (Critical) until an operator acts: the state file loads and is no longer Critical
/// (a successful `sync` rewrote it). The 50% rule keeps running meanwhile; the figures are
/// saved only while the file is still this Critical state (`persist`), never over an
/// operator's newer one or over a damaged file. Returns true when shutting down.
async fn wait_for_operator(
    job: &DirJob,
    status: &Mutex<DirStatus>,
    stop: &mut watch::Receiver<bool>,
    persist: bool,
) -> bool {
    let p = &job.protected;
    loop {
        if wait_watching(job.interval, stop, p, status, false).await {
            return true;
        }
        match status::load(&p.state_dir, &p.dir) {
            Ok(Some(s)) if s.health != Health::Critical => {
                info!(dir = %p.dir.display(), "operator cleared the Critical state; resuming");
                if let Ok(mut cur) = status.lock() {
                    *cur = s;
                }
                return false;
            }
            // The operator removed the state file: start from a fresh one (the next cycle
            // reconciles it with the store and the tracker).
            Ok(None) => {
                info!(dir = %p.dir.display(), "the state file was removed; starting afresh");
                if let Ok(mut cur) = status.lock() {
                    *cur = DirStatus::new(&p.dir, &p.store.group, &p.store.target.url);
                }
                return false;
            }
            Ok(Some(_)) if persist => save(p, status),
            _ => {}
        }
    }
}

/// Runs cycles for one directory until `stop` turns true.
pub async fn run_dir(job: DirJob, mut stop: watch::Receiver<bool>) {
    let p = &job.protected;
    let status = match initial_status(p) {
        Ok(s) => Mutex::new(s),
        Err(e) => {
            error!(dir = %p.dir.display(), "replication stopped (Critical): {e:#}");
            let mut s = DirStatus::new(&p.dir, &p.store.group, &p.store.target.url);
            s.health = Health::Critical;
            s.last_error = Some(format!("{e:#}"));
            let status = Mutex::new(s);
            if wait_for_operator(&job, &status, &mut stop, false).await {
                return;
            }
            status
        }
    };
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
            if wait_watching(job.interval, &mut stop, p, &status, true).await {
                break;
            }
            continue;
        }
        // A cycle that runs while the logs pass their budget is cancelled (as a crash would
        // stop it), so that the 50% rule can release them.
        let started = std::time::Instant::now();
        let result = tokio::select! {
            r = run_cycle(p, &status) => Some(r),
            _ = crate::replicate::budget::exceeded(&p.dir) => Some(Err(anyhow::anyhow!(
                "cycle stopped: unshipped logs passed 50% of a disk while it ran"
            ))),
            _ = stop.changed() => None,
        };
        if let Some(r) = &result {
            crate::service::metrics::cycle_done(p, started.elapsed(), r).await;
        }
        let wait = match result {
            None => break,
            Some(r) => match after_cycle(&job, &status, &mut stop, r).await {
                Some(wait) => wait,
                None => return,
            },
        };
        if wait_watching(wait, &mut stop, p, &status, true).await {
            break;
        }
    }
    info!(dir = %p.dir.display(), "stopped");
}

/// Health, status and back-off after a cycle: how long to wait before the next one (`None`:
/// shutting down while waiting for an operator).
async fn after_cycle(
    job: &DirJob,
    status: &Mutex<DirStatus>,
    stop: &mut watch::Receiver<bool>,
    result: anyhow::Result<crate::replicate::cycle::CycleReport>,
) -> Option<Duration> {
    let p = &job.protected;
    let wait = match result {
        Ok(report) => {
            info!(dir = %p.dir.display(), point = report.point_id, log_bytes = report.log_bytes_uploaded, "cycle done");
            if let Ok(mut s) = status.lock() {
                s.cycle_succeeded();
                crate::replicate::budget::apply_space_warning(&mut s, &p.dir);
            }
            save(p, status);
            if let Some(r) = &job.retention {
                crate::service::retention::after_cycle(p, r, status).await;
                save(p, status);
            }
            job.interval
        }
        Err(e)
            if e.downcast_ref::<crate::replicate::cycle::ResyncDeferred>()
                .is_some() =>
        {
            info!(dir = %p.dir.display(), "{e:#}");
            if let Ok(mut s) = status.lock() {
                s.cycle_failed(false, &e);
                s.attempt = 0;
                s.next_retry_ns = Some(hrl::now_ns() + job.interval.as_nanos() as u64);
            }
            // No point is made meanwhile, so the other disks' logs pile up too.
            check_budget(p, status).await;
            save(p, status);
            job.interval
        }
        Err(e) => match classify(&e) {
            ErrorClass::Recoverable => {
                let attempt = status.lock().map(|s| s.attempt + 1).unwrap_or(1);
                let d = delay(attempt, job.retry_unit);
                warn!(dir = %p.dir.display(), attempt, retry_in = ?d, "cycle failed, will retry: {e:#}");
                if let Ok(mut s) = status.lock() {
                    s.cycle_failed(false, &e);
                    s.attempt = attempt;
                    s.next_retry_ns = Some(hrl::now_ns() + d.as_nanos() as u64);
                }
                save(p, status);
                check_budget(p, status).await;
                save(p, status);
                d
            }
            ErrorClass::Fatal => {
                let e = crate::service::retry::with_hint(e);
                error!(dir = %p.dir.display(), "replication stopped (Critical): {e:#}");
                if let Ok(mut s) = status.lock() {
                    s.cycle_failed(true, &e);
                    s.next_retry_ns = None;
                }
                save(p, status);
                // Wait for the operator: a successful `sync` rewrites the state file.
                if wait_for_operator(job, status, stop, true).await {
                    return None;
                }
                Duration::ZERO
            }
        },
    };
    Some(wait)
}

/// One budget check right after a failed cycle.
async fn check_budget(p: &Protected, status: &Mutex<DirStatus>) {
    if let Err(e) = crate::replicate::budget::enforce(&p.dir, &p.state_dir, status).await {
        warn!(dir = %p.dir.display(), "cannot check the log budget: {e:#}");
    }
}

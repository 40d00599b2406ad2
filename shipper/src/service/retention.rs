//! Retention in the service: after a successful cycle, a prune of the directory's group
//! at most once per `prune_every` (default 1 h), its outcome kept in the status. A failed
//! prune is logged and shown; it never stops replication.

use std::sync::Mutex;
use std::time::Duration;

use tracing::{info, warn};

use crate::replicate::cycle::Protected;
use crate::retain::policy::Policy;
use crate::retain::prune::{prune, PruneOptions, DEFAULT_GRACE};
use crate::service::status::{DirStatus, RetentionStatus};

/// Default time between two prunes of a group by the service.
pub const DEFAULT_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A directory's retention.
#[derive(Debug, Clone)]
pub struct Retention {
    pub policy: Policy,
    pub every: Duration,
    pub grace: Duration,
    /// When the service started (the first prune is `every` after it, unless the status
    /// says an earlier one ran).
    pub started_ns: u64,
}

impl Retention {
    pub fn new(policy: Policy, every: Duration) -> Retention {
        Retention {
            policy,
            every,
            grace: DEFAULT_GRACE,
            started_ns: hrl::now_ns(),
        }
    }
}

/// Whether a prune is due at `now`: `every` after the last one (or after the start).
pub fn due(last_ns: Option<u64>, r: &Retention, now: u64) -> bool {
    let since = last_ns.unwrap_or(r.started_ns);
    now.saturating_sub(since) >= r.every.as_nanos() as u64
}

/// Prunes the group of `p` if due, and records the outcome in `status`.
pub async fn after_cycle(p: &Protected, r: &Retention, status: &Mutex<DirStatus>) {
    let last = status
        .lock()
        .ok()
        .and_then(|s| s.retention.as_ref().map(|x| x.pruned_ns));
    if !due(last, r, hrl::now_ns()) {
        return;
    }
    run(p, r, status).await;
}

/// Prunes the group of `p` now and records the outcome in `status`.
pub async fn run(p: &Protected, r: &Retention, status: &Mutex<DirStatus>) {
    let opts = PruneOptions {
        policy: r.policy,
        grace: r.grace,
        dry_run: false,
        state_dir: p.state_dir.clone(),
    };
    let outcome = prune(&p.store, &opts).await;
    let mut rs = RetentionStatus {
        pruned_ns: hrl::now_ns(),
        ..RetentionStatus::default()
    };
    match outcome {
        Ok(rep) => {
            info!(dir = %p.dir.display(), kept = rep.kept.len(), removed = rep.removed.len(), "pruned");
            rs.retained_points = rep.kept.len() as u64;
            rs.store_bytes = rep.sweep.store_bytes;
            rs.awaiting_collection_bytes = rep.sweep.awaiting_bytes;
        }
        Err(e) => {
            warn!(dir = %p.dir.display(), "prune failed (retried after the next cycle): {e:#}");
            rs.last_error = Some(format!("{e:#}"));
            // Retried after the next cycle, not a whole `every` later.
            rs.pruned_ns = 0;
        }
    }
    if let Ok(mut s) = status.lock() {
        s.retention = Some(rs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prune_is_due_every_interval_from_the_start_or_the_last() {
        let mut r = Retention::new(Policy::default(), Duration::from_secs(10));
        r.started_ns = 100_000_000_000;
        assert!(!due(None, &r, 105_000_000_000));
        assert!(due(None, &r, 110_000_000_000));
        assert!(!due(Some(200_000_000_000), &r, 205_000_000_000));
        assert!(due(Some(0), &r, 50_000_000_000));
    }
}

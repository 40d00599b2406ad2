//! One prune of a group: select the points to keep, merge the logs up to the oldest kept
//! point into new bases, delete the manifests of the others, then collect what no kept
//! point needs. Each step leaves every kept point restorable if the process dies there
//! (merge writes new objects before rewriting a manifest; expiry deletes manifests only;
//! the sweep deletes only what the kept points do not need), and the next run finishes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use hrl::store::PointManifest;
use serde::Serialize;
use tracing::info;

use super::mark::Marked;
use super::merge::{merge, MergeReport};
use super::policy::{keep, PointInfo, Policy};
use super::sweep::{sweep, SweepReport};
use crate::store::{manifests, GroupStore};

/// Default grace period: an object unneeded for less is never collected (as Proxmox
/// Backup's 24 h; a cycle or a reader must finish within it).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// How to prune.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub policy: Policy,
    pub grace: Duration,
    /// Say what would be done; change nothing.
    pub dry_run: bool,
    /// Scratch space for merges, and where test stop points leave their marker.
    pub state_dir: PathBuf,
}

/// What a prune did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub kept: Vec<u64>,
    pub removed: Vec<u64>,
    /// Points kept only because a reader holds a lease on them.
    pub leased: Vec<u64>,
    pub merge: MergeReport,
    pub sweep: SweepReport,
}

/// Prunes `store` by `opts`.
pub async fn prune(store: &GroupStore, opts: &PruneOptions) -> Result<PruneReport> {
    let mut all = Vec::new();
    for id in manifests::list_ids(store).await? {
        all.push(manifests::get(store, id).await?);
    }
    let now = hrl::now_ns();
    let leased = live_leases(store, now).await?;
    let infos: Vec<PointInfo> = all
        .iter()
        .map(|m| PointInfo {
            id: m.id,
            time_ns: m.time_ns,
            app: m.is_app_consistent(),
        })
        .collect();
    let mut by_policy = keep(&infos, now, &opts.policy);
    // The chain's latest point (a fenced point of a former owner may have a higher id).
    if let Some(latest) = manifests::latest(store).await? {
        by_policy.insert(latest.id);
    }
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        ..PruneReport::default()
    };
    let (mut kept, expired): (Vec<PointManifest>, Vec<PointManifest>) = all
        .into_iter()
        .partition(|m| by_policy.contains(&m.id) || leased.contains(&m.id));
    report.kept = kept.iter().map(|m| m.id).collect();
    report.removed = expired.iter().map(|m| m.id).collect();
    report.leased = kept
        .iter()
        .map(|m| m.id)
        .filter(|id| !by_policy.contains(id))
        .collect();
    if !opts.dry_run {
        // Merged from the oldest point the policy keeps; a point kept only by a lease is
        // left exactly as its reader found it.
        // A fenced point (committed by a former owner after a takeover) is left as it is
        // too: after the takeover point its logs are another history of the same sequences.
        let records = crate::replicate::owner::records(store).await?;
        let mut untouched = leased.clone();
        untouched.extend(
            kept.iter()
                .filter(|m| hrl::owner::is_fenced(m.id, m.epoch, &records))
                .map(|m| m.id),
        );
        let from = kept.iter().position(|m| by_policy.contains(&m.id));
        if let Some(from) = from {
            let work = opts.state_dir.join("retain-work");
            report.merge =
                merge(store, &mut kept[from..], &untouched, &work, &opts.state_dir).await?;
            let _ = std::fs::remove_dir_all(&work);
        }
        for m in &expired {
            manifests::delete(store, m.id).await?;
        }
    }
    let mut marked = Marked::default();
    for m in &kept {
        marked.add(store, m).await?;
    }
    report.sweep = sweep(
        store,
        &mut marked,
        opts.grace,
        opts.dry_run,
        &opts.state_dir,
    )
    .await?;
    info!(
        kept = report.kept.len(),
        removed = report.removed.len(),
        "prune done"
    );
    Ok(report)
}

/// Points named by an unexpired lease.
async fn live_leases(store: &GroupStore, now: u64) -> Result<BTreeSet<u64>> {
    Ok(crate::store::leases::list(store)
        .await?
        .into_iter()
        .filter(|(_, l)| l.expires_ns >= now)
        .map(|(_, l)| l.point)
        .collect())
}

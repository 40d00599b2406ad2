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
use super::merge::{self, merge, MergeReport};
use super::policy::{keep, PointInfo, Policy};
use super::sweep::{sweep, Found, SweepReport};
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
    /// A dry run: what the merge would do (`null` otherwise; `merge` says what it did).
    pub merge_plan: Option<MergePlan>,
    pub sweep: SweepReport,
}

/// What a merge would do (a dry run, which builds nothing): the disks it would give new
/// bases, the points it would rewrite, and the objects (indexes and logs; bytes as stored)
/// no kept point would need afterwards, which collection then takes once the grace period
/// has passed. The chunks of the blocks the merged logs rewrote are not counted (knowing
/// them takes reading the logs); the merge stores as many new ones.
#[derive(Debug, Default, Clone, Serialize)]
pub struct MergePlan {
    pub disks: u64,
    pub points_rewritten: u64,
    pub frees_objects: u64,
    pub frees_bytes: u64,
}

/// Prunes `store` by `opts`.
pub async fn prune(store: &GroupStore, opts: &PruneOptions) -> Result<PruneReport> {
    let mut all = Vec::new();
    for id in manifests::list_ids(store).await? {
        all.push(manifests::get(store, id).await?);
    }
    let now = hrl::now_ns();
    let leased = live_leases(store, now).await?;
    // Test stop point: a reader may take a lease from here on, unseen by this prune's policy.
    crate::replicate::stop::pause(&opts.state_dir, "prune-leases-read");
    let before = all.clone();
    let by_policy = kept_by_policy(store, &all, now, opts).await?;
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
    let mut after_merge = None;
    if opts.dry_run {
        let (plan, after) = plan_merge(store, &kept, &by_policy, &leased).await?;
        report.merge_plan = Some(plan);
        after_merge = Some(after);
    } else {
        report.merge = merge_kept(store, &mut kept, &by_policy, &leased, opts).await?;
        for m in &expired {
            manifests::delete(store, m.id).await?;
        }
    }
    let mut marked = Marked::default();
    for m in &kept {
        marked.add(store, m).await?;
    }
    let found = Found {
        before: &before,
        leased: &leased,
    };
    let (sweep_report, freed) = sweep(
        store,
        &mut marked,
        &found,
        opts.grace,
        opts.dry_run,
        after_merge.as_ref(),
        &opts.state_dir,
    )
    .await?;
    report.sweep = sweep_report;
    if let Some(p) = report.merge_plan.as_mut() {
        p.frees_objects = freed.objects;
        p.frees_bytes = freed.bytes;
    }
    info!(
        kept = report.kept.len(),
        removed = report.removed.len(),
        "prune done"
    );
    Ok(report)
}

/// The points `opts.policy` keeps of `all` at `now`, and always the chain's latest point (a
/// fenced point of a former owner may have a higher id).
async fn kept_by_policy(
    store: &GroupStore,
    all: &[PointManifest],
    now: u64,
    opts: &PruneOptions,
) -> Result<BTreeSet<u64>> {
    let infos: Vec<PointInfo> = all
        .iter()
        .map(|m| PointInfo {
            id: m.id,
            time_ns: m.time_ns,
            app: m.is_app_consistent(),
        })
        .collect();
    let mut by_policy = keep(&infos, now, &opts.policy);
    if let Some(latest) = manifests::latest(store).await? {
        by_policy.insert(latest.id);
    }
    Ok(by_policy)
}

/// A dry run's merge: what it would rewrite, and the objects the kept points would refer to
/// after it (so the sweep can say what the merge would free).
async fn plan_merge(
    store: &GroupStore,
    kept: &[PointManifest],
    by_policy: &BTreeSet<u64>,
    leased: &BTreeSet<u64>,
) -> Result<(MergePlan, Marked)> {
    let plan = merge::plan(
        kept_from(kept, by_policy),
        &untouched(store, kept, leased).await?,
    );
    let mut after = Marked::default();
    for m in kept
        .iter()
        .filter(|m| !plan.kept.iter().any(|p| p.id == m.id))
    {
        after.add(store, m).await?;
    }
    for m in &plan.kept {
        after.add_planned(store, m, &plan.replaces).await?;
    }
    let plan = MergePlan {
        disks: plan.disks,
        points_rewritten: plan.points_rewritten,
        ..MergePlan::default()
    };
    Ok((plan, after))
}

/// Merges the kept points from the oldest one the policy keeps. A point kept only by a
/// lease is left exactly as its reader found it; a fenced point (committed by a former
/// owner after a takeover) is left as it is too: after the takeover point its logs are
/// another history of the same sequences.
async fn merge_kept(
    store: &GroupStore,
    kept: &mut [PointManifest],
    by_policy: &BTreeSet<u64>,
    leased: &BTreeSet<u64>,
    opts: &PruneOptions,
) -> Result<MergeReport> {
    let untouched = untouched(store, kept, leased).await?;
    let Some(from) = kept.iter().position(|m| by_policy.contains(&m.id)) else {
        return Ok(MergeReport::default());
    };
    let work = opts.state_dir.join("retain-work");
    let report = merge(store, &mut kept[from..], &untouched, &work, &opts.state_dir).await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(report)
}

/// The kept points from the oldest one the policy keeps (a merge starts there).
fn kept_from<'a>(kept: &'a [PointManifest], by_policy: &BTreeSet<u64>) -> &'a [PointManifest] {
    let from = kept.iter().position(|m| by_policy.contains(&m.id));
    from.map_or(&[], |f| &kept[f..])
}

/// The kept points a merge leaves as they are: those leased by a reader, and fenced ones
/// (committed by a former owner after a takeover: after the takeover point their logs are
/// another history of the same sequences).
async fn untouched(
    store: &GroupStore,
    kept: &[PointManifest],
    leased: &BTreeSet<u64>,
) -> Result<BTreeSet<u64>> {
    let records = crate::replicate::owner::records(store).await?;
    let mut out = leased.clone();
    out.extend(
        kept.iter()
            .filter(|m| hrl::owner::is_fenced(m.id, m.epoch, &records))
            .map(|m| m.id),
    );
    Ok(out)
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

//! The sweep phase of collection: deletes the chunks, indexes and logs no kept point
//! needs, once they have been unneeded for the grace period.
//!
//! An object is deleted only when (1) the mark of the kept points does not need it,
//! (2) it was written more than `grace` ago (the store's clock), and (3) an earlier run
//! already found it unneeded more than `grace` ago (`gc/pending.json`): a shipper that read
//! a manifest before retention rewrote or expired it, and dedups against what that manifest
//! named, has the grace period to commit a point that needs it again. Just before deleting,
//! the points are listed again and any new one is marked, and each object's write time is
//! read again (a writer that re-uploaded it keeps it).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use hrl::store::{PointManifest, GC_PENDING_KEY};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::mark::Marked;
use crate::store::{GroupStore, ObjectInfo, StoreError};

/// What a sweep did (or, dry, would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct SweepReport {
    pub deleted_objects: u64,
    pub deleted_bytes: u64,
    /// Unneeded, but within the grace period: collected by a later run.
    pub awaiting_objects: u64,
    pub awaiting_bytes: u64,
    /// Bytes of chunks, indexes and logs in the store after the sweep.
    pub store_bytes: u64,
    /// Expired leases removed.
    pub leases_removed: u64,
}

/// When each unneeded object was first found unneeded (`gc/pending.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Pending {
    version: u32,
    first_seen_ns: BTreeMap<String, u64>,
}

async fn load_pending(store: &GroupStore) -> Result<Pending> {
    match store.get(GC_PENDING_KEY).await {
        Ok(b) => Ok(serde_json::from_slice(&b).unwrap_or_else(|e| {
            warn!("gc/pending.json does not parse ({e}): every unneeded object waits a grace period again");
            Pending::default()
        })),
        Err(StoreError::NotFound { .. }) => Ok(Pending::default()),
        Err(e) => Err(e.into()),
    }
}

/// What the points as a merge would leave them no longer need (a dry run's estimate).
#[derive(Debug, Default, Clone, Copy)]
pub struct Freed {
    pub objects: u64,
    pub bytes: u64,
}

/// The points of the group as the prune found them, before it merged or expired any, and
/// the points leased then: a lease that appears during the prune names a point whose
/// reader may hold either version of its manifest.
pub struct Found<'a> {
    pub before: &'a [PointManifest],
    pub leased: &'a BTreeSet<u64>,
}

/// Sweeps the group. `marked` must come from every point the store keeps. `after_merge`
/// (a dry run: those points as a merge would leave them): also count what a merge would
/// free, objects `marked` needs and it does not.
pub async fn sweep(
    store: &GroupStore,
    marked: &mut Marked,
    found: &Found<'_>,
    grace: std::time::Duration,
    dry_run: bool,
    after_merge: Option<&Marked>,
    state_dir: &std::path::Path,
) -> Result<(SweepReport, Freed)> {
    let mut report = SweepReport::default();
    let mut freed = Freed::default();
    let now = hrl::now_ns();
    let grace_ns = grace.as_nanos() as u64;
    let mut objects = store.list_objects("chunks").await?;
    objects.extend(store.list_objects("disks").await?);
    let old = load_pending(store).await?;
    let mut pending = Pending {
        version: 1,
        first_seen_ns: BTreeMap::new(),
    };
    let mut due: Vec<ObjectInfo> = Vec::new();
    for o in objects {
        if marked.needs(&o.key) {
            report.store_bytes += o.size;
            if after_merge.is_some_and(|a| !a.needs(&o.key)) {
                freed.objects += 1;
                freed.bytes += o.size;
            }
            continue;
        }
        let first = old.first_seen_ns.get(&o.key).copied().unwrap_or(now);
        if now.saturating_sub(first) >= grace_ns && now.saturating_sub(o.modified_ns) >= grace_ns {
            due.push(o);
        } else {
            report.awaiting_objects += 1;
            report.awaiting_bytes += o.size;
            report.store_bytes += o.size;
            pending.first_seen_ns.insert(o.key, first);
        }
    }
    if dry_run {
        report.deleted_objects = due.len() as u64;
        report.deleted_bytes = due.iter().map(|o| o.size).sum();
        return Ok((report, freed));
    }
    // Recorded before anything is deleted: a kill from here on loses no first-seen time.
    let bytes = serde_json::to_vec(&pending).context("encode gc/pending.json")?;
    store.put_overwrite(GC_PENDING_KEY, bytes).await?;
    mark_new_points(store, marked).await?;
    mark_newly_leased(store, marked, found).await?;
    for o in due {
        if marked.needs(&o.key) {
            report.store_bytes += o.size;
            continue;
        }
        match store.modified_ns(&o.key).await? {
            Some(t) if t == o.modified_ns => {}
            _ => continue, // rewritten (a writer refreshed it) or gone meanwhile
        }
        store.delete(&o.key).await?;
        report.deleted_objects += 1;
        report.deleted_bytes += o.size;
        crate::replicate::stop::at(state_dir, "mid-gc");
    }
    report.leases_removed = remove_expired_leases(store, now).await?;
    info!(
        deleted = report.deleted_objects,
        deleted_bytes = report.deleted_bytes,
        awaiting = report.awaiting_objects,
        "collection swept"
    );
    Ok((report, freed))
}

/// Marks the points committed since the mark (a shipper racing this sweep).
async fn mark_new_points(store: &GroupStore, marked: &mut Marked) -> Result<()> {
    for id in crate::store::manifests::list_ids(store).await? {
        if !marked.points.contains(&id) {
            let m = crate::store::manifests::get(store, id).await?;
            marked.add(store, &m).await?;
        }
    }
    Ok(())
}

/// Marks both versions of every point leased since the prune read the leases (a reader
/// that took its lease meanwhile read the manifest before or after the merge rewrote or
/// expiry deleted it): the objects it reads stay for this sweep, whatever the grace.
/// Listed just before the deletes, after the merge and the expiry: a lease taken after
/// this reads a manifest already rewritten (or none), which the mark holds.
async fn mark_newly_leased(
    store: &GroupStore,
    marked: &mut Marked,
    found: &Found<'_>,
) -> Result<()> {
    let now = hrl::now_ns();
    let fresh: BTreeSet<u64> = crate::store::leases::list(store)
        .await?
        .into_iter()
        .filter(|(_, l)| l.expires_ns >= now && !found.leased.contains(&l.point))
        .map(|(_, l)| l.point)
        .collect();
    for m in found.before.iter().filter(|m| fresh.contains(&m.id)) {
        info!(
            point = m.id,
            "leased during the prune: its objects are kept"
        );
        marked.add(store, m).await?;
        match crate::store::manifests::get(store, m.id).await {
            Ok(now) => marked.add(store, &now).await?,
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Deletes the leases that expired (their holders died without deleting them).
async fn remove_expired_leases(store: &GroupStore, now: u64) -> Result<u64> {
    let mut n = 0;
    for (key, lease) in crate::store::leases::list(store).await? {
        if lease.expires_ns < now {
            store.delete(&key).await?;
            n += 1;
        }
    }
    Ok(n)
}

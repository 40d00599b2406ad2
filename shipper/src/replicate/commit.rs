//! Committing and releasing: the recovery point's manifest, written last and
//! create-if-absent; then the acks (the tracker deletes the shipped logs), the clears (the
//! tracker drops the marks the point covers) and the state after the point.

use std::collections::HashSet;

use crate::replicate::tracker::Seal;
use anyhow::Result;
use hrl::store::{DiskEntry, PointManifest, MANIFEST_VERSION};
use tracing::{info, warn};

use crate::replicate::context::Cycle;
use crate::service::retry::Fatal;
use crate::service::status::{DiskState, Health};
use crate::store::Put;

/// Commits the point of `seal` holding `entries`.
/// `app`: sealed between successful app-consistency hooks (`kind = "app"`).
pub async fn commit(
    c: &Cycle<'_>,
    seal: &Seal,
    entries: Vec<DiskEntry>,
    app: bool,
) -> Result<PointManifest> {
    let p = c.p;
    // A takeover since the cycle began fences this host before it commits anything.
    crate::replicate::stop::pause(&p.state_dir, "before-commit");
    crate::replicate::owner::still_owner(&p.store, &p.dir, c.epoch).await?;
    let id = crate::store::manifests::next_id(&p.store).await?;
    c.status
        .edit(|s| s.committing_point = Some((id, seal.seal_id)));
    let manifest = PointManifest {
        version: MANIFEST_VERSION,
        id,
        time_ns: seal.time_ns,
        seal_id: seal.seal_id,
        committed_ns: hrl::now_ns(),
        host: crate::replicate::owner::host_name(),
        epoch: Some(c.epoch),
        disks: entries,
        kind: app.then(|| hrl::store::KIND_APP.to_string()),
    };
    crate::replicate::stop::pause(&p.state_dir, "in-commit");
    if crate::store::manifests::commit(&p.store, &manifest).await? == Put::Existed {
        return Err(Fatal(format!(
            "recovery point {id} of group {:?} was committed by another shipper at the same time; \
             run only one shipper per group",
            p.store.group
        ))
        .into());
    }
    // A takeover between the check and the commit fenced this point (docs/store-layout.md,
    // "Ownership"): nothing is acked, the logs stay on this host.
    crate::replicate::owner::still_owner(&p.store, &p.dir, c.epoch).await?;
    info!(
        point = id,
        disks = manifest.disks.len(),
        "recovery point committed"
    );
    Ok(manifest)
}

/// After the commit: the finished resync jobs are forgotten, the shipped logs acked, and
/// the marks the point covers cleared (a failure is logged: the next cycle repeats it).
pub async fn release(
    c: &mut Cycle<'_>,
    manifest: &PointManifest,
    acks: &[(String, String, u64)],
    seal_id: u64,
    outside: &HashSet<String>,
) {
    for id in &c.jobs_done {
        crate::replicate::resync::drop_job(&c.p.state_dir, id);
    }
    for (disk, disk_id, seq) in acks {
        if let Err(e) = c.tracker.ack(disk, Some(disk_id), *seq).await {
            warn!(%disk, seq, "ack failed (the logs are shipped again and skipped next time): {e:#}");
        }
    }
    // The point covers every change marked before its seal: let the tracker clear those marks.
    for e in manifest
        .disks
        .iter()
        .filter(|e| !outside.contains(&e.disk_id))
    {
        if let Err(err) = c.tracker.clear(&e.name, seal_id).await {
            warn!(disk = %e.name, "clearing dirty marks failed: {err:#}");
        }
    }
}

/// The state after the point: every disk of it replicating, the ones gone removed.
pub async fn record_point(c: &mut Cycle<'_>, manifest: &PointManifest, outside: &HashSet<String>) {
    let tstatus = c.tracker.status().await.ok();
    c.status.edit(|s| {
        s.last_point_id = Some(manifest.id);
        s.committing_point = None;
        s.last_point_ns = Some(manifest.time_ns);
        // Disks that are gone (deleted, renamed over) leave the status.
        s.disks.retain(|d| {
            manifest
                .disks
                .iter()
                .any(|e| e.disk_id == d.disk_id || (d.disk_id.is_empty() && e.name == d.disk))
        });
        for e in &manifest.disks {
            let d = s.disk_mut(&e.name, &e.disk_id);
            d.state = DiskState::Replicating;
            d.health = Health::Normal;
            d.disk_size = e.disk_size;
            d.progress = None;
            d.last_error = None;
            d.resync_extents.clear();
            d.resync_full = false;
            d.resync_reason = None;
            if let Some(r) = d.resync.take() {
                d.last_resync = Some(r);
            }
            if let Some(ts) = tstatus
                .as_ref()
                .and_then(|t| t.disks.iter().find(|x| x.disk == e.name))
            {
                d.unshipped_bytes = crate::service::status::unshipped_bytes(ts);
                if !ts.warnings.is_empty() {
                    d.health = Health::Warning;
                    d.last_error = Some(ts.warnings.join("; "));
                }
            }
        }
        crate::replicate::bypass::mark_carried(s, outside, tstatus.as_ref());
    });
}

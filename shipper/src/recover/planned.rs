//! Planned failover, on the primary: no data loss. The tracked directory is switched
//! read-only (the tracker answers every change with EROFS, so nothing can diverge), refused
//! while a file is open for writing (named); a cycle seals and ships the final point; the
//! group is handed over (the next owner epoch, `handed_over` at that point: nobody commits
//! until the recovery host's `failover` takes it, which defaults to that point).

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hrl::owner::OwnerState;

use crate::replicate::cycle::{self, Protected};
use crate::replicate::owner;
use crate::replicate::tracker::TrackerClient;
use crate::service::status::DirStatus;

/// What a hand-over did.
#[derive(Debug, Clone)]
pub struct HandOver {
    pub point: u64,
    /// The epoch of the hand-over record.
    pub epoch: u64,
    pub disks: usize,
    pub bytes_uploaded: u64,
}

/// Hands `p`'s group over at a final point (see the module doc). On an error before the
/// hand-over the directory is writable again and the group stays this host's.
pub async fn hand_over(p: &Protected, status: &Mutex<DirStatus>) -> Result<HandOver> {
    let latest = crate::store::manifests::latest(&p.store).await?;
    let epoch = owner::ensure(&p.store, &p.dir, latest.as_ref()).await?;
    let mut t = TrackerClient::connect(&p.dir).await?;
    let writers = writers_after_switch(&mut t).await?;
    if !writers.is_empty() {
        t.read_only(false).await?;
        bail!(
            "files in {} are open for writing: {}; close them (shut the VM down, detach loop devices) and run the planned failover again (nothing was changed; the directory is writable)",
            p.dir.display(),
            writers.join(", ")
        );
    }
    let report = match cycle::run_cycle(p, status).await {
        Ok(r) => r,
        Err(e) => {
            let _ = t.read_only(false).await;
            return Err(e.context(
                "the final point was not committed; the directory is writable again and the group is still this host's",
            ));
        }
    };
    let dir = owner::canonical_dir(&p.dir);
    let rec = match owner::take(
        &p.store,
        epoch + 1,
        &owner::host_name(),
        &dir,
        Some(report.point_id),
        OwnerState::HandedOver,
    )
    .await?
    {
        Ok(r) => r,
        Err(other) => bail!(
            "group {:?} was taken over while the final point {} was shipped: it is owned by {}",
            p.store.group,
            report.point_id,
            owner::describe(&other)
        ),
    };
    status
        .lock()
        .map(|mut s| {
            s.epoch = None;
            s.fenced_by = Some(owner::describe(&rec));
        })
        .ok();
    Ok(HandOver {
        point: report.point_id,
        epoch: rec.epoch,
        disks: report.disks,
        bytes_uploaded: report.log_bytes_uploaded
            + report
                .base_copies
                .iter()
                .map(|c| c.uploaded_bytes)
                .sum::<u64>(),
    })
}

/// Switches the mount read-only and returns the files still open for writing, after giving
/// the kernel a moment to deliver the releases of files just closed.
async fn writers_after_switch(t: &mut TrackerClient) -> Result<Vec<String>> {
    let mut writers = t
        .read_only(true)
        .await
        .context("switch the tracked directory read-only")?;
    for _ in 0..20 {
        if writers.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        writers = t.read_only(true).await?;
    }
    Ok(writers)
}

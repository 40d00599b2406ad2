//! Disks the tracker found changed outside it (a writer that bypasses the mount: an old
//! descriptor, a shared mapping, a loop device, a bind mount). Their logs miss changes, so a
//! point must not claim them: the point is committed for the other disks and carries such a
//! disk's last good entry unchanged (its logs stay pending, its marks are not cleared); the
//! disk goes Warning and the next cycle resyncs it by comparing every block.

use std::collections::{BTreeMap, HashSet};

use hrl::control::{MountStatus, SealedLog};
use hrl::store::DiskEntry;

use crate::replicate::tracker::Seal;
use crate::service::status::{DirStatus, DiskState, Health};

/// Why such a disk waits for a resync (shown in `status`).
pub const REASON: &str = "changed outside the tracker; resync scheduled";

/// Disk ids `seal` reports changed outside the tracker, except those rebased after it (in
/// `rebased`, by disk id: their base was read after the seal, so it holds the change).
pub fn changed_outside<T>(seal: &Seal, rebased: &BTreeMap<String, T>) -> HashSet<String> {
    seal.disks
        .iter()
        .filter(|d| d.changed_outside && !rebased.contains_key(&d.disk_id))
        .map(|d| d.disk_id.clone())
        .collect()
}

/// The entry a point carries for a disk changed outside the tracker: its entry in the last
/// point (`last_id`), marked as that point's state (`carried_from`: restore and `points` say
/// the disk is not as of this seal, even when no status survives a killed shipper). A disk
/// with none (copied for the first time in this cycle) is left out of the point and copied
/// again.
pub fn carried(
    previous: &BTreeMap<String, DiskEntry>,
    last_id: Option<u64>,
    sealed: &SealedLog,
) -> Option<DiskEntry> {
    let e = previous
        .get(&sealed.disk_id)
        .filter(|e| e.generation == sealed.generation)
        .cloned()
        .map(|mut e| {
            e.carried_from = e.carried_from.or(last_id);
            e
        });
    tracing::warn!(
        disk = %sealed.disk,
        carried = e.is_some(),
        "the disk changed outside the tracker: this point keeps its last good state; it is resynced by comparing every block"
    );
    e
}

/// Status after a point that carried the disks in `outside`: Warning, resync required (every
/// block compared), with the tracker's account of what it found.
pub fn mark_carried(s: &mut DirStatus, outside: &HashSet<String>, t: Option<&MountStatus>) {
    for d in s.disks.iter_mut().filter(|d| outside.contains(&d.disk_id)) {
        d.state = DiskState::ResyncRequired;
        d.health = d.health.max(Health::Warning);
        d.resync_full = true;
        d.resync_reason = Some(REASON.into());
        d.last_error = t
            .and_then(|t| {
                t.disks
                    .iter()
                    .find(|x| (!x.disk_id.is_empty() && x.disk_id == d.disk_id) || x.disk == d.disk)
            })
            .and_then(|x| x.changed_outside.clone())
            .or_else(|| Some(format!("{} {REASON}", d.disk)));
    }
}

/// Drops the saved resync jobs of the disks in `outside`: a disk changed outside the tracker
/// after a job read it must be compared again (the point carries its last good state; were
/// its commit to fail, the next cycle would otherwise resume a job that missed the change,
/// and that cycle's seal no longer reports it).
pub fn drop_stale_jobs(state_dir: &std::path::Path, outside: &HashSet<String>) {
    for id in outside {
        crate::replicate::resync::drop_job(state_dir, id);
    }
}

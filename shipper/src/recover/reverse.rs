//! What a failover leaves beside the disks it rebuilt so that the new owner continues the
//! group's chain (reverse replication) with no base copy and no resync:
//!
//! - per disk, the active log the tracker would have left at a clean stop just after the
//!   point: the disk's id and generation, sequence `last_seq + 1`, naming the point's chain
//!   hash as previous, closed cleanly and empty;
//! - per disk, a dirty bitmap without marks, closed cleanly, holding the image's stamp (size,
//!   mtime, ctime of the rebuilt disk under its final name) and where that active log ends:
//!   what the tracker trusts at mount (docs/tracker.md). A disk changed before the tracker
//!   is mounted no longer matches the stamp: the tracker reports it unclean and the shipper
//!   resyncs it by checksum against the point, never a new copy;
//! - the shipper's state for the directory, naming the point (so it is in step with the
//!   store and trusts the tracker's marks).

use std::path::Path;

use anyhow::{Context, Result};
use hrl::bitmap::{CleanClose, ClosedLog, DirtyBitmap, ImageStamp};
use hrl::log::{LogHeader, LogWriter};
use hrl::store::{DiskEntry, PointManifest};

use crate::service::status::{self, DirStatus, DiskState, Health};

/// Extent size of a new bitmap: the tracker's (a bitmap keeps its own extent size, so this
/// only has to be a valid one; the tracker's is used so both agree).
pub const EXTENT_SIZE: u32 = 4 << 20;

/// Writes the active log and the clean bitmap of the rebuilt disk `e` in `dir` (replacing
/// any left by an earlier run or an earlier tracker, sealed logs included: the disk now
/// holds the point's state). `midway` runs between the two (the tests' stop point
/// `failover-mid-reverse`): a run killed there leaves an active log and no bitmap, which
/// the next failover replaces.
pub fn prepare_disk(dir: &Path, e: &DiskEntry, midway: &dyn Fn()) -> Result<()> {
    let disk = dir.join(&e.name);
    let log_path = hrl::naming::active_log_path(&disk);
    let bitmap_path = hrl::naming::bitmap_path(&disk);
    super::delta::remove_tracker_files(dir, &e.name)?;
    let id = hrl::from_hex::<16>(&e.disk_id)
        .with_context(|| format!("the point names a bad disk id for {}", e.name))?;
    let prev = hrl::from_hex::<32>(&e.last_chain_hash)
        .with_context(|| format!("the point names a bad chain hash for {}", e.name))?;
    let mut h = LogHeader::new(id, e.generation, e.last_seq + 1, e.disk_size, prev);
    h.block_size = EXTENT_SIZE;
    let log = LogWriter::create(&log_path, &h)
        .with_context(|| format!("create {}", log_path.display()))?;
    let closed = ClosedLog {
        seq: log.header().sequence,
        len: log.len(),
        hash: log.seal_hash(),
    };
    log.close_clean()
        .with_context(|| format!("close {}", log_path.display()))?;
    midway();
    let md = std::fs::metadata(&disk).with_context(|| format!("stat {}", disk.display()))?;
    let (bitmap, _) = DirtyBitmap::open(&bitmap_path, EXTENT_SIZE, md.len())
        .with_context(|| format!("create {}", bitmap_path.display()))?;
    bitmap
        .close_clean_with(CleanClose {
            stamp: Some(ImageStamp::of(&md)),
            log: Some(closed),
            report_stands: false,
        })
        .with_context(|| format!("write {}", bitmap_path.display()))?;
    Ok(())
}

/// Saves the shipper's state for `dir`: in step with `point` of `group` at `epoch`.
pub fn save_state(
    state_dir: &Path,
    dir: &Path,
    group: &str,
    target: &str,
    point: &PointManifest,
    epoch: u64,
) -> Result<()> {
    let mut s = DirStatus::new(dir, group, target);
    s.last_point_id = Some(point.id);
    s.last_point_ns = Some(point.time_ns);
    s.epoch = Some(epoch);
    for e in &point.disks {
        let d = s.disk_mut(&e.name, &e.disk_id);
        d.state = DiskState::Replicating;
        d.health = Health::Normal;
        d.disk_size = e.disk_size;
    }
    status::save(state_dir, &s)
}

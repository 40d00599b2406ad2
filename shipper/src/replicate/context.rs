//! What one cycle knows and holds while it runs (`Cycle`), what it protects (`Protected`)
//! and reports, and its opening steps: the store's latest point, the owner fence, the
//! tracker's status, the state reconciled, resyncs deferred outside the window.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use anyhow::Result;
use hrl::control::{DiskMode, MountStatus};
use hrl::store::{DiskEntry, PointManifest};
use tracing::info;

use crate::replicate::copy::CopyStats;
use crate::replicate::plan::{self, Flags};
use crate::replicate::tracker::{Tracker, TrackerClient};
use crate::service::status::{DirStatus, DiskState, StatusHandle};
use crate::store::GroupStore;

/// A directory under protection and where it replicates to.
pub struct Protected {
    pub dir: PathBuf,
    pub store: GroupStore,
    pub chunk_size: u32,
    pub state_dir: PathBuf,
    /// Take a new base of every disk (operator request).
    pub force_resync: bool,
    /// Run resyncs now, whatever the window and the pause say (`resync --now`).
    pub resync_now: bool,
    /// Resyncs (not initial copies) wait for this window; `None`: any time.
    pub resync_window: Option<crate::service::window::Window>,
    /// Show a progress bar for copies (a terminal is attached).
    pub progress_bar: bool,
    /// Trust nothing in the shipper's state: reconcile every disk with the store's latest
    /// point and the tracker's marks (`sync --reconcile`).
    pub reconcile: bool,
    /// Hooks for app-consistent points (`None`: every point crash-consistent).
    pub app: Option<crate::replicate::app::AppHooks>,
}

/// What a committed cycle did.
#[derive(Debug, Clone, Default)]
pub struct CycleReport {
    pub point_id: u64,
    pub time_ns: u64,
    pub disks: usize,
    pub logs_shipped: usize,
    /// Log bytes before and after coalescing, and compressed bytes uploaded.
    pub log_bytes_sealed: u64,
    pub log_bytes_coalesced: u64,
    pub log_bytes_uploaded: u64,
    pub base_copies: Vec<CopyStats>,
}

/// The cycle is held back until the resync window opens (not an error to retry on the
/// back-off schedule).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ResyncDeferred(pub String);

/// What one cycle knows and holds while it runs.
pub struct Cycle<'a> {
    pub p: &'a Protected,
    pub status: StatusHandle<'a>,
    pub tracker: Box<dyn Tracker>,
    /// The tracker's status at the start of the cycle.
    pub tstatus: MountStatus,
    /// The store's latest point, and its disks by id.
    pub last: Option<PointManifest>,
    pub previous: BTreeMap<String, DiskEntry>,
    /// The cycle's scratch directory (emptied at the start).
    pub work: PathBuf,
    /// Disks the state was out of step for (reconcile.rs): resynced now, whatever the window.
    pub reconciling: HashSet<String>,
    pub flags: Flags,
    /// Disks whose resync job is done once the point commits.
    pub jobs_done: Vec<String>,
    pub report: CycleReport,
    /// The owner epoch this host commits under (checked again around the commit).
    pub epoch: u64,
}

impl<'a> Cycle<'a> {
    /// Starts a cycle: the store's latest point, the group's owner checked, the tracker's
    /// status, the state reconciled with the store (it is a cache).
    pub async fn open(
        p: &'a Protected,
        status: StatusHandle<'a>,
        tracker: Option<Box<dyn Tracker>>,
    ) -> Result<Cycle<'a>> {
        let work = crate::replicate::workdir::fresh(&p.state_dir, &p.store.group)?;
        let last = crate::store::manifests::latest(&p.store).await?;
        let epoch = match crate::replicate::owner::owns(&p.store, &p.dir, last.as_ref()).await? {
            Ok(epoch) => epoch,
            Err(f) => {
                status.edit(|s| {
                    s.epoch = None;
                    s.fenced_by = Some(f.owner);
                });
                return Err(f.error);
            }
        };
        status.edit(|s| {
            s.epoch = Some(epoch);
            s.fenced_by = None;
        });
        let mut tracker = match tracker {
            Some(t) => t,
            None => Box::new(TrackerClient::connect(&p.dir).await?),
        };
        let tstatus = tracker.status().await?;
        let reconciling = status.edit(|s| {
            s.untracked = tstatus.untracked.clone();
            crate::replicate::reconcile::reconcile(s, last.as_ref(), p.reconcile)
                .into_iter()
                .collect()
        });
        let flags = status.read(flags_of);
        Ok(Cycle {
            p,
            status,
            tracker,
            tstatus,
            previous: plan::previous_by_id(last.as_ref()),
            last,
            work,
            reconciling,
            flags,
            jobs_done: Vec::new(),
            report: CycleReport::default(),
            epoch,
        })
    }

    /// Resyncs wait while an operator paused them (the disks stay in bitmap tracking), and
    /// outside the resync window; initial copies and operator requests do not wait.
    pub fn defer_resyncs_outside_the_window(&self) -> Result<()> {
        let p = self.p;
        let why = if p.force_resync || p.resync_now {
            None
        } else if crate::replicate::resync::is_paused(&p.state_dir, &p.dir) {
            Some(format!(
                "which an operator paused (`hrl-shipper resync --dir {} --resume` continues)",
                p.dir.display()
            ))
        } else {
            p.resync_window.filter(|w| !w.contains_now()).map(|w| {
                format!(
                    "which waits for the resync window {w} (run `hrl-shipper resync --dir {} --now` to resync now)",
                    p.dir.display()
                )
            })
        };
        let Some(why) = why else {
            return Ok(());
        };
        let waiting: Vec<&str> = self
            .tstatus
            .disks
            .iter()
            .filter(|d| plan::needs_resync(d, &self.flags) && !self.reconciling.contains(&d.disk))
            .map(|d| d.disk.as_str())
            .collect();
        self.status
            .edit(|s| mark_waiting(s, &self.tstatus, &waiting));
        match waiting.is_empty() {
            true => Ok(()),
            false => Err(
                ResyncDeferred(format!("{} need(s) a resync, {why}", waiting.join(", "))).into(),
            ),
        }
    }

    pub async fn switch_bitmap_disks_to_log_mode(&mut self) -> Result<()> {
        for d in &self.tstatus.disks {
            if d.mode == DiskMode::Bitmap {
                info!(disk = %d.disk, "disk is in bitmap mode: switching to log mode for its resync");
                self.tracker.set_mode(&d.disk, DiskMode::Log).await?;
            }
        }
        Ok(())
    }
}

/// The resync flags of the state: by disk id (by name only for entries without one).
fn flags_of(s: &DirStatus) -> Flags {
    let key = |d: &crate::service::status::DiskStatus| match d.disk_id.is_empty() {
        false => d.disk_id.clone(),
        true => d.disk.clone(),
    };
    Flags {
        resync: s
            .disks
            .iter()
            .filter(|d| matches!(d.state, DiskState::ResyncRequired | DiskState::Resyncing))
            .map(key)
            .collect(),
        full: s
            .disks
            .iter()
            .filter(|d| d.resync_full)
            .map(|d| d.disk_id.clone())
            .collect(),
    }
}

/// Disks whose resync waits (window, pause): state "resync required", with the reason when
/// none is recorded yet.
fn mark_waiting(s: &mut DirStatus, t: &MountStatus, waiting: &[&str]) {
    for name in waiting {
        let Some(d) = s.disks.iter_mut().find(|d| d.disk == *name) else {
            continue;
        };
        if d.state != DiskState::Resyncing {
            d.state = DiskState::ResyncRequired;
        }
        if d.resync_reason.is_none() {
            let ts = t.disks.iter().find(|x| x.disk == *name);
            d.resync_reason = Some(match ts {
                Some(x) if x.changed_outside.is_some() => crate::replicate::bypass::REASON.into(),
                Some(x) if !x.unclean_extents.is_empty() => {
                    "the tracker stopped uncleanly; its reported extents are resynced".into()
                }
                Some(x) if x.mode == DiskMode::Bitmap => {
                    "the disk is in bitmap-only tracking".into()
                }
                _ => "a resync was requested or interrupted".into(),
            });
        }
    }
}

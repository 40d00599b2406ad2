//! Establishing bases: for each disk the plan says needs one, a fuzzy copy of the whole
//! disk (`copy`), or a resync against the last point's replica (`resync`: a saved job
//! resumed, or a new one planned over the trusted extents or every block). The logs sealed
//! after the copy make it consistent at the cycle's second seal.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::replicate::tracker::Seal;
use anyhow::{Context, Result};
use hrl::control::{DiskMode, SealedLog};
use hrl::store::{BaseRef, DiskEntry};
use hrl::Digest;
use tracing::{info, warn};

use crate::replicate::context::{Cycle, Protected, ResyncDeferred};
use crate::replicate::copy::{copy_disk, CopyStats};
use crate::replicate::plan::{plan_disk, BasePlan, DiskFacts};
use crate::replicate::resync::{ResyncJob, ResyncProgress};
use crate::replicate::ship::ChainStart;
use crate::replicate::tracker::Tracker;
use crate::service::status::{DiskState, StatusHandle};

/// The chunks the store holds, listed once per cycle when a disk needs them (any disk's: a
/// renamed or copied disk, or a resync, finds most of its blocks there); a lost one is sent
/// again.
struct Known(Option<Arc<HashSet<Digest>>>);

impl Known {
    async fn get(&mut self, c: &Cycle<'_>) -> Result<Arc<HashSet<Digest>>> {
        if let Some(k) = &self.0 {
            return Ok(Arc::clone(k));
        }
        let k = Arc::new(crate::replicate::presence::stored_chunks(&c.p.store).await?);
        self.0 = Some(Arc::clone(&k));
        Ok(k)
    }
}

/// Gives every disk of `first` the plan says needs a base one; returns where each such
/// disk's chain now starts (by disk id).
pub async fn establish(c: &mut Cycle<'_>, first: &Seal) -> Result<BTreeMap<String, ChainStart>> {
    let pending = c.tracker.pending().await?;
    let mut known = Known(None);
    let mut starts = BTreeMap::new();
    for sealed in &first.disks {
        let saved = saved_job(c, sealed);
        let facts = DiskFacts {
            sealed,
            previous: c.previous.get(&sealed.disk_id),
            bitmap: tracker_disk(c, sealed).is_some_and(|d| d.mode == DiskMode::Bitmap),
            unclean: tracker_disk(c, sealed).is_some_and(|d| !d.unclean_extents.is_empty()),
            resumable: saved.is_some(),
        };
        let plan = plan_disk(&facts, &c.flags, c.p.force_resync);
        if plan == BasePlan::Continue {
            continue;
        }
        let state = match c.previous.contains_key(&sealed.disk_id) {
            true => DiskState::Resyncing,
            false => DiskState::InitialReplication,
        };
        c.status.edit(|s| {
            let d = s.disk_mut(&sealed.disk, &sealed.disk_id);
            d.state = state;
            d.disk_size = sealed.disk_size;
        });
        let known = known.get(c).await?;
        let (start, stats) = match resync_disk(c, sealed, plan, saved, &pending, &known).await? {
            Some(done) => done,
            None => copy_as_base(c, sealed, state, &known).await?,
        };
        starts.insert(sealed.disk_id.clone(), start);
        c.report.base_copies.push(stats);
    }
    Ok(starts)
}

/// The tracker's report of a disk at the start of the cycle.
fn tracker_disk<'c>(c: &'c Cycle<'_>, sealed: &SealedLog) -> Option<&'c hrl::control::DiskStatus> {
    c.tstatus.disks.iter().find(|d| d.disk == sealed.disk)
}

/// An interrupted resync against this very replica state, unless a newer unclean report
/// (another tracker process) came since it was planned, or this cycle's seal found the disk
/// changed outside the tracker (after the job read its blocks: what it compared may be
/// stale, and no log holds the change); a stale one is dropped.
fn saved_job(c: &Cycle<'_>, sealed: &SealedLog) -> Option<(ResyncJob, hrl::chunk::ChunkIndex)> {
    let prev = c
        .previous
        .get(&sealed.disk_id)
        .filter(|e| e.generation == sealed.generation);
    let reports_unclean = tracker_disk(c, sealed).is_some_and(|d| !d.unclean_extents.is_empty());
    let saved = crate::replicate::resync::load_job(&c.p.state_dir, &sealed.disk_id).filter(|(j, _)| {
        let answers = j.answers_report(c.tstatus.pid, reports_unclean);
        if !answers {
            info!(disk = %sealed.disk, "a newer unclean report replaces the interrupted resync");
        }
        if sealed.changed_outside {
            info!(disk = %sealed.disk, "changed outside the tracker since the interrupted resync read it: resyncing again");
        }
        !c.p.force_resync
            && answers
            && !sealed.changed_outside
            && j.generation == sealed.generation
            && prev.is_some_and(|e| e.last_seq == j.replica_last_seq)
    });
    if saved.is_none() {
        crate::replicate::resync::drop_job(&c.p.state_dir, &sealed.disk_id);
    }
    saved
}

/// Resyncs `sealed` as the plan says; `None` when it must be copied instead (no resync
/// planned, or the replica's digests cannot be had).
async fn resync_disk(
    c: &mut Cycle<'_>,
    sealed: &SealedLog,
    plan: BasePlan,
    saved: Option<(ResyncJob, hrl::chunk::ChunkIndex)>,
    pending: &[SealedLog],
    known: &Arc<HashSet<Digest>>,
) -> Result<Option<(ChainStart, CopyStats)>> {
    let planned = match (plan, saved) {
        (BasePlan::Resume, Some((mut job, index))) => {
            job.progress.resumed += 1;
            info!(disk = %sealed.disk, done = job.cursor, total = job.blocks.len(), "continuing an interrupted resync");
            Some((job, index))
        }
        (BasePlan::Resync { full }, _) => {
            let same_generation = |e: &&DiskEntry| e.generation == sealed.generation;
            let Some(prev) = c
                .previous
                .get(&sealed.disk_id)
                .filter(same_generation)
                .cloned()
            else {
                return Ok(None);
            };
            let p = c.p;
            plan_resync(
                p,
                c.tracker.as_mut(),
                c.status,
                sealed,
                &prev,
                full,
                &c.tstatus,
                pending,
                &c.work,
            )
            .await?
        }
        _ => None,
    };
    let Some((mut job, mut index)) = planned else {
        return Ok(None);
    };
    let source = crate::replicate::local::disk(c.tracker.as_mut(), &c.p.dir, &sealed.disk).await?;
    let stats = run_resync(
        c.p,
        c.status,
        &source,
        &sealed.disk,
        &mut job,
        &mut index,
        known,
    )
    .await?;
    let start = ChainStart {
        base: BaseRef {
            index_key: job.index_key.clone(),
            index_hash: stats.index_hash.clone(),
            block_size: index.block_size,
            after_seq: job.after_seq,
            after_chain_hash: job.after_chain_hash.clone(),
        },
        generation: sealed.generation,
        after_seq: job.after_seq,
        after_hash: job.after_chain_hash.clone(),
    };
    c.jobs_done.push(sealed.disk_id.clone());
    Ok(Some((start, stats)))
}

/// Copies `sealed`'s disk as a new base after its seal.
async fn copy_as_base(
    c: &mut Cycle<'_>,
    sealed: &SealedLog,
    state: DiskState,
    known: &Arc<HashSet<Digest>>,
) -> Result<(ChainStart, CopyStats)> {
    let p = c.p;
    let index_key = hrl::store::base_key(&sealed.disk_id, sealed.generation, sealed.seq);
    info!(disk = %sealed.disk, state = state.label(), "copying disk into the store");
    let source = crate::replicate::local::disk(c.tracker.as_mut(), &p.dir, &sealed.disk).await?;
    let stats = copy_with_progress(
        p,
        c.status,
        &source,
        &sealed.disk,
        &sealed.disk_id,
        &index_key,
        known,
    )
    .await?;
    info!(
        disk = %sealed.disk,
        uploaded_chunks = stats.uploaded_chunks,
        uploaded_bytes = stats.uploaded_bytes,
        zero_blocks = stats.zero_blocks,
        "base copy done"
    );
    let start = ChainStart {
        base: BaseRef {
            index_key: stats.index_key.clone(),
            index_hash: stats.index_hash.clone(),
            block_size: p.chunk_size,
            after_seq: sealed.seq,
            after_chain_hash: sealed.hash.clone(),
        },
        generation: sealed.generation,
        after_seq: sealed.seq,
        after_hash: sealed.hash.clone(),
    };
    Ok((start, stats))
}

async fn copy_with_progress(
    p: &Protected,
    status: StatusHandle<'_>,
    source: &crate::replicate::local::Source,
    disk: &str,
    disk_id: &str,
    index_key: &str,
    known: &Arc<HashSet<Digest>>,
) -> Result<CopyStats> {
    let bar = p.progress_bar.then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(disk.to_string());
        b
    });
    let last_save = Mutex::new(std::time::Instant::now());
    let progress = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
        if let Ok(mut t) = last_save.lock() {
            if t.elapsed().as_secs() >= 2 || done == total {
                *t = std::time::Instant::now();
                status.edit(|s| s.disk_mut(disk, disk_id).progress = Some((done, total)));
            }
        }
    };
    let r = copy_disk(&p.store, source, p.chunk_size, index_key, known, &progress).await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    r
}

/// Chooses what a resync of `sealed` (replica `prev`) reads: the trusted dirty extents
/// (tracker marks, unclean extents, extents of dropped and pending logs), or every block.
/// `None`: no replica digests can be had (size changed); the caller copies the disk.
#[allow(clippy::too_many_arguments)]
async fn plan_resync(
    p: &Protected,
    tracker: &mut dyn Tracker,
    status: StatusHandle<'_>,
    sealed: &SealedLog,
    prev: &DiskEntry,
    full: bool,
    tstatus: &hrl::control::MountStatus,
    pending: &[SealedLog],
    work: &Path,
) -> Result<Option<(ResyncJob, hrl::chunk::ChunkIndex)>> {
    use crate::replicate::resync::{blocks_of, full_compare_blocks, ResyncJob, ResyncKind};
    let Some((replica, rebuilt_sent)) =
        crate::replicate::resync::replica_index(&p.store, prev, work).await?
    else {
        info!(disk = %sealed.disk, "the replica's size changed since its base: copying the disk");
        return Ok(None);
    };
    let source = crate::replicate::local::disk(tracker, &p.dir, &sealed.disk).await?;
    let disk_file = source.open()?;
    let size = disk_file
        .metadata()
        .with_context(|| format!("stat disk {}", source.shown.display()))?
        .len();
    if size != replica.disk_size {
        info!(disk = %sealed.disk, size, replica = replica.disk_size, "disk size differs from the replica: copying the disk");
        return Ok(None);
    }
    let count = replica.digests.len() as u64;
    let mut kind = if full {
        ResyncKind::Full
    } else {
        ResyncKind::Targeted
    };
    let mut blocks = Vec::new();
    if kind == ResyncKind::Targeted {
        let extents = trusted_extents(p, tracker, status, sealed, prev, tstatus, pending).await?;
        match extents {
            Some(e) => {
                blocks = blocks_of(&e, replica.block_size, count)
                    .into_iter()
                    .collect()
            }
            None => kind = ResyncKind::Full,
        }
    }
    if kind == ResyncKind::Full {
        let r = replica.clone();
        blocks = tokio::task::spawn_blocking(move || full_compare_blocks(&disk_file, &r))
            .await
            .context("block planner failed")??;
    }
    info!(disk = %sealed.disk, kind = ?kind, blocks = blocks.len(), of = count, "resync planned");
    let job = ResyncJob {
        disk_id: sealed.disk_id.clone(),
        generation: sealed.generation,
        after_seq: sealed.seq,
        after_chain_hash: sealed.hash.clone(),
        replica_last_seq: prev.last_seq,
        index_key: hrl::store::base_key(&sealed.disk_id, sealed.generation, sealed.seq),
        kind,
        blocks,
        cursor: 0,
        progress: ResyncProgress {
            rebuilt_bytes_sent: rebuilt_sent,
            ..Default::default()
        },
        elapsed_s: 0.0,
        tracker: crate::replicate::resync::TrackerInstance::of(tstatus.pid),
    };
    crate::replicate::resync::save_job(&p.state_dir, &job, &replica)?;
    Ok(Some((job, replica)))
}

/// The extents a targeted resync of `sealed` must read: the tracker's marks and unclean
/// extents, the status's resync extents, and the extents written by the pending logs since
/// the replica `prev`. `None` when those logs cannot tell (the caller compares every block).
async fn trusted_extents(
    p: &Protected,
    tracker: &mut dyn Tracker,
    status: StatusHandle<'_>,
    sealed: &SealedLog,
    prev: &DiskEntry,
    tstatus: &hrl::control::MountStatus,
    pending: &[SealedLog],
) -> Result<Option<Vec<(u64, u64)>>> {
    let mut extents = tracker.dirty(&sealed.disk).await?;
    if let Some(t) = tstatus.disks.iter().find(|d| d.disk == sealed.disk) {
        extents.extend(t.unclean_extents.iter().copied());
    }
    status.read(|s| {
        if let Some(d) = s.disks.iter().find(|d| d.disk_id == sealed.disk_id) {
            extents.extend(d.resync_extents.iter().copied());
        }
    });
    let logs: Vec<&SealedLog> = pending
        .iter()
        .filter(|l| {
            l.disk_id == sealed.disk_id
                && l.generation == sealed.generation
                && l.seq > prev.last_seq
                && l.seq <= sealed.seq
        })
        .collect();
    let logs = crate::replicate::local::logs(tracker, &p.dir, &logs).await?;
    let from_logs =
        tokio::task::spawn_blocking(move || crate::replicate::resync::source_extents(&logs))
            .await
            .context("log reader failed")?;
    match from_logs {
        Ok(Some(e)) => {
            extents.extend(e);
            Ok(Some(extents))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            warn!(disk = %sealed.disk, "cannot read its pending logs, comparing every block: {e:#}");
            Ok(None)
        }
    }
}

/// Runs a resync job, mirroring its progress into the status.
async fn run_resync(
    p: &Protected,
    status: StatusHandle<'_>,
    source: &crate::replicate::local::Source,
    disk: &str,
    job: &mut ResyncJob,
    index: &mut hrl::chunk::ChunkIndex,
    known: &Arc<HashSet<Digest>>,
) -> Result<CopyStats> {
    let disk_id = job.disk_id.clone();
    let progress = |pr: &ResyncProgress| {
        status.edit(|s| {
            let d = s.disk_mut(disk, &disk_id);
            d.state = DiskState::Resyncing;
            d.resync = Some(pr.clone());
        });
    };
    let paused = || !p.resync_now && crate::replicate::resync::is_paused(&p.state_dir, &p.dir);
    let stop_after_blocks = (crate::replicate::stop::armed("mid-resync")
        || crate::replicate::stop::armed("mid-resync-pause"))
    .then(|| (job.blocks.len() as u64 / 2).max(1));
    let ctl = crate::replicate::resync::ResyncControl {
        state_dir: &p.state_dir,
        paused: &paused,
        progress: &progress,
        stop_after_blocks: stop_after_blocks.filter(|n| *n > job.cursor as u64),
    };
    let r = crate::replicate::resync::run_job(&p.store, source, job, index, known, &ctl).await;
    match r {
        Ok(mut stats) => {
            stats.resync = Some(job.progress.clone());
            Ok(stats)
        }
        Err(e)
            if e.downcast_ref::<crate::replicate::resync::ResyncPaused>()
                .is_some() =>
        {
            Err(ResyncDeferred(format!("{e:#}")).into())
        }
        Err(e) => Err(e),
    }
}

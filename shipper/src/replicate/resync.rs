//! Resync: brings a replica back in line with its source disk by comparing blake3 digests
//! of fixed-size blocks, uploading only the blocks that differ, and committing a new base
//! whose index is the replica's index with those blocks replaced.
//!
//! - The replica's digests as of its last point come from the base index with the later
//!   shipped logs folded in: the blocks those logs touch are rebuilt (base chunk + the logs
//!   replayed on a sparse scratch file) and hashed again ([`replica_index`]).
//! - *Targeted*: when the dirty marks can be trusted (50% rule, unclean tracker stop) only
//!   the blocks inside them are read (after an offline edit the tracker reports the whole
//!   disk unclean: every block). *Full*: every block holding data is read (chain break,
//!   operator request).
//! - The work (blocks to compare, a cursor, the index so far, counters) is saved in the state
//!   directory as it goes, so a resync stopped by kill -9, an outage or a pause continues
//!   where it stopped.
//!
//! The copy is fuzzy like the initial copy: it starts after a seal, and the logs sealed after
//! it (applied on top of the new base) make it consistent.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::StreamExt;
use hrl::chunk::{ChunkIndex, ZERO_DIGEST};
use hrl::store::DiskEntry;
use hrl::Digest;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::replicate::copy::{copy_blocks, data_blocks, CopyStats};
use crate::replicate::local::Source;
use crate::service::retry::Fatal;
use crate::store::chunks::ChunkStore;
use crate::store::index::fetch_base_index;
use crate::store::GroupStore;

pub use crate::replicate::progress::{ResyncKind, ResyncProgress};

/// A resync in progress, saved beside the state file (`resync-<disk id>.json`, with the
/// index so far in `resync-<disk id>.idx`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResyncJob {
    pub disk_id: String,
    pub generation: u64,
    /// The seal after which the copy started: the new base's `after_seq` and chain hash.
    pub after_seq: u64,
    pub after_chain_hash: String,
    /// The replica point it started from (`last_seq` of that point's entry): a job made
    /// against another replica state is stale.
    pub replica_last_seq: u64,
    pub index_key: String,
    pub kind: ResyncKind,
    /// Blocks to compare, ascending; `cursor` of them are done. Saved as ranges (a full
    /// compare of a large disk is millions of consecutive blocks).
    #[serde(with = "block_ranges")]
    pub blocks: Vec<u64>,
    pub cursor: usize,
    pub progress: ResyncProgress,
    /// Seconds spent in earlier runs (for the rate).
    pub elapsed_s: f64,
    /// The tracker process whose report the job was planned from. A job resumed under
    /// another tracker that reports unclean extents is stale: that report is newer (a crash,
    /// an offline edit) and may cover blocks the job compared already or never had.
    #[serde(default)]
    pub tracker: Option<TrackerInstance>,
}

/// One run of a tracker process: its pid and start time (clock ticks after boot), which
/// together never repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerInstance {
    pub pid: u32,
    pub start_ticks: u64,
}

impl TrackerInstance {
    /// The running process `pid` (None if it is gone).
    pub fn of(pid: u32) -> Option<TrackerInstance> {
        Some(TrackerInstance {
            pid,
            start_ticks: process_start_ticks(pid)?,
        })
    }
}

/// When process `pid` started, in clock ticks after boot (field 22 of /proc/PID/stat).
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime) is the 20th after the ")" that ends the command name.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

impl ResyncJob {
    /// True if the job still answers the tracker's report: planned under this tracker
    /// process, or the tracker reports nothing unclean for the disk.
    pub fn answers_report(&self, tracker_pid: u32, reports_unclean: bool) -> bool {
        !reports_unclean
            || self
                .tracker
                .is_some_and(|t| Some(t) == TrackerInstance::of(tracker_pid))
    }
}

/// (De)serializes an ascending block list as `[first, end)` ranges.
mod block_ranges {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(blocks: &[u64], s: S) -> Result<S::Ok, S::Error> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &b in blocks {
            match ranges.last_mut() {
                Some(r) if r.1 == b => r.1 = b + 1,
                _ => ranges.push((b, b + 1)),
            }
        }
        ranges.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        let ranges = Vec::<(u64, u64)>::deserialize(d)?;
        Ok(ranges.into_iter().flat_map(|(a, b)| a..b).collect())
    }
}

fn job_paths(state_dir: &Path, disk_id: &str) -> (PathBuf, PathBuf) {
    let d = state_dir.join("resync");
    (
        d.join(format!("resync-{disk_id}.json")),
        d.join(format!("resync-{disk_id}.idx")),
    )
}

/// Loads an interrupted resync of `disk_id`, with its index so far.
pub fn load_job(state_dir: &Path, disk_id: &str) -> Option<(ResyncJob, ChunkIndex)> {
    let (j, i) = job_paths(state_dir, disk_id);
    let job: ResyncJob = serde_json::from_slice(&std::fs::read(&j).ok()?)
        .map_err(|e| warn!(file = %j.display(), "interrupted resync state is not valid, starting over: {e}"))
        .ok()?;
    let idx = ChunkIndex::decode(&std::fs::read(&i).ok()?)
        .map_err(|e| warn!(file = %i.display(), "interrupted resync index is not valid, starting over: {e}"))
        .ok()?;
    Some((job, idx))
}

/// Forgets an interrupted resync of `disk_id`.
pub fn drop_job(state_dir: &Path, disk_id: &str) {
    let (j, i) = job_paths(state_dir, disk_id);
    let _ = std::fs::remove_file(j);
    let _ = std::fs::remove_file(i);
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_data())
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename {}", path.display()))
}

/// Saves the job and its index so far (index first: a job never points past what is saved).
pub fn save_job(state_dir: &Path, job: &ResyncJob, index: &ChunkIndex) -> Result<()> {
    let (j, i) = job_paths(state_dir, &job.disk_id);
    std::fs::create_dir_all(state_dir.join("resync"))
        .with_context(|| format!("create {}", state_dir.join("resync").display()))?;
    write_atomic(&i, &index.encode())?;
    let json = serde_json::to_vec(job).context("encode resync state")?;
    write_atomic(&j, &json)
}

/// Blocks of `block_size` overlapping the byte ranges `extents`, below `count`.
pub fn blocks_of(extents: &[(u64, u64)], block_size: u32, count: u64) -> BTreeSet<u64> {
    let bs = u64::from(block_size);
    let mut out = BTreeSet::new();
    for &(off, len) in extents {
        if len == 0 {
            continue;
        }
        let last = (off.saturating_add(len)).div_ceil(bs).min(count);
        out.extend(off / bs..last);
    }
    out
}

/// Byte ranges the records of `logs` change (`hrl::log::log_extents`), with the log named
/// in the error.
pub fn log_extents(logs: &[PathBuf]) -> Result<Option<Vec<(u64, u64)>>> {
    hrl::log::log_extents(logs).with_context(|| {
        let names: Vec<String> = logs.iter().map(|l| l.display().to_string()).collect();
        format!("read logs {}", names.join(", "))
    })
}

/// [`log_extents`] of sealed logs read through their sources (named as the mount names
/// them in the error).
pub fn source_extents(logs: &[Source]) -> Result<Option<Vec<(u64, u64)>>> {
    let paths = crate::replicate::local::paths(logs);
    hrl::log::log_extents(&paths)
        .with_context(|| format!("read logs {}", crate::replicate::local::shown(logs)))
}

/// The digests of the replica of `entry` as of its point: the base index, with every block
/// the later shipped logs touch rebuilt (base chunk, then the logs replayed), hashed, and
/// stored as a chunk (a new base refers to it, and until now it lived only in logs).
/// Returns the index and the compressed bytes uploaded for those blocks; `None` when the
/// logs change the disk's size (the caller copies the disk as a new base).
/// An object the rebuild needs that is missing or damaged (a lost chunk, log or index) also
/// gives `None`: the store cannot say what the replica holds, and a copy repairs it.
pub async fn replica_index(
    store: &GroupStore,
    entry: &DiskEntry,
    work: &Path,
) -> Result<Option<(ChunkIndex, u64)>> {
    match rebuild_replica_index(store, entry, work).await {
        Err(e) if crate::replicate::presence::is_lost_or_damaged(&e) => {
            warn!(disk = %entry.name, "the replica cannot be rebuilt from the store ({e:#}): copying the disk as a new base");
            Ok(None)
        }
        r => r,
    }
}

async fn rebuild_replica_index(
    store: &GroupStore,
    entry: &DiskEntry,
    work: &Path,
) -> Result<Option<(ChunkIndex, u64)>> {
    let mut index = fetch_base_index(store, &entry.base).await?;
    if index.disk_size != entry.disk_size {
        return Ok(None);
    }
    if entry.last_seq == entry.base.after_seq {
        return Ok(Some((index, 0)));
    }
    let tmp = tempfile::Builder::new()
        .prefix("replica-")
        .tempdir_in(work)
        .context("create a scratch directory for the replica's logs")?;
    let local = crate::store::logs::fetch_chain(store, entry, tmp.path()).await?;
    let l2 = local.clone();
    let extents = tokio::task::spawn_blocking(move || log_extents(&l2))
        .await
        .context("log reader failed")??;
    let Some(extents) = extents else {
        return Ok(None);
    };
    let touched = blocks_of(&extents, index.block_size, index.digests.len() as u64);
    let scratch = tmp.path().join("replica.img");
    if !replay_on_scratch(store, entry, &index, &touched, local, &scratch).await? {
        return Ok(None);
    }
    let chunks = ChunkStore::new(store);
    let file = File::open(&scratch).with_context(|| format!("open {}", scratch.display()))?;
    let bs = u64::from(index.block_size);
    let mut buf = vec![0u8; bs as usize];
    let mut sent = 0u64;
    for &b in &touched {
        let off = b * bs;
        let len = bs.min(entry.disk_size - off) as usize;
        crate::replicate::copy::read_full_at(&file, &mut buf[..len], off)
            .with_context(|| format!("read {}", scratch.display()))?;
        // Stored as a chunk: a new base refers to it, and until now it lived only in logs.
        let (digest, n) = chunks.insert(&buf[..len]).await?;
        index.digests[b as usize] = digest;
        sent += n;
    }
    info!(disk = %entry.name, rebuilt_blocks = touched.len(), rebuilt_bytes_sent = sent, "replica digests rebuilt from base and logs");
    Ok(Some((index, sent)))
}

/// Builds a sparse scratch image at `scratch`: the `touched` blocks of the base, then the
/// shipped logs replayed on it. False when the logs leave another size than the point's.
async fn replay_on_scratch(
    store: &GroupStore,
    entry: &DiskEntry,
    index: &ChunkIndex,
    touched: &BTreeSet<u64>,
    logs: Vec<PathBuf>,
    scratch: &Path,
) -> Result<bool> {
    let chunks = ChunkStore::new(store);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(scratch)
        .with_context(|| format!("create {}", scratch.display()))?;
    file.set_len(index.disk_size)
        .with_context(|| format!("size {}", scratch.display()))?;
    let bs = u64::from(index.block_size);
    for &b in touched {
        let d = index.digests[b as usize];
        if d == ZERO_DIGEST {
            continue;
        }
        let data = chunks.read(&d).await?;
        std::os::unix::fs::FileExt::write_all_at(&file, &data, b * bs)
            .with_context(|| format!("write {}", scratch.display()))?;
    }
    drop(file);
    let prev = hrl::from_hex::<32>(&entry.base.after_chain_hash)
        .with_context(|| format!("manifest of disk {} has a bad chain hash", entry.name))?;
    let sc = scratch.to_path_buf();
    let summary =
        tokio::task::spawn_blocking(move || hrl::log::apply_logs_after(&logs, &sc, Some(&prev)))
            .await
            .context("apply worker failed")?
            .map_err(|e| {
                Fatal(format!(
                    "shipped logs of disk {} do not verify: {e}",
                    entry.name
                ))
            })?;
    Ok(summary.final_size == entry.disk_size)
}

/// Blocks a full compare reads: those holding data in the source (`file`), and those
/// holding data in the replica (a hole in the source where the replica has data differs).
pub fn full_compare_blocks(file: &File, replica: &ChunkIndex) -> Result<Vec<u64>> {
    let mut set: BTreeSet<u64> = data_blocks(file, replica.disk_size, replica.block_size)
        .into_iter()
        .collect();
    set.extend(
        replica
            .digests
            .iter()
            .enumerate()
            .filter(|(_, d)| **d != ZERO_DIGEST)
            .map(|(i, _)| i as u64),
    );
    Ok(set.into_iter().collect())
}

/// Queues the blocks whose digest in `index` names a chunk the store lacks (lost since it
/// was written) and that the job does not read yet: the new base refers to them.
fn add_lost_blocks(job: &mut ResyncJob, index: &ChunkIndex, known: &HashSet<Digest>) {
    let queued: HashSet<u64> = job.blocks[job.cursor..].iter().copied().collect();
    let lost: Vec<u64> = index
        .digests
        .iter()
        .enumerate()
        .map(|(i, d)| (i as u64, d))
        .filter(|(i, d)| **d != ZERO_DIGEST && !known.contains(*d) && !queued.contains(i))
        .map(|(i, _)| i)
        .collect();
    if !lost.is_empty() {
        warn!(
            blocks = lost.len(),
            "the store lacks chunks of the replica: those blocks are read and uploaded again"
        );
        job.blocks.extend(lost);
        job.blocks[job.cursor..].sort_unstable();
    }
}

/// What the caller lets a running resync know.
pub struct ResyncControl<'a> {
    pub state_dir: &'a Path,
    /// True when the operator paused resyncs: the job is saved and the resync stops.
    pub paused: &'a (dyn Fn() -> bool + Sync),
    /// Called with the progress as blocks complete (about every 2 s and at the end).
    pub progress: &'a (dyn Fn(&ResyncProgress) + Sync),
    /// Test hook: stop (wait to be killed) once this many blocks are done.
    pub stop_after_blocks: Option<u64>,
}

/// A resync stopped because the operator paused it; its work is saved.
#[derive(Debug, thiserror::Error)]
#[error(
    "resync of {0} paused by an operator (`hrl-shipper resync --dir DIR --resume` continues it)"
)]
pub struct ResyncPaused(pub String);

/// Runs (or continues) `job`: reads its remaining blocks of `source` (the disk), replaces the digests of
/// those that differ in `index` (the replica's index, updated in place), uploads their
/// chunks unless `known` (the chunks the store holds) has them, then uploads the new index
/// at `job.index_key`. Blocks whose replica chunk the store lacks are read too (the new base
/// needs them), whether the job planned them or not.
pub async fn run_job(
    store: &GroupStore,
    source: &Source,
    job: &mut ResyncJob,
    index: &mut ChunkIndex,
    known: &Arc<HashSet<Digest>>,
    ctl: &ResyncControl<'_>,
) -> Result<CopyStats> {
    let disk = source.shown.as_path();
    let file = Arc::new(
        source
            .open()
            .with_context(|| format!("open disk {} for the resync", disk.display()))?,
    );
    let size = file
        .metadata()
        .with_context(|| format!("stat disk {}", disk.display()))?
        .len();
    let disk_size = index.disk_size;
    if size != disk_size {
        warn!(disk = %disk.display(), size, replica = disk_size, "disk size changed during the resync; bytes past the replica's size come with the logs");
    }
    let started = std::time::Instant::now();
    let mut last_save = std::time::Instant::now();
    // Every 2 s, but writing the saved index at no more than about 4 MB/s (a 1 TiB disk's
    // index is 128 MiB).
    let save_every =
        std::time::Duration::from_secs((index.digests.len() as u64 * 32 / (4 << 20)).max(2));
    add_lost_blocks(job, index, known);
    let todo: Vec<u64> = job.blocks[job.cursor..].to_vec();
    let results = copy_blocks(
        store,
        file,
        disk,
        todo,
        index.block_size,
        disk_size,
        Arc::clone(known),
    );
    futures::pin_mut!(results);
    let mut stats = CopyStats {
        disk_size,
        blocks: index.digests.len() as u64,
        index_key: job.index_key.clone(),
        ..Default::default()
    };
    let mut new_chunks = 0u64;
    let total = job.blocks.len() as u64;
    job.progress.blocks_total = total;
    job.progress.kind = Some(job.kind);
    while let Some(r) = results.next().await {
        let c = r?;
        let (b, len, digest, sent) = (c.block, c.len, c.digest, c.sent);
        let p = &mut job.progress;
        p.blocks_compared += 1;
        p.bytes_read += len;
        if index.digests[b as usize] != digest {
            p.blocks_differing += 1;
            index.digests[b as usize] = digest;
        }
        if sent > 0 {
            new_chunks += 1;
            p.bytes_sent += sent;
        }
        job.cursor += 1;
        let elapsed = job.elapsed_s + started.elapsed().as_secs_f64();
        let done = job.cursor as u64;
        if done > 0 && elapsed > 0.0 {
            p.eta_s = Some(((total - done) as f64 * elapsed / done as f64) as u64);
        }
        let stop_here = ctl.stop_after_blocks.is_some_and(|n| done == n);
        if last_save.elapsed() >= save_every || done == total || stop_here || (ctl.paused)() {
            last_save = std::time::Instant::now();
            checkpoint(ctl, job, index, elapsed, stop_here)?;
            if done < total && (ctl.paused)() {
                return Err(ResyncPaused(disk.display().to_string()).into());
            }
        }
    }
    stats.uploaded_chunks = new_chunks;
    stats.uploaded_bytes = job.progress.bytes_sent;
    stats.zero_blocks = index.digests.iter().filter(|d| **d == ZERO_DIGEST).count() as u64;
    stats.index_hash = crate::store::index::put_index(store, &job.index_key, index).await?;
    info!(
        disk = %disk.display(),
        kind = ?job.kind,
        compared = job.progress.blocks_compared,
        differing = job.progress.blocks_differing,
        bytes_read = job.progress.bytes_read,
        bytes_sent = job.progress.bytes_sent,
        "resync done"
    );
    Ok(stats)
}

/// Saves `job` (with `elapsed` seconds of work) and `index` so a resync killed or paused
/// from here continues where it stopped, and reports the progress; at the test stop point
/// (`stop_here`), waits there.
fn checkpoint(
    ctl: &ResyncControl<'_>,
    job: &ResyncJob,
    index: &ChunkIndex,
    elapsed: f64,
    stop_here: bool,
) -> Result<()> {
    let mut saved = job.clone();
    saved.elapsed_s = elapsed;
    save_job(ctl.state_dir, &saved, index)?;
    (ctl.progress)(&job.progress);
    if stop_here {
        crate::replicate::stop::at(ctl.state_dir, "mid-resync");
        crate::replicate::stop::pause(ctl.state_dir, "mid-resync-pause");
    }
    Ok(())
}

/// Marker file: resyncs of `dir` are paused by an operator.
pub fn pause_marker(state_dir: &Path, dir: &Path) -> PathBuf {
    let f = crate::service::status::state_file(state_dir, dir);
    f.with_extension("resync-paused")
}

/// Whether an operator paused the resyncs of `dir`.
pub fn is_paused(state_dir: &Path, dir: &Path) -> bool {
    pause_marker(state_dir, dir).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_covers_partial_blocks_and_clamps() {
        let b = blocks_of(&[(0, 1), (4096 * 3 - 1, 2), (4096 * 10, 4096)], 4096, 8);
        assert_eq!(b.into_iter().collect::<Vec<_>>(), vec![0, 2, 3]);
        assert!(blocks_of(&[(5, 0)], 4096, 8).is_empty());
    }

    #[test]
    fn job_round_trips_through_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let job = ResyncJob {
            disk_id: "ab".repeat(16),
            generation: 1,
            after_seq: 4,
            after_chain_hash: "00".repeat(32),
            replica_last_seq: 3,
            index_key: "k".into(),
            kind: ResyncKind::Targeted,
            blocks: vec![1, 5, 6, 7, 9],
            cursor: 2,
            progress: ResyncProgress::default(),
            elapsed_s: 1.5,
            tracker: TrackerInstance::of(std::process::id()),
        };
        let idx = ChunkIndex {
            block_size: 4096,
            disk_size: 40960,
            digests: vec![[7; 32]; 10],
        };
        save_job(dir.path(), &job, &idx).unwrap();
        let (j, i) = load_job(dir.path(), &job.disk_id).unwrap();
        assert_eq!((j.cursor, j.blocks), (2, vec![1, 5, 6, 7, 9]));
        let json = std::fs::read_to_string(
            dir.path()
                .join("resync")
                .join(format!("resync-{}.json", job.disk_id)),
        )
        .unwrap();
        assert!(json.contains("[[1,2],[5,8],[9,10]]"), "{json}");
        assert_eq!(i.digests, idx.digests);
        drop_job(dir.path(), &job.disk_id);
        assert!(load_job(dir.path(), &job.disk_id).is_none());
    }

    #[test]
    fn a_job_answers_only_the_report_of_the_tracker_it_was_planned_under() {
        let me = std::process::id();
        let this = TrackerInstance::of(me);
        assert!(this.is_some());
        let job = |tracker| ResyncJob {
            disk_id: "ab".repeat(16),
            generation: 1,
            after_seq: 4,
            after_chain_hash: "00".repeat(32),
            replica_last_seq: 3,
            index_key: "k".into(),
            kind: ResyncKind::Targeted,
            blocks: vec![1],
            cursor: 0,
            progress: ResyncProgress::default(),
            elapsed_s: 0.0,
            tracker,
        };
        assert!(job(this).answers_report(me, true));
        assert!(
            job(this).answers_report(me + 1, false),
            "no report: nothing newer"
        );
        // A restarted tracker (same pid reused, another start) or another pid: newer report.
        let restarted = this.map(|t| TrackerInstance {
            start_ticks: t.start_ticks + 1,
            ..t
        });
        assert!(!job(restarted).answers_report(me, true));
        assert!(!job(this).answers_report(u32::MAX, true));
        assert!(
            !job(None).answers_report(me, true),
            "a job from before: replaced"
        );
    }
}

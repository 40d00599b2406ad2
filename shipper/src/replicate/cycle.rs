//! One replication cycle of a protected directory — the heart of the shipper:
//!
//! 1. disks without a usable replica (new, new generation, resync required, bitmap mode)
//!    get a base copy: seal, fuzzy copy of the disk (initial.rs), then a second seal whose
//!    logs make the copy consistent;
//! 2. seal every disk at one instant; take each disk's unshipped logs, check they continue
//!    the replica's chain exactly (a gap or altered log is never papered over);
//! 3. coalesce and upload them (immutable objects; uploading twice is harmless);
//! 4. commit the recovery point by writing its manifest last (create-if-absent);
//! 5. ack, so the tracker deletes the shipped logs.
//!
//! A crash anywhere leaves either the old point (logs still pending, shipped again) or the
//! new one (logs acked on the next run, never applied twice).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use hrl::control::{DiskMode, SealedLog};
use hrl::store::{BaseRef, DiskEntry, PointManifest, MANIFEST_VERSION};
use tracing::{info, warn};

use crate::replicate::copy::{copy_disk, CopyStats};
use crate::replicate::tracker::TrackerClient;
use crate::service::retry::Fatal;
use crate::service::status::{save, DirStatus, DiskState, Health};
use crate::store::{compress_file, GroupStore, Put};

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

/// Where a disk's chain starts for this point: after a base, or after the last point.
struct ChainStart {
    base: BaseRef,
    generation: u64,
    after_seq: u64,
    after_hash: String,
}

/// Runs one cycle; `status` is updated (and saved) as it goes.
pub async fn run_cycle(p: &Protected, status: &Mutex<DirStatus>) -> Result<CycleReport> {
    let _lock = crate::service::lock::CycleLock::acquire(&p.state_dir, &p.dir).await?;
    let save_status = || {
        let s = status.lock().map(|s| s.clone());
        if let Ok(s) = s {
            if let Err(e) = save(&p.state_dir, &s) {
                warn!("cannot save status: {e:#}");
            }
        }
    };
    let work = crate::replicate::workdir::fresh(&p.state_dir, &p.store.group)?;

    let last = crate::recover::points::latest(&p.store).await?;
    crate::replicate::owner::ensure(&p.store, &p.dir, last.as_ref()).await?;
    let mut tracker = TrackerClient::connect(&p.dir).await?;
    let tstatus = tracker.status().await?;
    if let Ok(mut s) = status.lock() {
        s.untracked = tstatus.untracked.clone();
    }
    let reconciling = reconcile_state(p, status, last.as_ref());
    if !reconciling.is_empty() {
        save_status();
    }

    // 1. Which disks need a base copy.
    let previous: BTreeMap<String, DiskEntry> = last
        .as_ref()
        .map(|m| {
            m.disks
                .iter()
                .map(|d| (d.disk_id.clone(), d.clone()))
                .collect()
        })
        .unwrap_or_default();
    // Flagged by disk id (by name only for entries without one): a disk renamed over
    // another must not inherit the other's resync.
    let flagged: HashSet<String> = {
        let s = status
            .lock()
            .map_err(|_| anyhow::anyhow!("status lock poisoned"))?;
        s.disks
            .iter()
            .filter(|d| matches!(d.state, DiskState::ResyncRequired | DiskState::Resyncing))
            .map(|d| match d.disk_id.is_empty() {
                false => d.disk_id.clone(),
                true => d.disk.clone(),
            })
            .collect()
    };
    let is_flagged = |name: &str, id: &str| flagged.contains(id) || flagged.contains(name);
    let needs_resync = |d: &hrl::control::DiskStatus| {
        d.mode == DiskMode::Bitmap
            || !d.unclean_extents.is_empty()
            || is_flagged(&d.disk, &d.disk_id)
    };
    // Resyncs wait while an operator paused them (the disks stay in bitmap tracking), and
    // outside the resync window; initial copies and operator requests do not wait.
    let at_once = p.force_resync || p.resync_now;
    let deferral = if at_once {
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
    if let Some(why) = deferral {
        let waiting: Vec<&str> = tstatus
            .disks
            .iter()
            .filter(|d| needs_resync(d) && !reconciling.contains(&d.disk))
            .map(|d| d.disk.as_str())
            .collect();
        mark_waiting(status, &tstatus, &waiting);
        save_status();
        if !waiting.is_empty() {
            return Err(
                ResyncDeferred(format!("{} need(s) a resync, {why}", waiting.join(", "))).into(),
            );
        }
    }
    for d in &tstatus.disks {
        if d.mode == DiskMode::Bitmap {
            info!(disk = %d.disk, "disk is in bitmap mode: switching to log mode for its resync");
            tracker.set_mode(&d.disk, DiskMode::Log).await?;
        }
    }
    // After an unclean tracker stop, marked extents may differ from the logs: resync them.
    let unclean: HashSet<String> = tstatus
        .disks
        .iter()
        .filter(|d| !d.unclean_extents.is_empty())
        .map(|d| d.disk.clone())
        .collect();
    let bitmap_disks: HashSet<String> = tstatus
        .disks
        .iter()
        .filter(|d| d.mode == DiskMode::Bitmap)
        .map(|d| d.disk.clone())
        .collect();

    let first_seal = tracker.seal().await?;
    crate::replicate::stop::at(&p.state_dir, "after-seal");
    let first_pending = tracker.pending().await?;
    let mut jobs_done: Vec<String> = Vec::new();
    let mut known: Option<std::sync::Arc<HashSet<hrl::Digest>>> = None;
    let mut starts: BTreeMap<String, ChainStart> = BTreeMap::new(); // by disk id
    let mut report = CycleReport::default();
    for sealed in &first_seal.disks {
        let prev = previous
            .get(&sealed.disk_id)
            .filter(|e| e.generation == sealed.generation);
        // An interrupted resync against this very replica state continues, unless a newer
        // unclean report (another tracker process) came since it was planned.
        let reports_unclean = unclean.contains(&sealed.disk);
        let saved = crate::replicate::resync::load_job(&p.state_dir, &sealed.disk_id).filter(|(j, _)| {
            let answers = j.answers_report(tstatus.pid, reports_unclean);
            if !answers {
                info!(disk = %sealed.disk, "a newer unclean report replaces the interrupted resync");
            }
            !p.force_resync
                && answers
                && j.generation == sealed.generation
                && prev.is_some_and(|e| e.last_seq == j.replica_last_seq)
        });
        if saved.is_none() {
            crate::replicate::resync::drop_job(&p.state_dir, &sealed.disk_id);
        }
        let needs_base = p.force_resync
            || saved.is_some()
            || prev.is_none()
            || is_flagged(&sealed.disk, &sealed.disk_id)
            || bitmap_disks.contains(&sealed.disk)
            || unclean.contains(&sealed.disk);
        if !needs_base {
            continue;
        }
        let state = if prev.is_some() || previous.contains_key(&sealed.disk_id) {
            DiskState::Resyncing
        } else {
            DiskState::InitialReplication
        };
        {
            let mut s = status
                .lock()
                .map_err(|_| anyhow::anyhow!("status lock poisoned"))?;
            let d = s.disk_mut(&sealed.disk, &sealed.disk_id);
            d.state = state;
            d.disk_size = sealed.disk_size;
        }
        save_status();
        // Chunks the store holds (any disk's: a renamed or copied disk, or a resync, finds
        // most of its blocks there) are not sent again; a lost one is.
        if known.is_none() {
            known = Some(std::sync::Arc::new(
                crate::replicate::presence::stored_chunks(&p.store).await?,
            ));
        }
        let known = known.as_ref().expect("just filled");
        if let Some(prev) = prev {
            let full = {
                let s = status
                    .lock()
                    .map_err(|_| anyhow::anyhow!("status lock poisoned"))?;
                p.force_resync
                    || s.disks
                        .iter()
                        .any(|d| d.disk_id == sealed.disk_id && d.resync_full)
            };
            let planned = match saved {
                Some((mut job, index)) => {
                    job.progress.resumed += 1;
                    info!(disk = %sealed.disk, done = job.cursor, total = job.blocks.len(), "continuing an interrupted resync");
                    Some((job, index))
                }
                None => {
                    plan_resync(
                        p,
                        &mut tracker,
                        status,
                        sealed,
                        prev,
                        full,
                        &tstatus,
                        &first_pending,
                        &work,
                    )
                    .await?
                }
            };
            if let Some((mut job, mut index)) = planned {
                let stats =
                    run_resync(p, status, &sealed.disk, &mut job, &mut index, known).await?;
                starts.insert(
                    sealed.disk_id.clone(),
                    ChainStart {
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
                    },
                );
                jobs_done.push(sealed.disk_id.clone());
                report.base_copies.push(stats);
                continue;
            }
        }
        let index_key = hrl::store::base_key(&sealed.disk_id, sealed.generation, sealed.seq);
        info!(disk = %sealed.disk, state = state.label(), "copying disk into the store");
        let stats =
            copy_with_progress(p, status, &sealed.disk, &sealed.disk_id, &index_key, known).await?;
        info!(
            disk = %sealed.disk,
            uploaded_chunks = stats.uploaded_chunks,
            uploaded_bytes = stats.uploaded_bytes,
            zero_blocks = stats.zero_blocks,
            "base copy done"
        );
        starts.insert(
            sealed.disk_id.clone(),
            ChainStart {
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
            },
        );
        report.base_copies.push(stats);
    }

    // Disks changed outside the tracker before a seal of this cycle miss changes in their
    // logs (unless rebased after that seal): the point carries their last good entry.
    let mut outside: HashSet<String> =
        crate::replicate::bypass::changed_outside(&first_seal, &starts);
    // 2. The point's instant: after a base copy, a second seal makes the copies consistent.
    let seal = if starts.is_empty() {
        first_seal
    } else {
        tracker.seal().await?
    };
    outside.extend(crate::replicate::bypass::changed_outside(
        &seal,
        &BTreeMap::<String, ()>::new(),
    ));
    let pending = tracker.pending().await?;
    let mut by_disk: BTreeMap<String, Vec<SealedLog>> = BTreeMap::new();
    for l in pending {
        by_disk.entry(l.disk_id.clone()).or_default().push(l);
    }
    for logs in by_disk.values_mut() {
        logs.sort_by_key(|l| (l.generation, l.seq));
    }

    let mut entries = Vec::new();
    let mut acks: Vec<(String, String, u64)> = Vec::new();
    for sealed in &seal.disks {
        if outside.contains(&sealed.disk_id) {
            entries.extend(crate::replicate::bypass::carried(&previous, sealed));
            continue;
        }
        let start = match starts.remove(&sealed.disk_id) {
            Some(s) => s,
            None => {
                let prev = previous
                    .get(&sealed.disk_id)
                    .filter(|e| e.generation == sealed.generation)
                    .with_context(|| {
                        format!(
                            "disk {} appeared between two seals; it is copied in the next cycle",
                            sealed.disk
                        )
                    })?;
                ChainStart {
                    base: prev.base.clone(),
                    generation: prev.generation,
                    after_seq: prev.last_seq,
                    after_hash: prev.last_chain_hash.clone(),
                }
            }
        };
        let logs: Vec<&SealedLog> = by_disk
            .get(&sealed.disk_id)
            .map(|v| {
                v.iter()
                    .filter(|l| l.generation == start.generation && l.seq > start.after_seq)
                    .collect()
            })
            .unwrap_or_default();
        if let Err(e) = check_chain(&sealed.disk, &start, &logs, sealed.seq) {
            let msg = format!(
                "{e}; the replica of {} cannot follow it. Run `hrl-shipper sync --dir {} --resync` to take a new base copy (only changed blocks upload)",
                sealed.disk,
                p.dir.display()
            );
            {
                let mut s = status
                    .lock()
                    .map_err(|_| anyhow::anyhow!("status lock poisoned"))?;
                let d = s.disk_mut(&sealed.disk, &sealed.disk_id);
                d.state = DiskState::ResyncRequired;
                d.health = Health::Critical;
                d.last_error = Some(msg.clone());
                d.resync_full = true;
                d.resync_reason = Some("the log chain is broken".into());
            }
            save_status();
            return Err(Fatal(msg).into());
        }
        if logs.iter().any(|l| l.mode == DiskMode::Bitmap) {
            return Err(Fatal(format!(
                "disk {} was tracked in bitmap mode after its base; it needs a resync: run `hrl-shipper sync --dir {} --resync`",
                sealed.disk,
                p.dir.display()
            ))
            .into());
        }
        let (last_seq, last_hash) = match logs.last() {
            Some(l) => {
                let (sealed_bytes, coalesced, uploaded) =
                    ship_logs(p, &work, &sealed.disk_id, start.generation, &logs).await?;
                report.logs_shipped += logs.len();
                report.log_bytes_sealed += sealed_bytes;
                report.log_bytes_coalesced += coalesced;
                report.log_bytes_uploaded += uploaded;
                (l.seq, l.hash.clone())
            }
            None => (start.after_seq, start.after_hash.clone()),
        };
        entries.push(DiskEntry {
            name: sealed.disk.clone(),
            disk_id: sealed.disk_id.clone(),
            generation: start.generation,
            disk_size: sealed.disk_size,
            base: start.base,
            last_seq,
            last_chain_hash: last_hash,
            file: hrl::store::FileAttrs::of_file(&p.dir.join(&sealed.disk)),
        });
        acks.push((
            sealed.disk.clone(),
            sealed.disk_id.clone(),
            sealed.seq.max(last_seq),
        ));
    }
    // Logs of disks that are gone (deleted): nothing to ship, release them after the commit.
    for (disk_id, logs) in &by_disk {
        if !seal.disks.iter().any(|d| &d.disk_id == disk_id) {
            if let Some(l) = logs.last() {
                acks.push((l.disk.clone(), disk_id.clone(), l.seq));
            }
        }
    }
    crate::replicate::stop::at(&p.state_dir, "after-upload");
    crate::replicate::presence::guard_commit(p, status, &entries).await?;

    // 4. Commit: the manifest, written last.
    let id = last.as_ref().map_or(1, |m| m.id + 1);
    if let Ok(mut s) = status.lock() {
        s.committing_point = Some((id, seal.seal_id));
    }
    save_status();
    let manifest = PointManifest {
        version: MANIFEST_VERSION,
        id,
        time_ns: seal.time_ns,
        seal_id: seal.seal_id,
        committed_ns: hrl::now_ns(),
        host: crate::replicate::owner::host_name(),
        disks: entries,
    };
    match crate::store::manifests::commit(&p.store, &manifest).await? {
        Put::Created => {}
        Put::Existed => {
            return Err(Fatal(format!(
            "recovery point {id} of group {:?} was committed by another shipper at the same time; \
                 run only one shipper per group",
            p.store.group
        ))
            .into())
        }
    }
    info!(
        point = id,
        disks = manifest.disks.len(),
        "recovery point committed"
    );
    crate::replicate::stop::at(&p.state_dir, "after-commit");
    for id in &jobs_done {
        crate::replicate::resync::drop_job(&p.state_dir, id);
    }

    // 5. Ack.
    for (disk, disk_id, seq) in &acks {
        if let Err(e) = tracker.ack(disk, Some(disk_id), *seq).await {
            warn!(%disk, seq, "ack failed (the logs are shipped again and skipped next time): {e:#}");
        }
    }
    // The point covers every change marked before its seal: let the tracker clear those marks.
    for e in manifest
        .disks
        .iter()
        .filter(|e| !outside.contains(&e.disk_id))
    {
        if let Err(err) = tracker.clear(&e.name, seal.seal_id).await {
            warn!(disk = %e.name, "clearing dirty marks failed: {err:#}");
        }
    }

    // Status after the point.
    let tstatus = tracker.status().await.ok();
    {
        let mut s = status
            .lock()
            .map_err(|_| anyhow::anyhow!("status lock poisoned"))?;
        s.last_point_id = Some(id);
        s.committing_point = None;
        s.last_point_ns = Some(seal.time_ns);
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
        crate::replicate::bypass::mark_carried(&mut s, &outside, tstatus.as_ref());
    }
    save_status();
    report.point_id = id;
    report.time_ns = seal.time_ns;
    report.disks = manifest.disks.len();
    Ok(report)
}

/// The shipper's state is a cache (reconcile.rs): out of step with the store's latest point,
/// every disk of that point is flagged for a resync against it. Returns the disks flagged.
fn reconcile_state(
    p: &Protected,
    status: &Mutex<DirStatus>,
    last: Option<&PointManifest>,
) -> HashSet<String> {
    match status.lock() {
        Ok(mut s) => crate::replicate::reconcile::reconcile(&mut s, last, p.reconcile)
            .into_iter()
            .collect(),
        Err(_) => HashSet::new(),
    }
}

/// The logs after `start` must be `start.after_seq + 1 ..= sealed_seq`, each naming the one
/// before it.
fn check_chain(
    disk: &str,
    start: &ChainStart,
    logs: &[&SealedLog],
    sealed_seq: u64,
) -> Result<(), String> {
    let mut expect_seq = start.after_seq + 1;
    let mut expect_prev = start.after_hash.as_str();
    for l in logs {
        if l.seq != expect_seq {
            return Err(format!(
                "log chain of disk {disk} is broken: expected log {expect_seq}, found {} (a log is missing)",
                l.seq
            ));
        }
        let named = hrl::from_hex::<32>(&l.prev_hash);
        if named.is_none() || named != hrl::from_hex::<32>(expect_prev) {
            return Err(format!(
                "log chain of disk {disk} is broken: log {} names previous hash {} but the replica ends at {}",
                l.seq, l.prev_hash, expect_prev
            ));
        }
        expect_seq += 1;
        expect_prev = &l.hash;
    }
    if expect_seq <= sealed_seq {
        return Err(format!("log chain of disk {disk} is broken: logs up to {sealed_seq} were sealed but only up to {} are pending", expect_seq - 1));
    }
    Ok(())
}

/// Coalesces `logs` (one disk, consecutive) into one log and uploads it compressed.
/// Returns (sealed bytes, coalesced bytes, uploaded bytes).
async fn ship_logs(
    p: &Protected,
    work: &Path,
    disk_id: &str,
    generation: u64,
    logs: &[&SealedLog],
) -> Result<(u64, u64, u64)> {
    let (first, last) = (logs[0].seq, logs[logs.len() - 1].seq);
    let key = hrl::store::log_key(disk_id, generation, first, last);
    let inputs: Vec<PathBuf> = logs.iter().map(|l| p.dir.join(&l.log)).collect();
    let sealed_bytes: u64 = logs.iter().map(|l| l.bytes).sum();
    let out = work.join(format!("{}-{disk_id}-{first}-{last}.hrl", p.store.group));
    let zst = out.with_extension("hrl.zst");
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&zst);
    let (out2, zst2) = (out.clone(), zst.clone());
    let sizes = tokio::task::spawn_blocking(move || -> Result<(u64, u64)> {
        hrl::log::coalesce(&inputs, &out2).map_err(|e| {
            // A log that does not verify cannot be shipped: its chain must be restarted.
            anyhow::Error::new(Fatal(format!(
                "a sealed log does not verify ({e}); the disk needs a resync: run `hrl-shipper sync --resync`"
            )))
        })?;
        let coalesced = std::fs::metadata(&out2)
            .with_context(|| format!("stat {}", out2.display()))?
            .len();
        let compressed = compress_file(&out2, &zst2)?;
        Ok((coalesced, compressed))
    })
    .await
    .context("coalesce worker failed")?;
    let _ = std::fs::remove_file(&out);
    let result = match sizes {
        Ok((coalesced, uploaded)) => p
            .store
            .put_file_immutable(&key, &zst)
            .await
            .map(|_| (sealed_bytes, coalesced, uploaded))
            .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&zst);
    result
}
async fn copy_with_progress(
    p: &Protected,
    status: &Mutex<DirStatus>,
    disk: &str,
    disk_id: &str,
    index_key: &str,
    known: &std::sync::Arc<HashSet<hrl::Digest>>,
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
                if let Ok(mut s) = status.lock() {
                    s.disk_mut(disk, disk_id).progress = Some((done, total));
                    let _ = save(&p.state_dir, &s);
                }
            }
        }
    };
    let r = copy_disk(
        &p.store,
        &p.dir.join(disk),
        p.chunk_size,
        index_key,
        known,
        &progress,
    )
    .await;
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
    tracker: &mut TrackerClient,
    status: &Mutex<DirStatus>,
    sealed: &SealedLog,
    prev: &DiskEntry,
    full: bool,
    tstatus: &hrl::control::MountStatus,
    pending: &[SealedLog],
    work: &Path,
) -> Result<Option<(crate::replicate::resync::ResyncJob, hrl::chunk::ChunkIndex)>> {
    use crate::replicate::resync::{
        blocks_of, full_compare_blocks, log_extents, ResyncJob, ResyncKind,
    };
    let Some((replica, rebuilt_sent)) =
        crate::replicate::resync::replica_index(&p.store, prev, work).await?
    else {
        info!(disk = %sealed.disk, "the replica's size changed since its base: copying the disk");
        return Ok(None);
    };
    let disk_path = p.dir.join(&sealed.disk);
    let size = std::fs::metadata(&disk_path)
        .with_context(|| format!("stat disk {}", disk_path.display()))?
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
        let mut extents = tracker.dirty(&sealed.disk).await?;
        if let Some(t) = tstatus.disks.iter().find(|d| d.disk == sealed.disk) {
            extents.extend(t.unclean_extents.iter().copied());
        }
        if let Ok(s) = status.lock() {
            if let Some(d) = s.disks.iter().find(|d| d.disk_id == sealed.disk_id) {
                extents.extend(d.resync_extents.iter().copied());
            }
        }
        let logs: Vec<PathBuf> = pending
            .iter()
            .filter(|l| {
                l.disk_id == sealed.disk_id
                    && l.generation == sealed.generation
                    && l.seq > prev.last_seq
                    && l.seq <= sealed.seq
            })
            .map(|l| p.dir.join(&l.log))
            .collect();
        let from_logs = tokio::task::spawn_blocking(move || log_extents(&logs))
            .await
            .context("log reader failed")?;
        match from_logs {
            Ok(Some(e)) => {
                extents.extend(e);
                blocks = blocks_of(&extents, replica.block_size, count)
                    .into_iter()
                    .collect();
            }
            Ok(None) => kind = ResyncKind::Full,
            Err(e) => {
                warn!(disk = %sealed.disk, "cannot read its pending logs, comparing every block: {e:#}");
                kind = ResyncKind::Full;
            }
        }
    }
    if kind == ResyncKind::Full {
        let (d, r) = (disk_path.clone(), replica.clone());
        blocks = tokio::task::spawn_blocking(move || full_compare_blocks(&d, &r))
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
        progress: crate::replicate::resync::ResyncProgress {
            rebuilt_bytes_sent: rebuilt_sent,
            ..Default::default()
        },
        elapsed_s: 0.0,
        tracker: crate::replicate::resync::TrackerInstance::of(tstatus.pid),
    };
    crate::replicate::resync::save_job(&p.state_dir, &job, &replica)?;
    Ok(Some((job, replica)))
}

/// Runs a resync job, mirroring its progress into the status.
async fn run_resync(
    p: &Protected,
    status: &Mutex<DirStatus>,
    disk: &str,
    job: &mut crate::replicate::resync::ResyncJob,
    index: &mut hrl::chunk::ChunkIndex,
    known: &std::sync::Arc<HashSet<hrl::Digest>>,
) -> Result<CopyStats> {
    let disk_id = job.disk_id.clone();
    let progress = |pr: &crate::replicate::resync::ResyncProgress| {
        if let Ok(mut s) = status.lock() {
            let d = s.disk_mut(disk, &disk_id);
            d.state = DiskState::Resyncing;
            d.resync = Some(pr.clone());
            let _ = save(&p.state_dir, &s);
        }
    };
    let paused = || !p.resync_now && crate::replicate::resync::is_paused(&p.state_dir, &p.dir);
    let stop_after_blocks =
        crate::replicate::stop::armed("mid-resync").then(|| (job.blocks.len() as u64 / 2).max(1));
    let ctl = crate::replicate::resync::ResyncControl {
        state_dir: &p.state_dir,
        paused: &paused,
        progress: &progress,
        stop_after_blocks: stop_after_blocks.filter(|n| *n > job.cursor as u64),
    };
    let r = crate::replicate::resync::run_job(&p.store, &p.dir.join(disk), job, index, known, &ctl)
        .await;
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

/// Disks whose resync waits (window, pause): state "resync required", with the reason when
/// none is recorded yet.
fn mark_waiting(status: &Mutex<DirStatus>, t: &hrl::control::MountStatus, waiting: &[&str]) {
    let Ok(mut s) = status.lock() else {
        return;
    };
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

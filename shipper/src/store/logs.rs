//! Shipped logs: which stored logs lead from a base to a point, fetching them (a few at
//! once, chain order kept), and folding the verified chain into the disk's model at the
//! point (what restore and mount read), and loading one disk of a point for either of them
//! ([`load_disk`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use hrl::chunk::ChunkIndex;

use futures::{StreamExt, TryStreamExt};
use hrl::log::{DiskModel, LocalLog, LogError};
use hrl::store::{log_key, log_path, logs_dir, parse_log_name, DiskEntry};

use super::index::fetch_base_index;
use super::{Fetched, GroupStore, Op, StoreError, StoreResult};
use crate::service::retry::Fatal;

/// Logs downloaded at once: a chain is mostly small logs, where the round trip, not the
/// bytes, is the cost.
const LOGS_IN_FLIGHT: usize = 8;

/// A log that decompresses to at most this many bytes is kept in memory by a restore
/// ([`LogMemory::RESTORE`]); a larger one goes to a scratch file.
pub const LOG_IN_MEMORY_MAX: u64 = 16 << 20;

/// The most bytes of one chain a restore keeps in memory (past it, logs go to files).
pub const CHAIN_IN_MEMORY_MAX: u64 = 256 << 20;

/// How many of a chain's logs may be kept in memory instead of scratch files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogMemory {
    /// Largest log kept in memory (decompressed bytes); 0: every log goes to a file.
    pub each: u64,
    /// Bytes of the whole chain kept in memory at most.
    pub total: u64,
}

impl LogMemory {
    /// Files only (the mount, which keeps its logs for as long as it runs).
    pub const NONE: LogMemory = LogMemory { each: 0, total: 0 };
    /// A restore: small logs in memory, read from there to verify and to write the disk.
    pub const RESTORE: LogMemory = LogMemory {
        each: LOG_IN_MEMORY_MAX,
        total: CHAIN_IN_MEMORY_MAX,
    };
}

/// A disk's logs fetched for a point: the local copies in chain order (files, or bytes in
/// memory) and the store key each came from (what an error must name).
#[derive(Debug, Clone, Default)]
pub struct Chain {
    pub logs: Vec<LocalLog>,
    pub keys: Vec<String>,
}

/// The stored logs (first, last sequence) that lead from `entry`'s base to its point, the
/// fewest of them; `None` when the store lacks some.
pub async fn chain_ranges(
    store: &GroupStore,
    entry: &DiskEntry,
) -> StoreResult<Option<Vec<(u64, u64)>>> {
    if entry.last_seq <= entry.base.after_seq {
        return Ok(Some(Vec::new()));
    }
    let names = store
        .list_names(&logs_dir(&entry.disk_id, entry.generation))
        .await?;
    let ranges: Vec<(u64, u64)> = names.iter().filter_map(|n| parse_log_name(n)).collect();
    Ok(log_path(&ranges, entry.base.after_seq, entry.last_seq))
}

/// Keys of the stored logs of `entry`'s disk generation that end after its point: none of
/// the points up to `entry`'s needs them. After a takeover at that point they are a fenced
/// owner's, and would shadow the new owner's logs of the same sequences.
pub async fn after_point(store: &GroupStore, entry: &DiskEntry) -> StoreResult<Vec<String>> {
    let names = store
        .list_names(&logs_dir(&entry.disk_id, entry.generation))
        .await?;
    Ok(names
        .iter()
        .filter_map(|n| parse_log_name(n))
        .filter(|&(_, last)| last > entry.last_seq)
        .map(|r| key(entry, r))
        .collect())
}

/// The key of one stored log of `entry`.
pub fn key(entry: &DiskEntry, (first, last): (u64, u64)) -> String {
    log_key(&entry.disk_id, entry.generation, first, last)
}

/// Downloads (decompressed) the logs from `entry`'s base to its point into `dir`, in chain
/// order; a gap in the store is [`StoreError::NotFound`] naming the missing sequences.
pub async fn fetch_chain(
    store: &GroupStore,
    entry: &DiskEntry,
    dir: &Path,
) -> StoreResult<Vec<PathBuf>> {
    let chain = fetch(store, entry, dir, LogMemory::NONE).await?;
    Ok(chain.logs.iter().map(|l| l.path().to_path_buf()).collect())
}

/// [`fetch_chain`] with the store key of each log, [`LOGS_IN_FLIGHT`] downloads at once,
/// those `memory` allows kept in memory (each named by the file it would have been).
pub async fn fetch(
    store: &GroupStore,
    entry: &DiskEntry,
    dir: &Path,
    memory: LogMemory,
) -> StoreResult<Chain> {
    let path = chain_ranges(store, entry)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            path: format!(
                "logs {}..={} of disk {}",
                entry.base.after_seq + 1,
                entry.last_seq,
                entry.name
            ),
            url: store.target.url.clone(),
        })?;
    let held = AtomicU64::new(0);
    let held = &held;
    let jobs = path.into_iter().map(|(first, last)| {
        let lp = dir.join(format!("{}-{first}-{last}.hrl", entry.disk_id));
        let k = key(entry, (first, last));
        async move {
            // Room for the largest log kept in memory is taken before the download, what
            // it did not need given back after: the chain never holds more than `total`.
            let room = reserve(held, memory.each, memory.total);
            let log = match store.get_zstd(&k, &lp, room).await {
                Ok(Fetched::Memory(bytes)) => {
                    held.fetch_sub(room.saturating_sub(bytes.len() as u64), Ordering::Relaxed);
                    LocalLog::in_memory(&lp, bytes)
                }
                Ok(Fetched::File(_)) => {
                    held.fetch_sub(room, Ordering::Relaxed);
                    LocalLog::open(&lp).map_err(|e| {
                        StoreError::local(Op::Get, store.path(&k).as_ref(), &store.target.url, e)
                    })?
                }
                Err(e) => return Err(e),
            };
            Ok::<_, StoreError>((log, k))
        }
    });
    let fetched: Vec<(LocalLog, String)> = futures::stream::iter(jobs)
        .buffered(LOGS_IN_FLIGHT)
        .try_collect()
        .await?;
    let (logs, keys) = fetched.into_iter().unzip();
    Ok(Chain { logs, keys })
}

/// Takes `want` bytes of the `total` that `held` counts, if they fit: what a download may
/// keep in memory (0: it goes to a file).
fn reserve(held: &AtomicU64, want: u64, total: u64) -> u64 {
    let fits = held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
        h.checked_add(want).filter(|&n| n <= total)
    });
    match fits {
        Ok(_) => want,
        Err(_) => 0,
    }
}

/// One disk of a point, loaded for reading (by restore and by mount).
pub struct LoadedDisk {
    /// The base's chunk index (hash-checked).
    pub index: ChunkIndex,
    /// Which source holds each byte of the disk at the point.
    pub model: DiskModel,
    /// The local copies of the point's logs (files, or bytes in memory), in chain order.
    pub logs: Vec<LocalLog>,
    /// Bytes of those copies (uncompressed).
    pub log_bytes: u64,
}

/// Loads disk `entry` of a point: its base index and its logs (fetched into `dir`, created
/// when there are any; those `memory` allows kept in memory) together, the chain verified
/// and folded into the model off the async threads, and the model's size checked against
/// the size the point recorded at its seal.
pub async fn load_disk(
    store: &GroupStore,
    entry: &DiskEntry,
    dir: &Path,
    memory: LogMemory,
) -> anyhow::Result<LoadedDisk> {
    let has_logs = entry.last_seq > entry.base.after_seq;
    if has_logs {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let logs = async {
        match has_logs {
            true => fetch(store, entry, dir, memory).await,
            false => Ok(Chain::default()),
        }
    };
    let (index, chain) = tokio::try_join!(fetch_base_index(store, &entry.base), logs)?;
    let (s2, e2, base_size) = (store.clone(), entry.clone(), index.disk_size);
    let (model, chain) = tokio::task::spawn_blocking(move || {
        let model = fold_chain(&s2, &e2, base_size, &chain);
        (model, chain)
    })
    .await
    .context("log worker failed")?;
    let name = hrl::display::escaped(&entry.name);
    let model = model.with_context(|| format!("shipped logs of disk {name} do not verify"))?;
    // The logs leave the size they describe; it must be the disk's size at the seal.
    if model.size() != entry.disk_size {
        return Err(Fatal(format!(
            "disk {name} restores to {} bytes, but the point recorded {} bytes at its seal; the store is inconsistent",
            model.size(),
            entry.disk_size
        ))
        .into());
    }
    let log_bytes = chain.logs.iter().map(|l| l.len().unwrap_or(0)).sum();
    Ok(LoadedDisk {
        index,
        model,
        logs: chain.logs,
        log_bytes,
    })
}

/// The disk of `entry` at its point as a model: the base (`base_size` bytes) with every
/// record of `chain` laid over it, read once, each log verified on the way and the chain
/// checked from the base's chain hash to the point's (blocking: call it off the async
/// threads). A log that does not verify is [`StoreError::Damaged`] naming its object.
pub fn fold_chain(
    store: &GroupStore,
    entry: &DiskEntry,
    base_size: u64,
    chain: &Chain,
) -> StoreResult<DiskModel> {
    let mut model = DiskModel::new(base_size);
    if chain.logs.is_empty() && entry.last_seq <= entry.base.after_seq {
        return Ok(model);
    }
    let bad_entry = |why: &str| StoreError::Damaged {
        what: "the manifest entry of disk".into(),
        path: hrl::display::escaped(&entry.name).to_string(),
        why: why.into(),
    };
    let prev = hrl::from_hex::<32>(&entry.base.after_chain_hash)
        .ok_or_else(|| bad_entry("its base's chain hash is not 64 hex digits"))?;
    let want = hrl::from_hex::<32>(&entry.last_chain_hash)
        .ok_or_else(|| bad_entry("its chain hash is not 64 hex digits"))?;
    let verified =
        hrl::log::verify_local_chain_with(&chain.logs, Some(&prev), |i, meta, record| {
            model.apply(i, meta, &record)
        })
        .map_err(|e| log_error(store, chain, e))?;
    let got = verified.last().map(|v| v.chain_hash());
    if got != Some(want) {
        let last = chain.keys.last().map_or("logs", String::as_str);
        return Err(store.damaged(
            "log chain ending at",
            last,
            format!(
                "it ends at chain hash {}, but the point names {}",
                got.map(|h| hrl::to_hex(&h)).unwrap_or_default(),
                entry.last_chain_hash
            ),
        ));
    }
    Ok(model)
}

/// The store's view of a log that failed: damage of the object it came from (the local
/// copy's path replaced by the object's), or a local I/O error.
fn log_error(store: &GroupStore, chain: &Chain, e: LogError) -> StoreError {
    let local = e.path().to_path_buf();
    let k = chain
        .logs
        .iter()
        .position(|l| l.path() == local)
        .and_then(|i| chain.keys.get(i))
        .map_or("logs", String::as_str);
    let msg = e
        .to_string()
        .replace(&local.display().to_string(), "the log");
    match e {
        LogError::Io { .. } => {
            StoreError::local(Op::Get, store.path(k).as_ref(), &store.target.url, msg)
        }
        _ => store.damaged("log", k, format!("it does not verify: {msg}")),
    }
}

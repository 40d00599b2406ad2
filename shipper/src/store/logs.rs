//! Shipped logs: which stored logs lead from a base to a point, and fetching them.

use std::path::{Path, PathBuf};

use hrl::store::{log_key, log_path, logs_dir, parse_log_name, DiskEntry};

use super::{GroupStore, StoreError, StoreResult};

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
    let mut local = Vec::new();
    for (first, last) in path {
        let lp = dir.join(format!("{}-{first}-{last}.hrl", entry.disk_id));
        store
            .get_zstd_to_file(&key(entry, (first, last)), &lp)
            .await?;
        local.push(lp);
    }
    Ok(local)
}

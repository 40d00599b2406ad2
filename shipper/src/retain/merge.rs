//! Merging old logs into a new base: each disk of the oldest kept point gets a base as of
//! that point (its old base's index with the blocks its logs touched rebuilt from the old
//! chunks and the logs, `resync::replica_index`), stored beside the old one
//! (`g<gen>-b<seq>/merged.idx`); then every kept point whose chain passes through that
//! state is rewritten to start from it, newest first and the oldest kept point last.
//!
//! Nothing is deleted here. Before a manifest is rewritten, the base it will name is in the
//! store, and the objects its old version names stay until [`super::sweep`] collects them,
//! so a kill at any step leaves every point restorable. A rerun finds the merged index
//! already there and rewrites the points still naming an older base.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use hrl::store::{merged_base_key, BaseRef, DiskEntry, PointManifest};
use tracing::{info, warn};

use crate::store::GroupStore;

/// What a merge did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct MergeReport {
    /// Disks given a new base.
    pub disks_merged: u64,
    /// Manifests rewritten to start from a new base.
    pub points_rewritten: u64,
    /// Compressed bytes of rebuilt chunks uploaded.
    pub bytes_sent: u64,
}

/// Merges the logs up to `kept[0]` (the oldest kept point; `kept` ascending by id) into new
/// bases and rewrites the kept points to use them. Points in `leased` (read by someone, or
/// fenced) are left as they are (and such an oldest point is not merged).
pub async fn merge(
    store: &GroupStore,
    kept: &mut [PointManifest],
    leased: &BTreeSet<u64>,
    work: &Path,
    state_dir: &Path,
) -> Result<MergeReport> {
    let mut report = MergeReport::default();
    let Some(oldest) = kept.first().cloned() else {
        return Ok(report);
    };
    if leased.contains(&oldest.id) {
        info!(
            point = oldest.id,
            "the oldest kept point is leased by a reader: not merged now"
        );
        return Ok(report);
    }
    let mut changed = BTreeSet::new();
    for entry in oldest
        .disks
        .iter()
        .filter(|e| e.last_seq > e.base.after_seq)
    {
        let Some((base, sent)) = merged_base(store, entry, work).await? else {
            continue;
        };
        report.disks_merged += 1;
        report.bytes_sent += sent;
        changed.extend(rebase(kept, leased, entry, &base));
    }
    // Newest first, the oldest kept point last: a rerun after a kill finds the oldest one
    // still naming the old base and finishes the rest.
    for m in kept.iter().rev().filter(|m| changed.contains(&m.id)) {
        crate::store::manifests::rewrite(store, m).await?;
        report.points_rewritten += 1;
        crate::replicate::stop::at(state_dir, "mid-merge");
    }
    Ok(report)
}

/// Points every kept point (but those in `leased`) whose chain passes through `entry` (a
/// disk of the oldest kept point) at `base`; returns the ids of the points changed.
fn rebase(
    kept: &mut [PointManifest],
    leased: &BTreeSet<u64>,
    entry: &DiskEntry,
    base: &BaseRef,
) -> BTreeSet<u64> {
    let mut changed = BTreeSet::new();
    for m in kept.iter_mut().filter(|m| !leased.contains(&m.id)) {
        for d in m.disks.iter_mut().filter(|d| passes_through(d, entry)) {
            d.base = base.clone();
            changed.insert(m.id);
        }
    }
    changed
}

/// What a merge of `kept` (ascending by id; `leased` as for [`merge`]) would do, without
/// reading or writing anything: the kept points as it would leave them, each merged base
/// named by its key (`index_hash` empty: not built), and for each such key the base it
/// replaces (whose chunks stand in for its own, unknown until built). A disk the merge
/// would find it cannot rebuild (its logs change its size, an object is lost) is counted
/// as merged.
pub struct Plan {
    pub kept: Vec<PointManifest>,
    pub replaces: HashMap<String, BaseRef>,
    pub disks: u64,
    pub points_rewritten: u64,
}

pub fn plan(kept: &[PointManifest], leased: &BTreeSet<u64>) -> Plan {
    let mut out = Plan {
        kept: kept.to_vec(),
        replaces: HashMap::new(),
        disks: 0,
        points_rewritten: 0,
    };
    let Some(oldest) = kept.first().filter(|m| !leased.contains(&m.id)) else {
        return out;
    };
    let mut changed = BTreeSet::new();
    for entry in oldest
        .disks
        .iter()
        .filter(|e| e.last_seq > e.base.after_seq)
    {
        let base = BaseRef {
            index_key: merged_base_key(&entry.disk_id, entry.generation, entry.last_seq),
            index_hash: String::new(),
            block_size: entry.base.block_size,
            after_seq: entry.last_seq,
            after_chain_hash: entry.last_chain_hash.clone(),
        };
        out.replaces
            .insert(base.index_key.clone(), entry.base.clone());
        out.disks += 1;
        changed.extend(rebase(&mut out.kept, leased, entry, &base));
    }
    out.points_rewritten = changed.len() as u64;
    out
}

/// Whether `d` (a disk of a kept point) reaches the state of `at` (that disk in the oldest
/// kept point) through its chain: same disk and generation, a base from before it, and a
/// last log at or after it. Bases only move forward along a generation's chain, so such a
/// point's logs up to `at.last_seq` are the very ones `at` applies.
fn passes_through(d: &DiskEntry, at: &DiskEntry) -> bool {
    d.disk_id == at.disk_id
        && d.generation == at.generation
        && d.base.after_seq < at.last_seq
        && d.last_seq >= at.last_seq
}

/// The merged base of `entry` as of its point: found in the store (an earlier run wrote
/// it) or rebuilt and uploaded. `None` when it cannot be rebuilt (the logs change the
/// disk's size, or an object is lost): the disk keeps its base and logs.
async fn merged_base(
    store: &GroupStore,
    entry: &DiskEntry,
    work: &Path,
) -> Result<Option<(BaseRef, u64)>> {
    let key = merged_base_key(&entry.disk_id, entry.generation, entry.last_seq);
    let (hash, block_size, sent) = if store.exists(&key).await? {
        // Hash of the stored (in an encrypted group: sealed) bytes, as the manifest names it.
        let bytes = store.get(&key).await?;
        let index = hrl::chunk::ChunkIndex::decode(&bytes)
            .map_err(|e| store.damaged("merged chunk index", &key, e.to_string()))?;
        let hash = crate::store::index::stored_index_hash(store, &key).await?;
        (hash, index.block_size, 0)
    } else {
        std::fs::create_dir_all(work)
            .with_context(|| format!("create the scratch directory {}", work.display()))?;
        match crate::replicate::resync::replica_index(store, entry, work).await? {
            None => {
                warn!(disk = %entry.name, "not merged: its logs change the disk's size or the store lacks an object they need");
                return Ok(None);
            }
            Some((index, sent)) => {
                let hash = crate::store::index::put_index(store, &key, &index).await?;
                (hash, index.block_size, sent)
            }
        }
    };
    info!(disk = %entry.name, after_seq = entry.last_seq, "merged base ready");
    Ok(Some((
        BaseRef {
            index_key: key,
            index_hash: hash,
            block_size,
            after_seq: entry.last_seq,
            after_chain_hash: entry.last_chain_hash.clone(),
        },
        sent,
    )))
}

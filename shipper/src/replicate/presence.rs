//! Which objects a recovery point needs, and whether the store still holds them. A point is
//! committed only when every object it needs is there: each disk's base index (present, its
//! hash the one the point names), every chunk that index names, and the shipped logs from
//! the base to the point. An object lost (or an index damaged) after it was written — a
//! deleted chunk, a lifecycle rule, a bad copy of the bucket — otherwise makes every later
//! point of that disk unrestorable while the service reports Normal.
//!
//! Cost per cycle: a listing of the group's chunks (one request per 1000 chunks on S3), one
//! GET of each disk's index, one listing of each disk's logs. Damage inside a chunk or a log
//! (present, wrong bytes) needs a download to be seen: `hrl-shipper verify` finds it.

use std::collections::HashSet;

use anyhow::{Context, Result};
use hrl::chunk::ZERO_DIGEST;
use hrl::store::DiskEntry;
use hrl::Digest;

use crate::service::retry::Fatal;
use crate::service::status::{DiskState, Health, StatusHandle};
use crate::store::chunks::ChunkStore;
use crate::store::{GroupStore, StoreError};

/// The digests of every chunk the group's store holds (listed, not downloaded).
pub async fn stored_chunks(store: &GroupStore) -> Result<HashSet<Digest>> {
    Ok(ChunkStore::new(store).list().await?)
}

/// What the store lacks for `entry`'s point, one line per problem (empty: all there).
/// `chunks` is the set [`stored_chunks`] listed.
pub async fn missing_for(
    store: &GroupStore,
    entry: &DiskEntry,
    chunks: &HashSet<Digest>,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let key = &entry.base.index_key;
    match crate::store::index::fetch_base_index(store, &entry.base).await {
        Ok(index) => {
            let lacking: Vec<&Digest> = index
                .digests
                .iter()
                .filter(|d| **d != ZERO_DIGEST && !chunks.contains(*d))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            if let Some(first) = lacking.first() {
                problems.push(format!(
                    "{} chunk(s) of its base are missing from the store (e.g. {})",
                    lacking.len(),
                    store.path(&hrl::store::chunk_key(first))
                ));
            }
        }
        Err(StoreError::Damaged { .. }) => {
            problems.push(format!("its base index {} is damaged", store.path(key)))
        }
        Err(StoreError::NotFound { .. }) => {
            problems.push(format!("its base index {} is missing", store.path(key)))
        }
        Err(e) => return Err(e.into()),
    }
    if crate::store::logs::chain_ranges(store, entry)
        .await?
        .is_none()
    {
        problems.push(format!(
            "its shipped logs {}..={} are not all in the store",
            entry.base.after_seq + 1,
            entry.last_seq
        ));
    }
    Ok(problems)
}

/// Checks every disk of a point about to be committed; returns the disks (name, what is
/// missing) that cannot be restored from it.
pub async fn check_point(
    store: &GroupStore,
    entries: &[DiskEntry],
) -> Result<Vec<(String, String)>> {
    let chunks = stored_chunks(store)
        .await
        .context("list the store's chunks to check the point")?;
    let mut bad = Vec::new();
    for e in entries {
        let problems = missing_for(store, e, &chunks).await?;
        if !problems.is_empty() {
            bad.push((e.name.clone(), problems.join("; ")));
        }
    }
    Ok(bad)
}

/// True when `err` says a store object is missing or damaged (as opposed to the store being
/// unreachable), or the store's logs do not verify: the replica cannot be rebuilt from the
/// store, so a resync copies the disk.
pub fn is_lost_or_damaged(err: &anyhow::Error) -> bool {
    crate::store::error::store_error_in(err).is_some_and(StoreError::is_lost_or_damaged)
        || err.chain().any(|c| c.downcast_ref::<Fatal>().is_some())
}

/// Refuses to commit a point that needs objects the store lacks: the disks concerned go to
/// "resync required" (Critical), and the error says what is missing and what to do.
pub async fn guard_commit(
    store: &GroupStore,
    dir: &std::path::Path,
    status: StatusHandle<'_>,
    entries: &[DiskEntry],
) -> Result<()> {
    let bad = check_point(store, entries).await?;
    if bad.is_empty() {
        return Ok(());
    }
    let what: Vec<String> = bad
        .iter()
        .map(|(d, why)| format!("disk {d}: {why}"))
        .collect();
    let msg = format!(
        "no recovery point committed: the store lacks objects it needs ({}); run `hrl-shipper sync --dir {} --resync` to upload a new base of those disks (`hrl-shipper verify --point all` lists the older points affected)",
        what.join("; "),
        dir.display()
    );
    status.edit(|s| {
        for (disk, why) in &bad {
            let id = entries
                .iter()
                .find(|e| &e.name == disk)
                .map_or("", |e| e.disk_id.as_str());
            let d = s.disk_mut(disk, id);
            d.state = DiskState::ResyncRequired;
            d.health = Health::Critical;
            d.last_error = Some(msg.clone());
            d.resync_reason = Some(format!("store objects missing: {why}"));
        }
    });
    Err(Fatal(msg).into())
}

//! `verify`: checks that recovery points can be restored, without writing any disk: every
//! base index (hash), every chunk it names (present, valid zstd, content matches its digest),
//! and every disk's log chain from its base to the point (present, sealed, each log naming the
//! one before, ending at the chain hash the point records), and the size the base and logs
//! leave, which must be the size the point recorded at its seal (what restore checks last).
//! Each object is checked once: `verify` fails on every point `restore` would refuse.
//! [`verify_selected`] (the `verify` command) reads each point under a lease, as restore
//! and mount do, so a prune running meanwhile keeps what it reads.

use std::collections::{BTreeSet, HashMap};

use anyhow::{Context, Result};
use futures::StreamExt;
use hrl::chunk::{ChunkIndex, ZERO_DIGEST};
use hrl::log::SizeEffect;
use hrl::store::{DiskEntry, PointManifest};

use crate::recover::points;
use crate::store::chunks::ChunkStore;
use crate::store::leases::{self, Held};
use crate::store::{GroupStore, StoreError};

/// Chunk downloads in flight.
const IN_FLIGHT: usize = 16;

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub points: usize,
    pub disks: usize,
    pub chunks: usize,
    pub logs: usize,
    /// What is wrong, one line each; empty when everything verified.
    pub problems: Vec<String>,
    /// Points listed but removed (by a prune) before their lease was taken: not verified.
    pub gone: Vec<u64>,
}

/// Verifies the points `which` names: `all`, or one as [`points::select`] reads it. Each is
/// leased (`leases::hold`, purpose `verify`) before its manifest is read for the check and
/// until the check ends, so a prune meanwhile keeps it whole and rewrites nothing it names
/// (docs/store-layout.md, "Retention"). A point of `all` removed between the listing and
/// its lease is skipped (in `gone`). A store this user may only read gets no lease (a
/// warning; the grace period still covers the read).
pub async fn verify_selected(store: &GroupStore, which: &str) -> Result<VerifyReport> {
    let all = which.trim() == "all";
    let ids = if all {
        points::list_ids(store).await?
    } else {
        vec![points::select(store, which).await?.id]
    };
    if ids.is_empty() {
        anyhow::bail!(
            "group {:?} in {} has no recovery points",
            store.group,
            store.target.url
        );
    }
    let held = hold_all(store, &ids).await;
    let r = verify_leased(store, &ids, all).await;
    futures::future::join_all(held.into_iter().map(Held::release)).await;
    r
}

/// Leases on `ids`; none once one cannot be written (a read-only store: a warning).
async fn hold_all(store: &GroupStore, ids: &[u64]) -> Vec<Held> {
    let results: Vec<_> = futures::stream::iter(
        ids.iter()
            .map(|&id| async move { leases::hold(store, id, "verify").await }),
    )
    .buffered(IN_FLIGHT)
    .collect()
    .await;
    let mut held = Vec::new();
    for r in results {
        match r {
            Ok(h) => held.push(h),
            Err(e) => {
                tracing::warn!("verifying without a lease (a prune may collect a point meanwhile once its grace period passes): {e}");
                futures::future::join_all(held.into_iter().map(Held::release)).await;
                return Vec::new();
            }
        }
    }
    held
}

/// Reads the (leased) manifests of `ids` and verifies them.
async fn verify_leased(store: &GroupStore, ids: &[u64], all: bool) -> Result<VerifyReport> {
    let mut manifests = Vec::new();
    let mut gone = Vec::new();
    for &id in ids {
        match points::load(store, id).await {
            Ok(m) => manifests.push(m),
            Err(StoreError::NotFound { .. }) if all => gone.push(id),
            Err(e) => return Err(e.into()),
        }
    }
    // Test stop point: every lease taken and every manifest read, nothing else yet.
    let state_dir: std::path::PathBuf = std::env::var_os("HRL_STATE_DIR").map_or_else(
        || crate::service::status::DEFAULT_STATE_DIR.into(),
        Into::into,
    );
    crate::replicate::stop::pause(&state_dir, "verify-leased");
    let mut r = verify_points(store, &manifests).await?;
    r.gone = gone;
    Ok(r)
}

/// Verifies `points` (their disks, chunks and logs).
pub async fn verify_points(store: &GroupStore, points: &[PointManifest]) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        points: points.len(),
        ..Default::default()
    };
    let mut chunks: BTreeSet<hrl::Digest> = BTreeSet::new();
    // Checked indexes: key -> the disk size they start at (None: the index is bad).
    let mut indexes_seen: HashMap<String, Option<u64>> = HashMap::new();
    // Verified logs: key -> (previous chain hash it names, its chain hash, its size effect).
    let mut logs_seen: HashMap<String, LogSeen> = HashMap::new();
    let tmp = tempfile::Builder::new()
        .prefix("hrl-verify-")
        .tempdir()
        .context("create a temporary directory for logs")?;
    for point in points {
        for d in &point.disks {
            report.disks += 1;
            let at = format!("point {} disk {}", point.id, d.name);
            if !indexes_seen.contains_key(&d.base.index_key) {
                let size = match check_index(store, d).await {
                    Ok(idx) => {
                        chunks.extend(idx.digests.into_iter().filter(|g| *g != ZERO_DIGEST));
                        Some(idx.disk_size)
                    }
                    Err(e) => {
                        report.problems.push(format!("{at}: {e:#}"));
                        None
                    }
                };
                indexes_seen.insert(d.base.index_key.clone(), size);
            }
            match check_logs(store, d, tmp.path(), &mut logs_seen).await {
                Ok(effect) => {
                    if let Some(Some(base_size)) = indexes_seen.get(&d.base.index_key) {
                        let size = effect.apply(*base_size);
                        if size != d.disk_size {
                            report.problems.push(format!(
                                "{at}: restores to {size} bytes, but the point recorded {} bytes at its seal",
                                d.disk_size
                            ));
                        }
                    }
                }
                Err(e) => report.problems.push(format!("{at}: {e:#}")),
            }
        }
    }
    report.logs = logs_seen.len();
    report.chunks = chunks.len();
    let store_chunks = ChunkStore::new(store);
    let mut results = futures::stream::iter(
        chunks
            .into_iter()
            .map(|digest| async move { store_chunks.read(&digest).await.map(|_| ()) }),
    )
    .buffer_unordered(IN_FLIGHT);
    while let Some(r) = results.next().await {
        if let Err(e) = r {
            report.problems.push(format!("{e:#}"));
        }
    }
    Ok(report)
}

async fn check_index(store: &GroupStore, d: &DiskEntry) -> Result<ChunkIndex> {
    Ok(crate::store::index::fetch_base_index(store, &d.base).await?)
}

/// A verified log: the previous chain hash it names, its chain hash, its size effect.
type LogSeen = (hrl::Digest, hrl::Digest, SizeEffect);

/// Checks the chain of logs from `d`'s base to its point; returns their size effect.
async fn check_logs(
    store: &GroupStore,
    d: &DiskEntry,
    tmp: &std::path::Path,
    seen: &mut HashMap<String, LogSeen>,
) -> Result<SizeEffect> {
    if d.last_seq == d.base.after_seq {
        if hrl::from_hex::<32>(&d.last_chain_hash) != hrl::from_hex::<32>(&d.base.after_chain_hash)
        {
            anyhow::bail!("no logs after the base, but the chain hashes of base and point differ");
        }
        return Ok(SizeEffect::default());
    }
    let path = crate::store::logs::chain_ranges(store, d)
        .await?
        .with_context(|| {
            format!(
                "logs {}..={} are not all in the store",
                d.base.after_seq + 1,
                d.last_seq
            )
        })?;
    let mut prev = hrl::from_hex::<32>(&d.base.after_chain_hash)
        .context("the point has a bad base chain hash")?;
    let mut effect = SizeEffect::default();
    for (first, last) in path {
        let key = crate::store::logs::key(d, (first, last));
        if let Some((p, chain, e)) = seen.get(&key) {
            if *p != prev {
                anyhow::bail!("log {} does not follow the log before it", store.path(&key));
            }
            prev = *chain;
            effect = effect.then(*e);
            continue;
        }
        let local = tmp.join(format!("{}-{first}-{last}.hrl", d.disk_id));
        store.get_zstd_to_file(&key, &local).await?;
        let local2 = local.clone();
        let expected_prev = prev;
        let (v, e) = tokio::task::spawn_blocking(move || {
            let v = hrl::log::verify_sealed(&local2, Some(&expected_prev))?;
            Ok::<_, hrl::log::LogError>((v, SizeEffect::of_log(&local2)?))
        })
        .await
        .context("verify worker failed")?
        .with_context(|| format!("log {} does not verify", store.path(&key)))?;
        let _ = std::fs::remove_file(&local);
        let h = &v.header;
        if hrl::from_hex::<16>(&d.disk_id) != Some(h.disk_id)
            || h.generation != d.generation
            || h.first_sequence != first
            || h.sequence != last
        {
            anyhow::bail!(
                "log {} holds disk {} generation {} sequences {}..={}, not what its name says",
                store.path(&key),
                hrl::to_hex(&h.disk_id),
                h.generation,
                h.first_sequence,
                h.sequence
            );
        }
        let chain = v.chain_hash();
        seen.insert(key, (prev, chain, e));
        prev = chain;
        effect = effect.then(e);
    }
    if hrl::from_hex::<32>(&d.last_chain_hash) != Some(prev) {
        anyhow::bail!(
            "the logs end at chain hash {}, but the point names {}",
            hrl::to_hex(&prev),
            d.last_chain_hash
        );
    }
    Ok(effect)
}

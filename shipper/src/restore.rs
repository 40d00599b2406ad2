//! Restore: a recovery point -> for every disk, its base chunks written into a sparse image,
//! then its shipped logs replayed in chain order. Everything is verified (chunk digests, index
//! hash, log chain up to the point's chain hash) before a disk gets its final name, so a
//! damaged store never yields a silently wrong disk.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use hrl::chunk::{ChunkIndex, ZERO_DIGEST};
use hrl::store::{log_key, log_path, logs_dir, parse_log_name, DiskEntry, PointManifest};
use tracing::info;

use crate::retry::Fatal;
use crate::store_client::GroupStore;

/// Chunk downloads in flight.
const IN_FLIGHT: usize = 16;

#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    pub disks: Vec<(String, u64)>,
    pub chunk_bytes: u64,
    pub logs: usize,
}

/// Restores every disk of `point` into `to` (which must not already hold those names).
pub async fn restore_point(
    store: &GroupStore,
    point: &PointManifest,
    to: &Path,
) -> Result<RestoreReport> {
    std::fs::create_dir_all(to)
        .with_context(|| format!("create restore directory {}", to.display()))?;
    for d in &point.disks {
        let dest = to.join(&d.name);
        if dest.exists() {
            bail!(
                "{} exists already; restore into an empty directory (nothing was changed)",
                dest.display()
            );
        }
    }
    let mut report = RestoreReport::default();
    for d in &point.disks {
        let dest = to.join(&d.name);
        let partial = to.join(format!(".{}.hrl-restoring", d.name));
        let _ = std::fs::remove_file(&partial);
        let r = restore_disk(store, d, &partial, &mut report).await;
        match r {
            Ok(()) => std::fs::rename(&partial, &dest)
                .with_context(|| format!("rename {} to {}", partial.display(), dest.display()))?,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e.context(format!(
                    "restore of disk {} from point {} failed; nothing was left behind",
                    d.name, point.id
                )));
            }
        }
        report.disks.push((d.name.clone(), d.disk_size));
        info!(disk = %d.name, size = d.disk_size, "restored");
    }
    Ok(report)
}

async fn restore_disk(
    store: &GroupStore,
    d: &DiskEntry,
    image: &Path,
    report: &mut RestoreReport,
) -> Result<()> {
    // Base.
    let idx_bytes = store.get(&d.base.index_key).await?;
    let hash = hrl::to_hex(blake3::hash(&idx_bytes).as_bytes());
    if !hash.eq_ignore_ascii_case(&d.base.index_hash) {
        return Err(Fatal(format!(
            "chunk index {} is damaged (hash {hash}, manifest says {}); the store is corrupt",
            store.path(&d.base.index_key),
            d.base.index_hash
        ))
        .into());
    }
    let index = ChunkIndex::decode(&idx_bytes)
        .with_context(|| format!("chunk index {} is damaged", store.path(&d.base.index_key)))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(image)
        .with_context(|| format!("create {}", image.display()))?;
    file.set_len(index.disk_size)
        .with_context(|| format!("size {}", image.display()))?;
    let file = Arc::new(file);
    let block_size = u64::from(index.block_size);
    let jobs = index.digests.iter().enumerate().filter(|(_, dg)| **dg != ZERO_DIGEST).map(|(i, dg)| {
        let file = Arc::clone(&file);
        let digest = *dg;
        let key = hrl::store::chunk_key(&digest);
        let expected_len = block_size.min(index.disk_size - i as u64 * block_size) as usize;
        async move {
            let raw = store.get(&key).await?;
            let path = store.path(&key).to_string();
            tokio::task::spawn_blocking(move || -> Result<u64> {
                let data = zstd::stream::decode_all(raw.as_slice())
                    .map_err(|e| Fatal(format!("chunk {path} is damaged (not valid zstd: {e}); the store is corrupt")))?;
                if data.len() != expected_len || *blake3::hash(&data).as_bytes() != digest {
                    return Err(Fatal(format!("chunk {path} is damaged (content does not match its digest); the store is corrupt")).into());
                }
                file.write_all_at(&data, i as u64 * block_size).context("write restored block")?;
                Ok(data.len() as u64)
            })
            .await
            .context("restore worker failed")?
        }
    });
    let mut stream = futures::stream::iter(jobs).buffer_unordered(IN_FLIGHT);
    while let Some(r) = stream.next().await {
        report.chunk_bytes += r?;
    }
    drop(stream);

    // Logs.
    if d.last_seq > d.base.after_seq {
        let names = store
            .list_names(&logs_dir(&d.disk_id, d.generation))
            .await?;
        let ranges: Vec<(u64, u64)> = names.iter().filter_map(|n| parse_log_name(n)).collect();
        let path = log_path(&ranges, d.base.after_seq, d.last_seq).ok_or_else(|| {
            Fatal(format!(
                "logs {}..={} of disk {} are not all in the store; the store is incomplete or damaged",
                d.base.after_seq + 1,
                d.last_seq,
                d.name
            ))
        })?;
        let tmp = tempfile::Builder::new()
            .prefix(".hrl-restore-logs")
            .tempdir_in(image.parent().unwrap_or(Path::new(".")))
            .context("create temporary directory for logs")?;
        let mut local: Vec<PathBuf> = Vec::new();
        for (first, last) in path {
            let key = log_key(&d.disk_id, d.generation, first, last);
            let lp = tmp.path().join(format!("{first}-{last}.hrl"));
            store.get_zstd_to_file(&key, &lp).await?;
            local.push(lp);
        }
        report.logs += local.len();
        let prev = hrl::from_hex::<32>(&d.base.after_chain_hash)
            .with_context(|| format!("manifest of disk {} has a bad chain hash", d.name))?;
        let image_owned = image.to_path_buf();
        let summary = tokio::task::spawn_blocking(move || {
            hrl::log::apply_logs_after(&local, &image_owned, Some(&prev))
        })
        .await
        .context("apply worker failed")?
        .map_err(|e| {
            Fatal(format!(
                "shipped logs of disk {} do not verify: {e}",
                d.name
            ))
        })?;
        let got = summary
            .chain_hash
            .map(|h| hrl::to_hex(&h))
            .unwrap_or_default();
        if !got.eq_ignore_ascii_case(&d.last_chain_hash) {
            return Err(Fatal(format!(
                "logs of disk {} end at chain hash {got}, but the point names {}; the store is damaged",
                d.name, d.last_chain_hash
            ))
            .into());
        }
    }
    // The logs leave the size they describe; it must be the disk's size at the seal.
    file.sync_all()
        .with_context(|| format!("sync {}", image.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("stat {}", image.display()))?
        .len();
    if size != d.disk_size {
        return Err(Fatal(format!(
            "disk {} restores to {size} bytes, but the point recorded {} bytes at its seal; the store is inconsistent",
            d.name, d.disk_size
        ))
        .into());
    }
    Ok(())
}

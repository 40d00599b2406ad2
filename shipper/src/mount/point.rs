//! Opening one disk of a point for reading on demand: its base index (hash-checked), its
//! shipped logs fetched into the scratch directory and verified as a chain ending at the
//! point's chain hash, and the [`DiskModel`] of which source holds each byte, folded from
//! the logs' records as they are verified ([`crate::store::logs::fold_chain`], shared with
//! restore). A disk that fails any check is served as broken (every read EIO), never with
//! bytes that might be wrong.

use std::fs::File;
use std::path::Path;

use anyhow::{bail, Context, Result};
use hrl::chunk::ChunkIndex;
use hrl::log::DiskModel;
use hrl::store::DiskEntry;

use crate::store::index::fetch_base_index;
use crate::store::logs::{fetch, fold_chain, Chain};
use crate::store::GroupStore;

/// What a read of a disk needs.
pub struct DiskData {
    pub index: ChunkIndex,
    pub model: DiskModel,
    /// The local copies of the point's logs, in chain order.
    pub logs: Vec<File>,
}

/// Loads disk `d`; its logs go into `dir` (created).
pub async fn open_disk(store: &GroupStore, d: &DiskEntry, dir: &Path) -> Result<DiskData> {
    let index = fetch_base_index(store, &d.base).await?;
    let mut chain = Chain::default();
    if d.last_seq > d.base.after_seq {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        chain = fetch(store, d, dir).await?;
    }
    let (s2, d2, size) = (store.clone(), d.clone(), index.disk_size);
    let (model, chain) = tokio::task::spawn_blocking(move || {
        let m = fold_chain(&s2, &d2, size, &chain);
        (m, chain)
    })
    .await
    .context("log worker failed")?;
    let model = model.with_context(|| {
        format!(
            "shipped logs of disk {} do not verify",
            hrl::display::escaped(&d.name)
        )
    })?;
    let mut logs = Vec::new();
    for p in &chain.paths {
        logs.push(File::open(p).with_context(|| format!("open {}", p.display()))?);
    }
    if model.size() != d.disk_size {
        bail!(
            "disk {} builds to {} bytes, but the point recorded {} bytes at its seal; the store is inconsistent",
            hrl::display::escaped(&d.name),
            model.size(),
            d.disk_size
        );
    }
    Ok(DiskData { index, model, logs })
}

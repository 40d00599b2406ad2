//! Opening one disk of a point for reading on demand: its base index (hash-checked), its
//! shipped logs fetched into the scratch directory and verified as a chain ending at the
//! point's chain hash, and the [`DiskModel`] of which source holds each byte, built from
//! the logs' records. A disk that fails any check is served as broken (every read EIO),
//! never with bytes that might be wrong.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hrl::chunk::ChunkIndex;
use hrl::log::{LogReader, Record, RECORD_HEADER_LEN};
use hrl::store::DiskEntry;

use super::model::DiskModel;
use crate::store::index::fetch_base_index;
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
    let mut model = DiskModel::new(index.disk_size);
    let mut logs = Vec::new();
    if d.last_seq > d.base.after_seq {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let local = crate::store::logs::fetch_chain(store, d, dir).await?;
        let (d2, paths) = (d.clone(), local.clone());
        model = tokio::task::spawn_blocking(move || build_model(&d2, &paths, model))
            .await
            .context("log worker failed")?
            .map_err(|e| name_objects(store, d, &local, e))?;
        for p in &local {
            logs.push(File::open(p).with_context(|| format!("open {}", p.display()))?);
        }
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

/// The error of a log that does not verify, with the local copies' paths replaced by the
/// store objects they came from (what the operator must look at).
fn name_objects(
    store: &GroupStore,
    d: &DiskEntry,
    local: &[PathBuf],
    e: anyhow::Error,
) -> anyhow::Error {
    let mut msg = format!("{e:#}");
    for p in local {
        let range = p
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix(&format!("{}-", d.disk_id)))
            .and_then(|s| hrl::store::parse_log_name(&format!("{s}.hrl")));
        if let Some(r) = range {
            let object = store.path(&crate::store::logs::key(d, r)).to_string();
            msg = msg.replace(&p.display().to_string(), &format!("store object {object}"));
        }
    }
    anyhow::anyhow!(msg)
}

/// Verifies the chain (from the base's chain hash to the point's) and lays every record of
/// the logs over the base's model.
fn build_model(d: &DiskEntry, logs: &[PathBuf], mut model: DiskModel) -> Result<DiskModel> {
    let prev = hrl::from_hex::<32>(&d.base.after_chain_hash)
        .with_context(|| format!("manifest of disk {} has a bad chain hash", d.name))?;
    let verified = hrl::log::verify_chain(logs, Some(&prev))
        .with_context(|| format!("shipped logs of disk {} do not verify", d.name))?;
    let last = verified.last().map(|v| v.chain_hash());
    if last.is_none() || last != hrl::from_hex::<32>(&d.last_chain_hash) {
        bail!(
            "logs of disk {} do not end at the chain hash the point names; the store is damaged",
            d.name
        );
    }
    for (i, p) in logs.iter().enumerate() {
        let mut r = LogReader::open(p)?;
        while let Some(entry) = r.next_entry() {
            let (meta, rec) = entry?;
            match rec {
                Record::Write { offset, data } => {
                    let at = meta.offset + RECORD_HEADER_LEN;
                    model.write(offset, data.len() as u64, i, at)
                }
                Record::Zero { offset, len } | Record::Punch { offset, len } => {
                    model.zero(offset, len)
                }
                Record::Truncate { size } => model.truncate(size),
                Record::Flush | Record::Rename { .. } | Record::Delete | Record::Seal(_) => {}
            }
        }
    }
    Ok(model)
}

//! Failback onto an existing disk: bring the disk in place to a point's state by
//! downloading only what differs (docs/shipper.md, "Failover and failback").
//!
//! The point is its base plus the logs after it. Every block the logs do not touch must
//! hold the base's block: it is hashed (blake3, as the chunk index) and downloaded only when
//! its digest differs. A block the logs cover whole gets its bytes from them; one they
//! touch in part must first hold the base's block (downloaded when it differs). Then the
//! logs are replayed onto the disk in place and the chain hash checked against the point.
//! Downloads: the point's logs, and the blocks that differ. A disk of another size is cut or
//! extended to the base's size first; when the logs truncate, no block is left to them
//! alone (a truncate may cut a block they wrote, a later write extend over it): every block
//! is made the base's, then all the logs are replayed, and the size must end at the point's.
//!
//! Before the disk is changed, its tracker files (active log, sealed logs, bitmap) are
//! removed and a marker `.<disk id>.hrl-failback` is written beside it: a tracker mounted
//! over an interrupted delta finds no bitmap and treats the disk as new (a full copy, never
//! a clean disk), and running the failover again redoes the delta (each step is
//! idempotent), then removes the marker.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hrl::chunk::{ChunkIndex, ZERO_DIGEST};
use hrl::store::DiskEntry;

use crate::service::retry::Fatal;
use crate::store::chunks::ChunkStore;
use crate::store::index::fetch_base_index;
use crate::store::GroupStore;

/// What a delta did to one disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeltaReport {
    /// Blocks of the disk that had to be fetched (they differ from the point's base).
    pub blocks_fetched: u64,
    /// Bytes downloaded: those blocks and the point's logs (uncompressed).
    pub bytes_downloaded: u64,
}

/// The marker of an in-place delta of disk `disk_id` in `dir`.
pub fn marker(dir: &Path, disk_id: &str) -> PathBuf {
    dir.join(format!(".{disk_id}.hrl-failback"))
}

/// Whether the delta can bring `disk` to `e`'s state in place: a regular file, of any size
/// (it is cut or extended to the base's size first; the logs replayed after it give the
/// point's size).
pub fn applicable(disk: &Path) -> bool {
    std::fs::symlink_metadata(disk).is_ok_and(|md| md.file_type().is_file())
}

/// Brings `dir/<e.name>` to `e`'s state in place (see the module doc); `state_dir` is the
/// shipper's (for the tests' stop point `mid-failback`).
pub async fn apply(
    store: &GroupStore,
    e: &DiskEntry,
    dir: &Path,
    state_dir: &Path,
) -> Result<DeltaReport> {
    let disk = dir.join(&e.name);
    remove_tracker_files(dir, &e.name)?;
    let mark = marker(dir, &e.disk_id);
    std::fs::write(&mark, format!("{}\n", e.name))
        .with_context(|| format!("write {}", mark.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("sync {}", dir.display()))?;
    apply_to(store, e, &disk, dir, &|| {
        crate::replicate::stop::at(state_dir, "mid-failback")
    })
    .await
}

/// The delta itself onto the file `disk` (any name: a prepared failover's hidden one too),
/// its logs fetched into a temporary directory in `tmp_in`; `midway` runs once the blocks
/// are written, before the logs are replayed (the tests' stop points).
pub async fn apply_to(
    store: &GroupStore,
    e: &DiskEntry,
    disk: &Path,
    tmp_in: &Path,
    midway: &dyn Fn(),
) -> Result<DeltaReport> {
    let disk = disk.to_path_buf();
    let index = fetch_base_index(store, &e.base).await?;
    let tmp = tempfile::Builder::new()
        .prefix(".hrl-failback-logs")
        .tempdir_in(tmp_in)
        .context("create a temporary directory for the logs")?;
    let mut report = DeltaReport::default();
    let logs = if e.last_seq > e.base.after_seq {
        crate::store::logs::fetch_chain(store, e, tmp.path()).await?
    } else {
        Vec::new()
    };
    for l in &logs {
        report.bytes_downloaded += std::fs::metadata(l).map(|m| m.len()).unwrap_or(0);
    }
    let l2 = logs.clone();
    let extents = tokio::task::spawn_blocking(move || crate::replicate::resync::log_extents(&l2))
        .await
        .context("log reader failed")??;
    // Logs that truncate (the disk's size changes on the way) may cut a block they wrote
    // and extend over it again: no block counts as theirs, every block is first made the
    // base's and the logs replayed over it.
    let whole = extents
        .map(|x| covered_blocks(&x, &index).0)
        .unwrap_or_default();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags_nofollow()
        .open(&disk)
        .with_context(|| format!("open {}", disk.display()))?;
    // The base's size first (a disk held at another size: cut, or extended with a hole).
    let len = file
        .metadata()
        .with_context(|| format!("stat {}", disk.display()))?
        .len();
    if len != index.disk_size {
        file.set_len(index.disk_size)
            .with_context(|| format!("size {} to its base's size", disk.display()))?;
    }
    let d2 = disk.clone();
    let bs = index.block_size;
    let local = tokio::task::spawn_blocking(move || hrl::chunk::hash_file(&d2, bs))
        .await
        .context("hash worker failed")?
        .with_context(|| format!("hash {}", disk.display()))?;
    let fetch: Vec<u64> = (0..index.digests.len() as u64)
        .filter(|b| !whole.contains(b))
        .filter(|&b| local.digests.get(b as usize) != Some(&index.digests[b as usize]))
        .collect();
    report.blocks_fetched = fetch.len() as u64;
    report.bytes_downloaded += write_blocks(store, &index, &fetch, &file).await?;
    midway();
    replay(e, &logs, &disk, &file).await?;
    file.sync_all()
        .with_context(|| format!("sync {}", disk.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("stat {}", disk.display()))?
        .len();
    if size != e.disk_size {
        return Err(Fatal(format!(
            "disk {} is {size} bytes after its logs, the point recorded {}; the store is damaged ({} keeps its failback marker)",
            e.name,
            e.disk_size,
            disk.display()
        ))
        .into());
    }
    super::restore::apply_attrs(&file, e, &disk)?;
    Ok(report)
}

/// Done: the disk holds the point (its tracker files are written next).
pub fn finish(dir: &Path, e: &DiskEntry) -> Result<()> {
    let mark = marker(dir, &e.disk_id);
    match std::fs::remove_file(&mark) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("remove {}", mark.display())),
    }
}

/// Removes the tracker's files of `name` in `dir` (active log, sealed logs, bitmap): the
/// disk is about to hold another state than they describe.
pub fn remove_tracker_files(dir: &Path, name: &str) -> Result<()> {
    use hrl::naming::{classify, HrlFile};
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("read {}", dir.display()))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let mine = match classify(&file) {
            Some(HrlFile::ActiveLog { disk })
            | Some(HrlFile::SealedLog { disk, .. })
            | Some(HrlFile::Bitmap { disk }) => disk == name,
            _ => false,
        };
        if mine {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Blocks the `extents` cover whole, and blocks they touch only in part.
fn covered_blocks(extents: &[(u64, u64)], index: &ChunkIndex) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let bs = u64::from(index.block_size);
    let mut ranges: Vec<(u64, u64)> = extents
        .iter()
        .filter(|(_, len)| *len > 0)
        .map(|&(o, l)| (o, o.saturating_add(l).min(index.disk_size)))
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let (mut whole, mut partly) = (BTreeSet::new(), BTreeSet::new());
    for &(s, e) in &merged {
        for b in s / bs..e.div_ceil(bs) {
            let (bo, be) = (b * bs, ((b + 1) * bs).min(index.disk_size));
            if s <= bo && be <= e {
                whole.insert(b);
            } else {
                partly.insert(b);
            }
        }
    }
    // A block covered by two ranges that together cover it: still not whole (rare; its base
    // block is fetched, which is correct).
    partly.retain(|b| !whole.contains(b));
    (whole, partly)
}

/// Writes the base's blocks `blocks` into `file` (zero blocks as zeros); returns the bytes
/// downloaded.
async fn write_blocks(
    store: &GroupStore,
    index: &ChunkIndex,
    blocks: &[u64],
    file: &std::fs::File,
) -> Result<u64> {
    use futures::StreamExt;
    let chunks = ChunkStore::new(store);
    let bs = u64::from(index.block_size);
    let jobs = blocks.iter().map(|&b| {
        let dg = index.digests[b as usize];
        let chunks = &chunks;
        async move {
            let len = bs.min(index.disk_size - b * bs) as usize;
            if dg == ZERO_DIGEST {
                return Ok::<_, anyhow::Error>((b, vec![0u8; len], 0u64));
            }
            let data = chunks.read(&dg).await?;
            if data.len() != len {
                let key = hrl::store::chunk_key(&dg);
                return Err(store
                    .damaged("chunk", &key, "content does not match its digest")
                    .into());
            }
            let n = data.len() as u64;
            Ok((b, data, n))
        }
    });
    let mut stream = futures::stream::iter(jobs).buffer_unordered(16);
    let mut downloaded = 0;
    while let Some(r) = stream.next().await {
        let (b, data, n) = r?;
        file.write_all_at(&data, b * bs)
            .context("write a block of the disk")?;
        downloaded += n;
    }
    Ok(downloaded)
}

/// Replays the point's logs onto the disk (through its descriptor) and checks that the
/// chain ends at the point's chain hash.
async fn replay(e: &DiskEntry, logs: &[PathBuf], disk: &Path, file: &std::fs::File) -> Result<()> {
    use std::os::fd::AsRawFd;
    if logs.is_empty() {
        return Ok(());
    }
    let prev = hrl::from_hex::<32>(&e.base.after_chain_hash)
        .with_context(|| format!("manifest of disk {} has a bad chain hash", e.name))?;
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let local = logs.to_vec();
    let summary =
        tokio::task::spawn_blocking(move || hrl::log::apply_logs_after(&local, &path, Some(&prev)))
            .await
            .context("apply worker failed")?
            .map_err(|err| {
                Fatal(format!(
                    "shipped logs of disk {} do not verify: {err}",
                    e.name
                ))
            })?;
    if summary.chain_hash.is_none() || summary.chain_hash != hrl::from_hex::<32>(&e.last_chain_hash)
    {
        return Err(Fatal(format!(
            "logs of disk {} do not end at the point's chain hash {}; the store is damaged ({} keeps its failback marker)",
            e.name,
            e.last_chain_hash,
            disk.display()
        ))
        .into());
    }
    Ok(())
}

/// `O_NOFOLLOW` on an `OpenOptions` (a disk is never opened through a symlink).
trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for std::fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOFOLLOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_covered_whole_or_in_part() {
        let index = ChunkIndex {
            block_size: 4096,
            disk_size: 5 * 4096,
            digests: vec![ZERO_DIGEST; 5],
        };
        // Block 0 whole (two writes meet), block 1 in part, block 3 whole, block 4 in part.
        let ext = [(0, 2048), (2048, 2048), (4096, 100), (3 * 4096, 4096 + 10)];
        let (whole, partly) = covered_blocks(&ext, &index);
        assert_eq!(whole.into_iter().collect::<Vec<_>>(), vec![0, 3]);
        assert_eq!(partly.into_iter().collect::<Vec<_>>(), vec![1, 4]);
    }
}

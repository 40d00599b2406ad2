//! Initial replication (and resync): copies a disk into the store as fixed-size,
//! content-addressed chunks (blake3, zstd), each distinct block stored once, all-zero blocks
//! and holes not stored at all, then uploads the chunk index. The copy is fuzzy — the tracker
//! keeps logging — and becomes consistent with the logs sealed after it.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::StreamExt;
use hrl::chunk::{ChunkIndex, ZERO_DIGEST};
use hrl::Digest;

use crate::replicate::local::Source;
use crate::store::chunks::{prepare, ChunkStore, Prepared};
use crate::store::{GroupStore, Put};

/// Default chunk size: 256 KiB. Bytes shipped per interval come from logs, not chunks;
/// chunks matter for the initial copy and for resync, where a smaller block uploads less
/// around each changed range and a larger one means fewer objects (requests) per GiB.
/// 256 KiB keeps a 2 GiB disk at 8192 objects and bounds the over-upload of a 4 KiB change.
pub const DEFAULT_CHUNK_SIZE: u32 = 256 * 1024;

/// Uploads in flight at once (hides store latency).
const IN_FLIGHT: usize = 16;

/// What a copy did.
#[derive(Debug, Clone, Default)]
pub struct CopyStats {
    pub disk_size: u64,
    pub blocks: u64,
    pub zero_blocks: u64,
    pub uploaded_chunks: u64,
    pub uploaded_bytes: u64,
    pub existing_chunks: u64,
    pub index_key: String,
    pub index_hash: String,
    /// For a resync: what it compared, read and sent.
    pub resync: Option<crate::replicate::progress::ResyncProgress>,
}

/// Blocks holding data (`hrl::chunk::data_block_ranges`, SEEK_DATA), ascending; every
/// block when the filesystem cannot tell.
pub fn data_blocks(file: &File, disk_size: u64, block_size: u32) -> Vec<u64> {
    let count = ChunkIndex::block_count(disk_size, block_size);
    hrl::chunk::data_block_ranges(file, disk_size, block_size)
        .unwrap_or_else(|_| vec![(0, count)])
        .into_iter()
        .flat_map(|(a, b)| a..b.min(count))
        .collect()
}

/// One block of a copy: read, hashed and, unless zero or already stored, uploaded.
pub struct CopiedBlock {
    pub block: u64,
    /// Bytes read.
    pub len: u64,
    pub digest: Digest,
    /// What the upload did (`None`: not sent, zero or known to be stored).
    pub put: Option<Put>,
    /// Compressed bytes the store did not have.
    pub sent: u64,
}

/// The block-copy pipeline of initial copies and resyncs: reads `blocks` of `file` (whose
/// replica is `disk_size` bytes in blocks of `block_size`), hashes each, and stores those
/// neither zero nor in `known`; results come in the order of `blocks`, with up to
/// [`IN_FLIGHT`] blocks in flight.
pub fn copy_blocks<'a>(
    store: &'a GroupStore,
    file: Arc<File>,
    disk: &'a Path,
    blocks: Vec<u64>,
    block_size: u32,
    disk_size: u64,
    known: Arc<HashSet<Digest>>,
) -> impl futures::Stream<Item = Result<CopiedBlock>> + 'a {
    let bs = u64::from(block_size);
    let chunks = ChunkStore::new(store);
    let crypto = store.crypto().cloned();
    let blocks: Arc<[u64]> = blocks.into();
    let mut ahead = ReadAhead::new(&file, Arc::clone(&blocks), block_size);
    ahead.advance(0);
    let mut taken = 0;
    futures::stream::iter((0..blocks.len()).map(move |i| {
        let b = blocks[i];
        let file = Arc::clone(&file);
        let known = Arc::clone(&known);
        let crypto = crypto.clone();
        let disk = disk.to_path_buf();
        async move {
            let off = b * bs;
            let len = bs.min(disk_size - off) as usize;
            let prepared = tokio::task::spawn_blocking(move || -> Result<Prepared> {
                let mut buf = vec![0u8; len];
                read_full_at(&file, &mut buf, off)
                    .with_context(|| format!("read {} at {off}", disk.display()))?;
                prepare(crypto.as_deref(), &buf, &known).context("compress or seal a block")
            })
            .await
            .context("chunk worker failed")??;
            let (digest, put, sent) = chunks.put(prepared).await?;
            Ok(CopiedBlock {
                block: b,
                len: len as u64,
                digest,
                put,
                sent,
            })
        }
    }))
    .buffered(IN_FLIGHT)
    .inspect(move |_| {
        taken += 1;
        ahead.advance(taken);
    })
}

/// How far [`ReadAhead`] asks ahead of the reader.
const READ_AHEAD: u64 = 32 << 20;

/// Reads ahead of [`copy_blocks`], which reads `blocks` of a file ([`IN_FLIGHT`] at once,
/// so out of order, which the kernel's own readahead of a descriptor takes for random
/// reads): asks for `POSIX_FADV_SEQUENTIAL` on the file and, as blocks are taken, for
/// `POSIX_FADV_WILLNEED` of those up to [`READ_AHEAD`] bytes further, in runs of adjacent
/// blocks. Hints only: a refusal is logged and ignored. Through the mount the hint reaches
/// the mount's page cache, and FUSE reads ahead on the mount's 4 MiB window.
struct ReadAhead {
    file: Arc<File>,
    blocks: Arc<[u64]>,
    block_size: u64,
    /// Blocks before this index were asked for.
    issued: usize,
}

impl ReadAhead {
    fn new(file: &Arc<File>, blocks: Arc<[u64]>, block_size: u32) -> ReadAhead {
        advise(file, 0, 0, rustix::fs::Advice::Sequential);
        ReadAhead {
            file: Arc::clone(file),
            blocks,
            block_size: u64::from(block_size),
            issued: 0,
        }
    }

    /// `done` blocks have been taken: ask for those up to [`READ_AHEAD`] past them, a
    /// quarter window at a time (so each call covers a good run).
    fn advance(&mut self, done: usize) {
        let window = (READ_AHEAD / self.block_size).max(1) as usize;
        let want = (done + window).min(self.blocks.len());
        if want < self.issued + (window / 4).max(1) && want < self.blocks.len() {
            return;
        }
        let mut i = self.issued;
        while i < want {
            let start = self.blocks[i];
            let mut end = start + 1;
            i += 1;
            while i < want && self.blocks[i] == end {
                end += 1;
                i += 1;
            }
            let (off, len) = (start * self.block_size, (end - start) * self.block_size);
            advise(&self.file, off, len, rustix::fs::Advice::WillNeed);
        }
        self.issued = want.max(self.issued);
    }
}

/// `posix_fadvise` of `[off, off+len)` (`len` 0: to the end).
fn advise(file: &File, off: u64, len: u64, advice: rustix::fs::Advice) {
    if let Err(e) = rustix::fs::fadvise(file, off, std::num::NonZeroU64::new(len), advice) {
        tracing::debug!(error = %e, ?advice, "posix_fadvise refused");
    }
}

/// Copies `source` (a disk) into `store`, skipping chunks whose digest is in `known`
/// (already stored), and uploads its index at `index_key`. `progress(done_bytes,
/// total_bytes)` is called as blocks complete.
pub async fn copy_disk(
    store: &GroupStore,
    source: &Source,
    block_size: u32,
    index_key: &str,
    known: &Arc<HashSet<Digest>>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<CopyStats> {
    hrl::chunk::check_block_size(block_size)?;
    let disk = source.shown.as_path();
    let file = source
        .open()
        .with_context(|| format!("open disk {} for the initial copy", disk.display()))?;
    let disk_size = file
        .metadata()
        .with_context(|| format!("stat disk {}", disk.display()))?
        .len();
    let count = ChunkIndex::block_count(disk_size, block_size);
    let blocks = data_blocks(&file, disk_size, block_size);
    let mut digests = vec![ZERO_DIGEST; count as usize];
    let mut stats = CopyStats {
        disk_size,
        blocks: count,
        ..Default::default()
    };
    let total = blocks.len() as u64 * u64::from(block_size);
    let mut done_bytes = 0u64;
    let results = copy_blocks(
        store,
        Arc::new(file),
        disk,
        blocks,
        block_size,
        disk_size,
        Arc::clone(known),
    );
    futures::pin_mut!(results);
    while let Some(r) = results.next().await {
        let c = r?;
        digests[c.block as usize] = c.digest;
        match c.put {
            Some(Put::Created) => {
                stats.uploaded_chunks += 1;
                stats.uploaded_bytes += c.sent;
            }
            Some(Put::Existed) => stats.existing_chunks += 1,
            None if c.digest != ZERO_DIGEST => stats.existing_chunks += 1,
            None => {}
        }
        done_bytes += u64::from(block_size);
        progress(done_bytes.min(total), total);
    }
    stats.zero_blocks = count - digests.iter().filter(|d| **d != ZERO_DIGEST).count() as u64;
    let index = ChunkIndex {
        block_size,
        disk_size,
        digests,
    };
    stats.index_hash = crate::store::index::put_index(store, index_key, &index).await?;
    stats.index_key = index_key.to_string();
    Ok(stats)
}

/// Reads exactly `buf.len()` bytes at `off`; bytes past the end of the file read as zero
/// (the disk may shrink during the fuzzy copy; the logs put it right).
pub(crate) fn read_full_at(file: &File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_blocks_skip_holes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 32 << 20).unwrap();
        let blocks = data_blocks(&f, 64 << 20, 4096);
        assert!(blocks.contains(&((32 << 20) / 4096)), "{blocks:?}");
        assert!(blocks.len() < (64 << 20) / 4096, "holes not detected");
    }
}

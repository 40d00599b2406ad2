//! Initial replication (and resync): copies a disk into the store as fixed-size,
//! content-addressed chunks (blake3, zstd), each distinct block stored once, all-zero blocks
//! and holes not stored at all, then uploads the chunk index. The copy is fuzzy — the tracker
//! keeps logging — and becomes consistent with the logs sealed after it.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::StreamExt;
use hrl::chunk::{ChunkIndex, ZERO_DIGEST};
use hrl::Digest;

use crate::store_client::{compress, GroupStore, Put};

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
    pub resync: Option<crate::resync::ResyncProgress>,
}

/// Byte ranges holding data (SEEK_DATA/SEEK_HOLE); the whole file when the filesystem
/// cannot tell.
pub fn data_segments(file: &File, size: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on an open descriptor; no memory is touched.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                break; // no data after pos
            }
            return vec![(0, size)];
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 {
            size
        } else {
            (hole as u64).min(size)
        };
        if end <= data as u64 {
            break;
        }
        out.push((data as u64, end));
        pos = end;
    }
    out
}

/// Which blocks overlap a data segment.
fn data_blocks(segments: &[(u64, u64)], block_size: u64, count: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut next = 0u64;
    for &(s, e) in segments {
        let first = (s / block_size).max(next);
        let last = e.div_ceil(block_size).min(count);
        for b in first..last {
            out.push(b);
        }
        next = next.max(last);
    }
    out
}

/// Copies `disk` into `store`, skipping chunks whose digest is in `known` (already stored),
/// and uploads its index at `index_key`. `progress(done_bytes, total_bytes)` is called as
/// blocks complete.
pub async fn copy_disk(
    store: &GroupStore,
    disk: &Path,
    block_size: u32,
    index_key: &str,
    known: &HashSet<Digest>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<CopyStats> {
    hrl::chunk::check_block_size(block_size)?;
    let file = File::open(disk)
        .with_context(|| format!("open disk {} for the initial copy", disk.display()))?;
    let disk_size = file
        .metadata()
        .with_context(|| format!("stat disk {}", disk.display()))?
        .len();
    let count = ChunkIndex::block_count(disk_size, block_size);
    let segments = data_segments(&file, disk_size);
    let blocks = data_blocks(&segments, u64::from(block_size), count);
    let file = Arc::new(file);
    let mut digests = vec![ZERO_DIGEST; count as usize];
    let mut stats = CopyStats {
        disk_size,
        blocks: count,
        ..Default::default()
    };
    let known = Arc::new(known.clone());
    let total = blocks.len() as u64 * u64::from(block_size);

    let mut done_bytes = 0u64;
    let mut results = futures::stream::iter(blocks.into_iter().map(|b| {
        let file = Arc::clone(&file);
        let known = Arc::clone(&known);
        let disk = disk.to_path_buf();
        async move {
            let off = b * u64::from(block_size);
            let len = u64::from(block_size).min(disk_size - off) as usize;
            let (digest, payload) =
                tokio::task::spawn_blocking(move || -> Result<(Digest, Option<Vec<u8>>)> {
                    let mut buf = vec![0u8; len];
                    read_full_at(&file, &mut buf, off)
                        .with_context(|| format!("read {} at {off}", disk.display()))?;
                    let d = hrl::chunk::block_digest(&buf);
                    if d == ZERO_DIGEST || known.contains(&d) {
                        return Ok((d, None));
                    }
                    Ok((d, Some(compress(&buf)?)))
                })
                .await
                .context("chunk worker failed")??;
            let put = match payload {
                Some(bytes) => {
                    let n = bytes.len() as u64;
                    Some((
                        store
                            .put_immutable(&hrl::store::chunk_key(&digest), bytes)
                            .await?,
                        n,
                    ))
                }
                None => None,
            };
            Ok::<_, anyhow::Error>((b, digest, put))
        }
    }))
    .buffer_unordered(IN_FLIGHT);

    while let Some(r) = results.next().await {
        let (b, digest, put) = r?;
        digests[b as usize] = digest;
        match put {
            Some((Put::Created, n)) => {
                stats.uploaded_chunks += 1;
                stats.uploaded_bytes += n;
            }
            Some((Put::Existed, _)) => stats.existing_chunks += 1,
            None if digest != ZERO_DIGEST => stats.existing_chunks += 1,
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
    let encoded = index.encode();
    stats.index_hash = hrl::to_hex(blake3::hash(&encoded).as_bytes());
    stats.index_key = index_key.to_string();
    store.put_immutable(index_key, encoded).await?;
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
    fn data_blocks_cover_segments_once() {
        assert_eq!(
            data_blocks(&[(0, 10), (5000, 9000)], 4096, 3),
            vec![0, 1, 2]
        );
        assert_eq!(data_blocks(&[(8192, 8193)], 4096, 4), vec![2]);
        assert_eq!(data_blocks(&[], 4096, 4), Vec::<u64>::new());
    }

    #[test]
    fn data_segments_skip_holes() {
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
        let segs = data_segments(&f, 64 << 20);
        let covered: u64 = segs.iter().map(|(s, e)| e - s).sum();
        assert!(
            segs.iter().any(|(s, e)| *s <= 32 << 20 && *e > 32 << 20),
            "{segs:?}"
        );
        assert!(covered < 64 << 20, "holes not detected: {segs:?}");
    }
}

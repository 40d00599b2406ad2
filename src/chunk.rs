//! Fixed-block chunking: a blake3 digest for every fixed-size block of an image, and the
//! chunk index (disk size, block size, digests) that describes an image in the store, as in
//! Proxmox Backup's fixed indexes. All-zero blocks get [`ZERO_DIGEST`] and are never stored.
//!
//! Encoded index: zstd of (magic `hrl-idx\0`, version u16, 2 reserved bytes, block size u32,
//! disk size u64, count u64, the digests, blake3 of all that). Runs of zero blocks compress
//! to almost nothing.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::Digest;

/// Digest recorded for a block that reads as all zeros (no blake3 output is all zeros in practice).
pub const ZERO_DIGEST: Digest = [0; 32];

const MAGIC: [u8; 8] = *b"hrl-idx\0";
const VERSION: u16 = 1;
const FIXED_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("chunk index is corrupt: {0}")]
    Corrupt(String),
    #[error("block size {0} is not a power of two between 4 KiB and 64 MiB")]
    BadBlockSize(u32),
}

/// The digests of every block of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIndex {
    pub block_size: u32,
    pub disk_size: u64,
    pub digests: Vec<Digest>,
}

/// Digest of one block; [`ZERO_DIGEST`] when it is all zeros.
pub fn block_digest(data: &[u8]) -> Digest {
    if is_zero(data) {
        ZERO_DIGEST
    } else {
        *blake3::hash(data).as_bytes()
    }
}

/// True when every byte is zero. OR-folds 4 KiB at a time (vectorized), stopping at the
/// first page with data.
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|page| page.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

pub fn check_block_size(block_size: u32) -> Result<(), ChunkError> {
    if block_size.is_power_of_two() && (4096..=(64 << 20)).contains(&block_size) {
        Ok(())
    } else {
        Err(ChunkError::BadBlockSize(block_size))
    }
}

impl ChunkIndex {
    pub fn block_count(disk_size: u64, block_size: u32) -> u64 {
        disk_size.div_ceil(u64::from(block_size))
    }

    /// Byte range `(offset, len)` of block `i` (the last block may be short).
    pub fn block_range(&self, i: u64) -> (u64, u64) {
        let off = i * u64::from(self.block_size);
        (
            off,
            u64::from(self.block_size).min(self.disk_size.saturating_sub(off)),
        )
    }

    /// Number of blocks that are not all zero.
    pub fn nonzero_blocks(&self) -> usize {
        self.digests.iter().filter(|d| **d != ZERO_DIGEST).count()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(FIXED_LEN + self.digests.len() * 32 + 32);
        raw.extend_from_slice(&MAGIC);
        raw.extend_from_slice(&VERSION.to_le_bytes());
        raw.extend_from_slice(&[0, 0]);
        raw.extend_from_slice(&self.block_size.to_le_bytes());
        raw.extend_from_slice(&self.disk_size.to_le_bytes());
        raw.extend_from_slice(&(self.digests.len() as u64).to_le_bytes());
        for d in &self.digests {
            raw.extend_from_slice(d);
        }
        let sum = blake3::hash(&raw);
        raw.extend_from_slice(sum.as_bytes());
        // Level 3 zstd of in-memory bytes cannot fail short of an allocation failure.
        zstd::bulk::compress(&raw, 3).unwrap_or(raw)
    }

    pub fn decode(bytes: &[u8]) -> Result<ChunkIndex, ChunkError> {
        let corrupt = |s: &str| ChunkError::Corrupt(s.to_string());
        // The store is untrusted: a few bytes of zstd can expand to any size, so stop
        // reading past the largest index a valid disk can have.
        let limit = FIXED_LEN as u64 + crate::store_check::MAX_INDEX_BLOCKS * 32 + 32;
        let mut raw = Vec::new();
        let decoder = zstd::stream::read::Decoder::new(bytes)
            .map_err(|e| ChunkError::Corrupt(format!("not zstd: {e}")))?;
        std::io::Read::read_to_end(&mut std::io::Read::take(decoder, limit + 1), &mut raw)
            .map_err(|e| ChunkError::Corrupt(format!("not zstd: {e}")))?;
        if raw.len() as u64 > limit {
            return Err(corrupt("larger than any index can be"));
        }
        if raw.len() < FIXED_LEN + 32 || raw[0..8] != MAGIC {
            return Err(corrupt("bad magic or too short"));
        }
        let (body, sum) = raw.split_at(raw.len() - 32);
        if blake3::hash(body).as_bytes()[..] != *sum {
            return Err(corrupt("checksum mismatch"));
        }
        if u16::from_le_bytes([body[8], body[9]]) != VERSION {
            return Err(corrupt("unsupported version"));
        }
        let block_size = u32::from_le_bytes([body[12], body[13], body[14], body[15]]);
        let disk_size = u64::from_le_bytes(body[16..24].try_into().map_err(|_| corrupt("short"))?);
        let count = u64::from_le_bytes(body[24..32].try_into().map_err(|_| corrupt("short"))?);
        check_block_size(block_size).map_err(|e| ChunkError::Corrupt(e.to_string()))?;
        if disk_size > crate::store_check::MAX_DISK_SIZE
            || count != Self::block_count(disk_size, block_size)
            || (body.len() - FIXED_LEN) as u64 != count.saturating_mul(32)
        {
            return Err(corrupt("digest count does not match the disk size"));
        }
        let digests = body[FIXED_LEN..]
            .chunks_exact(32)
            .map(|c| {
                let mut d = [0u8; 32];
                d.copy_from_slice(c);
                d
            })
            .collect();
        Ok(ChunkIndex {
            block_size,
            disk_size,
            digests,
        })
    }
}

/// Hashes every block of the file at `path`, on all cores. Holes of sparse files are skipped
/// without reading them (SEEK_DATA), so a mostly empty 100 GiB image hashes in moments.
pub fn hash_file(path: &Path, block_size: u32) -> Result<ChunkIndex, ChunkError> {
    check_block_size(block_size)?;
    let io = |op| {
        move |source| ChunkError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    };
    let file = File::open(path).map_err(io("open image"))?;
    let disk_size = file.metadata().map_err(io("stat image"))?.len();
    let count = ChunkIndex::block_count(disk_size, block_size);
    let mut digests = vec![ZERO_DIGEST; count as usize];
    let data_blocks =
        data_block_ranges(&file, disk_size, block_size).map_err(io("find data extents"))?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    // Split the data blocks into contiguous shares of roughly equal count.
    let total: u64 = data_blocks.iter().map(|(a, b)| b - a).sum();
    let per = total.div_ceil(threads as u64).max(1);
    let mut shares: Vec<Vec<(u64, u64)>> = vec![Vec::new()];
    let mut in_share = 0u64;
    for &(mut a, b) in &data_blocks {
        while a < b {
            let take = (b - a).min(per - in_share);
            if let Some(s) = shares.last_mut() {
                s.push((a, a + take));
            }
            a += take;
            in_share += take;
            if in_share == per {
                shares.push(Vec::new());
                in_share = 0;
            }
        }
    }
    let results: Vec<Result<Vec<(u64, Digest)>, std::io::Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .iter()
            .map(|share| {
                let file = &file;
                s.spawn(move || hash_blocks(file, disk_size, block_size, share))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("hashing thread panicked")))
            })
            .collect()
    });
    for r in results {
        for (i, d) in r.map_err(io("read image"))? {
            digests[i as usize] = d;
        }
    }
    Ok(ChunkIndex {
        block_size,
        disk_size,
        digests,
    })
}

fn hash_blocks(
    file: &File,
    disk_size: u64,
    block_size: u32,
    ranges: &[(u64, u64)],
) -> std::io::Result<Vec<(u64, Digest)>> {
    let bs = u64::from(block_size);
    let mut out = Vec::new();
    let mut buf = vec![0u8; block_size as usize];
    for &(a, b) in ranges {
        for i in a..b {
            let off = i * bs;
            let n = bs.min(disk_size - off) as usize;
            file.read_exact_at(&mut buf[..n], off)?;
            out.push((i, block_digest(&buf[..n])));
        }
    }
    Ok(out)
}

/// Block index ranges `[first, last)` that hold data (not wholly inside a hole): the one
/// SEEK_DATA walk of hrl (the shipper's copies use it too).
pub fn data_block_ranges(
    file: &File,
    disk_size: u64,
    block_size: u32,
) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let bs = u64::from(block_size);
    let count = disk_size.div_ceil(bs);
    let fd = file.as_raw_fd();
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    while pos < disk_size {
        // SAFETY: lseek on an open descriptor.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENXIO) => break, // no data after pos
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => return Ok(vec![(pos / bs, count)]),
                _ => return Err(e),
            }
        }
        let data = data as u64;
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            disk_size
        } else {
            (hole as u64).min(disk_size)
        };
        let (first, last) = (data / bs, hole.div_ceil(bs));
        match out.last_mut() {
            Some(prev) if prev.1 >= first => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
        pos = hole.max(data + 1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sparse_file_index_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(10 * 65536 + 100).unwrap();
        f.write_all_at(b"hello", 3 * 65536 + 7).unwrap();
        f.write_all_at(b"tail", 10 * 65536 + 50).unwrap();
        drop(f);
        let idx = hash_file(&p, 65536).unwrap();
        assert_eq!(idx.digests.len(), 11);
        assert_eq!(idx.nonzero_blocks(), 2);
        let mut block = vec![0u8; 65536];
        block[7..12].copy_from_slice(b"hello");
        assert_eq!(idx.digests[3], *blake3::hash(&block).as_bytes());
        let mut last = vec![0u8; 100];
        last[50..54].copy_from_slice(b"tail");
        assert_eq!(idx.digests[10], block_digest(&last));
        assert_eq!(idx.block_range(10), (10 * 65536, 100));
        let enc = idx.encode();
        assert_eq!(ChunkIndex::decode(&enc).unwrap(), idx);
        assert!(ChunkIndex::decode(&enc[..enc.len() - 1]).is_err());
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 4099]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[17] = 1;
        assert!(!is_zero(&v));
        assert_eq!(block_digest(&[0u8; 4096]), ZERO_DIGEST);
        let mut w = std::io::Cursor::new(Vec::new());
        w.write_all(b"x").unwrap();
        assert_ne!(block_digest(w.get_ref()), ZERO_DIGEST);
    }
}

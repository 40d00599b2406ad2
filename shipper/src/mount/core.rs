//! The mounted point without FUSE: the disks, reads (overlay, then the point's model: log
//! payloads from the local log copies, base chunks on demand, zeros) and writes into the
//! overlay. The FUSE adapter only converts its requests to these calls, and tests drive it
//! directly.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hrl::log::Source;
use hrl::store::{DiskEntry, FileAttrs, PointManifest};

use super::blocks::{Block, Blocks};
use super::error::{MountError, MountResult};
use super::overlay::{Overlay, GRANULE};
use crate::store::logs::{load_disk, LoadedDisk, LogMemory};
use crate::store::GroupStore;

/// How a point is served.
#[derive(Debug, Clone)]
pub struct CoreOptions {
    pub read_only: bool,
    /// Bytes of decompressed chunks kept in memory.
    pub cache_bytes: u64,
    /// Bytes read ahead of a sequential reader.
    pub prefetch_bytes: u64,
}

/// One disk of the mounted point.
pub struct MountedDisk {
    pub name: String,
    pub size: u64,
    pub file: Option<FileAttrs>,
    data: Result<LoadedDisk, String>,
    overlay: Option<Overlay>,
    /// Serializes the read-modify-write of partial granules.
    write_lock: tokio::sync::Mutex<()>,
    /// Where the last read ended (sequential detection).
    last_end: AtomicU64,
}

pub struct MountCore {
    pub point: PointManifest,
    pub disks: Vec<MountedDisk>,
    pub blocks: Arc<Blocks>,
    pub options: CoreOptions,
}

impl MountCore {
    /// Opens every disk of `point`; logs and overlays go under `scratch` (an empty private
    /// directory). A disk that does not load is kept, broken: its reads fail with EIO and
    /// the reason is logged here, naming the object.
    pub async fn open(
        store: &GroupStore,
        point: PointManifest,
        scratch: &Path,
        options: CoreOptions,
    ) -> anyhow::Result<MountCore> {
        let mut disks = Vec::new();
        for (i, d) in point.disks.iter().enumerate() {
            hrl::store_check::check_disk_name(&d.name)?;
            // The mount keeps its logs for as long as it runs: in files, not in memory.
            let data = load_disk(
                store,
                d,
                &scratch.join(format!("logs-{i}")),
                LogMemory::NONE,
            )
            .await
            .map_err(|e| {
                let why = format!("{e:#}");
                tracing::warn!(disk = %hrl::display::escaped(&d.name), error = %why,
                        "this disk cannot be served: every read of it fails with EIO");
                why
            });
            let overlay = match options.read_only {
                true => None,
                false => Some(Overlay::create(
                    &scratch.join(format!("overlay-{i}")),
                    d.disk_size,
                )?),
            };
            disks.push(disk(d, data, overlay));
        }
        Ok(MountCore {
            point,
            disks,
            blocks: Arc::new(Blocks::new(store.clone(), options.cache_bytes)),
            options,
        })
    }

    fn disk(&self, i: usize) -> MountResult<&MountedDisk> {
        self.disks.get(i).ok_or(MountError::NoDisk)
    }

    /// Reads up to `len` bytes at `offset` of disk `i` (short at the end of the disk).
    pub async fn read(&self, i: usize, offset: u64, len: u64) -> MountResult<Vec<u8>> {
        let d = self.disk(i)?;
        let len = len.min(d.size.saturating_sub(offset));
        let mut out = vec![0u8; len as usize];
        let runs = match &d.overlay {
            Some(o) => o.runs(offset, len),
            None => vec![super::overlay::Run {
                offset,
                len,
                written: false,
            }],
        };
        for r in runs {
            let at = (r.offset - offset) as usize;
            let buf = &mut out[at..at + r.len as usize];
            match (&d.overlay, r.written) {
                (Some(o), true) => o.read(r.offset, buf)?,
                _ => self.read_point(i, d, r.offset, buf).await?,
            }
        }
        if d.last_end.swap(offset + len, Ordering::Relaxed) == offset && len > 0 {
            self.prefetch(i, d, offset + len);
        }
        Ok(out)
    }

    /// Fills `buf` with the point's bytes at `offset` of disk `d` (index `i`).
    async fn read_point(
        &self,
        i: usize,
        d: &MountedDisk,
        offset: u64,
        buf: &mut [u8],
    ) -> MountResult<()> {
        let data = d.data.as_ref().map_err(|why| MountError::Broken {
            disk: hrl::display::escaped(&d.name).to_string(),
            why: why.clone(),
        })?;
        for p in data.model.pieces(offset, buf.len() as u64) {
            let at = (p.offset - offset) as usize;
            let dst = &mut buf[at..at + p.len as usize];
            match p.source {
                None => dst.fill(0),
                Some(Source::Log { log, at }) => data.logs[log]
                    .read_exact_at(dst, at)
                    .map_err(|e| MountError::local("read a local log copy", e))?,
                Some(Source::Base) => self.read_base(i, data, p.offset, dst).await?,
            }
        }
        Ok(())
    }

    async fn read_base(
        &self,
        i: usize,
        data: &LoadedDisk,
        offset: u64,
        dst: &mut [u8],
    ) -> MountResult<()> {
        let bs = u64::from(data.index.block_size);
        let mut pos = offset;
        let end = offset + dst.len() as u64;
        while pos < end {
            let block = pos / bs;
            let in_block = (pos - block * bs) as usize;
            let n = ((block + 1) * bs).min(end) - pos;
            let out = &mut dst[(pos - offset) as usize..(pos - offset + n) as usize];
            match self.blocks.get(i, &data.index, block).await? {
                Block::Zero(_) => out.fill(0),
                Block::Data(c) => match c.get(in_block..in_block + n as usize) {
                    Some(s) => out.copy_from_slice(s),
                    None => {
                        return Err(MountError::Unreadable {
                            object: format!("block {block} of disk {}", data.index.disk_size),
                            why: "chunk shorter than the index says".into(),
                        })
                    }
                },
            }
            pos += n;
        }
        Ok(())
    }

    /// Starts fetching the base blocks after `from` that a sequential reader needs next.
    fn prefetch(&self, i: usize, d: &MountedDisk, from: u64) {
        let Ok(data) = &d.data else {
            return;
        };
        let bs = u64::from(data.index.block_size);
        let end = from.saturating_add(self.options.prefetch_bytes).min(d.size);
        let mut b = from / bs;
        while b * bs < end {
            let (s, e) = (b * bs, ((b + 1) * bs).min(d.size));
            let from_base = data
                .model
                .pieces(s, e - s)
                .iter()
                .any(|p| p.source == Some(Source::Base));
            if from_base {
                self.blocks.prefetch(i, &data.index, b);
            }
            b += 1;
        }
    }

    /// Writes `data` at `offset` of disk `i` into its overlay.
    pub async fn write(&self, i: usize, offset: u64, data: &[u8]) -> MountResult<usize> {
        let d = self.disk(i)?;
        let overlay = d.overlay.as_ref().ok_or(MountError::ReadOnly)?;
        let end = offset + data.len() as u64;
        if end > d.size {
            return Err(MountError::PastEnd {
                disk: hrl::display::escaped(&d.name).to_string(),
                offset: end,
                size: d.size,
            });
        }
        if data.is_empty() {
            return Ok(0);
        }
        let _g = d.write_lock.lock().await;
        let start = offset / GRANULE * GRANULE;
        let stop = end.div_ceil(GRANULE) * GRANULE;
        let mut buf = vec![0u8; (stop - start) as usize];
        // The granules only partly covered keep the rest of their bytes: read them first.
        let mut edges = vec![start];
        if stop - GRANULE != start {
            edges.push(stop - GRANULE);
        }
        for g in edges {
            let covered = offset <= g && end >= g + GRANULE;
            if !covered {
                let cur = self.read(i, g, GRANULE).await?;
                let at = (g - start) as usize;
                buf[at..at + cur.len()].copy_from_slice(&cur);
            }
        }
        let at = (offset - start) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        // The last granule of a disk whose size is not a granule multiple is short.
        let keep = (d.size.min(stop) - start) as usize;
        overlay.write_granules(start, &buf[..keep])?;
        Ok(data.len())
    }

    /// Makes the overlay's writes durable (fsync through the mount).
    pub fn sync(&self, i: usize) -> MountResult<()> {
        match &self.disk(i)?.overlay {
            Some(o) => o.sync(),
            None => Ok(()),
        }
    }

    /// Why each disk that cannot be served failed to load.
    pub fn broken_disks(&self) -> Vec<String> {
        self.disks
            .iter()
            .filter_map(|d| d.data.as_ref().err())
            .cloned()
            .collect()
    }

    /// Bytes written into overlays since the mount.
    pub fn overlay_bytes(&self) -> u64 {
        self.disks
            .iter()
            .filter_map(|d| d.overlay.as_ref())
            .map(Overlay::written_bytes)
            .sum()
    }
}

fn disk(d: &DiskEntry, data: Result<LoadedDisk, String>, overlay: Option<Overlay>) -> MountedDisk {
    MountedDisk {
        name: d.name.clone(),
        size: d.disk_size,
        file: d.file,
        data,
        overlay,
        write_lock: tokio::sync::Mutex::new(()),
        last_end: AtomicU64::new(u64::MAX),
    }
}

//! Restore: a recovery point -> for every disk, a sparse image holding the disk at the
//! point. The base index and the shipped logs are fetched together; the logs are verified
//! as a chain (up to the point's chain hash) and folded over the base into one model of the
//! final disk in the same pass ([`crate::store::logs::load_disk`], shared with the mount);
//! then every block of the final disk is written once, in disk order, by one writer thread:
//! base chunks fetched, decompressed and verified [`CHUNKS_IN_FLIGHT`] at a time but
//! consumed in order (a local store's chunk read, decompressed and verified in one blocking
//! task), log payloads read from the local copies (small logs kept in memory:
//! [`LogMemory::RESTORE`]), zeros left as holes. A chunk
//! the logs overwrite whole is never fetched. Everything is verified (chunk digests, index
//! hash, the log chain) before a disk gets its final name, so a damaged store never yields a
//! silently wrong disk, and a failed restore leaves nothing behind.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use hrl::chunk::{ChunkIndex, ZERO_DIGEST};
use hrl::log::{DiskModel, LocalLog, Piece, Source};
use hrl::store::{DiskEntry, FileAttrs, PointManifest};
use tracing::{debug, info};

use crate::store::chunks::ChunkStore;
use crate::store::logs::{load_disk, LoadedDisk, LogMemory};
use crate::store::GroupStore;

/// Base chunks fetched (downloaded, decompressed, verified) at once, ahead of the writer.
pub const CHUNKS_IN_FLIGHT: usize = 32;

/// The writer starts the writeback of every this many bytes it wrote (`sync_file_range`),
/// so the final `fsync` does not find the whole disk dirty.
const WRITEBACK_EVERY: u64 = 32 << 20;

#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    pub disks: Vec<(String, u64)>,
    pub chunk_bytes: u64,
    pub logs: usize,
    /// Bytes of the logs fetched (uncompressed).
    pub log_bytes: u64,
}

/// Restores every disk of `point` into `to` (which must not already hold those names).
/// Names come from the store, which is not trusted: each is one checked path component, and
/// every file is created with `O_EXCL | O_NOFOLLOW` and renamed without replacing, so nothing
/// is written outside `to` or through a planted symlink (docs/SECURITY.md).
pub async fn restore_point(
    store: &GroupStore,
    point: &PointManifest,
    to: &Path,
) -> Result<RestoreReport> {
    std::fs::create_dir_all(to)
        .with_context(|| format!("create restore directory {}", to.display()))?;
    for d in &point.disks {
        hrl::store_check::check_disk_name(&d.name)
            .with_context(|| format!("point {} cannot be restored", point.id))?;
        let dest = to.join(&d.name);
        if std::fs::symlink_metadata(&dest).is_ok() {
            bail!(
                "{} exists already; restore into an empty directory (nothing was changed)",
                dest.display()
            );
        }
    }
    let mut report = RestoreReport::default();
    for d in &point.disks {
        restore_one(store, d, to, false, &mut report)
            .await
            .map_err(|e| e.context(format!("point {} was not restored", point.id)))?;
    }
    Ok(report)
}

/// Restores disk `d` into `to` whole: built under a hidden name and given its final name
/// only when complete and verified. `replace`: an existing file of that name (an older
/// version of the disk, a failback) is replaced by that rename; else one is an error.
pub async fn restore_one(
    store: &GroupStore,
    d: &DiskEntry,
    to: &Path,
    replace: bool,
    report: &mut RestoreReport,
) -> Result<()> {
    let dest = to.join(&d.name);
    let partial = to.join(format!(".{}.hrl-restoring", d.disk_id));
    let _ = std::fs::remove_file(&partial);
    let r = restore_disk(store, d, &partial, report).await;
    let done = r.and_then(|file| {
        if replace {
            apply_attrs(&file, d, &partial)?;
            std::fs::rename(&partial, &dest)
                .with_context(|| format!("rename {} to {}", partial.display(), dest.display()))?;
        } else {
            finish_disk(&file, d, &partial, &dest)?;
        }
        // The new name survives a power loss too: the failover that follows takes the
        // group over for disks it believes named.
        super::marker::sync_dir(to)
    });
    if let Err(e) = done {
        let _ = std::fs::remove_file(&partial);
        return Err(e.context(format!(
            "restore of disk {} failed; nothing was left behind",
            hrl::display::escaped(&d.name)
        )));
    }
    report.disks.push((d.name.clone(), d.disk_size));
    info!(disk = %hrl::display::escaped(&d.name), size = d.disk_size, "restored");
    Ok(())
}

/// Gives a restored disk the mode and owner recorded at its seal (0600 root when the point
/// predates that record; never setuid, setgid or sticky), then its final name, refusing to
/// replace anything that appeared there meanwhile.
fn finish_disk(file: &std::fs::File, d: &DiskEntry, partial: &Path, dest: &Path) -> Result<()> {
    apply_attrs(file, d, partial)?;
    rename_noreplace(partial, dest)
}

/// Gives the disk open as `file` (at `path`, for messages) the mode and owner recorded at
/// its seal (0600 root when the point predates that record; never setuid, setgid, sticky).
pub fn apply_attrs(file: &std::fs::File, d: &DiskEntry, path: &Path) -> Result<()> {
    let (mode, uid, gid) = match d.file {
        Some(a) => (a.mode & FileAttrs::RESTORE_MASK, a.uid, a.gid),
        None => (0o600, 0, 0),
    };
    let fd = file.as_raw_fd();
    // SAFETY: plain syscalls on our own descriptor.
    if unsafe { libc::fchown(fd, uid, gid) } != 0 || unsafe { libc::fchmod(fd, mode) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("set owner and mode of {}", path.display()));
    }
    Ok(())
}

fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).context("path has NUL");
    let (a, b) = (c(from)?, c(to)?);
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("rename {} to {}", from.display(), to.display()));
    }
    Ok(())
}

async fn restore_disk(
    store: &GroupStore,
    d: &DiskEntry,
    image: &Path,
    report: &mut RestoreReport,
) -> Result<Arc<File>> {
    let tmp = tempfile::Builder::new()
        .prefix(".hrl-restore-logs")
        .tempdir_in(image.parent().unwrap_or(Path::new(".")))
        .context("create temporary directory for logs")?;
    let LoadedDisk {
        index,
        model,
        logs,
        log_bytes,
    } = load_disk(store, d, tmp.path(), LogMemory::RESTORE).await?;
    let log_count = logs.len();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(image)
        .with_context(|| format!("create {}", image.display()))?;
    file.set_len(model.size())
        .with_context(|| format!("size {}", image.display()))?;
    let file = Arc::new(file);
    let started = std::time::Instant::now();
    let written = write_disk(store, &index, &model, logs, &file).await?;
    file.sync_all()
        .with_context(|| format!("sync {}", image.display()))?;
    debug!(disk = %hrl::display::escaped(&d.name), ranges = model.range_count(),
        chunks = written.chunks, bytes = written.bytes, secs = started.elapsed().as_secs_f64(),
        "disk written");
    report.chunk_bytes += written.chunk_bytes;
    report.logs += log_count;
    report.log_bytes += log_bytes;
    Ok(file)
}

/// What writing a disk did.
#[derive(Debug, Default)]
struct Written {
    /// Base chunks fetched, and their bytes.
    chunks: u64,
    chunk_bytes: u64,
    /// Bytes written into the image (holes are not written).
    bytes: u64,
}

/// One block of the final disk for the writer: its pieces, and the base's chunk of that
/// block when a piece comes from the base (`None`: the base holds zeros there).
struct BlockJob {
    start: u64,
    pieces: Vec<Piece>,
    chunk: Option<Vec<u8>>,
}

/// The blocks (of the base's block size) of the final disk that hold anything but zeros,
/// in disk order: those a log range touches, and those a base range touches where the
/// base's chunk is not all zero.
fn blocks_to_write(model: &DiskModel, index: &ChunkIndex) -> Vec<u64> {
    let bs = u64::from(index.block_size);
    let mut out: Vec<u64> = Vec::new();
    for (start, len, source) in model.ranges() {
        if len == 0 {
            continue;
        }
        let (first, last) = (start / bs, (start + len - 1) / bs);
        let from = match out.last() {
            Some(&b) if b >= first => b + 1,
            _ => first,
        };
        for b in from..=last {
            let data = match source {
                Source::Log { .. } => true,
                Source::Base => index
                    .digests
                    .get(b as usize)
                    .is_some_and(|dg| *dg != ZERO_DIGEST),
            };
            if data {
                out.push(b);
            }
        }
    }
    out
}

/// Writes every block of `model` into `file`: base chunks fetched [`CHUNKS_IN_FLIGHT`] at
/// once (only those a piece of the final disk still reads) and handed in disk order to one
/// writer thread, which also reads the log payloads from `logs` (the chain's local copies).
async fn write_disk(
    store: &GroupStore,
    index: &ChunkIndex,
    model: &DiskModel,
    logs: Vec<LocalLog>,
    file: &Arc<File>,
) -> Result<Written> {
    let chunks = ChunkStore::new(store);
    let bs = u64::from(index.block_size);
    let (tx, rx) = tokio::sync::mpsc::channel::<BlockJob>(CHUNKS_IN_FLIGHT);
    let out = Arc::clone(file);
    let writer = tokio::task::spawn_blocking(move || write_blocks(&out, &logs, rx));
    let jobs = blocks_to_write(model, index).into_iter().map(|b| {
        let start = b * bs;
        let pieces = model.pieces(start, bs);
        let digest = index
            .digests
            .get(b as usize)
            .copied()
            .filter(|dg| *dg != ZERO_DIGEST)
            .filter(|_| pieces.iter().any(|p| p.source == Some(Source::Base)));
        let len = index.block_range(b).1 as usize;
        async move {
            let chunk = match digest {
                Some(dg) => Some(chunks.read_block(&dg, len).await?),
                None => None,
            };
            Ok::<_, crate::store::StoreError>(BlockJob {
                start,
                pieces,
                chunk,
            })
        }
    });
    let mut stream = futures::stream::iter(jobs).buffered(CHUNKS_IN_FLIGHT);
    let (mut fetched, mut fetched_bytes) = (0u64, 0u64);
    let fed: Result<()> = async {
        while let Some(job) = stream.next().await {
            let job = job?;
            if let Some(c) = &job.chunk {
                fetched += 1;
                fetched_bytes += c.len() as u64;
            }
            if tx.send(job).await.is_err() {
                // The writer stopped: its error is the one to report.
                break;
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    let bytes = writer
        .await
        .context("restore writer failed")?
        .context("write restored disk")?;
    fed?;
    Ok(Written {
        chunks: fetched,
        chunk_bytes: fetched_bytes,
        bytes,
    })
}

/// The writer: each block's runs of data written once (a run read straight from the base's
/// chunk, or put together from several pieces), holes left unwritten, writeback started
/// every [`WRITEBACK_EVERY`] bytes. Returns the bytes written.
fn write_blocks(
    file: &File,
    logs: &[LocalLog],
    mut rx: tokio::sync::mpsc::Receiver<BlockJob>,
) -> std::io::Result<u64> {
    let mut buf: Vec<u8> = Vec::new();
    let (mut written, mut kicked_at, mut end) = (0u64, 0u64, 0u64);
    while let Some(job) = rx.blocking_recv() {
        let hole = |p: &Piece| match p.source {
            None => true,
            Some(Source::Base) => job.chunk.is_none(),
            Some(Source::Log { .. }) => false,
        };
        let mut i = 0;
        while i < job.pieces.len() {
            if hole(&job.pieces[i]) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < job.pieces.len() && !hole(&job.pieces[j]) {
                j += 1;
            }
            let run = &job.pieces[i..j];
            let at = run[0].offset;
            let len: u64 = run.iter().map(|p| p.len).sum();
            let data: &[u8] = match run {
                [p] if p.source == Some(Source::Base) => base_part(&job, p)?,
                _ => {
                    buf.clear();
                    buf.resize(len as usize, 0);
                    let mut pos = 0usize;
                    for p in run {
                        let dst = &mut buf[pos..pos + p.len as usize];
                        match p.source {
                            Some(Source::Log { log, at }) => logs
                                .get(log)
                                .ok_or_else(|| bad("a piece names a log the chain lacks"))?
                                .read_exact_at(dst, at)?,
                            _ => dst.copy_from_slice(base_part(&job, p)?),
                        }
                        pos += p.len as usize;
                    }
                    buf.as_slice()
                }
            };
            // A run that reads as zero (zeros written by the guest) stays a hole too.
            if !hrl::chunk::is_zero(data) {
                file.write_all_at(data, at)?;
                written += len;
            }
            end = at + len;
            i = j;
        }
        if end >= kicked_at + WRITEBACK_EVERY {
            start_writeback(file, kicked_at, end - kicked_at);
            kicked_at = end;
        }
    }
    Ok(written)
}

/// The bytes of base piece `p` in its block's chunk.
fn base_part<'a>(job: &'a BlockJob, p: &Piece) -> std::io::Result<&'a [u8]> {
    let from = (p.offset - job.start) as usize;
    job.chunk
        .as_deref()
        .and_then(|c| c.get(from..from + p.len as usize))
        .ok_or_else(|| bad("a base piece reaches past its chunk"))
}

fn bad(why: &str) -> std::io::Error {
    std::io::Error::other(format!("internal: {why}"))
}

/// Starts writing back `[offset, offset + len)` of `file` without waiting for it (a hint:
/// the final `fsync` makes it durable, so a failure here changes nothing).
fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: plain syscall on an open descriptor.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if rc != 0 {
        debug!("sync_file_range: {}", std::io::Error::last_os_error());
    }
}

//! Restore: a recovery point -> for every disk, its base chunks written into a sparse image,
//! then its shipped logs replayed in chain order. Everything is verified (chunk digests, index
//! hash, log chain up to the point's chain hash) before a disk gets its final name, so a
//! damaged store never yields a silently wrong disk.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use hrl::chunk::{ChunkIndex, ZERO_DIGEST};
use hrl::store::{DiskEntry, FileAttrs, PointManifest};
use tracing::info;

use crate::service::retry::Fatal;
use crate::store::chunks::ChunkStore;
use crate::store::index::fetch_base_index;
use crate::store::GroupStore;

/// Chunk downloads in flight.
const IN_FLIGHT: usize = 16;

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
                .with_context(|| format!("rename {} to {}", partial.display(), dest.display()))
        } else {
            finish_disk(&file, d, &partial, &dest)
        }
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
) -> Result<Arc<std::fs::File>> {
    let index = fetch_base_index(store, &d.base).await?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(image)
        .with_context(|| format!("create {}", image.display()))?;
    file.set_len(index.disk_size)
        .with_context(|| format!("size {}", image.display()))?;
    let file = Arc::new(file);
    report.chunk_bytes += write_base(store, &index, &file).await?;
    if d.last_seq > d.base.after_seq {
        let (n, bytes) = replay_logs(store, d, image, &file).await?;
        report.logs += n;
        report.log_bytes += bytes;
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
    Ok(file)
}

/// Writes every non-zero block of `index` into `file` (chunks verified); returns the bytes.
async fn write_base(
    store: &GroupStore,
    index: &ChunkIndex,
    file: &Arc<std::fs::File>,
) -> Result<u64> {
    let chunks = ChunkStore::new(store);
    let block_size = u64::from(index.block_size);
    let jobs = index
        .digests
        .iter()
        .enumerate()
        .filter(|(_, dg)| **dg != ZERO_DIGEST)
        .map(|(i, dg)| {
            let file = Arc::clone(file);
            let off = i as u64 * block_size;
            let expected_len = block_size.min(index.disk_size - off) as usize;
            async move {
                let data = chunks.read(dg).await?;
                if data.len() != expected_len {
                    let key = hrl::store::chunk_key(dg);
                    return Err(store
                        .damaged("chunk", &key, "content does not match its digest")
                        .into());
                }
                tokio::task::spawn_blocking(move || {
                    file.write_all_at(&data, off).map(|_| data.len() as u64)
                })
                .await
                .context("restore worker failed")?
                .context("write restored block")
            }
        });
    let mut stream = futures::stream::iter(jobs).buffer_unordered(IN_FLIGHT);
    let mut bytes = 0;
    while let Some(r) = stream.next().await {
        bytes += r?;
    }
    Ok(bytes)
}

/// Replays `d`'s shipped logs onto `file` (created at `image`), checking the chain ends at
/// the point's chain hash; returns how many logs it applied, and their bytes.
async fn replay_logs(
    store: &GroupStore,
    d: &DiskEntry,
    image: &Path,
    file: &std::fs::File,
) -> Result<(usize, u64)> {
    let tmp = tempfile::Builder::new()
        .prefix(".hrl-restore-logs")
        .tempdir_in(image.parent().unwrap_or(Path::new(".")))
        .context("create temporary directory for logs")?;
    let local = crate::store::logs::fetch_chain(store, d, tmp.path()).await?;
    let n = local.len();
    let bytes = local
        .iter()
        .filter_map(|l| std::fs::metadata(l).ok())
        .map(|m| m.len())
        .sum();
    let prev = hrl::from_hex::<32>(&d.base.after_chain_hash)
        .with_context(|| format!("manifest of disk {} has a bad chain hash", d.name))?;
    // Replay onto the file created above, not whatever has its name by now.
    let image_owned = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
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
    let want = hrl::from_hex::<32>(&d.last_chain_hash);
    if summary.chain_hash.is_none() || summary.chain_hash != want {
        let got = summary
            .chain_hash
            .map(|h| hrl::to_hex(&h))
            .unwrap_or_default();
        return Err(Fatal(format!(
            "logs of disk {} end at chain hash {got}, but the point names {}; the store is damaged",
            d.name, d.last_chain_hash
        ))
        .into());
    }
    Ok((n, bytes))
}

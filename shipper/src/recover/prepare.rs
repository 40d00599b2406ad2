//! `failover --prepare`: a first pass while the other side is still live (as ASR's). Each
//! disk of the point is built, delta-updated or caught up under its hidden name
//! `.<disk id>.hrl-prepared` (a failback's older disk is moved there first) and recorded in
//! the directory's marker ([`super::marker`]). Nothing is trusted or claimed: no final disk
//! names, no tracker files, no shipper state, no owner record, no store write. The final
//! `failover --to DIR` (after a planned failover on the other side, or not) then fetches
//! only the logs since each disk's prepared point ([`bring_up`]), names the disks and takes
//! the group.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hrl::store::DiskEntry;

use super::failover::{FailoverReport, FailoverRequest};
use super::marker::{self, Marker};
use crate::replicate::owner;
use crate::store::GroupStore;

/// Runs a prepare pass into `r.to` (see the module doc); the report's epoch is 0 (nothing
/// was taken).
pub async fn prepare(r: &FailoverRequest<'_>) -> Result<FailoverReport> {
    super::failover::check_not_mounted(r.to)?;
    let records = owner::records(r.store).await?;
    let point = super::failover::choose_point(r.store, r.point, records.last()).await?;
    super::failover::plan_target(r.to, &point, r.full)?;
    for d in &point.disks {
        hrl::store_check::check_disk_name(&d.name)
            .with_context(|| format!("point {} cannot be prepared", point.id))?;
    }
    crate::private::create_dir(r.to).with_context(|| format!("create {}", r.to.display()))?;
    let dir = owner::canonical_dir(r.to);
    remove_leftovers(&dir)?;
    let mut mk = Marker::load(&dir, &r.store.group, &r.store.target.url, r.state_dir)?;
    let state_dir = r.state_dir.to_path_buf();
    let pause = move || crate::replicate::stop::pause(&state_dir, "mid-prepare");
    let mut disks = Vec::new();
    for e in &point.disks {
        let hidden = dir.join(marker::prepared_name(&e.disk_id));
        let named = dir.join(&e.name);
        let older = std::fs::symlink_metadata(&named).is_ok_and(|m| m.file_type().is_file());
        if !r.full && older && std::fs::symlink_metadata(&hidden).is_err() {
            // A failback: the older disk becomes the prepared one (its tracker files go
            // first: they describe a disk that is no longer there).
            super::delta::remove_tracker_files(&dir, &e.name)?;
            std::fs::rename(&named, &hidden)
                .with_context(|| format!("rename {} to {}", named.display(), hidden.display()))?;
            marker::sync_dir(&dir)?;
        }
        let (how, down) = bring_up(r.store, point.id, e, &dir, &mut mk, r.full, &pause)
            .await
            .with_context(|| {
                format!(
                    "prepare of point {} stopped at disk {}; run it again to go on (nothing was claimed)",
                    point.id,
                    hrl::display::escaped(&e.name)
                )
            })?;
        tracing::info!(disk = %hrl::display::escaped(&e.name), how, bytes = down, "prepared");
        disks.push((e.name.clone(), e.disk_size, down, how));
    }
    remove_strays(&dir, &point, &mut mk)?;
    Ok(FailoverReport {
        point: point.id,
        epoch: 0,
        previous_owner: None,
        bytes_downloaded: disks.iter().map(|d| d.2).sum(),
        disks,
    })
}

/// Brings the hidden file of `e` in `dir` to `e`'s state (point `point`): `kept` when its
/// trusted entry names that state already; `prepared` when it names an earlier state of the
/// same chain whose logs are still in the store (only those are fetched); else `delta` onto
/// it (any size), else `full`. The entry is forgotten before the file changes and recorded
/// after. `midway` runs once the file is changed in part (the tests' pause point).
pub async fn bring_up(
    store: &GroupStore,
    point: u64,
    e: &DiskEntry,
    dir: &Path,
    mk: &mut Marker,
    full: bool,
    midway: &dyn Fn(),
) -> Result<(&'static str, u64)> {
    let hidden = dir.join(marker::prepared_name(&e.disk_id));
    let trusted = match full {
        true => None,
        false => mk.trusted(&e.disk_id).cloned(),
    };
    if let Some(t) = trusted.as_ref().filter(|t| holds(t, e)) {
        tracing::debug!(disk_id = %t.disk_id, point = t.point, "the prepared disk holds the point");
        return Ok(("kept", 0));
    }
    mk.forget(&e.disk_id)?;
    if let Some(t) = &trusted {
        match catch_up(store, e, t, &hidden, dir, midway).await {
            Ok(Some(bytes)) => {
                mk.record(point, e)?;
                return Ok(("prepared", bytes));
            }
            Ok(None) => tracing::info!(
                disk = %hrl::display::escaped(&e.name),
                "the logs since the prepared point {} are not in the store (merged by a prune, or another branch); falling back to the delta",
                t.point
            ),
            Err(err) => tracing::warn!(
                disk = %hrl::display::escaped(&e.name),
                "catching up from the prepared point {} failed: {err:#}; falling back to the delta",
                t.point
            ),
        }
    }
    if !full && super::delta::applicable(&hidden) {
        let d = super::delta::apply_to(store, e, &hidden, dir, midway).await?;
        mk.record(point, e)?;
        return Ok(("delta", d.bytes_downloaded));
    }
    let tmp = tempfile::Builder::new()
        .prefix(".hrl-prepare-")
        .tempdir_in(dir)
        .context("create a temporary directory for the disk")?;
    let mut rep = super::restore::RestoreReport::default();
    super::restore::restore_one(store, e, tmp.path(), false, &mut rep).await?;
    midway();
    let built = tmp.path().join(&e.name);
    std::fs::rename(&built, &hidden)
        .with_context(|| format!("rename {} to {}", built.display(), hidden.display()))?;
    marker::sync_dir(dir)?;
    mk.record(point, e)?;
    Ok(("full", rep.chunk_bytes + rep.log_bytes))
}

/// Whether entry `t` names exactly `e`'s state.
fn holds(t: &marker::Entry, e: &DiskEntry) -> bool {
    t.disk_id == e.disk_id
        && t.generation == e.generation
        && t.last_seq == e.last_seq
        && t.chain_hash == e.last_chain_hash
        && t.size == e.disk_size
}

/// Replays onto `hidden` (which holds `t`'s state) the logs from `t`'s point to `e`'s; None
/// when that chain is not in the store (the logs were merged into a newer base by a prune,
/// or `t` is not an earlier state of `e`'s chain). The chain is checked from `t`'s hash to
/// `e`'s before any log is applied.
async fn catch_up(
    store: &GroupStore,
    e: &DiskEntry,
    t: &marker::Entry,
    hidden: &Path,
    dir: &Path,
    midway: &dyn Fn(),
) -> Result<Option<u64>> {
    if t.disk_id != e.disk_id
        || t.generation != e.generation
        || t.last_seq >= e.last_seq
        || e.base.after_seq > t.last_seq
    {
        return Ok(None);
    }
    let mut since = e.clone();
    since.base.after_seq = t.last_seq;
    since.base.after_chain_hash = t.chain_hash.clone();
    if crate::store::logs::chain_ranges(store, &since)
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let tmp = tempfile::Builder::new()
        .prefix(".hrl-prepare-logs")
        .tempdir_in(dir)
        .context("create a temporary directory for the logs")?;
    let logs = crate::store::logs::fetch_chain(store, &since, tmp.path()).await?;
    let bytes = logs
        .iter()
        .filter_map(|l| std::fs::metadata(l).ok())
        .map(|m| m.len())
        .sum();
    let prev = hrl::from_hex::<32>(&t.chain_hash).context("the marker names a bad chain hash")?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(hidden)
        .with_context(|| format!("open {}", hidden.display()))?;
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    // Apply the first log, pause (tests), the rest: an interrupted catch-up leaves a file
    // changed in part, which the next run (its entry gone) deltas.
    let split = usize::from(logs.len() >= 2);
    let (first, rest) = logs.split_at(split);
    let mut hash = Some(prev);
    for (i, part) in [first, rest].into_iter().enumerate() {
        if i == 1 {
            midway();
        }
        if part.is_empty() {
            continue;
        }
        let (part, p, after) = (part.to_vec(), path.clone(), hash);
        let summary = tokio::task::spawn_blocking(move || {
            hrl::log::apply_logs_after(&part, &p, after.as_ref())
        })
        .await
        .context("apply worker failed")?
        .with_context(|| format!("logs since the prepared point of disk {}", e.name))?;
        hash = summary.chain_hash;
    }
    if hash.is_none() || hash != hrl::from_hex::<32>(&e.last_chain_hash) {
        bail!(
            "the logs of disk {} do not end at the point's chain hash {}",
            e.name,
            e.last_chain_hash
        );
    }
    file.sync_all()
        .with_context(|| format!("sync {}", hidden.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("stat {}", hidden.display()))?
        .len();
    if size != e.disk_size {
        bail!(
            "disk {} is {size} bytes after its logs, the point recorded {}",
            e.name,
            e.disk_size
        );
    }
    super::restore::apply_attrs(&file, e, hidden)?;
    Ok(Some(bytes))
}

/// Removes what an interrupted pass left that no later pass reads: temporary directories
/// and a half-written marker.
fn remove_leftovers(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("read {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && name.starts_with(".hrl-prepare-") {
            std::fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
        } else if name == format!("{}.tmp", marker::MARKER) {
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// Removes the prepared files of disks the point no longer has (and their entries).
pub fn remove_strays(dir: &Path, point: &hrl::store::PointManifest, mk: &mut Marker) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("read {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !marker::is_prepared_name(&name)
            || point
                .disks
                .iter()
                .any(|d| marker::prepared_name(&d.disk_id) == name)
        {
            continue;
        }
        let id = &name[1..33];
        mk.forget(id)?;
        std::fs::remove_file(entry.path())
            .with_context(|| format!("remove {}", entry.path().display()))?;
    }
    Ok(())
}

/// Removes the temporary directories a pass leaves (the final failover calls it too).
pub fn clean(dir: &Path) -> Result<()> {
    remove_leftovers(dir)
}

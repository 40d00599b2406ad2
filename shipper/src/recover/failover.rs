//! Failover on the recovery host: rebuild the disks of a point into a directory (whole, or
//! by delta onto older versions already there: a failback, [`super::delta`]), take the
//! group over (the next owner epoch, create-if-absent: the old primary is fenced), and leave
//! what reverse replication needs ([`super::reverse`]). Order: the directory is checked
//! first (nothing changes on a bad input), the disks are rebuilt (each gets its final name
//! only when whole), then ownership is taken, then the tracker and shipper files are
//! written; a run killed anywhere is finished by running it again. Disks a `--prepare` pass
//! left under hidden names ([`super::prepare`]) are caught up from their prepared point
//! (only the logs since), then named.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hrl::owner::{OwnerRecord, OwnerState};
use hrl::store::PointManifest;

use super::marker::{self, Marker};
use crate::replicate::owner;
use crate::store::GroupStore;

/// What a failover did.
#[derive(Debug, Clone, Default)]
pub struct FailoverReport {
    pub point: u64,
    pub epoch: u64,
    /// The owner the group was taken from (None: nobody). A run that finishes one killed
    /// after its takeover reports the owner that run took it from.
    pub previous_owner: Option<String>,
    /// Per disk: name, size, bytes downloaded, how: "full", "delta", "prepared" (the logs
    /// since a prepared point), "kept" (a prepared disk held the point already).
    pub disks: Vec<(String, u64, u64, &'static str)>,
    pub bytes_downloaded: u64,
}

/// What the user asked.
pub struct FailoverRequest<'a> {
    pub store: &'a GroupStore,
    /// `--point` (None: the handed-over point after a planned failover, else `latest`).
    pub point: Option<&'a str>,
    pub to: &'a Path,
    pub state_dir: &'a Path,
    /// Download every disk whole, even where the directory holds an older (or prepared)
    /// version.
    pub full: bool,
}

/// Runs a failover into `r.to`.
pub async fn failover(r: &FailoverRequest<'_>) -> Result<FailoverReport> {
    check_not_mounted(r.to)?;
    let stop = |at: &str| crate::replicate::stop::at(r.state_dir, at);
    let records = owner::records(r.store).await?;
    let point = choose_point(r.store, r.point, records.last()).await?;
    let plan = plan_target(r.to, &point, r.full)?;
    crate::private::create_dir(r.to).with_context(|| format!("create {}", r.to.display()))?;
    let dir = owner::canonical_dir(r.to);
    super::prepare::clean(&dir)?;
    let mut mk = Marker::load(&dir, &r.store.group, &r.store.target.url, r.state_dir)?;
    let mut disks = Vec::new();
    for (e, how) in point.disks.iter().zip(plan) {
        let (how, down) = rebuild(r, e, &dir, how, point.id, &mut mk).await.with_context(|| {
            format!(
                "failover to point {} stopped at disk {}; run it again to finish (a disk gets its final name only when whole, an interrupted delta keeps a marker)",
                point.id,
                hrl::display::escaped(&e.name)
            )
        })?;
        disks.push((e.name.clone(), e.disk_size, down, how));
    }
    super::prepare::remove_strays(&dir, &point, &mut mk)?;
    mk.remove()?;
    stop("failover-before-takeover");
    let (epoch, previous_owner) = take_over(r.store, &records, &dir, point.id).await?;
    stop("failover-after-takeover");
    drop_fenced_logs(r.store, &point).await?;
    for e in &point.disks {
        super::reverse::prepare_disk(&dir, e, &|| stop("failover-mid-reverse"))?;
        super::delta::finish(&dir, e)?;
    }
    stop("failover-after-reverse");
    super::reverse::save_state(
        r.state_dir,
        &dir,
        &r.store.group,
        &r.store.target.url,
        &point,
        epoch,
    )?;
    Ok(FailoverReport {
        point: point.id,
        epoch,
        previous_owner,
        bytes_downloaded: disks.iter().map(|d| d.2).sum(),
        disks,
    })
}

/// How a disk of the point is rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum How {
    /// Not in the directory: downloaded whole under a hidden name, then named.
    New,
    /// There, `--full`: downloaded whole, replacing it at the rename.
    Replace,
    /// There (at any size): only the blocks that differ.
    Delta,
}

/// Rebuilds disk `e` in `dir`; returns how, and the bytes downloaded. A prepared disk
/// (hidden name) is brought to the point there and then renamed over the final name.
async fn rebuild(
    r: &FailoverRequest<'_>,
    e: &hrl::store::DiskEntry,
    dir: &Path,
    how: How,
    point: u64,
    mk: &mut Marker,
) -> Result<(&'static str, u64)> {
    let store = r.store;
    let disk = dir.join(&e.name);
    let hidden = dir.join(marker::prepared_name(&e.disk_id));
    if std::fs::symlink_metadata(&hidden).is_ok_and(|m| m.file_type().is_file()) {
        let (how, down) =
            super::prepare::bring_up(store, point, e, dir, mk, r.full, &|| {}).await?;
        super::delta::remove_tracker_files(dir, &e.name)?;
        std::fs::rename(&hidden, &disk)
            .with_context(|| format!("rename {} to {}", hidden.display(), disk.display()))?;
        marker::sync_dir(dir)?;
        crate::replicate::stop::at(r.state_dir, "failover-after-rename");
        mk.forget(&e.disk_id)?;
        let _ = std::fs::remove_file(super::delta::marker(dir, &e.disk_id));
        tracing::info!(disk = %hrl::display::escaped(&e.name), how, bytes = down, "prepared disk named");
        return Ok((how, down));
    }
    let delta = how == How::Delta && super::delta::applicable(&disk);
    if delta {
        let d = super::delta::apply(store, e, dir, r.state_dir).await?;
        tracing::info!(disk = %hrl::display::escaped(&e.name), blocks = d.blocks_fetched, bytes = d.bytes_downloaded, "brought up to the point by delta");
        return Ok(("delta", d.bytes_downloaded));
    }
    if how != How::New {
        super::delta::remove_tracker_files(dir, &e.name)?;
    }
    let mut report = super::restore::RestoreReport::default();
    super::restore::restore_one(store, e, dir, how != How::New, &mut report).await?;
    crate::replicate::stop::at(r.state_dir, "failover-after-rename");
    let _ = std::fs::remove_file(super::delta::marker(dir, &e.disk_id));
    Ok(("full", report.chunk_bytes + report.log_bytes))
}

/// The point to fail over to: the one asked for; else the one a planned failover handed
/// over; else the latest.
pub(super) async fn choose_point(
    store: &GroupStore,
    asked: Option<&str>,
    current: Option<&OwnerRecord>,
) -> Result<PointManifest> {
    let handed = current
        .filter(|r| r.state == OwnerState::HandedOver)
        .and_then(|r| r.point);
    match (asked, handed) {
        (Some(p), _) => super::points::select(store, p).await,
        (None, Some(id)) => super::points::select(store, &id.to_string()).await,
        (None, None) => super::points::select(store, "latest").await,
    }
}

/// Takes the group at the next epoch, continuing from `point`; returns the epoch and the
/// owner it was taken from. Run again after a kill, the epoch this host already took (same
/// directory and point) is kept, and the owner before it is reported (as the first run
/// would have).
async fn take_over(
    store: &GroupStore,
    records: &[OwnerRecord],
    dir: &Path,
    point: u64,
) -> Result<(u64, Option<String>)> {
    let host = owner::host_name();
    let dir_s = dir.display().to_string();
    let current = records.last();
    if let Some(r) = current.filter(|r| {
        r.state == OwnerState::Active && r.host == host && r.dir == dir_s && r.point == Some(point)
    }) {
        tracing::info!(group = %store.group, epoch = r.epoch, point, "the group was taken over by an earlier run of this failover; kept");
        let before = records.iter().rev().nth(1).map(owner::describe);
        return Ok((r.epoch, before));
    }
    let next = current.map_or(1, |r| r.epoch + 1);
    match owner::take(store, next, &host, dir, Some(point), OwnerState::Active).await? {
        Ok(r) => {
            tracing::info!(group = %store.group, epoch = r.epoch, point, "group taken over");
            Ok((r.epoch, current.map(owner::describe)))
        }
        Err(other) => bail!(
            "another host took group {:?} over at the same time: it is owned by {}; the disks rebuilt in {} are not replicated (run `hrl-shipper failover` again to take it from that owner)",
            store.group,
            owner::describe(&other),
            dir.display()
        ),
    }
}

/// Deletes the logs the old owner shipped after `point` (uncommitted, or in points this
/// takeover fenced): the new owner's logs continue the chain at the same sequences.
async fn drop_fenced_logs(store: &GroupStore, point: &PointManifest) -> Result<()> {
    for e in &point.disks {
        for key in crate::store::logs::after_point(store, e).await? {
            tracing::info!(%key, "deleting a log shipped after the point taken over");
            store.delete(&key).await?;
        }
    }
    Ok(())
}

/// Refuses a directory a tracker serves: the failover writes the disks and the files the
/// tracker reads at mount, under it.
pub fn check_not_mounted(dir: &Path) -> Result<()> {
    let canonical = owner::canonical_dir(dir);
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in info.lines() {
        let mut fields = line.split(' ');
        let Some(mount_point) = fields.nth(4) else {
            continue;
        };
        let fstype = line
            .split_once(" - ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .unwrap_or("");
        if unescape_mountinfo(mount_point) == canonical && fstype.starts_with("fuse") {
            bail!(
                "{} is a live tracker mount ({fstype}); unmount it first (`hrl-tracker unmount {}`), then run the failover; mount the tracker over it afterwards (nothing was changed)",
                dir.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// Mount points in mountinfo escape space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).and_then(|o| {
            std::str::from_utf8(o)
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        });
        match (b[i], oct) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// How each disk of `point` is rebuilt in `to`. The directory may hold the point's disks
/// (older versions: a failback) and their tracker files, and what an interrupted failover
/// left; anything else is refused (nothing changed).
pub(super) fn plan_target(to: &Path, point: &PointManifest, full: bool) -> Result<Vec<How>> {
    let entries = match std::fs::read_dir(to) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(vec![How::New; point.disks.len()])
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", to.display())),
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let is_disk = |n: &str| point.disks.iter().any(|d| d.name == n);
    let leftover = |n: &str| {
        point.disks.iter().any(|d| {
            n == format!(".{}.hrl-restoring", d.disk_id)
                || n == format!(".{}.hrl-failback", d.disk_id)
        }) || n.starts_with(".hrl-failback-logs")
            || n.starts_with(".hrl-restore-logs")
            || n.starts_with(".hrl-prepare-")
            || marker::is_prepared_name(n)
            || n == marker::MARKER
            || n == format!("{}.tmp", marker::MARKER)
    };
    let of_disk = |n: &str| {
        use hrl::naming::{classify, HrlFile};
        match classify(n) {
            Some(HrlFile::ActiveLog { disk })
            | Some(HrlFile::SealedLog { disk, .. })
            | Some(HrlFile::Bitmap { disk }) => is_disk(&disk),
            _ => false,
        }
    };
    let mut others: Vec<&String> = names
        .iter()
        .filter(|n| !is_disk(n) && !leftover(n) && !of_disk(n))
        .collect();
    others.sort();
    if !others.is_empty() {
        bail!(
            "{} is not empty: it holds {} that {} not a disk of point {} ({}); fail over into an empty directory, or one that holds only the group's disks (a failback); nothing was changed",
            to.display(),
            others
                .iter()
                .take(5)
                .map(|n| hrl::display::escaped(n).to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if others.len() == 1 { "is" } else { "are" },
            point.id,
            point
                .disks
                .iter()
                .map(|d| hrl::display::escaped(&d.name).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut plan = Vec::new();
    for d in &point.disks {
        let hidden = to.join(marker::prepared_name(&d.disk_id));
        let writers = open_for_writing(&hidden);
        if !writers.is_empty() {
            bail!(
                "the prepared disk {} is open for writing by {}; stop it first (nothing was changed)",
                hidden.display(),
                writers.join(", ")
            );
        }
        let path = to.join(&d.name);
        plan.push(match std::fs::symlink_metadata(&path) {
            Err(_) => How::New,
            Ok(md) if !md.file_type().is_file() => bail!(
                "{} is not a regular file; move it aside (nothing was changed)",
                path.display()
            ),
            Ok(_) if full => How::Replace,
            Ok(_) => How::Delta,
        });
        let writers = open_for_writing(&path);
        if !writers.is_empty() {
            bail!(
                "disk {} is open for writing by {}; stop it first (nothing was changed)",
                path.display(),
                writers.join(", ")
            );
        }
    }
    Ok(plan)
}

/// Processes that hold `path` open for writing: "pid N (comm)".
fn open_for_writing(path: &Path) -> Vec<String> {
    let Ok(target) = std::fs::canonicalize(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.filter_map(|e| e.ok()) {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let writes = fds.filter_map(|e| e.ok()).any(|fd| {
            std::fs::read_link(fd.path()).ok().as_deref() == Some(target.as_path())
                && fd_writable(&p.path(), &fd.file_name().to_string_lossy())
        });
        if writes {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            out.push(format!("pid {pid} ({})", comm.trim()));
        }
    }
    out
}

/// Whether descriptor `fd` of the process at `proc_dir` was opened for writing.
fn fd_writable(proc_dir: &Path, fd: &str) -> bool {
    let info = std::fs::read_to_string(proc_dir.join("fdinfo").join(fd)).unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .is_some_and(|flags| flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape_mountinfo(r"/x\\"), PathBuf::from(r"/x\\"));
    }
}

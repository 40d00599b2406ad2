//! Failover on the recovery host: rebuild the disks of a point into a directory, take the
//! group over (the next owner epoch, create-if-absent: the old primary is fenced), and leave
//! what reverse replication needs ([`super::reverse`]). Order: the directory is checked
//! first (nothing changes on a bad input), the disks are rebuilt (each gets its final name
//! only when whole), then ownership is taken, then the tracker and shipper files are
//! written; a run killed anywhere is finished by running it again.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hrl::owner::{OwnerRecord, OwnerState};
use hrl::store::PointManifest;

use crate::replicate::owner;
use crate::store::GroupStore;

/// What a failover did.
#[derive(Debug, Clone, Default)]
pub struct FailoverReport {
    pub point: u64,
    pub epoch: u64,
    /// The owner the group was taken from (None: nobody, or this host already).
    pub previous_owner: Option<String>,
    /// Per disk: name, size, bytes downloaded, how ("full", "delta", "kept").
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
}

/// Runs a failover into `r.to`.
pub async fn failover(r: &FailoverRequest<'_>) -> Result<FailoverReport> {
    check_not_mounted(r.to)?;
    let records = owner::records(r.store).await?;
    let point = choose_point(r.store, r.point, records.last()).await?;
    check_target(r.to, &point)?;
    crate::private::create_dir(r.to).with_context(|| format!("create {}", r.to.display()))?;
    let dir = owner::canonical_dir(r.to);
    let restored = super::restore::restore_point(r.store, &point, &dir).await?;
    let (epoch, previous_owner) = take_over(r.store, &records, &dir, point.id).await?;
    drop_fenced_logs(r.store, &point).await?;
    for e in &point.disks {
        super::reverse::prepare_disk(&dir, e)?;
    }
    super::reverse::save_state(
        r.state_dir,
        &dir,
        &r.store.group,
        &r.store.target.url,
        &point,
        epoch,
    )?;
    let disks = point
        .disks
        .iter()
        .map(|e| (e.name.clone(), e.disk_size, e.disk_size, "full"))
        .collect();
    Ok(FailoverReport {
        point: point.id,
        epoch,
        previous_owner,
        disks,
        bytes_downloaded: restored.chunk_bytes,
    })
}

/// The point to fail over to: the one asked for; else the one a planned failover handed
/// over; else the latest.
async fn choose_point(
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

/// Takes the group at the next epoch, continuing from `point`. Run again after a kill, the
/// epoch this host already took (same directory and point) is kept.
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
        return Ok((r.epoch, None));
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

/// The directory must be missing or empty: every disk of the point is rebuilt there whole.
fn check_target(to: &Path, point: &PointManifest) -> Result<()> {
    let entries = match std::fs::read_dir(to) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("read {}", to.display())),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if !names.is_empty() {
        bail!(
            "{} is not empty (it holds {}); fail over into an empty or new directory (point {} has {} disks; nothing was changed)",
            to.display(),
            names
                .iter()
                .take(5)
                .map(|n| hrl::display::escaped(n).to_string())
                .collect::<Vec<_>>()
                .join(", "),
            point.id,
            point.disks.len()
        );
    }
    Ok(())
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

//! Reads of the backing files without FUSE: the tracker hands the shipper read-only
//! descriptors of a disk's image (`open_disk`) and of its sealed logs (`open_log`) on the
//! control socket, and base copies, resync compares (SEEK_DATA, size), log coalescing and
//! the 50% rule's log ranges read through them instead of through the mount, which costs a
//! round trip to the tracker per request (docs/resync.md).
//!
//! What is read is the same: the mount passes every read through to the very same backing
//! file, and the tracker changes the image only after logging the change, under the disk's
//! lock that a seal's cut takes too; a sealed log never changes. The tracker's checks are
//! untouched: a write that bypasses the mount still moves the image's stamp, which the next
//! seal compares (`bypass`).
//!
//! Falls back to the mount, per file, when the tracker does not hand descriptors out (an
//! older tracker that does not know the request, a stand-in, a refusal), and always with
//! `HRL_SHIPPER_READ_THROUGH_MOUNT=1` (an escape hatch, and the benchmark's comparison).
//! A tracker that went away is no refusal: the cycle fails (its next seal would too).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hrl::control::SealedLog;
use tracing::debug;

use crate::replicate::tracker::Tracker;

/// Set to `1` to read every backing file through the mount, as before descriptors.
pub const READ_THROUGH_MOUNT_ENV: &str = "HRL_SHIPPER_READ_THROUGH_MOUNT";

/// True when the environment asks to read through the mount.
pub fn through_mount() -> bool {
    std::env::var(READ_THROUGH_MOUNT_ENV).is_ok_and(|v| v == "1")
}

/// A disk image or sealed log to read: through a descriptor from the tracker, or through
/// the mount.
#[derive(Debug)]
pub struct Source {
    /// The file through the mount (what messages name, and what is read without a
    /// descriptor).
    pub shown: PathBuf,
    fd: Option<OwnedFd>,
}

impl Source {
    /// Read through the mount.
    pub fn mount(path: PathBuf) -> Source {
        Source {
            shown: path,
            fd: None,
        }
    }

    /// True when reads skip the mount.
    pub fn is_direct(&self) -> bool {
        self.fd.is_some()
    }

    /// A path that opens the file: `/proc/self/fd/N` for a descriptor (the same backing
    /// inode, reopened read-only with no path walk through the mount), else the mount's.
    /// Valid while `self` lives.
    pub fn path(&self) -> PathBuf {
        match &self.fd {
            Some(fd) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            None => self.shown.clone(),
        }
    }

    /// The file, open for reading.
    pub fn open(&self) -> Result<File> {
        match &self.fd {
            Some(fd) => Ok(File::from(fd.try_clone().with_context(|| {
                format!("duplicate the descriptor of {}", self.shown.display())
            })?)),
            None => {
                File::open(&self.shown).with_context(|| format!("open {}", self.shown.display()))
            }
        }
    }
}

/// The image of `disk` in `dir`.
pub async fn disk(tracker: &mut dyn Tracker, dir: &Path, disk: &str) -> Result<Source> {
    let mut s = Source::mount(dir.join(disk));
    if !through_mount() {
        s.fd = tracker.open_disk(disk).await?;
        if s.fd.is_none() {
            debug!(
                disk,
                "no descriptor from the tracker: reading the disk through the mount"
            );
        }
    }
    Ok(s)
}

/// The sealed logs `logs` of `dir`, in the same order.
pub async fn logs(
    tracker: &mut dyn Tracker,
    dir: &Path,
    logs: &[&SealedLog],
) -> Result<Vec<Source>> {
    let mut out = Vec::with_capacity(logs.len());
    for l in logs {
        let mut s = Source::mount(dir.join(&l.log));
        if !through_mount() {
            s.fd = tracker.open_log(l).await?;
            if s.fd.is_none() {
                debug!(log = %l.log, "no descriptor from the tracker: reading the log through the mount");
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// The paths that open `sources` (see [`Source::path`]); valid while they live.
pub fn paths(sources: &[Source]) -> Vec<PathBuf> {
    sources.iter().map(Source::path).collect()
}

/// The mount's names of `sources`, for messages.
pub fn shown(sources: &[Source]) -> String {
    let v: Vec<String> = sources
        .iter()
        .map(|s| s.shown.display().to_string())
        .collect();
    v.join(", ")
}

//! Read-only descriptors of the backing files for the shipper (`open_disk`, `open_log`), so
//! its base copies, resync compares and log reads skip the FUSE round trip per request.
//!
//! What keeps this safe (docs/SECURITY.md):
//! - only a tracked disk's image, or one of its sealed logs listed in `pending`, is ever
//!   opened; the active log (still being written) never is;
//! - the name is checked to be one plain name (no `/`, not `.` or `..`), and opened with
//!   `openat` on the backing directory's own descriptor, `O_RDONLY | O_NOFOLLOW |
//!   O_CLOEXEC`: it cannot name a file outside the directory, a symlink, or be written;
//! - the opened file must be a regular file, and a disk's must be the very inode the
//!   tracker tracks under that name (a rename racing the request is refused, not followed);
//! - the control server hands them only to a root peer (checked on each request).

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};

use crate::sys;
use crate::tracking::Tracker;

/// Why a descriptor was not handed out (the answer's `error`).
#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    #[error("{0:?} is not a plain file name in the mount directory")]
    BadName(String),
    #[error("no tracked disk named {0:?} in this mount (see `hrl-tracker status`)")]
    NoSuchDisk(String),
    #[error(
        "log {seq} of disk {disk:?} is not a sealed log waiting in `pending` (the active log is never handed out)"
    )]
    NotPending { disk: String, seq: u64 },
    #[error("{disk:?} has several pending logs numbered {seq}: name the disk_id")]
    Ambiguous { disk: String, seq: u64 },
    #[error("{0} changed while it was opened (renamed or replaced); ask again")]
    Changed(String),
    #[error("open {name} read-only: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

/// One plain name in the root: not empty, no `/` or NUL, not `.` or `..`.
fn plain_name(name: &str) -> Result<&OsStr, DescriptorError> {
    let bad = name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']);
    match bad {
        true => Err(DescriptorError::BadName(name.to_string())),
        false => Ok(OsStr::new(name)),
    }
}

/// Opens `name` in the backing directory read-only, refusing symlinks and anything but a
/// regular file; returns the descriptor and its identity.
fn open_read_only(t: &Tracker, name: &str) -> Result<(OwnedFd, sys::BackingKey), DescriptorError> {
    let io = |source| DescriptorError::Io {
        name: name.to_string(),
        source,
    };
    let os = plain_name(name)?;
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY;
    let fd = sys::openat(t.root_fd(), os, flags, 0).map_err(io)?;
    let st = sys::fstat(fd.as_fd()).map_err(io)?;
    if st.kind() != libc::S_IFREG {
        return Err(io(std::io::Error::from_raw_os_error(libc::EINVAL)));
    }
    Ok((fd, st.key()))
}

/// A read-only descriptor of the tracked disk `disk`'s backing image.
pub fn open_disk(t: &Tracker, disk: &str) -> Result<OwnedFd, DescriptorError> {
    plain_name(disk)?;
    let d = t
        .disks()
        .into_iter()
        .find(|d| d.name() == disk)
        .ok_or_else(|| DescriptorError::NoSuchDisk(disk.to_string()))?;
    let (fd, key) = open_read_only(t, disk)?;
    if key != d.key {
        return Err(DescriptorError::Changed(disk.to_string()));
    }
    Ok(fd)
}

/// A read-only descriptor of sealed log `seq` of `disk` (of disk id `disk_id`, if given),
/// which must be listed in `pending`.
pub fn open_log(
    t: &Tracker,
    disk: &str,
    seq: u64,
    disk_id: Option<&str>,
) -> Result<OwnedFd, DescriptorError> {
    plain_name(disk)?;
    let of_id = |id: &str| disk_id.is_none_or(|want| want.eq_ignore_ascii_case(id));
    let found: Vec<_> = t
        .pending()
        .into_iter()
        .filter(|l| l.disk == disk && l.seq == seq && of_id(&l.disk_id))
        .collect();
    let log = match found.as_slice() {
        [] => {
            return Err(DescriptorError::NotPending {
                disk: disk.to_string(),
                seq,
            })
        }
        [one] => one,
        _ => {
            return Err(DescriptorError::Ambiguous {
                disk: disk.to_string(),
                seq,
            })
        }
    };
    Ok(open_read_only(t, &log.log)?.0)
}

//! The files hrl keeps beside a disk image `d`:
//! the active log `d.hrl`, sealed logs `d.<seq>.<id16>.hrl`, and the dirty bitmap
//! `d.hrl-bitmap`. None of these match the default disk patterns (`*.img`, `*.vhdx`, …), so a
//! disk's own files are never taken for disks.
//!
//! A sealed log's name carries the first 16 hex digits of its disk's id: two disks that held
//! the same name one after the other (a rename over a disk, a new disk under the old name of
//! a renamed one) never want the same sealed name. Older trackers wrote `d.<seq>.hrl`; those
//! names are still read. Files the tracker could not read at startup are renamed aside to
//! `<file>.quarantined-<unix seconds>` and left for the operator.

use std::path::{Path, PathBuf};

/// Suffix of the active log and of sealed logs.
pub const LOG_SUFFIX: &str = ".hrl";
/// Suffix of the dirty bitmap.
pub const BITMAP_SUFFIX: &str = ".hrl-bitmap";

/// What an hrl-owned file name is, and which disk it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HrlFile {
    ActiveLog {
        disk: String,
    },
    /// `id` is the 16 hex digits in the name (None for the older `d.<seq>.hrl` form).
    SealedLog {
        disk: String,
        seq: u64,
        id: Option<String>,
    },
    Bitmap {
        disk: String,
    },
    /// An hrl file set aside at startup because it could not be read.
    Quarantined,
}

/// Suffix marker of a quarantined file.
pub const QUARANTINE_MARK: &str = ".quarantined-";

/// Hex digits of the disk id in a sealed log's name.
const ID_DIGITS: usize = 16;

fn with_suffix(disk: &Path, suffix: &str) -> PathBuf {
    let mut s = disk.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `d.hrl`: the log that receives a disk's changes now.
pub fn active_log_path(disk: &Path) -> PathBuf {
    with_suffix(disk, LOG_SUFFIX)
}

/// `d.<seq>.<id16>.hrl`: a sealed log of the disk with id `disk_id` (hex) waiting to be
/// shipped.
pub fn sealed_log_path(disk: &Path, seq: u64, disk_id: &str) -> PathBuf {
    let id = disk_id.get(..ID_DIGITS).unwrap_or(disk_id);
    with_suffix(disk, &format!(".{seq}.{id}{LOG_SUFFIX}"))
}

/// Where an unreadable hrl file is set aside: `<file>.quarantined-<unix seconds>`.
pub fn quarantine_path(file: &Path, unix_secs: u64) -> PathBuf {
    with_suffix(file, &format!("{QUARANTINE_MARK}{unix_secs}"))
}

/// `d.hrl-bitmap`: the persistent dirty bitmap.
pub fn bitmap_path(disk: &Path) -> PathBuf {
    with_suffix(disk, BITMAP_SUFFIX)
}

/// Tells whether a file name is one of hrl's own files, and whose.
pub fn classify(file_name: &str) -> Option<HrlFile> {
    if let Some((_, secs)) = file_name.rsplit_once(QUARANTINE_MARK) {
        if !secs.is_empty() && secs.bytes().all(|b| b.is_ascii_digit()) {
            return Some(HrlFile::Quarantined);
        }
    }
    if let Some(disk) = file_name.strip_suffix(BITMAP_SUFFIX) {
        return (!disk.is_empty()).then(|| HrlFile::Bitmap {
            disk: disk.to_string(),
        });
    }
    let stem = file_name.strip_suffix(LOG_SUFFIX)?;
    if stem.is_empty() {
        return None;
    }
    let seq_of = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    if let Some((rest, id)) = stem.rsplit_once('.') {
        let is_id = id.len() == ID_DIGITS && id.bytes().all(|b| b.is_ascii_hexdigit());
        if let Some((disk, seq)) = rest.rsplit_once('.').filter(|_| is_id) {
            if let (false, Some(seq)) = (disk.is_empty(), seq_of(seq)) {
                return Some(HrlFile::SealedLog {
                    disk: disk.to_string(),
                    seq,
                    id: Some(id.to_ascii_lowercase()),
                });
            }
        }
        if let (false, Some(seq)) = (rest.is_empty(), seq_of(id)) {
            return Some(HrlFile::SealedLog {
                disk: rest.to_string(),
                seq,
                id: None,
            });
        }
    }
    Some(HrlFile::ActiveLog {
        disk: stem.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let d = Path::new("/vms/disk0.vhdx");
        assert_eq!(active_log_path(d), Path::new("/vms/disk0.vhdx.hrl"));
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            sealed_log_path(d, 42, id),
            Path::new("/vms/disk0.vhdx.42.0123456789abcdef.hrl")
        );
        assert_eq!(
            classify("disk0.vhdx.42.0123456789abcdef.hrl"),
            Some(HrlFile::SealedLog {
                disk: "disk0.vhdx".into(),
                seq: 42,
                id: Some("0123456789abcdef".into())
            })
        );
        // An id of digits only is still an id.
        assert_eq!(
            classify("d.img.3.1234567890123456.hrl"),
            Some(HrlFile::SealedLog {
                disk: "d.img".into(),
                seq: 3,
                id: Some("1234567890123456".into())
            })
        );
        assert_eq!(
            classify("d.img.3.hrl.quarantined-1700000000"),
            Some(HrlFile::Quarantined)
        );
        assert_eq!(
            quarantine_path(Path::new("d.img.3.hrl"), 17),
            Path::new("d.img.3.hrl.quarantined-17")
        );
        assert_eq!(bitmap_path(d), Path::new("/vms/disk0.vhdx.hrl-bitmap"));
        assert_eq!(
            classify("disk0.vhdx.hrl"),
            Some(HrlFile::ActiveLog {
                disk: "disk0.vhdx".into()
            })
        );
        assert_eq!(
            classify("disk0.vhdx.42.hrl"),
            Some(HrlFile::SealedLog {
                disk: "disk0.vhdx".into(),
                seq: 42,
                id: None
            })
        );
        assert_eq!(
            classify("disk0.vhdx.hrl-bitmap"),
            Some(HrlFile::Bitmap {
                disk: "disk0.vhdx".into()
            })
        );
        assert_eq!(classify("disk0.vhdx"), None);
        assert_eq!(classify(".hrl"), None);
        // A disk whose own name ends in digits: "a.1" has active log "a.1.hrl".
        assert_eq!(
            classify("a.1.hrl"),
            Some(HrlFile::SealedLog {
                disk: "a".into(),
                seq: 1,
                id: None
            })
        );
    }
}

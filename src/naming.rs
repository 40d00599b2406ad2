//! The files hrl keeps beside a disk image `d`:
//! the active log `d.hrl`, sealed logs `d.<seq>.hrl`, and the dirty bitmap `d.hrl-bitmap`.
//! None of these match the default disk patterns (`*.img`, `*.vhdx`, …), so a disk's own
//! files are never taken for disks.

use std::path::{Path, PathBuf};

/// Suffix of the active log and of sealed logs.
pub const LOG_SUFFIX: &str = ".hrl";
/// Suffix of the dirty bitmap.
pub const BITMAP_SUFFIX: &str = ".hrl-bitmap";

/// What an hrl-owned file name is, and which disk it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HrlFile {
    ActiveLog { disk: String },
    SealedLog { disk: String, seq: u64 },
    Bitmap { disk: String },
}

fn with_suffix(disk: &Path, suffix: &str) -> PathBuf {
    let mut s = disk.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `d.hrl`: the log that receives a disk's changes now.
pub fn active_log_path(disk: &Path) -> PathBuf {
    with_suffix(disk, LOG_SUFFIX)
}

/// `d.<seq>.hrl`: a sealed log waiting to be shipped.
pub fn sealed_log_path(disk: &Path, seq: u64) -> PathBuf {
    with_suffix(disk, &format!(".{seq}{LOG_SUFFIX}"))
}

/// `d.hrl-bitmap`: the persistent dirty bitmap.
pub fn bitmap_path(disk: &Path) -> PathBuf {
    with_suffix(disk, BITMAP_SUFFIX)
}

/// Tells whether a file name is one of hrl's own files, and whose.
pub fn classify(file_name: &str) -> Option<HrlFile> {
    if let Some(disk) = file_name.strip_suffix(BITMAP_SUFFIX) {
        return (!disk.is_empty()).then(|| HrlFile::Bitmap {
            disk: disk.to_string(),
        });
    }
    let stem = file_name.strip_suffix(LOG_SUFFIX)?;
    if stem.is_empty() {
        return None;
    }
    if let Some((disk, seq)) = stem.rsplit_once('.') {
        if !disk.is_empty() && !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(seq) = seq.parse() {
                return Some(HrlFile::SealedLog {
                    disk: disk.to_string(),
                    seq,
                });
            }
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
        assert_eq!(sealed_log_path(d, 42), Path::new("/vms/disk0.vhdx.42.hrl"));
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
                seq: 42
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
                seq: 1
            })
        );
    }
}

//! The control protocol between `hrl-tracker` and `hrl-shipper`.
//!
//! A Unix stream socket (mode 0600, root only) per tracker mount. Both sides speak one JSON
//! object per line; a connection may carry many requests, each answered by exactly one line.
//!
//! ```text
//! -> {"op":"seal"}
//! <- {"ok":true,"seal_id":7,"time_ns":...,"disks":[{"disk":"disk0.img",...}]}
//! -> {"op":"ack","disk":"disk0.img","seq":3}
//! <- {"ok":true}
//! -> {"op":"open_disk","disk":"disk0.img"}
//! <- {"ok":true,"fd":true}          (a read-only descriptor rides along: SCM_RIGHTS)
//! -> {"op":"bogus"}
//! <- {"ok":false,"error":"..."}
//! ```
//!
//! The socket path is derived from the canonical mount directory so both sides find it
//! without configuration: see [`socket_path`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable that overrides the directory holding control sockets.
pub const RUN_DIR_ENV: &str = "HRL_RUN_DIR";
/// Default directory for control sockets.
pub const DEFAULT_RUN_DIR: &str = "/run/hrl";

/// Control socket path of the tracker serving `mount_dir`:
/// `$HRL_RUN_DIR/tracker-<first 16 hex of blake3(canonical mount dir)>.sock`.
///
/// The mount dir is canonicalized when it exists (the tracker and shipper may name it
/// differently); otherwise it is used as given.
pub fn socket_path(mount_dir: &Path) -> PathBuf {
    let run_dir = std::env::var_os(RUN_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR));
    socket_path_in(&run_dir, mount_dir)
}

/// [`socket_path`] with an explicit run directory (no environment lookup).
pub fn socket_path_in(run_dir: &Path, mount_dir: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let canonical = std::fs::canonicalize(mount_dir).unwrap_or_else(|_| mount_dir.to_path_buf());
    let digest = blake3::hash(canonical.as_os_str().as_bytes());
    let hex = crate::to_hex(digest.as_bytes());
    run_dir.join(format!("tracker-{}.sock", &hex[..16]))
}

/// Whether a disk's changes are logged record by record, or only marked in its dirty bitmap
/// (while the shipper resyncs it by checksum).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskMode {
    /// Every change is appended to the active log.
    Log,
    /// Changes only mark the dirty bitmap; logs stay empty (but are still sealed).
    Bitmap,
}

/// One request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Seal the active logs of all disks at one instant and start new ones.
    Seal,
    /// List every sealed log not acked yet (after a crash or restart).
    Pending,
    /// Delete `disk`'s sealed logs with sequence `<= seq` (they are safely shipped); with
    /// `disk_id`, only that disk id's logs (a name may have passed from one disk to another).
    Ack {
        disk: String,
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk_id: Option<String>,
    },
    /// Per-disk state of the mount.
    Status,
    /// Switch a disk between full logging and bitmap-only tracking.
    Mode { disk: String, mode: DiskMode },
    /// Byte ranges marked in a disk's dirty bitmap.
    Dirty { disk: String },
    /// Clear the dirty-bitmap marks of `disk` made before seal `upto_seal` (the shipper has
    /// shipped state covering them). Marks made since that seal stay.
    Clear { disk: String, upto_seal: u64 },
    /// Switch the mount read-only (`on`: every change through it gets EROFS, for a planned
    /// failover) or back. Answers the files open for writing (`writers`).
    ReadOnly { on: bool },
    /// A read-only descriptor of `disk`'s backing image, passed with the answer
    /// (SCM_RIGHTS), so the shipper reads it without a FUSE round trip per request.
    /// Root only; opened `O_RDONLY | O_NOFOLLOW | O_CLOEXEC` on the backing directory.
    OpenDisk { disk: String },
    /// A read-only descriptor of one of `disk`'s sealed logs listed in `pending` (never the
    /// active log), as `open_disk`; with `disk_id`, only that disk id's log.
    OpenLog {
        disk: String,
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk_id: Option<String>,
    },
}

/// One sealed log, as returned by `seal` and `pending`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedLog {
    /// Disk file name, relative to the mount directory.
    pub disk: String,
    /// 32 lowercase hex digits: the disk's stable identity (from the log header).
    pub disk_id: String,
    pub generation: u64,
    /// Sequence number of this log in the disk's chain.
    pub seq: u64,
    /// Path of the sealed log file, relative to the mount directory.
    pub log: String,
    /// Size of the sealed log file in bytes.
    pub bytes: u64,
    /// 64 hex digits: blake3 of the whole log (from its seal record).
    pub hash: String,
    /// 64 hex digits: hash of the previous sealed log of this disk (all zero for the first).
    pub prev_hash: String,
    /// Number of records before the seal record.
    pub records: u64,
    /// Disk size at the seal's cut: the size the log leaves the disk at.
    pub disk_size: u64,
    /// Tracking mode of the disk during this log.
    pub mode: DiskMode,
    /// The image changed outside the tracker (a writer bypassing the mount) since the last
    /// seal: this log misses changes, and the disk is reported unclean as a whole.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub changed_outside: bool,
}

/// Per-disk state, as returned by `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStatus {
    pub disk: String,
    pub mode: DiskMode,
    /// Bytes in the active log.
    pub active_log_bytes: u64,
    /// Sequence number of the active log.
    pub active_seq: u64,
    /// Number of sealed logs not acked yet.
    pub pending_logs: u64,
    /// Bytes in sealed logs not acked yet.
    pub pending_sealed_bytes: u64,
    pub disk_size: u64,
    /// Number of merged dirty extents in the bitmap.
    pub dirty_extents: u64,
    /// Byte ranges `(offset, len)` that may differ from what the logs describe, found when
    /// the previous tracker did not stop cleanly. Empty after a clean stop.
    pub unclean_extents: Vec<(u64, u64)>,
    /// Offset where a torn log tail was cut at startup, if one was.
    pub torn_log_tail_at: Option<u64>,
    /// 32 hex digits: the disk's id (from its active log; empty from older trackers).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub disk_id: String,
    /// What the operator should know about this disk (a log set aside at startup, extra
    /// hard links). Shown as Warning until the disk's replica is whole again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Why the image is known to have changed outside the tracker (a writer bypassing the
    /// mount); set until the shipper clears the disk's marks after resyncing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_outside: Option<String>,
}

/// Mount-wide state, as returned by `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountStatus {
    /// The mount directory as the tracker sees it.
    pub mount: String,
    /// The control socket path.
    pub socket: String,
    /// Process id of the tracker.
    pub pid: u32,
    pub disks: Vec<DiskStatus>,
    /// Files that look like disks but are not tracked, each with why (a name that is not
    /// valid UTF-8, a symlink to a file outside the directory): their changes are not
    /// replicated until the operator fixes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub untracked: Vec<String>,
}

/// One response line. `ok` tells success; the other fields are present when the request
/// produces them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `seal`: identifier of this seal (monotonic per host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_id: Option<u64>,
    /// `seal`: wall-clock time of the seal instant, ns since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ns: Option<u64>,
    /// `seal`: how long writers were held while the logs were swapped, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_us: Option<u64>,
    /// `seal`, `pending`: sealed logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<SealedLog>>,
    /// `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<MountStatus>,
    /// `dirty`: merged `(offset, len)` byte ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extents: Option<Vec<(u64, u64)>>,
    /// `read_only`: backing paths of the files open for writing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writers: Option<Vec<String>>,
    /// `status`: the tracker's counters since it started (absent from older trackers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<TrackerCounters>,
    /// `open_disk`, `open_log`: the answer carries one descriptor (SCM_RIGHTS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<bool>,
}

/// The tracker's counters since it started (`status`; `hrl-tracker status --json` shows
/// them as `counters`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerCounters {
    /// Data writes recorded (each is one log record).
    pub writes: u64,
    /// Changes of every kind recorded (writes, truncates, punches, renames, ...).
    pub records: u64,
    /// Bytes those records take in the logs (headers included).
    pub bytes_logged: u64,
    /// Marks that newly set bits of a dirty bitmap (each one costs a bitmap flush).
    pub marks_set: u64,
    /// Seals cut.
    pub seals: u64,
    /// Time writers were held by seals' cuts, in microseconds: the sum, the longest, the last.
    pub seal_hold_us_total: u64,
    pub seal_hold_us_max: u64,
    pub seal_hold_us_last: u64,
    /// Reads served through the mount, and their bytes (a shipper reading through the
    /// descriptors of `open_disk`/`open_log` adds none). Absent from older trackers.
    #[serde(default)]
    pub reads: u64,
    #[serde(default)]
    pub bytes_read: u64,
    /// Descriptors handed out by `open_disk` and `open_log`.
    #[serde(default)]
    pub descriptors_passed: u64,
}

impl Response {
    /// A bare success.
    pub fn ok() -> Self {
        Response {
            ok: true,
            ..Default::default()
        }
    }

    /// A failure with a message for the operator.
    pub fn error(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(message.into()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_use_the_documented_wire_form() {
        let r: Request = serde_json::from_str(r#"{"op":"ack","disk":"d.img","seq":4}"#).unwrap();
        assert_eq!(
            r,
            Request::Ack {
                disk: "d.img".into(),
                seq: 4,
                disk_id: None
            }
        );
        let m: Request =
            serde_json::from_str(r#"{"op":"mode","disk":"d.img","mode":"bitmap"}"#).unwrap();
        assert_eq!(
            m,
            Request::Mode {
                disk: "d.img".into(),
                mode: DiskMode::Bitmap
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Seal).unwrap(),
            r#"{"op":"seal"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"nope"}"#).is_err());
        let o: Request =
            serde_json::from_str(r#"{"op":"open_log","disk":"d.img","seq":3}"#).unwrap();
        assert_eq!(
            o,
            Request::OpenLog {
                disk: "d.img".into(),
                seq: 3,
                disk_id: None
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::OpenDisk {
                disk: "d.img".into()
            })
            .unwrap(),
            r#"{"op":"open_disk","disk":"d.img"}"#
        );
    }

    #[test]
    fn responses_omit_absent_fields() {
        assert_eq!(
            serde_json::to_string(&Response::ok()).unwrap(),
            r#"{"ok":true}"#
        );
        let e = serde_json::to_string(&Response::error("bad")).unwrap();
        assert_eq!(e, r#"{"ok":false,"error":"bad"}"#);
        let back: Response = serde_json::from_str(r#"{"ok":true,"extents":[[0,4096]]}"#).unwrap();
        assert_eq!(back.extents, Some(vec![(0, 4096)]));
    }

    #[test]
    fn socket_path_depends_on_mount_dir_and_run_dir() {
        let a = socket_path_in(Path::new("/run/x"), Path::new("/nonexistent/a"));
        let b = socket_path_in(Path::new("/run/x"), Path::new("/nonexistent/b"));
        assert_ne!(a, b);
        assert!(a.starts_with("/run/x"));
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("tracker-") && name.ends_with(".sock"));
        assert_eq!(name.len(), "tracker-".len() + 16 + ".sock".len());
    }
}

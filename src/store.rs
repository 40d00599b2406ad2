//! The layout of a replica in an object store: object keys, the recovery-point manifest and
//! its per-disk entries. Shared so that every tool reading a store agrees on it
//! (docs/store-layout.md describes it for people).
//!
//! ```text
//! <prefix>/<group>/chunks/<ab>/<digest hex>                       zstd of one block
//! <prefix>/<group>/disks/<disk id>/g<gen>-b<after>/base.idx       chunk index of a base copy
//! <prefix>/<group>/disks/<disk id>/g<gen>/logs/<first>-<last>.hrl zstd of a (coalesced) sealed log
//! <prefix>/<group>/points/<id>.json                              recovery-point manifest
//! ```
//!
//! Every object is immutable and written before anything that refers to it; a recovery point
//! exists once its manifest exists (it is written last, with create-if-absent).

use serde::{Deserialize, Serialize};

use crate::Digest;

/// Version of the manifest format written by this code.
pub const MANIFEST_VERSION: u32 = 1;

/// Width of zero-padded numbers in keys, so that listing order is numeric order.
const SEQ_WIDTH: usize = 20;

/// Key of a chunk, relative to the group: `chunks/<first 2 hex>/<64 hex>`.
pub fn chunk_key(digest: &Digest) -> String {
    let hex = crate::to_hex(digest);
    format!("chunks/{}/{}", &hex[..2], hex)
}

/// Folder of one disk generation's data.
pub fn disk_dir(disk_id: &str, generation: u64) -> String {
    format!("disks/{disk_id}/g{generation}")
}

/// Key of a base chunk index taken after log `after_seq` of the disk was sealed.
pub fn base_key(disk_id: &str, generation: u64, after_seq: u64) -> String {
    format!("disks/{disk_id}/g{generation}-b{after_seq}/base.idx")
}

/// Folder holding the shipped logs of one disk generation.
pub fn logs_dir(disk_id: &str, generation: u64) -> String {
    format!("{}/logs", disk_dir(disk_id, generation))
}

/// Key of a shipped log covering sequences `first..=last`.
pub fn log_key(disk_id: &str, generation: u64, first: u64, last: u64) -> String {
    format!(
        "{}/{:0w$}-{:0w$}.hrl",
        logs_dir(disk_id, generation),
        first,
        last,
        w = SEQ_WIDTH
    )
}

/// Parses the file name of a shipped log (`<first>-<last>.hrl`) into `(first, last)`.
pub fn parse_log_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".hrl")?;
    let (a, b) = stem.split_once('-')?;
    let (first, last) = (a.parse().ok()?, b.parse().ok()?);
    (first <= last).then_some((first, last))
}

/// Folder of the recovery-point manifests.
pub const POINTS_DIR: &str = "points";

/// Key of the manifest of recovery point `id`.
pub fn point_key(id: u64) -> String {
    format!("{POINTS_DIR}/{:0w$}.json", id, w = SEQ_WIDTH)
}

/// Parses a manifest file name (`<id>.json`) into its id.
pub fn parse_point_name(name: &str) -> Option<u64> {
    name.strip_suffix(".json")?.parse().ok()
}

/// Key of the base index a retention merge writes: the disk as of log `after_seq`, rebuilt
/// from an older base and its logs (beside, never over, a copy's `base.idx` of that key).
pub fn merged_base_key(disk_id: &str, generation: u64, after_seq: u64) -> String {
    format!("disks/{disk_id}/g{generation}-b{after_seq}/merged.idx")
}

/// Folder of the leases: points in use by a reader, which garbage collection keeps.
pub const LEASES_DIR: &str = "leases";

/// Key of the lease of `holder` (`<host>-<pid>-<random hex>`, one path component).
pub fn lease_key(holder: &str) -> String {
    format!("{LEASES_DIR}/{holder}.json")
}

/// Version of the lease format.
pub const LEASE_VERSION: u32 = 1;

/// A reader's claim on a point (mount, restore, verify): while it has not expired, retention
/// neither rewrites that point's manifest nor collects an object it needs. The holder
/// writes it before reading the point, renews it at least every third of its life, and
/// deletes it when done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub version: u32,
    pub point: u64,
    pub host: String,
    /// What the point is read for: "mount", "restore", "verify", ...
    pub purpose: String,
    /// Expiry, ns since the Unix epoch; an expired lease is ignored.
    pub expires_ns: u64,
}

/// Folder of garbage collection's own records.
pub const GC_DIR: &str = "gc";

/// Key of the objects garbage collection found unreferenced, with when it first did.
pub const GC_PENDING_KEY: &str = "gc/pending.json";

/// A recovery point: every disk of a group as of one seal instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointManifest {
    pub version: u32,
    /// Position of the point in the group (1, 2, …); also its key.
    pub id: u64,
    /// The seal instant this point captures, ns since the Unix epoch.
    pub time_ns: u64,
    /// The tracker's seal id of that instant.
    pub seal_id: u64,
    /// When the manifest was committed, ns since the Unix epoch.
    pub committed_ns: u64,
    /// Host that shipped it.
    pub host: String,
    /// The owner epoch it was committed under (absent in points from before epochs: 0);
    /// a point a takeover fenced is not in the group's chain (`crate::owner::is_fenced`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    pub disks: Vec<DiskEntry>,
    /// How consistent the point is: absent means crash-consistent (every point before kinds
    /// existed); `"app"` when the pre-seal hook (a guest freeze) succeeded before its seal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// The `kind` of an app-consistent point (the pre-seal hook succeeded before its seal).
pub const KIND_APP: &str = "app";

impl PointManifest {
    /// Whether the point is app-consistent (a crash-consistent point has no `kind`).
    pub fn is_app_consistent(&self) -> bool {
        self.kind.as_deref() == Some(KIND_APP)
    }
}

/// One disk in a recovery point: a base copy plus the chain of logs after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskEntry {
    /// File name of the disk at the seal instant.
    pub name: String,
    /// 32 hex digits: the disk's identity (stays across renames).
    pub disk_id: String,
    pub generation: u64,
    /// Disk size at the seal instant.
    pub disk_size: u64,
    pub base: BaseRef,
    /// Last log sequence applied on top of the base (equals `base.after_seq` when none yet).
    pub last_seq: u64,
    /// 64 hex digits: chain hash after the last log (what the next log must name).
    pub last_chain_hash: String,
    /// Mode, owner and group of the disk file at the seal; restore applies them (absent in
    /// points written before hrl recorded them: restore then makes the disk 0600 root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileAttrs>,
    /// Set when the disk changed outside the tracker before this point's seal: the entry is
    /// the disk's last good state, that of point `carried_from`, not the disk at this seal
    /// (its logs miss the change; a later point resyncs it). Restore and `points` say so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carried_from: Option<u64>,
}

/// Permission bits and ownership of a disk file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAttrs {
    /// Permission bits (`0o7777` at most; restore drops setuid, setgid and sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A base copy of a disk: its chunk index, and where in the log chain it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseRef {
    /// Key of the chunk index, relative to the group.
    pub index_key: String,
    /// 64 hex digits: blake3 of the encoded index object (detects a damaged index).
    pub index_hash: String,
    /// Block size of the chunks.
    pub block_size: u32,
    /// Logs with sequence `> after_seq` apply on top of this base.
    pub after_seq: u64,
    /// 64 hex digits: the chain hash the first log after the base names as previous.
    pub after_chain_hash: String,
}

impl FileAttrs {
    /// Mode bits restore may give a disk: setuid, setgid and sticky never come from a store.
    pub const RESTORE_MASK: u32 = 0o777;

    /// The attributes of the regular file at `path` (not followed if a symlink), if any.
    pub fn of_file(path: &std::path::Path) -> Option<FileAttrs> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::symlink_metadata(path).ok()?;
        md.file_type().is_file().then(|| FileAttrs {
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
        })
    }
}

impl PointManifest {
    /// Encodes the manifest as pretty JSON (small, read by people too).
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Decodes a manifest, refusing unknown fields and versions.
    pub fn from_json(bytes: &[u8]) -> Result<PointManifest, StoreFormatError> {
        let m: PointManifest = serde_json::from_slice(bytes)
            .map_err(|e| StoreFormatError::BadManifest(e.to_string()))?;
        if m.version != MANIFEST_VERSION {
            return Err(StoreFormatError::UnsupportedVersion(m.version));
        }
        crate::store_check::check_manifest(&m)?;
        Ok(m)
    }
}

/// A store object that does not have the expected form.
#[derive(Debug, thiserror::Error)]
pub enum StoreFormatError {
    #[error("recovery-point manifest is not valid: {0}")]
    BadManifest(String),
    #[error("recovery-point manifest version {0} is not supported by this hrl (expected {MANIFEST_VERSION}); upgrade hrl")]
    UnsupportedVersion(u32),
    /// A field that would be unsafe to act on (a disk name that is not one plain file name,
    /// a key outside the disk's folder, a size beyond the limits): the store was tampered
    /// with or damaged, so nothing of it is used.
    #[error("recovery-point manifest is refused: {0}; the store was damaged or tampered with (nothing was used from it)")]
    Unsafe(String),
}

/// Finds the fewest shipped logs that lead from sequence `after` (exclusive) to `last`
/// (inclusive), given the `(first, last)` ranges present in the store. Several overlapping
/// objects may exist (a log shipped again after a crash, coalesced differently); any exact
/// path through them gives the same result, since each is a faithful rewrite of its range.
pub fn log_path(ranges: &[(u64, u64)], after: u64, last: u64) -> Option<Vec<(u64, u64)>> {
    use std::collections::{BTreeMap, VecDeque};
    if last == after {
        return Some(Vec::new());
    }
    // Breadth-first over "next sequence to cover".
    let mut came_from: BTreeMap<u64, (u64, (u64, u64))> = BTreeMap::new();
    let mut queue = VecDeque::from([after + 1]);
    while let Some(next) = queue.pop_front() {
        for &(f, l) in ranges.iter().filter(|(f, l)| *f == next && *l <= last) {
            let reached = l + 1;
            if came_from.contains_key(&reached) || reached == after + 1 {
                continue;
            }
            came_from.insert(reached, (next, (f, l)));
            if l == last {
                let mut path = Vec::new();
                let mut at = reached;
                while at != after + 1 {
                    let (prev, range) = came_from[&at];
                    path.push(range);
                    at = prev;
                }
                path.reverse();
                return Some(path);
            }
            queue.push_back(reached);
        }
    }
    None
}

/// Folder of the test-failover records.
pub const TESTS_DIR: &str = "tests";

/// Key of the record of a test of point `point` that started at `started_ns`.
pub fn test_record_key(point: u64, started_ns: u64) -> String {
    format!("{TESTS_DIR}/{:0w$}-{started_ns}.json", point, w = SEQ_WIDTH)
}

/// Parses a test record's file name (`<point>-<started ns>.json`) into (point, started ns).
pub fn parse_test_record_name(name: &str) -> Option<(u64, u64)> {
    let (p, t) = name.strip_suffix(".json")?.split_once('-')?;
    Some((p.parse().ok()?, t.parse().ok()?))
}

/// A test failover (ASR keeps the same record): point `point` was served by a mount from
/// `started_ns` to `ended_ns` on `host`; `result` is "ok" for a clean unmount or what went
/// wrong. Written once when the test ends; `points` shows the point as tested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRecord {
    pub version: u32,
    pub point: u64,
    pub host: String,
    pub started_ns: u64,
    pub ended_ns: u64,
    pub result: String,
    /// Bytes written into the throwaway overlay (never into the store).
    #[serde(default)]
    pub overlay_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_numerically_and_parse_back() {
        assert!(point_key(9) < point_key(10));
        assert_eq!(
            parse_point_name(point_key(42).trim_start_matches("points/")),
            Some(42)
        );
        let k = log_key("ab", 1, 3, 12);
        let name = k.rsplit('/').next().unwrap();
        assert_eq!(parse_log_name(name), Some((3, 12)));
        assert_eq!(parse_log_name("5-3.hrl"), None);
        assert_eq!(parse_log_name("x.hrl"), None);
        assert!(chunk_key(&[0xab; 32]).starts_with("chunks/ab/abab"));
    }

    #[test]
    fn lease_and_test_record_keys() {
        assert_eq!(lease_key("hv1-12-ab"), "leases/hv1-12-ab.json");
        let k = test_record_key(7, 1234);
        let name = k.strip_prefix("tests/").unwrap();
        assert_eq!(parse_test_record_name(name), Some((7, 1234)));
        assert!(
            test_record_key(9, 5) < test_record_key(10, 1),
            "listing order is point order"
        );
        assert_eq!(parse_test_record_name("x-1.json"), None);
    }

    #[test]
    fn log_path_prefers_fewest_objects_and_detects_gaps() {
        let r = [(5, 5), (5, 6), (6, 6), (7, 7)];
        assert_eq!(log_path(&r, 4, 7), Some(vec![(5, 6), (7, 7)]));
        assert_eq!(log_path(&r, 5, 6), Some(vec![(6, 6)]));
        assert_eq!(log_path(&r, 4, 4), Some(vec![]));
        assert_eq!(log_path(&[(5, 5), (7, 7)], 4, 7), None);
        assert_eq!(log_path(&[(5, 8)], 4, 7), None);
    }

    #[test]
    fn manifest_round_trip_refuses_unknown_fields() {
        let m = PointManifest {
            version: MANIFEST_VERSION,
            id: 1,
            time_ns: 2,
            seal_id: 3,
            committed_ns: 4,
            host: "h".into(),
            epoch: None,
            disks: vec![DiskEntry {
                name: "d.img".into(),
                disk_id: "00".repeat(16),
                generation: 1,
                disk_size: 4096,
                base: BaseRef {
                    index_key: base_key(&"00".repeat(16), 1, 0),
                    index_hash: "00".repeat(32),
                    block_size: 65536,
                    after_seq: 0,
                    after_chain_hash: "00".repeat(32),
                },
                last_seq: 0,
                last_chain_hash: "00".repeat(32),
                file: None,
                carried_from: None,
            }],
            kind: None,
        };
        assert_eq!(PointManifest::from_json(&m.to_json()).unwrap(), m);
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        v["typo"] = 1.into();
        assert!(PointManifest::from_json(v.to_string().as_bytes()).is_err());
        v.as_object_mut().unwrap().remove("typo");
        v["version"] = 99.into();
        assert!(matches!(
            PointManifest::from_json(v.to_string().as_bytes()),
            Err(StoreFormatError::UnsupportedVersion(99))
        ));
    }
}

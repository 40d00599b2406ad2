//! The cycle's plan: a pure function from what the cycle knows before it copies anything
//! (the store's last point, the tracker's status and first seal, the shipper's durable
//! state) to what each disk needs. No I/O: unit-tested below.

use std::collections::{BTreeMap, HashSet};

use hrl::control::{DiskMode, DiskStatus as TrackerDisk, SealedLog};
use hrl::store::DiskEntry;

/// What the shipper's state says about the disks (flags by disk id, or by name for entries
/// without one: a disk renamed over another must not inherit the other's resync).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    /// Disks in "resync required" or "resyncing".
    pub resync: HashSet<String>,
    /// Disks whose next resync compares every block.
    pub full: HashSet<String>,
}

impl Flags {
    fn has(set: &HashSet<String>, name: &str, id: &str) -> bool {
        set.contains(id) || set.contains(name)
    }
    pub fn resync(&self, name: &str, id: &str) -> bool {
        Self::has(&self.resync, name, id)
    }
    pub fn full(&self, id: &str) -> bool {
        self.full.contains(id)
    }
}

/// True when a disk the tracker reports needs a resync before it can ship again.
pub fn needs_resync(d: &TrackerDisk, flags: &Flags) -> bool {
    d.mode == DiskMode::Bitmap || !d.unclean_extents.is_empty() || flags.resync(&d.disk, &d.disk_id)
}

/// How a disk's chain starts in this cycle's point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BasePlan {
    /// Its logs continue the last point's chain.
    Continue,
    /// A fuzzy copy of the whole disk as a new base (no usable replica).
    Copy,
    /// Continue the interrupted resync saved in the state directory.
    Resume,
    /// A new resync against the last point's replica (`full`: compare every block).
    Resync { full: bool },
}

/// What is known of one sealed disk.
pub struct DiskFacts<'a> {
    pub sealed: &'a SealedLog,
    /// Its entry in the last point (any generation).
    pub previous: Option<&'a DiskEntry>,
    /// The tracker reports it in bitmap mode, or with unclean extents.
    pub bitmap: bool,
    pub unclean: bool,
    /// An interrupted resync is saved for it that still answers this replica and report.
    pub resumable: bool,
}

/// The base plan of one disk.
pub fn plan_disk(f: &DiskFacts<'_>, flags: &Flags, force_resync: bool) -> BasePlan {
    let prev = f.previous.filter(|e| e.generation == f.sealed.generation);
    let resumable = f.resumable && !force_resync;
    let needs_base = force_resync
        || resumable
        || prev.is_none()
        || flags.resync(&f.sealed.disk, &f.sealed.disk_id)
        || f.bitmap
        || f.unclean;
    match (needs_base, prev) {
        (false, _) => BasePlan::Continue,
        (true, None) => BasePlan::Copy,
        (true, Some(_)) if resumable => BasePlan::Resume,
        (true, Some(_)) => BasePlan::Resync {
            full: force_resync || flags.full(&f.sealed.disk_id),
        },
    }
}

/// The last point's disks by id.
pub fn previous_by_id(last: Option<&hrl::store::PointManifest>) -> BTreeMap<String, DiskEntry> {
    last.map(|m| {
        m.disks
            .iter()
            .map(|d| (d.disk_id.clone(), d.clone()))
            .collect()
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hrl::store::BaseRef;

    fn sealed(generation: u64) -> SealedLog {
        let v = serde_json::json!({
            "disk": "d.img", "disk_id": "ab".repeat(16), "generation": generation, "seq": 5,
            "log": "d.img.5.hrl", "bytes": 0, "hash": "11".repeat(32),
            "prev_hash": "00".repeat(32), "records": 0, "disk_size": 1 << 20, "mode": "log",
        });
        serde_json::from_value(v).expect("a sealed log")
    }

    fn tracker_disk() -> TrackerDisk {
        let v = serde_json::json!({
            "disk": "d.img", "disk_id": "ab".repeat(16), "mode": "log", "active_log_bytes": 0,
            "active_seq": 6, "pending_logs": 0, "pending_sealed_bytes": 0,
            "disk_size": 1 << 20, "dirty_extents": 0, "unclean_extents": [],
            "torn_log_tail_at": null,
        });
        serde_json::from_value(v).expect("a tracker disk")
    }

    fn entry(generation: u64) -> DiskEntry {
        DiskEntry {
            name: "d.img".into(),
            disk_id: "ab".repeat(16),
            generation,
            disk_size: 1 << 20,
            base: BaseRef {
                index_key: "k".into(),
                index_hash: "00".repeat(32),
                block_size: 4096,
                after_seq: 1,
                after_chain_hash: "00".repeat(32),
            },
            last_seq: 4,
            last_chain_hash: "00".repeat(32),
            file: None,
            carried_from: None,
        }
    }

    fn facts<'a>(s: &'a SealedLog, prev: Option<&'a DiskEntry>) -> DiskFacts<'a> {
        DiskFacts {
            sealed: s,
            previous: prev,
            bitmap: false,
            unclean: false,
            resumable: false,
        }
    }

    #[test]
    fn a_disk_with_a_replica_continues_its_chain() {
        let (s, e) = (sealed(1), entry(1));
        let f = facts(&s, Some(&e));
        assert_eq!(plan_disk(&f, &Flags::default(), false), BasePlan::Continue);
        assert_eq!(
            plan_disk(&f, &Flags::default(), true),
            BasePlan::Resync { full: true },
            "an operator's --resync compares every block"
        );
    }

    #[test]
    fn new_disks_and_new_generations_are_copied() {
        let s = sealed(2);
        assert_eq!(
            plan_disk(&facts(&s, None), &Flags::default(), false),
            BasePlan::Copy
        );
        let e = entry(1);
        assert_eq!(
            plan_disk(&facts(&s, Some(&e)), &Flags::default(), false),
            BasePlan::Copy
        );
    }

    #[test]
    fn marks_unclean_reports_and_flags_resync_against_the_replica() {
        let (s, e) = (sealed(1), entry(1));
        let mut f = facts(&s, Some(&e));
        f.unclean = true;
        assert_eq!(
            plan_disk(&f, &Flags::default(), false),
            BasePlan::Resync { full: false }
        );
        let mut f = facts(&s, Some(&e));
        f.bitmap = true;
        assert_eq!(
            plan_disk(&f, &Flags::default(), false),
            BasePlan::Resync { full: false }
        );
        let flags = Flags {
            resync: [s.disk_id.clone()].into(),
            full: [s.disk_id.clone()].into(),
        };
        let f = facts(&s, Some(&e));
        assert_eq!(
            plan_disk(&f, &flags, false),
            BasePlan::Resync { full: true }
        );
        // Flagged by name only when the flag has no id (a disk renamed over another).
        let by_name = Flags {
            resync: ["d.img".to_string()].into(),
            ..Flags::default()
        };
        assert!(by_name.resync("d.img", "cd"));
        assert!(!by_name.resync("e.img", "cd"));
    }

    #[test]
    fn an_interrupted_resync_resumes_unless_an_operator_forces_a_new_one() {
        let (s, e) = (sealed(1), entry(1));
        let mut f = facts(&s, Some(&e));
        f.resumable = true;
        assert_eq!(plan_disk(&f, &Flags::default(), false), BasePlan::Resume);
        assert_eq!(
            plan_disk(&f, &Flags::default(), true),
            BasePlan::Resync { full: true }
        );
    }

    #[test]
    fn bitmap_mode_unclean_extents_and_flags_need_a_resync() {
        let d = tracker_disk();
        assert!(!needs_resync(&d, &Flags::default()));
        let bitmap = TrackerDisk {
            mode: DiskMode::Bitmap,
            ..d.clone()
        };
        assert!(needs_resync(&bitmap, &Flags::default()));
        let unclean = TrackerDisk {
            unclean_extents: vec![(0, 4096)],
            ..d.clone()
        };
        assert!(needs_resync(&unclean, &Flags::default()));
    }
}

//! The shipper's state is a cache: what it says about a disk (resync needed, ranges of
//! released logs, the last point) is also held by the tracker (its marks cover every change
//! not yet in a committed point) and the store (the latest point). When the state is missing
//! or out of step with the store, nothing in it is trusted: every disk of the store's latest
//! point gets a resync against that point, reading the tracker's marks, the extents it
//! reports unclean and the ranges of the logs pending since the point — and every block
//! where the marks cannot be proven to cover the changes since the point.

use hrl::store::PointManifest;
use tracing::warn;

use crate::service::status::{DirStatus, DiskState, Health};

/// Why the state of a directory cannot be trusted against the store's latest point `last`,
/// and whether the tracker's marks still prove what changed since that point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distrust {
    pub reason: String,
    /// Compare every block: the marks may have been cleared for points the store lacks.
    pub full: bool,
}

/// Decides whether `s` is in step with the store. `forced`: the operator asked for a
/// reconciliation (`sync --reconcile`).
pub fn distrust(s: &DirStatus, last: Option<&PointManifest>, forced: bool) -> Option<Distrust> {
    let last = last?;
    let latest = last.id;
    let in_step =
        s.last_point_id == Some(latest) || s.committing_point == Some((latest, last.seal_id));
    if in_step && !forced {
        return None;
    }
    // The tracker clears its marks after each point this shipper commits: if the state saw
    // points the store no longer has, marks for them may be gone.
    let ahead = s
        .last_point_id
        .into_iter()
        .chain(s.committing_point.map(|c| c.0))
        .any(|p| p > latest);
    let reason = if forced {
        format!("an operator asked to reconcile the shipper state with point {latest}")
    } else {
        match s.last_point_id {
            None => format!("the shipper has no state for this directory; reconciling with point {latest} of the store"),
            Some(p) if ahead => format!("the shipper state names point {p} but the store's latest is {latest}: the tracker's marks cannot prove what changed, every block is compared"),
            Some(p) => format!("the shipper state names point {p} but the store's latest is {latest}; reconciling with it"),
        }
    };
    Some(Distrust {
        reason,
        full: ahead,
    })
}

/// Flags every disk of `last` for a resync against it (targeted over the tracker's marks, or
/// full) when `s` cannot be trusted, and brings `s` in step with the store. Returns the disks
/// flagged (by name): they must not wait for the resync window, since no point can be made
/// from a state nobody trusts.
pub fn reconcile(s: &mut DirStatus, last: Option<&PointManifest>, forced: bool) -> Vec<String> {
    let (Some(d), Some(last)) = (distrust(s, last, forced), last) else {
        return Vec::new();
    };
    warn!(dir = %s.dir, full = d.full, "{}", d.reason);
    let mut names = Vec::new();
    for e in &last.disks {
        let disk = s.disk_mut(&e.name, &e.disk_id);
        disk.state = DiskState::ResyncRequired;
        disk.health = disk.health.max(Health::Warning);
        disk.resync_full |= d.full;
        disk.resync_reason = Some(d.reason.clone());
        names.push(e.name.clone());
    }
    s.last_point_id = Some(last.id);
    s.last_point_ns = Some(last.time_ns);
    s.committing_point = None;
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn point(id: u64) -> PointManifest {
        PointManifest {
            version: hrl::store::MANIFEST_VERSION,
            id,
            time_ns: 1,
            seal_id: 1,
            committed_ns: 1,
            host: "h".into(),
            epoch: None,
            disks: vec![hrl::store::DiskEntry {
                name: "d.img".into(),
                disk_id: "00".into(),
                generation: 1,
                disk_size: 1,
                base: hrl::store::BaseRef {
                    index_key: "i".into(),
                    index_hash: "h".into(),
                    block_size: 4096,
                    after_seq: 1,
                    after_chain_hash: "c".into(),
                },
                last_seq: 1,
                last_chain_hash: "c".into(),
                file: None,
                carried_from: None,
            }],
            kind: None,
        }
    }

    #[test]
    fn a_state_out_of_step_with_the_store_is_not_trusted() {
        let fresh = DirStatus::new(Path::new("/v/a"), "a", "/s");
        assert_eq!(
            distrust(&fresh, None, false),
            None,
            "no point: nothing to trust"
        );
        let d = distrust(&fresh, Some(&point(3)), false).unwrap();
        assert!(!d.full && d.reason.contains("no state"), "{d:?}");
        let mut s = fresh.clone();
        s.last_point_id = Some(3);
        assert_eq!(distrust(&s, Some(&point(3)), false), None);
        assert!(distrust(&s, Some(&point(3)), true).is_some());
        // Killed between commit and the state's save: still in step.
        s.last_point_id = Some(2);
        s.committing_point = Some((3, 1));
        assert_eq!(distrust(&s, Some(&point(3)), false), None);
        // ... but not another shipper's point 3 (another seal).
        s.committing_point = Some((3, 9));
        assert!(distrust(&s, Some(&point(3)), false).is_some());
        // The state saw a point the store lacks: the marks cannot prove anything.
        s.last_point_id = Some(4);
        s.committing_point = None;
        assert!(distrust(&s, Some(&point(3)), false).unwrap().full);
    }

    #[test]
    fn reconciling_flags_every_disk_of_the_point() {
        let mut s = DirStatus::new(Path::new("/v/a"), "a", "/s");
        let names = reconcile(&mut s, Some(&point(2)), false);
        assert_eq!(names, vec!["d.img".to_string()]);
        assert_eq!(s.disks[0].state, DiskState::ResyncRequired);
        assert!(!s.disks[0].resync_full);
        assert_eq!(s.last_point_id, Some(2));
        assert!(reconcile(&mut s, Some(&point(2)), false).is_empty());
    }
}

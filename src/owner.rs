//! Who owns a group: the owner records in the store, one object per epoch, and the rule
//! that says which points a takeover fenced (docs/store-layout.md, "Ownership").
//!
//! ```text
//! <prefix>/<group>/owner/<epoch>.json   one record per epoch, created if absent, never changed
//! <prefix>/<group>/owner.json           the record of groups written before epochs (epoch 0)
//! ```
//!
//! The current owner is the record with the highest epoch. Ownership changes only by
//! creating the next epoch's object with create-if-absent, so of two hosts taking a group
//! at once exactly one wins, on every store with conditional create.

use serde::{Deserialize, Serialize};

/// Folder of the owner records, relative to the group.
pub const OWNERS_DIR: &str = "owner";
/// The single owner record of groups from before epochs; read as epoch 0.
pub const LEGACY_OWNER_KEY: &str = "owner.json";
/// Version of the owner record format written by this code.
pub const OWNER_VERSION: u32 = 1;

/// Key of the owner record of `epoch`.
pub fn owner_key(epoch: u64) -> String {
    format!("{OWNERS_DIR}/{epoch:020}.json")
}

/// Parses an owner record's file name into its epoch.
pub fn parse_owner_name(name: &str) -> Option<u64> {
    name.strip_suffix(".json")?.parse().ok()
}

/// What the owner of an epoch does with the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerState {
    /// It ships points into the group.
    Active,
    /// It handed the group over at `point` (a planned failover) and waits for the
    /// recovery host to take it; nobody commits meanwhile.
    HandedOver,
}

/// One epoch of a group's ownership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerRecord {
    pub version: u32,
    pub epoch: u64,
    pub host: String,
    /// The protected directory on `host`.
    pub dir: String,
    /// When the epoch began, ns since the Unix epoch.
    pub since_ns: u64,
    /// The point this epoch's chain continues from (the one a failover restored, the one a
    /// hand-over shipped last); None for a group's first owner. Points after it committed
    /// under an earlier epoch are fenced ([`is_fenced`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<u64>,
    pub state: OwnerState,
}

/// The record of `owner.json` as written before epochs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyOwner {
    host: String,
    dir: String,
    since_ns: u64,
}

/// A record that does not have the expected form.
#[derive(Debug, thiserror::Error)]
#[error("owner record is not valid: {0}")]
pub struct BadOwnerRecord(String);

impl OwnerRecord {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Decodes the record of `epoch` (its key says the epoch; the record must agree).
    pub fn from_json(bytes: &[u8], epoch: u64) -> Result<OwnerRecord, BadOwnerRecord> {
        let r: OwnerRecord =
            serde_json::from_slice(bytes).map_err(|e| BadOwnerRecord(e.to_string()))?;
        if r.version != OWNER_VERSION {
            return Err(BadOwnerRecord(format!(
                "version {} is not supported by this hrl (expected {OWNER_VERSION}); upgrade hrl",
                r.version
            )));
        }
        if r.epoch != epoch {
            return Err(BadOwnerRecord(format!(
                "it names epoch {} but its key epoch {epoch}",
                r.epoch
            )));
        }
        Ok(r)
    }

    /// Decodes `owner.json` of a group from before epochs: epoch 0, active.
    pub fn from_legacy_json(bytes: &[u8]) -> Result<OwnerRecord, BadOwnerRecord> {
        let l: LegacyOwner =
            serde_json::from_slice(bytes).map_err(|e| BadOwnerRecord(e.to_string()))?;
        Ok(OwnerRecord {
            version: OWNER_VERSION,
            epoch: 0,
            host: l.host,
            dir: l.dir,
            since_ns: l.since_ns,
            point: None,
            state: OwnerState::Active,
        })
    }
}

/// Whether point `id`, committed under `epoch` (None: a point from before epochs, 0), was
/// fenced by a takeover: a later epoch continues from an earlier point, so this point is
/// not in the group's chain (its owner committed it after losing the group). `records` are
/// the group's owner records (a record without a point, a group's first owner, fences
/// nothing).
pub fn is_fenced(id: u64, epoch: Option<u64>, records: &[OwnerRecord]) -> bool {
    let e = epoch.unwrap_or(0);
    records
        .iter()
        .any(|r| r.epoch > e && r.point.is_some_and(|p| p < id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: u64, point: Option<u64>) -> OwnerRecord {
        OwnerRecord {
            version: OWNER_VERSION,
            epoch,
            host: "h".into(),
            dir: "/d".into(),
            since_ns: 1,
            point,
            state: OwnerState::Active,
        }
    }

    #[test]
    fn points_after_a_takeover_under_an_older_epoch_are_fenced() {
        // Epoch 1 from the start; epoch 2 took over from point 5.
        let records = [rec(1, None), rec(2, Some(5))];
        assert!(!is_fenced(5, Some(1), &records));
        assert!(
            is_fenced(6, Some(1), &records),
            "committed after the takeover"
        );
        assert!(!is_fenced(7, Some(2), &records));
        // Points from before epochs are fenced only by a takeover before them; a first
        // owner's record (no point) fences nothing.
        assert!(!is_fenced(3, None, &records));
        assert!(!is_fenced(3, None, &[rec(1, None)]));
        assert!(is_fenced(6, None, &records));
    }

    #[test]
    fn records_round_trip_and_legacy_reads_as_epoch_zero() {
        let r = rec(3, Some(9));
        assert_eq!(OwnerRecord::from_json(&r.to_json(), 3).unwrap(), r);
        assert!(OwnerRecord::from_json(&r.to_json(), 4).is_err());
        let mut v: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        v["typo"] = 1.into();
        assert!(OwnerRecord::from_json(v.to_string().as_bytes(), 3).is_err());
        let legacy = br#"{"host":"a","dir":"/v","since_ns":7}"#;
        let l = OwnerRecord::from_legacy_json(legacy).unwrap();
        assert_eq!(
            (l.epoch, l.host.as_str(), l.state),
            (0, "a", OwnerState::Active)
        );
        assert!(owner_key(9) < owner_key(10));
        assert_eq!(parse_owner_name("00000000000000000009.json"), Some(9));
    }
}

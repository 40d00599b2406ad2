//! Reading recovery points of a group: listing, loading, choosing one by id or time.

use anyhow::{bail, Context, Result};
use hrl::store::PointManifest;

use crate::store::GroupStore;

pub use crate::store::manifests::{get as load, latest, list_ids};

/// Picks a point: `latest`, `latest-app` (the latest app-consistent one), a numeric id, or a time (RFC 3339, e.g. `2026-11-23T15:00:00Z`:
/// the last point sealed at or before it, among points whose seal time did not go
/// backwards — see [`at_time`]).
pub async fn select(store: &GroupStore, which: &str) -> Result<PointManifest> {
    let ids = list_ids(store).await?;
    if ids.is_empty() {
        bail!(
            "group {:?} in {} has no recovery points yet; run `hrl-shipper sync` first",
            store.group,
            store.target.url
        );
    }
    let which = which.trim();
    if which.is_empty() || which == "latest" {
        // The latest point of the chain: one a takeover fenced is reached by id only.
        return latest(store).await?.with_context(|| {
            format!(
                "group {:?} has no recovery point that a takeover did not fence; see `hrl-shipper points`",
                store.group
            )
        });
    }
    if which == "latest-app" {
        for &id in ids.iter().rev() {
            let m = load(store, id).await?;
            if m.is_app_consistent() {
                return Ok(m);
            }
        }
        bail!(
            "group {:?} has no app-consistent recovery point (configure pre_seal / post_seal hooks); see `hrl-shipper points`",
            store.group
        );
    }
    if let Ok(id) = which.parse::<u64>() {
        if !ids.contains(&id) {
            bail!("recovery point {id} does not exist in group {:?} (points: {}); see `hrl-shipper points`", store.group, summary(&ids));
        }
        return Ok(load(store, id).await?);
    }
    let t = humantime::parse_rfc3339_weak(which).map_err(|e| {
        anyhow::anyhow!("--point {which:?} is neither `latest`, `latest-app`, a point id nor a time like 2026-11-23T15:00:00Z ({e})")
    })?;
    let t_ns = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let records = crate::store::owners::list(store).await?;
    let mut all = Vec::with_capacity(ids.len());
    for &id in &ids {
        let m = load(store, id).await?;
        // A point a takeover fenced is not in the chain: reached by id only.
        if !hrl::owner::is_fenced(m.id, m.epoch, &records) {
            all.push(m);
        }
    }
    let times: Vec<u64> = all.iter().map(|m| m.time_ns).collect();
    at_time(&times, t_ns)
        .map(|i| all.swap_remove(i))
        .with_context(|| {
            format!(
                "no recovery point of group {:?} was sealed at or before {which} (points sealed after a clock step back are reached by id only: see `hrl-shipper points`)",
                store.group
            )
        })
}

/// Points are ordered by id (commit order), not by their seal times, which come from the
/// wall clock and go backwards when it is stepped back. For each point (times in id order):
/// its seal time is earlier than that of a point committed before it.
pub fn time_went_back(times: &[u64]) -> Vec<bool> {
    let mut latest = 0u64;
    times
        .iter()
        .map(|&t| {
            let back = t < latest;
            latest = latest.max(t);
            back
        })
        .collect()
}

/// The point (index into `times`, in id order) a lookup by time `t` returns: the last point
/// sealed at or before `t` whose seal time did not go backwards. A point committed after a
/// later-timed one (the clock was stepped back) is never the answer to a time: its time
/// does not say where it is in the sequence; it is reached by its id.
pub fn at_time(times: &[u64], t: u64) -> Option<usize> {
    let back = time_went_back(times);
    (0..times.len()).rev().find(|&i| !back[i] && times[i] <= t)
}

fn summary(ids: &[u64]) -> String {
    match (ids.first(), ids.last()) {
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}..{b}"),
        _ => "none".into(),
    }
}

/// RFC 3339 rendering of a ns timestamp.
pub fn fmt_time(ns: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
    humantime::format_rfc3339_millis(t).to_string()
}

/// One line per disk of `m` that the point carries at an earlier point's state (changed
/// outside the tracker before its seal), for `points` and `restore` to say so.
pub fn carried_notes(m: &PointManifest) -> Vec<String> {
    m.disks
        .iter()
        .filter_map(|d| {
            d.carried_from.map(|from| {
                format!(
                    "{} is as of point {from}: it changed outside the tracker before this seal (a later point holds it resynced)",
                    hrl::display::escaped(&d.name)
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_lookup_skips_points_whose_time_went_back() {
        // Point 3 (index 2) was sealed after the clock was stepped back an hour.
        let h = 3_600_000_000_000u64;
        let times = [10 * h, 11 * h, 10 * h + 5, 12 * h];
        assert_eq!(time_went_back(&times), vec![false, false, true, false]);
        assert_eq!(at_time(&times, 11 * h), Some(1), "not the later point 3");
        assert_eq!(at_time(&times, 10 * h + 10), Some(0));
        assert_eq!(at_time(&times, 12 * h), Some(3));
        assert_eq!(at_time(&times, h), None);
        // Equal times are not a step back.
        assert_eq!(at_time(&[5, 5], 5), Some(1));
    }
}

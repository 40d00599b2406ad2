//! Reading recovery points of a group: listing, loading, choosing one by id or time.

use anyhow::{bail, Context, Result};
use hrl::store::{parse_point_name, point_key, PointManifest, POINTS_DIR};

use crate::store_client::GroupStore;

/// Ids of every committed point, ascending.
pub async fn list_ids(store: &GroupStore) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = store
        .list_names(POINTS_DIR)
        .await?
        .iter()
        .filter_map(|n| parse_point_name(n))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

pub async fn load(store: &GroupStore, id: u64) -> Result<PointManifest> {
    let key = point_key(id);
    let bytes = store.get(&key).await?;
    let m = PointManifest::from_json(&bytes).with_context(|| {
        format!(
            "recovery point {id} ({}) in {} is damaged",
            store.path(&key),
            store.target.url
        )
    })?;
    if m.id != id {
        bail!(
            "recovery point object {} names id {}, not {id}; the store is corrupt",
            store.path(&key),
            m.id
        );
    }
    Ok(m)
}

/// The latest committed point, if any.
pub async fn latest(store: &GroupStore) -> Result<Option<PointManifest>> {
    match list_ids(store).await?.last() {
        Some(&id) => Ok(Some(load(store, id).await?)),
        None => Ok(None),
    }
}

/// Picks a point: `latest`, a numeric id, or a time (RFC 3339, e.g. `2026-11-23T15:00:00Z`:
/// the last point sealed at or before it).
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
        return load(store, *ids.last().expect("not empty")).await;
    }
    if let Ok(id) = which.parse::<u64>() {
        if !ids.contains(&id) {
            bail!("recovery point {id} does not exist in group {:?} (points: {}); see `hrl-shipper points`", store.group, summary(&ids));
        }
        return load(store, id).await;
    }
    let t = humantime::parse_rfc3339_weak(which).map_err(|e| {
        anyhow::anyhow!("--point {which:?} is neither `latest`, a point id nor a time like 2026-11-23T15:00:00Z ({e})")
    })?;
    let t_ns = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut best: Option<PointManifest> = None;
    for &id in ids.iter().rev() {
        let m = load(store, id).await?;
        if m.time_ns <= t_ns {
            best = Some(m);
            break;
        }
    }
    best.with_context(|| {
        format!(
            "no recovery point of group {:?} was sealed at or before {which}",
            store.group
        )
    })
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

//! Recovery-point manifests (`points/<id>.json`): list, get, commit-if-absent. A point
//! exists once its manifest does; it is written last, create-if-absent.

use hrl::store::{parse_point_name, point_key, PointManifest, POINTS_DIR};

use super::{GroupStore, Put, StoreResult};

/// Ids of every committed point, ascending.
pub async fn list_ids(store: &GroupStore) -> StoreResult<Vec<u64>> {
    let mut ids: Vec<u64> = store
        .list_names(POINTS_DIR)
        .await?
        .iter()
        .filter_map(|n| parse_point_name(n))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// The manifest of point `id`, validated (the store is not trusted).
pub async fn get(store: &GroupStore, id: u64) -> StoreResult<PointManifest> {
    let key = point_key(id);
    let bytes = store.get(&key).await?;
    let what = format!("recovery point {id}");
    let m = PointManifest::from_json(&bytes)
        .map_err(|e| store.damaged(what.clone(), &key, e.to_string()))?;
    if m.id != id {
        return Err(store.damaged(what, &key, format!("it names id {}", m.id)));
    }
    Ok(m)
}

/// The latest committed point, if any.
pub async fn latest(store: &GroupStore) -> StoreResult<Option<PointManifest>> {
    match list_ids(store).await?.last() {
        Some(&id) => Ok(Some(get(store, id).await?)),
        None => Ok(None),
    }
}

/// Commits `m` unless a point with its id exists: `Existed` means another writer committed
/// that id first (a retry of this very write is `Created`, see [`GroupStore::put_new`]).
pub async fn commit(store: &GroupStore, m: &PointManifest) -> StoreResult<Put> {
    store.put_new(&point_key(m.id), m.to_json()).await
}

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

/// The latest point of the group's chain, if any: the highest id a takeover did not fence
/// (a point its old owner committed after losing the group: `hrl::owner::is_fenced`).
pub async fn latest(store: &GroupStore) -> StoreResult<Option<PointManifest>> {
    let ids = list_ids(store).await?;
    if ids.is_empty() {
        return Ok(None);
    }
    let records = super::owners::list(store).await?;
    for &id in ids.iter().rev() {
        let m = get(store, id).await?;
        if !hrl::owner::is_fenced(m.id, m.epoch, &records) {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// The id the next point gets: after every committed one, fenced ones included (their ids
/// are taken).
pub async fn next_id(store: &GroupStore) -> StoreResult<u64> {
    Ok(list_ids(store).await?.last().map_or(1, |id| id + 1))
}

/// Commits `m` unless a point with its id exists: `Existed` means another writer committed
/// that id first (a retry of this very write is `Created`, see [`GroupStore::put_new`]).
pub async fn commit(store: &GroupStore, m: &PointManifest) -> StoreResult<Put> {
    store.put_new(&point_key(m.id), m.to_json()).await
}

/// Replaces the manifest of an existing point (retention moved it onto a merged base):
/// one object replaced whole, so a reader sees the old or the new version.
pub async fn rewrite(store: &GroupStore, m: &PointManifest) -> StoreResult<()> {
    store.put_overwrite(&point_key(m.id), m.to_json()).await
}

/// Deletes the manifest of point `id` (retention expired it); its objects stay until
/// collection finds nothing else needs them.
pub async fn delete(store: &GroupStore, id: u64) -> StoreResult<()> {
    store.delete(&point_key(id)).await.map(|_| ())
}

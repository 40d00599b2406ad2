//! Base indexes: the chunk list of a base copy, fetched and checked against the hash its
//! manifest records before anything trusts it.

use hrl::chunk::ChunkIndex;
use hrl::store::BaseRef;

use super::{GroupStore, StoreResult};

/// Fetches the index `base` names; a hash other than the recorded one, or bytes that do not
/// decode, are [`super::StoreError::Damaged`]. The hash is of the stored (sealed) bytes.
pub async fn fetch_base_index(store: &GroupStore, base: &BaseRef) -> StoreResult<ChunkIndex> {
    let stored = store.get_stored(&base.index_key).await?;
    let hash = blake3::hash(&stored);
    if hrl::from_hex::<32>(&base.index_hash) != Some(*hash.as_bytes()) {
        return Err(store.damaged(
            "chunk index",
            &base.index_key,
            format!(
                "hash {}, the point names {}",
                hrl::to_hex(hash.as_bytes()),
                base.index_hash
            ),
        ));
    }
    let bytes = store.open(&base.index_key, stored).await?;
    ChunkIndex::decode(&bytes)
        .map_err(|e| store.damaged("chunk index", &base.index_key, e.to_string()))
}

/// Encodes (and seals) and uploads an index; returns the hash (hex) of the stored bytes for
/// the manifest. When an earlier attempt (a killed cycle or prune) stored this key already,
/// the hash is the stored object's: sealing is not deterministic, and a fuzzy copy read again
/// may differ, but that index is as good a base after the same seal (its chunks went up
/// before it) — the manifest must name what the store holds (chaos seeds 50007, 50009).
pub async fn put_index(store: &GroupStore, key: &str, index: &ChunkIndex) -> StoreResult<String> {
    let stored = store.seal(key, index.encode()).await?;
    let hash = hrl::to_hex(blake3::hash(&stored).as_bytes());
    match store.put_stored(key, stored).await? {
        super::Put::Created => Ok(hash),
        super::Put::Existed => stored_index_hash(store, key).await,
    }
}

/// The hash (hex) of the index stored at `key`, after checking that it opens and decodes.
pub async fn stored_index_hash(store: &GroupStore, key: &str) -> StoreResult<String> {
    let stored = store.get_stored(key).await?;
    let hash = hrl::to_hex(blake3::hash(&stored).as_bytes());
    let bytes = store.open(key, stored).await?;
    ChunkIndex::decode(&bytes).map_err(|e| store.damaged("chunk index", key, e.to_string()))?;
    Ok(hash)
}

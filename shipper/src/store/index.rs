//! Base indexes: the chunk list of a base copy, fetched and checked against the hash its
//! manifest records before anything trusts it.

use hrl::chunk::ChunkIndex;
use hrl::store::BaseRef;

use super::{GroupStore, StoreResult};

/// Fetches the index `base` names; a hash other than the recorded one, or bytes that do not
/// decode, are [`super::StoreError::Damaged`].
pub async fn fetch_base_index(store: &GroupStore, base: &BaseRef) -> StoreResult<ChunkIndex> {
    let bytes = store.get(&base.index_key).await?;
    let hash = blake3::hash(&bytes);
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
    ChunkIndex::decode(&bytes)
        .map_err(|e| store.damaged("chunk index", &base.index_key, e.to_string()))
}

/// Encodes and uploads an index; returns its hash (hex) for the manifest.
pub async fn put_index(store: &GroupStore, key: &str, index: &ChunkIndex) -> StoreResult<String> {
    let encoded = index.encode();
    let hash = hrl::to_hex(blake3::hash(&encoded).as_bytes());
    store.put_immutable(key, encoded).await?;
    Ok(hash)
}

//! The chunk store: fixed-size blocks named by their blake3 digest, stored zstd-compressed
//! once per group (`chunks/<ab>/<digest>`). All-zero blocks are never stored.

use std::collections::HashSet;

use hrl::chunk::ZERO_DIGEST;
use hrl::Digest;

use super::{compress, GroupStore, Op, Put, StoreError, StoreResult};

/// A block ready to store: its digest and, unless it is all zero or known to be stored,
/// its compressed bytes.
pub struct Prepared {
    pub digest: Digest,
    pub compressed: Option<Vec<u8>>,
}

/// Hashes a block and compresses it unless it is zero or in `known` (CPU work: call it off
/// the async threads).
pub fn prepare(data: &[u8], known: &HashSet<Digest>) -> std::io::Result<Prepared> {
    let digest = hrl::chunk::block_digest(data);
    let compressed = match digest == ZERO_DIGEST || known.contains(&digest) {
        true => None,
        false => Some(compress(data)?),
    };
    Ok(Prepared { digest, compressed })
}

/// The chunks of one group.
#[derive(Clone, Copy)]
pub struct ChunkStore<'a> {
    store: &'a GroupStore,
}

impl<'a> ChunkStore<'a> {
    pub fn new(store: &'a GroupStore) -> ChunkStore<'a> {
        ChunkStore { store }
    }

    /// Stores a prepared block; returns the compressed bytes it sent (0: nothing to send, or
    /// the store had it).
    pub async fn put(&self, p: Prepared) -> StoreResult<(Digest, Option<Put>, u64)> {
        match p.compressed {
            None => Ok((p.digest, None, 0)),
            Some(bytes) => {
                let n = bytes.len() as u64;
                let put = self
                    .store
                    .put_immutable(&hrl::store::chunk_key(&p.digest), bytes)
                    .await?;
                let sent = if put == Put::Created { n } else { 0 };
                Ok((p.digest, Some(put), sent))
            }
        }
    }

    /// Stores one block unless stored: (digest, compressed bytes sent).
    pub async fn insert(&self, data: &[u8]) -> StoreResult<(Digest, u64)> {
        let p = prepare(data, &HashSet::new())
            .map_err(|e| StoreError::local(Op::Put, "chunks", &self.store.target.url, e))?;
        let (digest, _, sent) = self.put(p).await?;
        Ok((digest, sent))
    }

    /// Reads one chunk, decompressed, its content checked against `digest`.
    pub async fn read(&self, digest: &Digest) -> StoreResult<Vec<u8>> {
        let key = hrl::store::chunk_key(digest);
        let raw = self.store.get(&key).await?;
        let digest = *digest;
        let checked = tokio::task::spawn_blocking(move || {
            let data = zstd::stream::decode_all(raw.as_slice())
                .map_err(|e| format!("not valid zstd: {e}"))?;
            match hrl::chunk::block_digest(&data) == digest {
                true => Ok(data),
                false => Err("content does not match its digest".to_string()),
            }
        })
        .await
        .map_err(|e| StoreError::local(Op::Get, &key, &self.store.target.url, e))?;
        checked.map_err(|why| self.store.damaged("chunk", &key, why))
    }

    /// The digests of every chunk the group holds (listed, not downloaded).
    pub async fn list(&self) -> StoreResult<HashSet<Digest>> {
        let names = self.store.list_names("chunks").await?;
        Ok(names
            .iter()
            .filter_map(|n| hrl::from_hex::<32>(n))
            .collect())
    }
}

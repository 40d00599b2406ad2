//! The chunk store: fixed-size blocks named by their blake3 digest (keyed, in an encrypted
//! group: [`GroupCrypto::chunk_name`]), stored zstd-compressed (then sealed) once per group
//! (`chunks/<ab>/<digest>`). All-zero blocks are never stored.

use std::collections::HashSet;

use hrl::chunk::ZERO_DIGEST;
use hrl::crypto::{GroupCrypto, ObjectKind};
use hrl::Digest;

use super::{compress, GroupStore, Op, Put, StoreError, StoreResult};

/// A block ready to store: its digest and, unless it is all zero or known to be stored,
/// its bytes as stored (compressed, then sealed in an encrypted group).
pub struct Prepared {
    pub digest: Digest,
    pub compressed: Option<Vec<u8>>,
}

/// The name of a block in a group: keyed with the group's key when it is encrypted.
pub fn chunk_name(crypto: Option<&GroupCrypto>, data: &[u8]) -> Digest {
    match crypto {
        Some(c) => c.chunk_name(data),
        None => hrl::chunk::block_digest(data),
    }
}

/// Names a block and compresses (and seals, with `crypto`: [`GroupStore::crypto`]) it
/// unless it is zero or in `known` (CPU work: call it off the async threads).
pub fn prepare(
    crypto: Option<&GroupCrypto>,
    data: &[u8],
    known: &HashSet<Digest>,
) -> std::io::Result<Prepared> {
    let digest = chunk_name(crypto, data);
    if digest == ZERO_DIGEST || known.contains(&digest) {
        return Ok(Prepared {
            digest,
            compressed: None,
        });
    }
    let mut bytes = compress(data)?;
    if let Some(c) = crypto {
        let key = hrl::store::chunk_key(&digest);
        bytes = c
            .seal(&key, ObjectKind::Chunk, &bytes)
            .map_err(std::io::Error::other)?;
    }
    Ok(Prepared {
        digest,
        compressed: Some(bytes),
    })
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
                    .put_stored(&hrl::store::chunk_key(&p.digest), bytes)
                    .await?;
                let sent = if put == Put::Created { n } else { 0 };
                Ok((p.digest, Some(put), sent))
            }
        }
    }

    /// Stores one block unless stored: (digest, compressed bytes sent).
    pub async fn insert(&self, data: &[u8]) -> StoreResult<(Digest, u64)> {
        let p = prepare(self.store.crypto().map(|c| &**c), data, &HashSet::new())
            .map_err(|e| StoreError::local(Op::Put, "chunks", &self.store.target.url, e))?;
        let (digest, _, sent) = self.put(p).await?;
        Ok((digest, sent))
    }

    /// Reads one chunk, opened, decompressed, its content checked against `digest`.
    pub async fn read(&self, digest: &Digest) -> StoreResult<Vec<u8>> {
        let key = hrl::store::chunk_key(digest);
        let stored = self.store.get_stored(&key).await?;
        let digest = *digest;
        let (crypto, k) = (self.store.crypto().cloned(), key.clone());
        let checked = tokio::task::spawn_blocking(move || {
            let raw = match &crypto {
                Some(c) => c
                    .open(&k, ObjectKind::Chunk, &stored)
                    .map_err(|e| e.to_string())?,
                None => stored,
            };
            let data = zstd::stream::decode_all(raw.as_slice())
                .map_err(|e| format!("not valid zstd: {e}"))?;
            match chunk_name(crypto.as_deref(), &data) == digest {
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

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
        self.read_checked(digest, None).await
    }

    /// Reads the chunk of a block of `len` bytes (the index says how long), opened,
    /// decompressed straight into a buffer of exactly that size, its content checked
    /// against `digest`. A chunk that decompresses to more or fewer bytes than its block is
    /// [`StoreError::Damaged`], like one whose content does not match.
    pub async fn read_block(&self, digest: &Digest, len: usize) -> StoreResult<Vec<u8>> {
        self.read_checked(digest, Some(len)).await
    }

    /// The one read of a chunk: the stored bytes, opened, decompressed (into exactly `len`
    /// bytes when the length is known) and checked, off the async threads (with the read of
    /// a local store's file, in one blocking task).
    async fn read_checked(&self, digest: &Digest, len: Option<usize>) -> StoreResult<Vec<u8>> {
        let key = hrl::store::chunk_key(digest);
        let digest = *digest;
        let (crypto, k) = (self.store.crypto().cloned(), key.clone());
        let checked =
            self.store
                .get_stored_then(&key, move |stored| {
                    let opened: Vec<u8>;
                    let raw: &[u8] = match &crypto {
                        Some(c) => {
                            opened = c
                                .open(&k, ObjectKind::Chunk, stored)
                                .map_err(|e| e.to_string())?;
                            opened.as_slice()
                        }
                        None => stored,
                    };
                    let data = match len {
                        Some(len) => decompress_exact(raw, len)?,
                        None => zstd::stream::decode_all(raw)
                            .map_err(|e| format!("not valid zstd: {e}"))?,
                    };
                    match chunk_name(crypto.as_deref(), &data) == digest {
                        true => Ok(data),
                        false => Err("content does not match its digest".to_string()),
                    }
                })
                .await?;
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

/// Decompresses a chunk into a buffer of `len` bytes (one more of room, to tell a longer
/// chunk from a broken stream); any other length is the reason it is damaged.
fn decompress_exact(raw: &[u8], len: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(len + 1);
    let n = zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(raw, &mut out))
        .map_err(|e| match e.to_string().contains("too small") {
            true => format!("it decompresses to more than its block's {len} bytes"),
            false => format!("not valid zstd: {e}"),
        })?;
    match n {
        n if n == len => Ok(out),
        n if n > len => Err(format!(
            "it decompresses to more than its block's {len} bytes"
        )),
        n => Err(format!(
            "it decompresses to {n} bytes, its block holds {len}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_of_another_length_than_its_block_is_refused() {
        let block = vec![7u8; 4096];
        let z = super::super::compress(&block).unwrap();
        assert_eq!(decompress_exact(&z, 4096).unwrap(), block);
        let short = decompress_exact(&z, 8192).unwrap_err();
        assert!(
            short.contains("4096 bytes, its block holds 8192"),
            "{short}"
        );
        let long = decompress_exact(&z, 1000).unwrap_err();
        assert!(long.contains("more than its block's 1000 bytes"), "{long}");
        let broken = decompress_exact(&z[..z.len() / 2], 4096).unwrap_err();
        assert!(broken.contains("not valid zstd"), "{broken}");
    }
}

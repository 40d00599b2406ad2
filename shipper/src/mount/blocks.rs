//! Base chunks on demand: a chunk is fetched once (concurrent readers and the prefetcher
//! share one download), verified against its digest and decompressed by
//! [`ChunkStore::read`], and kept in the bounded [`ChunkCache`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use hrl::chunk::{ChunkIndex, ZERO_DIGEST};

use super::cache::{BlockKey, ChunkCache};
use super::error::{MountError, MountResult};
use crate::store::chunks::ChunkStore;
use crate::store::GroupStore;

type Fetch = Shared<BoxFuture<'static, MountResult<Arc<Vec<u8>>>>>;

/// The base chunks of every disk of the mounted point.
pub struct Blocks {
    store: GroupStore,
    pub cache: ChunkCache,
    inflight: Mutex<HashMap<BlockKey, Fetch>>,
    /// Chunks downloaded from the store since the mount.
    pub fetched: AtomicU64,
}

/// What a block holds: zeros (never stored) or a stored chunk.
pub enum Block {
    Zero(usize),
    Data(Arc<Vec<u8>>),
}

impl Blocks {
    pub fn new(store: GroupStore, cache_bytes: u64) -> Blocks {
        Blocks {
            store,
            cache: ChunkCache::new(cache_bytes),
            inflight: Mutex::new(HashMap::new()),
            fetched: AtomicU64::new(0),
        }
    }

    /// Block `block` of `index` (disk `disk`), verified.
    pub async fn get(
        self: &Arc<Self>,
        disk: usize,
        index: &ChunkIndex,
        block: u64,
    ) -> MountResult<Block> {
        let bs = u64::from(index.block_size);
        let len = bs.min(index.disk_size.saturating_sub(block * bs)) as usize;
        let Some(digest) = index.digests.get(block as usize).copied() else {
            return Ok(Block::Zero(len));
        };
        if digest == ZERO_DIGEST {
            return Ok(Block::Zero(len));
        }
        if let Some(d) = self.cache.get((disk, block)) {
            return Ok(Block::Data(d));
        }
        let data = self.fetch((disk, block), digest, len).await?;
        Ok(Block::Data(data))
    }

    /// Starts fetching a block unless it is cached, zero or on its way (the prefetcher).
    pub fn prefetch(self: &Arc<Self>, disk: usize, index: &ChunkIndex, block: u64) {
        let bs = u64::from(index.block_size);
        let Some(digest) = index.digests.get(block as usize).copied() else {
            return;
        };
        if digest == ZERO_DIGEST || self.cache.contains((disk, block)) {
            return;
        }
        let len = bs.min(index.disk_size.saturating_sub(block * bs)) as usize;
        let f = self.fetch((disk, block), digest, len);
        tokio::spawn(async move {
            // A failed prefetch is reported by the read that needs the block.
            let _ = f.await;
        });
    }

    /// The one download of `key`, shared by everyone waiting for it.
    fn fetch(self: &Arc<Self>, key: BlockKey, digest: hrl::Digest, len: usize) -> Fetch {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = inflight.get(&key) {
            return f.clone();
        }
        let me = Arc::clone(self);
        let f = async move {
            let r = me.download(&digest, len).await;
            if let Ok(d) = &r {
                me.cache.insert(key, Arc::clone(d));
            }
            me.inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            r
        }
        .boxed()
        .shared();
        inflight.insert(key, f.clone());
        f
    }

    async fn download(&self, digest: &hrl::Digest, len: usize) -> MountResult<Arc<Vec<u8>>> {
        let key = hrl::store::chunk_key(digest);
        let object = self.store.path(&key).to_string();
        self.fetched.fetch_add(1, Ordering::Relaxed);
        let data = ChunkStore::new(&self.store)
            .read(digest)
            .await
            .map_err(|e| MountError::Unreadable {
                object: object.clone(),
                why: e.to_string(),
            })?;
        if data.len() != len {
            return Err(MountError::Unreadable {
                object,
                why: format!("chunk holds {} bytes, the index needs {len}", data.len()),
            });
        }
        Ok(Arc::new(data))
    }
}

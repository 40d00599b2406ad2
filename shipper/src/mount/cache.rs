//! The bounded cache of decompressed base chunks (`--cache-size`): least recently used
//! chunks leave first, so a working set that fits is read from the store once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A chunk's place: (disk index, block index in the disk's base).
pub type BlockKey = (usize, u64);

/// Hits and misses since the mount (for `hrl-shipper` logs and the benchmark).
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

struct Inner {
    map: HashMap<BlockKey, (u64, Arc<Vec<u8>>)>,
    by_age: BTreeMap<u64, BlockKey>,
    bytes: u64,
    tick: u64,
}

pub struct ChunkCache {
    inner: Mutex<Inner>,
    limit: u64,
    pub stats: CacheStats,
}

impl ChunkCache {
    /// A cache holding at most `limit` bytes of chunks (at least one chunk always fits).
    pub fn new(limit: u64) -> ChunkCache {
        ChunkCache {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                by_age: BTreeMap::new(),
                bytes: 0,
                tick: 0,
            }),
            limit,
            stats: CacheStats::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map: use it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chunk at `key`, counted as a hit or a miss.
    pub fn get(&self, key: BlockKey) -> Option<Arc<Vec<u8>>> {
        let found = self.peek(key, true);
        let counter = match found {
            Some(_) => &self.stats.hits,
            None => &self.stats.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Whether `key` is cached (not counted; prefetch asks).
    pub fn contains(&self, key: BlockKey) -> bool {
        self.peek(key, false).is_some()
    }

    fn peek(&self, key: BlockKey, touch: bool) -> Option<Arc<Vec<u8>>> {
        let mut g = self.lock();
        let inner = &mut *g;
        let (age, data) = inner.map.get_mut(&key)?;
        if touch {
            inner.tick += 1;
            inner.by_age.remove(age);
            *age = inner.tick;
            inner.by_age.insert(inner.tick, key);
        }
        Some(Arc::clone(data))
    }

    /// Adds a chunk, dropping the least recently used ones beyond the limit.
    pub fn insert(&self, key: BlockKey, data: Arc<Vec<u8>>) {
        let mut g = self.lock();
        let inner = &mut *g;
        inner.tick += 1;
        let len = data.len() as u64;
        if let Some((age, old)) = inner.map.insert(key, (inner.tick, data)) {
            inner.by_age.remove(&age);
            inner.bytes -= old.len() as u64;
        }
        inner.by_age.insert(inner.tick, key);
        inner.bytes += len;
        while inner.bytes > self.limit && inner.map.len() > 1 {
            let Some((_, oldest)) = inner.by_age.pop_first() else {
                break;
            };
            if let Some((_, d)) = inner.map.remove(&oldest) {
                inner.bytes -= d.len() as u64;
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_leaves_first() {
        let c = ChunkCache::new(30);
        for i in 0..3 {
            c.insert((0, i), Arc::new(vec![i as u8; 10]));
        }
        assert!(c.get((0, 0)).is_some(), "touch block 0");
        c.insert((0, 3), Arc::new(vec![3; 10]));
        assert!(c.contains((0, 0)));
        assert!(!c.contains((0, 1)), "block 1 was the least recently used");
        assert!(c.contains((0, 2)) && c.contains((0, 3)));
        assert_eq!(c.bytes(), 30);
        assert_eq!(c.stats.hits.load(Ordering::Relaxed), 1);
    }
}

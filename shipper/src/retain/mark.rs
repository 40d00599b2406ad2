//! The mark phase of collection: every object the given (kept) points need — their
//! manifests, base indexes, the chunks those indexes name, and the stored logs on each
//! disk's chain from its base to its point.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use hrl::chunk::ZERO_DIGEST;
use hrl::store::{log_path, logs_dir, parse_log_name, point_key, BaseRef, PointManifest};
use hrl::Digest;

use crate::store::index::fetch_base_index;
use crate::store::GroupStore;

/// What the kept points need.
#[derive(Debug, Default)]
pub struct Marked {
    /// Keys (relative to the group) of manifests, indexes and logs.
    pub keys: HashSet<String>,
    /// Chunks the indexes name.
    pub chunks: HashSet<Digest>,
    /// The points marked.
    pub points: HashSet<u64>,
    /// Indexes already read (by key), so a base shared by many points is read once.
    indexes: HashSet<String>,
    /// Log ranges listed per disk generation folder.
    logs: HashMap<String, Vec<(u64, u64)>>,
}

impl Marked {
    /// Marks everything `m` needs. An index that cannot be read is an error: collection
    /// must not guess which chunks a point needs.
    pub async fn add(&mut self, store: &GroupStore, m: &PointManifest) -> Result<()> {
        self.add_planned(store, m, &HashMap::new()).await
    }

    /// [`Marked::add`] for a point as a merge would leave it (`merge::plan`): a base whose
    /// index key is in `replaces` is not built yet; its key is marked, and the chunks of the
    /// base it replaces stand in for its own.
    pub async fn add_planned(
        &mut self,
        store: &GroupStore,
        m: &PointManifest,
        replaces: &HashMap<String, BaseRef>,
    ) -> Result<()> {
        self.keys.insert(point_key(m.id));
        self.points.insert(m.id);
        for d in &m.disks {
            if self.indexes.insert(d.base.index_key.clone()) {
                let base = replaces.get(&d.base.index_key).unwrap_or(&d.base);
                let index = fetch_base_index(store, base).await.with_context(|| {
                    format!(
                        "read the base index of disk {} of point {} (nothing is collected while a kept point's index cannot be read)",
                        d.name, m.id
                    )
                })?;
                self.chunks
                    .extend(index.digests.iter().filter(|x| **x != ZERO_DIGEST));
                self.keys.insert(d.base.index_key.clone());
            }
            if d.last_seq <= d.base.after_seq {
                continue;
            }
            let dir = logs_dir(&d.disk_id, d.generation);
            if !self.logs.contains_key(&dir) {
                let names = store.list_names(&dir).await?;
                let ranges = names.iter().filter_map(|n| parse_log_name(n)).collect();
                self.logs.insert(dir.clone(), ranges);
            }
            let ranges = &self.logs[&dir];
            let key = |(f, l): (u64, u64)| hrl::store::log_key(&d.disk_id, d.generation, f, l);
            match log_path(ranges, d.base.after_seq, d.last_seq) {
                Some(path) => self.keys.extend(path.into_iter().map(key)),
                // A gap (the point is already broken): keep every log that overlaps its
                // range, so nothing that could still help is collected.
                None => self.keys.extend(
                    ranges
                        .iter()
                        .filter(|(f, l)| *l > d.base.after_seq && *f <= d.last_seq)
                        .map(|r| key(*r)),
                ),
            }
        }
        Ok(())
    }

    /// Whether the object at `key` (relative to the group) is needed.
    pub fn needs(&self, key: &str) -> bool {
        if let Some(name) = key.strip_prefix("chunks/") {
            let digest = name.rsplit('/').next().and_then(hrl::from_hex::<32>);
            return digest.is_none_or(|d| self.chunks.contains(&d));
        }
        self.keys.contains(key)
    }
}

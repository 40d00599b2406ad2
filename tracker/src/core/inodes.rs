//! The inode table: FUSE inode numbers mapped to `O_PATH` descriptors of backing objects.
//!
//! One entry per backing object (device, inode), so hard links share an entry and renames
//! need no bookkeeping. Entries live until the kernel forgets every lookup of them.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

/// FUSE's fixed inode number of the mount root.
pub const ROOT_INO: u64 = 1;

/// Identity of a backing object: (st_dev, st_ino).
pub type BackingKey = (u64, u64);

/// A backing object known to the kernel.
#[derive(Debug)]
pub struct Inode {
    /// `O_PATH | O_NOFOLLOW` descriptor of the object.
    pub fd: OwnedFd,
    pub key: BackingKey,
    /// `S_IFMT` bits of the object.
    pub kind: u32,
    /// Protected hrl file (log or bitmap): read-only in the mounted view.
    pub protected: bool,
}

impl Inode {
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
    pub fn is_symlink(&self) -> bool {
        self.kind == libc::S_IFLNK
    }
}

#[derive(Default)]
struct Table {
    by_ino: HashMap<u64, (Arc<Inode>, u64)>,
    by_key: HashMap<BackingKey, u64>,
    next: u64,
}

/// Thread-safe inode table.
pub struct Inodes {
    table: Mutex<Table>,
}

impl Inodes {
    /// A table holding only the root.
    pub fn new(root: Inode) -> Self {
        let mut t = Table {
            next: ROOT_INO + 1,
            ..Default::default()
        };
        t.by_key.insert(root.key, ROOT_INO);
        // The root is never forgotten: start with a lookup count the kernel never reaches.
        t.by_ino.insert(ROOT_INO, (Arc::new(root), u64::MAX / 2));
        Inodes {
            table: Mutex::new(t),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.lock().by_ino.get(&ino).map(|(i, _)| i.clone())
    }

    /// Records one kernel lookup of the object; reuses its entry when known (dropping `fresh`).
    pub fn remember(&self, fresh: Inode) -> u64 {
        let mut t = self.lock();
        if let Some(&ino) = t.by_key.get(&fresh.key) {
            if let Some(entry) = t.by_ino.get_mut(&ino) {
                entry.1 += 1;
                // The object may have become protected/unprotected by a rename: keep the
                // newest view when it differs.
                if entry.0.protected != fresh.protected {
                    entry.0 = Arc::new(fresh);
                }
                return ino;
            }
        }
        let ino = t.next;
        t.next += 1;
        t.by_key.insert(fresh.key, ino);
        t.by_ino.insert(ino, (Arc::new(fresh), 1));
        ino
    }

    /// The inode number the kernel knows the backing object by, if any.
    pub fn ino_of(&self, key: BackingKey) -> Option<u64> {
        self.lock().by_key.get(&key).copied()
    }

    /// Drops `n` kernel lookups; the entry goes when none remain.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut t = self.lock();
        let gone = match t.by_ino.get_mut(&ino) {
            Some(entry) => {
                entry.1 = entry.1.saturating_sub(n);
                (entry.1 == 0).then_some(entry.0.key)
            }
            None => None,
        };
        if let Some(key) = gone {
            t.by_ino.remove(&ino);
            if t.by_key.get(&key) == Some(&ino) {
                t.by_key.remove(&key);
            }
        }
    }
}

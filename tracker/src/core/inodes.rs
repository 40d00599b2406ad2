//! The inode table: FUSE inode numbers mapped to `O_PATH` descriptors of backing objects.
//!
//! One entry per backing object (device, inode), so hard links share an entry and renames
//! need no bookkeeping. Entries live until the kernel forgets every lookup of them, which
//! for a crawled directory may be never: the kernel keeps what it looked up while memory
//! lasts. So the descriptors are bounded: past `cap`, the least recently used regular files
//! give theirs up and keep a kernel file handle, from which they are reopened on their next
//! use. The descriptors left over serve open files, the disks and the control socket.

use std::collections::HashMap;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::sys::{self, BackingKey, FileHandle};

/// FUSE's fixed inode number of the mount root.
pub const ROOT_INO: u64 = 1;

/// A backing object known to the kernel.
pub struct Inode {
    /// `O_PATH | O_NOFOLLOW` descriptor of the object; `None` while evicted.
    fd: Mutex<Option<Arc<OwnedFd>>>,
    /// How to reopen it once evicted (regular files on the root's filesystem only).
    handle: Option<FileHandle>,
    /// Use stamp, for choosing what to evict.
    used: AtomicU64,
    pub key: BackingKey,
    /// `S_IFMT` bits of the object.
    pub kind: u32,
    /// Protected hrl file (log or bitmap): read-only in the mounted view.
    pub protected: bool,
}

impl Inode {
    pub fn is_symlink(&self) -> bool {
        self.kind == libc::S_IFLNK
    }
}

/// An inode with its descriptor held open for as long as this lives (an eviction meanwhile
/// closes it only after the last user is done).
pub struct Pinned {
    inode: Arc<Inode>,
    fd: Arc<OwnedFd>,
}

impl Pinned {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Deref for Pinned {
    type Target = Inode;
    fn deref(&self) -> &Inode {
        &self.inode
    }
}

/// How many inode descriptors to keep at most: half the open file limit, so the other half
/// serves open files, the disks' images, logs and bitmaps, and the control socket.
pub fn descriptor_cap() -> usize {
    match sys::open_file_limit() {
        Some(n) => usize::try_from(n / 2).unwrap_or(usize::MAX),
        None => usize::MAX,
    }
}

struct Table {
    by_ino: HashMap<u64, (Arc<Inode>, u64)>,
    by_key: HashMap<BackingKey, u64>,
    next: u64,
    /// Entries holding a descriptor now.
    open: usize,
}

/// Thread-safe inode table.
pub struct Inodes {
    table: Mutex<Table>,
    /// Most descriptors held at once.
    cap: usize,
    /// Open descriptor of the root (the `mount_fd` of `open_by_handle_at`), and the id of
    /// its mount: handles are taken only of objects on that mount. `None`: handles do not
    /// work here (no CAP_DAC_READ_SEARCH, or a filesystem without them), nothing is evicted.
    handles: Option<(OwnedFd, i32)>,
    clock: AtomicU64,
}

impl Inodes {
    /// A table holding only the root, keeping at most `cap` descriptors (at least 16).
    pub fn new(root: OwnedFd, key: BackingKey, cap: usize) -> Self {
        let handles = Self::probe_handles(&root);
        if handles.is_none() {
            tracing::warn!("file handles do not work on the backing directory: every inode the kernel knows keeps a descriptor");
        }
        let mut t = Table {
            by_ino: HashMap::new(),
            by_key: HashMap::new(),
            next: ROOT_INO + 1,
            open: 1,
        };
        t.by_key.insert(key, ROOT_INO);
        // The root is never forgotten: start with a lookup count the kernel never reaches.
        let root = Inode {
            fd: Mutex::new(Some(Arc::new(root))),
            handle: None,
            used: AtomicU64::new(0),
            key,
            kind: libc::S_IFDIR,
            protected: false,
        };
        t.by_ino.insert(ROOT_INO, (Arc::new(root), u64::MAX / 2));
        Inodes {
            table: Mutex::new(t),
            cap: cap.max(16),
            handles,
            clock: AtomicU64::new(1),
        }
    }

    /// An open descriptor of the root and its mount id, if a handle of the root can be
    /// taken and opened again.
    fn probe_handles(root: &OwnedFd) -> Option<(OwnedFd, i32)> {
        let dir = sys::reopen(root.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY).ok()?;
        let dir = OwnedFd::from(dir);
        let (h, mount_id) = sys::file_handle(root.as_fd()).ok()?;
        sys::open_by_handle(dir.as_fd(), &h, libc::O_PATH).ok()?;
        Some((dir, mount_id))
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The inode and an open descriptor of it (reopened from its handle if evicted).
    /// `None`: unknown inode, or the object is gone (ESTALE for the caller).
    pub fn pin(&self, ino: u64) -> Option<Pinned> {
        let inode = self.lock().by_ino.get(&ino).map(|(i, _)| i.clone())?;
        inode.used.store(
            self.clock.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let mut slot = inode.fd.lock().unwrap_or_else(|p| p.into_inner());
        let fd = match slot.as_ref() {
            Some(fd) => fd.clone(),
            None => {
                let (mount_fd, _) = self.handles.as_ref()?;
                let handle = inode.handle.as_ref()?;
                let fd = sys::open_by_handle(mount_fd.as_fd(), handle, libc::O_PATH).ok()?;
                // The handle names exactly that object (its generation included), but check.
                let st = sys::fstat(fd.as_fd()).ok()?;
                if (st.st_dev, st.st_ino) != inode.key {
                    return None;
                }
                let fd = Arc::new(fd);
                *slot = Some(fd.clone());
                drop(slot);
                self.opened();
                return Some(Pinned { inode, fd });
            }
        };
        drop(slot);
        Some(Pinned { inode, fd })
    }

    /// Counts a descriptor opened; evicts when over the cap.
    fn opened(&self) {
        let over = {
            let mut t = self.lock();
            t.open += 1;
            t.open > self.cap
        };
        if over {
            self.evict();
        }
    }

    /// Closes the descriptors of the least recently used eighth of the evictable entries.
    fn evict(&self) {
        let mut t = self.lock();
        let mut cands: Vec<(u64, Arc<Inode>)> = t
            .by_ino
            .values()
            .filter(|(i, _)| {
                i.handle.is_some() && i.fd.lock().unwrap_or_else(|p| p.into_inner()).is_some()
            })
            .map(|(i, _)| (i.used.load(Ordering::Relaxed), i.clone()))
            .collect();
        let n = (self.cap / 8).max(1).min(cands.len());
        if n == 0 {
            return;
        }
        cands.select_nth_unstable_by_key(n - 1, |(u, _)| *u);
        let mut closed = 0;
        for (_, i) in &cands[..n] {
            if i.fd
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .is_some()
            {
                closed += 1;
            }
        }
        t.open -= closed;
        tracing::debug!(closed, open = t.open, "inode descriptors evicted");
    }

    /// Records one kernel lookup of an object, given a fresh `O_PATH` descriptor of it;
    /// reuses its entry when known (dropping `fd`, or keeping it if the entry was evicted).
    pub fn remember(&self, fd: OwnedFd, key: BackingKey, kind: u32, protected: bool) -> u64 {
        let mut t = self.lock();
        if let Some(&ino) = t.by_key.get(&key) {
            if let Some(entry) = t.by_ino.get_mut(&ino) {
                entry.1 += 1;
                // The object may have become protected/unprotected by a rename: keep the
                // newest view when it differs.
                if entry.0.protected == protected {
                    return ino;
                }
                let old = entry.0.clone();
                let fresh = self.entry(fd, old.handle.clone(), key, kind, protected);
                entry.0 = Arc::new(fresh);
                if old
                    .fd
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .is_none()
                {
                    t.open += 1;
                }
                return ino;
            }
        }
        let handle = self.handle_of(&fd, kind);
        let ino = t.next;
        t.next += 1;
        t.by_key.insert(key, ino);
        let inode = self.entry(fd, handle, key, kind, protected);
        t.by_ino.insert(ino, (Arc::new(inode), 1));
        t.open += 1;
        let over = t.open > self.cap;
        drop(t);
        if over {
            self.evict();
        }
        ino
    }

    fn entry(
        &self,
        fd: OwnedFd,
        handle: Option<FileHandle>,
        key: BackingKey,
        kind: u32,
        protected: bool,
    ) -> Inode {
        Inode {
            fd: Mutex::new(Some(Arc::new(fd))),
            handle,
            used: AtomicU64::new(self.clock.fetch_add(1, Ordering::Relaxed)),
            key,
            kind,
            protected,
        }
    }

    /// A handle to reopen a regular file on the root's mount by, if handles work here.
    fn handle_of(&self, fd: &OwnedFd, kind: u32) -> Option<FileHandle> {
        let (_, root_mount) = self.handles.as_ref()?;
        if kind != libc::S_IFREG {
            return None;
        }
        let (h, mount_id) = sys::file_handle(fd.as_fd()).ok()?;
        (mount_id == *root_mount).then_some(h)
    }

    /// The inode's metadata (no descriptor: use [`Inodes::pin`] to reach the object).
    pub fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.lock().by_ino.get(&ino).map(|(i, _)| i.clone())
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
                (entry.1 == 0).then(|| entry.0.clone())
            }
            None => None,
        };
        if let Some(inode) = gone {
            t.by_ino.remove(&ino);
            if t.by_key.get(&inode.key) == Some(&ino) {
                t.by_key.remove(&inode.key);
            }
            if inode
                .fd
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .is_some()
            {
                t.open -= 1;
            }
        }
    }
}

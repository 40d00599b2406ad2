//! Making appended records durable without holding the lock that orders the appends:
//! group commit (one `fdatasync` serves every writer that asked while it ran or before it
//! started), and a zero-filled tail kept ahead of the log's end, so that the `fdatasync` of an
//! fsync-heavy writer only writes data and never has to commit a new file size or new extents
//! to the filesystem journal.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::LogError;

/// Zeros written ahead of the log's end at a sync, so that the following syncs land in
/// blocks the file already has (a data-only `fdatasync`).
pub(crate) const PREFILL: u64 = 1 << 20;

/// A new zero tail is written when less than this is left of the old one.
pub(crate) const PREFILL_LOW: u64 = PREFILL / 4;

/// What a log file shares with its pending syncs.
pub(crate) struct Durability {
    file: Arc<File>,
    path: Mutex<PathBuf>,
    /// End of the records appended so far (every byte before it is written).
    appended: AtomicU64,
    state: Mutex<SyncState>,
    done: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Every record before this offset is durable.
    synced: u64,
    /// An `fdatasync` is running; the others wait for it and check again.
    syncing: bool,
    /// An `fdatasync` failed: the kernel may have dropped dirty pages, and a later success
    /// would not prove them durable, so every later sync of this file fails too.
    failed: Option<String>,
}

impl Durability {
    pub(crate) fn new(file: Arc<File>, path: &Path, appended: u64) -> Arc<Durability> {
        Arc::new(Durability {
            file,
            path: Mutex::new(path.to_path_buf()),
            appended: AtomicU64::new(appended),
            state: Mutex::new(SyncState {
                synced: appended,
                ..SyncState::default()
            }),
            done: Condvar::new(),
        })
    }

    pub(crate) fn set_path(&self, path: &Path) {
        *lock(&self.path) = path.to_path_buf();
    }

    /// Called by the writer after each append (and after a cut back): records up to `end`
    /// are written.
    pub(crate) fn appended(&self, end: u64) {
        self.appended.store(end, Ordering::Release);
    }

    /// Makes every record before `upto` durable: returns at once if a sync that started after
    /// they were written has finished, waits for a running one and checks again, or runs the
    /// `fdatasync` itself, for everything appended by the time it starts.
    pub(crate) fn sync_to(&self, upto: u64) -> Result<(), LogError> {
        let mut st = lock(&self.state);
        loop {
            if let Some(why) = &st.failed {
                return Err(self.failed(why));
            }
            if st.synced >= upto {
                return Ok(());
            }
            if !st.syncing {
                break;
            }
            st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.syncing = true;
        drop(st);
        // Appends are ordered before `appended` moved (Release/Acquire): the fdatasync
        // below covers every byte up to `target`.
        let target = self.appended.load(Ordering::Acquire).max(upto);
        let res = self.file.sync_data();
        let mut st = lock(&self.state);
        st.syncing = false;
        let out = match res {
            Ok(()) => {
                st.synced = st.synced.max(target);
                Ok(())
            }
            Err(e) => {
                st.failed = Some(e.to_string());
                Err(LogError::io(&lock(&self.path), "sync log", e))
            }
        };
        drop(st);
        self.done.notify_all();
        out
    }

    fn failed(&self, why: &str) -> LogError {
        LogError::io(
            &lock(&self.path),
            "sync log",
            std::io::Error::other(format!(
                "an earlier sync of this log failed ({why}); its records may be lost"
            )),
        )
    }

    /// Writes zeros over `[from, to)` (the tail ahead of the records). Only the writer calls
    /// this, under the lock that orders its appends, so no record is written there meanwhile.
    pub(crate) fn write_zeros(&self, from: u64, to: u64) -> std::io::Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut pos = from;
        while pos < to {
            let n = (to - pos).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A point in a log that must become durable: taken under the lock that orders the appends
/// (after the `flush` record), waited for without it, so that many writers' fsyncs share one
/// `fdatasync` and none holds up the writes of others while the disk flushes.
#[must_use = "the records are durable only once wait() returns Ok"]
pub struct SyncPoint {
    pub(crate) durability: Arc<Durability>,
    pub(crate) upto: u64,
}

impl SyncPoint {
    /// Blocks until every record before this point is durable.
    pub fn wait(&self) -> Result<(), LogError> {
        self.durability.sync_to(self.upto)
    }
}

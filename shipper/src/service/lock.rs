//! One cycle per directory at a time: an exclusive lock (flock) on a file beside the
//! directory's state file, so an operator's `sync` waits for the service's cycle instead of
//! racing it for the same recovery point.

use std::path::Path;

use anyhow::{Context, Result};
use tracing::info;

/// An exclusive lock on a directory's cycle (flock on a file beside its state file), so that
/// an operator's `sync` and the service never run a cycle of one directory at once.
pub struct CycleLock {
    _file: std::fs::File,
}

impl CycleLock {
    pub async fn acquire(state_dir: &Path, dir: &Path) -> Result<CycleLock> {
        let mut waited = false;
        loop {
            if let Some(lock) = Self::try_acquire(state_dir, dir)? {
                return Ok(lock);
            }
            if !waited {
                info!(dir = %dir.display(), "another shipper is running a cycle of this directory; waiting");
                waited = true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The lock if no one holds it now (`None`: a cycle of the directory is running).
    pub fn try_acquire(state_dir: &Path, dir: &Path) -> Result<Option<CycleLock>> {
        use std::os::fd::AsRawFd;
        crate::private::create_dir(state_dir)
            .with_context(|| format!("create state directory {}", state_dir.display()))?;
        let path = crate::service::status::state_file(state_dir, dir).with_extension("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("open lock file {}", path.display()))?;
        // SAFETY: flock on an open descriptor; no memory is touched.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(CycleLock { _file: file }));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        Err(err).with_context(|| format!("lock {}", path.display()))
    }
}

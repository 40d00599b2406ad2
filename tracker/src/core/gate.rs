//! The mount's read-only switch, for a planned failover: once on, every change through the
//! mount (open for writing, write, create, remove, rename, attributes) gets EROFS, so the
//! disks cannot diverge from the final point; and the files still open for writing, which
//! the failover names and refuses. All read-only state of the mount is here.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{Error, OpResult};

/// Whether the mount refuses changes.
#[derive(Default)]
pub struct ReadOnly(AtomicBool);

impl ReadOnly {
    /// EROFS while the mount is read-only.
    pub fn check(&self) -> OpResult<()> {
        if self.0.load(Ordering::Acquire) {
            return Err(Error::errno(libc::EROFS));
        }
        Ok(())
    }

    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::Release);
    }
}

/// What the control socket may ask of the filesystem core.
pub trait Gate: Send + Sync {
    /// Switches the mount read-only (`on`) or back; returns the backing paths of the files
    /// open for writing now (after the switch: none can be opened for writing any more).
    fn set_read_only(&self, on: bool) -> Vec<String>;
}

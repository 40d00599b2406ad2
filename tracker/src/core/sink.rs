//! What the core tells the layer above it: the change sink. The core is a plain passthrough
//! filesystem; whatever must happen around a change (logging it before it reaches the image,
//! following a file's name) is the sink's. `tracking` implements it for the disks.

use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use crate::sys::{BackingKey, Stat};

/// A file whose data changes the sink makes itself (a tracked disk): the core hands it
/// every write, size change, fallocate and fsync instead of doing it.
pub trait TrackedFile: Send + Sync {
    /// Writes all of `data` at `off` through `fd`.
    fn write(&self, fd: BorrowedFd<'_>, off: u64, data: &[u8]) -> io::Result<()>;
    /// Sets the size (truncate, O_TRUNC).
    fn truncate(&self, fd: BorrowedFd<'_>, size: u64) -> io::Result<()>;
    /// fallocate(2) with the kernel's `mode` bits (allocate, punch hole, zero range).
    fn fallocate(&self, fd: BorrowedFd<'_>, mode: i32, off: u64, len: u64) -> io::Result<()>;
    /// copy_file_range into this file: returns the bytes copied.
    fn copy_in(
        &self,
        src: BorrowedFd<'_>,
        off_in: u64,
        dst: BorrowedFd<'_>,
        off_out: u64,
        len: usize,
    ) -> io::Result<usize>;
    /// fsync (`datasync`: fdatasync).
    fn fsync(&self, fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()>;
}

/// A rename as the sink sees it: which sides are in the root, what moves, what it replaces.
pub struct RenameOf<'a> {
    /// The old name, if it is in the root.
    pub old_in_root: Option<&'a OsStr>,
    /// The new name, if it is in the root.
    pub new_in_root: Option<&'a OsStr>,
    /// The object renamed.
    pub moved: &'a Stat,
    /// The object the new name held before, if any.
    pub replaced: Option<BackingKey>,
    /// RENAME_EXCHANGE: the two names swap.
    pub exchange: bool,
}

/// The hooks the core calls. Hooks named `before_*` run before the change and may refuse
/// it (their error reaches the caller and nothing changes); what they return is handed to
/// the matching `after_*` once the change is done.
pub trait ChangeSink: Send + Sync + 'static {
    /// A file whose data changes go through the sink.
    type Tracked: TrackedFile;
    /// What an unlink leaves to do once the name is gone.
    type Unlink;
    /// What a rename leaves to do once it is done.
    type Rename;

    /// Names in the root that are the sink's own files: read-only through the mount, never
    /// created, removed or renamed there, not cached by the kernel.
    fn owns_name(&self, name: &OsStr) -> bool;
    /// A regular file of this name in the root would be tracked.
    fn tracks_name(&self, name: &OsStr) -> bool;
    /// The tracked file behind `key`, if it is one.
    fn tracked(&self, key: BackingKey) -> Option<Arc<Self::Tracked>>;
    /// A file was created in the root (`st`: its stat). An error undoes the creation.
    fn created(&self, name: &OsStr, st: &Stat) -> io::Result<()>;
    /// The root's name `name` of `st` is about to go.
    fn before_unlink(&self, name: &OsStr, st: &Stat) -> io::Result<Self::Unlink>;
    /// The unlink [`ChangeSink::before_unlink`] saw is done.
    fn after_unlink(&self, plan: Self::Unlink);
    /// A rename is about to happen.
    fn before_rename(&self, rename: &RenameOf<'_>) -> io::Result<Self::Rename>;
    /// The rename [`ChangeSink::before_rename`] saw is done.
    fn after_rename(&self, plan: Self::Rename);
    /// The metadata of `key` changed through the mount (mode, owner, times, xattrs, links):
    /// its ctime moved.
    fn metadata_changed(&self, key: BackingKey);
    /// The filesystem goes away (unmounted): close cleanly.
    fn close(&self);
}

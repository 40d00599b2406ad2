//! The passthrough filesystem core: every operation of the mounted view, done on the backing
//! directory through descriptors. It knows nothing of disks: changes go through a
//! [`ChangeSink`] (implemented by `tracking`), which makes a tracked file's data changes
//! itself and hears of creations, renames, removals and metadata changes in the root.
//!
//! Independent of FUSE: the adapter in `fuse_adapter` only converts types, so tests can drive
//! this core directly.

mod error;
pub mod gate;
pub mod inodes;
mod sink;

pub use error::{Error, OpResult};
pub use sink::{ChangeSink, RenameOf, TrackedFile};

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use inodes::{Inodes, Pinned, ROOT_INO};

use crate::sys::{self, BackingKey, Stat};

/// Who asks: the caller's credentials, used as owner of what it creates.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

impl Caller {
    /// Root: may change a setuid file and keep its bits (CAP_FSETID, approximated by uid 0).
    pub fn privileged(&self) -> bool {
        self.uid == 0
    }
}

/// Clears setuid, and setgid on a group-executable file, as the kernel does when an
/// unprivileged caller changes a file (truncate, write, fallocate, copy_file_range). The
/// tracker makes the change as root, so the backing filesystem would keep the bits and a
/// file rewritten by a group member would stay setuid (docs/SECURITY.md). fuser does not
/// pass the kernel's kill flags of setattr and open, so every change by a non-root caller
/// clears them.
fn kill_suidgid(fd: BorrowedFd<'_>) -> OpResult<()> {
    let st = sys::fstat(fd)?;
    let mut mode = st.st_mode & 0o7777;
    if st.kind() != libc::S_IFREG {
        return Ok(());
    }
    mode &= !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        mode &= !libc::S_ISGID;
    }
    if mode != st.st_mode & 0o7777 {
        sys::chmod_fd(fd, mode)?;
    }
    Ok(())
}

/// An open file.
struct OpenFile {
    file: File,
    key: BackingKey,
    /// Opened for writing.
    writes: bool,
}

/// An open directory: entries read once at open (stable offsets for readdir).
struct OpenDir {
    entries: Vec<sys::DirEntry>,
}

/// Time change requested by setattr.
#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    Now,
    At { sec: i64, nsec: u32 },
}

impl SetTime {
    fn time(self) -> sys::Time {
        match self {
            SetTime::Now => (0, sys::UTIME_NOW),
            SetTime::At { sec, nsec } => (sec, i64::from(nsec)),
        }
    }
}

/// The attribute changes of one setattr.
#[derive(Default, Clone, Copy, Debug)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// A non-root caller: a size change clears setuid/setgid.
    pub kill_suidgid: bool,
}

/// A name the kernel now knows: its inode number and attributes.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub ino: u64,
    pub attr: Stat,
}

/// A file created and opened.
#[derive(Clone, Copy, Debug)]
pub struct Created {
    pub entry: Entry,
    pub fh: u64,
}

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct Listed {
    /// The backing inode number (the kernel asks for the real one by lookup).
    pub ino: u64,
    pub kind: rustix::fs::FileType,
    pub name: OsString,
    /// The offset to continue the listing from after this entry.
    pub next: u64,
}

impl<S: ChangeSink> gate::Gate for Core<S> {
    fn set_read_only(&self, on: bool) -> Vec<String> {
        self.read_only.set(on);
        let files = self.files.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<String> = files
            .values()
            .filter(|f| {
                rustix::fs::fcntl_getfl(&f.file).is_ok_and(|fl| {
                    fl.intersects(rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::RDWR)
                })
            })
            .filter_map(|f| {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&f.file);
                std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()
            })
            .map(|p| p.display().to_string())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// The filesystem core over one backing directory, telling `S` of the changes.
pub struct Core<S: ChangeSink> {
    inodes: Inodes,
    files: RwLock<HashMap<u64, Arc<OpenFile>>>,
    dirs: RwLock<HashMap<u64, Arc<OpenDir>>>,
    next_fh: AtomicU64,
    sink: Arc<S>,
    read_only: gate::ReadOnly,
}

impl<S: ChangeSink> Core<S> {
    /// A core over the backing directory `root` (any descriptor of it, `O_PATH` will do).
    pub fn new(root: BorrowedFd<'_>, sink: Arc<S>) -> std::io::Result<Core<S>> {
        let st = sys::fstat(root)?;
        let fd = sys::openat(root, OsStr::new("."), libc::O_PATH | libc::O_DIRECTORY, 0)?;
        Ok(Core {
            inodes: Inodes::new(fd, st.key(), inodes::descriptor_cap()),
            files: RwLock::new(HashMap::new()),
            dirs: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            sink,
            read_only: gate::ReadOnly::default(),
        })
    }

    /// The filesystem goes away: the sink closes cleanly.
    pub fn destroy(&self) {
        self.sink.close();
    }

    fn inode(&self, ino: u64) -> OpResult<Pinned> {
        self.inodes.pin(ino).ok_or(Error::errno(libc::ESTALE))
    }

    fn file(&self, fh: u64) -> OpResult<Arc<OpenFile>> {
        self.files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(Error::errno(libc::EBADF))
    }

    fn is_protected(&self, parent: u64, name: &OsStr) -> bool {
        parent == ROOT_INO && self.sink.owns_name(name)
    }

    fn refuse_protected(&self, parent: u64, name: &OsStr) -> OpResult<()> {
        if self.is_protected(parent, name) {
            return Err(Error::errno(libc::EPERM));
        }
        Ok(())
    }

    /// Looks `name` up in `parent` and records the kernel's reference.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> OpResult<Entry> {
        let p = self.inode(parent)?;
        let st = sys::statat(p.fd(), name)?;
        let fd = sys::openat(p.fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let ino = self
            .inodes
            .remember(fd, st.key(), st.kind(), self.is_protected(parent, name));
        Ok(Entry { ino, attr: st })
    }

    /// The inode number the kernel knows a backing object by, if it knows it.
    pub fn ino_of(&self, key: BackingKey) -> Option<u64> {
        self.inodes.ino_of(key)
    }

    /// True for the sink's own files: it changes them behind the kernel's back (seal
    /// renames, acks delete), so the kernel must not cache their names or attributes.
    pub fn uncacheable(&self, ino: u64) -> bool {
        self.inodes.get(ino).is_some_and(|i| i.protected)
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    pub fn getattr(&self, ino: u64) -> OpResult<Stat> {
        let i = self.inode(ino)?;
        Ok(sys::fstat(i.fd())?)
    }

    pub fn setattr(&self, ino: u64, fh: Option<u64>, a: SetAttr) -> OpResult<Stat> {
        self.read_only.check()?;
        let i = self.inode(ino)?;
        if i.protected {
            return Err(Error::errno(libc::EPERM));
        }
        if let Some(mode) = a.mode {
            sys::chmod_fd(i.fd(), mode & 0o7777)?;
        }
        if a.uid.is_some() || a.gid.is_some() {
            sys::fchownat(i.fd(), a.uid, a.gid)?;
        }
        if a.mode.is_some() || a.uid.is_some() || a.gid.is_some() {
            self.sink.metadata_changed(i.key);
        }
        if let Some(size) = a.size {
            self.set_size(&i, fh, size, a.kill_suidgid)?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            let (at, mt) = (a.atime.map(SetTime::time), a.mtime.map(SetTime::time));
            sys::utimens_fd(i.fd(), i.is_symlink(), at, mt)?;
            self.sink.metadata_changed(i.key);
        }
        Ok(sys::fstat(i.fd())?)
    }

    /// setattr's size change: through the open file `fh` when given, else a fresh one.
    fn set_size(&self, i: &Pinned, fh: Option<u64>, size: u64, kill: bool) -> OpResult<()> {
        if kill {
            kill_suidgid(i.fd())?;
        }
        let open = fh.and_then(|fh| self.file(fh).ok());
        let owned;
        let fd = match &open {
            Some(h) => h.file.as_fd(),
            None => {
                owned = sys::reopen(i.fd(), libc::O_WRONLY)?;
                owned.as_fd()
            }
        };
        self.truncate_fd(i.key, fd, size)
    }

    pub fn readlink(&self, ino: u64) -> OpResult<Vec<u8>> {
        let i = self.inode(ino)?;
        Ok(sys::readlinkat(i.fd())?)
    }

    fn chown_new(&self, dir: BorrowedFd<'_>, name: &OsStr, who: Caller) -> OpResult<()> {
        let fd = sys::openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        Ok(sys::fchownat(fd.as_fd(), Some(who.uid), Some(who.gid))?)
    }

    /// Tells the sink of a file created in the root; if it refuses, the creation is undone
    /// (`remove`: the name is ours to remove) and its error returned.
    fn created(&self, parent: &Pinned, name: &OsStr, e: &Entry, remove: bool) -> OpResult<()> {
        if let Err(err) = self.sink.created(name, &e.attr) {
            // An untracked disk would lose changes: undo the creation instead.
            self.inodes.forget(e.ino, 1);
            if remove {
                let _ = sys::unlinkat(parent.fd(), name, 0);
            }
            return Err(err.into());
        }
        Ok(())
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        who: Caller,
    ) -> OpResult<Entry> {
        self.read_only.check()?;
        self.refuse_protected(parent, name)?;
        let p = self.inode(parent)?;
        sys::mknodat(p.fd(), name, mode, rdev)?;
        self.chown_new(p.fd(), name, who)?;
        let e = self.lookup(parent, name)?;
        if parent == ROOT_INO {
            self.created(&p, name, &e, true)?;
        }
        Ok(e)
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, who: Caller) -> OpResult<Entry> {
        self.read_only.check()?;
        self.refuse_protected(parent, name)?;
        let p = self.inode(parent)?;
        sys::mkdirat(p.fd(), name, mode)?;
        self.chown_new(p.fd(), name, who)?;
        self.lookup(parent, name)
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        who: Caller,
    ) -> OpResult<Entry> {
        self.read_only.check()?;
        self.refuse_protected(parent, name)?;
        let p = self.inode(parent)?;
        sys::symlinkat(target, p.fd(), name)?;
        self.chown_new(p.fd(), name, who)?;
        self.lookup(parent, name)
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> OpResult<()> {
        self.read_only.check()?;
        self.refuse_protected(parent, name)?;
        let p = self.inode(parent)?;
        let st = sys::statat(p.fd(), name)?;
        // Told before the name goes: a removal the sink does not know would be lost.
        let plan = if parent == ROOT_INO {
            Some(self.sink.before_unlink(name, &st)?)
        } else {
            None
        };
        sys::unlinkat(p.fd(), name, 0)?;
        if let Some(plan) = plan {
            self.sink.after_unlink(plan);
        }
        // Another link of an object that stays: its link count, and ctime, changed.
        self.sink.metadata_changed(st.key());
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> OpResult<()> {
        self.read_only.check()?;
        let p = self.inode(parent)?;
        Ok(sys::unlinkat(p.fd(), name, libc::AT_REMOVEDIR)?)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> OpResult<()> {
        self.read_only.check()?;
        self.refuse_protected(parent, name)?;
        self.refuse_protected(newparent, newname)?;
        let p = self.inode(parent)?;
        let np = self.inode(newparent)?;
        let st = sys::statat(p.fd(), name)?;
        let replaced = sys::statat(np.fd(), newname).ok().map(|s| s.key());
        let plan = self.sink.before_rename(&RenameOf {
            old_in_root: (parent == ROOT_INO).then_some(name),
            new_in_root: (newparent == ROOT_INO).then_some(newname),
            moved: &st,
            replaced,
            exchange: flags & libc::RENAME_EXCHANGE != 0,
        })?;
        sys::renameat2(p.fd(), name, np.fd(), newname, flags)?;
        self.sink.after_rename(plan);
        self.sink.metadata_changed(st.key());
        Ok(())
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> OpResult<Entry> {
        self.read_only.check()?;
        let i = self.inode(ino)?;
        if i.protected || self.is_protected(newparent, newname) {
            return Err(Error::errno(libc::EPERM));
        }
        // A tracked file has exactly one name: a second name would be tracked under
        // neither, or taken for another one at the next mount. Refused, like a filesystem
        // at its link limit (EMLINK), for a tracked file and for a file linked under a name
        // that would be tracked.
        let tracked_name =
            newparent == ROOT_INO && i.kind == libc::S_IFREG && self.sink.tracks_name(newname);
        if self.sink.tracked(i.key).is_some() || tracked_name {
            tracing::warn!(name = ?newname, "refused a hard link to a disk (a disk has one name only)");
            return Err(Error::errno(libc::EMLINK));
        }
        let np = self.inode(newparent)?;
        sys::linkat_fd(i.fd(), np.fd(), newname)?;
        self.sink.metadata_changed(i.key);
        self.lookup(newparent, newname)
    }

    fn add_file(&self, file: File, key: BackingKey, flags: i32) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let writes = Self::writes(flags);
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(OpenFile { file, key, writes }));
        fh
    }

    /// True when `fh` writes a tracked disk: such opens bypass the kernel's page cache
    /// (`FOPEN_DIRECT_IO`), so the kernel sends parallel writes of one disk in parallel
    /// instead of serialising them on the inode lock for a whole round trip each.
    pub fn writes_tracked(&self, fh: u64) -> bool {
        self.file(fh)
            .map(|f| f.writes && self.sink.tracked(f.key).is_some())
            .unwrap_or(false)
    }

    /// Flags the backing open must not carry: the kernel computes append offsets and handles
    /// O_DIRECT itself (our buffers are not aligned); O_TRUNC is done as a tracked truncate.
    fn backing_flags(flags: i32) -> i32 {
        flags & !(libc::O_APPEND | libc::O_DIRECT | libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL)
    }

    fn writes(flags: i32) -> bool {
        flags & libc::O_ACCMODE != libc::O_RDONLY
    }

    pub fn open(&self, ino: u64, flags: i32, who: Caller) -> OpResult<u64> {
        if Self::writes(flags) || flags & libc::O_TRUNC != 0 {
            self.read_only.check()?;
        }
        let i = self.inode(ino)?;
        if i.protected && (Self::writes(flags) || flags & libc::O_TRUNC != 0) {
            return Err(Error::errno(libc::EACCES));
        }
        let file = sys::reopen(i.fd(), Self::backing_flags(flags))?;
        if flags & libc::O_TRUNC != 0 && Self::writes(flags) {
            if !who.privileged() {
                kill_suidgid(file.as_fd())?;
            }
            self.truncate_fd(i.key, file.as_fd(), 0)?;
        }
        Ok(self.add_file(file, i.key, flags))
    }

    fn truncate_fd(&self, key: BackingKey, fd: BorrowedFd<'_>, size: u64) -> OpResult<()> {
        match self.sink.tracked(key) {
            Some(t) => t.truncate(fd, size)?,
            None => sys::ftruncate(fd, size)?,
        }
        Ok(())
    }

    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> OpResult<Created> {
        self.read_only.check()?;
        self.refuse_protected(parent, name)?;
        let p = self.inode(parent)?;
        let base = Self::backing_flags(flags);
        let (fd, fresh) = match sys::openat(p.fd(), name, base | libc::O_CREAT | libc::O_EXCL, mode)
        {
            Ok(fd) => (fd, true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                (sys::openat(p.fd(), name, base, 0)?, false)
            }
            Err(e) => return Err(e.into()),
        };
        let file = File::from(fd);
        if fresh {
            sys::fchownat(file.as_fd(), Some(who.uid), Some(who.gid))?;
        }
        let entry = self.lookup(parent, name)?;
        if parent == ROOT_INO {
            self.created(&p, name, &entry, fresh)?;
        }
        let key = entry.attr.key();
        if flags & libc::O_TRUNC != 0 && entry.attr.st_size > 0 {
            if !who.privileged() {
                kill_suidgid(file.as_fd())?;
            }
            self.truncate_fd(key, file.as_fd(), 0)?;
        }
        let fh = self.add_file(file, key, flags);
        Ok(Created { entry, fh })
    }

    pub fn read(&self, fh: u64, off: u64, size: u32) -> OpResult<Vec<u8>> {
        let f = self.file(fh)?;
        Ok(sys::pread_full(f.file.as_fd(), size as usize, off)?)
    }

    /// Writes `data` at `off`; `kill_suidgid` clears setuid/setgid first (the kernel asks
    /// for it when an unprivileged writer changes such a file).
    pub fn write(&self, fh: u64, off: u64, data: &[u8], kill_suidgid: bool) -> OpResult<usize> {
        self.read_only.check()?;
        let f = self.file(fh)?;
        let fd = f.file.as_fd();
        if kill_suidgid {
            self::kill_suidgid(fd)?;
            self.sink.metadata_changed(f.key);
        }
        match self.sink.tracked(f.key) {
            Some(t) => t.write(fd, off, data)?,
            None => sys::pwrite_all(fd, data, off)?,
        }
        Ok(data.len())
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> OpResult<()> {
        let f = self.file(fh)?;
        let fd = f.file.as_fd();
        match self.sink.tracked(f.key) {
            Some(t) => t.fsync(fd, datasync)?,
            None => sys::fsync(fd, datasync)?,
        }
        Ok(())
    }

    pub fn release(&self, fh: u64) {
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }

    pub fn opendir(&self, ino: u64) -> OpResult<u64> {
        let i = self.inode(ino)?;
        let entries = sys::read_dir(i.fd())?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(OpenDir { entries }));
        Ok(fh)
    }

    /// Entries from index `off` on.
    pub fn readdir(&self, fh: u64, off: u64) -> OpResult<Vec<Listed>> {
        let d = self
            .dirs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(Error::errno(libc::EBADF))?;
        Ok(d.entries
            .iter()
            .enumerate()
            .skip(off as usize)
            .map(|(i, e)| Listed {
                ino: e.ino,
                kind: e.kind,
                name: OsStr::from_bytes(&e.name).to_os_string(),
                next: i as u64 + 1,
            })
            .collect())
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }

    pub fn statfs(&self) -> OpResult<rustix::fs::StatVfs> {
        let root = self.inode(ROOT_INO)?;
        Ok(sys::fstatvfs(root.fd())?)
    }

    pub fn access(&self, ino: u64, mask: i32) -> OpResult<()> {
        let i = self.inode(ino)?;
        if i.protected && mask & libc::W_OK != 0 {
            return Err(Error::errno(libc::EACCES));
        }
        if i.is_symlink() {
            return Ok(());
        }
        Ok(sys::access_fd(i.fd(), mask)?)
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> OpResult<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.is_symlink() {
            return Err(Error::errno(libc::ENODATA));
        }
        Ok(sys::getxattr(i.fd(), name, size as usize)?)
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> OpResult<()> {
        self.read_only.check()?;
        let i = self.inode(ino)?;
        if i.protected || i.is_symlink() {
            return Err(Error::errno(libc::EPERM));
        }
        sys::setxattr(i.fd(), name, value, flags)?;
        self.sink.metadata_changed(i.key);
        Ok(())
    }

    pub fn listxattr(&self, ino: u64, size: u32) -> OpResult<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.is_symlink() {
            return Ok(Vec::new());
        }
        Ok(sys::listxattr(i.fd(), size as usize)?)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> OpResult<()> {
        self.read_only.check()?;
        let i = self.inode(ino)?;
        if i.protected || i.is_symlink() {
            return Err(Error::errno(libc::EPERM));
        }
        sys::removexattr(i.fd(), name)?;
        self.sink.metadata_changed(i.key);
        Ok(())
    }

    pub fn fallocate(&self, fh: u64, off: u64, len: u64, mode: i32, who: Caller) -> OpResult<()> {
        self.read_only.check()?;
        let f = self.file(fh)?;
        let fd = f.file.as_fd();
        if !who.privileged() {
            kill_suidgid(fd)?;
        }
        match self.sink.tracked(f.key) {
            Some(t) => t.fallocate(fd, mode, off, len)?,
            None => sys::fallocate(fd, mode, off, len)?,
        }
        Ok(())
    }

    pub fn lseek(&self, fh: u64, off: i64, whence: i32) -> OpResult<i64> {
        let f = self.file(fh)?;
        Ok(sys::lseek(f.file.as_fd(), off, whence)?)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        who: Caller,
    ) -> OpResult<usize> {
        self.read_only.check()?;
        let fi = self.file(fh_in)?;
        let fo = self.file(fh_out)?;
        let (src, dst) = (fi.file.as_fd(), fo.file.as_fd());
        if !who.privileged() {
            kill_suidgid(dst)?;
        }
        // One request copies at most 1 GiB; callers loop on short copies.
        let len = len.min(1 << 30) as usize;
        Ok(match self.sink.tracked(fo.key) {
            Some(t) => t.copy_in(src, off_in, dst, off_out, len)?,
            None => sys::copy_file_range(src, off_in, dst, off_out, len)?,
        })
    }
}

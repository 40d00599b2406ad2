//! The passthrough filesystem core: every operation of the mounted view, done on the backing
//! directory through descriptors, with every change to a tracked disk routed through its
//! [`Disk`](crate::disk::Disk) so that it is logged before it reaches the image.
//!
//! Independent of FUSE: the adapter in `fuse_adapter` only converts types, so tests can drive
//! this core directly.

pub mod inodes;
pub mod sys;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use inodes::{BackingKey, Inodes, Pinned, ROOT_INO};

use crate::disk::Disk;
use crate::tracking::Tracker;

/// An errno for the kernel.
pub type Errno = i32;
/// Result of a core operation.
pub type OpResult<T> = Result<T, Errno>;

/// Maps an I/O error to the errno to give the caller (EIO when there is none).
pub fn errno(e: &io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn err<T>(e: io::Error) -> OpResult<T> {
    Err(errno(&e))
}

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
fn kill_suidgid(fd: RawFd) -> OpResult<()> {
    let st = sys::fstat(fd).or_else(err)?;
    let mut mode = st.st_mode & 0o7777;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(());
    }
    mode &= !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        mode &= !libc::S_ISGID;
    }
    if mode != st.st_mode & 0o7777 {
        sys::chmod_fd(fd, mode).or_else(err)?;
    }
    Ok(())
}

/// An open file.
struct OpenFile {
    file: File,
    key: BackingKey,
}

/// An open directory: entries read once at open (stable offsets for readdir).
struct OpenDir {
    entries: Vec<(u64, u8, OsString)>,
}

/// Time change requested by setattr.
#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    Now,
    At(libc::timespec),
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

/// The filesystem core.
pub struct Core {
    inodes: Inodes,
    files: RwLock<HashMap<u64, Arc<OpenFile>>>,
    dirs: RwLock<HashMap<u64, Arc<OpenDir>>>,
    next_fh: AtomicU64,
    tracker: Arc<Tracker>,
}

impl Core {
    /// A core over the backing directory behind `tracker`.
    pub fn new(tracker: Arc<Tracker>) -> io::Result<Core> {
        let root_fd = tracker.root_fd();
        let st = sys::fstat(root_fd)?;
        let fd = sys::openat(
            root_fd,
            OsStr::new("."),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?;
        Ok(Core {
            inodes: Inodes::new(fd, (st.st_dev, st.st_ino), inodes::descriptor_cap()),
            files: RwLock::new(HashMap::new()),
            dirs: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            tracker,
        })
    }

    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    fn inode(&self, ino: u64) -> OpResult<Pinned> {
        self.inodes.pin(ino).ok_or(libc::ESTALE)
    }

    fn file(&self, fh: u64) -> OpResult<Arc<OpenFile>> {
        self.files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(libc::EBADF)
    }

    fn is_protected(&self, parent: u64, name: &OsStr) -> bool {
        parent == ROOT_INO && self.tracker.is_hrl_name(name)
    }

    fn disk_of(&self, key: BackingKey) -> Option<Arc<Disk>> {
        self.tracker.disk(key)
    }

    /// A disk's ctime moved through the mount (mode, owner, times, xattrs, links): its
    /// stamp is renewed so that it keeps vouching for the image.
    fn after_metadata_change(&self, key: BackingKey) {
        if let Some(d) = self.disk_of(key) {
            d.after_metadata_change();
        }
    }

    /// Looks `name` up in `parent` and records the kernel's reference.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> OpResult<(u64, libc::stat)> {
        let p = self.inode(parent)?;
        let st = sys::statat(p.raw(), name).or_else(err)?;
        let fd = sys::openat(p.raw(), name, libc::O_PATH | libc::O_NOFOLLOW, 0).or_else(err)?;
        let ino = self.inodes.remember(
            fd,
            (st.st_dev, st.st_ino),
            st.st_mode & libc::S_IFMT,
            self.is_protected(parent, name),
        );
        Ok((ino, st))
    }

    /// The inode number the kernel knows a backing object by, if it knows it.
    pub fn ino_of(&self, key: BackingKey) -> Option<u64> {
        self.inodes.ino_of(key)
    }

    /// True for hrl's own files: the tracker changes them behind the kernel's back (seal
    /// renames, acks delete), so the kernel must not cache their names or attributes.
    pub fn uncacheable(&self, ino: u64) -> bool {
        self.inodes.get(ino).is_some_and(|i| i.protected)
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    pub fn getattr(&self, ino: u64) -> OpResult<libc::stat> {
        let i = self.inode(ino)?;
        sys::fstat(i.raw()).or_else(err)
    }

    pub fn setattr(&self, ino: u64, fh: Option<u64>, a: SetAttr) -> OpResult<libc::stat> {
        let i = self.inode(ino)?;
        if i.protected {
            return Err(libc::EPERM);
        }
        if let Some(mode) = a.mode {
            sys::chmod_fd(i.raw(), mode & 0o7777).or_else(err)?;
        }
        if a.uid.is_some() || a.gid.is_some() {
            sys::fchownat(i.raw(), a.uid, a.gid).or_else(err)?;
        }
        if a.mode.is_some() || a.uid.is_some() || a.gid.is_some() {
            self.after_metadata_change(i.key);
        }
        if let Some(size) = a.size {
            if a.kill_suidgid {
                kill_suidgid(i.raw())?;
            }
            let handle = match fh {
                Some(fh) => self.file(fh).ok(),
                None => None,
            };
            let owned;
            let fd = match &handle {
                Some(h) => h.file.as_raw_fd(),
                None => {
                    owned = sys::reopen(i.raw(), libc::O_WRONLY).or_else(err)?;
                    owned.as_raw_fd()
                }
            };
            match self.disk_of(i.key) {
                Some(disk) => disk.truncate(fd, size).or_else(err)?,
                None => sys::ftruncate(fd, size).or_else(err)?,
            }
        }
        if a.atime.is_some() || a.mtime.is_some() {
            let conv = |t: Option<SetTime>| {
                t.map(|t| match t {
                    SetTime::Now => libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_NOW,
                    },
                    SetTime::At(ts) => ts,
                })
            };
            sys::utimens_fd(i.raw(), i.is_symlink(), conv(a.atime), conv(a.mtime)).or_else(err)?;
            self.after_metadata_change(i.key);
        }
        sys::fstat(i.raw()).or_else(err)
    }

    pub fn readlink(&self, ino: u64) -> OpResult<Vec<u8>> {
        let i = self.inode(ino)?;
        sys::readlinkat(i.raw()).or_else(err)
    }

    fn chown_new(&self, dir: RawFd, name: &OsStr, who: Caller) -> OpResult<()> {
        let fd = sys::openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0).or_else(err)?;
        sys::fchownat(fd.as_raw_fd(), Some(who.uid), Some(who.gid)).or_else(err)
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        who: Caller,
    ) -> OpResult<(u64, libc::stat)> {
        if self.is_protected(parent, name) {
            return Err(libc::EPERM);
        }
        let p = self.inode(parent)?;
        sys::mknodat(p.raw(), name, mode, rdev).or_else(err)?;
        self.chown_new(p.raw(), name, who)?;
        let (ino, st) = self.lookup(parent, name)?;
        if parent == ROOT_INO {
            if let Err(e) = self
                .tracker
                .on_created(name, (st.st_dev, st.st_ino), st.st_mode)
            {
                // An untracked disk would lose changes: undo the creation instead.
                self.inodes.forget(ino, 1);
                let _ = sys::unlinkat(p.raw(), name, 0);
                return err(e);
            }
        }
        Ok((ino, st))
    }

    pub fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        who: Caller,
    ) -> OpResult<(u64, libc::stat)> {
        if self.is_protected(parent, name) {
            return Err(libc::EPERM);
        }
        let p = self.inode(parent)?;
        sys::mkdirat(p.raw(), name, mode).or_else(err)?;
        self.chown_new(p.raw(), name, who)?;
        self.lookup(parent, name)
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        who: Caller,
    ) -> OpResult<(u64, libc::stat)> {
        if self.is_protected(parent, name) {
            return Err(libc::EPERM);
        }
        let p = self.inode(parent)?;
        sys::symlinkat(target, p.raw(), name).or_else(err)?;
        self.chown_new(p.raw(), name, who)?;
        self.lookup(parent, name)
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> OpResult<()> {
        if self.is_protected(parent, name) {
            return Err(libc::EPERM);
        }
        let p = self.inode(parent)?;
        let st = sys::statat(p.raw(), name).or_else(err)?;
        let plan = if parent == ROOT_INO {
            // Logged before the name goes: a removal the log does not know would be lost.
            self.tracker
                .before_unlink(name, (st.st_dev, st.st_ino), st.st_nlink)
                .or_else(err)?
        } else {
            None
        };
        sys::unlinkat(p.raw(), name, 0).or_else(err)?;
        self.tracker.after_unlink(plan);
        // Another link of a disk that stays: its link count, and ctime, changed.
        self.after_metadata_change((st.st_dev, st.st_ino));
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> OpResult<()> {
        let p = self.inode(parent)?;
        sys::unlinkat(p.raw(), name, libc::AT_REMOVEDIR).or_else(err)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> OpResult<()> {
        if self.is_protected(parent, name) || self.is_protected(newparent, newname) {
            return Err(libc::EPERM);
        }
        let p = self.inode(parent)?;
        let np = self.inode(newparent)?;
        let st = sys::statat(p.raw(), name).or_else(err)?;
        let key = (st.st_dev, st.st_ino);
        let replaced = sys::statat(np.raw(), newname)
            .ok()
            .map(|s| (s.st_dev, s.st_ino));
        let old_in_root = (parent == ROOT_INO).then_some(name);
        let new_in_root = (newparent == ROOT_INO).then_some(newname);
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if exchange && (old_in_root.is_some() || new_in_root.is_some()) {
            // Swapping two names cannot be described to the shipper with one record each
            // when either side is a disk.
            if self.disk_of(key).is_some() || replaced.and_then(|k| self.disk_of(k)).is_some() {
                return Err(libc::EINVAL);
            }
        }
        let plan = self
            .tracker
            .before_rename(old_in_root, new_in_root, key, st.st_mode, replaced)
            .or_else(err)?;
        sys::renameat2(p.raw(), name, np.raw(), newname, flags).or_else(err)?;
        self.tracker.after_rename(plan);
        self.after_metadata_change(key);
        Ok(())
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> OpResult<(u64, libc::stat)> {
        let i = self.inode(ino)?;
        if i.protected || self.is_protected(newparent, newname) {
            return Err(libc::EPERM);
        }
        // A disk has exactly one name: a second name would be tracked under neither, or
        // taken for another disk at the next mount. Refused, like a filesystem at its link
        // limit (EMLINK), for a disk and for a file linked under a disk name.
        let disk_name = newparent == ROOT_INO
            && i.kind == libc::S_IFREG
            && newname
                .to_str()
                .is_some_and(|n| self.tracker.is_disk_name(n));
        if self.disk_of(i.key).is_some() || disk_name {
            tracing::warn!(name = ?newname, "refused a hard link to a disk (a disk has one name only)");
            return Err(libc::EMLINK);
        }
        let np = self.inode(newparent)?;
        sys::linkat_fd(i.raw(), np.raw(), newname).or_else(err)?;
        self.after_metadata_change(i.key);
        self.lookup(newparent, newname)
    }

    fn add_file(&self, file: File, key: BackingKey) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(OpenFile { file, key }));
        fh
    }

    /// Flags the backing open must not carry: the kernel computes append offsets and handles
    /// O_DIRECT itself (our buffers are not aligned); O_TRUNC is done as a logged truncate.
    fn backing_flags(flags: i32) -> i32 {
        flags & !(libc::O_APPEND | libc::O_DIRECT | libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL)
    }

    fn writes(flags: i32) -> bool {
        flags & libc::O_ACCMODE != libc::O_RDONLY
    }

    pub fn open(&self, ino: u64, flags: i32, who: Caller) -> OpResult<u64> {
        let i = self.inode(ino)?;
        if i.protected && (Self::writes(flags) || flags & libc::O_TRUNC != 0) {
            return Err(libc::EACCES);
        }
        let file = sys::reopen(i.raw(), Self::backing_flags(flags)).or_else(err)?;
        if flags & libc::O_TRUNC != 0 && Self::writes(flags) {
            if !who.privileged() {
                kill_suidgid(file.as_raw_fd())?;
            }
            self.truncate_fd(i.key, file.as_raw_fd(), 0)?;
        }
        Ok(self.add_file(file, i.key))
    }

    fn truncate_fd(&self, key: BackingKey, fd: RawFd, size: u64) -> OpResult<()> {
        match self.disk_of(key) {
            Some(d) => d.truncate(fd, size).or_else(err),
            None => sys::ftruncate(fd, size).or_else(err),
        }
    }

    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> OpResult<(u64, libc::stat, u64)> {
        if self.is_protected(parent, name) {
            return Err(libc::EPERM);
        }
        let p = self.inode(parent)?;
        let base = Self::backing_flags(flags);
        let (fd, fresh) =
            match sys::openat(p.raw(), name, base | libc::O_CREAT | libc::O_EXCL, mode) {
                Ok(fd) => (fd, true),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                    (sys::openat(p.raw(), name, base, 0).or_else(err)?, false)
                }
                Err(e) => return err(e),
            };
        let file = File::from(fd);
        if fresh {
            sys::fchownat(file.as_raw_fd(), Some(who.uid), Some(who.gid)).or_else(err)?;
        }
        let (ino, st) = self.lookup(parent, name)?;
        let key = (st.st_dev, st.st_ino);
        if parent == ROOT_INO {
            if let Err(e) = self.tracker.on_created(name, key, st.st_mode) {
                self.inodes.forget(ino, 1);
                if fresh {
                    let _ = sys::unlinkat(p.raw(), name, 0);
                }
                return err(e);
            }
        }
        if flags & libc::O_TRUNC != 0 && st.st_size > 0 {
            if !who.privileged() {
                kill_suidgid(file.as_raw_fd())?;
            }
            self.truncate_fd(key, file.as_raw_fd(), 0)?;
        }
        let fh = self.add_file(file, key);
        Ok((ino, st, fh))
    }

    pub fn read(&self, fh: u64, off: u64, size: u32) -> OpResult<Vec<u8>> {
        let f = self.file(fh)?;
        sys::pread_full(f.file.as_raw_fd(), size as usize, off).or_else(err)
    }

    /// Writes `data` at `off`; `kill_suidgid` clears setuid/setgid first (the kernel asks
    /// for it when an unprivileged writer changes such a file).
    pub fn write(&self, fh: u64, off: u64, data: &[u8], kill_suidgid: bool) -> OpResult<usize> {
        let f = self.file(fh)?;
        let fd = f.file.as_raw_fd();
        if kill_suidgid {
            self::kill_suidgid(fd)?;
            self.after_metadata_change(f.key);
        }
        match self.disk_of(f.key) {
            Some(d) => d.write(fd, off, data).or_else(err)?,
            None => sys::pwrite_all(fd, data, off).or_else(err)?,
        }
        Ok(data.len())
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> OpResult<()> {
        let f = self.file(fh)?;
        let fd = f.file.as_raw_fd();
        match self.disk_of(f.key) {
            Some(d) => d.fsync(fd, datasync).or_else(err),
            None => sys::fsync(fd, datasync).or_else(err),
        }
    }

    pub fn release(&self, fh: u64) {
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }

    pub fn opendir(&self, ino: u64) -> OpResult<u64> {
        let i = self.inode(ino)?;
        let fd: OwnedFd = sys::openat(
            i.raw(),
            OsStr::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .or_else(err)?;
        let entries = sys::read_dir_entries(fd.as_raw_fd())
            .or_else(err)?
            .into_iter()
            .map(|(ino, ty, name)| (ino, ty, OsStr::from_bytes(&name).to_os_string()))
            .collect();
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(OpenDir { entries }));
        Ok(fh)
    }

    /// Entries from index `off` on: (backing ino, d_type, name, next offset).
    pub fn readdir(&self, fh: u64, off: u64) -> OpResult<Vec<(u64, u8, OsString, u64)>> {
        let d = self
            .dirs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(libc::EBADF)?;
        Ok(d.entries
            .iter()
            .enumerate()
            .skip(off as usize)
            .map(|(i, (ino, ty, name))| (*ino, *ty, name.clone(), i as u64 + 1))
            .collect())
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }

    pub fn statfs(&self) -> OpResult<libc::statvfs> {
        sys::fstatvfs(self.tracker.root_fd()).or_else(err)
    }

    pub fn access(&self, ino: u64, mask: i32) -> OpResult<()> {
        let i = self.inode(ino)?;
        if i.protected && mask & libc::W_OK != 0 {
            return Err(libc::EACCES);
        }
        if i.is_symlink() {
            return Ok(());
        }
        sys::access_fd(i.raw(), mask).or_else(err)
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> OpResult<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.is_symlink() {
            return Err(libc::ENODATA);
        }
        sys::getxattr(i.raw(), name, size as usize).or_else(err)
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> OpResult<()> {
        let i = self.inode(ino)?;
        if i.protected {
            return Err(libc::EPERM);
        }
        if i.is_symlink() {
            return Err(libc::EPERM);
        }
        sys::setxattr(i.raw(), name, value, flags).or_else(err)?;
        self.after_metadata_change(i.key);
        Ok(())
    }

    pub fn listxattr(&self, ino: u64, size: u32) -> OpResult<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.is_symlink() {
            return Ok(Vec::new());
        }
        sys::listxattr(i.raw(), size as usize).or_else(err)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> OpResult<()> {
        let i = self.inode(ino)?;
        if i.protected || i.is_symlink() {
            return Err(libc::EPERM);
        }
        sys::removexattr(i.raw(), name).or_else(err)?;
        self.after_metadata_change(i.key);
        Ok(())
    }

    pub fn fallocate(&self, fh: u64, off: u64, len: u64, mode: i32, who: Caller) -> OpResult<()> {
        let f = self.file(fh)?;
        let fd = f.file.as_raw_fd();
        if !who.privileged() {
            kill_suidgid(fd)?;
        }
        match self.disk_of(f.key) {
            Some(d) => d.fallocate(fd, mode, off, len).or_else(err),
            None => sys::fallocate(fd, mode, off, len).or_else(err),
        }
    }

    pub fn lseek(&self, fh: u64, off: i64, whence: i32) -> OpResult<i64> {
        let f = self.file(fh)?;
        sys::lseek(f.file.as_raw_fd(), off, whence).or_else(err)
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
        let fi = self.file(fh_in)?;
        let fo = self.file(fh_out)?;
        if !who.privileged() {
            kill_suidgid(fo.file.as_raw_fd())?;
        }
        // One request copies at most 1 GiB; callers loop on short copies.
        let len = len.min(1 << 30) as usize;
        match self.disk_of(fo.key) {
            Some(d) => d
                .copy_in(
                    fi.file.as_raw_fd(),
                    off_in,
                    fo.file.as_raw_fd(),
                    off_out,
                    len,
                )
                .or_else(err),
            None => sys::copy_file_range(
                fi.file.as_raw_fd(),
                off_in,
                fo.file.as_raw_fd(),
                off_out,
                len,
            )
            .or_else(err),
        }
    }
}

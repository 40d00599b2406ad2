//! The `fuser::Filesystem` face of the core: converts FUSE requests to core calls and core
//! results to replies, and logs the errors it answers with (the one place they are logged).
//! No logic of its own.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::core::{Caller, ChangeSink, Core, Entry, Error, SetAttr, SetTime};
use crate::sys::Stat;

/// How long the kernel may cache names and attributes. All changes go through this
/// filesystem (the backing directory is shadowed), so caching is safe.
const TTL: Duration = Duration::from_secs(1);

/// Largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1 << 20;

/// The FUSE filesystem.
pub struct HrlFs<S: ChangeSink> {
    core: Arc<Core<S>>,
    /// The kernel allows shared mappings of `FOPEN_DIRECT_IO` files
    /// (`FUSE_DIRECT_IO_ALLOW_MMAP`, Linux 6.6), so writable opens of disks can bypass its
    /// page cache without refusing `mmap(MAP_SHARED)`.
    direct_writes: bool,
}

impl<S: ChangeSink> HrlFs<S> {
    pub fn new(core: Arc<Core<S>>) -> Self {
        HrlFs {
            core,
            direct_writes: false,
        }
    }

    /// How the kernel is to treat the open `fh`: a writable open of a disk skips the page
    /// cache and may have parallel writes in flight (`FOPEN_DIRECT_IO` +
    /// `FOPEN_PARALLEL_DIRECT_WRITES`): without it the kernel holds the inode lock across
    /// each write's whole round trip, so writers of one disk queue behind each other there.
    /// Read-only opens keep the page cache and its readahead.
    fn open_flags(&self, fh: u64) -> FopenFlags {
        if self.direct_writes && self.core.writes_tracked(fh) {
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
        } else {
            FopenFlags::empty()
        }
    }

    fn entry(&self, e: &Entry) -> (Duration, FileAttr) {
        (self.ttl(e.ino), attr(e.ino, &e.attr))
    }

    fn ttl(&self, ino: u64) -> Duration {
        if self.core.uncacheable(ino) {
            Duration::ZERO
        } else {
            TTL
        }
    }
}

/// The errno to answer a failed `op` with; the error is logged here. Refusals and misses
/// are part of normal work (debug); an I/O error is worth a warning.
fn e(op: &'static str, err: Error) -> Errno {
    let code = err.code();
    if code == libc::EIO {
        tracing::warn!(op, errno = code, error = %err.source_error(), "answering with an I/O error");
    } else {
        tracing::debug!(op, errno = code, error = %err.source_error(), "operation failed");
    }
    Errno::from_i32(code)
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn dtype_kind(t: rustix::fs::FileType) -> FileType {
    use rustix::fs::FileType as T;
    match t {
        T::Directory => FileType::Directory,
        T::Symlink => FileType::Symlink,
        T::Fifo => FileType::NamedPipe,
        T::CharacterDevice => FileType::CharDevice,
        T::BlockDevice => FileType::BlockDevice,
        T::Socket => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn attr(ino: u64, st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: time(st.st_ctime, st.st_ctime_nsec),
        kind: kind(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(s) => {
            let d = s.duration_since(UNIX_EPOCH).unwrap_or_default();
            SetTime::At {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            }
        }
    })
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

impl<S: ChangeSink> Filesystem for HrlFs<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        // We clear setuid/setgid bits on write ourselves (FUSE_WRITE_KILL_SUIDGID), which
        // spares the kernel a getxattr("security.capability") round trip per write.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        // The kernel evaluates POSIX ACLs (read through getxattr from the backing files)
        // only with this flag; without it a deny entry honoured on the raw directory would be
        // ignored through the mount, so a kernel without it gets no mount.
        if config
            .add_capabilities(fuser::InitFlags::FUSE_POSIX_ACL)
            .is_err()
        {
            tracing::error!("the kernel's FUSE lacks POSIX ACL support; refusing to mount");
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the kernel's FUSE has no POSIX ACL support, so ACLs of the disks would be \
                 ignored through the mount; use a kernel with FUSE_POSIX_ACL (Linux 4.9+)",
            ));
        }
        // Without it the kernel serves each asynchronous O_DIRECT request (qemu aio=native,
        // fio libaio) synchronously inside io_submit: a queue depth of 16 becomes one.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_ASYNC_DIO);
        self.direct_writes = config
            .add_capabilities(fuser::InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok();
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn destroy(&mut self) {
        self.core.destroy();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.core.lookup(parent.0, name) {
            Ok(en) => {
                let (ttl, a) = self.entry(&en);
                reply.entry(&ttl, &a, Generation(0))
            }
            Err(c) => reply.error(e("lookup", c)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.core.getattr(ino.0) {
            Ok(st) => reply.attr(&self.ttl(ino.0), &attr(ino.0, &st)),
            Err(c) => reply.error(e("getattr", c)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            kill_suidgid: !caller(req).privileged(),
        };
        match self.core.setattr(ino.0, fh.map(|f| f.0), a) {
            Ok(st) => reply.attr(&self.ttl(ino.0), &attr(ino.0, &st)),
            Err(c) => reply.error(e("setattr", c)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.core.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(c) => reply.error(e("readlink", c)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match self
            .core
            .mknod(parent.0, name, mode & !umask, u64::from(rdev), caller(req))
        {
            Ok(en) => {
                let (ttl, a) = self.entry(&en);
                reply.entry(&ttl, &a, Generation(0))
            }
            Err(c) => reply.error(e("mknod", c)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.core.mkdir(parent.0, name, mode & !umask, caller(req)) {
            Ok(en) => {
                let (ttl, a) = self.entry(&en);
                reply.entry(&ttl, &a, Generation(0))
            }
            Err(c) => reply.error(e("mkdir", c)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.core.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(c) => reply.error(e("unlink", c)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.core.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(c) => reply.error(e("rmdir", c)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self
            .core
            .symlink(parent.0, link_name, target.as_os_str(), caller(req))
        {
            Ok(en) => {
                let (ttl, a) = self.entry(&en);
                reply.entry(&ttl, &a, Generation(0))
            }
            Err(c) => reply.error(e("symlink", c)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self
            .core
            .rename(parent.0, name, newparent.0, newname, flags.bits())
        {
            Ok(()) => reply.ok(),
            Err(c) => reply.error(e("rename", c)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.core.link(ino.0, newparent.0, newname) {
            Ok(en) => {
                let (ttl, a) = self.entry(&en);
                reply.entry(&ttl, &a, Generation(0))
            }
            Err(c) => reply.error(e("link", c)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.core.open(ino.0, flags.0, caller(req)) {
            Ok(fh) => reply.opened(FileHandle(fh), self.open_flags(fh)),
            Err(c) => reply.error(e("open", c)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.core.read(fh.0, offset, size) {
            Ok(d) => {
                crate::metrics::read(d.len() as u64);
                reply.data(&d)
            }
            Err(c) => reply.error(e("read", c)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.core.write(fh.0, offset, data, kill) {
            Ok(n) => reply.written(n as u32),
            Err(c) => reply.error(e("write", c)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.core.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(c) => reply.error(e("fsync", c)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.core.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(c) => reply.error(e("opendir", c)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.core.readdir(fh.0, offset) {
            Ok(entries) => {
                for l in entries {
                    if reply.add(INodeNo(l.ino.max(1)), l.next, dtype_kind(l.kind), &l.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(c) => reply.error(e("readdir", c)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.core.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(c) => reply.error(e("statfs", c)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match self.core.setxattr(ino.0, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(c) => reply.error(e("setxattr", c)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.core.getxattr(ino.0, name, size) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(c) => reply.error(e("getxattr", c)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.core.listxattr(ino.0, size) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(c) => reply.error(e("listxattr", c)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.core.removexattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(c) => reply.error(e("removexattr", c)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.core.access(ino.0, mask.bits()) {
            Ok(()) => reply.ok(),
            Err(c) => reply.error(e("access", c)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .core
            .create(parent.0, name, mode & !umask, flags, caller(req))
        {
            Ok(c) => reply.created(
                &TTL,
                &attr(c.entry.ino, &c.entry.attr),
                Generation(0),
                FileHandle(c.fh),
                self.open_flags(c.fh),
            ),
            Err(c) => reply.error(e("create", c)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.core.fallocate(fh.0, offset, length, mode, caller(req)) {
            Ok(()) => reply.ok(),
            Err(c) => reply.error(e("fallocate", c)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.core.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(c) => reply.error(e("lseek", c)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self
            .core
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len, caller(req))
        {
            Ok(n) => reply.written(n as u32),
            Err(c) => reply.error(e("copy_file_range", c)),
        }
    }
}

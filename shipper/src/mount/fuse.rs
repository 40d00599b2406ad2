//! The `fuser::Filesystem` face of [`MountCore`]: one directory with one file per disk of the
//! point, the size of the disk. Converts requests to core calls and results to replies,
//! and logs the errors it answers with (the object a failed read needed). No logic of its own.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use hrl::store::FileAttrs;

use super::core::MountCore;
use super::error::MountError;

/// Nothing changes the files but this filesystem: the kernel may cache attributes.
const TTL: Duration = Duration::from_secs(60);
const ROOT: u64 = 1;

pub struct PointFs {
    core: Arc<MountCore>,
    rt: tokio::runtime::Handle,
}

impl PointFs {
    pub fn new(core: Arc<MountCore>, rt: tokio::runtime::Handle) -> PointFs {
        PointFs { core, rt }
    }

    fn disk_of(&self, ino: INodeNo) -> Option<usize> {
        let i = ino.0.checked_sub(ROOT + 1)? as usize;
        (i < self.core.disks.len()).then_some(i)
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let t = UNIX_EPOCH + Duration::from_nanos(self.core.point.time_ns);
        let (kind, size, perm, uid, gid) = match ino {
            ROOT => (FileType::Directory, 0, 0o755, 0, 0),
            _ => {
                let d = &self.core.disks[self.disk_of(INodeNo(ino))?];
                let a = d.file.unwrap_or(FileAttrs {
                    mode: 0o600,
                    uid: 0,
                    gid: 0,
                });
                let mut perm = a.mode & FileAttrs::RESTORE_MASK;
                if self.core.options.read_only {
                    perm &= !0o222;
                }
                (FileType::RegularFile, d.size, perm, a.uid, a.gid)
            }
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm: perm as u16,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid,
            gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

/// The errno for `err`; an I/O error is logged as a warning naming what failed.
fn e(op: &'static str, err: &MountError) -> Errno {
    let code = err.errno();
    match code {
        libc::EIO => tracing::warn!(op, error = %err, "answering with an I/O error"),
        _ => tracing::debug!(op, error = %err, "request refused"),
    }
    Errno::from_i32(code)
}

impl Filesystem for PointFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = (parent.0 == ROOT)
            .then(|| {
                self.core
                    .disks
                    .iter()
                    .position(|d| OsStr::new(&d.name) == name)
            })
            .flatten();
        match found.and_then(|i| self.attr(ROOT + 1 + i as u64)) {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(a) = self.attr(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        // The disks keep the point's size, mode and owner; times are accepted and ignored.
        let changes = mode.is_some() || uid.is_some() || gid.is_some();
        match size {
            Some(s) if s != a.size => reply.error(Errno::EPERM),
            _ if changes => reply.error(Errno::EPERM),
            _ => reply.attr(&TTL, &a),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let mut entries = vec![
            (ROOT, FileType::Directory, ".".to_string()),
            (ROOT, FileType::Directory, "..".to_string()),
        ];
        for (i, d) in self.core.disks.iter().enumerate() {
            entries.push((ROOT + 1 + i as u64, FileType::RegularFile, d.name.clone()));
        }
        for (n, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), n as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.disk_of(ino).is_none() {
            return reply.error(Errno::ENOENT);
        }
        let writes = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        if writes && self.core.options.read_only {
            return reply.error(Errno::EROFS);
        }
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(i) = self.disk_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match self.rt.block_on(self.core.read(i, offset, u64::from(size))) {
            Ok(data) => reply.data(&data),
            Err(err) => reply.error(e("read", &err)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(i) = self.disk_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match self.rt.block_on(self.core.write(i, offset, data)) {
            Ok(n) => reply.written(n as u32),
            Err(err) => reply.error(e("write", &err)),
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

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some(i) = self.disk_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match self.core.sync(i) {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(e("fsync", &err)),
        }
    }
}

//! The system calls of the tracker, over `rustix`: every backing access goes through a
//! directory descriptor (never a path through the mount point, which the FUSE mount shadows
//! when mounted in place). Flags and modes come as the kernel's raw numbers (FUSE passes
//! them so) and are handed on unchanged.
//!
//! What `rustix` lacks is here on `libc`, minimal: kernel file handles
//! (`name_to_handle_at`/`open_by_handle_at`, at the end of this file).

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

pub use rustix::fs::CWD;
use rustix::fs::{
    AtFlags, FallocateFlags, FileType, Gid, Mode, OFlags, RenameFlags, SeekFrom, Timespec,
    Timestamps, Uid, XattrFlags,
};

/// Identity of a backing object: (st_dev, st_ino).
pub type BackingKey = (u64, u64);

/// The fields of `struct stat` the tracker reads, in the same widths on every target.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub st_dev: u64,
    pub st_ino: u64,
    pub st_nlink: u64,
    pub st_mode: u32,
    pub st_uid: u32,
    pub st_gid: u32,
    pub st_rdev: u64,
    pub st_size: i64,
    pub st_blksize: i64,
    pub st_blocks: i64,
    pub st_atime: i64,
    pub st_atime_nsec: i64,
    pub st_mtime: i64,
    pub st_mtime_nsec: i64,
    pub st_ctime: i64,
    pub st_ctime_nsec: i64,
}

impl Stat {
    /// The object's identity.
    pub fn key(&self) -> BackingKey {
        (self.st_dev, self.st_ino)
    }

    /// The `S_IFMT` bits.
    pub fn kind(&self) -> u32 {
        self.st_mode & libc::S_IFMT
    }
}

// Field widths differ between targets (st_nlink is 32 bits on aarch64): casts that are
// no-ops on one target are needed on another.
#[allow(clippy::unnecessary_cast)]
impl From<rustix::fs::Stat> for Stat {
    fn from(s: rustix::fs::Stat) -> Stat {
        Stat {
            st_dev: s.st_dev as u64,
            st_ino: s.st_ino as u64,
            st_nlink: s.st_nlink as u64,
            st_mode: s.st_mode as u32,
            st_uid: s.st_uid as u32,
            st_gid: s.st_gid as u32,
            st_rdev: s.st_rdev as u64,
            st_size: s.st_size as i64,
            st_blksize: s.st_blksize as i64,
            st_blocks: s.st_blocks as i64,
            st_atime: s.st_atime as i64,
            st_atime_nsec: s.st_atime_nsec as i64,
            st_mtime: s.st_mtime as i64,
            st_mtime_nsec: s.st_mtime_nsec as i64,
            st_ctime: s.st_ctime as i64,
            st_ctime_nsec: s.st_ctime_nsec as i64,
        }
    }
}

/// One directory entry: backing inode, type, name.
pub struct DirEntry {
    pub ino: u64,
    pub kind: FileType,
    pub name: Vec<u8>,
}

/// Converts a path to a C string; names with NUL bytes are invalid.
pub fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `/proc/self/fd/N`: reaches the object behind an `O_PATH` descriptor for calls that have
/// no descriptor form (reopen, chmod of O_PATH fds, xattrs).
fn proc_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn oflags(flags: i32) -> OFlags {
    OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC
}

/// `openat(dir, name, flags, mode)`, close-on-exec.
pub fn openat(dir: BorrowedFd<'_>, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        oflags(flags),
        Mode::from_raw_mode(mode),
    )?)
}

/// Opens the object behind an `O_PATH` descriptor with real access `flags`.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<File> {
    let flags = flags & !(libc::O_NOFOLLOW | libc::O_CREAT | libc::O_EXCL);
    let fd = rustix::fs::open(proc_path(fd), oflags(flags), Mode::empty())?;
    Ok(File::from(fd))
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; an empty name stats `dir` itself.
pub fn statat(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Stat> {
    let mut flags = AtFlags::SYMLINK_NOFOLLOW;
    if name.is_empty() {
        flags |= AtFlags::EMPTY_PATH;
    }
    Ok(rustix::fs::statat(dir, name, flags)?.into())
}

/// `fstat` of a descriptor (`O_PATH` ones too).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    statat(fd, OsStr::new(""))
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode))?)
}

/// `mknodat`; a mode without a file type makes a regular file, as mknod(2) does.
pub fn mknodat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
    let kind = match mode & libc::S_IFMT {
        0 => FileType::RegularFile,
        t => FileType::from_raw_mode(t),
    };
    Ok(rustix::fs::mknodat(
        dir,
        name,
        kind,
        Mode::from_raw_mode(mode),
        rdev,
    )?)
}

pub fn symlinkat(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    Ok(rustix::fs::symlinkat(target, dir, name)?)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &OsStr, flags: i32) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(
        dir,
        name,
        AtFlags::from_bits_retain(flags as u32),
    )?)
}

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    old: &OsStr,
    newdir: BorrowedFd<'_>,
    new: &OsStr,
    flags: u32,
) -> io::Result<()> {
    Ok(rustix::fs::renameat_with(
        olddir,
        old,
        newdir,
        new,
        RenameFlags::from_bits_retain(flags),
    )?)
}

/// Hard link of the object behind an `O_PATH` descriptor.
pub fn linkat_fd(fd: BorrowedFd<'_>, newdir: BorrowedFd<'_>, new: &OsStr) -> io::Result<()> {
    // AT_EMPTY_PATH links the fd itself (needs CAP_DAC_READ_SEARCH) ...
    if rustix::fs::linkat(fd, "", newdir, new, AtFlags::EMPTY_PATH).is_ok() {
        return Ok(());
    }
    // ... the /proc path form works without the capability.
    Ok(rustix::fs::linkat(
        CWD,
        proc_path(fd),
        newdir,
        new,
        AtFlags::SYMLINK_FOLLOW,
    )?)
}

/// The target of the symlink behind an `O_PATH` descriptor.
pub fn readlinkat(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    Ok(rustix::fs::readlinkat(fd, "", Vec::new())?.into_bytes())
}

/// chown of the object behind `fd`, not following links; `None` leaves an id unchanged.
pub fn fchownat(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    Ok(rustix::fs::chownat(
        fd,
        "",
        uid.map(Uid::from_raw_unchecked),
        gid.map(Gid::from_raw_unchecked),
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// chmod of the object behind `fd` (an `O_PATH` descriptor has no fchmod).
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::chmod(proc_path(fd), Mode::from_raw_mode(mode))?)
}

/// A time for [`utimens_fd`]: (seconds, nanoseconds), or `UTIME_NOW` in the nanoseconds.
pub type Time = (i64, i64);

/// The nanoseconds of a [`Time`] that means "now".
pub const UTIME_NOW: i64 = libc::UTIME_NOW;

/// utimensat on the object behind an `O_PATH` fd; `None` leaves a time unchanged.
pub fn utimens_fd(
    fd: BorrowedFd<'_>,
    is_symlink: bool,
    atime: Option<Time>,
    mtime: Option<Time>,
) -> io::Result<()> {
    let ts = |t: Option<Time>| match t {
        Some((tv_sec, tv_nsec)) => Timespec { tv_sec, tv_nsec },
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
    };
    let times = Timestamps {
        last_access: ts(atime),
        last_modification: ts(mtime),
    };
    if is_symlink {
        // AT_EMPTY_PATH acts on the link itself.
        let flags = AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW;
        return Ok(rustix::fs::utimensat(fd, "", &times, flags)?);
    }
    Ok(rustix::fs::utimensat(
        CWD,
        proc_path(fd),
        &times,
        AtFlags::empty(),
    )?)
}

/// Reads up to `len` bytes at `off` (short only at end of file).
pub fn pread_full(fd: BorrowedFd<'_>, len: usize, off: u64) -> io::Result<Vec<u8>> {
    // Read into the vector's spare capacity: a 1 MiB read request is not zeroed first.
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = off + buf.len() as u64;
        match rustix::io::pread(fd, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// Writes all of `data` at `off`.
pub fn pwrite_all(fd: BorrowedFd<'_>, data: &[u8], off: u64) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        match rustix::io::pwrite(fd, &data[done..], off + done as u64) {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    Ok(rustix::fs::ftruncate(fd, size)?)
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, off: u64, len: u64) -> io::Result<()> {
    let mode = FallocateFlags::from_bits_retain(mode as u32);
    Ok(rustix::fs::fallocate(fd, mode, off, len)?)
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    if datasync {
        Ok(rustix::fs::fdatasync(fd)?)
    } else {
        Ok(rustix::fs::fsync(fd)?)
    }
}

/// `lseek(fd, off, whence)`, SEEK_DATA and SEEK_HOLE included.
pub fn lseek(fd: BorrowedFd<'_>, off: i64, whence: i32) -> io::Result<i64> {
    let unsigned = || u64::try_from(off).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    let pos = match whence {
        libc::SEEK_SET => SeekFrom::Start(unsigned()?),
        libc::SEEK_CUR => SeekFrom::Current(off),
        libc::SEEK_END => SeekFrom::End(off),
        libc::SEEK_DATA => SeekFrom::Data(unsigned()?),
        libc::SEEK_HOLE => SeekFrom::Hole(unsigned()?),
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    let at = rustix::fs::seek(fd, pos)?;
    i64::try_from(at).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

/// Whether every byte of `[start, end)` of `fd` lies in an allocated extent (written,
/// unwritten or delayed), from `FS_IOC_FIEMAP` over just that range: its cost is bounded by
/// the extents in the range. (`SEEK_HOLE` from `start` walks every extent up to the next
/// hole, which in a fragmented, fully allocated image is the end of the file: measured as
/// a quarter of the tracker's CPU time on the first writes after a mount.) `None` where the
/// filesystem has no FIEMAP (tmpfs).
pub fn range_allocated(fd: BorrowedFd<'_>, start: u64, end: u64) -> Option<bool> {
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    struct Map {
        start: u64,
        length: u64,
        flags: u32,
        mapped: u32,
        count: u32,
        reserved: u32,
        extents: [Extent; 32],
    }
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const LAST: u32 = 0x1;
    let mut at = start;
    // 32 extents a call, as many calls as the range has extents for (a 4 MiB range of 4 KiB
    // writes: up to 1,024); every extent reported overlaps `[at, end)`, so each call
    // moves `at` on.
    while at < end {
        let before = at;
        let mut map = Map {
            start: at,
            length: end - at,
            flags: 0,
            mapped: 0,
            count: 32,
            reserved: 0,
            extents: [Extent::default(); 32],
        };
        // SAFETY: `map` is a `struct fiemap` followed by room for `count` extents.
        if unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FIEMAP as _, &mut map) } != 0 {
            return None;
        }
        let n = (map.mapped as usize).min(32);
        if n == 0 {
            return Some(false);
        }
        for e in &map.extents[..n] {
            if e.logical > at {
                return Some(false);
            }
            at = at.max(e.logical + e.length);
            if at >= end {
                return Some(true);
            }
            if e.flags & LAST != 0 {
                return Some(false);
            }
        }
        if at == before {
            return None; // no progress: not a FIEMAP this loop understands
        }
    }
    Some(true)
}

pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
) -> io::Result<usize> {
    let (mut oi, mut oo) = (off_in, off_out);
    Ok(rustix::fs::copy_file_range(
        fd_in,
        Some(&mut oi),
        fd_out,
        Some(&mut oo),
        len,
    )?)
}

pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<rustix::fs::StatVfs> {
    Ok(rustix::fs::fstatvfs(fd)?)
}

/// access(2) of the object behind `fd` for the tracker's own credentials.
pub fn access_fd(fd: BorrowedFd<'_>, mask: i32) -> io::Result<()> {
    let mask = rustix::fs::Access::from_bits_retain(mask as u32);
    Ok(rustix::fs::accessat(
        CWD,
        proc_path(fd),
        mask,
        AtFlags::empty(),
    )?)
}

/// Every entry of the directory behind `dir` (an `O_PATH` descriptor does), `.` and `..`
/// included.
pub fn read_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<DirEntry>> {
    let fd = openat(dir, OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut out = Vec::new();
    for e in rustix::fs::Dir::new(fd)? {
        let e = e?;
        out.push(DirEntry {
            ino: e.ino(),
            kind: e.file_type(),
            name: e.file_name().to_bytes().to_vec(),
        });
    }
    Ok(out)
}

/// Reads into a buffer of `size` bytes, or (size 0) asks for the size needed: a buffer of
/// that many zero bytes, as the xattr calls of FUSE expect.
fn sized(
    size: usize,
    call: impl FnOnce(&mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; size];
    let n = call(&mut buf)?;
    if size == 0 {
        return Ok(vec![0u8; n]);
    }
    buf.truncate(n);
    Ok(buf)
}

pub fn getxattr(fd: BorrowedFd<'_>, name: &OsStr, size: usize) -> io::Result<Vec<u8>> {
    let p = proc_path(fd);
    sized(size, |b| rustix::fs::getxattr(p.as_str(), name, b))
}

pub fn setxattr(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    let flags = XattrFlags::from_bits_retain(flags as u32);
    Ok(rustix::fs::setxattr(proc_path(fd), name, value, flags)?)
}

pub fn listxattr(fd: BorrowedFd<'_>, size: usize) -> io::Result<Vec<u8>> {
    let p = proc_path(fd);
    sized(size, |b| rustix::fs::listxattr(p.as_str(), b))
}

pub fn removexattr(fd: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    Ok(rustix::fs::removexattr(proc_path(fd), name)?)
}

/// The soft limit on open descriptors, if it has one.
pub fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// A kernel file handle (`name_to_handle_at`): names an object so that it can be opened
/// again later without holding a descriptor for it meanwhile. Not in `rustix`.
#[repr(C)]
#[derive(Clone)]
pub struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 128],
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The handle of the object behind `fd`, and the id of the mount it is on.
pub fn file_handle(fd: BorrowedFd<'_>) -> io::Result<(FileHandle, i32)> {
    let mut h = FileHandle {
        handle_bytes: 128,
        handle_type: 0,
        f_handle: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `h` is a file_handle header followed by 128 bytes of room, as handle_bytes says.
    check(unsafe {
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            c"".as_ptr(),
            (&mut h as *mut FileHandle).cast::<libc::file_handle>(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    })?;
    Ok((h, mount_id))
}

/// Opens a handle from [`file_handle`]; `mount_fd` is an open (not `O_PATH`) descriptor on
/// the same filesystem. Needs CAP_DAC_READ_SEARCH.
pub fn open_by_handle(mount_fd: BorrowedFd<'_>, h: &FileHandle, flags: i32) -> io::Result<OwnedFd> {
    let mut h = h.clone();
    // SAFETY: a handle filled by name_to_handle_at; plain syscall.
    let fd = check(unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            (&mut h as *mut FileHandle).cast::<libc::file_handle>(),
            flags | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh descriptor owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Device and inode of what `path` names, following symlinks. `AT_STATX_DONT_SYNC`: cached
/// attributes are enough for an identity, so a hung network or FUSE filesystem behind the
/// path cannot stall the caller.
pub fn identity(path: &std::path::Path) -> Option<BackingKey> {
    let sx = rustix::fs::statx(
        CWD,
        path,
        AtFlags::STATX_DONT_SYNC,
        rustix::fs::StatxFlags::INO,
    )
    .ok()?;
    Some((
        rustix::fs::makedev(sx.stx_dev_major, sx.stx_dev_minor),
        sx.stx_ino,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;

    /// Meaningful on a filesystem with FIEMAP (ext4, xfs, btrfs); `None` elsewhere.
    #[test]
    fn range_allocated_sees_holes_and_data_within_the_range_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("img")).unwrap();
        let mb = 1u64 << 20;
        f.set_len(8 * mb).unwrap();
        // Data in [0, 2 MiB) and [3 MiB, 8 MiB); a hole in [2, 3) MiB.
        f.write_all_at(&vec![1u8; 2 * mb as usize], 0).unwrap();
        f.write_all_at(&vec![1u8; 5 * mb as usize], 3 * mb).unwrap();
        f.sync_all().unwrap();
        let fd = f.as_fd();
        let Some(first) = range_allocated(fd, 0, 2 * mb) else {
            return; // no FIEMAP here
        };
        assert!(first, "written range");
        assert_eq!(range_allocated(fd, 3 * mb, 8 * mb), Some(true));
        assert_eq!(range_allocated(fd, 0, 4 * mb), Some(false), "hole inside");
        assert_eq!(range_allocated(fd, 2 * mb, 3 * mb), Some(false), "all hole");
        assert_eq!(
            range_allocated(fd, 4 * mb, 9 * mb),
            Some(false),
            "past the end"
        );
    }

    /// A fully allocated range in a thousand extents (4 KiB blocks allocated from the last
    /// to the first: each its own extent on ext4) is seen as allocated, not given up on.
    #[test]
    fn range_allocated_reads_every_extent_of_a_fragmented_range() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("img")).unwrap();
        let (page, pages) = (4096u64, 1024u64);
        let fd = f.as_fd();
        for p in (0..pages).rev() {
            if fallocate(fd, 0, p * page, page).is_err() {
                return; // no fallocate here
            }
        }
        if range_allocated(fd, 0, page).is_none() {
            return; // no FIEMAP here
        }
        assert_eq!(range_allocated(fd, 0, pages * page), Some(true));
        f.set_len((pages + 1) * page).unwrap();
        assert_eq!(
            range_allocated(fd, 0, (pages + 1) * page),
            Some(false),
            "a hole after the extents"
        );
    }
}

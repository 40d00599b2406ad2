//! Thin, safe wrappers over the `*at()` system calls the passthrough core needs.
//!
//! Every backing access goes through a directory descriptor (never a path through the mount
//! point, which the FUSE mount shadows when mounted in place).

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// Converts a name to a C string; names with NUL bytes are invalid.
pub fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `/proc/self/fd/N`: reaches the object behind an `O_PATH` descriptor for calls that have
/// no descriptor form (reopen, chmod of O_PATH fds, xattrs).
pub fn proc_path(fd: RawFd) -> CString {
    // A formatted integer never holds NUL.
    CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default()
}

/// `openat(dir, name, flags, mode)`.
pub fn openat(dir: RawFd, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: valid C string, plain syscall.
    let fd = check(unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the object behind an `O_PATH` descriptor with real access `flags`.
pub fn reopen(fd: RawFd, flags: i32) -> io::Result<File> {
    let p = proc_path(fd);
    let flags = (flags & !(libc::O_NOFOLLOW | libc::O_CREAT | libc::O_EXCL)) | libc::O_CLOEXEC;
    // SAFETY: valid C string, plain syscall.
    let nfd = check(unsafe { libc::open(p.as_ptr(), flags) })?;
    // SAFETY: fresh descriptor owned by us.
    Ok(unsafe { File::from_raw_fd(nfd) })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; an empty name stats `dir` itself.
pub fn statat(dir: RawFd, name: &OsStr) -> io::Result<libc::stat> {
    let c = cstr(name)?;
    let mut flags = libc::AT_SYMLINK_NOFOLLOW;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    check(unsafe { libc::fstatat(dir, c.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

/// `fstat` of a descriptor.
pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    statat(fd, OsStr::new(""))
}

pub fn mkdirat(dir: RawFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    check(unsafe { libc::mkdirat(dir, c.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: RawFd, name: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    check(unsafe { libc::mknodat(dir, c.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlinkat(target: &OsStr, dir: RawFd, name: &OsStr) -> io::Result<()> {
    let t = cstr(target)?;
    let c = cstr(name)?;
    // SAFETY: valid C strings.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir, c.as_ptr()) }).map(drop)
}

pub fn unlinkat(dir: RawFd, name: &OsStr, flags: i32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    check(unsafe { libc::unlinkat(dir, c.as_ptr(), flags) }).map(drop)
}

pub fn renameat2(
    olddir: RawFd,
    old: &OsStr,
    newdir: RawFd,
    new: &OsStr,
    flags: u32,
) -> io::Result<()> {
    let o = cstr(old)?;
    let n = cstr(new)?;
    // SAFETY: valid C strings.
    check(unsafe { libc::renameat2(olddir, o.as_ptr(), newdir, n.as_ptr(), flags) }).map(drop)
}

/// Hard link of the object behind an `O_PATH` descriptor.
pub fn linkat_fd(fd: RawFd, newdir: RawFd, new: &OsStr) -> io::Result<()> {
    let empty = c"";
    let n = cstr(new)?;
    // SAFETY: valid C strings; AT_EMPTY_PATH links the fd itself (needs CAP_DAC_READ_SEARCH).
    let r = unsafe { libc::linkat(fd, empty.as_ptr(), newdir, n.as_ptr(), libc::AT_EMPTY_PATH) };
    if r == 0 {
        return Ok(());
    }
    // Fall back to the /proc path form, which works without the capability.
    let p = proc_path(fd);
    // SAFETY: valid C strings.
    check(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            p.as_ptr(),
            newdir,
            n.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

pub fn readlinkat(fd: RawFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buffer is valid for its length.
    let n = check_size(unsafe {
        libc::readlinkat(fd, c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// chown of the object behind `fd` (or of `name` in `fd` when given), not following links.
pub fn fchownat(fd: RawFd, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let u = uid.unwrap_or(u32::MAX);
    let g = gid.unwrap_or(u32::MAX);
    // SAFETY: valid empty C string; AT_EMPTY_PATH works on O_PATH fds.
    check(unsafe {
        libc::fchownat(
            fd,
            c"".as_ptr(),
            u,
            g,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub fn chmod_fd(fd: RawFd, mode: u32) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: valid C string.
    check(unsafe { libc::chmod(p.as_ptr(), mode) }).map(drop)
}

/// utimensat on the object behind an `O_PATH` fd; `None` leaves a time unchanged.
pub fn utimens_fd(
    fd: RawFd,
    is_symlink: bool,
    atime: Option<libc::timespec>,
    mtime: Option<libc::timespec>,
) -> io::Result<()> {
    let omit = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    };
    let times = [atime.unwrap_or(omit), mtime.unwrap_or(omit)];
    if is_symlink {
        // SAFETY: valid pointers; AT_EMPTY_PATH acts on the fd itself.
        return check(unsafe {
            libc::utimensat(
                fd,
                c"".as_ptr(),
                times.as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop);
    }
    let p = proc_path(fd);
    // SAFETY: valid pointers.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

pub fn pread(fd: RawFd, buf: &mut [u8], off: u64) -> io::Result<usize> {
    // SAFETY: buffer valid for its length.
    check_size(unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), off as i64) })
}

/// Reads up to `len` bytes at `off` (short only at end of file).
pub fn pread_full(fd: RawFd, len: usize, off: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match pread(fd, &mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Writes all of `data` at `off`.
pub fn pwrite_all(fd: RawFd, data: &[u8], off: u64) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: buffer valid for its length.
        let r = unsafe {
            libc::pwrite(
                fd,
                data[done..].as_ptr().cast(),
                data.len() - done,
                (off + done as u64) as i64,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        done += r as usize;
    }
    Ok(())
}

pub fn ftruncate(fd: RawFd, size: u64) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::ftruncate(fd, size as i64) }).map(drop)
}

pub fn fallocate(fd: RawFd, mode: i32, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::fallocate(fd, mode, off as i64, len as i64) }).map(drop)
}

pub fn fsync(fd: RawFd, datasync: bool) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe {
        if datasync {
            libc::fdatasync(fd)
        } else {
            libc::fsync(fd)
        }
    })
    .map(drop)
}

pub fn lseek(fd: RawFd, off: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: plain syscall.
    let r = unsafe { libc::lseek(fd, off, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub fn copy_file_range(
    fd_in: RawFd,
    off_in: u64,
    fd_out: RawFd,
    off_out: u64,
    len: usize,
) -> io::Result<usize> {
    let mut oi = off_in as i64;
    let mut oo = off_out as i64;
    // SAFETY: offsets are valid pointers.
    check_size(unsafe { libc::copy_file_range(fd_in, &mut oi, fd_out, &mut oo, len, 0) } as isize)
}

pub fn fstatvfs(fd: RawFd) -> io::Result<libc::statvfs> {
    // SAFETY: zeroed statvfs is a valid out-buffer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    check(unsafe { libc::fstatvfs(fd, &mut st) })?;
    Ok(st)
}

pub fn access_fd(fd: RawFd, mask: i32) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: valid C string.
    check(unsafe { libc::faccessat(libc::AT_FDCWD, p.as_ptr(), mask, 0) }).map(drop)
}

/// Reads every entry name and type of an open directory (`.` and `..` included).
pub fn read_dir_entries(fd: RawFd) -> io::Result<Vec<(u64, u8, Vec<u8>)>> {
    // Duplicate: fdopendir takes ownership and closedir closes it.
    // SAFETY: plain syscall.
    let dup = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: dup is a valid directory fd we own.
    let dir = unsafe { libc::fdopendir(dup) };
    if dir.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: dup still ours when fdopendir failed.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    // SAFETY: dir is valid.
    unsafe { libc::rewinddir(dir) };
    let mut out = Vec::new();
    loop {
        // SAFETY: dir valid; readdir returns null at end.
        let ent = unsafe { libc::readdir64(dir) };
        if ent.is_null() {
            break;
        }
        // SAFETY: ent points to a valid dirent until the next readdir call.
        let (ino, ty, name) = unsafe {
            let e = &*ent;
            let name = std::ffi::CStr::from_ptr(e.d_name.as_ptr())
                .to_bytes()
                .to_vec();
            (e.d_ino, e.d_type, name)
        };
        out.push((ino, ty, name));
    }
    // SAFETY: dir valid, closes dup.
    unsafe { libc::closedir(dir) };
    Ok(out)
}

pub fn getxattr(fd: RawFd, name: &OsStr, size: usize) -> io::Result<Vec<u8>> {
    let p = proc_path(fd);
    let n = cstr(name)?;
    let mut buf = vec![0u8; size];
    // SAFETY: valid pointers; size 0 queries the length.
    let r = check_size(unsafe {
        libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size)
    })?;
    if size == 0 {
        return Ok(vec![0u8; r]);
    }
    buf.truncate(r);
    Ok(buf)
}

pub fn setxattr(fd: RawFd, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    let p = proc_path(fd);
    let n = cstr(name)?;
    // SAFETY: valid pointers.
    check(unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

pub fn listxattr(fd: RawFd, size: usize) -> io::Result<Vec<u8>> {
    let p = proc_path(fd);
    let mut buf = vec![0u8; size];
    // SAFETY: valid pointers.
    let r = check_size(unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), size) })?;
    if size == 0 {
        return Ok(vec![0u8; r]);
    }
    buf.truncate(r);
    Ok(buf)
}

pub fn removexattr(fd: RawFd, name: &OsStr) -> io::Result<()> {
    let p = proc_path(fd);
    let n = cstr(name)?;
    // SAFETY: valid pointers.
    check(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }).map(drop)
}

/// A kernel file handle (`name_to_handle_at`): names an object so that it can be opened
/// again later without holding a descriptor for it meanwhile.
#[repr(C)]
#[derive(Clone)]
pub struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 128],
}

/// The handle of the object behind `fd`, and the id of the mount it is on.
pub fn file_handle(fd: RawFd) -> io::Result<(FileHandle, i32)> {
    let mut h = FileHandle {
        handle_bytes: 128,
        handle_type: 0,
        f_handle: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `h` is a file_handle header followed by 128 bytes of room, as handle_bytes says.
    check(unsafe {
        libc::name_to_handle_at(
            fd,
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
pub fn open_by_handle(mount_fd: RawFd, h: &FileHandle, flags: i32) -> io::Result<OwnedFd> {
    let mut h = h.clone();
    // SAFETY: a handle filled by name_to_handle_at; plain syscall.
    let fd = check(unsafe {
        libc::open_by_handle_at(
            mount_fd,
            (&mut h as *mut FileHandle).cast::<libc::file_handle>(),
            flags | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh descriptor owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

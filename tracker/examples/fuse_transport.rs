//! fuse_transport: a minimal FUSE server written from the kernel protocol (no fuser), to
//! measure what the transport costs: `/dev/fuse` read/writev against FUSE over io_uring
//! (Linux 6.14+, `/sys/module/fuse/parameters/enable_uring`).
//!
//! It mounts one root directory holding one regular file, `disk`, served by
//! `pread`/`pwrite`/`fsync` on a backing file: no logging, no tracking.
//!
//! ```text
//! fuse_transport --backing FILE --transport dev   --threads N MOUNTPOINT
//! fuse_transport --backing FILE --transport uring --depth D   MOUNTPOINT
//! ```
//!
//! Runs as root (mount(2)). SIGINT/SIGTERM unmount and exit; an unmount from outside ends
//! it too. SIGUSR1 prints the request counters to stderr:
//! `hrlprobe-stats dev=N uring=N forget=N`; the same line is printed at exit.
//!
//! Wire layout over io_uring (what the kernel does, fs/fuse/dev_uring.c): each ring entry
//! has a header buffer of 128 + 128 + 32 bytes (`fuse_in_header` / `fuse_out_header`, the
//! op's first argument struct, `fuse_uring_ent_in_out`) and a payload buffer holding every
//! other argument. Ops whose first argument is not a struct (LOOKUP's name, STATFS) have an
//! empty op area and everything in the payload.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

// Opcodes (include/uapi/linux/fuse.h).
const LOOKUP: u32 = 1;
const FORGET: u32 = 2;
const GETATTR: u32 = 3;
const SETATTR: u32 = 4;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const FSYNC: u32 = 20;
const GETXATTR: u32 = 22;
const LISTXATTR: u32 = 23;
const FLUSH: u32 = 25;
const INIT: u32 = 26;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const RELEASEDIR: u32 = 29;
const INTERRUPT: u32 = 36;
const DESTROY: u32 = 38;
const BATCH_FORGET: u32 = 42;

// INIT flags (64 bits: `flags` is the low word, `flags2` the high one with FUSE_INIT_EXT).
const FUSE_ASYNC_READ: u64 = 1 << 0;
const FUSE_BIG_WRITES: u64 = 1 << 5;
const FUSE_ASYNC_DIO: u64 = 1 << 15;
const FUSE_PARALLEL_DIROPS: u64 = 1 << 18;
const FUSE_MAX_PAGES: u64 = 1 << 22;
const FUSE_INIT_EXT: u64 = 1 << 30;
const FUSE_DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;
const FUSE_OVER_IO_URING: u64 = 1 << 41;

const FOPEN_DIRECT_IO: u32 = 1 << 0;
const FOPEN_PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
const FATTR_SIZE: u32 = 1 << 3;
const FSYNC_FDATASYNC: u32 = 1;

/// `_IOR(229, 0, uint32_t)`.
const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;

const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;
/// The io_uring entry's header buffer: in_out (128), op_in (128), ent_in_out (32).
const URING_HEADER_LEN: usize = 128 + 128 + 32;
const URING_OP_IN: usize = 128;
const URING_ENT_IN_OUT: usize = 256;

const ROOT_INO: u64 = 1;
const DISK_INO: u64 = 2;
const DISK_NAME: &[u8] = b"disk";

const MAX_WRITE: u32 = 1 << 20;
const IN_HEADER_LEN: usize = 40;
const OUT_HEADER_LEN: usize = 16;
/// A `/dev/fuse` read must fit the largest write: header + fuse_write_in + max_write.
const DEV_BUF_LEN: usize = MAX_WRITE as usize + 4096;
/// Reply of anything but READ on io_uring, built aside then copied into the payload.
const SMALL_REPLY_LEN: usize = 4096;

static DEV_REQUESTS: AtomicU64 = AtomicU64::new(0);
static URING_REQUESTS: AtomicU64 = AtomicU64::new(0);
static FORGETS: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// Threads reading clones of /dev/fuse (fuser's model).
    Dev,
    /// FUSE over io_uring: one thread per ring entry, pinned to its queue's CPU.
    Uring,
}

/// Minimal raw FUSE server exposing one file, to measure the FUSE transport.
#[derive(Parser, Debug)]
#[command(name = "fuse_transport")]
struct Args {
    /// Backing file served as `MOUNTPOINT/disk`.
    #[arg(long)]
    backing: PathBuf,
    /// How requests travel between the kernel and this server.
    #[arg(long, value_enum, default_value = "dev")]
    transport: Transport,
    /// Readers of /dev/fuse (dev transport).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Ring entries per queue (uring transport); one thread each.
    #[arg(long, default_value_t = 2)]
    depth: usize,
    /// Register only the first K queues (uring transport), to see what the kernel does
    /// then: on Linux 6.18 every request waits (in fuse_get_req) until every queue has an
    /// entry, so the mount hangs. For that experiment only.
    #[arg(long)]
    register_queues: Option<usize>,
    /// Set up each entry's ring with IORING_SETUP_DEFER_TASKRUN (completions run only
    /// when the entry's thread waits for them).
    #[arg(long)]
    defer_taskrun: bool,
    /// Directory to mount on.
    mountpoint: PathBuf,
}

/// The one request header (`fuse_in_header`) fields the server uses.
#[derive(Clone, Copy, Debug)]
struct InHeader {
    opcode: u32,
    unique: u64,
    nodeid: u64,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off + 4)?;
    Some(u32::from_ne_bytes(s.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off + 8)?;
    Some(u64::from_ne_bytes(s.try_into().ok()?))
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn parse_in_header(b: &[u8]) -> Option<InHeader> {
    Some(InHeader {
        opcode: u32_at(b, 4)?,
        unique: u64_at(b, 8)?,
        nodeid: u64_at(b, 16)?,
    })
}

/// Size of the op's first argument struct: what the kernel puts in the ring's op area
/// (and in front of the other arguments on /dev/fuse).
fn arg0_len(opcode: u32) -> usize {
    match opcode {
        GETATTR | FSYNC => 16,
        SETATTR => 88,
        OPEN | OPENDIR | GETXATTR | LISTXATTR | FORGET | BATCH_FORGET | INTERRUPT => 8,
        READ | WRITE | READDIR => 40,
        FLUSH | RELEASE | RELEASEDIR => 24,
        _ => 0,
    }
}

/// What a request gets back.
enum Outcome {
    /// A reply whose body is the first N bytes of the output buffer.
    Reply(usize),
    /// An error reply (positive errno).
    Error(i32),
    /// No reply (FORGET, BATCH_FORGET, INTERRUPT).
    None,
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

struct Server {
    backing: File,
    uid: u32,
    gid: u32,
}

impl Server {
    /// Writes a `fuse_attr` (88 bytes) at `out[off..]`.
    fn put_attr(&self, out: &mut [u8], off: usize, ino: u64) -> Result<(), i32> {
        let a = &mut out[off..off + 88];
        a.fill(0);
        let (size, blocks, mode, nlink, atime, mtime, ctime) = if ino == DISK_INO {
            let m = self.backing.metadata().map_err(|e| errno_of(&e))?;
            let mode = libc::S_IFREG | 0o644;
            let times = ((m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec()));
            (
                m.size(),
                m.blocks(),
                mode,
                1,
                times.0,
                times.1,
                (m.ctime(), m.ctime_nsec()),
            )
        } else if ino == ROOT_INO {
            (0, 0, libc::S_IFDIR | 0o755, 2, (0, 0), (0, 0), (0, 0))
        } else {
            return Err(libc::ENOENT);
        };
        put_u64(a, 0, ino);
        put_u64(a, 8, size);
        put_u64(a, 16, blocks);
        put_u64(a, 24, atime.0 as u64);
        put_u64(a, 32, mtime.0 as u64);
        put_u64(a, 40, ctime.0 as u64);
        put_u32(a, 48, atime.1 as u32);
        put_u32(a, 52, mtime.1 as u32);
        put_u32(a, 56, ctime.1 as u32);
        put_u32(a, 60, mode);
        put_u32(a, 64, nlink);
        put_u32(a, 68, self.uid);
        put_u32(a, 72, self.gid);
        put_u32(a, 80, 4096);
        Ok(())
    }

    /// `fuse_attr_out`: attr_valid (1 s), then the attributes.
    fn attr_out(&self, out: &mut [u8], ino: u64) -> Outcome {
        out[..16].fill(0);
        put_u64(out, 0, 1);
        match self.put_attr(out, 16, ino) {
            Ok(()) => Outcome::Reply(104),
            Err(e) => Outcome::Error(e),
        }
    }

    /// Serves one request. `arg0` is the op's first argument struct, `rest` the other
    /// arguments (a name, write data), `out` receives the reply body.
    fn handle(&self, h: &InHeader, arg0: &[u8], rest: &[u8], out: &mut [u8]) -> Outcome {
        let inval = Outcome::Error(libc::EINVAL);
        match h.opcode {
            LOOKUP => {
                if h.nodeid != ROOT_INO {
                    return Outcome::Error(libc::ENOENT);
                }
                let name = rest.split(|&b| b == 0).next().unwrap_or(rest);
                if name != DISK_NAME {
                    return Outcome::Error(libc::ENOENT);
                }
                // fuse_entry_out: nodeid, generation, entry_valid, attr_valid, their nsec.
                out[..40].fill(0);
                put_u64(out, 0, DISK_INO);
                put_u64(out, 16, 1);
                put_u64(out, 24, 1);
                match self.put_attr(out, 40, DISK_INO) {
                    Ok(()) => Outcome::Reply(128),
                    Err(e) => Outcome::Error(e),
                }
            }
            GETATTR => self.attr_out(out, h.nodeid),
            SETATTR => {
                let Some(valid) = u32_at(arg0, 0) else {
                    return inval;
                };
                if valid & FATTR_SIZE != 0 {
                    if h.nodeid != DISK_INO {
                        return Outcome::Error(libc::EISDIR);
                    }
                    let Some(size) = u64_at(arg0, 16) else {
                        return inval;
                    };
                    if let Err(e) = self.backing.set_len(size) {
                        return Outcome::Error(errno_of(&e));
                    }
                }
                // Times, mode, owner: accepted and not kept.
                self.attr_out(out, h.nodeid)
            }
            OPEN => {
                if h.nodeid != DISK_INO {
                    return Outcome::Error(libc::EISDIR);
                }
                // fuse_open_out: fh, open_flags, backing_id. Direct I/O as the tracker
                // does for disks: every write reaches the server.
                out[..16].fill(0);
                put_u32(out, 8, FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES);
                Outcome::Reply(16)
            }
            OPENDIR => {
                if h.nodeid != ROOT_INO {
                    return Outcome::Error(libc::ENOTDIR);
                }
                out[..16].fill(0);
                Outcome::Reply(16)
            }
            READ => self.read(h, arg0, out),
            WRITE => {
                let (Some(offset), Some(size)) = (u64_at(arg0, 8), u32_at(arg0, 16)) else {
                    return inval;
                };
                let Some(data) = rest.get(..size as usize) else {
                    return inval;
                };
                if let Err(e) = self.backing.write_all_at(data, offset) {
                    return Outcome::Error(errno_of(&e));
                }
                // fuse_write_out: size, padding.
                out[..8].fill(0);
                put_u32(out, 0, size);
                Outcome::Reply(8)
            }
            FSYNC => {
                let Some(flags) = u32_at(arg0, 8) else {
                    return inval;
                };
                let r = if flags & FSYNC_FDATASYNC != 0 {
                    self.backing.sync_data()
                } else {
                    self.backing.sync_all()
                };
                match r {
                    Ok(()) => Outcome::Reply(0),
                    Err(e) => Outcome::Error(errno_of(&e)),
                }
            }
            FLUSH | RELEASE | RELEASEDIR | DESTROY => Outcome::Reply(0),
            READDIR => {
                let (Some(offset), Some(size)) = (u64_at(arg0, 8), u32_at(arg0, 16)) else {
                    return inval;
                };
                let entries: [(u64, &[u8], u32); 3] = [
                    (ROOT_INO, b".", libc::DT_DIR.into()),
                    (ROOT_INO, b"..", libc::DT_DIR.into()),
                    (DISK_INO, DISK_NAME, libc::DT_REG.into()),
                ];
                let limit = (size as usize).min(out.len());
                let mut len = 0;
                for (i, (ino, name, kind)) in entries.iter().enumerate().skip(offset as usize) {
                    // fuse_dirent: ino, off, namelen, type, name padded to 8.
                    let rec = (24 + name.len()).div_ceil(8) * 8;
                    if len + rec > limit {
                        break;
                    }
                    let d = &mut out[len..len + rec];
                    d.fill(0);
                    put_u64(d, 0, *ino);
                    put_u64(d, 8, i as u64 + 1);
                    put_u32(d, 16, name.len() as u32);
                    put_u32(d, 20, *kind);
                    d[24..24 + name.len()].copy_from_slice(name);
                    len += rec;
                }
                Outcome::Reply(len)
            }
            STATFS => {
                let st = match rustix::fs::fstatvfs(&self.backing) {
                    Ok(st) => st,
                    Err(e) => return Outcome::Error(e.raw_os_error()),
                };
                // fuse_kstatfs: blocks, bfree, bavail, files, ffree, bsize, namelen, frsize.
                out[..80].fill(0);
                put_u64(out, 0, st.f_blocks);
                put_u64(out, 8, st.f_bfree);
                put_u64(out, 16, st.f_bavail);
                put_u64(out, 24, st.f_files);
                put_u64(out, 32, st.f_ffree);
                put_u32(out, 40, st.f_bsize as u32);
                put_u32(out, 44, 255);
                put_u32(out, 48, st.f_frsize as u32);
                Outcome::Reply(80)
            }
            FORGET | BATCH_FORGET | INTERRUPT => {
                FORGETS.fetch_add(1, Ordering::Relaxed);
                Outcome::None
            }
            GETXATTR | LISTXATTR => Outcome::Error(libc::ENOSYS),
            _ => Outcome::Error(libc::ENOSYS),
        }
    }

    /// READ: `pread` straight into the reply buffer (the ring's payload buffer).
    fn read(&self, h: &InHeader, arg0: &[u8], out: &mut [u8]) -> Outcome {
        if h.nodeid != DISK_INO {
            return Outcome::Error(libc::EISDIR);
        }
        let (Some(offset), Some(size)) = (u64_at(arg0, 8), u32_at(arg0, 16)) else {
            return Outcome::Error(libc::EINVAL);
        };
        let want = (size as usize).min(out.len());
        let mut done = 0;
        while done < want {
            match self
                .backing
                .read_at(&mut out[done..want], offset + done as u64)
            {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Outcome::Error(errno_of(&e)),
            }
        }
        Outcome::Reply(done)
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Writes one reply to /dev/fuse: out header + body in one `writev`.
fn write_reply(fd: RawFd, unique: u64, outcome: &Outcome, body: &[u8]) -> io::Result<()> {
    let (error, len) = match *outcome {
        Outcome::Reply(n) => (0, n),
        Outcome::Error(e) => (-e, 0),
        Outcome::None => return Ok(()),
    };
    let mut hdr = [0u8; OUT_HEADER_LEN];
    put_u32(&mut hdr, 0, (OUT_HEADER_LEN + len) as u32);
    put_u32(&mut hdr, 4, error as u32);
    put_u64(&mut hdr, 8, unique);
    let iov = [
        libc::iovec {
            iov_base: hdr.as_ptr() as *mut _,
            iov_len: hdr.len(),
        },
        libc::iovec {
            iov_base: body.as_ptr() as *mut _,
            iov_len: len,
        },
    ];
    // SAFETY: both iovecs point into live buffers of the stated lengths.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), 2) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One reader of /dev/fuse: until the connection goes away (ENODEV).
fn dev_loop(server: &Server, fd: RawFd) {
    let mut rbuf = vec![0u8; DEV_BUF_LEN];
    let mut obuf = vec![0u8; DEV_BUF_LEN];
    loop {
        let n = match read_fd(fd, &mut rbuf) {
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                // The request was interrupted before we read it; a signal.
                Some(libc::ENOENT) | Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                Some(libc::ENODEV) => return,
                _ => {
                    eprintln!("fuse_transport: read /dev/fuse: {e}");
                    return;
                }
            },
        };
        let req = &rbuf[..n];
        let Some(h) = parse_in_header(req) else {
            eprintln!("fuse_transport: short request ({n} bytes)");
            continue;
        };
        let body = &req[IN_HEADER_LEN.min(n)..];
        let split = arg0_len(h.opcode).min(body.len());
        let (arg0, rest) = body.split_at(split);
        if !matches!(h.opcode, FORGET | BATCH_FORGET | INTERRUPT) {
            DEV_REQUESTS.fetch_add(1, Ordering::Relaxed);
        }
        let outcome = server.handle(&h, arg0, rest, &mut obuf);
        if let Err(e) = write_reply(fd, h.unique, &outcome, &obuf) {
            match e.raw_os_error() {
                // The request was interrupted and is gone.
                Some(libc::ENOENT) => {}
                Some(libc::ENODEV) => return,
                _ => eprintln!("fuse_transport: reply to opcode {}: {e}", h.opcode),
            }
        }
    }
}

/// Sets the calling thread's CPU affinity to one CPU (best effort: an offline CPU fails).
fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET bounds-checks against its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!(
                "fuse_transport: pin to CPU {cpu}: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// The kernel's `nr_cpu_ids`: one past the highest possible CPU.
fn possible_cpus() -> Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .context("read /sys/devices/system/cpu/possible")?;
    let last = s
        .trim()
        .split(',')
        .filter_map(|r| r.rsplit('-').next())
        .filter_map(|n| n.parse::<usize>().ok())
        .max()
        .context("parse /sys/devices/system/cpu/possible")?;
    Ok(last + 1)
}

/// `fuse_uring_cmd_req` in the SQE's command area: flags, commit_id, qid.
fn uring_cmd(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    cmd
}

/// REGISTER needs `sqe->len` = 2 (the iovec count), which the io-uring crate's
/// `UringCmd80` does not set: patch the 32-bit `len` field at byte 24 of the SQE.
fn with_sqe_len(entry: io_uring::squeue::Entry128, len: u32) -> io_uring::squeue::Entry128 {
    // SAFETY: Entry128 is repr(C), 128 bytes (an io_uring_sqe and 64 command bytes),
    // plain data; any byte pattern is a valid value.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(entry) };
    raw[24..28].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute(raw) }
}

type Ring = io_uring::IoUring<io_uring::squeue::Entry128, io_uring::cqueue::Entry>;

/// Submits one SQE and waits for its completion; returns the CQE's result.
fn submit_one(ring: &mut Ring, sqe: &io_uring::squeue::Entry128) -> io::Result<i32> {
    // SAFETY: the buffers the SQE points to (header, payload, iovecs) outlive the
    // command: they belong to the entry thread, which waits for the completion.
    unsafe {
        ring.submission()
            .push(sqe)
            .map_err(|_| io::Error::other("submission queue full"))?;
    }
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        if let Some(cqe) = ring.completion().next() {
            return Ok(cqe.result());
        }
    }
}

/// One ring entry served by one thread pinned to the queue's CPU: register, then
/// handle a request and commit-and-fetch the next, synchronously, until teardown.
fn uring_entry(server: &Server, devfd: RawFd, qid: u16, defer: bool) -> Result<()> {
    pin_to_cpu(qid as usize);
    let mut builder = io_uring::IoUring::builder();
    builder.setup_single_issuer();
    if defer {
        builder.setup_defer_taskrun();
    }
    let mut ring: Ring = builder.build(2).context("io_uring_setup (SQE128)")?;
    let mut header = vec![0u8; URING_HEADER_LEN];
    let mut payload = vec![0u8; MAX_WRITE as usize];
    let mut small = vec![0u8; SMALL_REPLY_LEN];
    let iov = [
        libc::iovec {
            iov_base: header.as_mut_ptr().cast(),
            iov_len: header.len(),
        },
        libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        },
    ];
    let fd = io_uring::types::Fd(devfd);
    let register = with_sqe_len(
        io_uring::opcode::UringCmd80::new(fd, FUSE_IO_URING_CMD_REGISTER)
            .cmd(uring_cmd(0, qid))
            .addr(Some(iov.as_ptr() as u64))
            .build(),
        2,
    );
    let started = Instant::now();
    // REGISTER completes only when the kernel hands this entry a request.
    let mut res = loop {
        let r = submit_one(&mut ring, &register).context("submit REGISTER")?;
        // EAGAIN: the connection is not initialised yet (the INIT reply is processed).
        if r == -libc::EAGAIN && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        break r;
    };
    loop {
        if res < 0 {
            let e = io::Error::from_raw_os_error(-res);
            return match -res {
                // Teardown at unmount or abort.
                libc::ENOTCONN | libc::ECANCELED | libc::ENODEV | libc::ECONNABORTED => Ok(()),
                _ => Err(e).context(format!("queue {qid}: ring command")),
            };
        }
        URING_REQUESTS.fetch_add(1, Ordering::Relaxed);
        let h = parse_in_header(&header).context("ring request header")?;
        let commit_id = u64_at(&header, URING_ENT_IN_OUT + 8).context("ent_in_out")?;
        let payload_sz = u32_at(&header, URING_ENT_IN_OUT + 16).context("ent_in_out")? as usize;
        let arg0_end = URING_OP_IN + arg0_len(h.opcode);
        let outcome = if h.opcode == READ {
            server.read(&h, &header[URING_OP_IN..arg0_end], &mut payload)
        } else {
            let rest = &payload[..payload_sz.min(payload.len())];
            let o = server.handle(&h, &header[URING_OP_IN..arg0_end], rest, &mut small);
            if let Outcome::Reply(n) = o {
                payload[..n].copy_from_slice(&small[..n]);
            }
            o
        };
        let (error, len) = match outcome {
            Outcome::Reply(n) => (0i32, n),
            Outcome::Error(e) => (-e, 0),
            // Forgets and interrupts do not come over the ring; answer anything else.
            Outcome::None => (0, 0),
        };
        header[..OUT_HEADER_LEN].fill(0);
        put_u32(&mut header, 0, (OUT_HEADER_LEN + len) as u32);
        put_u32(&mut header, 4, error as u32);
        put_u64(&mut header, 8, h.unique);
        put_u32(&mut header, URING_ENT_IN_OUT + 16, len as u32);
        let commit = io_uring::opcode::UringCmd80::new(fd, FUSE_IO_URING_CMD_COMMIT_AND_FETCH)
            .cmd(uring_cmd(commit_id, qid))
            .build();
        res = submit_one(&mut ring, &commit).context("submit COMMIT_AND_FETCH")?;
    }
}

fn open_dev_fuse() -> Result<OwnedFd> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .context("open /dev/fuse")?;
    Ok(OwnedFd::from(f))
}

/// A clone of the session's /dev/fuse descriptor (its own queue of replies).
fn clone_dev_fuse(master: RawFd) -> Result<OwnedFd> {
    let fd = open_dev_fuse()?;
    let mut m = master as u32;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the session's fd) from the pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FUSE_DEV_IOC_CLONE, &mut m) };
    if r != 0 {
        return Err(io::Error::last_os_error()).context("FUSE_DEV_IOC_CLONE");
    }
    Ok(fd)
}

fn mount(mnt: &std::path::Path, fd: RawFd) -> Result<()> {
    let target = std::ffi::CString::new(mnt.as_os_str().as_bytes())?;
    let opts = std::ffi::CString::new(format!(
        "fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other"
    ))?;
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            c"hrlprobe".as_ptr(),
            target.as_ptr(),
            c"fuse.hrlprobe".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error()).context(format!("mount {}", mnt.display()));
    }
    Ok(())
}

fn unmount(mnt: &std::path::Path) {
    let Ok(target) = std::ffi::CString::new(mnt.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: target is a NUL-terminated string.
    let r = unsafe { libc::umount2(target.as_ptr(), 0) };
    if r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) {
        // SAFETY: as above.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Reads INIT from the session descriptor and answers it.
fn do_init(fd: RawFd, transport: Transport) -> Result<()> {
    let mut buf = vec![0u8; DEV_BUF_LEN];
    let n = read_fd(fd, &mut buf).context("read INIT")?;
    let req = &buf[..n];
    let h = parse_in_header(req).context("short INIT")?;
    if h.opcode != INIT {
        bail!("first request is opcode {}, not INIT", h.opcode);
    }
    let body = &req[IN_HEADER_LEN..];
    let major = u32_at(body, 0).context("INIT major")?;
    let minor = u32_at(body, 4).context("INIT minor")?;
    let max_readahead = u32_at(body, 8).context("INIT max_readahead")?;
    let mut kflags = u64::from(u32_at(body, 12).context("INIT flags")?);
    if kflags & FUSE_INIT_EXT != 0 {
        kflags |= u64::from(u32_at(body, 16).unwrap_or(0)) << 32;
    }
    if major != 7 || minor < 36 {
        bail!("kernel FUSE protocol {major}.{minor}: need 7.36+");
    }
    let mut want = FUSE_ASYNC_READ
        | FUSE_BIG_WRITES
        | FUSE_ASYNC_DIO
        | FUSE_PARALLEL_DIROPS
        | FUSE_MAX_PAGES
        | FUSE_INIT_EXT
        | FUSE_DIRECT_IO_ALLOW_MMAP;
    if transport == Transport::Uring {
        if kflags & FUSE_OVER_IO_URING == 0 {
            bail!(
                "the kernel does not offer FUSE_OVER_IO_URING \
                 (/sys/module/fuse/parameters/enable_uring is N, or Linux < 6.14)"
            );
        }
        want |= FUSE_OVER_IO_URING;
    }
    let flags = kflags & want;
    // fuse_init_out (64 bytes).
    let mut out = [0u8; 64];
    put_u32(&mut out, 0, 7);
    put_u32(&mut out, 4, minor.min(42));
    put_u32(&mut out, 8, max_readahead);
    put_u32(&mut out, 12, flags as u32);
    out[16..18].copy_from_slice(&64u16.to_ne_bytes()); // max_background, as the tracker
    out[18..20].copy_from_slice(&48u16.to_ne_bytes()); // congestion_threshold
    put_u32(&mut out, 20, MAX_WRITE);
    put_u32(&mut out, 24, 1); // time_gran
    out[28..30].copy_from_slice(&((MAX_WRITE / 4096) as u16).to_ne_bytes()); // max_pages
    put_u32(&mut out, 32, (flags >> 32) as u32);
    write_reply(fd, h.unique, &Outcome::Reply(out.len()), &out).context("reply INIT")?;
    Ok(())
}

fn print_stats() {
    eprintln!(
        "hrlprobe-stats dev={} uring={} forget={}",
        DEV_REQUESTS.load(Ordering::Relaxed),
        URING_REQUESTS.load(Ordering::Relaxed),
        FORGETS.load(Ordering::Relaxed)
    );
}

fn main() -> Result<()> {
    let args = Args::parse();
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&args.backing)
        .with_context(|| format!("open {}", args.backing.display()))?;
    let server = Arc::new(Server {
        backing,
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
    });

    // Signals go to the signal thread only.
    use nix::sys::signal::{SigSet, Signal};
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    sigs.add(Signal::SIGUSR1);
    sigs.thread_block().context("block signals")?;

    let master = open_dev_fuse()?;
    mount(&args.mountpoint, master.as_raw_fd())?;
    if let Err(e) = do_init(master.as_raw_fd(), args.transport) {
        unmount(&args.mountpoint);
        return Err(e);
    }

    let mnt = args.mountpoint.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match sigs.wait() {
                Ok(Signal::SIGUSR1) => print_stats(),
                Ok(_) => {
                    unmount(&mnt);
                    // A lazy unmount leaves the connection up while a request is stuck
                    // in it (a caller holds the file system): exit, which closes the
                    // device descriptors and so aborts the connection.
                    std::thread::sleep(Duration::from_secs(2));
                    print_stats();
                    std::process::exit(0);
                }
                Err(_) => {}
            }
        })
        .context("spawn signal thread")?;

    let master = Arc::new(master);
    let mut dev_threads = Vec::new();
    let mut ring_threads = Vec::new();
    match args.transport {
        Transport::Dev => {
            for i in 0..args.threads.max(1) {
                let fd = if i == 0 {
                    None
                } else {
                    Some(clone_dev_fuse(master.as_raw_fd())?)
                };
                let (server, master) = (server.clone(), master.clone());
                dev_threads.push(std::thread::Builder::new().name(format!("dev{i}")).spawn(
                    move || {
                        let raw = fd.as_ref().map_or(master.as_raw_fd(), |f| f.as_raw_fd());
                        dev_loop(&server, raw);
                    },
                )?);
            }
        }
        Transport::Uring => {
            // FORGET and INTERRUPT still come over /dev/fuse (and everything, until every
            // queue has an entry).
            let (s, m) = (server.clone(), master.clone());
            dev_threads.push(
                std::thread::Builder::new()
                    .name("dev".into())
                    .spawn(move || dev_loop(&s, m.as_raw_fd()))?,
            );
            let queues = possible_cpus()?;
            let registered = args.register_queues.unwrap_or(queues).min(queues);
            let defer = args.defer_taskrun;
            for qid in 0..registered {
                for e in 0..args.depth.max(1) {
                    let (server, master) = (server.clone(), master.clone());
                    ring_threads.push(
                        std::thread::Builder::new()
                            .name(format!("q{qid}e{e}"))
                            .spawn(move || {
                                if let Err(err) =
                                    uring_entry(&server, master.as_raw_fd(), qid as u16, defer)
                                {
                                    eprintln!("fuse_transport: {err:#}");
                                }
                            })?,
                    );
                }
            }
            eprintln!(
                "fuse_transport: io_uring: {registered} of {queues} queues, depth {}",
                args.depth.max(1)
            );
        }
    }

    for t in dev_threads {
        let _ = t.join();
    }
    // The connection is gone: the ring entries are torn down by the kernel; give their
    // threads a moment, then exit anyway (closing the rings cancels what is left).
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && ring_threads.iter().any(|t| !t.is_finished()) {
        std::thread::sleep(Duration::from_millis(10));
    }
    unmount(&args.mountpoint);
    print_stats();
    std::process::exit(0);
}

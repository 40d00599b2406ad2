//! Writers that would bypass the mount. Mounting in place hides the backing directory from
//! new opens, but not from what reached it before: a descriptor opened for writing, a shared
//! writable mapping, a loop device, another mount of the same directory (a bind mount), or a
//! process whose working or root directory is inside it (relative paths). Their changes reach
//! the backing files without a log record. This module finds them before the mount, from
//! `/proc` and `/sys`, so that `mount` can refuse (or, with `--force`, mark the disks they can
//! reach for a full compare). What it finds is a snapshot: the per-seal stamp check in
//! `disk.rs` catches what starts writing afterwards.

use std::ffi::OsStr;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::sys;
use crate::tracking::Tracker;

/// A disk of the directory, by backing identity.
pub struct Target {
    pub name: String,
    pub dev: u64,
    pub ino: u64,
}

/// One way in which the backing files can be changed without the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bypass {
    /// A process holds a disk open for writing.
    OpenForWrite {
        pid: u32,
        comm: String,
        disk: String,
    },
    /// A process has a disk mapped shared and writable.
    SharedMap {
        pid: u32,
        comm: String,
        disk: String,
    },
    /// A loop device writes to a disk.
    Loop { device: String, disk: String },
    /// Another mount shows the directory (or one of its disks): a bind mount.
    Alias { mount_point: String },
    /// A process's working or root directory (or an open directory descriptor) is in the
    /// directory: relative paths reach the backing files.
    InDirectory {
        pid: u32,
        comm: String,
        what: &'static str,
    },
}

impl Bypass {
    /// The disk this reaches, or `None` for every disk of the directory.
    pub fn disk(&self) -> Option<&str> {
        match self {
            Bypass::OpenForWrite { disk, .. }
            | Bypass::SharedMap { disk, .. }
            | Bypass::Loop { disk, .. } => Some(disk),
            Bypass::Alias { .. } | Bypass::InDirectory { .. } => None,
        }
    }
}

impl fmt::Display for Bypass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bypass::OpenForWrite { pid, comm, disk } => {
                write!(f, "pid {pid} ({comm}) has {disk} open for writing")
            }
            Bypass::SharedMap { pid, comm, disk } => {
                write!(
                    f,
                    "pid {pid} ({comm}) has {disk} mapped shared and writable"
                )
            }
            Bypass::Loop { device, disk } => {
                write!(f, "loop device {device} is attached to {disk}")
            }
            Bypass::Alias { mount_point } => {
                write!(
                    f,
                    "{mount_point} is another mount of the directory (a bind mount)"
                )
            }
            Bypass::InDirectory { pid, comm, what } => {
                write!(f, "pid {pid} ({comm}) has its {what} in the directory")
            }
        }
    }
}

/// The error text for a refused mount: every bypass, and what to do.
pub fn refusal(dir: &Path, found: &[Bypass]) -> String {
    let list: Vec<String> = found.iter().map(|b| format!("  - {b}")).collect();
    format!(
        "{} can be changed without passing through the tracker, and such changes would never be replicated:\n{}\n\
         Stop these programs (detach the loop devices, unmount the other mounts, leave the directory) \
         and mount the tracker before starting them; or mount with --force, which marks the disks they \
         reach for a full compare at the next cycle and checks at every seal for changes made outside \
         the tracker",
        dir.display(),
        list.join("\n")
    )
}

/// Finds every bypass of the directory `dir` (canonical, backing identity `dir_id`) and its
/// `disks`, ignoring the processes in `ignore` (the tracker itself).
pub fn find(dir: &Path, dir_id: (u64, u64), disks: &[Target], ignore: &[u32]) -> Vec<Bypass> {
    let mut out = Vec::new();
    for pid in pids().into_iter().filter(|p| !ignore.contains(p)) {
        scan_process(pid, dir, dir_id, disks, &mut out);
    }
    out.extend(loops(disks));
    out.extend(aliases(dir, dir_id, disks));
    out
}

/// At mount, before tracking starts (so that a refused mount leaves every disk's state as
/// it was) and before the directory is covered: refuses if anything can change a disk of
/// the backing directory `root` without passing through the mount. With `force` it returns
/// what it found, for [`mark_found`]. The tracker itself and the `hrl-tracker mount` that
/// started it in the background are not counted.
pub fn guard_mount(
    root: &OwnedFd,
    dir: &Path,
    include: &[String],
    force: bool,
) -> anyhow::Result<Vec<Bypass>> {
    let st = sys::fstat(root.as_fd())?;
    let found = find(
        dir,
        (st.st_dev, st.st_ino),
        &disks_in(root, include)?,
        &own_pids(),
    );
    if !found.is_empty() && !force {
        anyhow::bail!("{}", refusal(dir, &found));
    }
    Ok(found)
}

/// The disks of the backing directory, by identity (the names [`Tracker`] will track).
fn disks_in(root: &OwnedFd, include: &[String]) -> anyhow::Result<Vec<Target>> {
    let mut out = Vec::new();
    for e in sys::read_dir(root.as_fd())? {
        let Ok(name) = String::from_utf8(e.name) else {
            continue;
        };
        if !crate::tracking::is_disk_name(include, &name) {
            continue;
        }
        if let Ok(st) = sys::statat(root.as_fd(), OsStr::new(&name)) {
            if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                out.push(Target {
                    name,
                    dev: st.st_dev,
                    ino: st.st_ino,
                });
            }
        }
    }
    Ok(out)
}

/// `--force`: marks every disk a bypass found at mount can reach as changed outside the
/// tracker (unclean as a whole: a full compare at the next cycle), and logs the disk-looking
/// files that cannot be tracked.
pub fn mark_found(tracker: &Tracker, found: &[Bypass]) {
    for u in tracker.untracked() {
        tracing::warn!("{u}");
    }
    for b in found {
        tracing::warn!("--force: {b}; marking what it reaches for a full compare");
        for d in tracker.disks() {
            let name = d.name();
            if b.disk().is_none_or(|n| n == name) {
                d.report_changed_outside(format!(
                    "{name} may have changed outside the tracker ({b} at mount, --force); resync scheduled"
                ));
            }
        }
    }
}

/// This process, and its parent when that is the `hrl-tracker mount` that daemonized it.
fn own_pids() -> Vec<u32> {
    let me = std::process::id();
    let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
    let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let mut out = vec![me];
    if exe(parent).is_some() && exe(parent) == exe(me) {
        out.push(parent);
    }
    out
}

fn pids() -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Device and inode of what `p` names (cached attributes will do: [`sys::identity`]).
fn id_of(p: &Path) -> Option<(u64, u64)> {
    sys::identity(p)
}

fn disk_at(disks: &[Target], id: (u64, u64)) -> Option<&Target> {
    disks.iter().find(|d| (d.dev, d.ino) == id)
}

/// True if `p` is `dir` or inside it.
fn inside(p: &Path, dir: &Path, dir_id: (u64, u64)) -> bool {
    p.starts_with(dir) || id_of(p) == Some(dir_id)
}

/// A process's writable descriptors and shared writable mappings of disks, and its working
/// directory, root and directory descriptors inside the directory. A process that exits
/// meanwhile is skipped.
fn scan_process(pid: u32, dir: &Path, dir_id: (u64, u64), disks: &[Target], out: &mut Vec<Bypass>) {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let mut found = Vec::new();
    for (what, link) in [("working directory", "cwd"), ("root directory", "root")] {
        if let Ok(p) = std::fs::read_link(base.join(link)) {
            // Every process's root is "/": only a root inside the directory (a chroot) counts.
            if p != Path::new("/") && inside(&p, dir, dir_id) {
                found.push(Bypass::InDirectory {
                    pid,
                    comm: String::new(),
                    what,
                });
            }
        }
    }
    let mut dir_fd = false;
    if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
        for fd in fds.flatten() {
            let Some(id) = id_of(&fd.path()) else {
                continue;
            };
            if id == dir_id {
                dir_fd = true;
            } else if let Some(d) = disk_at(disks, id) {
                if fd_writable(&base, &fd.file_name()) {
                    found.push(Bypass::OpenForWrite {
                        pid,
                        comm: String::new(),
                        disk: d.name.clone(),
                    });
                }
            }
        }
    }
    if dir_fd {
        found.push(Bypass::InDirectory {
            pid,
            comm: String::new(),
            what: "open directory descriptor",
        });
    }
    found.extend(
        shared_writable_maps(&base, disks)
            .into_iter()
            .map(|disk| Bypass::SharedMap {
                pid,
                comm: String::new(),
                disk,
            }),
    );
    if found.is_empty() {
        return;
    }
    let name = comm(pid);
    for mut b in found {
        if let Bypass::OpenForWrite { comm, .. }
        | Bypass::SharedMap { comm, .. }
        | Bypass::InDirectory { comm, .. } = &mut b
        {
            *comm = name.clone();
        }
        if !out.contains(&b) {
            out.push(b);
        }
    }
}

/// The access mode in `/proc/PID/fdinfo/N` (`flags:` in octal) allows writing.
fn fd_writable(base: &Path, fd: &std::ffi::OsStr) -> bool {
    let Ok(info) = std::fs::read_to_string(base.join("fdinfo").join(fd)) else {
        return false;
    };
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| i32::from_str_radix(f.trim(), 8).ok())
        .is_some_and(|flags| flags & libc::O_ACCMODE != libc::O_RDONLY)
}

/// Disks mapped with `w` and `s` in `/proc/PID/maps` (device `major:minor` in hex, inode).
fn shared_writable_maps(base: &Path, disks: &[Target]) -> Vec<String> {
    let Ok(maps) = std::fs::read_to_string(base.join("maps")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for l in maps.lines() {
        let mut f = l.split_whitespace();
        let (Some(_), Some(perms), Some(_), Some(dev), Some(ino)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if !(perms.contains('w') && perms.ends_with('s')) {
            continue;
        }
        let Some((maj, min)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(maj), Ok(min), Ok(ino)) = (
            u32::from_str_radix(maj, 16),
            u32::from_str_radix(min, 16),
            ino.parse::<u64>(),
        ) else {
            continue;
        };
        if let Some(d) = disk_at(disks, (libc::makedev(maj, min), ino)) {
            if !out.contains(&d.name) {
                out.push(d.name.clone());
            }
        }
    }
    out
}

/// `struct loop_info64` of `<linux/loop.h>` (LOOP_GET_STATUS64).
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LO_FLAGS_READ_ONLY: u32 = 1;

/// Writable loop devices whose backing file is a disk: the bound devices are listed in sysfs,
/// their backing file's identity and read-only flag come from `LOOP_GET_STATUS64`.
fn loops(disks: &[Target]) -> Vec<Bypass> {
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name();
        if !name.as_bytes().starts_with(b"loop") {
            continue;
        }
        let device = format!("/dev/{}", name.to_string_lossy());
        let Some(info) = loop_status(&device) else {
            continue;
        };
        if info.flags & LO_FLAGS_READ_ONLY != 0 {
            continue;
        }
        if let Some(d) = disk_at(disks, (info.device, info.inode)) {
            out.push(Bypass::Loop {
                device,
                disk: d.name.clone(),
            });
        }
    }
    out
}

fn loop_status(device: &str) -> Option<LoopInfo64> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(device).ok()?;
    // SAFETY: zeroed plain-old-data struct; the ioctl fills it.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: LOOP_GET_STATUS64 writes one loop_info64 into the buffer we own.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_GET_STATUS64, &mut info) };
    (rc == 0).then_some(info)
}

/// One line of `/proc/self/mountinfo`: device, root within its filesystem, mount point.
struct MountLine {
    dev: u64,
    root: PathBuf,
    mount_point: PathBuf,
}

/// Unescapes the octal escapes (`\040`) of mountinfo paths.
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match code {
            Some(v) if b[i] == b'\\' => {
                out.push(v);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

fn mount_lines() -> Vec<MountLine> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let (maj, min) = f.get(2)?.split_once(':')?;
            Some(MountLine {
                dev: libc::makedev(maj.parse().ok()?, min.parse().ok()?),
                root: unescape(f.get(3)?),
                mount_point: unescape(f.get(4)?),
            })
        })
        .collect()
}

/// Other mounts through which the directory or one of its disks is reachable: a mount of the
/// same device whose root is the directory, an ancestor of it, or a disk in it, other than the
/// mount the directory's own path goes through. Each is confirmed by identity (a mount hidden
/// under another one is not reachable and not reported).
fn aliases(dir: &Path, dir_id: (u64, u64), disks: &[Target]) -> Vec<Bypass> {
    let lines = mount_lines();
    // The mount the canonical path goes through: the last one whose mount point is the
    // longest prefix of it.
    let Some(own) = lines
        .iter()
        .enumerate()
        .filter(|(_, m)| m.dev == dir_id.0 && dir.starts_with(&m.mount_point))
        .max_by_key(|(i, m)| (m.mount_point.as_os_str().len(), *i))
        .map(|(i, _)| i)
    else {
        return Vec::new();
    };
    let Ok(rel) = dir.strip_prefix(&lines[own].mount_point) else {
        return Vec::new();
    };
    let in_fs = lines[own].root.join(rel);
    let mut out = Vec::new();
    for (i, m) in lines.iter().enumerate() {
        if i == own || m.dev != dir_id.0 {
            continue;
        }
        let reaches = match in_fs.strip_prefix(&m.root) {
            Ok(below) => id_of(&m.mount_point.join(below)) == Some(dir_id),
            Err(_) => {
                m.root.parent() == Some(in_fs.as_path())
                    && id_of(&m.mount_point).is_some_and(|id| disk_at(disks, id).is_some())
            }
        };
        if reaches && !dir.starts_with(&m.mount_point) {
            out.push(Bypass::Alias {
                mount_point: m.mount_point.display().to_string(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape(r"/a\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn refusal_names_each_bypass_and_what_to_do() {
        let msg = refusal(
            Path::new("/vms"),
            &[Bypass::OpenForWrite {
                pid: 7,
                comm: "qemu".into(),
                disk: "d.img".into(),
            }],
        );
        assert!(
            msg.contains("pid 7 (qemu) has d.img open for writing"),
            "{msg}"
        );
        assert!(msg.contains("--force"), "{msg}");
    }
}

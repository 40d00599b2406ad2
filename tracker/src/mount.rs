//! Mounting and unmounting: open the backing directory, start tracking and the control
//! socket, mount the FUSE filesystem (in place over the directory, or elsewhere), detach into
//! the background once the mount is live, and stop cleanly on unmount or SIGTERM.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hrl::control::{socket_path, Request};

use crate::control_server::{request, ControlServer};
use crate::core::Core;
use crate::fuse_adapter::HrlFs;
use crate::sys;
use crate::tracking::Tracker;

/// Environment variable through which a daemonized child reports readiness to its parent.
const READY_FD_ENV: &str = "HRL_TRACKER_READY_FD";

/// What `mount` needs.
pub struct MountArgs {
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub include: Vec<String>,
    pub foreground: bool,
    pub threads: usize,
    /// Mount even if writers could bypass the mount (their disks get a full compare).
    pub force: bool,
}

fn canonical(p: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("{}: no such directory", p.display()))
}

/// A tracker killed without unmounting leaves a dead FUSE mount ("Transport endpoint is not
/// connected") over the directory: detach it so a new tracker can take over. A `stat` cannot
/// tell (the kernel answers it from cached attributes for a while), so the check is: the
/// topmost mount at the path is an hrl FUSE mount (`/proc/self/mountinfo`), and `statfs`,
/// which the kernel always sends to the server, finds no server (ENOTCONN). Stacked dead
/// mounts are detached one by one.
fn detach_dead_mount(p: &Path) {
    let Some(path) = mount_path(p) else {
        return;
    };
    for _ in 0..16 {
        if !top_mount_is_hrl(&path) || !server_gone(&path) {
            return;
        }
        tracing::warn!(dir = %path.display(), "detaching the dead mount of a previous tracker");
        if let Err(e) = umount_flags(&path, libc::MNT_DETACH) {
            tracing::warn!(dir = %path.display(), error = %e, "cannot detach the dead mount");
            return;
        }
    }
}

/// The source hrl's mounts show in /proc/self/mountinfo (`FSName`), before the backing path.
const HRL_SOURCE_PREFIX: &str = "hrl:";

/// The absolute path of `p` as mountinfo lists it, found without a stat of `p` itself (which
/// a dead mount refuses): its parent resolved, its own name kept.
fn mount_path(p: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(p).ok()?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Some(std::fs::canonicalize(parent).ok()?.join(name)),
        _ => Some(abs),
    }
}

/// True if the topmost mount at `path` (the last matching mountinfo line) is an hrl FUSE
/// mount: type `fuse` or `fuse.*`, source `hrl:…`.
fn top_mount_is_hrl(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.to_string_lossy();
    info.lines()
        .filter(|l| l.split(' ').nth(4).map(unescape_mountinfo).as_deref() == Some(&*target))
        .filter_map(|l| {
            let (_, rest) = l.split_once(" - ")?;
            let mut f = rest.split(' ');
            Some((f.next()?.to_string(), f.next().map(unescape_mountinfo)?))
        })
        .next_back()
        .is_some_and(|(fstype, source)| {
            (fstype == "fuse" || fstype.starts_with("fuse."))
                && source.starts_with(HRL_SOURCE_PREFIX)
        })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(o) if b[i] == b'\\' => {
                out.push(
                    o.iter()
                        .fold(0u8, |acc, c| acc.wrapping_mul(8).wrapping_add(c - b'0')),
                );
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True if the FUSE mount at `path` has no server: `statfs` is never answered from a cache.
fn server_gone(path: &Path) -> bool {
    let Ok(c) = sys::cstr(path.as_os_str()) else {
        return false;
    };
    // SAFETY: zeroed statfs is a valid out-buffer; valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN)
}

/// Mounts; returns once the mount is live (background) or when it ends (foreground).
pub fn mount(args: MountArgs) -> anyhow::Result<()> {
    detach_dead_mount(&args.mountpoint);
    let backing = canonical(&args.backing)?;
    let mountpoint = canonical(&args.mountpoint)?;
    if !backing.is_dir() {
        bail!(
            "{}: not a directory; give the directory holding the disk images",
            backing.display()
        );
    }
    let socket = socket_path(&mountpoint);
    if request(&socket, &Request::Status).is_ok() {
        bail!(
            "{} is already served by a running hrl-tracker (control socket {}); unmount it first",
            mountpoint.display(),
            socket.display()
        );
    }
    if args.foreground {
        return serve(&backing, &mountpoint, &socket, &args);
    }
    daemonize(&mountpoint, &socket)
}

/// Starts this program again with `--foreground` in a new session and waits until it
/// reports the mount live (or fails).
fn daemonize(mountpoint: &Path, socket: &Path) -> anyhow::Result<()> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid two-int array. Read end close-on-exec, write end inherited.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("create readiness pipe");
    }
    // SAFETY: both fds are fresh and ours.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: plain fcntl on our fd.
    unsafe { libc::fcntl(rd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    let exe = std::env::current_exe().context("find the hrl-tracker executable")?;
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    argv.push("--foreground".into());
    let log_path = socket.with_extension("log");
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("create the run directory {}", dir.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open log file {}", log_path.display()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&argv)
        .env(READY_FD_ENV, wr.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; detaches from the terminal's session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("start the background tracker")?;
    drop(wr);
    let mut msg = String::new();
    let mut f = std::fs::File::from(rd);
    let _ = f.read_to_string(&mut msg);
    if msg.trim() == "ok" {
        println!(
            "hrl-tracker: mounted {} (pid {}, control socket {}, log {})",
            mountpoint.display(),
            child.id(),
            socket.display(),
            log_path.display()
        );
        return Ok(());
    }
    let _ = child.wait();
    if msg.trim().is_empty() {
        msg = format!(
            "the background tracker exited early; see {}",
            log_path.display()
        );
    }
    bail!("{}", msg.trim().trim_start_matches("error: "))
}

fn ready_pipe() -> Option<std::fs::File> {
    let fd: i32 = std::env::var(READY_FD_ENV).ok()?.parse().ok()?;
    std::env::remove_var(READY_FD_ENV);
    // SAFETY: the parent passed us this fd for our exclusive use.
    Some(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Runs the filesystem in this process until it is unmounted.
fn serve(backing: &Path, mountpoint: &Path, socket: &Path, args: &MountArgs) -> anyhow::Result<()> {
    let mut ready = ready_pipe();
    // Block the stop signals before any thread starts, so that every thread inherits the
    // mask and only the signal thread receives them.
    let signals = stop_signals();
    signals.thread_block().context("block signals")?;
    let res = start(backing, mountpoint, socket, args);
    let (session, control) = match res {
        Ok(s) => s,
        Err(e) => {
            if let Some(p) = ready.as_mut() {
                let _ = writeln!(p, "error: {e:#}");
            }
            return Err(e);
        }
    };
    if let Some(mut p) = ready.take() {
        let _ = p.write_all(b"ok\n");
    }
    crate::systemd::ready(mountpoint);
    crate::systemd::spawn_watchdog(control.path().to_path_buf());
    tracing::info!(
        mount = %mountpoint.display(),
        backing = %backing.display(),
        socket = %control.path().display(),
        "hrl-tracker serving"
    );
    spawn_signal_thread(mountpoint.to_path_buf(), signals)?;
    raise_readahead(mountpoint, READAHEAD_KB);
    let res = session.run();
    drop(control);
    tracing::info!(mount = %mountpoint.display(), "unmounted; logs closed");
    res.context("FUSE session failed")
}

fn start(
    backing: &Path,
    mountpoint: &Path,
    socket: &Path,
    args: &MountArgs,
) -> anyhow::Result<(fuser::Session<HrlFs<Tracker>>, ControlServer)> {
    raise_fd_limit();
    // Open the directory before mounting over it: afterwards its path shows the mount.
    let root = sys::openat(
        sys::CWD,
        backing.as_os_str(),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
    .with_context(|| format!("open backing directory {}", backing.display()))?;
    let restrict = restrictive_options(root.as_fd());
    let bypasses = crate::bypass::guard_mount(&root, backing, &args.include, args.force)?;
    let tracker = Arc::new(
        Tracker::open(root, mountpoint, args.include.clone())
            .with_context(|| format!("start tracking the disks in {}", backing.display()))?,
    );
    crate::bypass::mark_found(&tracker, &bypasses);
    let core = Arc::new(
        Core::new(tracker.root_fd(), tracker.clone()).context("set up the filesystem core")?,
    );
    let control = ControlServer::start(socket, tracker.clone(), core.clone())?;
    let core_for_removals = core.clone();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("{HRL_SOURCE_PREFIX}{}", backing.display())),
        fuser::MountOption::Subtype("hrl".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    config.mount_options.extend(restrict);
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(args.threads.max(1));
    config.clone_fd = true;
    let session = fuser::Session::new(HrlFs::new(core), mountpoint, &config)
        .with_context(|| format!("mount FUSE at {}", mountpoint.display()))?;
    forward_removals(&tracker, core_for_removals, session.notifier())?;
    Ok((session, control))
}

/// The mount is never more permissive than the backing mount: images need neither setuid
/// programs nor device nodes, and with `allow_other` a setuid file or device node in the
/// directory would otherwise work for every user (docs/SECURITY.md). `noexec` follows the
/// backing mount.
fn restrictive_options(backing: BorrowedFd<'_>) -> Vec<fuser::MountOption> {
    let mut opts = vec![fuser::MountOption::NoSuid, fuser::MountOption::NoDev];
    // Unknown counts as noexec: never more permissive than the backing mount.
    if sys::fstatvfs(backing).map_or(true, |st| {
        st.f_flag.contains(rustix::fs::StatVfsMountFlags::NOEXEC)
    }) {
        opts.push(fuser::MountOption::NoExec);
    }
    opts
}

/// Every inode the kernel knows holds an `O_PATH` descriptor, and every open file one more:
/// lift the soft limit on descriptors to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max
    {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            tracing::warn!("cannot raise the open file limit; large directories may hit EMFILE");
        }
    }
}

/// Readahead for the mount, in KiB. The kernel offers FUSE only 128 KiB at init; sequential
/// reads of images go much faster with whole 1 MiB requests, and faster again with four of
/// them in flight (the backing device reads ahead while the tracker copies the last one;
/// measured 1.3-2x of a 1 MiB window).
const READAHEAD_KB: u32 = 4096;

/// Sets the readahead of the FUSE mount's backing device info through sysfs. The device
/// number comes from /proc/self/mountinfo: a stat of the mount would wait for this very
/// process to serve it.
fn raise_readahead(mountpoint: &Path, kb: u32) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let target = mountpoint.to_string_lossy();
    // The last matching line is the topmost mount (ours, when mounted in place).
    let dev = info
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(&*target))
        .filter_map(|l| l.split(' ').nth(2))
        .next_back();
    if let Some(dev) = dev {
        let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
        if let Err(e) = std::fs::write(&path, kb.to_string()) {
            tracing::debug!(path, error = %e, "cannot raise readahead");
        }
    }
}

fn stop_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// Tells the kernel about files the tracker deleted itself (acked logs, bitmaps of removed
/// disks): it then forgets their inodes, and the descriptors the core holds for them close,
/// which frees their space. Done from its own thread: a notification waits for the
/// directory lock, which a request being served may hold.
fn forward_removals(
    tracker: &Tracker,
    core: Arc<Core<Tracker>>,
    notifier: fuser::Notifier,
) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<crate::tracking::Removed>();
    tracker.report_removals_to(tx);
    std::thread::Builder::new()
        .name("hrl-invalidate".into())
        .spawn(move || {
            let root = fuser::INodeNo(crate::core::inodes::ROOT_INO);
            for r in rx {
                let res = match core.ino_of(r.key) {
                    Some(ino) => notifier.delete(root, fuser::INodeNo(ino), &r.name),
                    None => notifier.inval_entry(root, &r.name),
                };
                if let Err(e) = res {
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        tracing::debug!(name = ?r.name, error = %e, "kernel notification failed");
                    }
                }
            }
        })
        .context("spawn the invalidation thread")?;
    Ok(())
}

/// SIGTERM/SIGINT/SIGHUP unmount the filesystem, which ends the session cleanly. A busy
/// mount (a VM holds a disk open) is never detached lazily: that would expose the raw
/// directory while this tracker still serves the open disks, and a write there would be in
/// no log. The tracker keeps serving and retries until the mount is no longer busy (systemd's
/// stop timeout then kills it: an unclean stop, whose marks are resynced).
fn spawn_signal_thread(mountpoint: PathBuf, set: nix::sys::signal::SigSet) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("hrl-signals".into())
        .spawn(move || loop {
            if let Ok(sig) = set.wait() {
                tracing::info!(signal = ?sig, "stopping: unmounting");
                unmount_when_idle(&mountpoint);
            }
        })
        .context("spawn signal thread")?;
    Ok(())
}

/// How often a stop retries the unmount of a busy mount.
const BUSY_RETRY: Duration = Duration::from_millis(500);

/// Unmounts, waiting while the mount is busy.
fn unmount_when_idle(mountpoint: &Path) {
    let mut warned = false;
    loop {
        match umount(mountpoint) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if !warned {
                    tracing::warn!(mount = %mountpoint.display(),
                        "the mount is busy (disks are open): serving on until they are closed, never detaching lazily");
                    warned = true;
                }
                std::thread::sleep(BUSY_RETRY);
            }
            Err(e) => {
                tracing::warn!(error = %e, "unmount failed");
                return;
            }
            Ok(()) => return,
        }
    }
}

fn umount_flags(p: &Path, flags: i32) -> std::io::Result<()> {
    let c = sys::cstr(p.as_os_str())?;
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn umount(p: &Path) -> std::io::Result<()> {
    umount_flags(p, 0)
}

/// `hrl-tracker unmount DIR`: unmounts and waits until the tracker has closed its logs.
pub fn unmount(dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let dir = canonical(dir)?;
    let socket = socket_path(&dir);
    let pid = request(&socket, &Request::Status)
        .ok()
        .and_then(|r| r.status)
        .map(|s| s.pid);
    umount(&dir).with_context(|| {
        format!(
            "unmount {} (if it is busy, stop the programs using it first)",
            dir.display()
        )
    })?;
    if let Some(pid) = pid {
        let deadline = Instant::now() + timeout;
        // SAFETY: kill with signal 0 only probes for existence.
        while unsafe { libc::kill(pid as i32, 0) } == 0 {
            if is_zombie(pid) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the tracker (pid {pid}) is still closing its logs after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(true)
}

/// Path of the control socket for `dir`, for `status`.
pub fn socket_for(dir: &Path) -> anyhow::Result<PathBuf> {
    Ok(socket_path(&canonical(dir)?))
}

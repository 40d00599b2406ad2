//! `hrl-shipper mount` and `unmount`: serve a recovery point over FUSE, read on demand from
//! the store, writable into a throwaway overlay (test failover, file-level restore). The
//! functions [`test_failover_start`] and [`test_failover_cleanup`] are what `failover test`
//! calls.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use hrl::store::TestRecord;

use super::args::{NetArgs, StoreArgs};
use crate::mount::session::{self, MountSpec};
use crate::mount::CoreOptions;
use crate::service::status;

/// Environment variable through which the background mount reports readiness.
const READY_FD_ENV: &str = "HRL_SHIPPER_READY_FD";

#[derive(Args, Clone)]
pub struct MountArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub net: NetArgs,
    /// `latest`, a point id, or a time (RFC 3339): the last point sealed at or before it.
    #[arg(long, default_value = "latest")]
    pub point: String,
    /// Refuse writes (default: writes go to a local overlay, removed at unmount; the store
    /// is never written).
    #[arg(long)]
    pub read_only: bool,
    /// Memory for decompressed chunks, e.g. 512M, 2G.
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    pub cache_size: u64,
    /// Bytes read ahead of a sequential reader, e.g. 8M.
    #[arg(long, default_value = "8M", value_parser = parse_size)]
    pub prefetch: u64,
    /// Stay in the foreground until unmounted (for systemd); default: return once live.
    #[arg(long)]
    pub foreground: bool,
    /// State directory (the overlay and the log copies live under `mounts/` there).
    #[arg(long, env = "HRL_STATE_DIR", default_value = status::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Directory to mount on (one file per disk of the point).
    pub dir: PathBuf,
}

#[derive(Args, Clone)]
pub struct UnmountArgs {
    #[arg(long, env = "HRL_STATE_DIR", default_value = status::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The directory a point is mounted on.
    pub dir: PathBuf,
}

/// `512M`, `2G`, `4096`: bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix in {s:?} (K, M, G, T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512M"))?;
    n.checked_mul(mul)
        .ok_or_else(|| format!("{s:?} is too large"))
}

pub async fn cmd_mount(a: MountArgs) -> Result<std::process::ExitCode> {
    // Here too when the mount goes to the background: a bad rate is refused before anything
    // starts (the background process gets the same arguments and installs it for itself).
    a.net.apply()?;
    if a.foreground {
        serve(&a).await?;
    } else {
        let id = mount_background(&a.state_dir, &a.dir)?;
        println!(
            "hrl-shipper: mounted point {id} of group {} at {} (`hrl-shipper unmount {}` ends it)",
            a.store.group,
            a.dir.display(),
            a.dir.display()
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

pub async fn cmd_unmount(a: UnmountArgs) -> Result<std::process::ExitCode> {
    match crate::mount::unmount::unmount(&a.dir, &a.state_dir).await? {
        Some(r) => println!(
            "hrl-shipper: unmounted {}; point {} tested: {}",
            a.dir.display(),
            r.point,
            r.result
        ),
        None => println!("hrl-shipper: unmounted {}", a.dir.display()),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `failover test --point P --to DIR`: mounts `point` of `store` at `to` (writable overlay)
/// in the background, its reads limited to `bandwidth` when given; returns the point id once
/// the mount is live.
pub fn test_failover_start(
    store: &StoreArgs,
    point: &str,
    to: &Path,
    state_dir: &Path,
    bandwidth: Option<&str>,
) -> Result<u64> {
    let exe = std::env::current_exe().context("find the hrl-shipper executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "mount",
        "--target",
        &store.target,
        "--group",
        &store.group,
        "--point",
        point,
    ])
    .arg("--state-dir")
    .arg(state_dir);
    if let Some(k) = &store.key.key {
        cmd.arg("--key").arg(k);
    }
    if let Some(p) = &store.key.passphrase_file {
        cmd.arg("--passphrase-file").arg(p);
    }
    if let Some(rate) = bandwidth {
        cmd.arg("--bandwidth").arg(rate);
    }
    cmd.arg(to);
    spawn_and_wait(cmd, state_dir, to)
}

/// `failover test --cleanup --to DIR`: unmounts, removes the overlay; the test record the
/// mount wrote (None if it could not be read).
pub async fn test_failover_cleanup(to: &Path, state_dir: &Path) -> Result<Option<TestRecord>> {
    crate::mount::unmount::unmount(to, state_dir).await
}

/// This program again (`--foreground`) in a new session; returns the point id once it
/// reports the mount live.
fn mount_background(state_dir: &Path, dir: &Path) -> Result<u64> {
    let exe = std::env::current_exe().context("find the hrl-shipper executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1));
    spawn_and_wait(cmd, state_dir, dir)
}

fn spawn_and_wait(mut cmd: std::process::Command, state_dir: &Path, dir: &Path) -> Result<u64> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid two-int array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("create readiness pipe");
    }
    // SAFETY: both fds are fresh and ours.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: plain fcntl on our fd: the read end stays in this process.
    unsafe { libc::fcntl(rd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    let mountpoint = session::mount_path(dir)?;
    let log_path = session::scratch_dir(state_dir, &mountpoint).with_extension("log");
    if let Some(parent) = log_path.parent() {
        crate::private::create_dir(parent)
            .with_context(|| format!("create {}", parent.display()))?;
    }
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("open log file {}", log_path.display()))?;
    cmd.arg("--foreground")
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
    let mut child = cmd.spawn().context("start the background mount")?;
    drop(wr);
    let mut msg = String::new();
    let _ = std::fs::File::from(rd).read_to_string(&mut msg);
    for line in msg.lines().filter(|l| l.starts_with("warning: ")) {
        eprintln!("hrl-shipper: {line}");
    }
    if let Some(id) = msg.lines().find_map(|l| l.strip_prefix("ok ")) {
        return id.trim().parse().context("the background mount's answer");
    }
    let _ = child.wait();
    let err = msg.lines().find_map(|l| l.strip_prefix("error: "));
    match err {
        Some(e) => bail!("{e}"),
        None => bail!(
            "the background mount exited early; see {}",
            log_path.display()
        ),
    }
}

fn ready_pipe() -> Option<std::fs::File> {
    let fd: i32 = std::env::var(READY_FD_ENV).ok()?.parse().ok()?;
    // SAFETY: the parent passed us this fd for our exclusive use.
    Some(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Mounts and serves in this process until unmounted.
async fn serve(a: &MountArgs) -> Result<()> {
    let mut ready = ready_pipe();
    let spec = MountSpec {
        point: a.point.clone(),
        dir: a.dir.clone(),
        state_dir: a.state_dir.clone(),
        core: CoreOptions {
            read_only: a.read_only,
            cache_bytes: a.cache_size,
            prefetch_bytes: a.prefetch,
        },
        key: a.store.key.clone(),
    };
    let started = match a.store.open() {
        Ok(store) => session::start(store, &spec).await,
        Err(e) => Err(e),
    };
    let serving = match started {
        Ok(s) => s,
        Err(e) => {
            if let Some(p) = ready.as_mut() {
                let _ = writeln!(p, "error: {}", format!("{e:#}").replace('\n', " "));
            }
            return Err(e);
        }
    };
    if let Some(mut p) = ready.take() {
        for why in serving.core.broken_disks() {
            let _ = writeln!(p, "warning: {}", why.replace('\n', " "));
        }
        let _ = writeln!(p, "ok {}", serving.info.point);
    }
    tracing::info!(mount = %serving.info.mountpoint.display(), point = serving.info.point,
        group = %serving.info.group, "serving the recovery point");
    let record = serving.run().await?;
    tracing::info!(point = record.point, result = %record.result, "test recorded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("5X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}

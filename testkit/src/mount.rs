//! Real `hrl-tracker` mounts (as root, through /dev/fuse) that come up live before a test
//! uses them and go away even when the test panics: a clean unmount, a kill -9, or the
//! guard's unmount-then-kill on drop; a dead mount (a killed tracker's) is detached lazily.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hrl::control::{Request, Response, SealedLog};

use crate::bins::tracker_bin;
use crate::wait::{poll, wait_until};

/// True if `dir` is a mount point (listed in /proc/self/mounts).
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(m) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let d = dir.to_string_lossy();
    m.lines().any(|l| l.split(' ').nth(1) == Some(&*d))
}

/// Lazy unmount (works on a dead FUSE server too).
pub fn force_unmount(dir: &Path) {
    for _ in 0..3 {
        if !is_mounted(dir) {
            return;
        }
        let _ = Command::new("umount").arg("-l").arg(dir).status();
    }
}

/// One control request to the socket at `socket` (None if it does not answer).
pub fn request_at(socket: &Path, req: &Request) -> Option<Response> {
    let mut c = UnixStream::connect(socket).ok()?;
    let mut line = serde_json::to_string(req).ok()?;
    line.push('\n');
    c.write_all(line.as_bytes()).ok()?;
    let mut answer = String::new();
    BufReader::new(c).read_line(&mut answer).ok()?;
    serde_json::from_str(&answer).ok()
}

/// A unique scratch directory under /tmp (removed on drop).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hrl-test-")
        .tempdir_in("/tmp")
        .expect("a scratch directory in /tmp")
}

/// A running tracker serving one directory, in the foreground as a child process.
pub struct Mounted {
    pub child: Option<Child>,
    pub mountpoint: PathBuf,
    pub backing: PathBuf,
    pub run_dir: PathBuf,
}

impl Mounted {
    /// Mounts in place over `dir`.
    pub fn in_place(dir: &Path, run_dir: &Path) -> Mounted {
        Self::start(dir, dir, run_dir, &[])
    }

    /// Mounts `backing` at a separate `mountpoint`.
    pub fn separate(backing: &Path, mountpoint: &Path, run_dir: &Path) -> Mounted {
        Self::start(backing, mountpoint, run_dir, &[])
    }

    pub fn start(backing: &Path, mountpoint: &Path, run_dir: &Path, extra: &[&str]) -> Mounted {
        Self::start_via(
            Command::new(tracker_bin()),
            backing,
            mountpoint,
            run_dir,
            extra,
        )
    }

    /// Mounts in place with the tracker's open file limit (soft and hard) set to `nofile`.
    pub fn start_limited(dir: &Path, run_dir: &Path, nofile: u32) -> Mounted {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(tracker_bin());
        Self::start_via(cmd, dir, dir, run_dir, &[])
    }

    fn start_via(
        mut cmd: Command,
        backing: &Path,
        mountpoint: &Path,
        run_dir: &Path,
        extra: &[&str],
    ) -> Mounted {
        let backing = std::fs::canonicalize(backing).unwrap_or_else(|_| backing.to_path_buf());
        // A dead mount there (a killed tracker's) refuses the stat: the path stays as given.
        let mountpoint =
            std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
        cmd.arg("mount").arg(&mountpoint);
        if backing != mountpoint {
            cmd.arg("--backing").arg(&backing);
        }
        cmd.arg("--foreground")
            .args(extra)
            .env("HRL_RUN_DIR", run_dir)
            .env("RUST_LOG", "warn,fuser=error")
            .stdin(Stdio::null());
        let child = cmd.spawn().expect("start hrl-tracker");
        let mut m = Mounted {
            child: Some(child),
            mountpoint,
            backing,
            run_dir: run_dir.to_path_buf(),
        };
        m.wait_ready();
        m
    }

    /// Runs `hrl-tracker mount DIR EXTRA` (in the background, as an operator would)
    /// expecting a refusal: returns its stderr. Panics if the mount comes up (after
    /// unmounting it).
    pub fn refused(dir: &Path, run_dir: &Path, extra: &[&str]) -> String {
        let dir = std::fs::canonicalize(dir).expect("the directory to mount exists");
        let out = Command::new(tracker_bin())
            .arg("mount")
            .arg(&dir)
            .args(extra)
            .env("HRL_RUN_DIR", run_dir)
            .env("RUST_LOG", "warn,fuser=error")
            .stdin(Stdio::null())
            .output()
            .expect("run hrl-tracker");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() || is_mounted(&dir) {
            force_unmount(&dir);
            panic!("the mount of {} was not refused: {stderr}", dir.display());
        }
        stderr
    }

    fn wait_ready(&mut self) {
        wait_until(Duration::from_secs(30), "the mount to come up", || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("hrl-tracker exited before the mount was live: {st}");
                }
            }
            // The kernel lists the mount before the tracker has answered FUSE's INIT; an
            // unmount in that window aborts the handshake, so live means a listing through
            // the mount (it waits for INIT) succeeds too.
            is_mounted(&self.mountpoint)
                && self.try_request(&Request::Status).is_some()
                && std::fs::read_dir(&self.mountpoint).is_ok()
        });
    }

    pub fn socket(&self) -> PathBuf {
        hrl::control::socket_path_in(&self.run_dir, &self.mountpoint)
    }

    fn try_request(&self, req: &Request) -> Option<Response> {
        request_at(&self.socket(), req)
    }

    /// One control request; panics if the socket does not answer.
    pub fn request(&self, req: &Request) -> Response {
        self.try_request(req).expect("control socket answers")
    }

    /// Seals all disks; panics on failure. Returns the sealed logs.
    pub fn seal(&self) -> Vec<SealedLog> {
        let r = self.request(&Request::Seal);
        assert!(r.ok, "seal failed: {:?}", r.error);
        r.disks.expect("a seal answer lists the disks")
    }

    /// `hrl-tracker status --json` for this mount, as the operator sees it.
    pub fn status_json(&self) -> serde_json::Value {
        let out = crate::process::run(
            Command::new(tracker_bin())
                .arg("status")
                .arg(&self.mountpoint)
                .arg("--json")
                .env("HRL_RUN_DIR", &self.run_dir),
        );
        serde_json::from_str(&out).expect("tracker status --json is JSON")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mountpoint.join(name)
    }

    /// Clean unmount through the CLI; waits for the tracker to exit and checks its status.
    pub fn unmount(mut self) {
        let st = Command::new(tracker_bin())
            .arg("unmount")
            .arg(&self.mountpoint)
            .env("HRL_RUN_DIR", &self.run_dir)
            .status()
            .expect("run hrl-tracker unmount");
        assert!(st.success(), "hrl-tracker unmount failed");
        let mut child = self.child.take().expect("a tracker to unmount");
        let st = child.wait().expect("wait for the tracker");
        assert!(st.success(), "tracker exited with {st}");
        assert!(!is_mounted(&self.mountpoint));
    }

    /// kill -9 of the tracker; the dead mount is detached.
    pub fn kill9(mut self) {
        self.kill9_in_place();
        force_unmount(&self.mountpoint);
    }

    /// kill -9 of the tracker, leaving its dead mount in place (as a crash does) for the
    /// next mount to deal with; the guard no longer owns it.
    pub fn kill9_leaving_the_dead_mount(mut self) {
        self.kill9_in_place();
        self.mountpoint = PathBuf::new();
    }

    fn kill9_in_place(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9 the tracker");
            let _ = child.wait();
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mountpoint.as_os_str().is_empty() {
            return;
        }
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("umount").arg(&self.mountpoint).status();
            let _ = poll(Duration::from_secs(10), || match c.try_wait() {
                Ok(Some(_)) => Ok(()),
                _ => Err(()),
            });
            let _ = c.kill();
            let _ = c.wait();
        }
        force_unmount(&self.mountpoint);
    }
}

//! Test harness: real `hrl-tracker` mounts (as root, through /dev/fuse) that clean up even
//! when a test fails, plus helpers to talk to the control socket and replay sealed logs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hrl::control::{Request, Response, SealedLog};

pub mod user;

/// The tracker binary: Cargo's path in the tracker's own tests; beside the test binary's
/// profile directory (`target/<profile>/hrl-tracker`) when another crate's tests include this
/// module (the shipper's chaos test does).
pub fn tracker_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_hrl-tracker") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let p = profile.join("hrl-tracker");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p hrl-tracker; nextest --workspace does)",
        p.display()
    );
    p
}

/// `target/<profile>/hrl-shipper`, when the workspace build made it.
pub fn shipper_bin() -> Option<PathBuf> {
    let p = tracker_bin().parent()?.join("hrl-shipper");
    p.exists().then_some(p)
}

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
        let dir = std::fs::canonicalize(dir).unwrap();
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
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The kernel lists the mount before the tracker has answered FUSE's INIT; an
            // unmount in that window aborts the handshake, so live means a listing through
            // the mount (it waits for INIT) succeeds too.
            if is_mounted(&self.mountpoint)
                && self.try_request(&Request::Status).is_some()
                && std::fs::read_dir(&self.mountpoint).is_ok()
            {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("hrl-tracker exited before the mount was live: {st}");
                }
            }
            assert!(Instant::now() < deadline, "mount did not come up in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
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
        r.disks.unwrap()
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
            .unwrap();
        assert!(st.success(), "hrl-tracker unmount failed");
        let mut child = self.child.take().unwrap();
        let st = child.wait().unwrap();
        assert!(st.success(), "tracker exited with {st}");
        assert!(!is_mounted(&self.mountpoint));
    }

    /// kill -9 of the tracker; the dead mount is detached.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        let _ = child.wait();
        force_unmount(&self.mountpoint);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("umount").arg(&self.mountpoint).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        force_unmount(&self.mountpoint);
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

/// A unique scratch directory (removed on drop).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hrl-tracker-test-")
        .tempdir_in("/tmp")
        .unwrap()
}

/// Sealed logs of `disk` in `dir`, in sequence order.
pub fn sealed_logs(dir: &Path, disk: &str) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            match hrl::naming::classify(&name)? {
                hrl::naming::HrlFile::SealedLog { disk: d, seq, .. } if d == disk => {
                    Some((seq, dir.join(name)))
                }
                _ => None,
            }
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// Replays `logs` onto a copy of `base` with the library, and with `hrl-shipper log apply`
/// when that binary exists; returns the replayed image (library result).
pub fn replay(base: &Path, logs: &[PathBuf], out_dir: &Path) -> PathBuf {
    let lib = out_dir.join("replayed-lib.img");
    std::fs::copy(base, &lib).unwrap();
    hrl::log::apply_logs(logs, &lib).expect("apply_logs");
    if let Some(shipper) = shipper_bin() {
        let cli = out_dir.join("replayed-cli.img");
        std::fs::copy(base, &cli).unwrap();
        let st = Command::new(shipper)
            .args(["log", "apply"])
            .args(logs)
            .arg("--to")
            .arg(&cli)
            .status()
            .unwrap();
        assert!(st.success(), "hrl-shipper log apply failed");
        assert_files_equal(&lib, &cli);
    }
    lib
}

/// Replays the sealed logs of `disk` in `dir` onto a copy of `base` and asserts the result
/// equals `live`, the image as the tracker left it.
pub fn assert_replay_equals(base: &Path, dir: &Path, disk: &str, live: &Path) {
    let out = scratch();
    let replayed = replay(base, &sealed_logs(dir, disk), out.path());
    assert_files_equal(&replayed, live);
}

/// Asserts two files have equal size and bytes, naming the first difference.
pub fn assert_files_equal(a: &Path, b: &Path) {
    let x = std::fs::read(a).unwrap();
    let y = std::fs::read(b).unwrap();
    assert_eq!(
        x.len(),
        y.len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!(
            "{} and {} differ first at byte {i} (0x{i:x})",
            a.display(),
            b.display()
        );
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs a command and asserts success, returning stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

//! The one fixture of the shipper's tests: a protected directory (served by a real tracker
//! mount, or by the stand-in tracker where a test needs no FUSE), a store server, a state
//! directory, and the shipper commands a test runs against them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::bins::shipper_bin;
use crate::mount::{scratch, Mounted};
use crate::process::KillOnDrop;
use crate::stand_in::FakeTracker;
use crate::store::{Server, ServerKind};
use crate::wait::wait_for;

/// A directory to protect (`<tmp>/vm1`, group `vm1`), its run and state directories, and
/// a store. Everything lives in one scratch directory removed on drop; the server is
/// killed on drop. Mount the real tracker with [`Site::mount`] (its guard unmounts), or
/// build the site [`Site::with_stand_in`] to serve the directory without FUSE.
pub struct Site {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub run_dir: PathBuf,
    pub state: PathBuf,
    pub group: String,
    pub server: Server,
    stand_in: Option<FakeTracker>,
}

/// Stdout as text, after asserting that the shipper succeeded (its output shown if not).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "shipper failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `hrl-shipper ARGS` with the store's environment, run and state directories.
pub fn shipper_command(
    args: &[&str],
    env: &[(String, String)],
    run_dir: &Path,
    state_dir: &Path,
) -> Command {
    let mut c = Command::new(shipper_bin());
    c.args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("HRL_RUN_DIR", run_dir)
        .env("HRL_STATE_DIR", state_dir)
        .env("HRL_LOG", "info");
    c
}

/// Runs the shipper (see [`shipper_command`]) and returns its output.
pub fn shipper(
    args: &[&str],
    env: &[(String, String)],
    run_dir: &Path,
    state_dir: &Path,
) -> Output {
    shipper_command(args, env, run_dir, state_dir)
        .output()
        .expect("run hrl-shipper")
}

impl Site {
    /// An empty directory to protect with a real tracker, and a store of `kind`.
    pub fn new(kind: ServerKind) -> Site {
        let tmp = scratch();
        let dir = tmp.path().join("vm1");
        std::fs::create_dir_all(&dir).expect("create the protected directory");
        Site {
            run_dir: tmp.path().join("run"),
            state: tmp.path().join("state"),
            group: "vm1".into(),
            server: Server::start(kind, "hrltest"),
            dir,
            tmp,
            stand_in: None,
        }
    }

    /// The directory served by the stand-in tracker (no FUSE); add disks with
    /// `site.tracker().add_disk(..)`.
    pub fn with_stand_in(kind: ServerKind) -> Site {
        let mut s = Site::new(kind);
        s.stand_in = Some(FakeTracker::start(&s.dir, &s.run_dir));
        s
    }

    /// The stand-in tracker (a site built [`Site::with_stand_in`]).
    pub fn tracker(&self) -> &FakeTracker {
        self.stand_in
            .as_ref()
            .expect("this site has no stand-in tracker: build it with Site::with_stand_in")
    }

    /// The real tracker mounted in place over the directory (live when this returns).
    pub fn mount(&self) -> Mounted {
        self.mount_with(&[])
    }

    /// [`Site::mount`] with extra `hrl-tracker mount` arguments.
    pub fn mount_with(&self, extra: &[&str]) -> Mounted {
        Mounted::start(&self.dir, &self.dir, &self.run_dir, extra)
    }

    /// `hrl-tracker status --json` of the directory (a real mount).
    pub fn tracker_status(&self) -> serde_json::Value {
        let out = crate::process::run(
            Command::new(crate::bins::tracker_bin())
                .arg("status")
                .arg(&self.dir)
                .arg("--json")
                .env("HRL_RUN_DIR", &self.run_dir),
        );
        serde_json::from_str(&out).expect("tracker status --json is JSON")
    }

    /// `hrl-shipper ARGS` with the store's environment plus `extra`, not yet run.
    pub fn command(&self, args: &[&str], extra: &[(String, String)]) -> Command {
        let mut env = self.server.env.clone();
        env.extend_from_slice(extra);
        shipper_command(args, &env, &self.run_dir, &self.state)
    }

    /// Runs `hrl-shipper ARGS` (environment as [`Site::command`]).
    pub fn shipper(&self, args: &[&str], extra: &[(String, String)]) -> Output {
        self.command(args, extra).output().expect("run hrl-shipper")
    }

    /// Runs `hrl-shipper ARGS --json`-style commands: asserts success, parses stdout.
    pub fn shipper_ok(&self, args: &[&str], extra: &[(String, String)]) -> serde_json::Value {
        let out = ok(&self.shipper(args, extra));
        serde_json::from_str(out.trim()).expect("the shipper's --json output is JSON")
    }

    /// `CMD --dir DIR --group GROUP --target URL`: the arguments of `sync`, `resync`, `run`.
    pub fn args(&self, cmd: &str) -> Vec<String> {
        vec![
            cmd.into(),
            "--dir".into(),
            self.dir.display().to_string(),
            "--group".into(),
            self.group.clone(),
            "--target".into(),
            self.server.url.clone(),
        ]
    }

    /// [`Site::args`] of `cmd` followed by `more`, as a command not yet run.
    pub fn cmd(&self, cmd: &str, more: &[&str]) -> Command {
        let mut a = self.args(cmd);
        a.extend(more.iter().map(|s| s.to_string()));
        self.command(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[])
    }

    /// [`Site::args`] of `cmd` followed by `more`, run with `extra` environment.
    pub fn output(&self, cmd: &str, more: &[&str], extra: &[(String, String)]) -> Output {
        let mut a = self.args(cmd);
        a.extend(more.iter().map(|s| s.to_string()));
        self.shipper(&a.iter().map(String::as_str).collect::<Vec<_>>(), extra)
    }

    /// `sync --json`, which must succeed: its report.
    pub fn sync(&self) -> serde_json::Value {
        let out = ok(&self.output("sync", &["--json"], &[]));
        serde_json::from_str(out.trim()).expect("sync --json is JSON")
    }

    /// `sync` with `extra` environment, whatever its outcome.
    pub fn try_sync(&self, extra: &[(String, String)]) -> Output {
        self.output("sync", &[], extra)
    }

    /// `resync --disk DISK --now --json`, which must succeed: its report.
    pub fn resync_now(&self, disk: &str) -> serde_json::Value {
        let out = ok(&self.output("resync", &["--disk", disk, "--now", "--json"], &[]));
        serde_json::from_str(out.trim()).expect("resync --json is JSON")
    }

    /// `restore --point POINT --to TO`, whatever its outcome.
    pub fn try_restore(&self, point: &str, to: &Path) -> Output {
        let to = to.display().to_string();
        let target = self.server.url.clone();
        self.shipper(
            &[
                "restore",
                "--target",
                &target,
                "--group",
                &self.group,
                "--point",
                point,
                "--to",
                &to,
            ],
            &[],
        )
    }

    /// Restores `point` into `<tmp>/restore-<point>`, which must succeed; returns that path.
    pub fn restore(&self, point: u64) -> PathBuf {
        let to = self.tmp.path().join(format!("restore-{point}"));
        ok(&self.try_restore(&point.to_string(), &to));
        to
    }

    /// `verify --point POINT`, whatever its outcome.
    pub fn verify(&self, point: &str) -> Output {
        let target = self.server.url.clone();
        self.shipper(
            &[
                "verify",
                "--target",
                &target,
                "--group",
                &self.group,
                "--point",
                point,
            ],
            &[],
        )
    }

    /// Recovery points in the store (`points --json`).
    pub fn points(&self) -> usize {
        let target = self.server.url.clone();
        let out = ok(&self.shipper(
            &[
                "points",
                "--target",
                &target,
                "--group",
                &self.group,
                "--json",
            ],
            &[],
        ));
        let v: serde_json::Value = serde_json::from_str(&out).expect("points --json is JSON");
        v.as_array().expect("points --json is a list").len()
    }

    /// `status --json` of the directory, which must succeed.
    pub fn status(&self) -> serde_json::Value {
        let dir = self.dir.display().to_string();
        let out = ok(&self.shipper(&["status", "--dir", &dir, "--json"], &[]));
        let v: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
        v[0].clone()
    }

    /// Polls `status --json` until `ready` holds (`deadline` at most); returns that status.
    /// A status that cannot be read yet counts as not ready.
    pub fn wait_status(
        &self,
        deadline: Duration,
        what: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let dir = self.dir.display().to_string();
        wait_for(deadline, what, || {
            let out = self.shipper(&["status", "--dir", &dir, "--json"], &[]);
            let st = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .map(|v| v[0].clone())
                .unwrap_or_default();
            if ready(&st) {
                Ok(st)
            } else {
                Err(format!("status: {st:#}"))
            }
        })
    }

    /// `hrl-shipper run` for the directory with `more` arguments (an interval, a retry unit,
    /// a window), its output discarded; killed on drop.
    pub fn service(&self, more: &[&str]) -> KillOnDrop {
        self.spawn_service(more, &[], None)
    }

    /// [`Site::service`] with `extra` environment, its log (stderr) written to `log`.
    pub fn spawn_service(
        &self,
        more: &[&str],
        extra: &[(String, String)],
        log: Option<&Path>,
    ) -> KillOnDrop {
        let mut a = self.args("run");
        a.extend(more.iter().map(|s| s.to_string()));
        let mut c = self.command(&a.iter().map(String::as_str).collect::<Vec<_>>(), extra);
        c.stdout(Stdio::null()).stderr(match log {
            Some(p) => Stdio::from(std::fs::File::create(p).expect("create the service's log")),
            None => Stdio::null(),
        });
        KillOnDrop::spawn(&mut c)
    }

    /// SIGTERM to the service, then waits for it to stop; returns its exit status.
    pub fn stop_service(&self, mut svc: KillOnDrop) -> std::process::ExitStatus {
        svc.sigterm_and_wait("the service after SIGTERM")
    }

    /// Copies every disk of the directory (not the tracker's files) into `<tmp>/snap-<point>`:
    /// what `point` must restore to. Returns that path.
    pub fn snapshot(&self, point: u64) -> PathBuf {
        let to = self.tmp.path().join(format!("snap-{point}"));
        std::fs::create_dir_all(&to).expect("create the snapshot directory");
        for e in std::fs::read_dir(&self.dir).expect("read the protected directory") {
            let p = e.expect("a directory entry").path();
            let name = p.file_name().and_then(|n| n.to_str()).map(str::to_string);
            let Some(name) = name else { continue };
            if hrl::naming::classify(&name).is_none() {
                std::fs::copy(&p, to.join(&name)).expect("copy a disk");
            }
        }
        to
    }

    /// Copies one disk of the directory to `<tmp>/<name>`; returns that path.
    pub fn copy_disk(&self, disk: &str, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::copy(self.dir.join(disk), &p).expect("copy the disk");
        p
    }

    /// The group's directory in the local store.
    pub fn store_group(&self) -> PathBuf {
        self.server.local_path().join(&self.group)
    }

    /// The path of manifest `id` in the local store.
    pub fn manifest_path(&self, id: u64) -> PathBuf {
        self.store_group()
            .join("points")
            .join(format!("{id:020}.json"))
    }

    /// Manifest `id` of the local store, parsed.
    pub fn manifest(&self, id: u64) -> serde_json::Value {
        let bytes = std::fs::read(self.manifest_path(id)).expect("read the manifest");
        serde_json::from_slice(&bytes).expect("the manifest is JSON")
    }
}

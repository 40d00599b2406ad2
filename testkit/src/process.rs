//! Child processes of a test: a guard that kills on drop, running a command that must
//! succeed, waiting for an exit, SIGTERM, and SIGKILL at a shipper stop point.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::wait::{wait_for, wait_until};

/// A child process killed (SIGKILL) and reaped on drop, so a failing test leaves none.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Spawns `cmd` under the guard.
    pub fn spawn(cmd: &mut Command) -> KillOnDrop {
        KillOnDrop(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")))
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Sends SIGTERM and waits (30 s at most) for the exit; returns its status.
    pub fn sigterm_and_wait(&mut self, what: &str) -> ExitStatus {
        signal(self.0.id(), "TERM");
        wait_exit(&mut self.0, Duration::from_secs(30), what)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kill -SIG pid`; panics if kill fails (the process is gone already).
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// Waits until `child` exits (panics naming `what` after `deadline`) and returns its status.
pub fn wait_exit(child: &mut Child, deadline: Duration, what: &str) -> ExitStatus {
    wait_for(deadline, &format!("{what} to exit"), || {
        match child.try_wait().expect("wait for a child") {
            Some(st) => Ok(st),
            None => Err("still running"),
        }
    })
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

/// Runs `cmd` (a shipper command) with `HRL_SHIPPER_STOP_AT=at` until it reaches that stop
/// point — its `marker` file appears — and kills it there with SIGKILL. Returns its exit
/// status. `deadline` bounds the wait for the stop point.
pub fn kill9_at_stop_point_within(
    mut cmd: Command,
    marker: &Path,
    at: &str,
    deadline: Duration,
) -> ExitStatus {
    let _ = std::fs::remove_file(marker);
    let mut child = KillOnDrop::spawn(
        cmd.env("HRL_SHIPPER_STOP_AT", at)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until(deadline, &format!("the stop point {at}"), || {
        assert!(
            child.0.try_wait().expect("wait for the shipper").is_none(),
            "the shipper exited before reaching {at}"
        );
        marker.exists()
    });
    signal(child.id(), "KILL");
    child.0.wait().expect("reap the killed shipper")
}

/// Like [`kill9_at_stop_point_within`], for a command that may finish without reaching
/// `at` (a prune with nothing to merge, a failback that renames nothing): kills it there if
/// it gets there; true if it did, false if it exited first.
pub fn kill9_if_it_reaches(mut cmd: Command, marker: &Path, at: &str, deadline: Duration) -> bool {
    let _ = std::fs::remove_file(marker);
    let mut child = KillOnDrop::spawn(
        cmd.env("HRL_SHIPPER_STOP_AT", at)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let stopped = wait_for(deadline, &format!("the stop point {at}"), || {
        match (marker.exists(), child.0.try_wait()) {
            (true, _) => Ok(true),
            (false, Ok(Some(_))) => Ok(false),
            _ => Err("running"),
        }
    });
    if stopped {
        signal(child.id(), "KILL");
    }
    let _ = child.0.wait();
    stopped
}

/// The stop points of a failover's final pass (`shipper/src/replicate/stop.rs`), in the
/// order it reaches them.
pub const FAILOVER_FINAL_PASS_STOPS: [&str; 5] = [
    "failover-after-rename",
    "failover-before-takeover",
    "failover-after-takeover",
    "failover-mid-reverse",
    "failover-after-reverse",
];

/// [`kill9_at_stop_point_within`] 30 s.
pub fn kill9_at_stop_point(cmd: Command, marker: &Path, at: &str) -> ExitStatus {
    kill9_at_stop_point_within(cmd, marker, at, Duration::from_secs(30))
}

/// Spawns `cmd` (a shipper command; its output to files or null as the caller set it) with
/// `HRL_SHIPPER_STOP_AT=at`, a pause point, and returns once it is frozen there: its
/// `marker` appeared and the process is stopped (SIGSTOP). `signal(pid, "CONT")` lets it
/// go on. Killed on drop.
pub fn spawn_paused_at(mut cmd: Command, marker: &Path, at: &str) -> KillOnDrop {
    let _ = std::fs::remove_file(marker);
    let mut child = KillOnDrop::spawn(cmd.env("HRL_SHIPPER_STOP_AT", at));
    let stat = format!("/proc/{}/stat", child.id());
    wait_until(
        Duration::from_secs(60),
        &format!("the pause point {at}"),
        || {
            assert!(
                child.0.try_wait().expect("wait for the shipper").is_none(),
                "the shipper exited before reaching {at}"
            );
            // The state follows the command name in parentheses: "T" is stopped.
            let state = std::fs::read_to_string(&stat)
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('T')));
            marker.exists() && state == Some(true)
        },
    );
    child
}

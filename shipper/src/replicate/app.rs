//! App-consistent points: every `every`, the point's seal runs between a `pre_seal` hook
//! (a guest freeze: `virsh domfsfreeze NAME`, `fsfreeze -f MNT`) and a `post_seal` hook
//! (the thaw). A point sealed while the pre hook had succeeded is tagged `kind = "app"`.
//! A failing or timed-out hook gives a crash-consistent point and a Warning; the post hook
//! runs whenever the pre hook was started, whatever it or the seal did, so a guest is never
//! left frozen by the shipper.

use std::time::Duration;

use anyhow::Result;
use tracing::{info, warn};

use crate::replicate::context::Protected;
use crate::replicate::tracker::{Seal, Tracker};
use crate::service::status::StatusHandle;

/// Default limit of one hook's run.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// A directory's app-consistency hooks.
#[derive(Debug, Clone)]
pub struct AppHooks {
    /// An app-consistent point at most this often.
    pub every: Duration,
    /// Shell command run before the seal (`sh -c`).
    pub pre_seal: String,
    /// Shell command run after the seal, always once the pre hook started.
    pub post_seal: String,
    pub timeout: Duration,
}

/// What sealing with the hooks gave.
pub struct HookedSeal {
    pub seal: Seal,
    /// The pre hook succeeded before the seal: the point is app-consistent.
    pub app: bool,
    /// A hook failed or timed out (shown as a Warning).
    pub warning: Option<String>,
}

/// Whether an app-consistent point is due, the last one sealed at `last_ns`.
pub fn due(h: &AppHooks, last_ns: Option<u64>, now: u64) -> bool {
    last_ns.is_none_or(|t| now.saturating_sub(t) >= h.every.as_nanos() as u64)
}

/// Runs `cmd` with `sh -c`, killed after `timeout`; the error says why it failed.
pub async fn run_hook(which: &str, cmd: &str, timeout: Duration) -> Result<(), String> {
    use std::os::fd::AsFd;
    // Its output goes to the shipper's log (stderr), never into `--json` output.
    let out = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::process::Stdio::from)
        .unwrap_or_else(|_| std::process::Stdio::null());
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        // Its own process group, so a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{which} hook {cmd:?} could not start: {e}"))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Err(_) => {
            if let Some(pid) = child.id() {
                // SAFETY: kill only sends a signal, to the group the hook leads.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            let _ = child.kill().await;
            Err(format!(
                "{which} hook {cmd:?} timed out after {timeout:?} (killed)"
            ))
        }
        Ok(Err(e)) => Err(format!("{which} hook {cmd:?} could not be waited for: {e}")),
        Ok(Ok(st)) if st.success() => Ok(()),
        Ok(Ok(st)) => Err(format!("{which} hook {cmd:?} failed ({st})")),
    }
}

/// Seals through `tracker`, between the hooks when `hooks` is given.
pub async fn seal(tracker: &mut dyn Tracker, hooks: Option<&AppHooks>) -> Result<HookedSeal> {
    let Some(h) = hooks else {
        return Ok(HookedSeal {
            seal: tracker.seal().await?,
            app: false,
            warning: None,
        });
    };
    let pre = run_hook("pre_seal", &h.pre_seal, h.timeout).await;
    let sealed = tracker.seal().await;
    let post = run_hook("post_seal", &h.post_seal, h.timeout).await;
    let mut warnings: Vec<String> = Vec::new();
    if let Err(e) = &pre {
        warnings.push(format!("{e}: the point is crash-consistent"));
    }
    if let Err(e) = &post {
        warnings.push(e.clone());
    }
    for w in &warnings {
        warn!("{w}");
    }
    let seal = sealed?;
    if pre.is_ok() {
        info!(
            seal = seal.seal_id,
            "sealed between the app-consistency hooks"
        );
    }
    Ok(HookedSeal {
        seal,
        app: pre.is_ok(),
        warning: (!warnings.is_empty()).then(|| warnings.join("; ")),
    })
}

/// The hooks of `p` when an app-consistent point is due (by the status's last one).
pub fn hooks_due(p: &Protected, status: StatusHandle<'_>) -> Option<AppHooks> {
    let h = p.app.as_ref()?;
    let last = status.read(|s| s.last_app_point_ns);
    due(h, last, hrl::now_ns()).then(|| h.clone())
}

/// After the commit: the app point's seal time (`app_ns`), and the hooks' warning (kept
/// until hooks run again without one).
pub fn record(status: StatusHandle<'_>, ran: bool, app_ns: Option<u64>, warning: Option<String>) {
    if !ran {
        return;
    }
    status.edit(|s| {
        if app_ns.is_some() {
            s.last_app_point_ns = app_ns;
        }
        s.hook_warning = warning;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hooks_succeed_fail_and_time_out() {
        assert!(run_hook("pre_seal", "true", DEFAULT_HOOK_TIMEOUT)
            .await
            .is_ok());
        let e = run_hook("pre_seal", "exit 3", DEFAULT_HOOK_TIMEOUT)
            .await
            .unwrap_err();
        assert!(e.contains("failed"), "{e}");
        let e = run_hook("post_seal", "sleep 5", Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(e.contains("timed out"), "{e}");
    }

    #[test]
    fn an_app_point_is_due_every_interval() {
        let h = AppHooks {
            every: Duration::from_secs(10),
            pre_seal: "true".into(),
            post_seal: "true".into(),
            timeout: DEFAULT_HOOK_TIMEOUT,
        };
        assert!(due(&h, None, 0));
        assert!(!due(&h, Some(5_000_000_000), 10_000_000_000));
        assert!(due(&h, Some(5_000_000_000), 15_000_000_000));
    }
}

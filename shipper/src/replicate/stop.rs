//! Crash stop points for tests: with `HRL_SHIPPER_STOP_AT=<point>` (after-seal, after-upload,
//! after-commit, mid-resync, mid-failback, mid-merge, mid-gc; the failover's final pass:
//! failover-after-rename once the first disk has its final name, failover-before-takeover,
//! failover-after-takeover, failover-mid-reverse between the first disk's active log and its
//! bitmap, failover-after-reverse before the shipper state is saved) the process writes
//! `<state dir>/stopped-at-<point>` and freezes there (SIGSTOP: every thread stops at once,
//! no sleep inside async code) so a test can kill -9 it at exactly that instant and check
//! what the next run does. A pause point ([`pause`]: before-commit, in-commit,
//! mid-resync-pause, mid-prepare, prune-leases-read, verify-leased) freezes once and goes on
//! when the test sends SIGCONT, so a test can act (a takeover) while the shipper is held
//! between two steps.
//!
//! Compiled only into debug builds (the test binaries) or with the `stop-points` feature
//! (`scripts/chaos`, which tests release builds); a release build has none.

use std::path::Path;

/// True when `point` is the stop point the environment asks for.
#[cfg(any(debug_assertions, feature = "stop-points"))]
pub fn armed(point: &str) -> bool {
    std::env::var("HRL_SHIPPER_STOP_AT").as_deref() == Ok(point)
}

/// A release build has no stop points.
#[cfg(not(any(debug_assertions, feature = "stop-points")))]
pub fn armed(_point: &str) -> bool {
    false
}

/// Stops here when `point` is armed: writes the marker, then freezes until killed.
pub fn at(state_dir: &Path, point: &str) {
    if !armed(point) {
        return;
    }
    tracing::warn!("HRL_SHIPPER_STOP_AT={point}: waiting to be killed");
    let _ = std::fs::write(state_dir.join(format!("stopped-at-{point}")), b"");
    loop {
        // SAFETY: raise only sends a signal to this process.
        unsafe { libc::raise(libc::SIGSTOP) };
    }
}

/// Pauses here when `point` is armed: writes the marker, freezes (SIGSTOP), and continues
/// when the test sends SIGCONT.
pub fn pause(state_dir: &Path, point: &str) {
    if !armed(point) {
        return;
    }
    tracing::warn!("HRL_SHIPPER_STOP_AT={point}: paused until SIGCONT");
    let _ = std::fs::write(state_dir.join(format!("stopped-at-{point}")), b"");
    // SAFETY: raise only sends a signal to this process.
    unsafe { libc::raise(libc::SIGSTOP) };
}

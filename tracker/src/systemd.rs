//! systemd integration (`Type=notify`, `WatchdogSec=`): READY once the mount is live (the
//! same instant the background mode reports it), and a watchdog thread that pings every half
//! period while the control socket still answers a status request (a wedged tracker stops
//! the pings and systemd restarts it). Without `NOTIFY_SOCKET` these do nothing.

use std::path::PathBuf;
use std::time::Duration;

use sd_notify::NotifyState;

/// The mount at `mountpoint` is live.
pub fn ready(mountpoint: &std::path::Path) {
    let status = format!("tracking {}", mountpoint.display());
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Starts the watchdog thread when the unit has `WatchdogSec=`.
pub fn spawn_watchdog(socket: PathBuf) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 2).max(Duration::from_millis(100));
    let spawned = std::thread::Builder::new()
        .name("hrl-watchdog".into())
        .spawn(move || loop {
            let answers = crate::control_server::request(&socket, &hrl::control::Request::Status)
                .is_ok_and(|r| r.ok);
            if answers {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            } else {
                tracing::warn!("the control socket does not answer; not pinging the watchdog");
            }
            std::thread::sleep(every);
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the watchdog thread: {e}");
    }
}

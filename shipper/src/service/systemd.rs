//! systemd integration (`Type=notify`, `WatchdogSec=`): READY once every directory's job and
//! the metrics listener are set up, STOPPING on shutdown, and a watchdog ping every half
//! period from the async runtime (a runtime that stops scheduling stops the pings, and
//! systemd restarts the service). Without `NOTIFY_SOCKET` (not under systemd) these do nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// The service is up.
pub fn ready(dirs: usize) {
    let status = format!(
        "protecting {dirs} director{}",
        if dirs == 1 { "y" } else { "ies" }
    );
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// The service is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Pings systemd's watchdog every half period until `stop` turns true (nothing when the
/// unit has no `WatchdogSec=`).
pub async fn watchdog(mut stop: watch::Receiver<bool>) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 2).max(Duration::from_millis(100));
    tracing::info!(?period, "systemd watchdog enabled");
    loop {
        send(&[NotifyState::Watchdog]);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

//! systemd service notifications (`Type=notify`): `READY=1` once the daemon
//! serves, `STOPPING=1` when it begins to shut down, and `WATCHDOG=1` at half
//! the `WatchdogSec` interval. Each is a no-op when not run by systemd.

use sd_notify::NotifyState;
use std::time::Duration;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Tell systemd the daemon serves. Pass it as the `ready` callback of
/// [`crate::run`], which calls it once storage is open and every listener is
/// bound and accepting. Starts the watchdog pings when `WATCHDOG_USEC` is set;
/// they come from a runtime task, so a stuck runtime stops them.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
    if let (Some(interval), Ok(rt)) = (sd_notify::watchdog_enabled(), tokio::runtime::Handle::try_current()) {
        let every = (interval / 2).max(Duration::from_millis(100));
        tracing::info!(?every, "systemd watchdog enabled");
        rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                // The send may block if the manager is slow to read: keep it off the executor threads.
                let _ = tokio::task::spawn_blocking(|| send(&[NotifyState::Watchdog])).await;
            }
        });
    }
}

/// Tell systemd the daemon is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

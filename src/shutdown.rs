//! The daemon's stop signal: a `watch` channel that turns `true` once, when
//! the daemon shuts down. A leaf: every task that must end cleanly holds a
//! clone of the receiver and nothing else.

use tokio::sync::watch;

/// Becomes `true` when the daemon shuts down.
pub type Shutdown = watch::Receiver<bool>;

/// The sending side, held by `run`.
pub type Trigger = watch::Sender<bool>;

/// A new signal: the trigger and its first receiver.
pub fn channel() -> (Trigger, Shutdown) {
    watch::channel(false)
}

/// Resolves once the daemon is shutting down (at once if it already is).
pub async fn stopped(rx: &mut Shutdown) {
    let _ = rx.wait_for(|s| *s).await;
}

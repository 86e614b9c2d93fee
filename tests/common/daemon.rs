//! The daemon booted in-process (`pushbox::run`) on listeners the test has
//! already bound, and stopped again. Shared by the test harnesses
//! (`common`, `support`, the s2s nodes, the ACME test).

use std::time::Duration;
use tokio::{sync::oneshot, task::JoinHandle};

pub struct InProcess {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    /// Run the daemon and wait (at most `patience`) until it is ready;
    /// panics with the daemon's error if it stops before.
    pub async fn start(
        config: pushbox::config::Config,
        listeners: pushbox::Listeners,
        patience: Duration,
    ) -> InProcess {
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let mut task = tokio::spawn(async move {
            pushbox::run(
                config,
                listeners,
                async {
                    let _ = stopped.await;
                },
                move || {
                    let _ = ready_tx.send(());
                },
            )
            .await
        });
        if tokio::time::timeout(patience, ready_rx)
            .await
            .expect("daemon ready in time")
            .is_err()
        {
            panic!("daemon did not start: {:?}", (&mut task).await);
        }
        InProcess {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Ask the daemon to stop (also what dropping does).
    pub fn signal_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Stop the daemon and wait (at most `patience`) for `run` to return:
    /// its result, or `None` if it did not return in time.
    pub async fn stop(&mut self, patience: Duration) -> Option<anyhow::Result<()>> {
        self.signal_stop();
        match self.task.take() {
            Some(t) => tokio::time::timeout(patience, t).await.ok().map(|r| r.unwrap()),
            None => Some(Ok(())),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// A loopback TCP port for a daemon run as its own process, which cannot be
/// handed a bound listener. Free when checked, and below the kernel's
/// ephemeral range, where neither a port-0 bind nor an outgoing connection
/// of a parallel test can take it before the daemon binds it (a port from
/// `bind(":0")` could be): only another caller of this function could, and
/// it picks at random among thousands.
pub fn free_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (20000, ephemeral_low.min(32768));
    if high > low + 1000 {
        for _ in 0..100 {
            let port = rand::random_range(low..high);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    // An unusual ephemeral range: let the kernel choose.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

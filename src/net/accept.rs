//! The accept loop every listener runs: accept, apply the per-IP limits,
//! count the connection, and serve it in a task of its own until the
//! daemon stops.

use super::{ConnGuard, Limiter};
use crate::shutdown::{stopped, Shutdown};
use futures_util::FutureExt;
use std::{future::Future, net::SocketAddr, time::Duration};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

/// Held by every connection task; `run` waits until all are dropped before
/// it returns, so streams get to write their closing bytes.
pub type Alive = mpsc::Sender<()>;

/// What every accept loop shares: the per-IP limits, the stop signal and,
/// for listeners whose connections must end cleanly before `run` returns,
/// the `alive` sender.
#[derive(Clone)]
pub struct Acceptor {
    pub limiter: Limiter,
    pub shutdown: Shutdown,
    pub alive: Option<Alive>,
}

impl Acceptor {
    /// Accept connections on `listener` until shutdown. Each one that the
    /// per-IP limits admit is counted under `label` (the metric's `kind`)
    /// and served by `serve` in its own task, which holds the limiter's slot
    /// and a clone of `alive` while it runs.
    pub fn spawn<F, Fut>(&self, label: &'static str, listener: TcpListener, serve: F)
    where
        F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Acceptor {
            limiter,
            mut shutdown,
            alive,
        } = self.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(listener = label, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    _ = stopped(&mut shutdown) => return,
                };
                let guard = match limiter.admit(peer.ip()) {
                    Ok(g) => g,
                    Err(why) => {
                        tracing::info!(listener = label, %peer, ?why, "connection refused by limits");
                        continue;
                    }
                };
                crate::metrics::connection(label);
                tokio::spawn(connection_task(serve(tcp, peer), guard, alive.clone()));
            }
        });
    }
}

/// A connection's task: its future, then the limiter's slot and `alive`
/// given back. A combinator, not `async move { conn.await; … }`: such a
/// block keeps the captured future and the future it awaits as two values,
/// so every connection task (an idle client session's largest allocation)
/// would be twice the size of the connection's future.
pub fn connection_task<Fut: Future<Output = ()>>(
    conn: Fut,
    guard: ConnGuard,
    alive: Option<Alive>,
) -> impl Future<Output = ()> {
    conn.map(move |()| {
        drop(guard);
        drop(alive);
    })
}

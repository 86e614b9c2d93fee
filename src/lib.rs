//! pushbox: an XMPP server, a push relay and a certificate manager in one
//! daemon. `run` takes already-bound listeners and a shutdown future, so
//! tests bind port 0 and never race for ports.
//!
//! Module map (see `docs/ARCHITECTURE.md`):
//! - [`config`]: typed configuration and its checks
//! - [`store`]: SQLite, reached only through the blocking pool
//! - [`certs`]: one SNI certificate store for every TLS listener
//! - [`net`]: per-IP limits shared by all listeners
//! - [`xmpp`]: streams, SASL, sessions, router, feature modules
//! - [`server`]: the shared state every connection holds
//! - [`check`]: `pushbox check` (configuration, DNS, certificates, ports)

pub mod certs;
pub mod check;
pub mod config;
pub mod net;
pub mod server;
pub mod store;
pub mod xmpp;

use anyhow::{Context, Result};
use config::Config;
use server::Server;
use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};

/// Bound sockets, one list per `[listen]` key.
#[derive(Default)]
pub struct Listeners {
    pub c2s: Vec<TcpListener>,
    pub c2s_direct_tls: Vec<TcpListener>,
    pub https: Vec<TcpListener>,
}

impl Listeners {
    /// Bind every configured address; an address in use is an error naming the key.
    pub async fn bind(config: &Config) -> Result<Listeners> {
        async fn all(key: &str, addrs: &[SocketAddr]) -> Result<Vec<TcpListener>> {
            let mut v = vec![];
            for a in addrs {
                v.push(
                    TcpListener::bind(a)
                        .await
                        .with_context(|| format!("cannot listen on {a} (listen.{key})"))?,
                );
            }
            Ok(v)
        }
        Ok(Listeners {
            c2s: all("c2s", &config.listen.c2s).await?,
            c2s_direct_tls: all("c2s_direct_tls", &config.listen.c2s_direct_tls).await?,
            https: vec![],
        })
    }
}

/// Open storage and certificates and build the shared state.
pub fn build_server(config: Config, shutdown: watch::Receiver<bool>) -> Result<Arc<Server>> {
    let store = store::Store::open_in(&config.data_dir).context("opening the database")?;
    let certs = certs::CertStore::new(&config).context("loading TLS certificates")?;
    let l = &config.limits;
    let limiter = net::Limiter::new(
        l.connections_per_ip_per_minute,
        l.max_connections_per_ip,
        l.max_auth_failures_per_ip,
    );
    Ok(Arc::new(Server {
        config: Arc::new(config),
        store,
        certs,
        sessions: Default::default(),
        modules: Default::default(),
        limiter,
        fake_salt_secret: rand::random(),
        shutdown,
        started: std::time::Instant::now(),
    }))
}

/// Run the daemon until `shutdown` completes, then close every stream
/// cleanly. `ready` is called once storage is open and every listener serves.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::task::spawn_blocking(move || build_server(config, stop_rx)).await??;
    // Every connection task holds a clone of `alive`; when all are gone, we are done.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    // Plain HTTP, the ACME worker, and a TLS-ALPN-01 responder until an HTTPS server exists.
    certs::start_services(&server, !listeners.https.is_empty()).await?;

    for l in listeners.c2s {
        spawn_accept(server.clone(), l, alive.clone(), Kind::C2sStartTls);
    }
    for l in listeners.c2s_direct_tls {
        spawn_accept(server.clone(), l, alive.clone(), Kind::C2sDirectTls);
    }
    #[cfg(unix)]
    spawn_reload(server.clone());
    ready();
    tracing::info!(domain = server.domain(), "pushbox is ready");

    shutdown.await;
    tracing::info!(
        sessions = server.sessions.count(),
        "shutting down: closing every stream"
    );
    let _ = stop_tx.send(true);
    drop(alive);
    // Give sessions time to write their closing bytes.
    let _ = tokio::time::timeout(Duration::from_secs(10), all_done.recv()).await;
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    C2sStartTls,
    C2sDirectTls,
}

fn spawn_accept(server: Arc<Server>, listener: TcpListener, alive: mpsc::Sender<()>, kind: Kind) {
    let mut stop = server.shutdown.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = server::stopped(&mut stop) => return,
            };
            let server = server.clone();
            let alive = alive.clone();
            tokio::spawn(async move {
                let _guard = match server.limiter.admit(peer.ip()) {
                    Ok(g) => g,
                    Err(why) => {
                        tracing::info!(%peer, ?why, "connection refused by limits");
                        return;
                    }
                };
                match kind {
                    Kind::C2sStartTls => xmpp::c2s::serve_starttls(server.clone(), tcp, peer).await,
                    Kind::C2sDirectTls => xmpp::c2s::serve_direct_tls(server.clone(), tcp, peer).await,
                }
                drop(alive);
            });
        }
    });
}

#[cfg(unix)]
fn spawn_reload(server: Arc<Server>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    let mut stop = server.shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                s = hup.recv() => if s.is_none() { return },
                _ = server::stopped(&mut stop) => return,
            }
            let certs = server.certs.clone();
            match tokio::task::spawn_blocking(move || certs.reload()).await {
                Ok(Ok(())) => tracing::info!("SIGHUP: certificates reloaded"),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "SIGHUP: certificate reload failed; keeping the old ones")
                }
                Err(e) => tracing::error!(error = %e, "SIGHUP: reload task failed"),
            }
        }
    });
}

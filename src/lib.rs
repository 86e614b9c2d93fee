//! pushbox: an XMPP server, a push relay and a certificate manager in one
//! daemon. `run` takes already-bound listeners and a shutdown future, so
//! tests bind port 0 and never race for ports.
//!
//! Module map (see `docs/ARCHITECTURE.md`):
//! - [`config`]: typed configuration and its checks
//! - [`store`]: SQLite, reached only through the blocking pool
//! - [`certs`]: one SNI certificate store for every TLS listener
//! - [`net`]: per-IP limits shared by all listeners
//! - [`shutdown`]: the stop signal every task holds
//! - [`core`]: the shared core (config, store, certificates, limits, relay, shutdown)
//! - [`xmpp`]: streams, SASL, sessions, router, feature modules; `xmpp::Server` wraps the core
//! - [`push`]: the push core (relay accounts, tokens, outbox, providers)
//! - [`http`]: the HTTPS listener and the relay's JSON API
//! - [`metrics`]: metric names, recording helpers, the `/metrics` endpoint
//! - [`systemd`]: readiness, stopping and watchdog notifications
//! - [`check`]: `pushbox check` (configuration, DNS, certificates, ports)

pub mod certs;
pub mod check;
pub mod config;
pub mod core;
pub mod escape;
pub mod http;
pub mod metrics;
pub mod net;
pub mod push;
pub mod shutdown;
pub mod store;
pub mod systemd;
pub mod xmpp;

use anyhow::{Context, Result};
use config::Config;
use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};
use tokio::{net::TcpListener, sync::mpsc};
use xmpp::Server;

/// Bound sockets, one list per `[listen]` key.
#[derive(Default)]
pub struct Listeners {
    pub c2s: Vec<TcpListener>,
    pub c2s_direct_tls: Vec<TcpListener>,
    pub s2s: Vec<TcpListener>,
    pub s2s_direct_tls: Vec<TcpListener>,
    pub https: Vec<TcpListener>,
    pub metrics: Vec<TcpListener>,
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
            // Server-to-server listeners only when federation is on.
            s2s: match config.federation.enabled {
                true => all("s2s", &config.listen.s2s).await?,
                false => vec![],
            },
            s2s_direct_tls: match config.federation.enabled {
                true => all("s2s_direct_tls", &config.listen.s2s_direct_tls).await?,
                false => vec![],
            },
            https: all("https", &config.listen.https).await?,
            metrics: all("metrics", &config.metrics.listen).await?,
        })
    }
}

/// Open storage and certificates and build the shared core and the XMPP
/// server around it.
pub fn build_server(config: Config, shutdown: shutdown::Shutdown) -> Result<Arc<Server>> {
    let store = store::Store::open_in(&config.data_dir).context("opening the database")?;
    let certs = certs::CertStore::new(&config).context("loading TLS certificates")?;
    let l = &config.limits;
    let limiter = net::Limiter::new(
        l.connections_per_ip_per_minute,
        l.max_connections_per_ip,
        l.max_auth_failures_per_ip,
    );
    let relay = push::Relay::new(store.clone(), &config.relay, &config.data_dir, &config.public_url())
        .context("starting the push relay")?;
    let core = Arc::new(core::Core {
        config: Arc::new(config),
        store,
        certs,
        limiter,
        relay,
        shutdown,
    });
    Ok(Arc::new(Server::new(core).context("setting up federation")?))
}

/// Run the daemon until `shutdown` completes, then close every stream
/// cleanly. `ready` is called once storage is open and every listener serves.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> Result<()> {
    let (stop_tx, stop_rx) = shutdown::channel();
    let server = tokio::task::spawn_blocking(move || build_server(config, stop_rx)).await??;
    let core = server.core.clone();
    server.modules.start(&server);
    http::upload::spawn_expiry(&core);
    // Every connection task holds a clone of `alive`; when all are gone, we are done.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    // Plain HTTP, the ACME worker, and a TLS-ALPN-01 responder until an HTTPS server exists.
    http::acme::start(&core, !listeners.https.is_empty()).await?;

    for l in listeners.c2s {
        spawn_accept(server.clone(), l, alive.clone(), Kind::C2sStartTls);
    }
    for l in listeners.c2s_direct_tls {
        spawn_accept(server.clone(), l, alive.clone(), Kind::C2sDirectTls);
    }
    core.relay.start(core.shutdown.clone());
    for l in listeners.https {
        http::spawn(core.clone(), l, alive.clone());
    }
    for l in listeners.s2s {
        spawn_accept(server.clone(), l, alive.clone(), Kind::S2sStartTls);
    }
    for l in listeners.s2s_direct_tls {
        spawn_accept(server.clone(), l, alive.clone(), Kind::S2sDirectTls);
    }
    for l in listeners.metrics {
        http::metrics::spawn_serve(core.clone(), l);
    }
    #[cfg(unix)]
    spawn_reload(core.clone());
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
#[allow(
    clippy::enum_variant_names,
    reason = "STARTTLS and direct TLS for clients and servers"
)]
enum Kind {
    C2sStartTls,
    C2sDirectTls,
    S2sStartTls,
    S2sDirectTls,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::C2sStartTls => "c2s_starttls",
            Kind::C2sDirectTls => "c2s_direct_tls",
            Kind::S2sStartTls => "s2s_starttls",
            Kind::S2sDirectTls => "s2s_direct_tls",
        }
    }
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
                _ = shutdown::stopped(&mut stop) => return,
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
                crate::metrics::connection(kind.label());
                match kind {
                    Kind::C2sStartTls => xmpp::c2s::serve_starttls(server.clone(), tcp, peer).await,
                    Kind::C2sDirectTls => xmpp::c2s::serve_direct_tls(server.clone(), tcp, peer).await,
                    Kind::S2sStartTls => xmpp::s2s::incoming::serve_starttls(server.clone(), tcp, peer).await,
                    Kind::S2sDirectTls => xmpp::s2s::incoming::serve_direct_tls(server.clone(), tcp, peer).await,
                }
                drop(alive);
            });
        }
    });
}

#[cfg(unix)]
fn spawn_reload(server: Arc<core::Core>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    let mut stop = server.shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                s = hup.recv() => if s.is_none() { return },
                _ = shutdown::stopped(&mut stop) => return,
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

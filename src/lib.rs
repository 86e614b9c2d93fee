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
//! - [`turn`]: the built-in STUN/TURN server (`[turn] mode = "builtin"`)
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
pub mod turn;
pub mod xmpp;

use anyhow::{Context, Result};
use config::Config;
use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    net::{TcpListener, UdpSocket},
    sync::mpsc,
};
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
    /// The built-in TURN server: UDP and TCP on `turn.port`, TLS on `turn.tls_port`.
    pub turn_udp: Vec<UdpSocket>,
    pub turn_tcp: Vec<TcpListener>,
    pub turn_tls: Vec<TcpListener>,
    pub component: Vec<TcpListener>,
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
            // The component listener only when a component is configured.
            component: match config.components.is_empty() {
                true => vec![],
                false => all("component", &config.listen.component).await?,
            },
            ..Self::bind_turn(config)?
        })
    }

    /// The built-in TURN server's sockets (none in mode `external`). An
    /// IPv6 address binds IPv6 only, so `0.0.0.0` and `::` can both be listed.
    fn bind_turn(config: &Config) -> Result<Listeners> {
        let mut l = Listeners::default();
        let Some(t) = config.turn.as_ref().filter(|t| t.mode == config::TurnMode::Builtin) else {
            return Ok(l);
        };
        let sock = |ip: std::net::IpAddr, port: u16, ty: socket2::Type, key: &str| -> Result<socket2::Socket> {
            let a = SocketAddr::new(ip, port);
            let s = socket2::Socket::new(socket2::Domain::for_address(a), ty, None)?;
            if ip.is_ipv6() {
                s.set_only_v6(true)?;
            }
            if ty == socket2::Type::STREAM {
                s.set_reuse_address(true)?;
            } else {
                // One UDP socket per core (below) share the port; room for
                // bursts from many clients (the kernel caps this at
                // net.core.rmem_max / wmem_max); coturn asks for the same.
                s.set_reuse_port(true)?;
                let _ = s.set_recv_buffer_size(4 << 20);
                let _ = s.set_send_buffer_size(4 << 20);
            }
            s.bind(&a.into())
                .with_context(|| format!("cannot listen on {a} ({key})"))?;
            s.set_nonblocking(true)?;
            Ok(s)
        };
        // One UDP socket per core with SO_REUSEPORT: the kernel spreads
        // clients over them by address, so each client's packets stay in
        // order on one socket while the cores share the load. A later
        // socket failing to bind means someone else's took the port.
        let per_ip = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        for ip in &t.bind {
            for i in 0..per_ip {
                let u = sock(*ip, t.port, socket2::Type::DGRAM, &format!("turn.port, socket {i}"))?;
                l.turn_udp.push(UdpSocket::from_std(u.into())?);
            }
            let s = sock(*ip, t.port, socket2::Type::STREAM, "turn.port")?;
            s.listen(1024)?;
            l.turn_tcp.push(TcpListener::from_std(s.into())?);
            if let Some(p) = t.tls_port() {
                let s = sock(*ip, p, socket2::Type::STREAM, "turn.tls_port")?;
                s.listen(1024)?;
                l.turn_tls.push(TcpListener::from_std(s.into())?);
            }
        }
        Ok(l)
    }
}

/// Open storage and certificates and build the shared core and the XMPP
/// server around it.
pub fn build_server(mut config: Config, shutdown: shutdown::Shutdown) -> Result<Arc<Server>> {
    if let Some(t) = config
        .turn
        .as_mut()
        .filter(|t| t.mode == config::TurnMode::Builtin && t.secret.is_empty())
    {
        t.secret = turn::load_or_create_secret(&config.data_dir).context("the TURN secret")?;
    }
    let store = store::Store::open_in(&config.data_dir).context("opening the database")?;
    let certs = certs::CertStore::new(&config).context("loading TLS certificates")?;
    let l = &config.limits;
    let limiter = net::Limiter::new(
        l.connections_per_ip_per_minute,
        l.max_connections_per_ip,
        l.max_auth_failures_per_ip,
    );
    // Called on the blocking pool (or a plain thread with a runtime handle):
    // the relay's store may be PostgreSQL, reached asynchronously.
    let relay = tokio::runtime::Handle::current()
        .block_on(async {
            let backend = push::backend::open(&config.relay, store.clone(), &config.data_dir).await?;
            push::Relay::new(backend, &config.relay, &config.data_dir, &config.public_url()).await
        })
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

    // One accept loop for every listener: per-IP limits, metrics, shutdown.
    let acceptor = net::Acceptor {
        limiter: core.limiter.clone(),
        shutdown: core.shutdown.clone(),
        alive: Some(alive.clone()),
    };
    for l in listeners.c2s {
        let s = server.clone();
        acceptor.spawn("c2s_starttls", l, move |tcp, peer| {
            xmpp::c2s::serve_starttls(s.clone(), tcp, peer)
        });
    }
    for l in listeners.c2s_direct_tls {
        let s = server.clone();
        acceptor.spawn("c2s_direct_tls", l, move |tcp, peer| {
            xmpp::c2s::serve_direct_tls(s.clone(), tcp, peer)
        });
    }
    core.relay.start(core.shutdown.clone());
    // XMPP over WebSocket on the HTTPS listeners: HTTP hands upgraded
    // connections to the XMPP layer through this.
    let websocket: Option<http::websocket::Handler> = core.config.websocket.enabled.then(|| {
        let s = server.clone();
        Arc::new(move |conn: http::websocket::Connection| {
            Box::pin(xmpp::c2s::websocket::serve(s.clone(), conn))
                as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        }) as http::websocket::Handler
    });
    for l in listeners.https {
        let (c, tls, ws) = (core.clone(), http::tls_acceptor(&core), websocket.clone());
        acceptor.spawn("https", l, move |tcp, peer| {
            http::serve(c.clone(), tls.clone(), tcp, peer, ws.clone())
        });
    }
    for l in listeners.s2s {
        let s = server.clone();
        acceptor.spawn("s2s_starttls", l, move |tcp, peer| {
            xmpp::s2s::incoming::serve_starttls(s.clone(), tcp, peer)
        });
    }
    for l in listeners.s2s_direct_tls {
        let s = server.clone();
        acceptor.spawn("s2s_direct_tls", l, move |tcp, peer| {
            xmpp::s2s::incoming::serve_direct_tls(s.clone(), tcp, peer)
        });
    }
    for l in listeners.component {
        let s = server.clone();
        acceptor.spawn("component", l, move |tcp, peer| {
            xmpp::component::serve(s.clone(), tcp, peer)
        });
    }
    if !listeners.metrics.is_empty() {
        // Install the recorder now, so that counts from before the first scrape are kept.
        metrics::handle();
    }
    for l in listeners.metrics {
        let c = core.clone();
        net::Acceptor {
            alive: None,
            ..acceptor.clone()
        }
        .spawn("metrics", l, move |tcp, _| http::metrics::serve(c.clone(), tcp));
    }
    // The built-in TURN server: UDP sockets served directly, TCP and TLS
    // through the accept loop like every listener.
    if !(listeners.turn_udp.is_empty() && listeners.turn_tcp.is_empty() && listeners.turn_tls.is_empty()) {
        let ts = turn::TurnServer::new(&core.config, core.limiter.clone(), core.shutdown.clone())?;
        ts.spawn_sweeper();
        for u in listeners.turn_udp {
            tokio::spawn(turn::transport::serve_udp(ts.clone(), u));
        }
        let turn_acceptor = net::Acceptor {
            alive: None,
            ..acceptor.clone()
        };
        for l in listeners.turn_tcp {
            let ts = ts.clone();
            turn_acceptor.spawn("turn_tcp", l, move |tcp, peer| {
                turn::transport::serve_tcp(ts.clone(), tcp, peer)
            });
        }
        let tls = tokio_rustls::TlsAcceptor::from(core.certs.server_config(&[]));
        for l in listeners.turn_tls {
            let (ts, tls) = (ts.clone(), tls.clone());
            turn_acceptor.spawn("turn_tls", l, move |tcp, peer| {
                turn::transport::serve_tls(ts.clone(), tls.clone(), tcp, peer)
            });
        }
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
    // Every holder of `alive` but the connection tasks: else `all_done`
    // never closes, and each stop waits out the whole grace period.
    drop(alive);
    drop(acceptor);
    // Give sessions time to write their closing bytes.
    let _ = tokio::time::timeout(Duration::from_secs(10), all_done.recv()).await;
    // The archive writer gathers inserts for a few milliseconds: write them out.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        xmpp::modules::mam::Mam::archive(&server).flush(),
    )
    .await;
    Ok(())
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

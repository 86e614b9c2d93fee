//! HTTP: one HTTPS connection (TLS from the shared certificate store, ALPN
//! h2 and http/1.1, hyper's auto server) and its routes — the relay API,
//! uploads, invitation pages, XMPP over WebSocket and its host-meta
//! ([`websocket`]) — plus the plain HTTP listener for ACME
//! ([`acme`]) and `/metrics` ([`metrics`]). Connections arrive through
//! `net::Acceptor`. This tree is the only code that knows HTTP routes and
//! JSON shapes, and it sees only the `Core`, never the XMPP server.

pub mod acme;
pub mod invite;
pub mod metrics;
pub mod relay_api;
pub mod upload;
pub mod websocket;

use crate::{certs::ChannelBindings, core::Core};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::net::TcpStream;

pub type Resp = Response<Full<Bytes>>;

/// Time allowed for a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// The TLS acceptor for HTTPS listeners (ALPN h2 and http/1.1).
pub fn tls_acceptor(core: &Core) -> tokio_rustls::TlsAcceptor {
    tokio_rustls::TlsAcceptor::from(core.certs.server_config(&[b"h2", b"http/1.1"]))
}

/// The WebSocket side of one HTTPS connection.
struct WsCtx {
    handler: Option<websocket::Handler>,
    bindings: ChannelBindings,
    /// Set by the handshake, taken by the connection's task (a std mutex:
    /// only set and taken, never held across an await).
    pending: Mutex<Option<websocket::Pending>>,
}

/// Serve one HTTPS connection (accepted by `net::accept`) until it ends or
/// the daemon stops. `ws` serves upgraded XMPP WebSocket connections
/// (`None`: WebSocket is off).
pub async fn serve(
    core: Arc<Core>,
    tls: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    ws: Option<websocket::Handler>,
) {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "https TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    // What SCRAM-*-PLUS binds to when XMPP runs over this connection.
    let bindings = match ws {
        Some(_) => core.certs.channel_bindings(stream.get_ref().1),
        None => ChannelBindings::default(),
    };
    let ctx = Arc::new(WsCtx {
        handler: ws,
        bindings,
        pending: Mutex::new(None),
    });
    let mut stop = core.shutdown.clone();
    // A request head must arrive within the auth timeout: without a
    // timer hyper never enforces one, and a client trickling header
    // bytes would hold the connection for ever.
    let head_timeout = core.config.limits.auth_timeout.get();
    let svc = {
        let (core, ctx) = (core.clone(), ctx.clone());
        hyper::service::service_fn(move |req| handle(core.clone(), peer, req, ctx.clone()))
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            tracing::debug!(%peer, error = %e, "https connection ended with an error");
        },
        _ = crate::shutdown::stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
    // An upgraded connection continues here, in the same task.
    let pending = ctx.pending.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let (Some(p), Some(h)) = (pending, &ctx.handler) {
        p.run(&core, h).await;
    }
}

async fn handle(core: Arc<Core>, peer: SocketAddr, req: Request<Incoming>, ws: Arc<WsCtx>) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_string();
    let resp = if path.starts_with("/api/v1/") && core.config.relay.enabled {
        relay_api::handle(&core.relay, core.domain(), peer, req).await
    } else if path.starts_with("/invite/") {
        invite::handle(&core, peer, req).await
    } else if path.starts_with("/upload/") {
        upload::handle(&core, req).await
    } else if path == websocket::WEBSOCKET_PATH && ws.handler.is_some() {
        let mut pending = None;
        let r = websocket::handshake(req, peer, ws.bindings.clone(), &mut pending);
        if pending.is_some() {
            *ws.pending.lock().unwrap_or_else(|p| p.into_inner()) = pending;
        }
        r
    } else if path == "/.well-known/host-meta" || path == "/.well-known/host-meta.json" {
        websocket::host_meta(&core, path.ends_with(".json"))
    } else {
        json(StatusCode::NOT_FOUND, serde_json::json!({ "detail": "Not found." }))
    };
    Ok(resp)
}

pub fn json(status: StatusCode, v: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

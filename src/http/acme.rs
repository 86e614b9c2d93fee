//! What certificates need over HTTP: the plain HTTP listener (`listen.http`,
//! port 80 in production), which answers ACME HTTP-01 challenges from the
//! [`CertStore`](crate::certs::CertStore) and redirects everything else to
//! HTTPS, and, until the HTTPS server binds `listen.https` itself, a
//! TLS-ALPN-01 responder there. [`start`] also starts the ACME worker.

use crate::{
    certs::acme,
    config::{AcmeChallenge, TlsMode},
    core::Core,
    net::Acceptor,
};
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Serve one plain HTTP connection: answer, then close.
async fn serve_plain(core: Arc<Core>, tcp: TcpStream) {
    let svc = hyper::service::service_fn(|req| {
        let core = core.clone();
        async move { Ok::<_, Infallible>(answer(&core, &req)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(false)
        .serve_connection(TokioIo::new(tcp), svc);
    let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
}

fn answer(core: &Core, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
        return match core.certs.http01_key_auth(token) {
            Some(key_auth) => {
                tracing::info!(token, "ACME: answered an HTTP-01 challenge");
                reply(StatusCode::OK, "application/octet-stream", key_auth)
            }
            None => reply(StatusCode::NOT_FOUND, "text/plain", "no such challenge\n".into()),
        };
    }
    // Everything else goes to HTTPS, on a name this server serves.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map(|(h, _)| h).unwrap_or(h).to_ascii_lowercase())
        .filter(|h| core.certs.names().iter().any(|n| n == h))
        .unwrap_or_else(|| core.domain().to_string());
    let port = core
        .config
        .listen
        .https
        .first()
        .map(|a| a.port())
        .filter(|p| *p != 443)
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let target = format!(
        "https://{host}{port}{}",
        req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let mut r = reply(StatusCode::MOVED_PERMANENTLY, "text/plain", format!("see {target}\n"));
    if let Ok(v) = header::HeaderValue::from_str(&target) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

/// Until the HTTPS server serves `listen.https`, ACME's TLS-ALPN-01 still
/// needs a TLS endpoint there: complete challenge handshakes, and answer
/// other HTTPS clients with 503 over the real certificate.
async fn serve_tls_alpn(acceptor: tokio_rustls::TlsAcceptor, tcp: TcpStream, peer: SocketAddr) {
    let work = async {
        let mut tls = acceptor.accept(tcp).await.ok()?;
        if tls.get_ref().1.alpn_protocol() == Some(crate::certs::ALPN_ACME_TLS) {
            tracing::info!(%peer, "ACME: answered a TLS-ALPN-01 challenge");
            let _ = tls.shutdown().await;
            return Some(());
        }
        let mut buf = vec![0u8; 8192];
        let _ = tls.read(&mut buf).await.ok()?;
        let body = "pushbox: HTTPS services are not available on this listener yet\n";
        let head = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await.ok()?;
        tls.write_all(body.as_bytes()).await.ok()?;
        tls.shutdown().await.ok()
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), work).await;
}

/// Start what certificates need beside the TLS listeners: the plain HTTP
/// listener (`listen.http`), and in mode `acme` the ACME worker plus, while no
/// HTTPS server serves `listen.https` (`https_served` false), a TLS-ALPN-01
/// responder there.
pub async fn start(core: &Arc<Core>, https_served: bool) -> Result<()> {
    let config = &core.config;
    let acceptor = Acceptor {
        limiter: core.limiter.clone(),
        shutdown: core.shutdown.clone(),
        alive: None,
    };
    for a in &config.listen.http {
        let l = tokio::net::TcpListener::bind(a)
            .await
            .with_context(|| format!("cannot listen on {a} (listen.http)"))?;
        let c = core.clone();
        acceptor.spawn("http", l, move |tcp, _| serve_plain(c.clone(), tcp));
    }
    if config.tls.mode == TlsMode::Acme {
        if config.tls.acme.challenge == AcmeChallenge::TlsAlpn01 && !https_served {
            for a in &config.listen.https {
                let l = tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen on {a} (listen.https)"))?;
                let tls = tokio_rustls::TlsAcceptor::from(core.certs.server_config(&[b"http/1.1".as_slice()]));
                acceptor.spawn("https", l, move |tcp, peer| serve_tls_alpn(tls.clone(), tcp, peer));
            }
        }
        acme::start(config, core.certs.clone(), core.shutdown.clone()).context("starting ACME")?;
    }
    Ok(())
}

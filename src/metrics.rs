//! Prometheus metrics: the metric names, one-line recording helpers, and the
//! small HTTP server that answers `GET /metrics` on `[metrics] listen`.
//!
//! Recording goes through the `metrics` facade, so any module can count with
//! one line and no handle:
//!
//! ```text
//! metrics::counter!(crate::metrics::PUSHES, "provider" => "apns", "outcome" => "delivered").increment(1);
//! ```
//!
//! Names (all prefixed `pushbox_`; see `docs/operations.md` for the list):
//! counters end in `_total`; gauges that describe state (sessions, database
//! size, certificate expiry) are computed when scraped.

use crate::server::{self, Server};
use http_body_util::Full;
use hyper::{body::Bytes, Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::{convert::Infallible, sync::Arc, sync::OnceLock, time::Duration};
use tokio::net::TcpListener;

/// Counter: accepted TCP connections, label `kind` (`c2s_starttls`, `c2s_direct_tls`, later `s2s_*`, `https`).
pub const CONNECTIONS: &str = "pushbox_connections_total";
/// Counter: stanzas through the router, label `kind` (`message`, `presence`, `iq`).
pub const STANZAS_ROUTED: &str = "pushbox_stanzas_routed_total";
/// Counter: SASL outcomes, label `result` (`ok`, `failed`).
pub const LOGINS: &str = "pushbox_logins_total";
/// Gauge: bound client sessions.
pub const SESSIONS_ONLINE: &str = "pushbox_sessions_online";
/// Gauge: bytes of the SQLite database, its WAL included.
pub const DATABASE_SIZE: &str = "pushbox_database_size_bytes";
/// Gauge: certificate `notAfter` as Unix seconds, label `name`.
pub const CERT_EXPIRY: &str = "pushbox_certificate_expiry_timestamp_seconds";
/// Counter (relay): pushes, labels `provider` (`apns`, `fcm`, `webpush`) and
/// `outcome` (`accepted`, `delivered`, `retried`, `failed`, `pruned`).
pub const PUSHES: &str = "pushbox_pushes_total";
/// Gauge (relay): pushes waiting in the outbox.
pub const OUTBOX_DEPTH: &str = "pushbox_outbox_depth";
/// Gauge (relay): age in seconds of the oldest push in the outbox.
pub const OUTBOX_OLDEST_AGE: &str = "pushbox_outbox_oldest_age_seconds";
/// Gauge (federation): s2s streams, labels `direction` (`in`, `out`) and `state`.
pub const S2S_STREAMS: &str = "pushbox_s2s_streams";

/// The process-wide recorder, installed on first use. Installing is global
/// (one per process), so in-process tests running several daemons share it.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_counter!(CONNECTIONS, "Accepted TCP connections by listener kind.");
    describe_counter!(STANZAS_ROUTED, "Stanzas routed, by stanza kind.");
    describe_counter!(LOGINS, "SASL authentications by result.");
    describe_gauge!(SESSIONS_ONLINE, "Bound client sessions.");
    describe_gauge!(DATABASE_SIZE, Unit::Bytes, "Size of the SQLite database and its WAL.");
    describe_gauge!(
        CERT_EXPIRY,
        Unit::Seconds,
        "Certificate notAfter, Unix seconds, per name."
    );
}

/// Count an accepted connection.
pub fn connection(kind: &'static str) {
    metrics::counter!(CONNECTIONS, "kind" => kind).increment(1);
}

/// Count a routed stanza.
pub fn stanza_routed(kind: crate::xmpp::stanza::Kind) {
    use crate::xmpp::stanza::Kind;
    let k = match kind {
        Kind::Message => "message",
        Kind::Presence => "presence",
        Kind::Iq => "iq",
    };
    metrics::counter!(STANZAS_ROUTED, "kind" => k).increment(1);
}

/// Count a SASL outcome.
pub fn login(ok: bool) {
    metrics::counter!(LOGINS, "result" => if ok { "ok" } else { "failed" }).increment(1);
}

/// Update the gauges that describe state, then render the text format.
async fn render(server: &Arc<Server>) -> String {
    metrics::gauge!(SESSIONS_ONLINE).set(server.sessions.count() as f64);
    let db = server.store.path().to_path_buf();
    let certs = server.certs.clone();
    let (size, expiries) = tokio::task::spawn_blocking(move || {
        let mut size = 0u64;
        for suffix in ["", "-wal"] {
            let mut p = db.clone().into_os_string();
            p.push(suffix);
            size += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
        (size, certs.expiries())
    })
    .await
    .unwrap_or_default();
    metrics::gauge!(DATABASE_SIZE).set(size as f64);
    for (name, not_after) in expiries {
        metrics::gauge!(CERT_EXPIRY, "name" => name).set(not_after as f64);
    }
    let h = handle();
    h.run_upkeep();
    h.render()
}

/// Serve `GET /metrics` on `listener` until the daemon stops.
pub fn spawn_serve(server: Arc<Server>, listener: TcpListener) {
    handle();
    let mut stop = server.shutdown.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = server::stopped(&mut stop) => return,
            };
            let server = server.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(answer(&server, &req).await) }
                });
                let conn =
                    hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
                // Scrapers are local and quick; a stuck one is dropped.
                let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
            });
        }
    });
}

async fn answer(server: &Arc<Server>, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ctype),
        );
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(server).await,
        ),
        (_, "/metrics") => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".into()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "metrics are at /metrics\n".into()),
    }
}

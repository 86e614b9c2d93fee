//! The `GET /metrics` endpoint on `[metrics] listen`: Prometheus text
//! format, with the gauges that describe state (database size, certificate
//! expiry) computed when scraped.

use crate::{core::Core, metrics as m};
use http_body_util::Full;
use hyper::{body::Bytes, Method, Request, Response, StatusCode};
use std::{convert::Infallible, sync::Arc, time::Duration};
use tokio::net::TcpStream;

/// Update the gauges that describe state, then render the text format.
async fn render(core: &Arc<Core>) -> String {
    let db = core.store.path().to_path_buf();
    let certs = core.certs.clone();
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
    metrics::gauge!(m::DATABASE_SIZE).set(size as f64);
    for (name, not_after) in expiries {
        metrics::gauge!(m::CERT_EXPIRY, "name" => name).set(not_after as f64);
    }
    let h = m::handle();
    h.run_upkeep();
    h.render()
}

/// Serve `GET /metrics` on one connection (accepted by `net::accept`).
pub async fn serve(core: Arc<Core>, tcp: TcpStream) {
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let core = core.clone();
        async move { Ok::<_, Infallible>(answer(&core, &req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
    // Scrapers are local and quick; a stuck one is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
}

async fn answer(core: &Arc<Core>, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
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
            render(core).await,
        ),
        (_, "/metrics") => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".into()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "metrics are at /metrics\n".into()),
    }
}

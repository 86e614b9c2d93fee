//! A small HTTPS client for the providers: rustls (ring) over tokio, HTTP/2
//! when the server offers it, else one HTTP/1.1 connection per request.
//! Over HTTP/2 each origin gets long-lived, multiplexed connections: a push
//! goes on the least busy one that has a stream free under the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS`; when every stream of every open
//! connection is busy another is opened, up to a cap
//! (`relay.provider_connections`), so pushes do not queue behind one
//! connection's limit. A connection is dropped from the pool when it closes
//! or is sent GOAWAY. One client per credential, so each credential has its
//! own connections.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use std::{
    collections::HashMap,
    path::Path,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// An idle HTTP/2 connection is pinged this often, and dropped when the
/// answer takes longer than [`PING_TIMEOUT`].
const PING_INTERVAL: Duration = Duration::from_secs(60);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 connections per origin unless the client is told otherwise.
const DEFAULT_CONNECTIONS: usize = crate::config::relay::DEFAULT_PROVIDER_CONNECTIONS;
/// Largest response body read from a provider.
const MAX_RESPONSE: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad URL {0}")]
    BadUrl(String),
    #[error("connection: {0}")]
    Connect(String),
    #[error("request: {0}")]
    Request(String),
    #[error("timed out")]
    Timeout,
}

pub struct HttpsClient {
    tls: Arc<ClientConfig>,
    /// Most HTTP/2 connections per origin.
    max_connections: usize,
    // A std Mutex: held only to pick or change a pool, never across `.await`.
    h2: Mutex<HashMap<String, Vec<Arc<H2Conn>>>>,
    // Serializes connection set-up so that a burst shares one new connection
    // instead of racing to open several. Local to this client.
    connecting: tokio::sync::Mutex<()>,
}

/// One HTTP/2 connection of a pool.
struct H2Conn {
    send: h2::client::SendRequest<Bytes>,
    /// Requests on it that have not been answered in full.
    busy: AtomicUsize,
    /// Set when the connection ended, failed, or was sent GOAWAY.
    closed: Arc<AtomicBool>,
}

impl H2Conn {
    /// Whether a request sent now would open a stream at once rather
    /// than wait for one of this connection's streams to end.
    fn has_room(&self) -> bool {
        self.busy.load(Ordering::Relaxed) < self.send.current_max_send_streams()
    }
}

/// A request counted on its connection until dropped.
struct Busy(Arc<H2Conn>);

impl Busy {
    fn new(c: &Arc<H2Conn>) -> Busy {
        c.busy.fetch_add(1, Ordering::Relaxed);
        Busy(c.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Pick {
    Use(Busy),
    Open,
}

/// The platform's roots plus the PEM certificates in `extra`.
pub fn tls_config(extra: Option<&Path>) -> anyhow::Result<Arc<ClientConfig>> {
    let mut cfg = builder()?.with_root_certificates(roots(extra)?).with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Like [`tls_config`], presenting a client certificate: `chain` (PEM, leaf
/// first) with the private key in `key` (PEM: PKCS#8, RSA or EC).
pub fn tls_config_with_client_cert(
    extra: Option<&Path>,
    chain: &Path,
    key: &Path,
) -> anyhow::Result<Arc<ClientConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(chain)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", chain.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("parsing {}: {e}", chain.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", chain.display());
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            anyhow::anyhow!("{} holds no PEM private key (PKCS#8, RSA or EC)", key.display())
        }
        e => anyhow::anyhow!("reading the private key in {}: {e}", key.display()),
    })?;
    let mut cfg = builder()?
        .with_root_certificates(roots(extra)?)
        .with_client_auth_cert(certs, private)
        .map_err(|e| {
            anyhow::anyhow!(
                "the certificate in {} and the key in {} do not make a usable pair: {e}",
                chain.display(),
                key.display()
            )
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn builder() -> anyhow::Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>> {
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?,
    )
}

fn roots(extra: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    if let Some(p) = extra {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(p)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("parsing {}: {e}", p.display()))?;
        if certs.is_empty() {
            anyhow::bail!("{} holds no certificate", p.display());
        }
        for c in certs {
            roots.add(c).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        }
    }
    Ok(roots)
}

impl HttpsClient {
    pub fn new(extra_roots: Option<&Path>) -> anyhow::Result<HttpsClient> {
        Ok(Self::with_tls(tls_config(extra_roots)?))
    }

    pub fn with_tls(tls: Arc<ClientConfig>) -> HttpsClient {
        HttpsClient {
            tls,
            max_connections: DEFAULT_CONNECTIONS,
            h2: Mutex::new(HashMap::new()),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// At most `n` (at least 1) HTTP/2 connections per origin.
    pub fn max_connections(mut self, n: usize) -> HttpsClient {
        self.max_connections = n.max(1);
        self
    }

    /// The TLS configuration (trust roots) of this client.
    pub fn tls(&self) -> Arc<ClientConfig> {
        self.tls.clone()
    }

    /// Send `req` (an absolute https URL) and read the whole answer.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Bytes>, ClientError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.send_inner(req))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn send_inner(&self, mut req: Request<Full<Bytes>>) -> Result<Response<Bytes>, ClientError> {
        let uri = req.uri().clone();
        if uri.scheme_str() != Some("https") {
            return Err(ClientError::BadUrl(uri.to_string()));
        }
        let host = uri
            .host()
            .ok_or_else(|| ClientError::BadUrl(uri.to_string()))?
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let origin = format!("{host}:{port}");
        let busy = match self.pick(&origin) {
            Pick::Use(b) => b,
            Pick::Open => {
                let gate = self.connecting.lock().await;
                // Another request may have opened one meanwhile.
                match self.pick(&origin) {
                    Pick::Use(b) => b,
                    Pick::Open => match self.connect(&host, port).await? {
                        Conn::H2(c) => {
                            let c = Arc::new(c);
                            let b = Busy::new(&c);
                            self.h2
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .entry(origin.clone())
                                .or_default()
                                .push(c);
                            b
                        }
                        Conn::H1(mut s) => {
                            drop(gate);
                            // HTTP/1.1 wants origin-form and a Host header.
                            let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
                            *req.uri_mut() = pq.parse().map_err(|_| ClientError::BadUrl(uri.to_string()))?;
                            let host_hdr = if port == 443 { host.clone() } else { origin.clone() };
                            req.headers_mut().insert(
                                hyper::header::HOST,
                                host_hdr.parse().map_err(|_| ClientError::BadUrl(uri.to_string()))?,
                            );
                            let resp = s
                                .send_request(req)
                                .await
                                .map_err(|e| ClientError::Request(e.to_string()))?;
                            return read(resp).await;
                        }
                    },
                }
            }
        };
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(never) => match never {},
        };
        let mut head = Request::from_parts(parts, ());
        if !body.is_empty() && !head.headers().contains_key(hyper::header::CONTENT_LENGTH) {
            head.headers_mut()
                .insert(hyper::header::CONTENT_LENGTH, body.len().into());
        }
        let conn = &busy.0;
        let mut send = match conn.send.clone().ready().await {
            Ok(s) => s,
            Err(e) => {
                conn.closed.store(true, Ordering::Relaxed);
                return Err(ClientError::Connect(e.to_string()));
            }
        };
        let (answer, mut stream) = match send.send_request(head, body.is_empty()) {
            Ok(r) => r,
            Err(e) => {
                // GOAWAY, reset connection: the next push uses or opens another.
                if !e.is_reset() {
                    conn.closed.store(true, Ordering::Relaxed);
                }
                return Err(ClientError::Request(e.to_string()));
            }
        };
        if !body.is_empty() {
            // Sent as the stream's flow-control window allows (h2 buffers it).
            stream
                .send_data(body, true)
                .map_err(|e| ClientError::Request(e.to_string()))?;
        }
        let resp = answer.await.map_err(|e| {
            if e.is_go_away() || e.is_io() {
                conn.closed.store(true, Ordering::Relaxed);
            }
            ClientError::Request(e.to_string())
        })?;
        let (parts, mut body) = resp.into_parts();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| ClientError::Request(format!("reading the answer: {e}")))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if data.len() + chunk.len() > MAX_RESPONSE {
                return Err(ClientError::Request("reading the answer: length limit exceeded".into()));
            }
            data.extend_from_slice(&chunk);
        }
        drop(busy);
        Ok(Response::from_parts(parts, Bytes::from(data)))
    }

    /// The least busy open connection to `origin` with a stream free; else
    /// `Open` while the pool is below its cap; else the least busy one (the
    /// request then waits there for a stream).
    fn pick(&self, origin: &str) -> Pick {
        let mut map = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        let Some(pool) = map.get_mut(origin) else {
            return Pick::Open;
        };
        pool.retain(|c| !c.closed.load(Ordering::Relaxed));
        let least = |free_only: bool| {
            pool.iter()
                .filter(|c| !free_only || c.has_room())
                .min_by_key(|c| c.busy.load(Ordering::Relaxed))
        };
        if let Some(c) = least(true) {
            return Pick::Use(Busy::new(c));
        }
        if pool.len() < self.max_connections {
            return Pick::Open;
        }
        match least(false) {
            Some(c) => Pick::Use(Busy::new(c)),
            None => Pick::Open,
        }
    }

    async fn connect(&self, host: &str, port: u16) -> Result<Conn, ClientError> {
        let connect = async {
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(|e| ClientError::Connect(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(host.to_string()).map_err(|_| ClientError::BadUrl(host.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| ClientError::Connect(format!("TLS with {host}: {e}")))?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            if h2 {
                let (send, mut conn) = h2::client::handshake(tls)
                    .await
                    .map_err(|e| ClientError::Connect(e.to_string()))?;
                let mut pings = conn
                    .ping_pong()
                    .ok_or_else(|| ClientError::Connect("HTTP/2 pings unavailable".into()))?;
                let closed = Arc::new(AtomicBool::new(false));
                let (settled, settled_rx) = tokio::sync::oneshot::channel();
                let ended = closed.clone();
                tokio::spawn(async move {
                    let life = async move {
                        // The server's SETTINGS (its stream limit) come
                        // before its answer to a first ping: once that is
                        // in, the limit this connection reports is the
                        // server's, not the protocol's "unlimited" default.
                        let first = pings.ping(h2::Ping::opaque()).await;
                        let _ = settled.send(first.map_err(|e| e.to_string()));
                        loop {
                            tokio::time::sleep(PING_INTERVAL).await;
                            match tokio::time::timeout(PING_TIMEOUT, pings.ping(h2::Ping::opaque())).await {
                                Ok(Ok(_)) => {}
                                _ => {
                                    tracing::debug!("provider connection did not answer a ping: closing it");
                                    return;
                                }
                            }
                        }
                    };
                    tokio::select! {
                        r = conn => if let Err(e) = r {
                            tracing::debug!(error = %e, "provider connection ended");
                        },
                        () = life => {}
                    }
                    ended.store(true, Ordering::Relaxed);
                });
                match settled_rx.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(ClientError::Connect(e)),
                    Err(_) => return Err(ClientError::Connect("connection closed after the handshake".into())),
                }
                Ok(Conn::H2(H2Conn {
                    send,
                    busy: AtomicUsize::new(0),
                    closed,
                }))
            } else {
                let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| ClientError::Connect(e.to_string()))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(Conn::H1(s))
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| ClientError::Timeout)?
    }
}

enum Conn {
    H2(H2Conn),
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
}

async fn read(resp: Response<hyper::body::Incoming>) -> Result<Response<Bytes>, ClientError> {
    let (parts, body) = resp.into_parts();
    let body = http_body_util::Limited::new(body, MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| ClientError::Request(format!("reading the answer: {e}")))?
        .to_bytes();
    Ok(Response::from_parts(parts, body))
}

/// `Retry-After` of a provider's answer, as a wait from now (RFC 9110
/// §10.2.3: delta-seconds or an HTTP-date). `None` when absent or unreadable:
/// the caller then uses its normal backoff.
pub fn retry_after(resp: &Response<Bytes>) -> Option<Duration> {
    let v = resp.headers().get(hyper::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(v, std::time::SystemTime::now())
}

/// Parse a `Retry-After` value at time `now`. A date already past means
/// "now" (zero wait).
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Larger than u64 seconds: wait "forever", which the push's expiry caps.
        return Some(Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn retry_after_as_delta_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_as_http_date() {
        // Sun, 06 Nov 1994 08:49:37 GMT is 784111777 (RFC 9110's example date).
        let date = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let now = date - Duration::from_secs(90);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(90))
        );
        // The obsolete forms RFC 9110 says a recipient must accept.
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:37 1994", now),
            Some(Duration::from_secs(90))
        );
        // A date already past: retry now.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", date + Duration::from_secs(5)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_garbage_is_ignored() {
        let now = SystemTime::now();
        for v in [
            "",
            "soon",
            "-5",
            "1.5",
            "12 seconds",
            "Sun, 06 Nov 1994",
            "Mon, 32 Foo 2026 99:00:00 GMT",
        ] {
            assert_eq!(parse_retry_after(v, now), None, "{v:?}");
        }
    }
}

//! A small HTTPS client for the providers: rustls (ring) over tokio, HTTP/2
//! when the server offers it (one long-lived, multiplexed connection per
//! origin, replaced when it closes or is sent GOAWAY), else one HTTP/1.1
//! connection per request. One client per credential, so each credential
//! has its own connection.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{client::conn::http2, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use std::{collections::HashMap, path::Path, sync::Arc, sync::Mutex, time::Duration};
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
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
    // A std Mutex: held only to clone or replace a sender, never across `.await`.
    h2: Mutex<HashMap<String, http2::SendRequest<Full<Bytes>>>>,
    // Serializes connection set-up so that a burst shares one new connection
    // instead of racing to open several. Local to this client.
    connecting: tokio::sync::Mutex<()>,
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
            h2: Mutex::new(HashMap::new()),
            connecting: tokio::sync::Mutex::new(()),
        }
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
        let mut gate = None;
        let mut cached = self.cached(&origin);
        if cached.is_none() {
            gate = Some(self.connecting.lock().await);
            cached = self.cached(&origin);
        }
        let mut sender = match cached {
            Some(s) => s,
            None => match self.connect(&host, port).await? {
                Conn::H2(s) => {
                    self.h2
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(origin.clone(), s.clone());
                    s
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
        };
        drop(gate);
        match sender.ready().await {
            Ok(()) => {}
            Err(e) => {
                self.forget(&origin);
                return Err(ClientError::Connect(e.to_string()));
            }
        }
        match sender.send_request(req).await {
            Ok(resp) => read(resp).await,
            Err(e) => {
                // GOAWAY, reset connection: the next push opens a new one.
                self.forget(&origin);
                Err(ClientError::Request(e.to_string()))
            }
        }
    }

    fn cached(&self, origin: &str) -> Option<http2::SendRequest<Full<Bytes>>> {
        let mut map = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(origin) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                map.remove(origin);
                None
            }
            None => None,
        }
    }

    fn forget(&self, origin: &str) {
        self.h2.lock().unwrap_or_else(|p| p.into_inner()).remove(origin);
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
            let io = TokioIo::new(tls);
            if h2 {
                let (s, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(60))
                    .keep_alive_timeout(Duration::from_secs(20))
                    .handshake(io)
                    .await
                    .map_err(|e| ClientError::Connect(e.to_string()))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "provider connection ended");
                    }
                });
                Ok(Conn::H2(s))
            } else {
                let (s, conn) = hyper::client::conn::http1::handshake(io)
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
    H2(http2::SendRequest<Full<Bytes>>),
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

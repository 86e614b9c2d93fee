//! Test support: a CA made at test start, faithful stand-ins for APNs, FCM
//! and a Web Push service (real TLS servers on loopback that check requests
//! as the vendors document and answer as they do), and a booted daemon
//! with an API client. No key material is stored in the repository.
#![allow(dead_code)] // each test binary uses a different part of this module

// Also loaded by `common` in binaries that use both harnesses: two small
// copies of one in-process runner, rather than a dependency between them.
#[allow(clippy::duplicate_mod)]
#[path = "../common/daemon.rs"]
mod daemon;
#[allow(clippy::duplicate_mod)]
#[path = "../common/poll.rs"]
mod poll;

mod apns;
mod bench;
mod fcm;
mod relay;
mod webpush;

// Each test binary uses a different part of the harness.
#[allow(unused_imports)]
pub use {apns::*, bench::*, fcm::*, relay::*, webpush::*};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pushbox::push::{client::HttpsClient, jwt};
use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use std::{
    collections::{HashMap, HashSet},
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::{net::TcpListener, sync::Notify};

/// Generous bound for anything a test waits for; only there to avoid hangs.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// A CA made for this test run, and a `localhost` certificate signed by it.
/// It also issues client certificates (APNs certificate authentication).
pub struct TestCa {
    pub ca_pem: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        Self::named(dir, "pushbox test CA", "test-ca.pem")
    }

    /// Another CA, written to `file` in `dir`.
    pub fn named(dir: &Path, name: &str, file: &str) -> TestCa {
        Self::for_hosts(dir, name, file, &["localhost", "127.0.0.1"])
    }

    /// A CA whose server certificate names `hosts` (the first is its common name).
    pub fn for_hosts(dir: &Path, name: &str, file: &str, hosts: &[&str]) -> TestCa {
        let mut cap = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        cap.distinguished_name.push(rcgen::DnType::CommonName, name);
        cap.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        cap.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = cap.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(cap, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut lp = rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
        lp.distinguished_name.push(rcgen::DnType::CommonName, hosts[0]);
        let leaf = lp.signed_by(&leaf_key, &issuer).unwrap();
        let ca_pem = dir.join(file);
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        TestCa {
            ca_pem,
            chain: vec![leaf.der().clone(), ca.der().clone()],
            key: leaf_key.serialize_der(),
            issuer,
        }
    }

    /// A TLS client certificate with this common name, signed by this CA:
    /// (certificate PEM path, PKCS#8 key PEM path), written in `dir`.
    pub fn client_cert(&self, dir: &Path, common_name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let stem: String = common_name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let (c, k) = (dir.join(format!("{stem}.crt.pem")), dir.join(format!("{stem}.key.pem")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        self.server_config_with(alpn, None)
    }

    /// A server configuration asking for an optional client certificate,
    /// which must chain to `client_ca` when one is presented.
    pub fn server_config_with(&self, alpn: &[&[u8]], client_ca: Option<&TestCa>) -> Arc<rustls::ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.chain[1].clone()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .allow_unauthenticated()
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut c = builder.with_single_cert(self.chain.clone(), key).unwrap();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }
}

/// The client certificate chain a TLS peer presented (verified by the
/// server configuration), put in each request's extensions by [`serve`].
#[derive(Clone, Debug)]
pub struct PeerCerts(pub Vec<CertificateDer<'static>>);

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

pub type Reply = Response<Full<Bytes>>;
pub type Handler = Arc<dyn Fn(Request<Bytes>) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

pub fn reply(status: u16, body: Value, headers: &[(&str, String)]) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(if body.is_null() {
        String::new()
    } else {
        body.to_string()
    })));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        r.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

/// The client's address of the connection a request came on, put in each
/// request's extensions by [`serve`].
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// Serve `handler` over TLS on `listener`: HTTP/2 only when `h2_only`
/// (APNs), else HTTP/2 or HTTP/1.1 by ALPN.
pub fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    h2_only: bool,
    handler: Handler,
) -> tokio::task::JoinHandle<()> {
    serve_with(listener, tls, h2_only, None, handler)
}

/// [`serve`], advertising `max_streams` as each HTTP/2 connection's
/// `SETTINGS_MAX_CONCURRENT_STREAMS` (unset: hyper's default, 200).
pub fn serve_with(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    h2_only: bool,
    max_streams: Option<u32>,
    handler: Handler,
) -> tokio::task::JoinHandle<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, addr)) = listener.accept().await else {
                return;
            };
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let peer = tls.get_ref().1.peer_certificates().map(|c| PeerCerts(c.to_vec()));
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (handler, peer) = (handler.clone(), peer.clone());
                    async move {
                        let (mut parts, body) = req.into_parts();
                        if let Some(p) = peer {
                            parts.extensions.insert(p);
                        }
                        parts.extensions.insert(PeerAddr(addr));
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        Ok::<_, std::convert::Infallible>(handler(Request::from_parts(parts, body)).await)
                    }
                });
                let io = TokioIo::new(tls);
                if h2_only {
                    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    if let Some(n) = max_streams {
                        b.max_concurrent_streams(n);
                    }
                    let _ = b.serve_connection(io, svc).await;
                } else {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    })
}

/// One request as a stand-in saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub version: hyper::Version,
    /// Common name of the TLS client certificate of the connection, if any.
    pub client_cert: Option<String>,
}

/// What the stand-ins share: the requests seen and rule violations found.
#[derive(Default)]
pub struct Log {
    seen: Mutex<Vec<Seen>>,
    violations: Mutex<Vec<String>>,
    changed: Notify,
}

impl Log {
    fn push(&self, s: Seen) {
        self.seen.lock().unwrap().push(s);
        self.changed.notify_waiters();
    }
    pub fn violation(&self, v: String) {
        eprintln!("stand-in: rule violated: {v}");
        self.violations.lock().unwrap().push(v);
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
    /// Wait until `n` requests matching `f` were seen (panics after PATIENCE).
    pub async fn wait_for(&self, n: usize, f: impl Fn(&Seen) -> bool) -> Vec<Seen> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let notified = self.changed.notified();
            let v: Vec<Seen> = self.seen().into_iter().filter(|s| f(s)).collect();
            if v.len() >= n {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} provider requests; saw {v:?}"
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }
}

fn client_cert(req: &Request<Bytes>) -> Option<String> {
    let certs = req.extensions().get::<PeerCerts>()?;
    common_name(certs.0.first()?)
}

fn verify_es256(jwt_text: &str, public_key: &[u8]) -> Result<(Value, Value), String> {
    let mut parts = jwt_text.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("not a compact JWS".into());
    };
    let sig = jwt::b64_decode(s).ok_or("signature not base64url")?;
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, public_key)
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| "bad ES256 signature".to_string())?;
    let header: Value = serde_json::from_slice(&jwt::b64_decode(h).ok_or("header")?).map_err(|e| e.to_string())?;
    let claims: Value = serde_json::from_slice(&jwt::b64_decode(c).ok_or("claims")?).map_err(|e| e.to_string())?;
    Ok((header, claims))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut b).unwrap();
    b
}

/// Poll `f` until it returns Some (panics after [`PATIENCE`]).
pub async fn eventually<T, F: Future<Output = Option<T>>>(f: impl FnMut() -> F) -> T {
    poll::until("condition", PATIENCE, f).await
}

/// A loopback port for a daemon run as its own process (see [`daemon::free_port`]).
pub fn free_port() -> u16 {
    daemon::free_port()
}

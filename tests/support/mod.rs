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

/// Serve `handler` over TLS on `listener`: HTTP/2 only when `h2_only`
/// (APNs), else HTTP/2 or HTTP/1.1 by ALPN.
pub fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    h2_only: bool,
    handler: Handler,
) -> tokio::task::JoinHandle<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
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
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        Ok::<_, std::convert::Infallible>(handler(Request::from_parts(parts, body)).await)
                    }
                });
                let io = TokioIo::new(tls);
                if h2_only {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
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

// ---------------------------------------------------------------- APNs

pub const APNS_KEY_ID: &str = "ABC123DEFG";
pub const APNS_TEAM_ID: &str = "DEF123GHIJ";
pub const APNS_TOPIC: &str = "org.example.chat";
/// How Apple names an app's push certificate: the common name carries the topic.
pub const APNS_CERT_CN_PREFIX: &str = "Apple Push Services: ";

/// APNs as Apple documents it: HTTP/2 only, `POST /3/device/<token>`,
/// header rules checked, and both ways to authenticate on the same host:
/// a connection with a TLS client certificate (which must chain to the test
/// CA; one that does not fails the handshake) uses certificate
/// authentication, and its common name `Apple Push Services: <bundle id>`
/// must match `apns-topic` (else 400 `TopicDisallowed`); a connection
/// without one needs a provider-token JWT checked against the team's key
/// (none: 403 `MissingProviderToken`).
pub struct ApnsStandIn {
    pub addr: SocketAddr,
    pub url: String,
    /// The `.p8` key file to put in the daemon's config.
    pub key_path: PathBuf,
    pub log: Arc<Log>,
    pub state: Arc<ApnsState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
pub struct ApnsState {
    /// Tokens APNs no longer knows: 410 Unregistered.
    pub unregistered: Mutex<HashSet<String>>,
    /// Tokens APNs never issued: 400 BadDeviceToken.
    pub bad: Mutex<HashSet<String>>,
    /// Per token: how many 429s to answer first, with this Retry-After (seconds).
    pub throttle: Mutex<HashMap<String, (u32, u64)>>,
    /// Send Retry-After as an HTTP-date (that many seconds from now) instead of delta-seconds.
    pub retry_after_as_date: std::sync::atomic::AtomicBool,
    /// An outage: every request answers 503 ServiceUnavailable while set.
    pub down: std::sync::atomic::AtomicBool,
}

impl ApnsStandIn {
    pub async fn start(ca: &TestCa, dir: &Path) -> ApnsStandIn {
        Self::start_on(ca, dir, TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    pub async fn start_on(ca: &TestCa, dir: &Path, listener: TcpListener) -> ApnsStandIn {
        let key_path = dir.join("AuthKey_test.p8");
        let public = if key_path.exists() {
            let pem = std::fs::read_to_string(&key_path).unwrap();
            jwt::es256_key(&jwt::pkcs8_from_pem(&pem).unwrap())
                .unwrap()
                .public_key()
                .as_ref()
                .to_vec()
        } else {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
            std::fs::write(&key_path, pem("PRIVATE KEY", doc.as_ref())).unwrap();
            jwt::es256_key(doc.as_ref()).unwrap().public_key().as_ref().to_vec()
        };
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Log::default());
        let state = Arc::new(ApnsState::default());
        let (l, s) = (log.clone(), state.clone());
        let handler: Handler = Arc::new(move |req| {
            let (l, s, public) = (l.clone(), s.clone(), public.clone());
            Box::pin(async move { apns_answer(&l, &s, &public, req) })
        });
        let task = serve(listener, ca.server_config_with(&[b"h2"], Some(ca)), true, handler);
        ApnsStandIn {
            addr,
            url: format!("https://localhost:{}", addr.port()),
            key_path,
            log,
            state,
            task,
        }
    }

    /// Stop listening (APNs "down"); connections not yet made are refused.
    pub fn stop(self) {
        self.task.abort();
    }

    /// A `[relay.apns]` section with certificate authentication: a client
    /// certificate for `topic` issued by `ca`, written in `dir`.
    pub fn cert_config(&self, ca: &TestCa, dir: &Path, topic: &str) -> String {
        let (cert, key) = ca.client_cert(dir, &format!("{APNS_CERT_CN_PREFIX}{topic}"));
        format!(
            "[relay.apns]\ncertificate = {:?}\ncertificate_key = {:?}\ntopic = {APNS_TOPIC:?}\n\
             environment = \"sandbox\"\nendpoint = {:?}\nca_roots = {:?}\n",
            cert.display().to_string(),
            key.display().to_string(),
            self.url,
            ca.ca_pem.display().to_string()
        )
    }

    pub fn config(&self, ca: &TestCa) -> String {
        format!(
            "[relay.apns]\nkey = {:?}\nkey_id = {APNS_KEY_ID:?}\nteam_id = {APNS_TEAM_ID:?}\ntopic = {APNS_TOPIC:?}\n\
             environment = \"sandbox\"\nendpoint = {:?}\nca_roots = {:?}\n",
            self.key_path.display().to_string(),
            self.url,
            ca.ca_pem.display().to_string()
        )
    }
}

fn apns_error(status: u16, reason: &str) -> Reply {
    let mut body = json!({ "reason": reason });
    if status == 410 {
        body["timestamp"] = json!(now() * 1000);
    }
    reply(status, body, &[("apns-id", uuid::Uuid::new_v4().to_string())])
}

/// APNs echoes the request's `apns-id` in its answer, and makes one up
/// when the request has none (clients match answers to pushes by it).
fn apns_answer(log: &Log, state: &ApnsState, public: &[u8], req: Request<Bytes>) -> Reply {
    let id = req.headers().get("apns-id").cloned();
    let mut r = apns_answer_to(log, state, public, req);
    if let Some(id) = id {
        r.headers_mut().insert("apns-id", id);
    }
    r
}

fn apns_answer_to(log: &Log, state: &ApnsState, public: &[u8], req: Request<Bytes>) -> Reply {
    let h = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body: Value = serde_json::from_slice(req.body()).unwrap_or(Value::Null);
    log.push(Seen {
        at: Instant::now(),
        path: req.uri().path().to_string(),
        headers: req.headers().clone(),
        body: body.clone(),
        version: req.version(),
        client_cert: client_cert(&req),
    });
    if state.down.load(std::sync::atomic::Ordering::SeqCst) {
        return apns_error(503, "ServiceUnavailable");
    }
    if req.version() != hyper::Version::HTTP_2 {
        log.violation("APNs requires HTTP/2".into());
        return apns_error(400, "BadRequest");
    }
    if req.method() != hyper::Method::POST {
        return apns_error(405, "MethodNotAllowed");
    }
    let Some(token) = req.uri().path().strip_prefix("/3/device/").map(str::to_string) else {
        return apns_error(404, "BadPath");
    };
    if let Some(cn) = client_cert(&req) {
        // Certificate authentication: the certificate says which topic it may push to.
        if h("authorization").is_some() {
            log.violation("authorization header on a certificate-authenticated connection".into());
        }
        let allowed = cn.strip_prefix(APNS_CERT_CN_PREFIX).unwrap_or_default();
        if h("apns-topic").as_deref() != Some(allowed) {
            return apns_error(400, "TopicDisallowed");
        }
        return apns_checked(log, state, &req, &body, token, &h);
    }
    // Provider token.
    let Some(auth) = h("authorization").and_then(|a| a.strip_prefix("bearer ").map(str::to_string)) else {
        log.violation("no bearer provider token".into());
        return apns_error(403, "MissingProviderToken");
    };
    match verify_es256(&auth, public) {
        Ok((header, claims)) => {
            if header["alg"] != "ES256" || header["kid"] != APNS_KEY_ID || claims["iss"] != APNS_TEAM_ID {
                log.violation(format!("provider token header/claims wrong: {header} {claims}"));
                return apns_error(403, "InvalidProviderToken");
            }
            let iat = claims["iat"].as_i64().unwrap_or(0);
            if iat < now() - 3600 || iat > now() + 60 {
                return apns_error(403, "ExpiredProviderToken");
            }
        }
        Err(e) => {
            log.violation(format!("provider token: {e}"));
            return apns_error(403, "InvalidProviderToken");
        }
    }
    if h("apns-topic").as_deref() != Some(APNS_TOPIC) {
        log.violation(format!("apns-topic {:?}", h("apns-topic")));
        return apns_error(400, "TopicDisallowed");
    }
    apns_checked(log, state, &req, &body, token, &h)
}

/// The checks after authentication, the same for both ways.
fn apns_checked(
    log: &Log,
    state: &ApnsState,
    req: &Request<Bytes>,
    body: &Value,
    token: String,
    h: &dyn Fn(&str) -> Option<String>,
) -> Reply {
    let push_type = h("apns-push-type").unwrap_or_default();
    let priority = h("apns-priority").unwrap_or_else(|| "10".into());
    match (push_type.as_str(), priority.as_str()) {
        ("alert", "10" | "5" | "1") | ("background", "5") => {}
        ("background", _) => {
            log.violation("background push with a priority other than 5".into());
            return apns_error(400, "BadPriority");
        }
        _ => {
            log.violation(format!("push type {push_type:?} / priority {priority:?}"));
            return apns_error(400, "InvalidPushType");
        }
    }
    if let Some(e) = h("apns-expiration") {
        match e.parse::<i64>() {
            Ok(0) => {}
            Ok(t) if t > now() - 60 => {}
            _ => {
                log.violation(format!("apns-expiration {e} lies in the past"));
                return apns_error(400, "BadExpirationDate");
            }
        }
    }
    if h("apns-collapse-id").is_some_and(|c| c.len() > 64) {
        log.violation("apns-collapse-id longer than 64 bytes".into());
        return apns_error(400, "BadCollapseId");
    }
    if req.body().len() > 4096 {
        return apns_error(413, "PayloadTooLarge");
    }
    let aps = &body["aps"];
    if !aps.is_object() {
        log.violation("payload without aps".into());
        return apns_error(400, "PayloadEmpty");
    }
    if push_type == "background" && (aps.get("alert").is_some() || aps["content-available"] != 1) {
        log.violation("background push must carry only content-available".into());
    }
    if push_type == "alert" && aps.get("alert").is_none() {
        log.violation("alert push without an alert".into());
    }
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) || state.bad.lock().unwrap().contains(&token) {
        return apns_error(400, "BadDeviceToken");
    }
    if state.unregistered.lock().unwrap().contains(&token) {
        return apns_error(410, "Unregistered");
    }
    if let Some((n, after)) = state.throttle.lock().unwrap().get_mut(&token) {
        if *n > 0 {
            *n -= 1;
            let mut r = apns_error(429, "TooManyRequests");
            if state.retry_after_as_date.load(std::sync::atomic::Ordering::Relaxed) {
                let at = std::time::SystemTime::now() + Duration::from_secs(*after);
                r.headers_mut()
                    .insert("retry-after", httpdate::fmt_http_date(at).parse().unwrap());
            } else {
                r.headers_mut().insert("retry-after", (*after).into());
            }
            return r;
        }
    }
    reply(
        200,
        Value::Null,
        &[("apns-id", uuid::Uuid::new_v4().to_string().to_uppercase())],
    )
}

/// A random APNs device token (32 bytes, hex).
pub fn apns_token() -> String {
    let b: [u8; 32] = rand_bytes();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut b).unwrap();
    b
}

// ---------------------------------------------------------------- the daemon

/// A daemon booted in-process with `pushbox::run` on 127.0.0.1:0.
pub struct Daemon {
    daemon: daemon::InProcess,
    pub url: String,
    pub ca: PathBuf,
    pub data_dir: PathBuf,
}

impl Daemon {
    /// Boot with `extra` TOML appended to a base test config in `dir`.
    pub async fn start(dir: &Path, extra: &str) -> Daemon {
        let toml = format!(
            "domain = \"localhost\"\ndata_dir = \"data\"\n[listen]\nc2s = []\nc2s_direct_tls = []\nhttps = []\n{extra}"
        );
        let toml = if toml.contains("[relay]") {
            toml
        } else {
            format!("{toml}\n[relay]\nip_rate = 100000\n")
        };
        let config = pushbox::config::Config::from_toml_str(&toml, Some(dir)).unwrap_or_else(|p| panic!("{p}"));
        let data_dir = config.data_dir.clone();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let listeners = pushbox::Listeners {
            https: vec![l],
            ..Default::default()
        };
        let daemon = daemon::InProcess::start(config, listeners, PATIENCE).await;
        Daemon {
            url: format!("https://localhost:{port}"),
            ca: data_dir.join("tls/ca.pem"),
            data_dir,
            daemon,
        }
    }

    pub fn api(&self) -> Api {
        Api::new(&self.url, &self.ca)
    }

    pub async fn stop(mut self) {
        let _ = self.daemon.stop(PATIENCE).await;
    }

    /// Open the daemon's database beside it (for checks the API cannot show).
    pub fn store(&self) -> pushbox::store::Store {
        pushbox::store::Store::open_in(&self.data_dir).unwrap()
    }
}

/// An HTTPS JSON client of the relay API.
pub struct Api {
    client: HttpsClient,
    base: String,
    pub key: Option<String>,
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Api {
    pub fn new(base: &str, ca: &Path) -> Api {
        Api {
            client: HttpsClient::new(Some(ca)).unwrap(),
            base: base.to_string(),
            key: None,
        }
    }

    pub fn with_key(mut self, key: &str) -> Api {
        self.key = Some(key.to_string());
        self
    }

    /// Send raw bytes with a content type.
    pub async fn raw(&self, method: &str, path: &str, content_type: &str, body: Vec<u8>) -> Answer {
        let mut b = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if !body.is_empty() {
            b = b.header("content-type", content_type);
        }
        if let Some(k) = &self.key {
            b = b.header("authorization", format!("Token {k}"));
        }
        let resp = self
            .client
            .send(b.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .expect("relay API reachable");
        let status = resp.status().as_u16();
        let body = if resp.body().is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(resp.body())
                .unwrap_or_else(|e| panic!("non-JSON answer {status}: {e}: {:?}", resp.body()))
        };
        Answer {
            status,
            body,
            headers: resp.headers().clone(),
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw(method, path, "application/json", bytes).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.call("POST", path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None).await
    }

    /// Create an account and return a client logged in as it.
    pub async fn signup(&self, username: &str) -> Api {
        let a = self
            .post(
                "/api/v1/accounts/",
                json!({ "username": username, "password": "correct horse" }),
            )
            .await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        self.as_key(a.body["token"].as_str().unwrap())
    }

    /// Another client of the same relay using `key`.
    pub fn as_key(&self, key: &str) -> Api {
        Api {
            client: HttpsClient::with_tls(self.client.tls()),
            base: self.base.clone(),
            key: Some(key.to_string()),
        }
    }

    /// Register an APNs device and issue a whitelist token for it.
    pub async fn apns_device_and_token(&self, registration_id: &str) -> (String, String) {
        let d = self
            .post(
                "/api/v1/device/apns/",
                json!({ "registration_id": registration_id, "name": "phone" }),
            )
            .await;
        assert_eq!(d.status, 201, "{:?}", d.body);
        let id = d.body["id"].as_str().unwrap().to_string();
        let t = self
            .post("/api/v1/tokens/", json!({ "apns_device": id, "name": "for a friend" }))
            .await;
        assert_eq!(t.status, 201, "{:?}", t.body);
        (id, t.body["token"].as_str().unwrap().to_string())
    }
}

/// Poll `f` until it returns Some (panics after PATIENCE).
pub async fn eventually<T, F: Future<Output = Option<T>>>(mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "condition not met in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- FCM

pub const FCM_PROJECT: &str = "pushbox-test";

/// FCM HTTP v1 and Google's OAuth token endpoint, as documented: the JWT
/// grant is checked against the service account's public key, `messages:send`
/// wants a bearer token from that endpoint and answers FCM's error bodies.
pub struct FcmStandIn {
    pub url: String,
    pub service_account: PathBuf,
    pub log: Arc<Log>,
    pub state: Arc<FcmState>,
}

#[derive(Default)]
pub struct FcmState {
    pub issued: Mutex<HashSet<String>>,
    pub unregistered: Mutex<HashSet<String>>,
}

impl FcmStandIn {
    pub async fn start(ca: &TestCa, dir: &Path) -> FcmStandIn {
        use rsa::{pkcs8::EncodePrivateKey, traits::PublicKeyParts};
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let private_pem = key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap().to_string();
        let (n, e) = (key.n().to_bytes_be(), key.e().to_bytes_be());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://localhost:{}", listener.local_addr().unwrap().port());
        let sa = json!({
            "type": "service_account",
            "project_id": FCM_PROJECT,
            "private_key_id": "k1",
            "private_key": private_pem,
            "client_email": "relay@pushbox-test.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": format!("{url}/token"),
        });
        let service_account = dir.join("service-account.json");
        std::fs::write(&service_account, sa.to_string()).unwrap();
        let log = Arc::new(Log::default());
        let state = Arc::new(FcmState::default());
        let (l, s, token_uri) = (log.clone(), state.clone(), format!("{url}/token"));
        let handler: Handler = Arc::new(move |req| {
            let (l, s, n, e, token_uri) = (l.clone(), s.clone(), n.clone(), e.clone(), token_uri.clone());
            Box::pin(async move { fcm_answer(&l, &s, &n, &e, &token_uri, req) })
        });
        serve(listener, ca.server_config(&[b"h2", b"http/1.1"]), false, handler);
        FcmStandIn {
            url,
            service_account,
            log,
            state,
        }
    }

    pub fn config(&self, ca: &TestCa) -> String {
        format!(
            "[relay.fcm]\nservice_account = {:?}\nendpoint = {:?}\nca_roots = {:?}\n",
            self.service_account.display().to_string(),
            self.url,
            ca.ca_pem.display().to_string()
        )
    }
}

fn fcm_error(status: u16, code: &str, fcm_code: Option<&str>) -> Reply {
    let mut err = json!({ "code": status, "message": "stand-in error", "status": code });
    if let Some(c) = fcm_code {
        err["details"] = json!([{ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c }]);
    }
    reply(
        status,
        json!({ "error": err }),
        &[("content-type", "application/json".into())],
    )
}

fn fcm_answer(log: &Log, state: &FcmState, n: &[u8], e: &[u8], token_uri: &str, req: Request<Bytes>) -> Reply {
    let path = req.uri().path().to_string();
    let raw = req.body().clone();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    log.push(Seen {
        at: Instant::now(),
        path: path.clone(),
        headers: req.headers().clone(),
        body: body.clone(),
        version: req.version(),
        client_cert: client_cert(&req),
    });
    if path == "/token" {
        let form = String::from_utf8_lossy(&raw).to_string();
        let mut grant = None;
        let mut assertion = None;
        for pair in form.split('&') {
            match pair.split_once('=') {
                Some(("grant_type", v)) => grant = Some(v.to_string()),
                Some(("assertion", v)) => assertion = Some(v.to_string()),
                _ => {}
            }
        }
        if grant.as_deref() != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer") {
            log.violation(format!("grant_type {grant:?}"));
            return reply(400, json!({ "error": "unsupported_grant_type" }), &[]);
        }
        let Some(a) = assertion else {
            return reply(400, json!({ "error": "invalid_request" }), &[]);
        };
        let mut parts = a.split('.');
        let (h, c, s) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let ok = jwt::b64_decode(s).is_some_and(|sig| {
            signature::RsaPublicKeyComponents { n, e }
                .verify(
                    &signature::RSA_PKCS1_2048_8192_SHA256,
                    format!("{h}.{c}").as_bytes(),
                    &sig,
                )
                .is_ok()
        });
        let claims: Value = jwt::b64_decode(c)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let header: Value = jwt::b64_decode(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        if !ok || header["alg"] != "RS256" {
            log.violation("OAuth assertion signature invalid".into());
            return reply(
                400,
                json!({ "error": "invalid_grant", "error_description": "Invalid JWT Signature." }),
                &[],
            );
        }
        let iat = claims["iat"].as_i64().unwrap_or(0);
        if claims["aud"] != token_uri
            || !claims["scope"].as_str().unwrap_or("").contains("firebase.messaging")
            || claims["exp"].as_i64().unwrap_or(0) - iat > 3600
        {
            log.violation(format!("OAuth claims wrong: {claims}"));
            return reply(400, json!({ "error": "invalid_grant" }), &[]);
        }
        let token = format!("ya29.stand-in-{}", uuid::Uuid::new_v4());
        state.issued.lock().unwrap().insert(token.clone());
        return reply(
            200,
            json!({ "access_token": token, "expires_in": 3599, "token_type": "Bearer" }),
            &[],
        );
    }
    if path != format!("/v1/projects/{FCM_PROJECT}/messages:send") {
        return fcm_error(404, "NOT_FOUND", None);
    }
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    if !bearer.is_some_and(|b| state.issued.lock().unwrap().contains(&b)) {
        log.violation("messages:send without a valid access token".into());
        return fcm_error(401, "UNAUTHENTICATED", None);
    }
    let msg = &body["message"];
    let Some(token) = msg["token"].as_str() else {
        return fcm_error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"));
    };
    if let Some(data) = msg["data"].as_object() {
        if data.values().any(|v| !v.is_string()) {
            log.violation("FCM data values must be strings".into());
            return fcm_error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"));
        }
    }
    if msg.get("notification").is_some() {
        log.violation("expected a data-only message".into());
    }
    if !matches!(msg["android"]["priority"].as_str(), Some("HIGH" | "NORMAL")) {
        log.violation(format!("android priority {:?}", msg["android"]["priority"]));
        return fcm_error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"));
    }
    if state.unregistered.lock().unwrap().contains(token) {
        return fcm_error(404, "NOT_FOUND", Some("UNREGISTERED"));
    }
    reply(
        200,
        json!({ "name": format!("projects/{FCM_PROJECT}/messages/{}", uuid::Uuid::new_v4()) }),
        &[],
    )
}

// ---------------------------------------------------------------- Web Push

/// A Web Push service (RFC 8030) that checks VAPID (RFC 8292) and decrypts
/// each payload (RFC 8291) with the subscription's private key.
pub struct WebPushStandIn {
    pub url: String,
    pub log: Arc<Log>,
    pub state: Arc<WebPushState>,
}

struct Subscription {
    /// ring's ECDH keys are single-use: one decryption per subscription.
    key: Option<ring::agreement::EphemeralPrivateKey>,
    public: Vec<u8>,
    auth: [u8; 16],
}

#[derive(Default)]
pub struct WebPushState {
    subs: Mutex<HashMap<String, Subscription>>,
    pub gone: Mutex<HashSet<String>>,
}

impl WebPushStandIn {
    pub async fn start(ca: &TestCa) -> WebPushStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://localhost:{}", listener.local_addr().unwrap().port());
        let log = Arc::new(Log::default());
        let state = Arc::new(WebPushState::default());
        let (l, s, origin) = (log.clone(), state.clone(), url.clone());
        let handler: Handler = Arc::new(move |req| {
            let (l, s, origin) = (l.clone(), s.clone(), origin.clone());
            Box::pin(async move { webpush_answer(&l, &s, &origin, req) })
        });
        serve(listener, ca.server_config(&[b"h2", b"http/1.1"]), false, handler);
        WebPushStandIn { url, log, state }
    }

    /// A new subscription: (id, endpoint, p256dh, auth) as a browser gives them.
    pub fn subscribe(&self) -> (String, String, String, String) {
        let rng = SystemRandom::new();
        let key = ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::ECDH_P256, &rng).unwrap();
        let public = key.compute_public_key().unwrap().as_ref().to_vec();
        let auth: [u8; 16] = rand_bytes();
        let id = uuid::Uuid::new_v4().to_string();
        let (p, a) = (jwt::b64(&public), jwt::b64(&auth));
        self.state.subs.lock().unwrap().insert(
            id.clone(),
            Subscription {
                key: Some(key),
                public,
                auth,
            },
        );
        (id.clone(), format!("{}/push/{id}", self.url), p, a)
    }
}

fn webpush_answer(log: &Log, state: &WebPushState, origin: &str, req: Request<Bytes>) -> Reply {
    let path = req.uri().path().to_string();
    let h = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut decrypted = Value::Null;
    let answer = (|| {
        let id = path.strip_prefix("/push/").ok_or(404u16)?.to_string();
        if state.gone.lock().unwrap().contains(&id) {
            return Err(410);
        }
        // VAPID: "vapid t=<jwt>, k=<key>".
        let auth = h("authorization").unwrap_or_default();
        let rest = auth.strip_prefix("vapid ").ok_or_else(|| {
            log.violation("no VAPID authorization".into());
            401u16
        })?;
        let (mut t, mut k) = (None, None);
        for part in rest.split(',') {
            match part.trim().split_once('=') {
                Some(("t", v)) => t = Some(v.to_string()),
                Some(("k", v)) => k = Some(v.to_string()),
                _ => {}
            }
        }
        let (Some(t), Some(k)) = (t, k) else {
            log.violation("VAPID without t or k".into());
            return Err(401);
        };
        let k = jwt::b64_decode(&k).ok_or(401u16)?;
        let (_, claims) = verify_es256(&t, &k).map_err(|e| {
            log.violation(format!("VAPID: {e}"));
            403u16
        })?;
        if claims["aud"] != origin || claims["exp"].as_i64().unwrap_or(0) > now() + 86400 || claims["sub"].is_null() {
            log.violation(format!("VAPID claims wrong: {claims}"));
            return Err(403);
        }
        if h("content-encoding").as_deref() != Some("aes128gcm") || h("ttl").is_none() {
            log.violation("missing Content-Encoding: aes128gcm or TTL".into());
            return Err(400);
        }
        // RFC 8291 decryption.
        let body = req.body();
        if body.len() < 21 {
            return Err(400);
        }
        let salt = &body[..16];
        let idlen = body[20] as usize;
        let keyid = &body[21..21 + idlen];
        let ct = &body[21 + idlen..];
        let mut subs = state.subs.lock().unwrap();
        let sub = subs.get_mut(&id).ok_or(404u16)?;
        let Some(key) = sub.key.take() else {
            log.violation("second push to a one-shot test subscription".into());
            return Ok(());
        };
        let peer = ring::agreement::UnparsedPublicKey::new(&ring::agreement::ECDH_P256, keyid);
        let secret = ring::agreement::agree_ephemeral(key, &peer, |s| s.to_vec()).map_err(|_| 400u16)?;
        let (cek, nonce) = pushbox::push::providers::webpush::derive(&secret, &sub.auth, &sub.public, keyid, salt);
        let key = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &cek).unwrap());
        let mut buf = ct.to_vec();
        let plain = key
            .open_in_place(
                ring::aead::Nonce::try_assume_unique_for_key(&nonce).unwrap(),
                ring::aead::Aad::empty(),
                &mut buf,
            )
            .map_err(|_| {
                log.violation("payload does not decrypt".into());
                400u16
            })?;
        let end = plain.iter().rposition(|&b| b != 0).ok_or(400u16)?;
        if plain[end] != 2 {
            log.violation("missing last-record delimiter".into());
            return Err(400);
        }
        decrypted = serde_json::from_slice(&plain[..end]).unwrap_or(Value::Null);
        Ok(())
    })();
    log.push(Seen {
        at: Instant::now(),
        path,
        headers: req.headers().clone(),
        body: decrypted,
        version: req.version(),
        client_cert: client_cert(&req),
    });
    match answer {
        Ok(()) => reply(
            201,
            Value::Null,
            &[("location", format!("{origin}/message/{}", uuid::Uuid::new_v4()))],
        ),
        Err(s) => reply(s, Value::Null, &[]),
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `pushbox` binary, started with `serve` on a config file.
pub struct Process {
    pub child: std::process::Child,
    pub url: String,
    pub ca: PathBuf,
    pub data_dir: PathBuf,
}

impl Process {
    pub async fn start(config_path: &Path, port: u16, data_dir: &Path) -> Process {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pushbox"))
            .arg("--config")
            .arg(config_path)
            .arg("serve")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        eventually(|| async move { tokio::net::TcpStream::connect(addr).await.ok() }).await;
        let ready = data_dir.join("tls/cert.pem");
        eventually(|| {
            let ready = ready.clone();
            async move { ready.exists().then_some(()) }
        })
        .await;
        Process {
            child,
            url: format!("https://localhost:{port}"),
            ca: data_dir.join("tls/ca.pem"),
            data_dir: data_dir.into(),
        }
    }

    pub fn api(&self) -> Api {
        Api::new(&self.url, &self.ca)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// The `p` quantile (0–1) of sorted durations (zero when there are none).
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A benchmark line: `label in 1.23 s: 456 pushes/s`.
pub fn print_rate(label: &str, n: usize, took: Duration) {
    println!(
        "  {label} in {:.2} s: {:.0} pushes/s",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
}

/// A benchmark line: `label p50 … p99 …` of sorted durations.
pub fn print_spread(label: &str, sorted: &[Duration], note: &str) {
    println!(
        "  {label} p50 {} p99 {}{note}",
        ms(pct(sorted, 0.5)),
        ms(pct(sorted, 0.99))
    );
}

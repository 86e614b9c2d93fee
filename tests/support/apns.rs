//! The APNs stand-in: HTTP/2 over TLS, token (ES256 JWT) and certificate
//! authentication, and the status codes and reasons Apple documents.

use super::*;

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
    /// A stall: requests are held unanswered while set (counted in
    /// `held`), then answered 503 ServiceUnavailable; they are not logged.
    /// A request whose client went away meanwhile is never answered.
    pub stall: std::sync::atomic::AtomicBool,
    pub held: std::sync::atomic::AtomicUsize,
    /// A pause: requests are held unanswered while set (counted in
    /// `held`), then answered as usual (logged when answered).
    pub hold: std::sync::atomic::AtomicBool,
    /// The client addresses of the connections requests came on.
    pub connections: Mutex<HashSet<SocketAddr>>,
    unstalled: Notify,
    /// Provider tokens whose signature verified (APNs too checks a token
    /// once, not on every push): keeps the stand-in cheap under load.
    verified: Mutex<HashMap<String, (Value, Value)>>,
}

impl ApnsState {
    /// End a stall or a pause: held requests are answered (503 after a
    /// stall, as usual after a pause).
    pub fn release(&self) {
        self.stall.store(false, std::sync::atomic::Ordering::SeqCst);
        self.hold.store(false, std::sync::atomic::Ordering::SeqCst);
        self.unstalled.notify_waiters();
    }

    /// Wait while `stall` or `hold` is set.
    async fn held_back(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.held.fetch_add(1, SeqCst);
        loop {
            let released = self.unstalled.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !self.stall.load(SeqCst) && !self.hold.load(SeqCst) {
                break;
            }
            released.await;
        }
    }
}

impl ApnsStandIn {
    pub async fn start(ca: &TestCa, dir: &Path) -> ApnsStandIn {
        Self::start_on(ca, dir, TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    pub async fn start_on(ca: &TestCa, dir: &Path, listener: TcpListener) -> ApnsStandIn {
        Self::start_with(ca, dir, listener, None).await
    }

    /// Like [`ApnsStandIn::start`], allowing `max_streams` concurrent
    /// streams per connection (APNs advertises its limit in
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub async fn start_limited(ca: &TestCa, dir: &Path, max_streams: u32) -> ApnsStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_with(ca, dir, listener, Some(max_streams)).await
    }

    async fn start_with(ca: &TestCa, dir: &Path, listener: TcpListener, max_streams: Option<u32>) -> ApnsStandIn {
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
            Box::pin(async move {
                use std::sync::atomic::Ordering::SeqCst;
                if let Some(PeerAddr(a)) = req.extensions().get::<PeerAddr>() {
                    s.connections.lock().unwrap().insert(*a);
                }
                if s.stall.load(SeqCst) {
                    s.held_back().await;
                    return apns_error(503, "ServiceUnavailable");
                }
                if s.hold.load(SeqCst) {
                    s.held_back().await;
                }
                apns_answer(&l, &s, &public, req)
            })
        });
        let task = serve_with(
            listener,
            ca.server_config_with(&[b"h2"], Some(ca)),
            true,
            max_streams,
            handler,
        );
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
    let cached = state.verified.lock().unwrap().get(&auth).cloned();
    let verified = match cached {
        Some(v) => Ok(v),
        None => verify_es256(&auth, public).inspect(|v| {
            state.verified.lock().unwrap().insert(auth.clone(), v.clone());
        }),
    };
    match verified {
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

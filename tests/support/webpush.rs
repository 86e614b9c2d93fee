//! The Web Push stand-in: a push service that checks VAPID (RFC 8292) and
//! decrypts aes128gcm payloads (RFC 8291) as a browser would.

use super::*;

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

//! The FCM stand-in: the OAuth token endpoint (a service account's signed
//! JWT) and the HTTP v1 send endpoint, with FCM's error shapes.

use super::*;

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

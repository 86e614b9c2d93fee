//! The push relay's JSON API: ChatSecure Push Server API v1 (wire-compatible:
//! same paths, fields, status codes and Django REST framework error shapes)
//! plus pushbox's additions (`device/fcm`, `device/webpush`, `device/relay`,
//! `vapid`, token expiry and rate limit on creation). `docs/spec/relay-api.md`
//! is the reference.

use super::{json, Resp};
use crate::{
    core::Core,
    push::{self, AccountError, Kind, NewDevice, Priority, SubmitError},
    store::relay::{Account, Device, Token},
};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{body::Incoming, Method, Request, StatusCode};
use serde_json::{json, Map, Value};
use std::{net::SocketAddr, time::Duration};

/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest wait for a whole request body (a client trickling bytes holds a task).
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

type Fields = Map<String, Value>;

/// An early answer: every handler error becomes one of these.
struct Answer(Box<Resp>);

impl Answer {
    fn new(r: Resp) -> Answer {
        Answer(Box::new(r))
    }
}

impl From<crate::store::StoreError> for Answer {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "relay API storage error");
        if e.is_full() {
            // Nothing was accepted; the client may try again once space returns.
            let mut r = detail(
                StatusCode::SERVICE_UNAVAILABLE,
                "The relay's storage is full; try again later.",
            );
            r.headers_mut().insert(hyper::header::RETRY_AFTER, 60.into());
            return Answer::new(r);
        }
        Answer::new(detail(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error."))
    }
}

type R = Result<Resp, Answer>;

fn detail(status: StatusCode, msg: &str) -> Resp {
    json(status, json!({ "detail": msg }))
}

fn not_found() -> Answer {
    Answer::new(detail(StatusCode::NOT_FOUND, "Not found."))
}

/// Field errors in Django REST framework's shape: `{"field": ["message"]}`.
#[derive(Default)]
struct Errors(Map<String, Value>);

impl Errors {
    fn add(&mut self, field: &str, msg: impl Into<String>) {
        let e = self.0.entry(field.to_string()).or_insert_with(|| Value::Array(vec![]));
        if let Value::Array(a) = e {
            a.push(Value::String(msg.into()));
        }
    }
    fn check(self) -> Result<(), Answer> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Answer::new(json(StatusCode::BAD_REQUEST, Value::Object(self.0))))
        }
    }
}

const REQUIRED: &str = "This field is required.";

/// A string field: `Ok(None)` when absent (or null), an error when not a string or too long.
fn string(f: &Fields, key: &str, max: usize, errs: &mut Errors) -> Option<String> {
    match f.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() > max => {
            errs.add(key, format!("Ensure this field has no more than {max} characters."));
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            errs.add(key, "Not a valid string.");
            None
        }
    }
}

fn required(f: &Fields, key: &str, max: usize, errs: &mut Errors) -> Option<String> {
    let present = matches!(f.get(key), Some(v) if !v.is_null());
    match string(f, key, max, errs) {
        Some(s) if s.is_empty() => {
            errs.add(key, "This field may not be blank.");
            None
        }
        None if !present => {
            errs.add(key, REQUIRED);
            None
        }
        other => other,
    }
}

fn boolean(f: &Fields, key: &str, errs: &mut Errors) -> Option<bool> {
    match f.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) if ["true", "True", "1", "on"].contains(&s.as_str()) => Some(true),
        Some(Value::String(s)) if ["false", "False", "0", "off"].contains(&s.as_str()) => Some(false),
        Some(_) => {
            errs.add(key, "Must be a valid boolean.");
            None
        }
    }
}

/// Django REST framework's datetime rendering: `2016-05-03T18:24:41.000000Z`.
pub fn date(unix: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.000000Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn parse_date(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// Collection names of the device endpoints and the kind each stores.
fn device_kind(collection: &str) -> Option<Kind> {
    match collection {
        "apns" => Some(Kind::Apns),
        // Legacy GCM registration ids are FCM tokens; both go out over FCM HTTP v1.
        "gcm" | "fcm" => Some(Kind::Fcm),
        "webpush" => Some(Kind::WebPush),
        "relay" => Some(Kind::Relay),
        _ => None,
    }
}

pub async fn handle(core: &Core, peer: SocketAddr, req: Request<Incoming>) -> Resp {
    let relay = &core.relay;
    if let Err(wait) = relay.check_ip(peer.ip()) {
        return throttled(wait);
    }
    match route(core, req).await {
        Ok(r) => r,
        Err(Answer(r)) => *r,
    }
}

fn throttled(wait: Duration) -> Resp {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r = detail(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("Request was throttled. Expected available in {secs} seconds."),
    );
    r.headers_mut().insert(hyper::header::RETRY_AFTER, secs.into());
    r
}

fn method_not_allowed(m: &Method, allow: &str) -> Answer {
    let mut r = detail(StatusCode::METHOD_NOT_ALLOWED, &format!("Method \"{m}\" not allowed."));
    if let Ok(v) = allow.parse() {
        r.headers_mut().insert(hyper::header::ALLOW, v);
    }
    Answer::new(r)
}

/// Read the body as a JSON object (JSON or form-encoded, as DRF accepts both).
async fn body(req: Request<Incoming>) -> Result<Fields, Answer> {
    let form = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let too_large = || Answer::new(detail(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large."));
    // A declared length beyond the limit is refused before waiting for the body.
    if hyper::body::Body::size_hint(req.body()).lower() > MAX_BODY as u64 {
        return Err(too_large());
    }
    let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect());
    let Ok(read) = read.await else {
        return Err(Answer::new(detail(
            StatusCode::REQUEST_TIMEOUT,
            "The request body did not arrive in time.",
        )));
    };
    let bytes: Bytes = match read {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(_) => {
            return Err(Answer::new(detail(
                StatusCode::BAD_REQUEST,
                "Could not read the request body.",
            )))
        }
    };
    parse_body(form, &bytes)
}

/// Parse a request body: form-encoded when `form`, JSON otherwise; it must be an object.
fn parse_body(form: bool, bytes: &[u8]) -> Result<Fields, Answer> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Fields::new());
    }
    if form {
        return Ok(parse_form(bytes));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Answer::new(json(
            StatusCode::BAD_REQUEST,
            json!({ "non_field_errors": ["Invalid data. Expected a dictionary."] }),
        ))),
        Err(e) => Err(Answer::new(detail(
            StatusCode::BAD_REQUEST,
            &format!("JSON parse error - {e}"),
        ))),
    }
}

/// Percent-decoding of form fields (`+` is a space there) and path segments.
fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let s = if plus_is_space {
        s.replace('+', " ")
    } else {
        s.to_string()
    };
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_form(b: &[u8]) -> Fields {
    let decode = |s: &str| percent_decode(s, true);
    let text = String::from_utf8_lossy(b);
    let mut m = Fields::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        m.insert(decode(k), Value::String(decode(v)));
    }
    m
}

async fn auth(core: &Core, req: &Request<Incoming>) -> Result<Account, Answer> {
    let unauthorized = |msg: &str| {
        let mut r = detail(StatusCode::UNAUTHORIZED, msg);
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Token"),
        );
        Answer::new(r)
    };
    let Some(h) = req.headers().get(hyper::header::AUTHORIZATION) else {
        return Err(unauthorized("Authentication credentials were not provided."));
    };
    let h = h.to_str().unwrap_or_default();
    let key = match h.split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("token") && !key.trim().is_empty() => key.trim(),
        _ => return Err(unauthorized("Invalid token header. No credentials provided.")),
    };
    core.relay
        .authenticate(key)
        .await?
        .ok_or_else(|| unauthorized("Invalid token."))
}

async fn route(core: &Core, req: Request<Incoming>) -> R {
    let path = req
        .uri()
        .path()
        .trim_start_matches("/api/v1/")
        .trim_end_matches('/')
        .to_string();
    let parts: Vec<&str> = path.split('/').collect();
    let m = req.method().clone();
    match (parts.as_slice(), &m) {
        (["accounts"], &Method::POST) => accounts_create(core, body(req).await?).await,
        (["accounts"], &Method::GET) => {
            let a = auth(core, &req).await?;
            Ok(json(StatusCode::OK, account_json(&a, None)))
        }
        (["accounts"], _) => Err(method_not_allowed(&m, "GET, POST")),
        (["accounts", name], &Method::GET | &Method::DELETE) => {
            let a = auth(core, &req).await?;
            if a.username != percent_decode(name, false) {
                return Err(Answer::new(detail(
                    StatusCode::FORBIDDEN,
                    "You do not have permission to perform this action.",
                )));
            }
            if m == Method::GET {
                Ok(json(StatusCode::OK, account_json(&a, None)))
            } else {
                core.relay.delete_account(a.id).await?;
                tracing::info!(account = a.id, "relay account deleted");
                Ok(no_content())
            }
        }
        (["accounts", _], _) => Err(method_not_allowed(&m, "GET, DELETE")),
        (["device", coll], _) => {
            let kind = device_kind(coll).ok_or_else(not_found)?;
            let a = auth(core, &req).await?;
            match m {
                Method::GET => {
                    let list = core.relay.devices(a.id, kind).await?;
                    Ok(json(
                        StatusCode::OK,
                        Value::Array(list.iter().map(device_json).collect()),
                    ))
                }
                Method::POST => device_create(core, &a, kind, body(req).await?).await,
                _ => Err(method_not_allowed(&m, "GET, POST")),
            }
        }
        (["device", coll, id], _) => {
            let kind = device_kind(coll).ok_or_else(not_found)?;
            let a = auth(core, &req).await?;
            let dev = core
                .relay
                .device(a.id, id)
                .await?
                .filter(|d| d.kind == kind.as_str())
                .ok_or_else(not_found)?;
            match m {
                Method::GET => Ok(json(StatusCode::OK, device_json(&dev))),
                Method::PUT | Method::PATCH => device_update(core, dev, body(req).await?).await,
                Method::DELETE => {
                    core.relay.delete_device(a.id, id).await?;
                    Ok(no_content())
                }
                _ => Err(method_not_allowed(&m, "GET, PUT, PATCH, DELETE")),
            }
        }
        (["tokens"], _) => {
            let a = auth(core, &req).await?;
            match m {
                Method::GET => {
                    let list = core.relay.tokens(a.id).await?;
                    Ok(json(
                        StatusCode::OK,
                        Value::Array(list.iter().map(|t| token_json(t, None)).collect()),
                    ))
                }
                Method::POST => token_create(core, &a, body(req).await?).await,
                _ => Err(method_not_allowed(&m, "GET, POST")),
            }
        }
        (["tokens", secret], _) => {
            let a = auth(core, &req).await?;
            let secret = secret.to_string();
            let t = core.relay.token(a.id, &secret).await?.ok_or_else(not_found)?;
            match m {
                Method::GET => Ok(json(StatusCode::OK, token_json(&t, Some(&secret)))),
                Method::PUT | Method::PATCH => {
                    let f = body(req).await?;
                    let mut errs = Errors::default();
                    let name = string(&f, "name", 100, &mut errs);
                    errs.check()?;
                    let name = if f.contains_key("name") { name } else { t.name.clone() };
                    core.relay.rename_token(t.hash.clone(), name.clone()).await?;
                    Ok(json(StatusCode::OK, token_json(&Token { name, ..t }, Some(&secret))))
                }
                Method::DELETE => {
                    core.relay.delete_token(t.hash).await?;
                    tracing::info!(token = push::secret::prefix(&secret), "whitelist token revoked");
                    Ok(no_content())
                }
                _ => Err(method_not_allowed(&m, "GET, PUT, PATCH, DELETE")),
            }
        }
        (["messages"], &Method::POST) => messages(core, body(req).await?).await,
        (["messages"], _) => Err(method_not_allowed(&m, "POST")),
        (["pubsub"], &Method::GET) => Ok(json(
            StatusCode::OK,
            json!({ "jid": format!("push.{}", core.domain()) }),
        )),
        (["pubsub"], _) => Err(method_not_allowed(&m, "GET")),
        (["vapid"], &Method::GET) => Ok(json(
            StatusCode::OK,
            json!({ "public_key": core.relay.vapid_public_key() }),
        )),
        _ => Err(not_found()),
    }
}

fn no_content() -> Resp {
    let mut r = hyper::Response::new(http_body_util::Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn account_json(a: &Account, token: Option<&str>) -> Value {
    let mut v = json!({ "username": a.username, "email": a.email, "id": a.id });
    if let Some(t) = token {
        v["token"] = t.into();
    }
    v
}

fn valid_username(u: &str) -> bool {
    u.chars().all(|c| c.is_alphanumeric() || "@.+-_".contains(c))
}

/// Check the fields of `POST accounts/`: username, password, email.
fn account_request(f: &Fields) -> Result<(String, String, String), Answer> {
    let mut errs = Errors::default();
    let username = required(f, "username", push::MAX_USERNAME, &mut errs);
    if let Some(u) = &username {
        if !valid_username(u) {
            errs.add(
                "username",
                "Enter a valid username. This value may contain only letters, numbers and @/./+/-/_ characters.",
            );
        }
    }
    let password = required(f, "password", 1024, &mut errs);
    let email = string(f, "email", 254, &mut errs).unwrap_or_default();
    if !email.is_empty() && !email.contains('@') {
        errs.add("email", "Enter a valid email address.");
    }
    errs.check()?;
    Ok((username.unwrap_or_default(), password.unwrap_or_default(), email))
}

async fn accounts_create(core: &Core, f: Fields) -> R {
    let (username, password, email) = account_request(&f)?;
    match core.relay.login_or_signup(&username, &password, &email).await {
        Ok(l) => {
            let status = if l.created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(json(status, account_json(&l.account, Some(&l.api_key))))
        }
        Err(AccountError::BadCredentials) => Err(Answer::new(detail(
            StatusCode::UNAUTHORIZED,
            "Invalid username or password.",
        ))),
        Err(AccountError::EmailTaken) => {
            let mut e = Errors::default();
            e.add("email", "An account with this email already exists.");
            e.check().map(|_| unreachable!())
        }
        Err(AccountError::SignupClosed) => Err(Answer::new(detail(
            StatusCode::FORBIDDEN,
            "Sign-up is closed on this relay.",
        ))),
        Err(e) => {
            tracing::error!(error = %e, "relay account creation failed");
            Err(Answer::new(detail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal server error.",
            )))
        }
    }
}

fn device_json(d: &Device) -> Value {
    let mut v = json!({
        "name": d.name,
        "id": d.id,
        "active": d.active,
        "date_created": date(d.created),
    });
    match Kind::parse(&d.kind) {
        Some(Kind::WebPush) => {
            v["endpoint"] = d.registration_id.clone().into();
            v["p256dh"] = d.p256dh.clone().into();
            v["auth"] = d.auth.clone().into();
        }
        Some(Kind::Relay) => {
            v["endpoint"] = d.registration_id.clone().into();
        }
        _ => {
            v["registration_id"] = d.registration_id.clone().into();
            v["device_id"] = d.device_id.clone().into();
        }
    }
    v
}

fn https_url(f: &Fields, key: &str, errs: &mut Errors, required_field: bool) -> Option<String> {
    let v = if required_field {
        required(f, key, 2048, errs)
    } else {
        string(f, key, 2048, errs)
    }?;
    match v.parse::<hyper::Uri>() {
        Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => Some(v),
        _ => {
            errs.add(key, "Enter a valid https URL.");
            None
        }
    }
}

/// Check the fields of a device of `kind`; `partial` for updates.
fn device_fields(kind: Kind, f: &Fields, partial: bool, errs: &mut Errors) -> NewDevice {
    let mut d = NewDevice {
        name: string(f, "name", 255, errs),
        active: boolean(f, "active", errs).unwrap_or(true),
        ..Default::default()
    };
    let req = |key: &str, max: usize, errs: &mut Errors| {
        if partial {
            string(f, key, max, errs)
        } else {
            required(f, key, max, errs)
        }
    };
    match kind {
        Kind::Apns => {
            d.registration_id = req("registration_id", 200, errs).unwrap_or_default();
            if !d.registration_id.bytes().all(|b| b.is_ascii_hexdigit()) {
                errs.add("registration_id", "An APNs device token is hexadecimal.");
            }
            d.device_id = string(f, "device_id", 255, errs);
        }
        Kind::Fcm => {
            d.registration_id = req("registration_id", 4096, errs).unwrap_or_default();
            if d.registration_id.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
                errs.add("registration_id", "Not a valid FCM registration token.");
            }
            d.device_id = string(f, "device_id", 255, errs);
        }
        Kind::WebPush => {
            d.registration_id = https_url(f, "endpoint", errs, !partial).unwrap_or_default();
            d.p256dh = req("p256dh", 200, errs);
            if let Some(k) = &d.p256dh {
                if push::jwt::b64_decode(k).is_none_or(|b| b.len() != 65 || b[0] != 4) {
                    errs.add("p256dh", "Not an uncompressed P-256 public key in base64url.");
                }
            }
            d.auth = req("auth", 100, errs);
            if let Some(a) = &d.auth {
                if push::jwt::b64_decode(a).is_none_or(|b| b.len() != 16) {
                    errs.add("auth", "Not a 16-byte secret in base64url.");
                }
            }
        }
        Kind::Relay => {
            d.registration_id = https_url(f, "endpoint", errs, !partial).unwrap_or_default();
            d.upstream_token = req("token", 200, errs);
        }
    }
    d
}

async fn device_create(core: &Core, a: &Account, kind: Kind, f: Fields) -> R {
    let mut errs = Errors::default();
    let d = device_fields(kind, &f, false, &mut errs);
    errs.check()?;
    let dev = core.relay.create_device(a.id, kind, d).await?;
    Ok(json(StatusCode::CREATED, device_json(&dev)))
}

async fn device_update(core: &Core, mut dev: Device, f: Fields) -> R {
    let kind = Kind::parse(&dev.kind).ok_or_else(not_found)?;
    let mut errs = Errors::default();
    let d = device_fields(kind, &f, true, &mut errs);
    errs.check()?;
    if f.contains_key("name") {
        dev.name = d.name;
    }
    if f.contains_key("active") {
        dev.active = d.active;
    }
    let set = |key: &str, v: Option<String>, slot: &mut Option<String>| {
        if f.contains_key(key) {
            *slot = v;
        }
    };
    set("device_id", d.device_id, &mut dev.device_id);
    set("p256dh", d.p256dh, &mut dev.p256dh);
    set("auth", d.auth, &mut dev.auth);
    set("token", d.upstream_token, &mut dev.upstream_token);
    if !d.registration_id.is_empty() {
        dev.registration_id = d.registration_id;
    }
    core.relay.update_device(dev.clone()).await?;
    Ok(json(StatusCode::OK, device_json(&dev)))
}

/// The token fields naming its device, one per kind (`gcm_device` and
/// `fcm_device` both name an FCM device).
const TOKEN_DEVICE_FIELDS: [(&str, Kind); 5] = [
    ("apns_device", Kind::Apns),
    ("gcm_device", Kind::Fcm),
    ("fcm_device", Kind::Fcm),
    ("webpush_device", Kind::WebPush),
    ("relay_device", Kind::Relay),
];

fn token_json(t: &Token, secret: Option<&str>) -> Value {
    // The secret is stored hashed: listings show its prefix only.
    let shown = secret.map(str::to_string).unwrap_or_else(|| format!("{}…", t.prefix));
    let mut v = json!({
        "name": t.name,
        "token": shown,
        "apns_device": Value::Null,
        "gcm_device": Value::Null,
        "date_expires": date(t.expires),
        "date_created": date(t.created),
        "rate_limit": t.rate,
    });
    let field = match Kind::parse(&t.device_kind) {
        Some(Kind::Apns) => "apns_device",
        Some(Kind::Fcm) => "gcm_device",
        Some(Kind::WebPush) => "webpush_device",
        _ => "relay_device",
    };
    v[field] = t.device_id.clone().into();
    v
}

/// A checked `POST tokens/` request.
struct TokenRequest {
    name: Option<String>,
    /// The field naming the device, its kind, and the device id.
    device: (&'static str, Kind, String),
    expires: Option<i64>,
    rate: Option<u32>,
}

/// Check the fields of `POST tokens/` (`now`: the current Unix time, for `date_expires`).
fn token_request(f: &Fields, now: i64) -> Result<TokenRequest, Answer> {
    let mut errs = Errors::default();
    let name = string(f, "name", 100, &mut errs);
    let mut named: Vec<(&'static str, Kind, String)> = TOKEN_DEVICE_FIELDS
        .iter()
        .filter_map(|(k, kind)| string(f, k, 64, &mut errs).map(|id| (*k, *kind, id)))
        .collect();
    let expires = match f.get("date_expires") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match parse_date(s) {
            Some(t) if t > now => Some(t),
            Some(_) => {
                errs.add("date_expires", "Must be in the future.");
                None
            }
            None => {
                errs.add(
                    "date_expires",
                    "Datetime has wrong format. Use RFC 3339, e.g. 2030-01-01T00:00:00Z.",
                );
                None
            }
        },
        Some(_) => {
            errs.add(
                "date_expires",
                "Datetime has wrong format. Use RFC 3339, e.g. 2030-01-01T00:00:00Z.",
            );
            None
        }
    };
    let rate = match f.get("rate_limit") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 && n <= u64::from(u32::MAX) => Some(n as u32),
            _ => {
                errs.add("rate_limit", "Must be a whole number of pushes per minute, at least 1.");
                None
            }
        },
    };
    match named.len() {
        0 => errs.add(
            "non_field_errors",
            "A token needs exactly one of apns_device, gcm_device, fcm_device, webpush_device, relay_device.",
        ),
        1 => {}
        _ => errs.add("non_field_errors", "A token is bound to exactly one device."),
    }
    errs.check()?;
    Ok(TokenRequest {
        name,
        device: named.swap_remove(0),
        expires,
        rate,
    })
}

async fn token_create(core: &Core, a: &Account, f: Fields) -> R {
    let TokenRequest {
        name,
        device: (field, kind, id),
        expires,
        rate,
    } = token_request(&f, crate::store::now())?;
    let dev = core.relay.device(a.id, &id).await?.filter(|d| d.kind == kind.as_str());
    let Some(dev) = dev else {
        let mut e = Errors::default();
        e.add(field, format!("Invalid pk \"{id}\" - object does not exist."));
        return e.check().map(|_| unreachable!());
    };
    let issued = core.relay.create_token(a.id, &dev.id, name, expires, rate).await?;
    tracing::info!(token = issued.token.prefix, device = %dev.id, "whitelist token issued");
    Ok(json(
        StatusCode::CREATED,
        token_json(&issued.token, Some(&issued.secret)),
    ))
}

/// Check the fields of `POST messages/`: token, priority, ttl.
fn message_request(f: &Fields) -> Result<(String, Priority, Option<Duration>), Answer> {
    let mut errs = Errors::default();
    let token = required(f, "token", 200, &mut errs);
    let priority = match f.get("priority") {
        None | Some(Value::Null) => Priority::default(),
        Some(Value::String(s)) => Priority::parse(s).unwrap_or_else(|| {
            errs.add("priority", format!("\"{s}\" is not a valid choice."));
            Priority::default()
        }),
        Some(_) => {
            errs.add("priority", "\"high\" or \"low\".");
            Priority::default()
        }
    };
    let ttl = match f.get("ttl") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) => Some(Duration::from_secs(n)),
            None => {
                errs.add("ttl", "A valid integer is required.");
                None
            }
        },
    };
    errs.check()?;
    Ok((token.unwrap_or_default(), priority, ttl))
}

async fn messages(core: &Core, f: Fields) -> R {
    let (token, priority, ttl) = message_request(&f)?;
    let data = f.get("data").cloned();
    match core.relay.submit(&token, data, priority, ttl).await {
        Ok(_) => Ok(json(StatusCode::ACCEPTED, Value::Object(f))),
        Err(SubmitError::UnknownToken) => Err(not_found()),
        Err(SubmitError::RateLimited { retry_after }) => Err(Answer::new(throttled(retry_after))),
        Err(SubmitError::TooLarge { size, limit }) => Err(Answer::new(json(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({ "data": [format!("Ensure this field has no more than {limit} bytes of JSON (it has {size}).")] }),
        ))),
        Err(SubmitError::Store(e)) => Err(e.into()),
    }
}

/// Entry points for the fuzz target `relay_api`: the body parsing and field
/// checks of every endpoint that takes a body, without a server.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Parse `body` (form-encoded when `form`) and check it as the request of
    /// endpoint `which` (accounts, each device kind created and updated,
    /// tokens, messages). `Ok` when accepted, else the HTTP status of the answer.
    pub fn request(which: u8, form: bool, body: &[u8]) -> Result<(), u16> {
        let status = |a: Answer| a.0.status().as_u16();
        let f = parse_body(form, body).map_err(status)?;
        match which % 11 {
            0 => {
                let (u, p, _) = account_request(&f).map_err(status)?;
                assert!(!u.is_empty() && u.chars().count() <= push::MAX_USERNAME && valid_username(&u));
                assert!(!p.is_empty());
            }
            n @ 1..=8 => {
                let kind = Kind::ALL[usize::from(n - 1) % 4];
                let mut errs = Errors::default();
                let d = device_fields(kind, &f, n > 4, &mut errs);
                errs.check().map_err(status)?;
                if kind == Kind::Apns {
                    assert!(d.registration_id.bytes().all(|b| b.is_ascii_hexdigit()));
                }
            }
            9 => {
                let t = token_request(&f, 1_700_000_000).map_err(status)?;
                assert!(t.expires.is_none_or(|e| e > 1_700_000_000));
                assert!(t.rate.is_none_or(|r| r >= 1));
            }
            _ => {
                let (t, _, _) = message_request(&f).map_err(status)?;
                assert!(!t.is_empty());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_render_like_django() {
        assert_eq!(date(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(date(1_462_299_881), "2016-05-03T18:24:41.000000Z");
        assert_eq!(parse_date("2016-05-03T18:24:41Z"), Some(1_462_299_881));
    }

    #[test]
    fn a_full_disk_answers_503_with_retry_after() {
        let full = crate::store::StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        ));
        assert!(full.is_full());
        let Answer(r) = Answer::from(full);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().contains_key(hyper::header::RETRY_AFTER));
        let other = crate::store::StoreError::Other("x".into());
        assert_eq!(Answer::from(other).0.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn request_checks_without_a_server() {
        use fuzzing::request;
        assert_eq!(request(0, false, br#"{"username":"al","password":"pw"}"#), Ok(()));
        assert_eq!(request(0, true, b"username=al&password=pw"), Ok(()));
        assert_eq!(request(0, false, b"[1]"), Err(400));
        assert_eq!(request(0, false, b"{\"username\":"), Err(400));
        assert_eq!(request(1, false, br#"{"registration_id":"zz"}"#), Err(400));
        assert_eq!(request(9, false, br#"{"apns_device":"1","rate_limit":0}"#), Err(400));
        assert_eq!(
            request(
                9,
                false,
                br#"{"apns_device":"1","date_expires":"2000-01-01T00:00:00Z"}"#
            ),
            Err(400)
        );
        assert_eq!(
            request(10, false, br#"{"token":"t","ttl":18446744073709551615}"#),
            Ok(())
        );
        assert_eq!(request(10, false, br#"{"token":"t","ttl":-1}"#), Err(400));
    }

    #[test]
    fn forms_decode() {
        let f = parse_form("username=a%40b&password=p+w&email=%e9%".as_bytes());
        assert_eq!(f["username"], "a@b");
        assert_eq!(f["password"], "p w");
        assert_eq!(f["email"], "\u{fffd}%");
        assert_eq!(percent_decode("%é%4", false), "%é%4");
    }
}

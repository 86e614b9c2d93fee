//! The relay API's wire format: request bodies (JSON or form-encoded, as
//! Django REST framework accepts both), field checks with DRF's error
//! shapes, dates, and the early answers every handler can return.

use crate::http::{json, Resp};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{body::Incoming, Method, Request, StatusCode};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest wait for a whole request body (a client trickling bytes holds a task).
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

pub type Fields = Map<String, Value>;

/// An early answer: every handler error becomes one of these.
pub struct Answer(pub Box<Resp>);

impl Answer {
    pub fn new(r: Resp) -> Answer {
        Answer(Box::new(r))
    }
}

impl From<crate::store::StoreError> for Answer {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "relay API storage error");
        if e.is_transient() {
            // Nothing was accepted; the client may try again once space
            // returns or the database is reachable again.
            let (text, after) = if e.is_full() {
                ("The relay's storage is full; try again later.", 60)
            } else {
                ("The relay's database is unavailable; try again later.", 5)
            };
            let mut r = detail(StatusCode::SERVICE_UNAVAILABLE, text);
            r.headers_mut().insert(hyper::header::RETRY_AFTER, after.into());
            return Answer::new(r);
        }
        Answer::new(detail(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error."))
    }
}

pub type R = Result<Resp, Answer>;

pub fn detail(status: StatusCode, msg: &str) -> Resp {
    json(status, json!({ "detail": msg }))
}

pub fn not_found() -> Answer {
    Answer::new(detail(StatusCode::NOT_FOUND, "Not found."))
}

/// Field errors in Django REST framework's shape: `{"field": ["message"]}`.
#[derive(Default)]
pub struct Errors(Map<String, Value>);

impl Errors {
    pub fn add(&mut self, field: &str, msg: impl Into<String>) {
        let e = self.0.entry(field.to_string()).or_insert_with(|| Value::Array(vec![]));
        if let Value::Array(a) = e {
            a.push(Value::String(msg.into()));
        }
    }
    pub fn check(self) -> Result<(), Answer> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Answer::new(json(StatusCode::BAD_REQUEST, Value::Object(self.0))))
        }
    }
}

pub const REQUIRED: &str = "This field is required.";

/// A string field: `Ok(None)` when absent (or null), an error when not a string or too long.
pub fn string(f: &Fields, key: &str, max: usize, errs: &mut Errors) -> Option<String> {
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

pub fn required(f: &Fields, key: &str, max: usize, errs: &mut Errors) -> Option<String> {
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

pub fn boolean(f: &Fields, key: &str, errs: &mut Errors) -> Option<bool> {
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

pub fn parse_date(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

pub fn throttled(wait: Duration) -> Resp {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r = detail(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("Request was throttled. Expected available in {secs} seconds."),
    );
    r.headers_mut().insert(hyper::header::RETRY_AFTER, secs.into());
    r
}

pub fn method_not_allowed(m: &Method, allow: &str) -> Answer {
    let mut r = detail(StatusCode::METHOD_NOT_ALLOWED, &format!("Method \"{m}\" not allowed."));
    if let Ok(v) = allow.parse() {
        r.headers_mut().insert(hyper::header::ALLOW, v);
    }
    Answer::new(r)
}

/// Read the body as a JSON object (JSON or form-encoded, as DRF accepts both).
pub async fn body(req: Request<Incoming>) -> Result<Fields, Answer> {
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
pub fn parse_body(form: bool, bytes: &[u8]) -> Result<Fields, Answer> {
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

/// Form-encoded fields (`+` is a space, percent escapes decoded lossily).
pub fn parse_form(b: &[u8]) -> Fields {
    form_urlencoded::parse(b)
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

/// A percent-decoded path segment (invalid escapes are kept as they are).
pub fn path_segment(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

pub fn no_content() -> Resp {
    let mut r = hyper::Response::new(http_body_util::Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
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
        let Answer(r) = Answer::from(crate::store::StoreError::Unavailable("connection closed".into()));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[hyper::header::RETRY_AFTER], "5");
        let other = crate::store::StoreError::Other("x".into());
        assert_eq!(Answer::from(other).0.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn forms_decode() {
        let f = parse_form("username=a%40b&password=p+w&email=%e9%".as_bytes());
        assert_eq!(f["username"], "a@b");
        assert_eq!(f["password"], "p w");
        assert_eq!(f["email"], "\u{fffd}%");
        assert_eq!(path_segment("%é%4"), "%é%4");
        assert_eq!(path_segment("a%40b+c"), "a@b+c");
    }
}

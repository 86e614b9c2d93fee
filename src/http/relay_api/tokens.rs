//! `tokens/` and `tokens/<secret>/`: whitelist tokens bound to one device,
//! with expiry and a rate limit; the secret is shown once, at creation.

use super::wire::{date, parse_date, string, Answer, Errors, Fields, R};
use crate::{
    http::json,
    push::{Kind, Relay},
    store::relay::{Account, Token},
};
use hyper::StatusCode;
use serde_json::{json, Value};

/// The token fields naming its device, one per kind (`gcm_device` and
/// `fcm_device` both name an FCM device).
const TOKEN_DEVICE_FIELDS: [(&str, Kind); 5] = [
    ("apns_device", Kind::Apns),
    ("gcm_device", Kind::Fcm),
    ("fcm_device", Kind::Fcm),
    ("webpush_device", Kind::WebPush),
    ("relay_device", Kind::Relay),
];

pub fn token_json(t: &Token, secret: Option<&str>) -> Value {
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
pub struct TokenRequest {
    pub name: Option<String>,
    /// The field naming the device, its kind, and the device id.
    pub device: (&'static str, Kind, String),
    pub expires: Option<i64>,
    pub rate: Option<u32>,
}

/// Check the fields of `POST tokens/` (`now`: the current Unix time, for `date_expires`).
pub fn token_request(f: &Fields, now: i64) -> Result<TokenRequest, Answer> {
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

pub async fn create(relay: &Relay, a: &Account, f: Fields) -> R {
    let TokenRequest {
        name,
        device: (field, kind, id),
        expires,
        rate,
    } = token_request(&f, crate::store::now())?;
    let dev = relay.device(a.id, &id).await?.filter(|d| d.kind == kind.as_str());
    let Some(dev) = dev else {
        let mut e = Errors::default();
        e.add(field, format!("Invalid pk \"{id}\" - object does not exist."));
        return e.check().map(|_| unreachable!());
    };
    let issued = relay.create_token(a.id, &dev.id, name, expires, rate).await?;
    tracing::info!(token = issued.token.prefix, device = %dev.id, "whitelist token issued");
    Ok(json(
        StatusCode::CREATED,
        token_json(&issued.token, Some(&issued.secret)),
    ))
}

//! The push relay's JSON API: ChatSecure Push Server API v1 (wire-compatible:
//! same paths, fields, status codes and Django REST framework error shapes)
//! plus pushbox's additions (`device/fcm`, `device/webpush`, `device/relay`,
//! `vapid`, token expiry and rate limit on creation). `docs/spec/relay-api.md`
//! is the reference.
//!
//! Layout: [`wire`] (bodies, field checks, error shapes), this file (routing
//! and authentication), and one module per resource.

mod accounts;
mod devices;
mod messages;
mod tokens;
pub mod wire;

use super::{json, Resp};
use crate::{
    push::{self, Relay},
    store::relay::{Account, Token},
};
use hyper::{body::Incoming, Method, Request, StatusCode};
use serde_json::{json, Value};
use std::net::SocketAddr;
use wire::{
    body, detail, method_not_allowed, no_content, not_found, path_segment, string, throttled, Answer, Errors, R,
};

pub use wire::{date, MAX_BODY};

/// Answer one request under `/api/v1/`. `domain` names the relay's XMPP
/// face (`push.<domain>`) in `pubsub/`.
pub async fn handle(relay: &Relay, domain: &str, peer: SocketAddr, req: Request<Incoming>) -> Resp {
    if let Err(wait) = relay.check_ip(peer.ip()) {
        return throttled(wait);
    }
    match route(relay, domain, req).await {
        Ok(r) => r,
        Err(Answer(r)) => *r,
    }
}

async fn auth(relay: &Relay, req: &Request<Incoming>) -> Result<Account, Answer> {
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
    relay
        .authenticate(key)
        .await?
        .ok_or_else(|| unauthorized("Invalid token."))
}

async fn route(relay: &Relay, domain: &str, req: Request<Incoming>) -> R {
    let path = req
        .uri()
        .path()
        .trim_start_matches("/api/v1/")
        .trim_end_matches('/')
        .to_string();
    let parts: Vec<&str> = path.split('/').collect();
    let m = req.method().clone();
    match (parts.as_slice(), &m) {
        (["accounts"], &Method::POST) => accounts::create(relay, body(req).await?).await,
        (["accounts"], &Method::GET) => {
            let a = auth(relay, &req).await?;
            Ok(json(StatusCode::OK, accounts::account_json(&a, None)))
        }
        (["accounts"], _) => Err(method_not_allowed(&m, "GET, POST")),
        (["accounts", name], &Method::GET | &Method::DELETE) => {
            let a = auth(relay, &req).await?;
            if a.username != path_segment(name) {
                return Err(Answer::new(detail(
                    StatusCode::FORBIDDEN,
                    "You do not have permission to perform this action.",
                )));
            }
            if m == Method::GET {
                Ok(json(StatusCode::OK, accounts::account_json(&a, None)))
            } else {
                relay.delete_account(a.id).await?;
                tracing::info!(account = a.id, "relay account deleted");
                Ok(no_content())
            }
        }
        (["accounts", _], _) => Err(method_not_allowed(&m, "GET, DELETE")),
        (["device", coll], _) => {
            let kind = devices::kind(coll).ok_or_else(not_found)?;
            let a = auth(relay, &req).await?;
            match m {
                Method::GET => {
                    let list = relay.devices(a.id, kind).await?;
                    Ok(json(
                        StatusCode::OK,
                        Value::Array(list.iter().map(devices::device_json).collect()),
                    ))
                }
                Method::POST => devices::create(relay, &a, kind, body(req).await?).await,
                _ => Err(method_not_allowed(&m, "GET, POST")),
            }
        }
        (["device", coll, id], _) => {
            let kind = devices::kind(coll).ok_or_else(not_found)?;
            let a = auth(relay, &req).await?;
            let dev = relay
                .device(a.id, id)
                .await?
                .filter(|d| d.kind == kind.as_str())
                .ok_or_else(not_found)?;
            match m {
                Method::GET => Ok(json(StatusCode::OK, devices::device_json(&dev))),
                Method::PUT | Method::PATCH => devices::update(relay, dev, body(req).await?).await,
                Method::DELETE => {
                    relay.delete_device(a.id, id).await?;
                    Ok(no_content())
                }
                _ => Err(method_not_allowed(&m, "GET, PUT, PATCH, DELETE")),
            }
        }
        (["tokens"], _) => {
            let a = auth(relay, &req).await?;
            match m {
                Method::GET => {
                    let list = relay.tokens(a.id).await?;
                    Ok(json(
                        StatusCode::OK,
                        Value::Array(list.iter().map(|t| tokens::token_json(t, None)).collect()),
                    ))
                }
                Method::POST => tokens::create(relay, &a, body(req).await?).await,
                _ => Err(method_not_allowed(&m, "GET, POST")),
            }
        }
        (["tokens", secret], _) => {
            let a = auth(relay, &req).await?;
            let secret = secret.to_string();
            let t = relay.token(a.id, &secret).await?.ok_or_else(not_found)?;
            match m {
                Method::GET => Ok(json(StatusCode::OK, tokens::token_json(&t, Some(&secret)))),
                Method::PUT | Method::PATCH => {
                    let f = body(req).await?;
                    let mut errs = Errors::default();
                    let name = string(&f, "name", 100, &mut errs);
                    errs.check()?;
                    let name = if f.contains_key("name") { name } else { t.name.clone() };
                    relay.rename_token(t.hash.clone(), name.clone()).await?;
                    Ok(json(
                        StatusCode::OK,
                        tokens::token_json(&Token { name, ..t }, Some(&secret)),
                    ))
                }
                Method::DELETE => {
                    relay.delete_token(t.hash).await?;
                    tracing::info!(token = push::secret::prefix(&secret), "whitelist token revoked");
                    Ok(no_content())
                }
                _ => Err(method_not_allowed(&m, "GET, PUT, PATCH, DELETE")),
            }
        }
        (["messages"], &Method::POST) => messages::post(relay, body(req).await?).await,
        (["messages"], _) => Err(method_not_allowed(&m, "POST")),
        (["pubsub"], &Method::GET) => Ok(json(StatusCode::OK, json!({ "jid": format!("push.{}", domain) }))),
        (["pubsub"], _) => Err(method_not_allowed(&m, "GET")),
        (["vapid"], &Method::GET) => Ok(json(StatusCode::OK, json!({ "public_key": relay.vapid_public_key() }))),
        _ => Err(not_found()),
    }
}

/// Entry points for the fuzz target `relay_api`: the body parsing and field
/// checks of every endpoint that takes a body, without a server.
#[doc(hidden)]
pub mod fuzzing {
    use super::{accounts, devices, messages, tokens, wire::*};
    use crate::push::{self, Kind};

    /// Parse `body` (form-encoded when `form`) and check it as the request of
    /// endpoint `which` (accounts, each device kind created and updated,
    /// tokens, messages). `Ok` when accepted, else the HTTP status of the answer.
    pub fn request(which: u8, form: bool, body: &[u8]) -> Result<(), u16> {
        let status = |a: Answer| a.0.status().as_u16();
        let f = parse_body(form, body).map_err(status)?;
        match which % 11 {
            0 => {
                let (u, p, _) = accounts::account_request(&f).map_err(status)?;
                assert!(!u.is_empty() && u.chars().count() <= push::MAX_USERNAME && accounts::valid_username(&u));
                assert!(!p.is_empty());
            }
            n @ 1..=8 => {
                let kind = Kind::ALL[usize::from(n - 1) % 4];
                let mut errs = Errors::default();
                let d = devices::device_fields(kind, &f, n > 4, &mut errs);
                errs.check().map_err(status)?;
                if kind == Kind::Apns {
                    assert!(d.registration_id.bytes().all(|b| b.is_ascii_hexdigit()));
                }
            }
            9 => {
                let t = tokens::token_request(&f, 1_700_000_000).map_err(status)?;
                assert!(t.expires.is_none_or(|e| e > 1_700_000_000));
                assert!(t.rate.is_none_or(|r| r >= 1));
            }
            _ => {
                let (t, _, _) = messages::message_request(&f).map_err(status)?;
                assert!(!t.is_empty());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_checks_without_a_server() {
        use super::fuzzing::request;
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
}

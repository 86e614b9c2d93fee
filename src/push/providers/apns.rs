//! APNs over HTTP/2, with token authentication (.p8 key, ES256 JWT reused
//! for 40 minutes: Apple refuses tokens older than an hour and throttles
//! refreshes more often than every 20 minutes) or certificate authentication
//! (the app's push certificate presented as the TLS client certificate, no
//! `authorization` header). With a shared database the provider token is
//! made by one node at a time and used by all (Apple answers
//! `TooManyProviderTokenUpdates` when many nodes each refresh their own). Headers are built per push; the JSON payload is
//! built here (the `a2` crate's client cannot be pointed at another host and
//! brings its own TLS set-up).

use super::{message_json, priority, Outcome};
use crate::{
    config::relay::{Apns as ApnsConfig, ApnsAuth, ApnsEnvironment},
    push::{
        backend::RelayStore,
        client::{retry_after, tls_config_with_client_cert, HttpsClient},
        jwt, Priority,
    },
    store::relay::Delivery,
};
use bytes::Bytes;
use http_body_util::Full;
use ring::signature::EcdsaKeyPair;
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

pub const PRODUCTION: &str = "https://api.push.apple.com";
pub const SANDBOX: &str = "https://api.sandbox.push.apple.com";
/// Age at which the provider token is replaced (Apple: between 20 and 60 minutes).
const JWT_REUSE: Duration = Duration::from_secs(40 * 60);
/// The alert shown for a `high` push: a localization key the app may
/// translate; iOS shows the key itself when the app has no translation.
pub const ALERT_LOC_KEY: &str = "New message";
/// The `aps` dictionary of a `high` push (an alert) and of a `low` one.
const ALERT_APS: &str = r#"{"alert":{"loc-key":"New message"},"sound":"default","mutable-content":1}"#;
const BACKGROUND_APS: &str = r#"{"content-available":1}"#;

pub struct Apns {
    client: HttpsClient,
    base: String,
    topic: String,
    /// `None` with certificate authentication: the TLS connection authenticates.
    token: Option<ProviderToken>,
}

/// Token authentication: the key and the cached JWT.
struct ProviderToken {
    key_id: String,
    team_id: String,
    key: EcdsaKeyPair,
    // A std Mutex: held to read or replace the cached token, never across `.await`.
    jwt: Mutex<Option<(String, i64)>>,
    /// One refresh at a time on this node (a lock local to this credential).
    refreshing: tokio::sync::Mutex<()>,
    /// Where the token is shared with the other nodes.
    store: Arc<dyn RelayStore>,
}

impl Apns {
    /// `connections`: most HTTP/2 connections to APNs (see [`HttpsClient`]).
    pub fn new(c: &ApnsConfig, store: Arc<dyn RelayStore>, connections: usize) -> anyhow::Result<Apns> {
        let auth = c.auth().map_err(|problems| {
            let all: Vec<String> = problems.into_iter().map(|(k, m)| format!("{k}: {m}")).collect();
            anyhow::anyhow!(all.join("; "))
        })?;
        let base = c.endpoint.clone().unwrap_or_else(|| {
            match c.environment {
                ApnsEnvironment::Production => PRODUCTION,
                ApnsEnvironment::Sandbox => SANDBOX,
            }
            .to_string()
        });
        let (client, token) = match auth {
            ApnsAuth::Token { key, key_id, team_id } => {
                let pem =
                    std::fs::read_to_string(key).map_err(|e| anyhow::anyhow!("reading {}: {e}", key.display()))?;
                let key = jwt::es256_key(&jwt::pkcs8_from_pem(&pem)?)?;
                let token = ProviderToken {
                    key_id: key_id.to_string(),
                    team_id: team_id.to_string(),
                    key,
                    jwt: Mutex::new(None),
                    refreshing: tokio::sync::Mutex::new(()),
                    store,
                };
                (HttpsClient::new(c.ca_roots.as_deref())?, Some(token))
            }
            ApnsAuth::Certificate { certificate, key } => {
                let tls = tls_config_with_client_cert(c.ca_roots.as_deref(), certificate, key)?;
                (HttpsClient::with_tls(tls), None)
            }
        };
        Ok(Apns {
            client: client.max_connections(connections),
            base: base.trim_end_matches('/').to_string(),
            topic: c.topic.clone(),
            token,
        })
    }

    pub async fn send(&self, d: &Delivery) -> Outcome {
        let jwt = match &self.token {
            None => None,
            Some(t) => match t.get().await {
                Ok(t) => Some(t),
                Err(e) => {
                    return Outcome::Retry {
                        after: None,
                        reason: format!("APNs provider token: {e}"),
                    }
                }
            },
        };
        let (push_type, prio, aps) = match priority(d) {
            Priority::High => ("alert", "10", ALERT_APS),
            Priority::Low => ("background", "5", BACKGROUND_APS),
        };
        let body = format!(r#"{{"aps":{aps},"message":{}}}"#, message_json(d));
        let url = format!("{}/3/device/{}", self.base, d.device.registration_id);
        let mut req = hyper::Request::post(url);
        if let Some(jwt) = &jwt {
            req = req.header("authorization", format!("bearer {jwt}"));
        }
        let req = req
            .header("apns-topic", &self.topic)
            .header("apns-push-type", push_type)
            .header("apns-priority", prio)
            // Per push: when this push stops being worth delivering.
            .header("apns-expiration", d.expires.to_string())
            .header("apns-collapse-id", &d.collapse)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Outcome::Dead(format!("device token unusable in a URL: {e}")),
        };
        let resp = match self.client.send(req).await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    after: None,
                    reason: format!("APNs: {e}"),
                }
            }
        };
        let status = resp.status().as_u16();
        if status == 200 {
            let id = resp
                .headers()
                .get("apns-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            return Outcome::Delivered(id);
        }
        let reason = serde_json::from_slice::<serde_json::Value>(resp.body())
            .ok()
            .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
            .unwrap_or_default();
        let mut refused = false;
        let outcome = classify(status, &reason, retry_after(&resp), || refused = true);
        if let (true, Some(t), Some(jwt)) = (refused, &self.token, &jwt) {
            t.forget(jwt).await;
        }
        outcome
    }
}

impl ProviderToken {
    /// Its name in the relay's store.
    fn name(&self) -> String {
        format!("apns-jwt:{}:{}", self.team_id, self.key_id)
    }

    fn cached(&self) -> Option<String> {
        let cached = self.jwt.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((t, made)) if crate::store::now() - made < JWT_REUSE.as_secs() as i64 => Some(t.clone()),
            _ => None,
        }
    }

    fn sign(&self) -> anyhow::Result<String> {
        let header = serde_json::json!({ "alg": "ES256", "kid": self.key_id });
        let claims = serde_json::json!({ "iss": self.team_id, "iat": crate::store::now() });
        jwt::es256(&self.key, &header, &claims)
    }

    /// The current provider token: this node's copy while it is younger
    /// than [`JWT_REUSE`], else the shared one (made by whichever node gets
    /// there first when it too is old).
    async fn get(&self) -> anyhow::Result<String> {
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        let _turn = self.refreshing.lock().await;
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        let shared = self.store.fresh_value(&self.name(), JWT_REUSE, &|| self.sign()).await?;
        *self.jwt.lock().unwrap_or_else(|p| p.into_inner()) = Some((shared.value.clone(), shared.made));
        Ok(shared.value)
    }

    /// Apple refused `jwt`: drop it here and, unless another node already
    /// replaced it, everywhere.
    async fn forget(&self, jwt: &str) {
        {
            let mut cached = self.jwt.lock().unwrap_or_else(|p| p.into_inner());
            if cached.as_ref().is_some_and(|(t, _)| t == jwt) {
                *cached = None;
            }
        }
        if let Err(e) = self.store.forget_value(&self.name(), jwt).await {
            tracing::warn!(error = %e, "could not mark the APNs provider token as refused");
        }
    }
}

/// Map an APNs answer onto an outcome (Apple's documented status codes and reasons).
fn classify(status: u16, reason: &str, after: Option<Duration>, forget_token: impl FnOnce()) -> Outcome {
    let why = format!("APNs {status} {reason}");
    match (status, reason) {
        (410, _) | (400, "BadDeviceToken") | (400, "DeviceTokenNotForTopic") => Outcome::Dead(why),
        (403, "ExpiredProviderToken") => {
            forget_token();
            Outcome::Retry {
                after: None,
                reason: why,
            }
        }
        (403, "InvalidProviderToken") => {
            forget_token();
            Outcome::Drop(why)
        }
        _ => super::retry_or_drop(status, after, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alert_names_its_localization_key() {
        let aps: serde_json::Value = serde_json::from_str(ALERT_APS).unwrap();
        assert_eq!(aps["alert"]["loc-key"], ALERT_LOC_KEY);
        assert_eq!(aps["mutable-content"], 1);
        let aps: serde_json::Value = serde_json::from_str(BACKGROUND_APS).unwrap();
        assert_eq!(aps, serde_json::json!({ "content-available": 1 }));
    }

    #[test]
    fn dead_tokens_retries_and_drops() {
        let n = || {};
        assert!(matches!(classify(410, "Unregistered", None, n), Outcome::Dead(_)));
        assert!(matches!(classify(400, "BadDeviceToken", None, n), Outcome::Dead(_)));
        assert!(matches!(
            classify(400, "DeviceTokenNotForTopic", None, n),
            Outcome::Dead(_)
        ));
        assert!(matches!(classify(400, "BadCollapseId", None, n), Outcome::Drop(_)));
        let after = Some(Duration::from_secs(3));
        assert_eq!(
            classify(429, "TooManyRequests", after, n),
            Outcome::Retry {
                after,
                reason: "APNs 429 TooManyRequests".into()
            }
        );
        assert!(matches!(
            classify(503, "ServiceUnavailable", None, n),
            Outcome::Retry { .. }
        ));
        let mut forgot = false;
        assert!(matches!(
            classify(403, "ExpiredProviderToken", None, || forgot = true),
            Outcome::Retry { .. }
        ));
        assert!(forgot);
    }
}

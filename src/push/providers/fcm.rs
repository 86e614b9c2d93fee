//! FCM HTTP v1: `POST {endpoint}/v1/projects/{project}/messages:send` with
//! an OAuth2 access token obtained from the service account's `token_uri`
//! by an RS256 JWT grant, cached until five minutes before it expires.
//! Messages are data-only; the Android priority follows the push's.

use super::{message_dict, priority, ttl_left, Outcome};
use crate::{
    config::relay::Fcm as FcmConfig,
    push::{
        client::{retry_after, HttpsClient},
        jwt, Priority,
    },
    store::relay::Delivery,
};
use bytes::Bytes;
use http_body_util::Full;
use ring::signature::RsaKeyPair;
use serde::Deserialize;
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

pub const ENDPOINT: &str = "https://fcm.googleapis.com";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    client_email: String,
    token_uri: String,
}

pub struct Fcm {
    client: HttpsClient,
    endpoint: String,
    project_id: String,
    client_email: String,
    key_id: Option<String>,
    token_uri: String,
    key: RsaKeyPair,
    // A std Mutex: held to read or replace the cached token, never across `.await`.
    access: Mutex<Option<(String, Instant)>>,
    // One token request at a time: concurrent pushes wait for it instead of
    // each asking Google for a token. Local to this credential.
    refresh: tokio::sync::Mutex<()>,
}

impl Fcm {
    /// `connections`: most HTTP/2 connections to FCM (see [`HttpsClient`]).
    pub fn new(c: &FcmConfig, connections: usize) -> anyhow::Result<Fcm> {
        let text = std::fs::read_to_string(&c.service_account)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", c.service_account.display()))?;
        let sa: ServiceAccount = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a service-account JSON: {e}", c.service_account.display()))?;
        let key = jwt::rs256_key(&jwt::pkcs8_from_pem(&sa.private_key)?)?;
        Ok(Fcm {
            client: HttpsClient::new(c.ca_roots.as_deref())?.max_connections(connections),
            endpoint: c
                .endpoint
                .clone()
                .unwrap_or_else(|| ENDPOINT.into())
                .trim_end_matches('/')
                .to_string(),
            project_id: sa.project_id,
            client_email: sa.client_email,
            key_id: sa.private_key_id,
            token_uri: sa.token_uri,
            key,
            access: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
        })
    }

    fn cached_token(&self) -> Option<String> {
        let c = self.access.lock().unwrap_or_else(|p| p.into_inner());
        c.as_ref()
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(t, _)| t.clone())
    }

    fn forget_token(&self) {
        *self.access.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    async fn access_token(&self) -> Result<String, Outcome> {
        if let Some(t) = self.cached_token() {
            return Ok(t);
        }
        let _one_at_a_time = self.refresh.lock().await;
        if let Some(t) = self.cached_token() {
            return Ok(t);
        }
        let now = crate::store::now();
        let mut header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
        if let Some(k) = &self.key_id {
            header["kid"] = k.clone().into();
        }
        let claims = serde_json::json!({
            "iss": self.client_email, "scope": SCOPE, "aud": self.token_uri, "iat": now, "exp": now + 3600,
        });
        let assertion = jwt::rs256(&self.key, &header, &claims).map_err(|e| Outcome::Drop(e.to_string()))?;
        let form = format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}");
        let req = hyper::Request::post(self.token_uri.as_str())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| Outcome::Drop(format!("bad token_uri: {e}")))?;
        let resp = self.client.send(req).await.map_err(|e| Outcome::Retry {
            after: None,
            reason: format!("OAuth: {e}"),
        })?;
        let status = resp.status().as_u16();
        if status != 200 {
            let why = format!("OAuth token endpoint answered {status}");
            return Err(super::retry_or_drop(status, retry_after(&resp), why));
        }
        #[derive(Deserialize)]
        struct Grant {
            access_token: String,
            #[serde(default = "an_hour")]
            expires_in: u64,
        }
        fn an_hour() -> u64 {
            3600
        }
        let g: Grant = serde_json::from_slice(resp.body()).map_err(|e| Outcome::Retry {
            after: None,
            reason: format!("OAuth answer: {e}"),
        })?;
        let keep = Duration::from_secs(g.expires_in.saturating_sub(300).max(30));
        *self.access.lock().unwrap_or_else(|p| p.into_inner()) = Some((g.access_token.clone(), Instant::now() + keep));
        Ok(g.access_token)
    }

    pub async fn send(&self, d: &Delivery) -> Outcome {
        let token = match self.access_token().await {
            Ok(t) => t,
            Err(o) => return o,
        };
        let android_priority = match priority(d) {
            Priority::High => "HIGH",
            Priority::Low => "NORMAL",
        };
        let body = serde_json::json!({
            "message": {
                "token": d.device.registration_id,
                "data": data_map(d),
                "android": { "priority": android_priority, "ttl": format!("{}s", ttl_left(d)), "collapse_key": d.collapse },
            }
        });
        let url = format!("{}/v1/projects/{}/messages:send", self.endpoint, self.project_id);
        let req = hyper::Request::post(url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Outcome::Drop(format!("bad FCM endpoint: {e}")),
        };
        let resp = match self.client.send(req).await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    after: None,
                    reason: format!("FCM: {e}"),
                }
            }
        };
        let status = resp.status().as_u16();
        if status == 200 {
            let name = serde_json::from_slice::<serde_json::Value>(resp.body())
                .ok()
                .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string));
            return Outcome::Delivered(name);
        }
        let code = error_code(resp.body());
        if status == 401 {
            self.forget_token();
        }
        classify(status, &code, retry_after(&resp))
    }
}

/// FCM data values must be strings: a JSON object's values are kept (strings
/// as they are, others as JSON text) and the ChatSecure message dictionary
/// is added as `message`.
fn data_map(d: &Delivery) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    if let Some(serde_json::Value::Object(o)) = d.data.as_deref().and_then(|s| serde_json::from_str(s).ok()) {
        for (k, v) in o {
            let s = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            m.insert(k, s.into());
        }
    }
    m.insert("message".into(), message_dict(d).to_string().into());
    m
}

/// The most specific error code of an FCM error body: the `errorCode` of an
/// `FcmError` detail (e.g. `UNREGISTERED`), else the status (`NOT_FOUND`).
fn error_code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let err = &v["error"];
    if let Some(details) = err["details"].as_array() {
        for d in details {
            if let Some(c) = d["errorCode"].as_str() {
                return c.to_string();
            }
        }
    }
    err["status"].as_str().unwrap_or_default().to_string()
}

fn classify(status: u16, code: &str, after: Option<Duration>) -> Outcome {
    let why = format!("FCM {status} {code}");
    match (status, code) {
        (_, "UNREGISTERED") | (404, _) => Outcome::Dead(why),
        // An expired access token: fetch a new one and try again.
        (401, "UNAUTHENTICATED") => Outcome::Retry {
            after: None,
            reason: why,
        },
        _ => super::retry_or_drop(status, after, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fcm_errors_map_to_outcomes() {
        let body = br#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND",
            "details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        assert_eq!(error_code(body), "UNREGISTERED");
        assert!(matches!(classify(404, "UNREGISTERED", None), Outcome::Dead(_)));
        assert!(matches!(classify(400, "INVALID_ARGUMENT", None), Outcome::Drop(_)));
        assert!(matches!(classify(429, "QUOTA_EXCEEDED", None), Outcome::Retry { .. }));
        assert!(matches!(classify(503, "UNAVAILABLE", None), Outcome::Retry { .. }));
        assert!(matches!(classify(403, "SENDER_ID_MISMATCH", None), Outcome::Drop(_)));
        assert_eq!(error_code(br#"{"error":{"status":"INTERNAL"}}"#), "INTERNAL");
    }
}

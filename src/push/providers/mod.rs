//! Providers: how a delivery reaches a device, and what the answer means.
//! Each maps the vendor's answer onto one [`Outcome`].

pub mod apns;
pub mod fcm;
pub mod upstream;
pub mod webpush;

use super::{backend::RelayStore, client::HttpsClient, Kind, Priority};
use crate::{config::RelayConfig, store::relay::Delivery};
use std::{path::Path, sync::Arc, time::Duration};

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the provider (with its id, if it gave one).
    Delivered(Option<String>),
    /// Try again later (429, 5xx, connection trouble), not before `after` if given.
    Retry { after: Option<Duration>, reason: String },
    /// The device token is dead: deactivate the device now.
    Dead(String),
    /// Refused for a reason retrying cannot fix: drop this delivery.
    Drop(String),
}

pub struct Providers {
    pub apns: Option<apns::Apns>,
    pub fcm: Option<fcm::Fcm>,
    pub webpush: webpush::WebPush,
    pub upstream: upstream::Upstream,
}

impl Providers {
    /// The providers configured, with the VAPID key from (or first put
    /// into) the relay's store. Reads files: call at start-up.
    pub async fn new(
        config: &RelayConfig,
        data_dir: &Path,
        public_url: &str,
        store: Arc<dyn RelayStore>,
    ) -> anyhow::Result<Providers> {
        use anyhow::Context;
        let conns = config.provider_connections;
        let shared = super::client::tls_config(config.ca_roots.as_deref()).context("relay.ca_roots")?;
        let vapid = webpush::vapid_key(data_dir, config.database.is_some(), store.as_ref())
            .await
            .context("Web Push (VAPID key)")?;
        Ok(Providers {
            apns: config
                .apns
                .as_ref()
                .map(|c| apns::Apns::new(c, store.clone(), conns))
                .transpose()
                .context("relay.apns")?,
            fcm: config
                .fcm
                .as_ref()
                .map(|c| fcm::Fcm::new(c, conns))
                .transpose()
                .context("relay.fcm")?,
            webpush: webpush::WebPush::new(
                HttpsClient::with_tls(shared.clone()).max_connections(conns),
                &vapid,
                config.vapid_subject.clone().unwrap_or_else(|| public_url.to_string()),
            )
            .context("Web Push (VAPID key)")?,
            upstream: upstream::Upstream::new(HttpsClient::with_tls(shared).max_connections(conns)),
        })
    }

    pub async fn send(&self, kind: Kind, d: &Delivery) -> Outcome {
        match kind {
            Kind::Apns => match &self.apns {
                Some(p) => p.send(d).await,
                None => Outcome::Drop("no [relay.apns] credentials configured".into()),
            },
            Kind::Fcm => match &self.fcm {
                Some(p) => p.send(d).await,
                None => Outcome::Drop("no [relay.fcm] credentials configured".into()),
            },
            Kind::WebPush => self.webpush.send(d).await,
            Kind::Relay => self.upstream.send(d).await,
        }
    }
}

/// The ChatSecure message dictionary every payload carries:
/// `{"token": <whitelist token>, "data": <data>}`.
pub fn message_dict(d: &Delivery) -> serde_json::Value {
    let data = d
        .data
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null);
    serde_json::json!({ "token": d.token, "data": data })
}

/// [`message_dict`] as JSON text, with the stored `data` (JSON written by
/// the relay itself at submit) spliced in rather than parsed again.
pub fn message_json(d: &Delivery) -> String {
    let token = serde_json::Value::String(d.token.clone());
    match d.data.as_deref() {
        Some(data) if serde_json::from_str::<serde::de::IgnoredAny>(data).is_ok() => {
            format!(r#"{{"token":{token},"data":{data}}}"#)
        }
        _ => format!(r#"{{"token":{token},"data":null}}"#),
    }
}

pub fn priority(d: &Delivery) -> Priority {
    Priority::parse(&d.priority).unwrap_or_default()
}

/// Seconds the push has left to live (0 when expired).
pub fn ttl_left(d: &Delivery) -> u64 {
    (d.expires - crate::store::now()).max(0) as u64
}

/// A generic mapping of an HTTP status for providers without special cases.
pub fn by_status(status: u16, retry_after: Option<Duration>, what: &str) -> Outcome {
    let why = format!("{what} answered {status}");
    match status {
        200..=299 => Outcome::Delivered(None),
        404 | 410 => Outcome::Dead(why),
        408 => Outcome::Retry {
            after: retry_after,
            reason: why,
        },
        _ => retry_or_drop(status, retry_after, why),
    }
}

/// The rule every provider shares once its own cases are handled: 429 and
/// 5xx are worth another try (not before `Retry-After`, when given); any
/// other refusal is dropped.
pub fn retry_or_drop(status: u16, retry_after: Option<Duration>, why: String) -> Outcome {
    match status {
        429 | 500..=599 => Outcome::Retry {
            after: retry_after,
            reason: why,
        },
        _ => Outcome::Drop(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_json_equals_the_dictionary() {
        let d = |data: Option<&str>| Delivery {
            push_id: 1,
            device: crate::store::relay::Device {
                id: "d".into(),
                account_id: 1,
                kind: "apns".into(),
                name: None,
                active: true,
                registration_id: "ab".into(),
                device_id: None,
                p256dh: None,
                auth: None,
                upstream_token: None,
                created: 0,
            },
            token: "t\"ok".into(),
            collapse: "c".into(),
            data: data.map(str::to_string),
            priority: "high".into(),
            created: 0,
            expires: 0,
            attempts: 0,
        };
        for data in [None, Some(r#"{"a":[1,"x"]}"#), Some("not json")] {
            let d = d(data);
            let spliced: serde_json::Value = serde_json::from_str(&message_json(&d)).unwrap();
            assert_eq!(spliced, message_dict(&d), "{data:?}");
        }
    }

    #[test]
    fn generic_status_mapping() {
        let after = Some(Duration::from_secs(7));
        assert_eq!(by_status(201, None, "x"), Outcome::Delivered(None));
        assert!(matches!(by_status(410, None, "x"), Outcome::Dead(_)));
        assert!(matches!(by_status(404, None, "x"), Outcome::Dead(_)));
        assert!(matches!(by_status(408, after, "x"), Outcome::Retry { after: a, .. } if a == after));
        assert!(matches!(by_status(429, after, "x"), Outcome::Retry { after: a, .. } if a == after));
        assert!(matches!(by_status(503, None, "x"), Outcome::Retry { after: None, .. }));
        assert!(matches!(by_status(400, None, "x"), Outcome::Drop(_)));
        assert!(matches!(by_status(413, None, "x"), Outcome::Drop(_)));
    }
}

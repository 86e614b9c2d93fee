//! Relay federation: forward a push to another relay's `/api/v1/messages/`
//! with the whitelist token it issued. The content stays what the sender
//! gave; the other relay delivers it to its own devices.

use super::{by_status, priority, Outcome};
use crate::push::client::{retry_after, HttpsClient};
use crate::push::Priority;
use crate::store::relay::Delivery;
use bytes::Bytes;
use http_body_util::Full;

pub struct Upstream {
    client: HttpsClient,
}

impl Upstream {
    pub fn new(client: HttpsClient) -> Upstream {
        Upstream { client }
    }

    pub async fn send(&self, d: &Delivery) -> Outcome {
        let Some(token) = &d.device.upstream_token else {
            return Outcome::Drop("relay device without a token".into());
        };
        let data = d
            .data
            .as_deref()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok());
        self.post(&d.device.registration_id, token, priority(d), data).await
    }

    /// POST one push to the relay at `endpoint` (its `/api/v1/messages/`
    /// URL) with the whitelist token it issued. Also the path of
    /// ChatSecure-style direct pushes from the XMPP side.
    pub async fn post(
        &self,
        endpoint: &str,
        token: &str,
        priority: Priority,
        data: Option<serde_json::Value>,
    ) -> Outcome {
        let mut body = serde_json::json!({ "token": token, "priority": priority.as_str() });
        if let Some(data) = data {
            body["data"] = data;
        }
        let req = hyper::Request::post(endpoint)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("pushbox/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body.to_string())));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Outcome::Drop(format!("bad upstream URL: {e}")),
        };
        match self.client.send(req).await {
            // The upstream relay says 404 for unknown, revoked or expired tokens.
            Ok(resp) => by_status(resp.status().as_u16(), retry_after(&resp), "upstream relay"),
            Err(e) => Outcome::Retry {
                after: None,
                reason: format!("upstream relay: {e}"),
            },
        }
    }
}

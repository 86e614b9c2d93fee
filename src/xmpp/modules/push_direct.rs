//! ChatSecure-style direct pushes: when a client's `<enable/>` carries the
//! publish-options `endpoint` (a push relay's `/api/v1/messages/` URL) and
//! `token` (a whitelist token from that relay; without it, the node is the
//! token, as ChatSecure sends it), the server POSTs each push
//! straight to the relay over HTTPS instead of publishing over XMPP. When
//! the endpoint is this daemon's own relay, the push is submitted in
//! process. A relay's 404 (token unknown, revoked or expired) removes the
//! registration; 429, 5xx and network errors are retried with backoff. The
//! POST and the meaning of its answer are the push core's (`Relay::forward`,
//! the same path as relay federation).

use super::push::{registration_failed, Event};
use super::push_tigase::is_high;
use crate::{
    push::{providers::Outcome as ProviderOutcome, Priority, SubmitError},
    store,
    xmpp::forms::Form,
    xmpp::Server,
};
use minidom::Element;
use std::{sync::Arc, time::Duration};

/// Attempts per push before the failure is counted against the registration.
const ATTEMPTS: u32 = 5;
/// Longest wait between two attempts, whatever `Retry-After` asks.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where a direct push goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub endpoint: String,
    pub token: String,
}

impl Target {
    /// The target named by a publish-options form, if it has an `endpoint`;
    /// the token is the `token` field, else the registration's node (what
    /// ChatSecure sends).
    pub fn from_form(x: &Element, node: &str) -> Option<Target> {
        let form = Form::read(x);
        Some(Target {
            endpoint: form.value("endpoint")?.to_string(),
            token: form.value("token").unwrap_or(node).to_string(),
        })
    }

    /// The target of a stored registration's publish-options (XML text).
    pub fn from_options(options: Option<&str>, node: &str) -> Option<Target> {
        Target::from_form(&options?.parse::<Element>().ok()?, node)
    }

    /// Refuse an endpoint that is not an absolute https URL.
    pub fn check(&self) -> Result<(), &'static str> {
        match self.endpoint.parse::<hyper::Uri>() {
            Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => Ok(()),
            _ => Err("the push endpoint must be an https URL"),
        }
    }
}

/// What one attempt came to.
enum Outcome {
    Accepted,
    /// The relay does not know the token: the registration is dead.
    Gone,
    /// Worth another try, after at least this long.
    Retry(Option<Duration>, String),
    /// Refused for another reason: counted like an XMPP `cancel` error.
    Refused(String),
}

fn own_relay(server: &Server, endpoint: &str) -> bool {
    let own = format!("{}/api/v1/messages", server.config.public_url());
    server.config.relay.enabled && endpoint.trim_end_matches('/') == own
}

async fn attempt(server: &Arc<Server>, t: &Target, priority: Priority) -> Outcome {
    if own_relay(server, &t.endpoint) {
        return match server.relay.submit(&t.token, None, priority, None).await {
            Ok(_) => Outcome::Accepted,
            Err(SubmitError::UnknownToken) => Outcome::Gone,
            Err(SubmitError::RateLimited { retry_after }) => Outcome::Retry(Some(retry_after), "rate limited".into()),
            Err(e @ SubmitError::TooLarge { .. }) => Outcome::Refused(e.to_string()),
            Err(SubmitError::Store(e)) => Outcome::Retry(None, e.to_string()),
        };
    }
    match server.relay.forward(&t.endpoint, &t.token, priority).await {
        ProviderOutcome::Delivered(_) => Outcome::Accepted,
        ProviderOutcome::Dead(_) => Outcome::Gone,
        ProviderOutcome::Retry { after, reason } => Outcome::Retry(after, reason),
        ProviderOutcome::Drop(reason) => Outcome::Refused(reason),
    }
}

/// Deliver one push to a direct target, retrying transient failures.
pub async fn post(server: &Arc<Server>, account: i64, r: &store::push::Registration, t: Target, event: &Event) {
    let priority = if is_high(event) { Priority::High } else { Priority::Low };
    let (service, node) = (r.service.clone(), r.node.clone());
    let mut last = String::new();
    for n in 0..ATTEMPTS {
        match attempt(server, &t, priority).await {
            Outcome::Accepted => {
                tracing::debug!(endpoint = %t.endpoint, "direct push accepted by the relay");
                let _ = server
                    .store
                    .call(move |c| store::push::succeeded(c, account, &service, &node))
                    .await;
                return;
            }
            Outcome::Gone => {
                let _ = server
                    .store
                    .call(move |c| store::push::disable(c, account, &service, Some(&node)))
                    .await;
                tracing::warn!(endpoint = %t.endpoint, "push registration removed: the relay does not know its token");
                return;
            }
            Outcome::Refused(reason) => {
                tracing::info!(endpoint = %t.endpoint, %reason, "direct push refused");
                return registration_failed(server, account, r, "cancel", "not-acceptable").await;
            }
            Outcome::Retry(after, reason) => {
                let backoff = Duration::from_secs(1 << n)
                    .max(after.unwrap_or_default())
                    .min(MAX_BACKOFF);
                tracing::info!(endpoint = %t.endpoint, %reason, attempt = n + 1, retry_in_s = backoff.as_secs(), "direct push will be retried");
                last = reason;
                if n + 1 < ATTEMPTS {
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }
    tracing::warn!(endpoint = %t.endpoint, reason = %last, "direct push failed after retries");
    registration_failed(server, account, r, "wait", "remote-server-timeout").await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_come_from_publish_options() {
        let x = "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
                 <field var='endpoint'><value>https://push.example.org/api/v1/messages/</value></field>\
                 <field var='token'><value>abc</value></field></x>";
        let t = Target::from_options(Some(x), "node-1").unwrap();
        assert_eq!(t.endpoint, "https://push.example.org/api/v1/messages/");
        assert_eq!(t.token, "abc");
        assert!(t.check().is_ok());
        let plain = Target {
            endpoint: "http://push.example.org/api/v1/messages/".into(),
            token: "abc".into(),
        };
        assert!(plain.check().is_err());
        let secret_only = "<x xmlns='jabber:x:data' type='submit'><field var='secret'><value>s</value></field></x>";
        assert!(Target::from_options(Some(secret_only), "node-1").is_none());
        assert!(Target::from_options(None, "node-1").is_none());
        // ChatSecure: the endpoint only; the node is the token.
        let chatsecure = "<x xmlns='jabber:x:data' type='submit'><field var='endpoint'><value>https://push.example.org/api/v1/messages/</value></field></x>";
        assert_eq!(
            Target::from_options(Some(chatsecure), "node-1").unwrap().token,
            "node-1"
        );
    }
}

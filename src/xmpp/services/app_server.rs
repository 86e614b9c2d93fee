//! `push.<domain>`: the push relay's XMPP face, an XEP-0357 app server.
//!
//! Clients register a device with XEP-0050 ad-hoc commands
//! (`register-push-apns`, `register-push-fcm` as Conversations' p2 defines
//! them, `register-push-webpush`) and get a `node` and a `secret`; the node
//! is a relay whitelist token. Any XMPP server, local or federated, then
//! publishes to that node, and the publish becomes a relay push. A node the
//! relay no longer knows answers `item-not-found`, so the publishing server
//! disables it. `issue-contact-token` gives a whitelist token for one contact
//! (see docs/spec/push-relay-discovery.md).

use crate::{
    push::{self, Kind, NewDevice, Priority, SubmitError},
    store,
    xmpp::forms::Form,
    xmpp::{
        modules::{disco::NS_INFO, disco::NS_ITEMS, push::NS_DATA, push::NS_PUBSUB, BoxFuture},
        router::route,
        stanza::{self, bounce, iq_payload, iq_result, Condition, StanzaError},
        xml::{elem, ElementExt},
        Server,
    },
};
use jid::Jid;
use minidom::Element;
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub use crate::xmpp::ns::COMMANDS as NS_COMMANDS;

const COMMANDS: &[(&str, &str)] = &[
    ("register-push-apns", "Register an iOS device (APNs)"),
    ("register-push-fcm", "Register an Android device (FCM)"),
    ("register-push-webpush", "Register a Web Push subscription"),
    ("unregister-push", "Remove a device registration"),
    ("issue-contact-token", "Issue a whitelist token for one contact"),
];

fn sha256(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

/// The `push.<domain>` service.
pub struct AppServer;

impl super::Service for AppServer {
    fn name(&self) -> &'static str {
        "push"
    }
    fn handle<'a>(&'a self, server: &'a Arc<Server>, stanza: Element) -> BoxFuture<'a, ()> {
        Box::pin(handle(server, stanza))
    }
}

async fn handle(server: &Arc<Server>, st: Element) {
    if st.name() != "iq" {
        return; // messages and presence to the app server mean nothing
    }
    let t = stanza::typ(&st);
    if t == "result" || t == "error" {
        server.iq_tracker.resolve(&st);
        return;
    }
    let reply = match answer(server, &st).await {
        Ok(payload) => iq_result(&st, payload),
        Err(e) => match bounce(&st, e, server.domain()) {
            Some(b) => b,
            None => return,
        },
    };
    route(server, reply).await;
}

async fn answer(server: &Arc<Server>, iq: &Element) -> Result<Option<Element>, StanzaError> {
    let payload = iq_payload(iq)?;
    let set = stanza::typ(iq) == "set";
    let from = stanza::from(iq).ok_or(Condition::BadRequest)?;
    match (payload.name(), payload.ns().as_str(), set) {
        ("query", NS_INFO, false) => Ok(Some(disco_info(payload.attr("node")))),
        ("query", NS_ITEMS, false) => Ok(Some(disco_items(server, payload.attr("node")))),
        ("pubsub", NS_PUBSUB, true) => publish(server, payload).await.map(|_| None),
        ("command", NS_COMMANDS, true) => command(server, &from, payload).await.map(Some),
        _ => Err(Condition::ServiceUnavailable.into()),
    }
}

fn disco_info(node: Option<&str>) -> Element {
    let mut q = elem("query", NS_INFO).with_opt("node", node.map(str::to_string));
    match node {
        None => {
            q = q
                .child(
                    elem("identity", NS_INFO)
                        .with("category", "pubsub")
                        .with("type", "push")
                        .with("name", "pushbox relay"),
                )
                .child(
                    elem("identity", NS_INFO)
                        .with("category", "automation")
                        .with("type", "command-list"),
                );
            for f in [
                NS_INFO,
                NS_ITEMS,
                NS_COMMANDS,
                crate::xmpp::modules::push::NS,
                "urn:pushbox:push-relay:0",
            ] {
                q.append_child(elem("feature", NS_INFO).with("var", f));
            }
        }
        Some(n) => {
            if let Some((_, name)) = COMMANDS.iter().find(|(c, _)| *c == n) {
                q = q
                    .child(
                        elem("identity", NS_INFO)
                            .with("category", "automation")
                            .with("type", "command-node")
                            .with("name", *name),
                    )
                    .child(elem("feature", NS_INFO).with("var", NS_COMMANDS))
                    .child(elem("feature", NS_INFO).with("var", NS_DATA));
            }
        }
    }
    q
}

fn disco_items(server: &Server, node: Option<&str>) -> Element {
    let mut q = elem("query", NS_ITEMS).with_opt("node", node.map(str::to_string));
    if node == Some(NS_COMMANDS) {
        let jid = format!("push.{}", server.domain());
        for (n, name) in COMMANDS {
            q.append_child(
                elem("item", NS_ITEMS)
                    .with("jid", jid.clone())
                    .with("node", *n)
                    .with("name", *name),
            );
        }
    }
    q
}

/// What an XEP-0357 publish asks for, read from its `<pubsub/>` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The node: a relay whitelist token.
    pub node: String,
    /// The `secret` field of the publish-options form (empty when absent).
    pub secret: String,
    /// High when the summary carries a message body or a Tigase priority
    /// mark says `high` (an alert), low otherwise.
    pub priority: Priority,
}

/// Read a publish from a `<pubsub/>` payload: a pure function (no store, no
/// network), so that the fuzz target `app_server_publish` can call it.
pub fn parse_publish(pubsub: &Element) -> Result<Publish, StanzaError> {
    let p = pubsub.get_child("publish", NS_PUBSUB).ok_or(Condition::BadRequest)?;
    let node = p.attr("node").ok_or(Condition::BadRequest)?.to_string();
    let opts = pubsub
        .get_child("publish-options", NS_PUBSUB)
        .and_then(|o| o.get_child("x", NS_DATA));
    let fs = opts.map(Form::read).unwrap_or_default();
    let secret = fs.value("secret").unwrap_or_default().to_string();
    // A body in the summary or a tigase:push:priority:0 `high` means "show
    // an alert"; otherwise wake silently.
    let notification = p
        .get_child("item", NS_PUBSUB)
        .and_then(|i| i.get_child("notification", crate::xmpp::modules::push::NS));
    let summary = notification.and_then(Form::child_of).unwrap_or_default();
    let marked_high = notification
        .and_then(|n| n.get_child("priority", crate::xmpp::modules::push_tigase::NS_PRIORITY))
        .is_some_and(|p| p.text().trim() == "high");
    let priority = if marked_high || summary.value("last-message-body").is_some() {
        Priority::High
    } else {
        Priority::Low
    };
    Ok(Publish { node, secret, priority })
}

/// An XEP-0357 publish: node = whitelist token, secret in publish-options.
async fn publish(server: &Arc<Server>, pubsub: &Element) -> Result<(), StanzaError> {
    let Publish { node, secret, priority } = parse_publish(pubsub)?;
    let h = sha256(&node);
    let row = server
        .store
        .call(move |c| {
            Ok(c.query_row(
                "SELECT secret_hash FROM app_registrations WHERE token_hash=?1",
                params![h],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?)
        })
        .await
        .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
    let Some(secret_hash) = row else {
        return Err(StanzaError::new(Condition::ItemNotFound, "unknown push node"));
    };
    if !bool::from(sha256(&secret).ct_eq(&secret_hash)) {
        return Err(StanzaError::new(Condition::Forbidden, "wrong secret"));
    }
    match server.relay.submit(&node, None, priority, None).await {
        Ok(_) => Ok(()),
        Err(SubmitError::UnknownToken) => Err(StanzaError::new(Condition::ItemNotFound, "this registration is gone")),
        Err(SubmitError::RateLimited { .. }) => Err(StanzaError::new(
            Condition::ResourceConstraint,
            "too many pushes; slow down",
        )),
        Err(SubmitError::TooLarge { .. }) => Err(Condition::NotAcceptable.into()),
        Err(SubmitError::Store(e)) => {
            tracing::error!(error = %e, "push publish failed");
            Err(Condition::InternalServerError.into())
        }
    }
}

fn command_result(node: &str, session: &str, values: &[(&str, String)]) -> Element {
    let mut x = elem("x", NS_DATA).with("type", "result");
    for (k, v) in values {
        x.append_child(
            elem("field", NS_DATA)
                .with("var", *k)
                .child(elem("value", NS_DATA).text_child(v.clone())),
        );
    }
    elem("command", NS_COMMANDS)
        .with("node", node)
        .with("sessionid", session)
        .with("status", "completed")
        .child(x)
}

fn command_form(node: &str, session: &str, wanted: &[&str]) -> Element {
    let mut x = elem("x", NS_DATA).with("type", "form");
    for f in wanted {
        x.append_child(
            elem("field", NS_DATA)
                .with("var", *f)
                .with("type", "text-single")
                .child(elem("required", NS_DATA)),
        );
    }
    elem("command", NS_COMMANDS)
        .with("node", node)
        .with("sessionid", session)
        .with("status", "executing")
        .child(
            elem("actions", NS_COMMANDS)
                .with("execute", "complete")
                .child(elem("complete", NS_COMMANDS)),
        )
        .child(x)
}

async fn command(server: &Arc<Server>, from: &Jid, cmd: &Element) -> Result<Element, StanzaError> {
    let node = cmd.attr("node").ok_or(Condition::BadRequest)?.to_string();
    if !COMMANDS.iter().any(|(c, _)| *c == node) {
        return Err(StanzaError::new(Condition::ItemNotFound, "no such command"));
    }
    if cmd.attr("action") == Some("cancel") {
        return Ok(elem("command", NS_COMMANDS)
            .with("node", node)
            .with_opt("sessionid", cmd.attr("sessionid").map(str::to_string))
            .with("status", "canceled"));
    }
    let session = cmd
        .attr("sessionid")
        .map(str::to_string)
        .unwrap_or_else(crate::xmpp::stream::new_id);
    let fs = Form::child_of(cmd).unwrap_or_default();
    let owner = from.to_bare().to_string();
    let (kind, wanted): (Option<Kind>, &[&str]) = match node.as_str() {
        "register-push-apns" => (Some(Kind::Apns), &["token", "device-id"]),
        "register-push-fcm" => (Some(Kind::Fcm), &["token", "device-id"]),
        "register-push-webpush" => (Some(Kind::WebPush), &["endpoint", "p256dh", "auth", "device-id"]),
        "unregister-push" => (None, &["node"]),
        _ => (None, &["contact"]),
    };
    if fs.fields.is_empty() && fs.form_type.is_none() {
        return Ok(command_form(&node, &session, wanted));
    }
    for w in wanted {
        if fs.value(w).is_none() && *w != "device-id" {
            return Err(StanzaError::new(
                Condition::BadRequest,
                format!("field `{w}` is required"),
            ));
        }
    }
    let internal = |e: store::StoreError| {
        tracing::error!(error = %e, "app server command failed");
        StanzaError::from(Condition::InternalServerError)
    };
    match kind {
        Some(kind) => {
            let device_id = fs.value("device-id").unwrap_or("default").to_string();
            // One registration per device: a re-registration replaces the old one.
            forget_device(server, &owner, kind, &device_id)
                .await
                .map_err(internal)?;
            let dev = NewDevice {
                name: Some(format!("xmpp {device_id}")),
                active: true,
                registration_id: fs
                    .value(if kind == Kind::WebPush { "endpoint" } else { "token" })
                    .unwrap_or_default()
                    .to_string(),
                device_id: Some(device_id.clone()),
                p256dh: fs.value("p256dh").map(str::to_string),
                auth: fs.value("auth").map(str::to_string),
                upstream_token: None,
            };
            let reg = server.relay.register(&owner, kind, dev).await.map_err(internal)?;
            let node_token = reg.token.secret.clone();
            let secret = push::secret::generate();
            let (th, sh, o, d) = (
                sha256(&node_token),
                sha256(&secret),
                owner.clone(),
                reg.device.id.clone(),
            );
            server
                .store
                .call(move |c| {
                    c.execute(
                        "INSERT INTO app_registrations (token_hash, secret_hash, owner, device_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![th, sh, o, d, store::now()],
                    )?;
                    Ok(())
                })
                .await
                .map_err(internal)?;
            tracing::info!(owner = %owner, kind = kind.as_str(), "device registered with the app server");
            Ok(command_result(
                &node,
                &session,
                &[
                    ("jid", format!("push.{}", server.domain())),
                    ("node", node_token),
                    ("secret", secret),
                ],
            ))
        }
        None if node == "unregister-push" => {
            let token = fs.value("node").unwrap_or_default().to_string();
            let (h, o) = (sha256(&token), owner.clone());
            let dev: Option<String> = server
                .store
                .call(move |c| {
                    let d = c
                        .query_row(
                            "SELECT device_id FROM app_registrations WHERE token_hash=?1 AND owner=?2",
                            params![h, o],
                            |r| r.get(0),
                        )
                        .optional()?;
                    c.execute(
                        "DELETE FROM app_registrations WHERE token_hash=?1 AND owner=?2",
                        params![h, o],
                    )?;
                    Ok(d)
                })
                .await
                .map_err(internal)?;
            let Some(dev) = dev else {
                return Err(Condition::ItemNotFound.into());
            };
            if let Some(account) = relay_account(server, &owner).await.map_err(internal)? {
                server.relay.delete_device(account, &dev).await.map_err(internal)?;
            }
            Ok(command_result(&node, &session, &[]))
        }
        None => {
            // issue-contact-token: a whitelist token for one contact.
            let contact = fs
                .value("contact")
                .and_then(|c| Jid::new(c).ok())
                .ok_or(Condition::JidMalformed)?;
            let Some(account) = relay_account(server, &owner).await.map_err(internal)? else {
                return Err(StanzaError::new(Condition::ItemNotFound, "register a device first"));
            };
            let mut devices = vec![];
            for k in Kind::ALL {
                devices.extend(server.relay.devices(account, k).await.map_err(internal)?);
            }
            let Some(dev) = devices.into_iter().find(|d| d.active) else {
                return Err(StanzaError::new(Condition::ItemNotFound, "register a device first"));
            };
            let t = server
                .relay
                .create_token(account, &dev.id, Some(contact.to_bare().to_string()), None, None)
                .await
                .map_err(internal)?;
            let expires = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.token.expires.max(0) as u64),
            );
            Ok(command_result(
                &node,
                &session,
                &[
                    ("endpoint", format!("{}/api/v1/messages/", server.config.public_url())),
                    ("token", t.secret),
                    ("expires", expires.to_string()),
                ],
            ))
        }
    }
}

async fn relay_account(server: &Arc<Server>, owner: &str) -> Result<Option<i64>, store::StoreError> {
    server.relay.account_id(owner).await
}

/// Delete an earlier registration of the same device (the app re-registers
/// at each start; keeping both would push twice).
async fn forget_device(
    server: &Arc<Server>,
    owner: &str,
    kind: Kind,
    device_id: &str,
) -> Result<(), store::StoreError> {
    let Some(account) = relay_account(server, owner).await? else {
        return Ok(());
    };
    for d in server.relay.devices(account, kind).await? {
        if d.device_id.as_deref() == Some(device_id) {
            server.relay.delete_device(account, &d.id).await?;
            let id = d.id.clone();
            server
                .store
                .call(move |c| {
                    c.execute("DELETE FROM app_registrations WHERE device_id=?1", params![id])?;
                    Ok(())
                })
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pubsub(xml: &str) -> Element {
        format!("<pubsub xmlns='{NS_PUBSUB}'>{xml}</pubsub>").parse().unwrap()
    }

    #[test]
    fn publish_is_read_without_a_server() {
        let p = parse_publish(&pubsub(
            "<publish node='tok'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data'>\
             <field var='last-message-body'><value>hi</value></field></x></notification></item></publish>\
             <publish-options><x xmlns='jabber:x:data'><field var='secret'><value>s</value></field></x>\
             </publish-options>",
        ))
        .unwrap();
        assert_eq!(
            p,
            Publish {
                node: "tok".into(),
                secret: "s".into(),
                priority: Priority::High
            }
        );
        let p = parse_publish(&pubsub("<publish node='tok'/>")).unwrap();
        assert_eq!((p.secret.as_str(), p.priority), ("", Priority::Low));
        assert!(parse_publish(&pubsub("<publish/>")).is_err());
        assert!(parse_publish(&pubsub("<items node='tok'/>")).is_err());
    }
}

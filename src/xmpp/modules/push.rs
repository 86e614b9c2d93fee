//! Push Notifications, server side (XEP-0357, `urn:xmpp:push:0`): clients
//! register app servers with `<enable/>`; when a message a person would want
//! arrives while every client of the account is offline, hibernated or
//! inactive, the server publishes a summary to each registered app server.

use super::{push_tigase, BoxFuture, Hook, IqCtx, IqReply, IqRoute, Module, Target};
use crate::{
    store,
    xmpp::forms::Form,
    xmpp::Server,
    xmpp::{
        router::route,
        sessions::SessionHandle,
        stanza::{self, Condition, Stanza, StanzaError},
        xml::{elem, ElementExt, NS_CLIENT},
    },
};
use jid::{BareJid, Jid};
use minidom::Element;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

pub const NS: &str = "urn:xmpp:push:0";
pub const NS_SUMMARY: &str = "urn:xmpp:push:summary";
pub use crate::xmpp::ns::{DATA as NS_DATA, PUBSUB as NS_PUBSUB};
pub const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
/// How long to wait for an app server's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a push is sent.
#[derive(Debug, Clone)]
pub struct Event {
    pub sender: Option<Jid>,
    pub body: Option<String>,
    /// Encrypted message or call invite: show an alert even without content.
    pub important: bool,
    pub subscription: bool,
    /// An end-to-end encrypted message (OMEMO and the like).
    pub encrypted: bool,
    /// A call invite (XEP-0353 `<propose/>`).
    pub call: Option<Call>,
}

impl Event {
    /// A presence subscription request from `from`.
    pub fn subscription(from: Jid) -> Event {
        Event {
            sender: Some(from),
            body: None,
            important: false,
            subscription: true,
            encrypted: false,
            call: None,
        }
    }
}

/// A call invite: its session id and media (`audio`, `video`).
#[derive(Debug, Clone)]
pub struct Call {
    pub sid: String,
    pub media: Vec<String>,
}

/// Per-account counts of events since the account was last online.
#[derive(Default)]
pub struct PushState {
    // std Mutex: counter updates only.
    counts: Mutex<HashMap<BareJid, u32>>,
}

impl PushState {
    fn bump(&self, who: &BareJid) -> u32 {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = m.entry(who.clone()).or_default();
        *c = c.saturating_add(1);
        *c
    }

    /// The account came online: start counting afresh.
    fn reset(&self, who: &BareJid) {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).remove(who);
    }
}

/// Whether a message should wake a sleeping client, and how.
pub fn event_for(msg: &Element) -> Option<Event> {
    if matches!(stanza::typ(msg), "error" | "groupchat" | "headline") {
        return None;
    }
    content_event(msg)
}

/// The same for a room's message (the group chat service decides whom it wakes).
pub fn event_for_group(msg: &Element) -> Option<Event> {
    (stanza::typ(msg) == "groupchat").then(|| content_event(msg)).flatten()
}

fn content_event(msg: &Element) -> Option<Event> {
    let body = msg.get_child("body", NS_CLIENT).map(|b| b.text());
    let encrypted = msg
        .children()
        .any(|c| c.name() == "encrypted" || c.has_ns("eu.siacs.conversations.axolotl") || c.has_ns("urn:xmpp:omemo:2"));
    let call = msg.get_child("propose", "urn:xmpp:jingle-message:0").map(|p| {
        let mut media: Vec<String> = p
            .children()
            .filter(|d| d.name() == "description")
            .filter_map(|d| d.attr("media").map(str::to_string))
            .collect();
        media.dedup();
        Call {
            sid: p.attr("id").unwrap_or_default().to_string(),
            media,
        }
    });
    if body.is_none() && !encrypted && call.is_none() {
        return None;
    }
    Some(Event {
        sender: stanza::from(msg),
        body: if encrypted { None } else { body },
        important: encrypted || call.is_some(),
        subscription: false,
        encrypted,
        call,
    })
}

/// Send `event` to every app server `owner` registered (in the background).
pub fn notify(server: &Arc<Server>, owner: &BareJid, event: Event) {
    let server = server.clone();
    let owner = owner.clone();
    tokio::spawn(async move {
        let Some(username) = owner.node().map(|n| n.to_string()) else {
            return;
        };
        let regs = server
            .store
            .call(move |c| match store::accounts::id_of(c, &username)? {
                Some(id) => Ok(Some((id, store::push::list(c, id)?))),
                None => Ok(None),
            })
            .await;
        let Ok(Some((account, regs))) = regs else { return };
        if regs.is_empty() {
            return;
        }
        let count = Push::state(&server).bump(&owner);
        for r in regs {
            let server = server.clone();
            let owner = owner.clone();
            let event = event.clone();
            tokio::spawn(async move { publish(&server, account, &owner, r, &event, count).await });
        }
    });
}

fn summary(server: &Server, event: &Event, count: u32) -> Element {
    let field = |var: &str, value: String| {
        elem("field", NS_DATA)
            .with("var", var)
            .child(elem("value", NS_DATA).text_child(value))
    };
    let cfg = &server.config.push;
    let mut x = elem("x", NS_DATA)
        .with("type", "submit")
        .child(field("FORM_TYPE", NS_SUMMARY.into()));
    if event.subscription {
        x.append_child(field("pending-subscription-count", "1".into()));
    } else {
        x.append_child(field("message-count", count.to_string()));
    }
    if cfg.include_sender {
        if let Some(s) = &event.sender {
            x.append_child(field("last-message-sender", s.to_bare().to_string()));
        }
    }
    let body = match (&event.body, cfg.include_body) {
        (Some(b), true) => Some(b.chars().take(256).collect::<String>()),
        // A body present is what tells app servers to show an alert.
        (_, _) if event.important || event.body.is_some() => Some("New message".to_string()),
        _ => None,
    };
    if let Some(b) = body {
        x.append_child(field("last-message-body", b));
    }
    x
}

async fn publish(
    server: &Arc<Server>,
    account: i64,
    owner: &BareJid,
    r: store::push::Registration,
    event: &Event,
    count: u32,
) {
    if let Some(direct) = super::push_direct::Target::from_options(r.options.as_deref(), &r.node) {
        return super::push_direct::post(server, account, &r, direct, event).await;
    }
    let mut notification = elem("notification", NS);
    match r
        .encrypt_key
        .as_deref()
        .map(|k| push_tigase::encrypted_element(k, event, count))
    {
        // Sealed: the summary form would tell the app server what the payload hides.
        Some(Ok(sealed)) => notification.append_child(sealed),
        Some(Err(e)) => {
            tracing::error!(error = %e, "push payload encryption failed; nothing published");
            return;
        }
        None => notification.append_child(summary(server, event, count)),
    };
    if push_tigase::is_high(event) {
        notification.append_child(push_tigase::priority_element());
    }
    let (id, rx) = server.iq_tracker.register();
    let mut publish_el = elem("pubsub", NS_PUBSUB).child(
        elem("publish", NS_PUBSUB)
            .with("node", r.node.clone())
            .child(elem("item", NS_PUBSUB).child(notification)),
    );
    if let Some(opts) = r.options.as_deref().and_then(|o| o.parse::<Element>().ok()) {
        publish_el.append_child(elem("publish-options", NS_PUBSUB).child(opts));
    }
    let iq = elem("iq", NS_CLIENT)
        .with("type", "set")
        .with("id", id.clone())
        .with("from", owner.to_string())
        .with("to", r.service.clone())
        .child(publish_el);
    tracing::debug!(service = %r.service, "publishing a push notification");
    route(server, iq).await;
    let answer = server.iq_tracker.wait(&id, rx, ANSWER_TIMEOUT).await;
    let (service, node) = (r.service.clone(), r.node.clone());
    match answer.as_ref().map(|a| (stanza::typ(a).to_string(), a)) {
        Some((t, _)) if t == "result" => {
            let _ = server
                .store
                .call(move |c| store::push::succeeded(c, account, &service, &node))
                .await;
        }
        Some((_, a)) => {
            let err = a.get_child("error", NS_CLIENT);
            let etype = err.and_then(|e| e.attr("type")).unwrap_or("cancel").to_string();
            let cond = err
                .and_then(|e| e.children().find(|c| c.has_ns(crate::xmpp::xml::NS_STANZAS)))
                .map(|c| c.name().to_string())
                .unwrap_or_else(|| "undefined-condition".into());
            registration_failed(server, account, &r, &etype, &cond).await;
        }
        None => registration_failed(server, account, &r, "wait", "timeout").await,
    }
}

/// Count a failed publish; remove the registration after too many (a
/// `wait` error counts too, but only `max_failures` in a row remove it).
pub(super) async fn registration_failed(
    server: &Arc<Server>,
    account: i64,
    r: &store::push::Registration,
    etype: &str,
    cond: &str,
) {
    let max = server.config.push.max_failures;
    let (service, node) = (r.service.clone(), r.node.clone());
    let fatal = cond == "item-not-found" || cond == "forbidden" || cond == "not-authorized";
    let failures = server
        .store
        .call(move |c| store::push::failed(c, account, &service, &node))
        .await
        .unwrap_or(0);
    if fatal || (etype != "wait" && failures >= i64::from(max)) || failures >= i64::from(max) * 4 {
        let (service, node) = (r.service.clone(), r.node.clone());
        let _ = server
            .store
            .call(move |c| store::push::disable(c, account, &service, Some(&node)))
            .await;
        tracing::warn!(service = %r.service, condition = cond, failures, "push registration removed after errors from the app server");
    } else {
        tracing::info!(service = %r.service, condition = cond, error_type = etype, failures, "push publish failed");
    }
}

#[derive(Default)]
pub struct Push {
    state: PushState,
}

impl Push {
    fn state(server: &Server) -> &PushState {
        &server
            .modules
            .get::<Push>()
            .expect("the push module is always registered")
            .state
    }
}

impl Module for Push {
    fn name(&self) -> &'static str {
        "push"
    }
    fn hooks(&self) -> &'static [Hook] {
        &[Hook::Delivered, Hook::Available, Hook::SubscriptionRequest]
    }
    /// A message that went offline, or only to clients that sleep
    /// (hibernated or inactive), wakes the account up.
    fn delivered(&self, server: &Arc<Server>, msg: &Stanza, to: &BareJid, sessions: &[Arc<SessionHandle>]) {
        if sessions.iter().all(|s| s.asleep()) {
            if let Some(ev) = event_for(msg.el()) {
                notify(server, to, ev);
            }
        }
    }
    fn available(&self, _server: &Arc<Server>, session: &Arc<SessionHandle>) {
        self.state.reset(&session.jid.to_bare());
    }
    fn subscription_request(&self, server: &Arc<Server>, owner: &BareJid, from: &BareJid) {
        notify(server, owner, Event::subscription(from.clone().into()));
    }
    fn account_features(&self) -> &'static [&'static str] {
        &[
            NS,
            push_tigase::NS_ENCRYPT,
            push_tigase::NS_ENCRYPT_AES_128_GCM,
            push_tigase::NS_PRIORITY,
            push_tigase::NS_JINGLE,
        ]
    }
    fn iqs(&self) -> &'static [IqRoute] {
        &[
            IqRoute {
                name: "enable",
                ns: NS,
                target: Target::OwnAccount,
            },
            IqRoute {
                name: "disable",
                ns: NS,
                target: Target::OwnAccount,
            },
        ]
    }
    fn handle_iq<'a>(&'a self, ctx: IqCtx<'a>) -> BoxFuture<'a, IqReply> {
        Box::pin(async move {
            if !ctx.set {
                return Err(Condition::BadRequest.into());
            }
            let service = ctx
                .payload
                .attr("jid")
                .and_then(|j| Jid::new(j).ok())
                .ok_or_else(|| StanzaError::new(Condition::BadRequest, "a valid jid attribute is required"))?
                .to_string();
            let node = ctx.payload.attr("node").map(str::to_string);
            let username = ctx.from.node().map(|n| n.to_string()).unwrap_or_default();
            if ctx.payload.name() == "disable" {
                ctx.server
                    .store
                    .call(move |c| match store::accounts::id_of(c, &username)? {
                        Some(id) => store::push::disable(c, id, &service, node.as_deref()),
                        None => Ok(0),
                    })
                    .await
                    .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
                return Ok(None);
            }
            let node = node.ok_or_else(|| StanzaError::new(Condition::BadRequest, "a node attribute is required"))?;
            let options = match ctx.payload.get_child("x", NS_DATA) {
                Some(x) => {
                    if Form::read(x).form_type.as_deref() != Some(PUBLISH_OPTIONS) {
                        return Err(StanzaError::new(
                            Condition::BadRequest,
                            "publish options need FORM_TYPE pubsub#publish-options",
                        ));
                    }
                    if x.to_xml().len() > 4096 {
                        return Err(StanzaError::new(Condition::NotAcceptable, "publish options too large"));
                    }
                    if let Some(t) = super::push_direct::Target::from_form(x, &node) {
                        t.check().map_err(|e| StanzaError::new(Condition::BadRequest, e))?;
                    }
                    Some(x.to_xml())
                }
                None => None,
            };
            let key = push_tigase::parse_encrypt(ctx.payload)?;
            let max = ctx.server.config.push.max_registrations;
            let ok = ctx
                .server
                .store
                .call(move |c| match store::accounts::id_of(c, &username)? {
                    Some(id) => {
                        let ok = store::push::enable(c, id, &service, &node, options.as_deref(), max)?;
                        if ok {
                            store::push::set_encrypt_key(c, id, &service, &node, key.as_deref())?;
                        }
                        Ok(ok)
                    }
                    None => Ok(false),
                })
                .await
                .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
            if ok {
                Ok(None)
            } else {
                Err(StanzaError::new(
                    Condition::ResourceConstraint,
                    format!("at most {max} push registrations per account"),
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_messages_wake_a_client() {
        let m = |s: &str| s.parse::<Element>().unwrap();
        assert!(event_for(&m(
            "<message xmlns='jabber:client' type='chat' from='a@b/c'><body>hi</body></message>"
        ))
        .is_some());
        let e = event_for(&m(
            "<message xmlns='jabber:client' from='a@b/c'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>",
        ))
        .unwrap();
        assert!(e.important && e.body.is_none());
        assert!(event_for(&m("<message xmlns='jabber:client' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>")).is_none());
        assert!(event_for(&m(
            "<message xmlns='jabber:client' type='error'><body>x</body></message>"
        ))
        .is_none());
    }
}

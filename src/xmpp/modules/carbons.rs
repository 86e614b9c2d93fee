//! Message Carbons (XEP-0280, `urn:xmpp:carbons:2`): copies of sent and
//! received messages for the account's other resources that enabled them.

use super::{BoxFuture, Hook, IqCtx, IqReply, IqRoute, Module, Target};
use crate::{
    xmpp::Server,
    xmpp::{
        sessions::{bare_of, SessionHandle},
        stanza::{self, Condition, Stanza},
        xml::{elem, ElementExt, NS_CLIENT},
    },
};
use jid::BareJid;
use minidom::Element;
use std::sync::{atomic::Ordering, Arc};

pub use crate::xmpp::ns::{CARBONS as NS, FORWARD as NS_FORWARD, HINTS as NS_HINTS};

pub struct Carbons;

impl Module for Carbons {
    fn name(&self) -> &'static str {
        "carbons"
    }
    fn hooks(&self) -> &'static [Hook] {
        &[Hook::Delivered, Hook::MessageOut]
    }
    fn delivered(&self, server: &Arc<Server>, msg: &Stanza, to: &BareJid, sessions: &[Arc<SessionHandle>]) {
        // A message stored offline reached no resource: nothing to copy.
        if !sessions.is_empty() {
            copy_received(server, msg.el(), to, sessions);
        }
    }
    fn message_out(&self, server: &Arc<Server>, from: &Arc<SessionHandle>, msg: &mut Stanza) {
        copy_sent(server, from, msg.el());
        strip_private(msg)
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
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
            IqRoute {
                name: "enable",
                ns: NS,
                target: Target::Server,
            },
            IqRoute {
                name: "disable",
                ns: NS,
                target: Target::Server,
            },
        ]
    }
    fn handle_iq<'a>(&'a self, ctx: IqCtx<'a>) -> BoxFuture<'a, IqReply> {
        Box::pin(async move {
            if !ctx.set {
                return Err(Condition::BadRequest.into());
            }
            let on = ctx.payload.name() == "enable";
            let session = ctx.from.try_as_full().ok().and_then(|f| ctx.server.sessions.get(f));
            match session {
                Some(s) if s.jid.to_bare() == ctx.from.to_bare() => {
                    s.carbons.store(on, Ordering::Relaxed);
                    Ok(None)
                }
                _ => Err(Condition::NotAllowed.into()),
            }
        })
    }
}

/// Whether a message is eligible for carbons (XEP-0280 §6).
fn eligible(msg: &Element) -> bool {
    let t = stanza::typ(msg);
    if !matches!(t, "chat" | "normal" | "") {
        return false;
    }
    if msg.has_child("private", NS) || msg.has_child("no-copy", NS_HINTS) {
        return false;
    }
    // Copies of copies never happen.
    if msg.has_child("received", NS) || msg.has_child("sent", NS) {
        return false;
    }
    let has_content = msg.children().any(|c| {
        matches!(c.name(), "body" | "encrypted")
            || c.has_ns("urn:xmpp:receipts")
            || c.has_ns("urn:xmpp:chat-markers:0")
            || c.has_ns("urn:xmpp:jingle-message:0")
    });
    t == "chat" || has_content
}

fn wrap(kind: &str, to: &SessionHandle, bare: &BareJid, msg: &Element) -> Element {
    let mut m = elem("message", NS_CLIENT)
        .with("from", bare.to_string())
        .with("to", to.jid.to_string())
        .with("type", stanza::typ(msg).to_string());
    if m.attr("type") == Some("") {
        m.unset("type");
    }
    m.child(elem(kind, NS).child(elem("forwarded", NS_FORWARD).child(msg.clone())))
}

/// A local session sent `msg`: copy it to the sender's other resources.
fn copy_sent(server: &Server, me: &Arc<SessionHandle>, msg: &Element) {
    let others = |s: &SessionHandle| s.id != me.id && s.carbons.load(Ordering::Relaxed);
    if !server.sessions.any_of(bare_of(me.jid.as_str()), others) || !eligible(msg) {
        return;
    }
    let bare = me.jid.to_bare();
    for s in server.sessions.of(&bare) {
        if others(&s) {
            s.send(wrap("sent", &s, &bare, msg));
        }
    }
}

/// `msg` was delivered to the sessions in `delivered` of account `bare`:
/// copy it to the account's other carbons-enabled resources.
fn copy_received(server: &Server, msg: &Element, bare: &BareJid, delivered: &[Arc<SessionHandle>]) {
    let others = |s: &SessionHandle| !delivered.iter().any(|d| d.id == s.id) && s.carbons.load(Ordering::Relaxed);
    if !server.sessions.any_of(bare.as_str(), others) || !eligible(msg) {
        return;
    }
    for s in server.sessions.of(bare) {
        if others(&s) {
            s.send(wrap("received", &s, bare, msg));
        }
    }
}

/// Remove the `<private/>` marker before a message leaves for its recipient.
fn strip_private(msg: &mut Stanza) {
    if msg.el().has_child("private", NS) {
        msg.el_mut().remove_child("private", NS);
    }
}

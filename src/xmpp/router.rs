//! Where a stanza goes: a local session, the server's own handlers, offline
//! storage, or a remote domain (handed to [`super::s2s`]). Every stanza handled here already
//! carries a `from` that its stream authenticated.

use super::{
    modules::{BoxFuture, IqCtx, Target},
    ns, presence,
    stanza::{self, bounce, iq_payload, iq_result, Condition, Kind, Stanza, Unroutable},
    xml::ElementExt,
};
use crate::{store, xmpp::Server};
use jid::{BareJid, Jid};
use minidom::Element;
use std::sync::Arc;

/// Route a stanza whose `from` is trusted. Boxed: routing recurses through
/// presence handling and error bounces.
pub fn route(server: &Arc<Server>, stanza: Element) -> BoxFuture<'_, ()> {
    Box::pin(async move {
        match Stanza::new(stanza) {
            Ok(s) => route_stanza(server, s).await,
            Err(e) => unroutable(server, e).await,
        }
    })
}

/// What becomes of an element [`Stanza::new`] refused.
pub async fn unroutable(server: &Arc<Server>, e: Unroutable) {
    match e {
        Unroutable::NotAStanza => {}
        Unroutable::NoFrom => tracing::warn!("dropping a stanza without a from address"),
        Unroutable::BadTo(el) => reply(server, bounce(&el, Condition::JidMalformed, server.domain())).await,
    }
}

/// Route a stanza whose addresses are already parsed (a local session's
/// message after its MessageOut hooks).
pub async fn route_stanza(server: &Arc<Server>, stanza: Stanza) {
    crate::metrics::stanza_routed(stanza.kind.name());
    if server.modules.intercept(server, &stanza).await {
        return;
    }
    if let Some(service) = server.services.find(stanza.to.domain().as_str()) {
        return service.handle(server, stanza.into_element()).await;
    }
    if !server.is_local(stanza.to.domain().as_str()) {
        return super::s2s::send(server, stanza.into_element()).await;
    }
    match stanza.kind {
        Kind::Message => deliver_message(server, stanza).await,
        Kind::Presence => {
            let (el, from, to) = stanza.into_parts();
            presence::inbound(server, el, &from, &to).await
        }
        Kind::Iq => {
            let (el, from, to) = stanza.into_parts();
            route_iq(server, el, &from, &to).await
        }
    }
}

/// Send a server-generated reply (an error bounce, an IQ result) to where it is addressed.
pub async fn reply(server: &Arc<Server>, stanza: Option<Element>) {
    if let Some(s) = stanza {
        route(server, s).await
    }
}

/// Deliver to a local full JID if that session exists.
fn to_session(server: &Server, to: &Jid, stanza: Element) -> Result<(), Element> {
    match to.try_as_full() {
        Ok(full) => match server.sessions.get(full) {
            Some(s) => {
                s.send(stanza);
                Ok(())
            }
            None => Err(stanza),
        },
        Err(_) => Err(stanza),
    }
}

async fn deliver_message(server: &Arc<Server>, mut msg: Stanza) {
    if msg.to.node().is_none() {
        // Messages to the server itself: nothing consumes them yet.
        return;
    }
    let full_target = msg.to.try_as_full().ok().and_then(|f| server.sessions.get(f));
    if msg.typ() == "groupchat" {
        // A room's copy for one occupant session (ours or another server's
        // room): no offline storage, carbons or pushes; the room decides
        // whom it wakes, and a gone session is an error back to the room.
        return match full_target {
            Some(s) => {
                s.send(msg.into_element());
            }
            None => reply(server, bounce(msg.el(), Condition::ServiceUnavailable, server.domain())).await,
        };
    }
    let plain = matches!(msg.typ(), "" | "normal" | "chat");
    if full_target.is_none() && msg.to.resource().is_some() && !plain {
        // RFC 6121 §8.5.3.2: headline and error to an offline resource are dropped.
        return;
    }
    let bare = msg.to.to_bare();
    server.modules.message_in(server, &bare, &mut msg);
    let delivered = match full_target {
        Some(s) => vec![s],
        None => {
            let mut all = server.sessions.of(&bare);
            all.retain(|s| s.available() && s.priority() >= 0);
            all
        }
    };
    if delivered.is_empty() && matches!(msg.typ(), "headline" | "error") {
        return;
    }
    // Hooks see where it goes: pushes wake sleeping clients, carbons copy
    // it to the other resources (before the copies below: the last one
    // takes the message itself instead of a clone).
    server.modules.delivered(server, &msg, &bare, &delivered);
    let el = msg.into_element();
    match delivered.split_last() {
        Some((last, others)) => {
            for s in others {
                s.send(el.clone());
            }
            last.send(el);
        }
        None => super::offline::store(server, el, &bare).await,
    }
}

/// A message that reached a session but was never acknowledged (stream
/// management): give it to the account's other awake resources, or keep it
/// offline. Copies and archive results are not redelivered.
pub async fn store_undelivered(server: &Arc<Server>, msg: Element, bare: &BareJid) {
    if msg.has_child("received", ns::CARBONS) || msg.has_child("sent", ns::CARBONS) || msg.has_child("result", ns::MAM)
    {
        return;
    }
    if matches!(stanza::typ(&msg), "error" | "headline" | "groupchat") {
        return;
    }
    let others: Vec<_> = server
        .sessions
        .of(bare)
        .into_iter()
        .filter(|s| s.available() && s.priority() >= 0 && !s.hibernating.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    if others.is_empty() {
        super::offline::store(server, msg, bare).await;
    } else {
        for s in others {
            s.send(msg.clone());
        }
    }
}

async fn route_iq(server: &Arc<Server>, iq: Element, from: &Jid, to: &Jid) {
    let t = stanza::typ(&iq).to_string();
    let request = t == "get" || t == "set";
    if !request && t != "result" && t != "error" {
        return reply(server, bounce(&iq, Condition::BadRequest, server.domain())).await;
    }
    if request && iq.attr("id").is_none() {
        return reply(server, bounce(&iq, Condition::BadRequest, server.domain())).await;
    }
    if to.resource().is_some() {
        match to_session(server, to, iq) {
            Ok(()) => {}
            Err(iq) if request => reply(server, bounce(&iq, Condition::ServiceUnavailable, server.domain())).await,
            Err(_) => {}
        }
        return;
    }
    if !request {
        // Results and errors addressed to the server or a bare JID: answers to
        // IQs the server sent on its own (publishes, caps queries), or nobody's.
        if !server.iq_tracker.resolve(&iq) {
            server.modules.iq_response(server, &iq).await;
        }
        return;
    }
    let payload = match iq_payload(&iq) {
        Ok(p) => p,
        Err(c) => return reply(server, bounce(&iq, c, server.domain())).await,
    };
    let targets: &[Target] = if to.node().is_none() {
        &[Target::Server]
    } else if to.to_bare() == from.to_bare() {
        &[Target::OwnAccount, Target::Account]
    } else {
        &[Target::Account]
    };
    let module = targets.iter().find_map(|t| server.modules.find(payload, *t));
    let Some(module) = module else {
        return reply(server, bounce(&iq, Condition::ServiceUnavailable, server.domain())).await;
    };
    if to.node().is_some() && !account_exists(server, &to.to_bare()).await {
        return reply(server, bounce(&iq, Condition::ServiceUnavailable, server.domain())).await;
    }
    let ctx = IqCtx {
        server,
        from,
        to,
        set: t == "set",
        iq: &iq,
        payload,
    };
    let answer = match module.handle_iq(ctx).await {
        Ok(payload) => Some(iq_result(&iq, payload)),
        Err(e) => bounce(&iq, e, server.domain()),
    };
    let answer = answer.map(|mut a| {
        if iq.attr("to").is_none() {
            a.unset("from");
        }
        a
    });
    if let Some(a) = answer {
        // Answers go back to the requesting session only.
        if let Err(a) = to_session(server, from, a) {
            route(server, a).await;
        }
    }
}

/// Whether a local account exists (online accounts need no database look-up).
pub async fn account_exists(server: &Arc<Server>, bare: &BareJid) -> bool {
    if !server.sessions.of(bare).is_empty() {
        return true;
    }
    let Some(node) = bare.node().map(|n| n.to_string()) else {
        return false;
    };
    matches!(
        server.store.call(move |c| store::accounts::id_of(c, &node)).await,
        Ok(Some(_))
    )
}

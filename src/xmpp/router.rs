//! Where a stanza goes: a local session, the server's own handlers, offline
//! storage, or a remote domain (handed to [`super::s2s`]). Every stanza handled here already
//! carries a `from` that its stream authenticated.

use super::{
    modules::{BoxFuture, IqCtx, Target},
    ns, presence,
    stanza::{self, bounce, iq_payload, iq_result, Condition, Kind},
    xml::ElementExt,
};
use crate::{store, xmpp::Server};
use jid::{BareJid, Jid};
use minidom::Element;
use std::sync::Arc;

/// Route a stanza whose `from` is trusted. Boxed: routing recurses through
/// presence handling and error bounces.
pub fn route(server: &Arc<Server>, stanza: Element) -> BoxFuture<'_, ()> {
    Box::pin(route_inner(server, stanza))
}

async fn route_inner(server: &Arc<Server>, stanza: Element) {
    let Some(kind) = Kind::of(&stanza) else {
        return;
    };
    crate::metrics::stanza_routed(kind.name());
    let Some(from) = stanza::from(&stanza) else {
        tracing::warn!("dropping a stanza without a from address");
        return;
    };
    let to = match stanza::to(&stanza) {
        Ok(Some(t)) => t,
        Ok(None) => Jid::from(from.to_bare()),
        Err(c) => return reply(server, bounce(&stanza, c, server.domain())).await,
    };
    if server.modules.intercept(server, &stanza, &from, &to).await {
        return;
    }
    if let Some(service) = server.services.find(to.domain().as_str()) {
        return service.handle(server, stanza).await;
    }
    if !server.is_local(to.domain().as_str()) {
        return super::s2s::send(server, stanza).await;
    }
    match kind {
        Kind::Message => deliver_message(server, stanza, &to).await,
        Kind::Presence => presence::inbound(server, stanza, &from, &to).await,
        Kind::Iq => route_iq(server, stanza, &from, &to).await,
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

async fn deliver_message(server: &Arc<Server>, msg: Element, to: &Jid) {
    if to.node().is_none() {
        // Messages to the server itself: nothing consumes them yet.
        return;
    }
    let t = stanza::typ(&msg).to_string();
    let bare = to.to_bare();
    let full_target = to.try_as_full().ok().and_then(|f| server.sessions.get(f));
    if t == "groupchat" {
        // A room's copy for one occupant session (ours or another server's
        // room): no offline storage, carbons or pushes; the room decides
        // whom it wakes, and a gone session is an error back to the room.
        return match full_target {
            Some(s) => {
                s.send(msg);
            }
            None => reply(server, bounce(&msg, Condition::ServiceUnavailable, server.domain())).await,
        };
    }
    if full_target.is_none() && to.resource().is_some() && !matches!(t.as_str(), "" | "normal" | "chat") {
        // RFC 6121 §8.5.3.2: headline and error to an offline resource are dropped.
        return;
    }
    let msg = server.modules.message_in(server, &bare, msg);
    let mut delivered = Vec::with_capacity(2);
    if let Some(s) = full_target {
        s.send(msg.clone());
        delivered.push(s);
    } else {
        for s in server.sessions.of(&bare) {
            if s.available() && s.priority() >= 0 {
                s.send(msg.clone());
                delivered.push(s);
            }
        }
    }
    if delivered.is_empty() && (t == "headline" || t == "error") {
        return;
    }
    // Hooks see where it went: pushes wake sleeping clients, carbons copy it.
    server.modules.delivered(server, &msg, &bare, &delivered);
    if delivered.is_empty() {
        super::offline::store(server, msg, &bare).await;
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

//! RFC 6121 presence: broadcast, probes, directed presence and the
//! subscription state machine (§3), with state kept in the roster table.

use super::{
    modules::roster,
    router::{self, route},
    sessions::SessionHandle,
    stanza::{self, typ},
    xml::{elem, ElementExt, NS_CLIENT},
};
use crate::{
    store::{
        self,
        roster::{Item, Sub},
    },
    xmpp::Server,
};
use jid::{BareJid, Jid};
use minidom::Element;
use std::sync::{atomic::Ordering, Arc};

/// Presence sent by a local session (its `from` already stamped).
pub async fn outbound(server: &Arc<Server>, session: &Arc<SessionHandle>, mut p: Element) {
    let t = typ(&p).to_string();
    let to = match stanza::to(&p) {
        Ok(t) => t,
        Err(c) => return router::reply(server, stanza::bounce(&p, c, server.domain())).await,
    };
    match (to, t.as_str()) {
        (None, "" | "unavailable") => broadcast(server, session, p, t.is_empty()).await,
        (None, _) => {}
        (Some(to), "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed") => {
            // Subscription stanzas are always from the bare JID (RFC 6121 §3.1.2).
            p.set("from", session.jid.to_bare().to_string());
            let to = Jid::from(to.to_bare());
            p.set("to", to.to_string());
            outbound_subscription(server, &session.jid.to_bare(), &to.to_bare(), &t, p).await;
        }
        (Some(to), "" | "unavailable") => {
            {
                let mut d = session.presence.directed.lock().unwrap_or_else(|e| e.into_inner());
                if t.is_empty() {
                    d.insert(to.clone());
                } else {
                    d.remove(&to);
                }
            }
            route(server, p).await
        }
        (Some(_), "probe") => route(server, p).await,
        (Some(_), _) => {
            router::reply(
                server,
                stanza::bounce(&p, stanza::Condition::BadRequest, server.domain()),
            )
            .await
        }
    }
}

/// The copy of an available presence a session keeps for probes and new
/// resources ([`crate::xmpp::sessions::PresenceState::last`]): without
/// `from` and `to`, which every use sets anyway. A client's bare
/// `<presence/>` then has no attribute at all, and minidom allocates no
/// attribute map for it (one is two B-tree nodes, about 0.9 KiB, kept with
/// every idle session).
fn kept(p: &Element) -> Element {
    let mut last = Element::bare(p.name(), p.ns());
    for ((ns, name), v) in p.attrs().iter() {
        if !(ns.is_none() && matches!(name.as_str(), "from" | "to")) {
            last.attrs_mut().insert(ns.clone(), name.clone(), v.clone());
        }
    }
    for node in p.nodes() {
        last.append_node(node.clone());
    }
    last
}

/// Broadcast available (or unavailable) presence of `session` to the
/// contacts subscribed to it and to the account's other resources.
pub async fn broadcast(server: &Arc<Server>, session: &Arc<SessionHandle>, p: Element, available: bool) {
    let bare = session.jid.to_bare();
    let initial = available && !session.presence.available.swap(true, Ordering::AcqRel);
    if available {
        let prio = p
            .get_child("priority", NS_CLIENT)
            .and_then(|e| e.text().trim().parse::<i8>().ok())
            .unwrap_or(0);
        session.presence.priority.store(prio, Ordering::Relaxed);
        *session.presence.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(kept(&p));
    } else {
        session.presence.available.store(false, Ordering::Release);
        *session.presence.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
    server
        .modules
        .presence(server, &p, &Jid::from(session.jid.clone()), &bare)
        .await;
    let items = roster_items(server, &bare).await;
    for item in items.iter().filter(|i| i.sub.from()) {
        let mut copy = p.clone();
        copy.set("to", item.contact.clone());
        route(server, copy).await;
    }
    // Other resources of the same account see each other.
    for other in server.sessions.of(&bare) {
        if other.id != session.id && other.available() {
            let mut copy = p.clone();
            copy.set("to", other.jid.to_string());
            other.send(copy);
        }
    }
    if !available {
        let directed: Vec<Jid> = session
            .presence
            .directed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for to in directed {
            if items
                .iter()
                .any(|i| i.sub.from() && i.contact == to.to_bare().to_string())
            {
                continue;
            }
            let mut copy = p.clone();
            copy.set("to", to.to_string());
            route(server, copy).await;
        }
        return;
    }
    if initial {
        server.modules.available(server, session);
        // Probes: local contacts answer at once from their sessions' state.
        for item in items.iter().filter(|i| i.sub.to()) {
            let probe = elem("presence", NS_CLIENT)
                .with("type", "probe")
                .with("from", bare.to_string())
                .with("to", item.contact.clone());
            route(server, probe).await;
        }
        for other in server.sessions.of(&bare) {
            if other.id == session.id {
                continue;
            }
            if let Some(mut last) = other.presence.last.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                last.set("from", other.jid.to_string());
                last.set("to", session.jid.to_string());
                session.send(last);
            }
        }
        // Subscription requests that arrived while offline.
        for item in items.iter().filter(|i| i.pending_in) {
            let req = item
                .pending_in_stanza
                .as_deref()
                .and_then(|s| s.parse::<Element>().ok())
                .unwrap_or_else(|| {
                    elem("presence", NS_CLIENT)
                        .with("type", "subscribe")
                        .with("from", item.contact.clone())
                });
            let mut req = req;
            req.set("to", bare.to_string());
            session.send(req);
        }
        super::offline::deliver(server, session).await;
    }
}

async fn roster_items(server: &Arc<Server>, bare: &BareJid) -> Vec<Item> {
    let Some(username) = bare.node().map(|n| n.to_string()) else {
        return vec![];
    };
    server
        .store
        .call(move |c| match store::accounts::id_of(c, &username)? {
            Some(id) => store::roster::all(c, id),
            None => Ok(vec![]),
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read a roster");
            vec![]
        })
}

/// Presence addressed to a local entity.
pub async fn inbound(server: &Arc<Server>, p: Element, from: &Jid, to: &Jid) {
    let t = typ(&p).to_string();
    if to.node().is_none() {
        return; // presence to the server itself
    }
    server.modules.presence(server, &p, from, &to.to_bare()).await;
    match t.as_str() {
        "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed" => {
            inbound_subscription(server, &from.to_bare(), &to.to_bare(), &t, p).await
        }
        "probe" => answer_probe(server, from, &to.to_bare()).await,
        "" | "unavailable" | "error" => {
            if let Ok(full) = to.try_as_full() {
                if let Some(s) = server.sessions.get(full) {
                    s.send(p);
                }
                return;
            }
            for s in server.sessions.of(&to.to_bare()) {
                if s.available() {
                    s.send(p.clone());
                }
            }
        }
        _ => {}
    }
}

async fn answer_probe(server: &Arc<Server>, from: &Jid, to: &BareJid) {
    let from_bare = from.to_bare();
    let allowed = from_bare == *to || {
        let contact = from_bare.to_string();
        let owner = to.node().map(|n| n.to_string()).unwrap_or_default();
        server
            .store
            .call(move |c| {
                let Some(id) = store::accounts::id_of(c, &owner)? else {
                    return Ok(false);
                };
                Ok(store::roster::get(c, id, &contact)?.is_some_and(|i| i.sub.from()))
            })
            .await
            .unwrap_or(false)
    };
    if !allowed {
        return;
    }
    for s in server.sessions.of(to) {
        let last = s.presence.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(mut last) = last {
            last.set("from", s.jid.to_string());
            last.set("to", from.to_string());
            route(server, last).await;
        }
    }
}

/// Load (or start) the roster row `owner` keeps about `contact`.
async fn load(server: &Arc<Server>, owner: &BareJid, contact: &BareJid) -> Option<(i64, Option<Item>)> {
    let username = owner.node()?.to_string();
    let contact = contact.to_string();
    server
        .store
        .call(move |c| {
            let Some(id) = store::accounts::id_of(c, &username)? else {
                return Ok(None);
            };
            Ok(Some((id, store::roster::get(c, id, &contact)?)))
        })
        .await
        .ok()
        .flatten()
}

async fn save(server: &Arc<Server>, owner: &BareJid, id: i64, item: Item, push: bool) {
    let it = item.clone();
    match server.store.call(move |c| store::roster::put(c, id, &it)).await {
        Ok(ver) if push && item.in_roster => roster::push(server, owner, &item, ver),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "cannot save a roster item"),
    }
}

async fn outbound_subscription(server: &Arc<Server>, user: &BareJid, contact: &BareJid, t: &str, p: Element) {
    let Some((id, item)) = load(server, user, contact).await else {
        return;
    };
    let mut item = item.unwrap_or_else(|| Item::new(&contact.to_string()));
    let was_in_roster = item.in_roster;
    match t {
        "subscribe" => {
            if !item.sub.to() {
                item.ask_out = true;
                item.in_roster = true;
                save(server, user, id, item, true).await;
            }
            route(server, p).await;
        }
        "subscribed" => {
            if item.pending_in {
                item.pending_in = false;
                item.pending_in_stanza = None;
                item.sub = Sub::with(item.sub.to(), true);
                item.in_roster = true;
                save(server, user, id, item, true).await;
                route(server, p).await;
                // The contact now gets our current presence.
                for s in server.sessions.of(user) {
                    let last = s.presence.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if let Some(mut last) = last {
                        last.set("from", s.jid.to_string());
                        last.set("to", contact.to_string());
                        route(server, last).await;
                    }
                }
            } else if !item.sub.from() {
                // Pre-approval (RFC 6121 §3.4).
                item.preapproved = true;
                item.in_roster = was_in_roster || item.in_roster;
                save(server, user, id, item, true).await;
            }
        }
        "unsubscribe" => {
            item.ask_out = false;
            item.sub = Sub::with(false, item.sub.from());
            save(server, user, id, item, true).await;
            route(server, p).await;
        }
        "unsubscribed" => {
            let had_from = item.sub.from();
            item.pending_in = false;
            item.pending_in_stanza = None;
            item.preapproved = false;
            item.sub = Sub::with(item.sub.to(), false);
            save(server, user, id, item, true).await;
            route(server, p).await;
            if had_from {
                send_unavailable(server, user, contact).await;
            }
        }
        _ => {}
    }
}

async fn send_unavailable(server: &Arc<Server>, user: &BareJid, contact: &BareJid) {
    for s in server.sessions.of(user) {
        if s.available() {
            let u = elem("presence", NS_CLIENT)
                .with("type", "unavailable")
                .with("from", s.jid.to_string())
                .with("to", contact.to_string());
            route(server, u).await;
        }
    }
}

async fn inbound_subscription(server: &Arc<Server>, from: &BareJid, owner: &BareJid, t: &str, mut p: Element) {
    if !router::account_exists(server, owner).await {
        if t == "subscribe" {
            // RFC 6121 §3.1.3: unknown user, answer unsubscribed.
            let u = elem("presence", NS_CLIENT)
                .with("type", "unsubscribed")
                .with("from", owner.to_string())
                .with("to", from.to_string());
            route(server, u).await;
        }
        return;
    }
    let Some((id, item)) = load(server, owner, from).await else {
        return;
    };
    let existed = item.is_some();
    let mut item = item.unwrap_or_else(|| {
        let mut i = Item::new(&from.to_string());
        i.in_roster = false;
        i
    });
    p.set("from", from.to_string());
    p.set("to", owner.to_string());
    let deliver = |p: Element| {
        for s in server.sessions.of(owner) {
            if s.available() {
                s.send(p.clone());
            }
        }
    };
    match t {
        "subscribe" => {
            if item.sub.from() {
                // Already approved: answer for the user.
                let ok = elem("presence", NS_CLIENT)
                    .with("type", "subscribed")
                    .with("from", owner.to_string())
                    .with("to", from.to_string());
                route(server, ok).await;
            } else if item.preapproved {
                item.preapproved = false;
                item.sub = Sub::with(item.sub.to(), true);
                item.in_roster = true;
                save(server, owner, id, item, true).await;
                let ok = elem("presence", NS_CLIENT)
                    .with("type", "subscribed")
                    .with("from", owner.to_string())
                    .with("to", from.to_string());
                route(server, ok).await;
                for s in server.sessions.of(owner) {
                    let last = s.presence.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if let Some(mut last) = last {
                        last.set("from", s.jid.to_string());
                        last.set("to", from.to_string());
                        route(server, last).await;
                    }
                }
            } else {
                item.pending_in = true;
                item.pending_in_stanza = Some(p.to_xml());
                save(server, owner, id, item, false).await;
                let awake = server.sessions.of(owner).iter().any(|s| s.available() && !s.asleep());
                if !awake {
                    server.modules.subscription_request(server, owner, from);
                }
                deliver(p);
            }
        }
        "subscribed" if item.ask_out => {
            item.ask_out = false;
            item.sub = Sub::with(true, item.sub.from());
            save(server, owner, id, item, true).await;
            deliver(p);
            // No probe: the approving server MUST send the contact's current
            // presence with the approval (RFC 6121 §3.1.5; a local contact's
            // does, in `outbound_subscription`), so a probe would only repeat it.
        }
        "unsubscribe" if item.sub.from() || item.pending_in => {
            let had_from = item.sub.from();
            item.pending_in = false;
            item.pending_in_stanza = None;
            item.sub = Sub::with(item.sub.to(), false);
            if existed {
                save(server, owner, id, item, true).await;
            }
            deliver(p);
            if had_from {
                send_unavailable(server, owner, from).await;
            }
        }
        "unsubscribed" if item.sub.to() || item.ask_out => {
            item.ask_out = false;
            item.sub = Sub::with(false, item.sub.from());
            save(server, owner, id, item, true).await;
            deliver(p);
        }
        _ => {}
    }
}

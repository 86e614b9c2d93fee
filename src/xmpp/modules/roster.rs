//! RFC 6121 roster management with versioning (XEP-0237).

use super::{BoxFuture, IqCtx, IqReply, IqRoute, Module, Target};
use crate::{
    store::{self, roster::Item},
    xmpp::Server,
    xmpp::{
        router::route,
        stanza::{Condition, StanzaError},
        xml::{elem, ElementExt, NS_CLIENT},
    },
};
use jid::{BareJid, Jid};
use minidom::Element;
use std::sync::{atomic::Ordering, Arc};

pub const NS: &str = "jabber:iq:roster";

pub struct Roster;

impl Module for Roster {
    fn name(&self) -> &'static str {
        "roster"
    }
    fn stream_features(&self, _: &Server) -> Vec<Element> {
        vec![elem("ver", "urn:xmpp:features:rosterver")]
    }
    fn iqs(&self) -> &'static [IqRoute] {
        &[IqRoute {
            name: "query",
            ns: NS,
            target: Target::OwnAccount,
        }]
    }
    fn handle_iq<'a>(&'a self, ctx: IqCtx<'a>) -> BoxFuture<'a, IqReply> {
        Box::pin(async move {
            if ctx.set {
                set(&ctx).await
            } else {
                get(&ctx).await
            }
        })
    }
}

/// The XML form of an item.
pub fn item_element(item: &Item) -> Element {
    let mut e = elem("item", NS)
        .with("jid", item.contact.clone())
        .with("subscription", item.sub.as_str())
        .with_opt("name", item.name.clone());
    if item.ask_out {
        e.set("ask", "subscribe");
    }
    if item.preapproved {
        e.set("approved", "true");
    }
    for g in &item.groups {
        e.append_child(elem("group", NS).text_child(g.clone()));
    }
    e
}

/// Send a roster push about `item` to every resource of `owner`.
pub fn push(server: &Server, owner: &BareJid, item: &Item, ver: i64) {
    push_element(server, owner, item_element(item), ver)
}

fn push_element(server: &Server, owner: &BareJid, item: Element, ver: i64) {
    for s in server.sessions.of(owner) {
        if !s.presence.interested.load(Ordering::Relaxed) {
            continue;
        }
        let id: u64 = rand::random();
        let iq = elem("iq", NS_CLIENT)
            .with("type", "set")
            .with("id", format!("push{id:x}"))
            .with("to", s.jid.to_string())
            .child(elem("query", NS).with("ver", ver.to_string()).child(item.clone()));
        s.send(iq);
    }
}

async fn get(ctx: &IqCtx<'_>) -> IqReply {
    let owner = ctx.from.to_bare();
    if let Ok(full) = ctx.from.try_as_full() {
        if let Some(s) = ctx.server.sessions.get(full) {
            s.presence.interested.store(true, Ordering::Relaxed);
        }
    }
    let username = owner.node().map(|n| n.to_string()).unwrap_or_default();
    let (ver, items) = ctx
        .server
        .store
        .call(move |c| {
            let id =
                store::accounts::id_of(c, &username)?.ok_or_else(|| store::StoreError::Other("no account".into()))?;
            Ok((store::roster::version(c, id)?, store::roster::all(c, id)?))
        })
        .await
        .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
    let ver_s = ver.to_string();
    if ctx.payload.attr("ver") == Some(ver_s.as_str()) {
        // XEP-0237: unchanged since the client's copy; pushes follow if it changes.
        return Ok(None);
    }
    let mut q = elem("query", NS).with("ver", ver_s);
    for i in items.iter().filter(|i| i.in_roster) {
        q.append_child(item_element(i));
    }
    Ok(Some(q))
}

async fn set(ctx: &IqCtx<'_>) -> IqReply {
    let mut items = ctx.payload.children().filter(|c| c.name() == "item" && c.has_ns(NS));
    let (Some(x), None) = (items.next(), items.next()) else {
        return Err(StanzaError::new(
            Condition::BadRequest,
            "a roster set carries exactly one item",
        ));
    };
    let contact = x
        .attr("jid")
        .and_then(|j| Jid::new(j).ok())
        .ok_or_else(|| StanzaError::from(Condition::JidMalformed))?;
    if contact.resource().is_some() {
        return Err(StanzaError::new(Condition::BadRequest, "roster items are bare JIDs"));
    }
    let owner = ctx.from.to_bare();
    if contact.to_bare() == owner {
        return Err(StanzaError::new(
            Condition::NotAllowed,
            "an account cannot be its own contact",
        ));
    }
    let contact = contact.to_bare();
    let name = x.attr("name").filter(|n| !n.is_empty()).map(str::to_string);
    if name.as_ref().is_some_and(|n| n.len() > 1024) {
        return Err(StanzaError::new(Condition::NotAcceptable, "the name is too long"));
    }
    let mut groups: Vec<String> = x.children().filter(|g| g.name() == "group").map(|g| g.text()).collect();
    groups.sort();
    if groups.windows(2).any(|w| w[0] == w[1]) {
        return Err(StanzaError::new(Condition::BadRequest, "duplicate group"));
    }
    if groups.iter().any(|g| g.is_empty() || g.len() > 1024) {
        return Err(StanzaError::new(
            Condition::NotAcceptable,
            "empty or too long group name",
        ));
    }
    let remove = x.attr("subscription") == Some("remove");
    let username = owner.node().map(|n| n.to_string()).unwrap_or_default();
    let c_str = contact.to_string();
    let (id, existing) = ctx
        .server
        .store
        .call(move |c| {
            let id =
                store::accounts::id_of(c, &username)?.ok_or_else(|| store::StoreError::Other("no account".into()))?;
            Ok((id, store::roster::get(c, id, &c_str)?))
        })
        .await
        .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
    let server = ctx.server;
    if remove {
        let Some(old) = existing else {
            return Err(Condition::ItemNotFound.into());
        };
        let c_str = contact.to_string();
        let ver = server
            .store
            .call(move |c| store::roster::remove(c, id, &c_str))
            .await
            .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
        push_element(
            server,
            &owner,
            elem("item", NS)
                .with("jid", contact.to_string())
                .with("subscription", "remove"),
            ver,
        );
        // RFC 6121 §2.5.2: cancel the subscriptions both ways.
        if old.sub.to() || old.ask_out {
            send(server, &owner, &contact, "unsubscribe").await;
        }
        if old.sub.from() || old.pending_in {
            send(server, &owner, &contact, "unsubscribed").await;
            for s in server.sessions.of(&owner) {
                if s.available() {
                    let u = elem("presence", NS_CLIENT)
                        .with("type", "unavailable")
                        .with("from", s.jid.to_string())
                        .with("to", contact.to_string());
                    route(server, u).await;
                }
            }
        }
        return Ok(None);
    }
    let mut item = existing.unwrap_or_else(|| Item::new(&contact.to_string()));
    item.name = name;
    item.groups = groups;
    item.in_roster = true;
    let it = item.clone();
    let ver = server
        .store
        .call(move |c| store::roster::put(c, id, &it))
        .await
        .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
    push(server, &owner, &item, ver);
    Ok(None)
}

async fn send(server: &Arc<Server>, owner: &BareJid, contact: &BareJid, t: &str) {
    let p = elem("presence", NS_CLIENT)
        .with("type", t)
        .with("from", owner.to_string())
        .with("to", contact.to_string());
    route(server, p).await;
}

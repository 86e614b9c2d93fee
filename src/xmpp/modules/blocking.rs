//! Blocking Command (XEP-0191): the blocklist IQs with pushes to the
//! resources that asked for the list, and an intercept hook that sees every
//! stanza the router routes and enforces the lists in both directions.

use super::{account_id, internal, BoxFuture, Hook, IqCtx, IqReply, IqRoute, Module, Target};
use crate::{
    store,
    xmpp::Server,
    xmpp::{
        router::route,
        sessions::bare_of,
        stanza::{self, Condition, Kind, Stanza, StanzaError},
        xml::{elem, ElementExt, NS_CLIENT},
    },
};
use jid::{BareJid, Jid};
use minidom::Element;
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

pub const NS: &str = "urn:xmpp:blocking";
pub const NS_ERRORS: &str = "urn:xmpp:blocking:errors";

/// Blocklists loaded so far (per account, on first use) and the sessions
/// that asked for their list.
#[derive(Default)]
pub struct Blocking {
    // std Mutex: never held across an await.
    /// Keyed by the bare JID's text, so that the router's check finds a
    /// list by a slice of a full JID (see [`list_of`]).
    lists: Mutex<HashMap<String, Arc<HashSet<String>>>>,
    interested: Mutex<HashMap<BareJid, HashSet<u64>>>,
}

#[derive(Default)]
pub struct BlockingModule {
    state: Blocking,
}

/// The blocking module's state.
fn state(server: &Server) -> &Blocking {
    &server
        .modules
        .get::<BlockingModule>()
        .expect("the blocking module is always registered")
        .state
}

impl Module for BlockingModule {
    fn name(&self) -> &'static str {
        "blocking"
    }
    fn hooks(&self) -> &'static [Hook] {
        &[Hook::Intercept]
    }
    fn intercept<'a>(&'a self, server: &'a Arc<Server>, stanza: &'a Stanza) -> BoxFuture<'a, bool> {
        Box::pin(intercept(server, stanza))
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn iqs(&self) -> &'static [IqRoute] {
        &[
            IqRoute {
                name: "blocklist",
                ns: NS,
                target: Target::OwnAccount,
            },
            IqRoute {
                name: "block",
                ns: NS,
                target: Target::OwnAccount,
            },
            IqRoute {
                name: "unblock",
                ns: NS,
                target: Target::OwnAccount,
            },
        ]
    }
    fn handle_iq<'a>(&'a self, ctx: IqCtx<'a>) -> BoxFuture<'a, IqReply> {
        Box::pin(handle(ctx))
    }
}

/// The blocklist of a local account, loaded on first use.
pub async fn list(server: &Arc<Server>, owner: &BareJid) -> Arc<HashSet<String>> {
    let b = &state(server);
    if let Some(l) = b.lists.lock().unwrap_or_else(|e| e.into_inner()).get(owner.as_str()) {
        return l.clone();
    }
    let loaded = match account_id(server, owner).await {
        Ok(Some(id)) => server
            .store
            .call(move |c| store::account_data::blocklist(c, id))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read a blocklist");
                vec![]
            }),
        // No such account: nothing to cache (stanzas to random names must not grow the map).
        _ => return Arc::default(),
    };
    let set = Arc::new(loaded.into_iter().collect::<HashSet<_>>());
    b.lists
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(owner.to_string())
        .or_insert(set)
        .clone()
}

/// The blocklist of the account `jid` (full or bare) belongs to: the
/// routing path's look-up, which builds no `BareJid` once the list is loaded.
async fn list_of(server: &Arc<Server>, jid: &Jid) -> Arc<HashSet<String>> {
    let cached = state(server)
        .lists
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(bare_of(jid.as_str()))
        .cloned();
    match cached {
        Some(l) => l,
        None => list(server, &jid.to_bare()).await,
    }
}

/// Whether `jid` is covered by a blocklist (XEP-0191 §3.4 / XEP-0016 matching:
/// full JID, bare JID, domain/resource or domain).
pub fn matches(list: &HashSet<String>, jid: &Jid) -> bool {
    if list.is_empty() {
        return false;
    }
    let domain = jid.domain().as_str();
    if list.contains(&jid.to_string()) || list.contains(domain) {
        return true;
    }
    if jid.node().is_some() && list.contains(&jid.to_bare().to_string()) {
        return true;
    }
    match jid.resource() {
        Some(r) => list.contains(&format!("{domain}/{r}")),
        None => false,
    }
}

fn is_account(server: &Server, j: &Jid) -> bool {
    j.node().is_some() && server.is_local(j.domain().as_str())
}

/// Enforce blocklists on a stanza about to be routed. Returns true when the
/// stanza was consumed (dropped, or answered with an error).
async fn intercept(server: &Arc<Server>, msg: &Stanza) -> bool {
    let (stanza, from, to) = (msg.el(), &msg.from, &msg.to);
    if bare_of(from.as_str()) == bare_of(to.as_str()) {
        return false;
    }
    // The server itself is never blocked, either way.
    let is_server = |j: &Jid| j.node().is_none() && j.resource().is_none() && server.is_local(j.domain().as_str());
    if is_server(from) || is_server(to) {
        return false;
    }
    let kind = Some(msg.kind);
    let t = msg.typ();
    // Outbound: the user sends to someone they blocked.
    if is_account(server, from) && t != "error" {
        let l = list_of(server, from).await;
        if matches(&l, to) {
            let client_request = from.resource().is_some()
                && (kind == Some(Kind::Message) || (kind == Some(Kind::Iq) && matches!(t, "get" | "set")));
            if client_request {
                let e = StanzaError {
                    condition: Condition::NotAcceptable,
                    text: None,
                    extra: Some(Box::new(elem("blocked", NS_ERRORS))),
                };
                if let Some(reply) = stanza::bounce(stanza, e, server.domain()) {
                    // Straight to the session: routing it would meet the same blocklist.
                    if let Ok(full) = from.try_as_full() {
                        if let Some(s) = server.sessions.get(full) {
                            s.send(reply);
                        }
                    }
                }
            }
            return true;
        }
    }
    // Inbound: a blocked entity sends to the user.
    if is_account(server, to) {
        let l = list_of(server, to).await;
        if matches(&l, from) {
            let answer = match kind {
                Some(Kind::Message) => t != "error" && t != "groupchat",
                Some(Kind::Iq) => matches!(t, "get" | "set"),
                _ => false,
            };
            if answer {
                if let Some(reply) = stanza::bounce(stanza, Condition::ServiceUnavailable, server.domain()) {
                    route(server, reply).await;
                }
            }
            return true;
        }
    }
    false
}

fn items_of(el: &Element) -> Result<Vec<String>, Condition> {
    let mut out = vec![];
    for i in el.children().filter(|c| c.is("item", NS)) {
        let j = i.attr("jid").ok_or(Condition::BadRequest)?;
        let j = Jid::new(j).map_err(|_| Condition::JidMalformed)?;
        out.push(j.to_string());
    }
    Ok(out)
}

async fn handle(ctx: IqCtx<'_>) -> IqReply {
    let server = ctx.server;
    let owner = ctx.from.to_bare();
    let Some(account) = account_id(server, &owner).await? else {
        return Err(Condition::ItemNotFound.into());
    };
    let p = ctx.payload;
    match (ctx.set, p.name()) {
        (false, "blocklist") => {
            if let Ok(full) = ctx.from.try_as_full() {
                if let Some(s) = server.sessions.get(full) {
                    state(server)
                        .interested
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(owner.clone())
                        .or_default()
                        .insert(s.id);
                }
            }
            let l = list(server, &owner).await;
            let mut jids: Vec<_> = l.iter().cloned().collect();
            jids.sort();
            let mut out = elem("blocklist", NS);
            for j in jids {
                out.append_child(elem("item", NS).with("jid", j));
            }
            Ok(Some(out))
        }
        (true, "block") => {
            let jids = items_of(p)?;
            if jids.is_empty() {
                return Err(Condition::BadRequest.into());
            }
            // Contacts that saw our presence get unavailable first (XEP-0191 §3.3).
            for j in &jids {
                let Ok(target) = Jid::new(j) else { continue };
                for s in server.sessions.of(&owner) {
                    if s.available() {
                        let u = elem("presence", NS_CLIENT)
                            .with("type", "unavailable")
                            .with("from", s.jid.to_string())
                            .with("to", target.to_string());
                        route(server, u).await;
                    }
                }
            }
            let js = jids.clone();
            server
                .store
                .call(move |c| store::account_data::block(c, account, &js))
                .await
                .map_err(internal)?;
            update(server, &owner, |set| set.extend(jids.iter().cloned()));
            push(server, &owner, p.clone());
            Ok(None)
        }
        (true, "unblock") => {
            let jids = items_of(p)?;
            let before = list(server, &owner).await;
            let js = jids.clone();
            server
                .store
                .call(move |c| store::account_data::unblock(c, account, &js))
                .await
                .map_err(internal)?;
            update(server, &owner, |set| {
                if jids.is_empty() {
                    set.clear()
                } else {
                    for j in &jids {
                        set.remove(j);
                    }
                }
            });
            push(server, &owner, p.clone());
            // Unblocked contacts get our current presence again.
            let freed: Vec<String> = if jids.is_empty() {
                before.iter().cloned().collect()
            } else {
                jids.into_iter().filter(|j| before.contains(j)).collect()
            };
            resend_presence(server, &owner, account, &freed).await;
            Ok(None)
        }
        _ => Err(Condition::BadRequest.into()),
    }
}

fn update(server: &Server, owner: &BareJid, f: impl FnOnce(&mut HashSet<String>)) {
    let mut lists = state(server).lists.lock().unwrap_or_else(|e| e.into_inner());
    let mut set: HashSet<String> = lists.get(owner.as_str()).map(|s| (**s).clone()).unwrap_or_default();
    f(&mut set);
    lists.insert(owner.to_string(), Arc::new(set));
}

/// Push a block/unblock to the resources that asked for the blocklist.
fn push(server: &Server, owner: &BareJid, payload: Element) {
    let sessions = server.sessions.of(owner);
    let mut interested = state(server).interested.lock().unwrap_or_else(|e| e.into_inner());
    let Some(ids) = interested.get_mut(owner) else {
        return;
    };
    ids.retain(|id| sessions.iter().any(|s| s.id == *id));
    for s in sessions.iter().filter(|s| ids.contains(&s.id)) {
        let iq = elem("iq", NS_CLIENT)
            .with("type", "set")
            .with("id", format!("block{:x}", rand::random::<u64>()))
            .with("to", s.jid.to_string())
            .child(payload.clone());
        s.send(iq);
    }
}

async fn resend_presence(server: &Arc<Server>, owner: &BareJid, account: i64, jids: &[String]) {
    if jids.is_empty() {
        return;
    }
    let roster = server
        .store
        .call(move |c| store::roster::all(c, account))
        .await
        .unwrap_or_default();
    for j in jids {
        let Ok(target) = Jid::new(j) else { continue };
        let subscribed = roster
            .iter()
            .any(|i| i.sub.from() && i.contact == target.to_bare().to_string());
        if !subscribed {
            continue;
        }
        for s in server.sessions.of(owner) {
            let last = s.presence.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(mut p) = last {
                p.set("from", s.jid.to_string());
                p.set("to", target.to_string());
                route(server, p).await;
            }
        }
    }
}

//! `groups.<domain>`: group chat (XEP-0045). Rooms live in SQLite
//! (`store::muc`) and are loaded into memory when someone addresses them;
//! a room with nobody in it is unloaded again. Each loaded room sits
//! behind its own lock, so rooms work in parallel and one room's stanzas
//! are handled in order. See `room.rs` for what a room does and `admin.rs`
//! for the IQs addressed to it.

pub mod admin;
pub mod config;
pub mod room;

use super::Service;
use crate::{
    store,
    xmpp::{
        modules::{
            disco::{NS_INFO, NS_ITEMS},
            BoxFuture,
        },
        router::route,
        stanza::{self, Condition, StanzaError},
        xml::{elem, ElementExt},
        Server,
    },
};
use jid::Jid;
use minidom::Element;
use room::{Ctx, Room};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex,
    },
};

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";

type Shared = Arc<tokio::sync::Mutex<Room>>;

/// The group chat service.
pub struct Muc {
    domain: String,
    // std Mutex: map look-ups only, never held across an await.
    rooms: Mutex<HashMap<String, Shared>>,
    occupants: AtomicI64,
}

impl Muc {
    pub fn new(domain: String) -> Muc {
        Muc {
            domain,
            rooms: Mutex::new(HashMap::new()),
            occupants: AtomicI64::new(0),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Shared>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The loaded room `name`, loading it from the store if it exists there,
    /// or creating it when `st` is a join by someone allowed to create rooms.
    /// The bool says it was created now.
    async fn lookup(
        &self,
        server: &Arc<Server>,
        name: &str,
        st: &Element,
        from: &Jid,
    ) -> Result<(Shared, bool), StanzaError> {
        if let Some(r) = self.map().get(name) {
            return Ok((r.clone(), false));
        }
        let cap = server.config.muc.max_history as usize;
        // The history comes from the archive: what the batching writer still
        // holds of a room unloaded a moment ago must be in it first.
        crate::xmpp::modules::mam::Mam::archive(server).flush().await;
        let n = name.to_string();
        let loaded = server
            .store
            .call(move |c| {
                let Some(row) = store::muc::room(c, &n)? else {
                    return Ok(None);
                };
                let affs = store::muc::affiliations(c, row.id)?;
                let tail = store::archive::room_tail(c, row.id, cap)?;
                Ok(Some((row, affs, tail)))
            })
            .await
            .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
        let mut created = false;
        let room = match loaded {
            Some((row, affs, tail)) => {
                let mut r = Room::from_store(row, affs, &self.domain).ok_or(Condition::InternalServerError)?;
                let cap = (r.config.history_length as usize).min(cap);
                let skip = tail.len().saturating_sub(cap);
                r.set_history(tail.into_iter().skip(skip).collect());
                r
            }
            None => {
                let joining = st.name() == "presence" && stanza::typ(st).is_empty() && from.resource().is_some();
                let has_nick = st.attr("to").is_some_and(|t| t.contains('/'));
                if !joining || !has_nick {
                    return Err(StanzaError::new(Condition::ItemNotFound, "no such room"));
                }
                created = true;
                self.create(server, name, from).await?
            }
        };
        let mut map = self.map();
        let shared = map
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(room)))
            .clone();
        crate::metrics::muc_rooms_active(map.len());
        Ok((shared, created))
    }

    async fn create(&self, server: &Arc<Server>, name: &str, from: &Jid) -> Result<Room, StanzaError> {
        use crate::config::RoomCreation;
        let owner = from.to_bare();
        let local = server.is_local(owner.domain().as_str());
        let node = owner.node().map(|n| n.to_string()).unwrap_or_default();
        let allowed = match server.config.muc.restrict_room_creation {
            RoomCreation::Anyone => true,
            RoomCreation::Local => local,
            RoomCreation::Admins => {
                local
                    && server
                        .store
                        .call(move |c| Ok(store::accounts::get(c, &node)?.is_some_and(|a| a.is_admin)))
                        .await
                        .unwrap_or(false)
            }
        };
        if !allowed {
            return Err(StanzaError::new(
                Condition::NotAllowed,
                "you may not create rooms on this service",
            ));
        }
        let max = i64::from(server.config.muc.max_rooms_per_user);
        let config = room::Room::stored_config(
            &config::RoomConfig {
                max_users: server.config.muc.max_occupants,
                history_length: server.config.muc.max_history.min(20),
                ..Default::default()
            },
            true,
        );
        let secret: [u8; 32] = rand::random();
        let (n, o) = (name.to_string(), owner.to_string());
        let row = server
            .store
            .call(move |c| {
                if store::muc::owned_by(c, &o)? >= max {
                    return Ok(Err(StanzaError::new(
                        Condition::NotAllowed,
                        "you own as many rooms as you may",
                    )));
                }
                let Some(_) = store::muc::create(c, &n, &config, &secret, &o)? else {
                    return Ok(Err(StanzaError::new(
                        Condition::Conflict,
                        "the room was created meanwhile; try again",
                    )));
                };
                let row = store::muc::room(c, &n)?.expect("just created");
                let affs = store::muc::affiliations(c, row.id)?;
                Ok(Ok((row, affs)))
            })
            .await
            .map_err(|_| StanzaError::from(Condition::InternalServerError))??;
        Room::from_store(row.0, row.1, &self.domain).ok_or_else(|| Condition::InternalServerError.into())
    }

    async fn handle_inner(&self, server: &Arc<Server>, st: Element) {
        let Some(from) = stanza::from(&st) else { return };
        let to = match stanza::to(&st) {
            Ok(Some(t)) => t,
            _ => return,
        };
        let Some(node) = to.node() else {
            return self.to_service(server, st, &from).await;
        };
        let name = node.to_string();
        let nick = to.resource().map(|r| r.to_string());
        let mut ctx = Ctx {
            server,
            limits: &server.config.muc,
            out: Vec::new(),
        };
        let (shared, mut guard, created) = loop {
            let (shared, created) = match self.lookup(server, &name, &st, &from).await {
                Ok(r) => r,
                Err(e) => {
                    // Leaving a room that is gone needs no answer.
                    let leaving = st.name() == "presence" && stanza::typ(&st) == "unavailable";
                    if let Some(b) = stanza::bounce(&st, e, server.domain()).filter(|_| !leaving) {
                        route(server, b).await;
                    }
                    return;
                }
            };
            let guard = shared.clone().lock_owned().await;
            if !guard.gone {
                break (shared, guard, created);
            }
        };
        let before = guard.occupant_count() as i64;
        if !created && st.name() == "presence" && stanza::typ(&st).is_empty() && !guard.is_occupant(&from) {
            // A join is when a room destroyed from the command line while
            // loaded finds out.
            let (id, n) = (guard.id, name.clone());
            let exists = server
                .store
                .call(move |c| Ok(store::muc::room(c, &n)?.is_some_and(|r| r.id == id)))
                .await
                .unwrap_or(true);
            if !exists {
                guard.destroy(&mut ctx, None, "The room was destroyed by the operator.");
                bounce(&mut ctx, &st, StanzaError::new(Condition::ItemNotFound, "no such room"));
            }
        }
        match st.name() {
            _ if guard.gone => {}
            "presence" => guard.presence(&mut ctx, st, from, nick.as_deref(), created).await,
            "message" => message(&mut guard, &mut ctx, st, &from, nick.as_deref()).await,
            "iq" => match nick {
                Some(n) => guard.iq_to_occupant(&mut ctx, st, &from, &n),
                None => admin::iq(&mut guard, &mut ctx, st, &from).await,
            },
            _ => {}
        }
        let after = guard.occupant_count() as i64;
        let total = self.occupants.fetch_add(after - before, Ordering::Relaxed) + after - before;
        crate::metrics::muc_occupants(total.max(0) as usize);
        if guard.gone || after == 0 {
            // Unload: nobody is in it. Rooms that are not kept (temporary,
            // or never configured) go from the store too.
            let drop_row = !guard.gone && (!guard.config.persistent || guard.locked);
            guard.gone = true;
            if drop_row {
                let id = guard.id;
                let _ = server.store.call(move |c| store::muc::destroy(c, id)).await;
            }
            let mut map = self.map();
            if map.get(&name).is_some_and(|r| Arc::ptr_eq(r, &shared)) {
                map.remove(&name);
            }
            crate::metrics::muc_rooms_active(map.len());
        }
        drop(guard);
        for el in ctx.out {
            route(server, el).await;
        }
    }

    /// Stanzas to the service's own domain: discovery.
    async fn to_service(&self, server: &Arc<Server>, st: Element, _from: &Jid) {
        if st.name() != "iq" || !matches!(stanza::typ(&st), "get" | "set") {
            return;
        }
        let answer = match stanza::iq_payload(&st) {
            Ok(p) if p.is("query", NS_INFO) && stanza::typ(&st) == "get" => Ok(Some(service_info())),
            Ok(p) if p.is("query", NS_ITEMS) && stanza::typ(&st) == "get" => self.public_rooms(server).await,
            Ok(_) => Err(StanzaError::from(Condition::ServiceUnavailable)),
            Err(c) => Err(c.into()),
        };
        let reply = match answer {
            Ok(p) => Some(stanza::iq_result(&st, p)),
            Err(e) => stanza::bounce(&st, e, server.domain()),
        };
        if let Some(r) = reply {
            route(server, r).await;
        }
    }

    async fn public_rooms(&self, server: &Arc<Server>) -> Result<Option<Element>, StanzaError> {
        let rows = server
            .store
            .call(|c| store::muc::rooms(c))
            .await
            .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
        let mut q = elem("query", NS_ITEMS);
        for row in rows {
            let c: room::Stored = serde_json::from_str(&row.config).unwrap_or_default();
            if c.config.public && !c.locked && c.config.password.is_empty() {
                let name = if c.config.name.is_empty() {
                    row.name.clone()
                } else {
                    c.config.name.clone()
                };
                q.append_child(
                    elem("item", NS_ITEMS)
                        .with("jid", format!("{}@{}", row.name, self.domain))
                        .with("name", name),
                );
            }
        }
        Ok(Some(q))
    }
}

fn service_info() -> Element {
    let mut q = elem("query", NS_INFO).child(
        elem("identity", NS_INFO)
            .with("category", "conference")
            .with("type", "text")
            .with("name", "Group chats"),
    );
    for f in [
        NS_MUC,
        NS_INFO,
        NS_ITEMS,
        "urn:xmpp:mam:2",
        "urn:xmpp:occupant-id:0",
        "http://jabber.org/protocol/muc#self-ping-optimization",
        "vcard-temp",
    ] {
        q.append_child(elem("feature", NS_INFO).with("var", f));
    }
    q
}

async fn message(room: &mut Room, ctx: &mut Ctx<'_>, st: Element, from: &Jid, nick: Option<&str>) {
    let t = stanza::typ(&st).to_string();
    if t == "error" {
        return room.error_from(ctx, from);
    }
    match nick {
        Some(_) if t == "groupchat" => bounce(ctx, &st, Condition::BadRequest),
        Some(n) => room.private(ctx, st, from, n),
        None if t == "groupchat" => room.groupchat(ctx, st, from).await,
        None if st.get_child("x", NS_USER).is_some() => room.invite(ctx, &st, from).await,
        None => bounce(
            ctx,
            &st,
            StanzaError::new(Condition::BadRequest, "send type='groupchat' to the room"),
        ),
    }
}

fn bounce(ctx: &mut Ctx<'_>, st: &Element, e: impl Into<StanzaError>) {
    if let Some(b) = stanza::bounce(st, e, ctx.server.domain()) {
        ctx.out.push(b);
    }
}

impl Service for Muc {
    fn name(&self) -> &'static str {
        "muc"
    }
    fn handle<'a>(&'a self, server: &'a Arc<Server>, stanza: Element) -> BoxFuture<'a, ()> {
        Box::pin(self.handle_inner(server, stanza))
    }
}

//! One room: its stored state (configuration, subject, affiliations,
//! vCard), its occupants in memory, and the recent history. Everything a
//! room does to a stanza happens here, under the room's lock; copies to
//! local sessions are handed over at once, stanzas for other servers are
//! collected in [`Ctx::out`] and routed after the lock is released.

use super::{
    config::{AllowPm, RoomConfig, Whois},
    NS_MUC, NS_USER,
};
use crate::{
    config::Muc as Limits,
    store,
    xmpp::{
        modules::{
            mam::{new_stanza_id, now_micros},
            push,
        },
        stanza::{self, Condition, StanzaError},
        xml::{elem, ElementExt, NS_CLIENT},
        Server,
    },
};
use hmac::{Hmac, KeyInit, Mac};
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use sha2::Sha256;
use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant, UNIX_EPOCH},
};
use subtle::ConstantTimeEq;

pub const NS_SID: &str = "urn:xmpp:sid:0";
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
pub const NS_DELAY: &str = "urn:xmpp:delay";
/// Longest subject, in characters.
pub const MAX_SUBJECT: usize = 1024;
/// Longest nickname, in characters.
const MAX_NICK: usize = 64;
/// Presence updates an occupant may send per [`PRESENCE_WINDOW`].
const PRESENCE_BURST: u32 = 10;
const PRESENCE_WINDOW: Duration = Duration::from_secs(10);
/// IQs forwarded between occupants and not yet answered, per room.
const MAX_FORWARDED: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }
    pub fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

/// Someone in the room, with every session of theirs that joined under
/// the nick.
pub struct Occupant {
    pub nick: String,
    pub real: BareJid,
    pub sessions: Vec<Jid>,
    /// The last presence they sent (its show, status, caps…).
    pub presence: Element,
    pub role: Role,
    budget: (Instant, u32),
}

/// A message of the recent history.
struct Past {
    stanza: Element,
    stanza_id: String,
    ts: i64,
}

/// What handling one stanza produced beyond local deliveries.
pub struct Ctx<'a> {
    pub server: &'a Arc<Server>,
    pub limits: &'a Limits,
    /// Stanzas for other servers (or anything not a local session), routed
    /// once the room's lock is released.
    pub out: Vec<Element>,
}

impl Ctx<'_> {
    /// Hand `el` to its addressee: a local session at once, anything else
    /// later. `false`: a local full JID without a session (a ghost).
    pub fn send(&mut self, el: Element) -> bool {
        let Some(to) = el.attr("to").and_then(|t| FullJid::new(t).ok()) else {
            self.out.push(el);
            return true;
        };
        if self.server.is_local(to.domain().as_str()) {
            return match self.server.sessions.get(&to) {
                Some(s) => {
                    s.send(el);
                    true
                }
                None => false,
            };
        }
        self.out.push(el);
        true
    }

    pub fn error(&mut self, st: &Element, e: impl Into<StanzaError>) {
        if let Some(b) = stanza::bounce(st, e, self.server.domain()) {
            self.send(b);
        }
    }
}

pub struct Room {
    pub id: i64,
    pub jid: BareJid,
    pub config: RoomConfig,
    /// Created and not yet configured: only its owner may enter.
    pub locked: bool,
    pub subject: String,
    pub subject_by: String,
    pub vcard: Option<String>,
    secret: Vec<u8>,
    pub affiliations: HashMap<BareJid, Affiliation>,
    pub occupants: Vec<Occupant>,
    history: VecDeque<Past>,
    /// IQs forwarded to an occupant: our id → (asker, their id).
    forwarded: HashMap<String, (Jid, String)>,
    /// Destroyed, or unloaded from memory: whoever waited for the lock must
    /// look the room up again.
    pub gone: bool,
}

/// Stored in the configuration JSON beside the form's fields.
#[derive(serde::Serialize, serde::Deserialize, Default)]
pub struct Stored {
    #[serde(flatten)]
    pub config: RoomConfig,
    #[serde(default)]
    pub locked: bool,
}

impl Room {
    pub fn from_store(
        row: store::muc::Room,
        affiliations: Vec<(String, String, String)>,
        domain: &str,
    ) -> Option<Room> {
        let stored: Stored = serde_json::from_str(&row.config).unwrap_or_default();
        let jid = BareJid::new(&format!("{}@{domain}", row.name)).ok()?;
        Some(Room {
            id: row.id,
            jid,
            config: stored.config,
            locked: stored.locked,
            subject: row.subject,
            subject_by: row.subject_by,
            vcard: row.vcard,
            secret: row.secret,
            affiliations: affiliations
                .into_iter()
                .filter_map(|(j, a, _)| Some((BareJid::new(&j).ok()?, Affiliation::parse(&a)?)))
                .collect(),
            occupants: Vec::new(),
            history: VecDeque::new(),
            forwarded: HashMap::new(),
            gone: false,
        })
    }

    /// The configuration as stored.
    pub fn stored_config(config: &RoomConfig, locked: bool) -> String {
        serde_json::to_string(&Stored {
            config: config.clone(),
            locked,
        })
        .expect("a room config serialises")
    }

    /// Fill the history from the archive's tail (on load).
    pub fn set_history(&mut self, rows: Vec<store::archive::Row>) {
        for r in rows {
            if let Ok(stanza) = r.stanza.parse::<Element>() {
                self.history.push_back(Past {
                    stanza,
                    stanza_id: r.stanza_id,
                    ts: r.ts,
                });
            }
        }
    }

    pub fn affiliation(&self, who: &BareJid) -> Affiliation {
        self.affiliations.get(who).copied().unwrap_or(Affiliation::None)
    }

    fn occupant_of(&self, session: &Jid) -> Option<usize> {
        self.occupants.iter().position(|o| o.sessions.contains(session))
    }

    fn occupant_by_nick(&self, nick: &str) -> Option<usize> {
        self.occupants.iter().position(|o| o.nick == nick)
    }

    fn occupant_jid(&self, nick: &str) -> String {
        format!("{}/{}", self.jid, nick)
    }

    /// XEP-0421: the same for one real JID in this room, different across
    /// rooms, and telling nothing about the JID.
    pub fn occupant_id(&self, real: &BareJid) -> String {
        use base64::Engine;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key");
        mac.update(real.as_str().as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    fn non_anonymous(&self) -> bool {
        self.config.whois == Whois::Anyone
    }

    pub fn max_users(&self, limits: &Limits) -> usize {
        self.config.max_users.min(limits.max_occupants) as usize
    }

    fn history_cap(&self, limits: &Limits) -> usize {
        self.config.history_length.min(limits.max_history) as usize
    }

    /// The presence of occupant `i` as `viewer` (an occupant index) sees it.
    fn presence_of(&self, i: usize, viewer_is_moderator: bool, codes: &[u16]) -> Element {
        let o = &self.occupants[i];
        let mut p = elem("presence", NS_CLIENT).with("from", self.occupant_jid(&o.nick));
        if o.role == Role::None {
            p.set("type", "unavailable");
        }
        for c in o.presence.children() {
            if c.is("x", NS_MUC) || c.is("x", NS_USER) || c.is("occupant-id", NS_OCCUPANT_ID) {
                continue;
            }
            p.append_child(c.clone());
        }
        let mut item = elem("item", NS_USER)
            .with("affiliation", self.affiliation(&o.real).as_str())
            .with("role", o.role.as_str());
        if self.non_anonymous() || viewer_is_moderator {
            item.set(
                "jid",
                o.sessions
                    .first()
                    .map(|j| j.to_string())
                    .unwrap_or_else(|| o.real.to_string()),
            );
        }
        let mut x = elem("x", NS_USER).child(item);
        for c in codes {
            x.append_child(elem("status", NS_USER).with("code", c.to_string()));
        }
        p.append_child(x);
        p.append_child(elem("occupant-id", NS_OCCUPANT_ID).with("id", self.occupant_id(&o.real)));
        p
    }

    /// Send occupant `i`'s presence to everyone (with `self_codes` added to
    /// its own copies, `codes` to everyone's), then drop ghosts.
    fn broadcast_presence(&mut self, ctx: &mut Ctx<'_>, i: usize, codes: &[u16], self_codes: &[u16]) {
        self.broadcast_presence_with(ctx, i, codes, self_codes, |_| {});
    }

    fn broadcast_presence_with(
        &mut self,
        ctx: &mut Ctx<'_>,
        i: usize,
        codes: &[u16],
        self_codes: &[u16],
        edit: impl Fn(&mut Element),
    ) {
        let mut ghosts = Vec::new();
        for v in 0..self.occupants.len() {
            let own = v == i;
            let all: Vec<u16> = if own {
                let mut c = self_codes.to_vec();
                c.extend_from_slice(codes);
                c
            } else {
                codes.to_vec()
            };
            let mut p = self.presence_of(i, self.occupants[v].role == Role::Moderator, &all);
            edit(&mut p);
            for s in &self.occupants[v].sessions {
                let mut copy = p.clone();
                copy.set("to", s.to_string());
                if !ctx.send(copy) {
                    ghosts.push(s.clone());
                }
            }
        }
        self.drop_ghosts(ctx, ghosts);
    }

    /// Sessions that no longer exist leave the room (status 333).
    fn drop_ghosts(&mut self, ctx: &mut Ctx<'_>, ghosts: Vec<Jid>) {
        for g in ghosts {
            if let Some(i) = self.occupant_of(&g) {
                self.occupants[i].sessions.retain(|s| *s != g);
                if self.occupants[i].sessions.is_empty() {
                    self.remove_occupant(ctx, i, &[333], None);
                }
            }
        }
    }

    /// Take occupant `i` out, telling everyone (with `codes` and, for kicks
    /// and bans, who did it and why).
    fn remove_occupant(&mut self, ctx: &mut Ctx<'_>, i: usize, codes: &[u16], why: Option<(&str, &str)>) {
        self.occupants[i].role = Role::None;
        let edit = |p: &mut Element| {
            if let Some((actor, reason)) = why {
                if let Some(x) = p.get_child_mut("x", NS_USER) {
                    if let Some(item) = x.get_child_mut("item", NS_USER) {
                        if !actor.is_empty() {
                            item.append_child(elem("actor", NS_USER).with("nick", actor));
                        }
                        if !reason.is_empty() {
                            item.append_child(elem("reason", NS_USER).text_child(reason));
                        }
                    }
                }
            }
        };
        // The removed occupant hears it first, then the others.
        let sessions = self.occupants[i].sessions.clone();
        let mut own = self.presence_of(i, true, &[&[110][..], codes].concat());
        edit(&mut own);
        for s in &sessions {
            let mut copy = own.clone();
            copy.set("to", s.to_string());
            ctx.send(copy);
        }
        let gone = self.occupants.remove(i);
        self.occupants.push(gone);
        let last = self.occupants.len() - 1;
        let mut ghosts = Vec::new();
        for v in 0..last {
            let mut p = self.presence_of(last, self.occupants[v].role == Role::Moderator, codes);
            edit(&mut p);
            for s in &self.occupants[v].sessions {
                let mut copy = p.clone();
                copy.set("to", s.to_string());
                if !ctx.send(copy) {
                    ghosts.push(s.clone());
                }
            }
        }
        self.occupants.pop();
        self.drop_ghosts(ctx, ghosts);
    }

    // ------------------------------------------------------------ presence

    /// A presence from `from` to `room/nick`.
    pub async fn presence(&mut self, ctx: &mut Ctx<'_>, p: Element, from: Jid, nick: Option<&str>, created: bool) {
        let t = stanza::typ(&p).to_string();
        let me = self.occupant_of(&from);
        match (t.as_str(), me) {
            ("unavailable", Some(i)) => {
                let o = &mut self.occupants[i];
                o.sessions.retain(|s| *s != from);
                if o.sessions.is_empty() {
                    // Their last words (a status) go with the unavailable presence.
                    o.presence = p;
                    // To the leaving session too, with 110.
                    let mut own = self.presence_of(i, true, &[110]);
                    own.set("type", "unavailable");
                    own.set("to", from.to_string());
                    if let Some(item) = own
                        .get_child_mut("x", NS_USER)
                        .and_then(|x| x.get_child_mut("item", NS_USER))
                    {
                        item.set("role", "none");
                    }
                    ctx.send(own);
                    self.occupants[i].role = Role::None;
                    let gone = self.occupants.remove(i);
                    self.occupants.push(gone);
                    let last = self.occupants.len() - 1;
                    let mut ghosts = Vec::new();
                    for v in 0..last {
                        let mut pr = self.presence_of(last, self.occupants[v].role == Role::Moderator, &[]);
                        pr.set("type", "unavailable");
                        for s in &self.occupants[v].sessions {
                            let mut copy = pr.clone();
                            copy.set("to", s.to_string());
                            if !ctx.send(copy) {
                                ghosts.push(s.clone());
                            }
                        }
                    }
                    self.occupants.pop();
                    self.drop_ghosts(ctx, ghosts);
                } else {
                    let mut own = self.presence_of(i, true, &[110]);
                    own.set("type", "unavailable");
                    own.set("to", from.to_string());
                    ctx.send(own);
                }
            }
            ("unavailable", None) => {}
            ("error", Some(i)) => {
                self.occupants[i].sessions.retain(|s| *s != from);
                if self.occupants[i].sessions.is_empty() {
                    self.remove_occupant(ctx, i, &[333], None);
                }
            }
            ("", Some(i)) => {
                let Some(nick) = nick else {
                    return ctx.error(&p, StanzaError::new(Condition::JidMalformed, "a nickname is needed"));
                };
                if !self.spend_presence(i) {
                    return ctx.error(
                        &p,
                        StanzaError::new(Condition::PolicyViolation, "too many presence updates"),
                    );
                }
                if self.occupants[i].nick != nick {
                    self.change_nick(ctx, &p, i, nick, &from);
                } else {
                    self.occupants[i].presence = p;
                    self.broadcast_presence(ctx, i, &[], &[110]);
                }
            }
            ("", None) => self.join(ctx, p, from, nick, created).await,
            _ => {}
        }
    }

    fn spend_presence(&mut self, i: usize) -> bool {
        let b = &mut self.occupants[i].budget;
        if b.0.elapsed() > PRESENCE_WINDOW {
            *b = (Instant::now(), 0);
        }
        b.1 += 1;
        b.1 <= PRESENCE_BURST
    }

    fn change_nick(&mut self, ctx: &mut Ctx<'_>, p: &Element, i: usize, nick: &str, from: &Jid) {
        let nick = match valid_nick(nick) {
            Ok(n) => n,
            Err(e) => return ctx.error(p, e),
        };
        if let Some(j) = self.occupant_by_nick(&nick) {
            if j != i {
                return ctx.error(p, StanzaError::new(Condition::Conflict, "that nickname is taken"));
            }
        }
        if self.occupants[i].sessions.len() > 1 {
            // One device cannot rename the others.
            return ctx.error(
                p,
                StanzaError::new(Condition::NotAcceptable, "leave with your other devices first"),
            );
        }
        let new = nick.clone();
        let edit = move |pr: &mut Element| {
            pr.set("type", "unavailable");
            if let Some(item) = pr
                .get_child_mut("x", NS_USER)
                .and_then(|x| x.get_child_mut("item", NS_USER))
            {
                item.set("nick", new.clone());
            }
        };
        self.broadcast_presence_with(ctx, i, &[303], &[110], edit);
        if let Some(i) = self.occupant_of(from) {
            self.occupants[i].nick = nick;
            self.occupants[i].presence = p.clone();
            self.broadcast_presence(ctx, i, &[], &[110]);
        }
    }

    async fn join(&mut self, ctx: &mut Ctx<'_>, p: Element, from: Jid, nick: Option<&str>, created: bool) {
        let Some(nick) = nick else {
            return ctx.error(&p, StanzaError::new(Condition::JidMalformed, "a nickname is needed"));
        };
        let nick = match valid_nick(nick) {
            Ok(n) => n,
            Err(e) => return ctx.error(&p, e),
        };
        let real = from.to_bare();
        let aff = self.affiliation(&real);
        let x = p.get_child("x", NS_MUC);
        // The same person joining from another device under the same nick.
        if let Some(i) = self.occupant_by_nick(&nick) {
            if self.occupants[i].real != real {
                return ctx.error(&p, StanzaError::new(Condition::Conflict, "that nickname is taken"));
            }
        }
        if self.locked && aff != Affiliation::Owner {
            return ctx.error(
                &p,
                StanzaError::new(Condition::ItemNotFound, "the room is not configured yet"),
            );
        }
        if aff == Affiliation::Outcast {
            return ctx.error(
                &p,
                StanzaError::new(Condition::Forbidden, "you are banned from this room"),
            );
        }
        if self.config.members_only && aff < Affiliation::Member {
            return ctx.error(
                &p,
                StanzaError::new(Condition::RegistrationRequired, "this room is for members only"),
            );
        }
        if !self.config.password.is_empty() && aff < Affiliation::Admin {
            let given = x
                .and_then(|x| x.get_child("password", NS_MUC))
                .map(|p| p.text())
                .unwrap_or_default();
            if !bool::from(given.as_bytes().ct_eq(self.config.password.as_bytes())) {
                return ctx.error(&p, StanzaError::new(Condition::NotAuthorized, "a password is needed"));
            }
        }
        let existing = self.occupant_by_nick(&nick);
        if existing.is_none() && self.occupants.len() >= self.max_users(ctx.limits) && aff < Affiliation::Admin {
            return ctx.error(&p, StanzaError::new(Condition::ServiceUnavailable, "the room is full"));
        }
        // Entering: first everyone else's presence, then one's own.
        let i = match existing {
            Some(i) => {
                self.occupants[i].sessions.push(from.clone());
                i
            }
            None => {
                let role = match aff {
                    Affiliation::Owner | Affiliation::Admin => Role::Moderator,
                    Affiliation::Member => Role::Participant,
                    _ if self.config.moderated => Role::Visitor,
                    _ => Role::Participant,
                };
                self.occupants.push(Occupant {
                    nick: nick.clone(),
                    real: real.clone(),
                    sessions: vec![from.clone()],
                    presence: p.clone(),
                    role,
                    budget: (Instant::now(), 0),
                });
                self.occupants.len() - 1
            }
        };
        let is_mod = self.occupants[i].role == Role::Moderator;
        for v in 0..self.occupants.len() {
            if v == i {
                continue;
            }
            let mut pr = self.presence_of(v, is_mod, &[]);
            pr.set("to", from.to_string());
            ctx.send(pr);
        }
        let mut own_codes = vec![110];
        if self.non_anonymous() {
            own_codes.push(100);
        }
        if self.config.archiving {
            own_codes.push(170);
        }
        if created {
            own_codes.push(201);
        }
        if nick_given(&p) != Some(nick.as_str()) {
            own_codes.push(210);
        }
        if existing.is_some() {
            // Only the new session hears about itself.
            let mut own = self.presence_of(i, true, &own_codes);
            own.set("to", from.to_string());
            ctx.send(own);
        } else {
            self.broadcast_presence(ctx, i, &[], &own_codes);
        }
        self.send_history(ctx, &from, x);
        let mut subject = elem("message", NS_CLIENT)
            .with("type", "groupchat")
            .with("to", from.to_string())
            .with("id", new_stanza_id())
            .child(elem("subject", NS_CLIENT).text_child(self.subject.clone()));
        subject.set(
            "from",
            if self.subject_by.is_empty() {
                self.jid.to_string()
            } else {
                self.occupant_jid(&self.subject_by)
            },
        );
        ctx.send(subject);
    }

    fn send_history(&self, ctx: &mut Ctx<'_>, to: &Jid, x: Option<&Element>) {
        let h = x.and_then(|x| x.get_child("history", NS_MUC));
        let num = |a: &str| h.and_then(|h| h.attr(a)).and_then(|v| v.parse::<u64>().ok());
        let max_stanzas = num("maxstanzas")
            .map(|n| n as usize)
            .unwrap_or(usize::MAX)
            .min(self.history_cap(ctx.limits));
        let max_chars = num("maxchars").map(|n| n as usize);
        let since = h
            .and_then(|h| h.attr("since"))
            .and_then(|s| humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_micros() as i64);
        let seconds = num("seconds").map(|s| now_micros() - (s as i64).saturating_mul(1_000_000));
        let oldest = since.into_iter().chain(seconds).max().unwrap_or(i64::MIN);
        let mut picked: Vec<Element> = Vec::new();
        let mut chars = 0usize;
        for past in self.history.iter().rev() {
            if picked.len() >= max_stanzas || past.ts < oldest {
                break;
            }
            let stamp = humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(past.ts.max(0) as u64));
            let mut m = past.stanza.clone();
            m.set("to", to.to_string());
            m.append_child(
                elem("delay", NS_DELAY)
                    .with("from", self.jid.to_string())
                    .with("stamp", stamp.to_string()),
            );
            if let Some(max) = max_chars {
                chars += m.to_xml().len();
                if chars > max {
                    break;
                }
            }
            picked.push(m);
        }
        for m in picked.into_iter().rev() {
            ctx.send(m);
        }
    }

    // ------------------------------------------------------------ messages

    /// A groupchat message from `from` to the room.
    pub async fn groupchat(&mut self, ctx: &mut Ctx<'_>, mut msg: Element, from: &Jid) {
        let Some(i) = self.occupant_of(from) else {
            return ctx.error(&msg, StanzaError::new(Condition::NotAcceptable, "join the room first"));
        };
        let o = &self.occupants[i];
        let has_body = msg.get_child("body", NS_CLIENT).is_some();
        if let Some(subject) = msg.get_child("subject", NS_CLIENT).filter(|_| !has_body) {
            let allowed = o.role == Role::Moderator || (self.config.change_subject && o.role >= Role::Participant);
            if !allowed {
                return ctx.error(
                    &msg,
                    StanzaError::new(Condition::Forbidden, "you may not change the subject"),
                );
            }
            let text = subject.text();
            if text.chars().count() > MAX_SUBJECT {
                return ctx.error(
                    &msg,
                    StanzaError::new(Condition::NotAcceptable, "the subject is too long"),
                );
            }
            self.subject = text;
            self.subject_by = o.nick.clone();
            let (id, s, by) = (self.id, self.subject.clone(), self.subject_by.clone());
            let _ = ctx
                .server
                .store
                .call(move |c| store::muc::set_subject(c, id, &s, &by))
                .await;
        } else if o.role < Role::Participant {
            return ctx.error(
                &msg,
                StanzaError::new(Condition::Forbidden, "visitors may not speak here"),
            );
        }
        let nick = self.occupants[i].nick.clone();
        let real = self.occupants[i].real.clone();
        // Nobody may forge the room's stanza-id or another occupant's id.
        let room = self.jid.to_string();
        strip(&mut msg, |c| {
            (c.is("stanza-id", NS_SID) && c.attr("by") == Some(room.as_str())) || c.is("occupant-id", NS_OCCUPANT_ID)
        });
        msg.unset("to");
        msg.set("from", self.occupant_jid(&nick));
        let stanza_id = new_stanza_id();
        msg.append_child(
            elem("stanza-id", NS_SID)
                .with("id", stanza_id.clone())
                .with("by", room.clone()),
        );
        msg.append_child(elem("occupant-id", NS_OCCUPANT_ID).with("id", self.occupant_id(&real)));
        self.publish(ctx, msg, stanza_id, Some(&nick));
    }

    /// Archive (if it is worth keeping), remember and send a room message
    /// to every occupant, then wake those who sleep.
    fn publish(&mut self, ctx: &mut Ctx<'_>, msg: Element, stanza_id: String, nick: Option<&str>) {
        if worth_keeping(&msg) {
            if self.config.archiving {
                let with = nick
                    .map(|n| self.occupant_jid(n))
                    .unwrap_or_else(|| self.jid.to_string());
                crate::xmpp::modules::mam::Mam::archive(ctx.server).insert_room(self.id, stanza_id.clone(), with, &msg);
            }
            let cap = self.history_cap(ctx.limits);
            if cap > 0 {
                self.history.push_back(Past {
                    stanza: msg.clone(),
                    stanza_id,
                    ts: now_micros(),
                });
                while self.history.len() > cap {
                    self.history.pop_front();
                }
            }
        }
        let mut ghosts = Vec::new();
        for o in &self.occupants {
            for s in &o.sessions {
                let mut copy = msg.clone();
                copy.set("to", s.to_string());
                if !ctx.send(copy) {
                    ghosts.push(s.clone());
                }
            }
        }
        self.drop_ghosts(ctx, ghosts);
        self.wake_sleepers(ctx, &msg, nick);
    }

    /// XEP-0357 for group messages: every local member (of a members-only
    /// room) or occupant whose every joined session sleeps or who is not
    /// joined at all gets a push, in rooms up to `push_every_message_up_to`
    /// members for every message, in larger ones when their nick is named.
    fn wake_sleepers(&self, ctx: &mut Ctx<'_>, msg: &Element, sender: Option<&str>) {
        let Some(mut event) = push::event_for_group(msg) else {
            return;
        };
        event.sender = Some(Jid::from(self.jid.clone()));
        let server = ctx.server;
        let sender_real = sender
            .and_then(|n| self.occupant_by_nick(n))
            .map(|i| &self.occupants[i].real);
        let mut people: Vec<(&BareJid, Option<&str>)> = Vec::new();
        if self.config.members_only {
            for (j, a) in &self.affiliations {
                if *a >= Affiliation::Member {
                    let nick = self.occupants.iter().find(|o| &o.real == j).map(|o| o.nick.as_str());
                    people.push((j, nick));
                }
            }
        }
        for o in &self.occupants {
            if !people.iter().any(|(j, _)| *j == &o.real) {
                people.push((&o.real, Some(o.nick.as_str())));
            }
        }
        let everyone = people.len() <= ctx.limits.push_every_message_up_to as usize;
        let body = msg.get_child("body", NS_CLIENT).map(|b| b.text()).unwrap_or_default();
        for (real, nick) in people {
            if Some(real) == sender_real || !server.is_local(real.domain().as_str()) {
                continue;
            }
            let mentioned = nick.is_some_and(|n| !n.is_empty() && body.contains(n));
            if !everyone && !mentioned {
                continue;
            }
            let joined: Vec<_> = self
                .occupants
                .iter()
                .filter(|o| &o.real == real)
                .flat_map(|o| o.sessions.iter())
                .filter_map(|s| s.try_as_full().ok().and_then(|f| server.sessions.get(f)))
                .collect();
            if joined.iter().all(|s| s.asleep()) {
                push::notify(server, real, event.clone());
            }
        }
    }

    /// A private message from an occupant to `nick`.
    pub fn private(&mut self, ctx: &mut Ctx<'_>, mut msg: Element, from: &Jid, nick: &str) {
        let Some(i) = self.occupant_of(from) else {
            return ctx.error(&msg, StanzaError::new(Condition::NotAcceptable, "join the room first"));
        };
        let role = self.occupants[i].role;
        let allowed = match self.config.allow_pm {
            AllowPm::Anyone => true,
            AllowPm::Participants => role >= Role::Participant,
            AllowPm::Moderators => role == Role::Moderator,
            AllowPm::None => false,
        };
        if !allowed {
            return ctx.error(
                &msg,
                StanzaError::new(Condition::Forbidden, "private messages are not allowed here"),
            );
        }
        let Some(t) = self.occupant_by_nick(nick) else {
            return ctx.error(
                &msg,
                StanzaError::new(Condition::ItemNotFound, "nobody has that nickname"),
            );
        };
        msg.set("from", self.occupant_jid(&self.occupants[i].nick));
        if msg.get_child("x", NS_USER).is_none() {
            msg.append_child(elem("x", NS_USER));
        }
        let mut ghosts = Vec::new();
        for s in self.occupants[t].sessions.clone() {
            let mut copy = msg.clone();
            copy.set("to", s.to_string());
            if !ctx.send(copy) {
                ghosts.push(s);
            }
        }
        self.drop_ghosts(ctx, ghosts);
    }

    /// A mediated invitation (XEP-0045 §7.8.2) or a decline.
    pub async fn invite(&mut self, ctx: &mut Ctx<'_>, msg: &Element, from: &Jid) {
        let Some(x) = msg.get_child("x", NS_USER) else { return };
        let real = from.to_bare();
        if let Some(d) = x.get_child("decline", NS_USER) {
            let Some(to) = d.attr("to").and_then(stanza::jid) else {
                return ctx.error(msg, Condition::JidMalformed);
            };
            let mut decline = elem("decline", NS_USER).with("from", real.to_string());
            if let Some(r) = d.get_child("reason", NS_USER) {
                decline.append_child(r.clone());
            }
            let m = elem("message", NS_CLIENT)
                .with("from", self.jid.to_string())
                .with("to", to.to_string())
                .child(elem("x", NS_USER).child(decline));
            ctx.send(m);
            return;
        }
        let invites: Vec<&Element> = x.children().filter(|c| c.is("invite", NS_USER)).collect();
        if invites.is_empty() {
            return ctx.error(msg, Condition::BadRequest);
        }
        let i = self.occupant_of(from);
        let aff = self.affiliation(&real);
        let may = match i {
            None => false,
            Some(_) if aff >= Affiliation::Admin => true,
            Some(i) => self.config.allow_invites && self.occupants[i].role >= Role::Participant,
        };
        if !may {
            return ctx.error(msg, StanzaError::new(Condition::Forbidden, "you may not invite here"));
        }
        for inv in invites.into_iter().take(16) {
            let Some(to) = inv.attr("to").and_then(stanza::jid) else {
                return ctx.error(msg, Condition::JidMalformed);
            };
            let bare = to.to_bare();
            if self.config.members_only && self.affiliation(&bare) < Affiliation::Member {
                // The inviter may make members: the invitee can enter.
                if self.affiliation(&bare) == Affiliation::Outcast {
                    return ctx.error(msg, StanzaError::new(Condition::Forbidden, "that address is banned"));
                }
                self.set_affiliation(ctx, &bare, Affiliation::Member, "invited").await;
            }
            let mut invite = elem("invite", NS_USER).with("from", real.to_string());
            if let Some(r) = inv.get_child("reason", NS_USER) {
                invite.append_child(r.clone());
            }
            let mut ux = elem("x", NS_USER).child(invite);
            if !self.config.password.is_empty() {
                ux.append_child(elem("password", NS_USER).text_child(self.config.password.clone()));
            }
            let m = elem("message", NS_CLIENT)
                .with("from", self.jid.to_string())
                .with("to", to.to_string())
                .with("id", new_stanza_id())
                .child(ux)
                .child(
                    elem("x", "jabber:x:conference")
                        .with("jid", self.jid.to_string())
                        .with_opt(
                            "password",
                            (!self.config.password.is_empty()).then(|| self.config.password.clone()),
                        ),
                )
                .child(elem("body", NS_CLIENT).text_child(format!("{real} invites you to the room {}", self.jid)));
            ctx.send(m);
        }
    }

    /// An error message from an occupant: its session is gone (333).
    pub fn error_from(&mut self, ctx: &mut Ctx<'_>, from: &Jid) {
        if let Some(i) = self.occupant_of(from) {
            self.drop_ghosts_now(ctx, i, from);
        }
    }

    fn drop_ghosts_now(&mut self, ctx: &mut Ctx<'_>, i: usize, from: &Jid) {
        self.occupants[i].sessions.retain(|s| s != from);
        if self.occupants[i].sessions.is_empty() {
            self.remove_occupant(ctx, i, &[333], None);
        }
    }

    // ------------------------------------------------------------ administration

    /// Store and apply an affiliation; an occupant it concerns sees its new
    /// presence (or leaves: banned 301, no longer a member 321).
    pub async fn set_affiliation(&mut self, ctx: &mut Ctx<'_>, who: &BareJid, a: Affiliation, reason: &str) {
        let (id, j, r) = (self.id, who.to_string(), reason.to_string());
        let stored = (a != Affiliation::None).then(|| a.as_str());
        let _ = ctx
            .server
            .store
            .call(move |c| store::muc::set_affiliation(c, id, &j, stored, &r))
            .await;
        if a == Affiliation::None {
            self.affiliations.remove(who);
        } else {
            self.affiliations.insert(who.clone(), a);
        }
        let Some(i) = self.occupants.iter().position(|o| &o.real == who) else {
            return;
        };
        if a == Affiliation::Outcast {
            self.remove_occupant(ctx, i, &[301], Some(("", reason)));
        } else if self.config.members_only && a < Affiliation::Member {
            self.remove_occupant(ctx, i, &[321], None);
        } else {
            self.occupants[i].role = match a {
                Affiliation::Owner | Affiliation::Admin => Role::Moderator,
                _ if self.occupants[i].role == Role::Moderator => Role::Participant,
                _ if self.occupants[i].role == Role::Visitor && a == Affiliation::Member => Role::Participant,
                _ => self.occupants[i].role,
            };
            self.broadcast_presence(ctx, i, &[], &[110]);
        }
    }

    /// A role change by `actor` (a moderator): kick (307), voice, moderator.
    pub fn set_role(&mut self, ctx: &mut Ctx<'_>, i: usize, role: Role, actor: &str, reason: &str) {
        if role == Role::None {
            self.remove_occupant(ctx, i, &[307], Some((actor, reason)));
        } else {
            self.occupants[i].role = role;
            self.broadcast_presence(ctx, i, &[], &[110]);
        }
    }

    pub fn is_occupant(&self, session: &Jid) -> bool {
        self.occupant_of(session).is_some()
    }

    pub fn occupant_index(&self, session: &Jid) -> Option<usize> {
        self.occupant_of(session)
    }

    pub fn index_by_nick(&self, nick: &str) -> Option<usize> {
        self.occupant_by_nick(nick)
    }

    /// Tell every occupant the configuration changed (104, and 172/173
    /// when real JIDs became visible or hidden); members-only rooms lose
    /// their non-members (322).
    pub fn configured(&mut self, ctx: &mut Ctx<'_>, before: &RoomConfig) {
        if self.config.members_only && !before.members_only {
            while let Some(i) = self.occupants.iter().position(|o| {
                self.affiliations.get(&o.real).copied().unwrap_or(Affiliation::None) < Affiliation::Member
            }) {
                self.remove_occupant(ctx, i, &[322], None);
            }
        }
        let mut codes = vec![104];
        match (before.whois, self.config.whois) {
            (Whois::Moderators, Whois::Anyone) => codes.push(172),
            (Whois::Anyone, Whois::Moderators) => codes.push(173),
            _ => {}
        }
        let mut x = elem("x", NS_USER);
        for c in codes {
            x.append_child(elem("status", NS_USER).with("code", c.to_string()));
        }
        let m = elem("message", NS_CLIENT)
            .with("type", "groupchat")
            .with("from", self.jid.to_string())
            .with("id", new_stanza_id())
            .child(x);
        let stanza_id = new_stanza_id();
        self.publish(ctx, m, stanza_id, None);
    }

    /// Everyone leaves: the room is destroyed (or the service stops).
    pub fn destroy(&mut self, ctx: &mut Ctx<'_>, alternate: Option<&str>, reason: &str) {
        let mut d = elem("destroy", NS_USER).with_opt("jid", alternate.map(str::to_string));
        if !reason.is_empty() {
            d.append_child(elem("reason", NS_USER).text_child(reason));
        }
        for o in std::mem::take(&mut self.occupants) {
            for s in &o.sessions {
                let p = elem("presence", NS_CLIENT)
                    .with("type", "unavailable")
                    .with("from", self.occupant_jid(&o.nick))
                    .with("to", s.to_string())
                    .child(
                        elem("x", NS_USER)
                            .child(elem("item", NS_USER).with("affiliation", "none").with("role", "none"))
                            .child(d.clone()),
                    );
                ctx.send(p);
            }
        }
        self.gone = true;
    }

    // ------------------------------------------------------------ moderation and IQ forwarding

    /// XEP-0425: a moderator retracts message `id` for everyone; the archive
    /// keeps a tombstone.
    pub async fn moderate(
        &mut self,
        ctx: &mut Ctx<'_>,
        actor: usize,
        id: &str,
        reason: &str,
    ) -> Result<(), StanzaError> {
        let in_history = self.history.iter().any(|p| p.stanza_id == id);
        if !in_history {
            crate::xmpp::modules::mam::Mam::archive(ctx.server).flush().await;
            let (room, sid) = (self.id, id.to_string());
            let found = ctx
                .server
                .store
                .call(move |c| store::archive::room_has(c, room, &sid))
                .await
                .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
            if !found {
                return Err(StanzaError::new(
                    Condition::ItemNotFound,
                    "no message of this room has that id",
                ));
            }
        }
        let by = self.occupant_jid(&self.occupants[actor].nick);
        let actor_id = self.occupant_id(&self.occupants[actor].real);
        let with_reason = |mut e: Element, ns: &str| {
            if !reason.is_empty() {
                e.append_child(elem("reason", ns).text_child(reason));
            }
            e
        };
        let tombstone = elem("message", NS_CLIENT)
            .with("type", "groupchat")
            .with("from", self.jid.to_string())
            .child(
                elem("retracted", "urn:xmpp:message-retract:1")
                    .with(
                        "stamp",
                        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                    )
                    .child(
                        elem("moderated", "urn:xmpp:message-moderate:1")
                            .with("by", by.clone())
                            .child(elem("occupant-id", NS_OCCUPANT_ID).with("id", actor_id.clone())),
                    ),
            );
        {
            let (room, sid, xml) = (self.id, id.to_string(), tombstone.to_xml());
            let _ = ctx
                .server
                .store
                .call(move |c| store::archive::replace_room(c, room, &sid, &xml))
                .await;
        }
        self.history.retain(|p| p.stanza_id != id);
        let announce = elem("message", NS_CLIENT)
            .with("type", "groupchat")
            .with("from", self.jid.to_string())
            .with("id", new_stanza_id())
            .child(with_reason(
                elem("retract", "urn:xmpp:message-retract:1")
                    .with("id", id.to_string())
                    .child(
                        elem("moderated", "urn:xmpp:message-moderate:1")
                            .with("by", by.clone())
                            .child(elem("occupant-id", NS_OCCUPANT_ID).with("id", actor_id)),
                    ),
                "urn:xmpp:message-retract:1",
            ))
            .child(
                elem("apply-to", "urn:xmpp:fasten:0")
                    .with("id", id.to_string())
                    .child(with_reason(
                        elem("moderated", "urn:xmpp:message-moderate:0")
                            .with("by", by)
                            .child(elem("retract", "urn:xmpp:message-retract:0")),
                        "urn:xmpp:message-moderate:0",
                    )),
            )
            .child(elem("body", NS_CLIENT).text_child("This message has been moderated."))
            .child(elem("fallback", "urn:xmpp:fallback:0").with("for", "urn:xmpp:message-retract:1"));
        let stanza_id = new_stanza_id();
        let mut announce = announce;
        announce.append_child(
            elem("stanza-id", NS_SID)
                .with("id", stanza_id.clone())
                .with("by", self.jid.to_string()),
        );
        if self.config.archiving {
            crate::xmpp::modules::mam::Mam::archive(ctx.server).insert_room(
                self.id,
                stanza_id,
                self.jid.to_string(),
                &announce,
            );
        }
        let mut ghosts = Vec::new();
        for o in &self.occupants {
            for s in &o.sessions {
                let mut copy = announce.clone();
                copy.set("to", s.to_string());
                if !ctx.send(copy) {
                    ghosts.push(s.clone());
                }
            }
        }
        self.drop_ghosts(ctx, ghosts);
        Ok(())
    }

    /// An IQ to `room/nick`: answered at once when it is the asker's own
    /// occupant JID (XEP-0410 self-ping), forwarded to the occupant's
    /// session otherwise (XEP-0045 §7.7's IQ forwarding).
    pub fn iq_to_occupant(&mut self, ctx: &mut Ctx<'_>, iq: Element, from: &Jid, nick: &str) {
        let t = stanza::typ(&iq).to_string();
        if t == "result" || t == "error" {
            // An answer to an IQ we forwarded.
            let Some(id) = iq.attr("id") else { return };
            let Some((asker, their_id)) = self.forwarded.remove(id) else {
                return;
            };
            let Some(i) = self.occupant_of(from) else { return };
            let mut a = iq.clone();
            a.set("id", their_id);
            a.set("from", self.occupant_jid(&self.occupants[i].nick));
            a.set("to", asker.to_string());
            ctx.send(a);
            return;
        }
        let Some(me) = self.occupant_of(from) else {
            return ctx.error(
                &iq,
                StanzaError::new(Condition::NotAcceptable, "you are not in this room"),
            );
        };
        let Some(target) = self.occupant_by_nick(nick) else {
            return ctx.error(
                &iq,
                StanzaError::new(Condition::ItemNotFound, "nobody has that nickname"),
            );
        };
        if target == me {
            let r = stanza::iq_result(&iq, None);
            ctx.send(r);
            return;
        }
        if self.forwarded.len() >= MAX_FORWARDED {
            return ctx.error(
                &iq,
                StanzaError::new(Condition::ResourceConstraint, "too many requests in flight"),
            );
        }
        let Some(session) = self.occupants[target].sessions.first().cloned() else {
            return;
        };
        let id = new_stanza_id();
        self.forwarded.insert(
            id.clone(),
            (from.clone(), iq.attr("id").unwrap_or_default().to_string()),
        );
        let mut fwd = iq;
        fwd.set("id", id);
        fwd.set("from", self.occupant_jid(&self.occupants[me].nick));
        fwd.set("to", session.to_string());
        if !ctx.send(fwd.clone()) {
            self.forwarded.remove(fwd.attr("id").unwrap_or_default());
            ctx.error(&fwd, Condition::RecipientUnavailable);
        }
    }

    /// The avatar hash of the room's vCard (XEP-0486's roominfo_avatarhash).
    pub fn avatar_hash(&self) -> Option<String> {
        use base64::Engine;
        use sha1::Digest;
        let v: Element = self.vcard.as_deref()?.parse().ok()?;
        let photo = v.get_child("PHOTO", "vcard-temp")?;
        let data = photo.get_child("BINVAL", "vcard-temp")?.text();
        let clean: String = data.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD.decode(clean).ok()?;
        Some(hex(&sha1::Sha1::digest(&bytes)))
    }

    /// A new vCard: occupants hear of the new avatar (XEP-0486).
    pub fn announce_avatar(&mut self, ctx: &mut Ctx<'_>) {
        let mut x = elem("x", "vcard-temp:x:update");
        if let Some(h) = self.avatar_hash() {
            x.append_child(elem("photo", "vcard-temp:x:update").text_child(h));
        }
        let p = elem("presence", NS_CLIENT)
            .with("from", self.jid.to_string())
            .child(x)
            .child(elem("x", NS_USER).child(elem("status", NS_USER).with("code", "104")));
        for o in &self.occupants {
            for s in &o.sessions {
                let mut copy = p.clone();
                copy.set("to", s.to_string());
                ctx.send(copy);
            }
        }
    }

    pub fn occupant_count(&self) -> usize {
        self.occupants.len()
    }

    pub fn history_len(&self) -> usize {
        self.history.len()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether a room message belongs in the archive and the history: it has
/// a body, an encrypted payload, or changes an earlier message.
fn worth_keeping(msg: &Element) -> bool {
    msg.children().any(|c| {
        c.is("body", NS_CLIENT)
            || c.name() == "encrypted"
            || c.has_ns("urn:xmpp:reactions:0")
            || c.ns().starts_with("urn:xmpp:message-retract")
            || c.has_ns("urn:xmpp:fasten:0")
            || c.is("x", NS_USER)
    }) && !msg
        .children()
        .any(|c| c.is("no-store", "urn:xmpp:hints") || c.is("no-permanent-store", "urn:xmpp:hints"))
}

fn strip(msg: &mut Element, drop: impl Fn(&Element) -> bool) {
    for n in msg.take_nodes() {
        if !n.as_element().is_some_and(&drop) {
            msg.append_node(n);
        }
    }
}

fn nick_given(p: &Element) -> Option<&str> {
    p.attr("to").and_then(|t| t.split_once('/')).map(|(_, n)| n)
}

/// A nickname: a valid resourcepart (the jid crate normalises it), not
/// empty, not blank at either end, without control or invisible characters
/// that would let one occupant pass for another.
pub fn valid_nick(nick: &str) -> Result<String, StanzaError> {
    let bad = || StanzaError::new(Condition::JidMalformed, "that nickname is not allowed");
    if nick.is_empty() || nick.chars().count() > MAX_NICK || nick.trim() != nick {
        return Err(bad());
    }
    if nick.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
    }) {
        return Err(bad());
    }
    let r = jid::ResourcePart::new(nick).map_err(|_| bad())?;
    Ok(r.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicknames() {
        assert_eq!(valid_nick("Ålice").unwrap(), "Ålice");
        for bad in ["", " alice", "alice ", "al\u{202e}ice", "a\u{0}b", &"x".repeat(65)] {
            assert!(valid_nick(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn what_is_kept() {
        let m = |s: &str| -> Element { s.parse().unwrap() };
        assert!(worth_keeping(&m(
            "<message xmlns='jabber:client'><body>hi</body></message>"
        )));
        assert!(!worth_keeping(&m(
            "<message xmlns='jabber:client'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )));
        assert!(!worth_keeping(&m(
            "<message xmlns='jabber:client'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>"
        )));
    }
}

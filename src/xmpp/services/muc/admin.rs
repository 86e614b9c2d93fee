//! IQs addressed to a room: discovery, the owner's configuration and
//! destruction (`muc#owner`), affiliations and roles (`muc#admin`), the
//! room archive (XEP-0313), its vCard (avatar), ping and moderation
//! (XEP-0425).

use super::{
    config::{RoomConfig, FORM_TYPE as CONFIG_FORM},
    room::{Affiliation, Ctx, Role, Room, NS_OCCUPANT_ID, NS_SID},
    NS_ADMIN, NS_MUC, NS_OWNER,
};
use crate::{
    store::{self, archive as db},
    xmpp::{
        forms::Form,
        modules::{
            disco::{NS_INFO, NS_ITEMS},
            mam::{self, Mam},
        },
        ns::DATA,
        stanza::{self, Condition, StanzaError},
        xml::{elem, ElementExt},
    },
};
use jid::{BareJid, Jid};
use minidom::Element;

type Answer = Result<Option<Element>, StanzaError>;

pub async fn iq(room: &mut Room, ctx: &mut Ctx<'_>, iq: Element, from: &Jid) {
    let t = stanza::typ(&iq);
    if !matches!(t, "get" | "set") {
        return;
    }
    let get = t == "get";
    let answer = match stanza::iq_payload(&iq) {
        Ok(p) => answer(room, ctx, &iq, p, from, get).await,
        Err(c) => Err(c.into()),
    };
    let reply = match answer {
        Ok(p) => Some(stanza::iq_result(&iq, p)),
        Err(e) => stanza::bounce(&iq, e, ctx.server.domain()),
    };
    if let Some(r) = reply {
        ctx.send(r);
    }
}

async fn answer(room: &mut Room, ctx: &mut Ctx<'_>, iq: &Element, p: &Element, from: &Jid, get: bool) -> Answer {
    let ns = p.ns();
    match (p.name(), ns.as_str(), get) {
        ("query", NS_INFO, true) => info(room, from),
        ("query", NS_ITEMS, true) => Ok(Some(elem("query", NS_ITEMS))),
        ("query", NS_OWNER, true) => {
            owner_only(room, from)?;
            let l = ctx.limits;
            Ok(Some(
                elem("query", NS_OWNER).child(room.config.form(l.max_occupants, l.max_history)),
            ))
        }
        ("query", NS_OWNER, false) => owner_set(room, ctx, p, from).await,
        ("query", NS_ADMIN, true) => admin_get(room, p, from),
        ("query", NS_ADMIN, false) => admin_set(room, ctx, p, from).await,
        ("query", mam::NS, false) => archive(room, ctx, p, from).await,
        ("query", mam::NS, true) => Ok(Some(
            elem("query", mam::NS).child(
                elem("x", DATA).with("type", "form").child(
                    elem("field", DATA)
                        .with("var", "FORM_TYPE")
                        .with("type", "hidden")
                        .child(elem("value", DATA).text_child(mam::NS)),
                ),
            ),
        )),
        ("vCard", "vcard-temp", true) => Ok(Some(
            room.vcard
                .as_deref()
                .and_then(|v| v.parse::<Element>().ok())
                .unwrap_or_else(|| elem("vCard", "vcard-temp")),
        )),
        ("vCard", "vcard-temp", false) => {
            owner_only(room, from)?;
            let xml = p.to_xml();
            if xml.len() > 256 * 1024 {
                return Err(StanzaError::new(Condition::NotAcceptable, "the vCard is too large"));
            }
            let (id, v) = (room.id, xml.clone());
            store_call(ctx, move |c| store::muc::set_vcard(c, id, Some(&v))).await?;
            room.vcard = Some(xml);
            room.announce_avatar(ctx);
            Ok(None)
        }
        ("ping", "urn:xmpp:ping", true) => Ok(None),
        ("moderate", "urn:xmpp:message-moderate:1", false) => {
            let id = p.attr("id").ok_or(Condition::BadRequest)?.to_string();
            if p.get_child("retract", "urn:xmpp:message-retract:1").is_none() {
                return Err(StanzaError::new(
                    Condition::FeatureNotImplemented,
                    "only retraction is supported",
                ));
            }
            let reason = p.get_child("reason", "urn:xmpp:message-moderate:1").map(|r| r.text());
            moderate(room, ctx, from, &id, reason.as_deref().unwrap_or("")).await
        }
        ("apply-to", "urn:xmpp:fasten:0", false) => {
            let id = p.attr("id").ok_or(Condition::BadRequest)?.to_string();
            let m = p
                .get_child("moderate", "urn:xmpp:message-moderate:0")
                .ok_or(Condition::FeatureNotImplemented)?;
            let reason = m.get_child("reason", "urn:xmpp:message-moderate:0").map(|r| r.text());
            moderate(room, ctx, from, &id, reason.as_deref().unwrap_or("")).await
        }
        _ => {
            let _ = iq;
            Err(Condition::ServiceUnavailable.into())
        }
    }
}

async fn store_call<R: Send + 'static>(
    ctx: &Ctx<'_>,
    f: impl FnOnce(&mut rusqlite::Connection) -> store::Result<R> + Send + 'static,
) -> Result<R, StanzaError> {
    ctx.server
        .store
        .call(f)
        .await
        .map_err(|_| StanzaError::from(Condition::InternalServerError))
}

fn owner_only(room: &Room, from: &Jid) -> Result<(), StanzaError> {
    if room.affiliation(&from.to_bare()) == Affiliation::Owner {
        Ok(())
    } else {
        Err(StanzaError::new(Condition::Forbidden, "only an owner may do this"))
    }
}

/// disco#info of a room: what kind of room it is (XEP-0045 §6.4).
fn info(room: &Room, from: &Jid) -> Answer {
    if room.locked && room.affiliation(&from.to_bare()) != Affiliation::Owner {
        return Err(StanzaError::new(Condition::ItemNotFound, "no such room"));
    }
    let c = &room.config;
    let name = if c.name.is_empty() {
        room.jid.node().map(|n| n.to_string()).unwrap_or_default()
    } else {
        c.name.clone()
    };
    let mut q = elem("query", NS_INFO).child(
        elem("identity", NS_INFO)
            .with("category", "conference")
            .with("type", "text")
            .with("name", name),
    );
    let pick = |b: bool, yes: &'static str, no: &'static str| if b { yes } else { no };
    let mut features = vec![
        NS_MUC,
        NS_INFO,
        NS_ITEMS,
        "http://jabber.org/protocol/muc#stable_id",
        "http://jabber.org/protocol/muc#self-ping-optimization",
        NS_SID,
        NS_OCCUPANT_ID,
        "urn:xmpp:message-moderate:0",
        "urn:xmpp:message-moderate:1",
        "vcard-temp",
        pick(c.persistent, "muc_persistent", "muc_temporary"),
        pick(c.public, "muc_public", "muc_hidden"),
        pick(c.members_only, "muc_membersonly", "muc_open"),
        pick(c.moderated, "muc_moderated", "muc_unmoderated"),
        pick(
            room.config.whois == super::config::Whois::Anyone,
            "muc_nonanonymous",
            "muc_semianonymous",
        ),
        pick(!c.password.is_empty(), "muc_passwordprotected", "muc_unsecured"),
    ];
    if c.archiving {
        features.push(mam::NS);
    }
    for f in features {
        q.append_child(elem("feature", NS_INFO).with("var", f));
    }
    let field = |var: &str, v: String| {
        elem("field", DATA)
            .with("var", var)
            .child(elem("value", DATA).text_child(v))
    };
    let mut x = elem("x", DATA)
        .with("type", "result")
        .child(
            elem("field", DATA)
                .with("var", "FORM_TYPE")
                .with("type", "hidden")
                .child(elem("value", DATA).text_child("http://jabber.org/protocol/muc#roominfo")),
        )
        .child(field("muc#roominfo_description", c.description.clone()))
        .child(field("muc#roominfo_subject", room.subject.clone()))
        .child(field("muc#roominfo_occupants", room.occupant_count().to_string()))
        .child(field("muc#roomconfig_roomname", c.name.clone()))
        .child(field(
            "muc#roomconfig_allowinvites",
            if c.allow_invites { "1" } else { "0" }.into(),
        ));
    if let Some(h) = room.avatar_hash() {
        x.append_child(field("muc#roominfo_avatarhash", h));
    }
    q.append_child(x);
    Ok(Some(q))
}

async fn owner_set(room: &mut Room, ctx: &mut Ctx<'_>, p: &Element, from: &Jid) -> Answer {
    owner_only(room, from)?;
    if let Some(d) = p.get_child("destroy", NS_OWNER) {
        let alternate = d
            .attr("jid")
            .map(|j| stanza::jid(j).ok_or(Condition::JidMalformed))
            .transpose()?;
        let reason = d.get_child("reason", NS_OWNER).map(|r| r.text()).unwrap_or_default();
        let id = room.id;
        store_call(ctx, move |c| store::muc::destroy(c, id)).await?;
        room.destroy(ctx, alternate.map(|j| j.to_string()).as_deref(), &reason);
        return Ok(None);
    }
    let Some(x) = p.get_child("x", DATA) else {
        return Err(StanzaError::new(Condition::BadRequest, "expected a form or <destroy/>"));
    };
    match x.attr("type") {
        Some("cancel") => {
            if room.locked {
                // The owner gave up creating the room.
                let id = room.id;
                store_call(ctx, move |c| store::muc::destroy(c, id)).await?;
                room.destroy(ctx, None, "");
            }
            Ok(None)
        }
        Some("submit") => {
            let form = Form::read(x);
            let before: RoomConfig = room.config.clone();
            let mut next = before.clone();
            if form.form_type.is_none() || form.form_type.as_deref() == Some(CONFIG_FORM) {
                next.apply(&form, ctx.limits.max_occupants, ctx.limits.max_history)?;
            } else {
                return Err(StanzaError::new(Condition::BadRequest, "not a muc#roomconfig form"));
            }
            let was_locked = room.locked;
            let (id, json) = (room.id, Room::stored_config(&next, false));
            store_call(ctx, move |c| store::muc::set_config(c, id, &json)).await?;
            room.config = next;
            room.locked = false;
            if !was_locked {
                room.configured(ctx, &before);
            }
            Ok(None)
        }
        _ => Err(StanzaError::new(
            Condition::BadRequest,
            "a form of type submit or cancel",
        )),
    }
}

fn admin_get(room: &Room, p: &Element, from: &Jid) -> Answer {
    let item = p.get_child("item", NS_ADMIN).ok_or(Condition::BadRequest)?;
    let me = from.to_bare();
    let my_aff = room.affiliation(&me);
    let mut q = elem("query", NS_ADMIN);
    if let Some(a) = item.attr("affiliation") {
        let a = Affiliation::parse(a).ok_or(Condition::BadRequest)?;
        // Members of private groups read the member lists: that is how
        // their clients find everyone's OMEMO devices.
        let may = my_aff >= Affiliation::Admin
            || (my_aff >= Affiliation::Member
                && a != Affiliation::Outcast
                && (room.config.members_only || room.config.whois == super::config::Whois::Anyone));
        if !may {
            return Err(StanzaError::new(Condition::Forbidden, "you may not read this list"));
        }
        let mut list: Vec<(&BareJid, &Affiliation)> = room.affiliations.iter().filter(|(_, x)| **x == a).collect();
        list.sort();
        for (j, _) in list {
            let nick = room.occupants.iter().find(|o| &o.real == j).map(|o| o.nick.clone());
            q.append_child(
                elem("item", NS_ADMIN)
                    .with("affiliation", a.as_str())
                    .with("jid", j.to_string())
                    .with_opt("nick", nick),
            );
        }
        return Ok(Some(q));
    }
    let role = item.attr("role").and_then(Role::parse).ok_or(Condition::BadRequest)?;
    let mine = room.occupant_index(from).map(|i| room.occupants[i].role);
    if mine != Some(Role::Moderator) {
        return Err(StanzaError::new(Condition::Forbidden, "only moderators may read roles"));
    }
    for o in room.occupants.iter().filter(|o| o.role == role) {
        q.append_child(
            elem("item", NS_ADMIN)
                .with("role", role.as_str())
                .with("nick", o.nick.clone())
                .with("affiliation", room.affiliation(&o.real).as_str())
                .with("jid", o.real.to_string()),
        );
    }
    Ok(Some(q))
}

enum Change {
    Role(usize, Role, String),
    Affiliation(BareJid, Affiliation, String),
}

async fn admin_set(room: &mut Room, ctx: &mut Ctx<'_>, p: &Element, from: &Jid) -> Answer {
    let me = from.to_bare();
    let my_aff = room.affiliation(&me);
    let my_index = room.occupant_index(from);
    let my_role = my_index.map(|i| room.occupants[i].role).unwrap_or(Role::None);
    let my_nick = my_index.map(|i| room.occupants[i].nick.clone()).unwrap_or_default();
    let mut changes = Vec::new();
    // Check every item first: all of them apply, or none.
    for item in p.children().filter(|c| c.is("item", NS_ADMIN)) {
        let reason = item.get_child("reason", NS_ADMIN).map(|r| r.text()).unwrap_or_default();
        if let Some(a) = item.attr("affiliation") {
            let a = Affiliation::parse(a).ok_or(Condition::BadRequest)?;
            let who = item
                .attr("jid")
                .and_then(stanza::jid)
                .map(|j| j.to_bare())
                .or_else(|| {
                    item.attr("nick")
                        .and_then(|n| room.index_by_nick(n))
                        .map(|i| room.occupants[i].real.clone())
                })
                .ok_or_else(|| StanzaError::new(Condition::BadRequest, "an item needs a jid"))?;
            let theirs = room.affiliation(&who);
            match my_aff {
                Affiliation::Owner => {
                    let owners = room.affiliations.values().filter(|x| **x == Affiliation::Owner).count();
                    if theirs == Affiliation::Owner && a != Affiliation::Owner && owners <= 1 {
                        return Err(StanzaError::new(Condition::Conflict, "a room keeps at least one owner"));
                    }
                }
                Affiliation::Admin => {
                    if theirs >= Affiliation::Admin || a >= Affiliation::Admin {
                        return Err(StanzaError::new(
                            Condition::NotAllowed,
                            "only owners manage admins and owners",
                        ));
                    }
                }
                _ => {
                    return Err(StanzaError::new(
                        Condition::Forbidden,
                        "only admins and owners change affiliations",
                    ))
                }
            }
            changes.push(Change::Affiliation(who, a, reason));
        } else if let Some(r) = item.attr("role") {
            let r = Role::parse(r).ok_or(Condition::BadRequest)?;
            if my_role != Role::Moderator {
                return Err(StanzaError::new(Condition::Forbidden, "only moderators change roles"));
            }
            let nick = item.attr("nick").ok_or(Condition::BadRequest)?;
            let i = room
                .index_by_nick(nick)
                .ok_or_else(|| StanzaError::new(Condition::ItemNotFound, "nobody has that nickname"))?;
            let theirs = room.affiliation(&room.occupants[i].real);
            let current = room.occupants[i].role;
            if matches!(r, Role::None | Role::Visitor) && theirs >= Affiliation::Admin {
                return Err(StanzaError::new(
                    Condition::NotAllowed,
                    "admins and owners cannot be kicked or muted",
                ));
            }
            if (r == Role::Moderator || current == Role::Moderator) && my_aff < Affiliation::Admin {
                return Err(StanzaError::new(
                    Condition::NotAllowed,
                    "only admins and owners manage moderators",
                ));
            }
            if theirs > my_aff && r < current {
                return Err(StanzaError::new(
                    Condition::NotAllowed,
                    "their affiliation is above yours",
                ));
            }
            changes.push(Change::Role(i, r, reason));
        } else {
            return Err(StanzaError::new(
                Condition::BadRequest,
                "an item needs a role or an affiliation",
            ));
        }
    }
    if changes.is_empty() {
        return Err(Condition::BadRequest.into());
    }
    // Role changes name occupants by index: apply them from the highest
    // index down so that a kick does not shift the others.
    let mut roles: Vec<(usize, Role, String)> = Vec::new();
    for ch in changes {
        match ch {
            Change::Affiliation(who, a, reason) => room.set_affiliation(ctx, &who, a, &reason).await,
            Change::Role(i, r, reason) => roles.push((i, r, reason)),
        }
    }
    roles.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (i, r, reason) in roles {
        if i < room.occupants.len() {
            room.set_role(ctx, i, r, &my_nick, &reason);
        }
    }
    Ok(None)
}

/// XEP-0313 on the room JID.
async fn archive(room: &mut Room, ctx: &mut Ctx<'_>, p: &Element, from: &Jid) -> Answer {
    let aff = room.affiliation(&from.to_bare());
    if aff == Affiliation::Outcast || (room.config.members_only && aff < Affiliation::Member) {
        return Err(StanzaError::new(
            Condition::Forbidden,
            "only members may read this archive",
        ));
    }
    let q = mam::parse_query(p)?;
    Mam::archive(ctx.server).flush().await;
    let id = room.id;
    let page = store_call(ctx, move |c| db::query_of(c, db::Owner::Room(id), &q))
        .await?
        .map_err(|_| StanzaError::new(Condition::ItemNotFound, "no archived message has that id"))?;
    let (results, fin) = mam::page_results(&page, p.attr("queryid"), &from.to_string(), &room.jid.to_string());
    for r in results {
        ctx.send(r);
    }
    Ok(Some(fin))
}

async fn moderate(room: &mut Room, ctx: &mut Ctx<'_>, from: &Jid, id: &str, reason: &str) -> Answer {
    let Some(i) = room.occupant_index(from) else {
        return Err(StanzaError::new(Condition::Forbidden, "join the room first"));
    };
    if room.occupants[i].role != Role::Moderator {
        return Err(StanzaError::new(
            Condition::Forbidden,
            "only moderators may retract messages",
        ));
    }
    room.moderate(ctx, i, id, reason).await?;
    Ok(None)
}

//! Personal Eventing Protocol (XEP-0163) on a subset of XEP-0060: publish
//! with publish-options, retract, items, create, node configuration,
//! delete and purge, and notifications filtered by the recipients'
//! entity-capabilities `+notify` features (learnt through [`super::caps`])
//! plus explicit subscribers ([`super::pep_subscribe`]).

use super::{account_id, caps, internal, BoxFuture, Hook, IqCtx, IqReply, IqRoute, Module, Target};
use crate::{
    store::{
        self,
        pep::{Access, Item, NodeConfig, SendLast},
        roster::Item as RosterItem,
    },
    xmpp::forms::Form,
    xmpp::Server,
    xmpp::{
        router::route,
        stanza::{Condition, StanzaError},
        xml::{elem, ElementExt, NS_CLIENT},
    },
};
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

pub use crate::xmpp::ns::PUBSUB as NS_PUBSUB;
pub const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
pub const NS_NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
pub const NS_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
pub use crate::xmpp::ns::DATA as NS_DATA;

/// Items kept per node when a node asks for `max` (and the ceiling for any number).
pub const MAX_ITEMS: u32 = 1000;
/// Nodes per account.
pub const MAX_NODES: usize = 500;

/// The PEP service and its in-memory state: who is online with which caps.
#[derive(Default)]
pub struct Pep {
    // std Mutex: never held across an await.
    recipients: Mutex<HashMap<BareJid, HashMap<FullJid, Recipient>>>,
    pub caps: caps::Caps,
}

#[derive(Debug, Clone, Default)]
struct Recipient {
    ver: Option<String>,
    features: Option<Arc<HashSet<String>>>,
}

const FEATURES: &[&str] = &[
    NS_PUBSUB,
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#multi-items",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#presence-notifications",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#subscribe",
];

#[derive(Default)]
pub struct PepModule {
    state: Pep,
}

/// The PEP service's in-memory state.
fn state(server: &Server) -> &Pep {
    &server
        .modules
        .get::<PepModule>()
        .expect("the pep module is always registered")
        .state
}

impl Module for PepModule {
    fn name(&self) -> &'static str {
        "pep"
    }
    fn hooks(&self) -> &'static [Hook] {
        &[Hook::Presence, Hook::IqResponse]
    }
    fn presence<'a>(
        &'a self,
        server: &'a Arc<Server>,
        p: &'a Element,
        from: &'a Jid,
        owner: &'a BareJid,
    ) -> BoxFuture<'a, ()> {
        Box::pin(on_presence(server, p, from, owner))
    }
    fn iq_response<'a>(&'a self, server: &'a Arc<Server>, iq: &'a Element) -> BoxFuture<'a, bool> {
        Box::pin(on_iq_response(server, iq))
    }
    fn account_features(&self) -> &'static [&'static str] {
        FEATURES
    }
    /// What clients look for on the server's own disco#info to know that
    /// their account has PEP (poezio's bookmark storage check, older
    /// Conversations); Prosody's mod_pep answers the same.
    fn server_features(&self) -> &'static [&'static str] {
        &["http://jabber.org/protocol/pubsub#publish"]
    }
    fn iqs(&self) -> &'static [IqRoute] {
        &[
            IqRoute {
                name: "pubsub",
                ns: NS_PUBSUB,
                target: Target::Account,
            },
            IqRoute {
                name: "pubsub",
                ns: NS_OWNER,
                target: Target::Account,
            },
        ]
    }
    fn handle_iq<'a>(&'a self, ctx: IqCtx<'a>) -> BoxFuture<'a, IqReply> {
        Box::pin(handle(ctx))
    }
}

/// A pubsub error: a stanza condition plus an optional `pubsub#errors` child.
pub fn perr(condition: Condition, app: Option<&str>) -> StanzaError {
    StanzaError {
        condition,
        text: None,
        extra: app.map(|a| Box::new(elem(a, NS_ERRORS))),
    }
}

async fn handle(ctx: IqCtx<'_>) -> IqReply {
    let owner = ctx.to.to_bare();
    let is_owner = ctx.from.to_bare() == owner;
    let Some(account) = account_id(ctx.server, &owner).await? else {
        return Err(Condition::ItemNotFound.into());
    };
    let p = ctx.payload;
    let mut children = p.children();
    let Some(first) = children.next() else {
        return Err(Condition::BadRequest.into());
    };
    let node = first.attr("node").map(str::to_string);
    let owner_ns = p.ns() == NS_OWNER;
    let need_owner = owner_ns || matches!(first.name(), "publish" | "retract" | "create" | "purge" | "delete");
    if need_owner && !is_owner {
        return Err(perr(Condition::Forbidden, None));
    }
    match (owner_ns, ctx.set, first.name()) {
        (false, true, "publish") => {
            let node = node.ok_or_else(|| perr(Condition::BadRequest, Some("nodeid-required")))?;
            let options = p
                .get_child("publish-options", NS_PUBSUB)
                .and_then(|o| o.get_child("x", NS_DATA));
            let mut items = first.children().filter(|c| c.is("item", NS_PUBSUB));
            let item = items
                .next()
                .ok_or_else(|| perr(Condition::BadRequest, Some("item-required")))?;
            if items.next().is_some() {
                return Err(perr(Condition::BadRequest, Some("invalid-payload")));
            }
            let mut payloads = item.children();
            let payload = payloads
                .next()
                .ok_or_else(|| perr(Condition::BadRequest, Some("payload-required")))?;
            if payloads.next().is_some() {
                return Err(perr(Condition::BadRequest, Some("invalid-payload")));
            }
            let id = item
                .attr("id")
                .filter(|i| !i.is_empty())
                .map(str::to_string)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let opts = match options {
                Some(x) => form_fields(x, NS_PUBLISH_OPTIONS).map_err(|_| perr(Condition::BadRequest, None))?,
                None => vec![],
            };
            publish(ctx.server, &owner, account, &node, &id, payload.clone(), &opts, true).await?;
            Ok(Some(
                elem("pubsub", NS_PUBSUB).child(
                    elem("publish", NS_PUBSUB)
                        .with("node", node)
                        .child(elem("item", NS_PUBSUB).with("id", id)),
                ),
            ))
        }
        (false, true, "retract") => {
            let node = node.ok_or_else(|| perr(Condition::BadRequest, Some("nodeid-required")))?;
            let notify = matches!(first.attr("notify"), Some("1" | "true"));
            let ids: Vec<String> = first
                .children()
                .filter(|c| c.is("item", NS_PUBSUB))
                .filter_map(|c| c.attr("id").map(str::to_string))
                .collect();
            if ids.is_empty() {
                return Err(perr(Condition::BadRequest, Some("item-required")));
            }
            retract(ctx.server, &owner, account, &node, &ids, notify).await?;
            if node == super::bookmarks::NS_0402 {
                super::bookmarks::sync(ctx.server, &owner, super::bookmarks::Source::Native).await;
            }
            Ok(None)
        }
        (false, false, "items") => {
            let node = node.ok_or_else(|| perr(Condition::BadRequest, Some("nodeid-required")))?;
            let max = match first.attr("max_items") {
                Some(m) => Some(m.parse::<u32>().map_err(|_| perr(Condition::BadRequest, None))?),
                None => None,
            };
            let ids: Vec<String> = first
                .children()
                .filter(|c| c.is("item", NS_PUBSUB))
                .filter_map(|c| c.attr("id").map(str::to_string))
                .collect();
            let requester = ctx.from.to_bare();
            let n = node.clone();
            let (cfg, items, roster) = ctx
                .server
                .store
                .call(move |c| {
                    let Some(cfg) = store::pep::node(c, account, &n)? else {
                        return Ok(None);
                    };
                    let roster = store::roster::get(c, account, &requester.to_string())?;
                    let items = if ids.is_empty() {
                        store::pep::items(c, account, &n, max)?
                    } else {
                        store::pep::items_by_id(c, account, &n, &ids)?
                    };
                    Ok(Some((cfg, items, roster)))
                })
                .await
                .map_err(internal)?
                .ok_or_else(|| StanzaError::from(Condition::ItemNotFound))?;
            if let Some(e) = access_denied(&cfg, roster.as_ref()).filter(|_| !is_owner) {
                return Err(e);
            }
            let mut out = elem("items", NS_PUBSUB).with("node", node);
            for i in &items {
                out.append_child(item_element(i, NS_PUBSUB));
            }
            Ok(Some(elem("pubsub", NS_PUBSUB).child(out)))
        }
        (false, true, "create") => {
            let node = node.ok_or_else(|| perr(Condition::NotAcceptable, Some("nodeid-required")))?;
            let fields = match p
                .get_child("configure", NS_PUBSUB)
                .and_then(|c| c.get_child("x", NS_DATA))
            {
                Some(x) => form_fields(x, NS_NODE_CONFIG).map_err(|_| perr(Condition::BadRequest, None))?,
                None => vec![],
            };
            let mut cfg = NodeConfig::default();
            for (var, values) in &fields {
                apply_field(&mut cfg, var, values).map_err(|_| StanzaError::from(Condition::NotAcceptable))?;
            }
            let n = node.clone();
            let created = ctx
                .server
                .store
                .call(move |c| {
                    if store::pep::node(c, account, &n)?.is_some() {
                        return Ok(Err(Condition::Conflict));
                    }
                    if store::pep::nodes(c, account)?.len() >= MAX_NODES {
                        return Ok(Err(Condition::ResourceConstraint));
                    }
                    store::pep::put_node(c, account, &n, &cfg, MAX_ITEMS)?;
                    Ok(Ok(()))
                })
                .await
                .map_err(internal)?;
            created.map_err(StanzaError::from)?;
            Ok(None)
        }
        (false, true, "subscribe") => {
            super::pep_subscribe::subscribe(ctx.server, &owner, account, ctx.from, first).await
        }
        (false, true, "unsubscribe") => super::pep_subscribe::unsubscribe(ctx.server, account, ctx.from, first).await,
        (false, _, "options" | "subscriptions" | "affiliations" | "default") => {
            let mut e = perr(Condition::FeatureNotImplemented, None);
            e.extra = Some(Box::new(elem("unsupported", NS_ERRORS).with(
                "feature",
                match first.name() {
                    "options" => "subscription-options",
                    "subscriptions" => "retrieve-subscriptions",
                    "affiliations" => "retrieve-affiliations",
                    _ => "retrieve-default",
                },
            )));
            Err(e)
        }
        (true, false, "configure") => {
            let node = node.ok_or_else(|| perr(Condition::BadRequest, Some("nodeid-required")))?;
            let n = node.clone();
            let cfg = ctx
                .server
                .store
                .call(move |c| store::pep::node(c, account, &n))
                .await
                .map_err(internal)?
                .ok_or_else(|| StanzaError::from(Condition::ItemNotFound))?;
            Ok(Some(elem("pubsub", NS_OWNER).child(
                elem("configure", NS_OWNER).with("node", node).child(config_form(&cfg)),
            )))
        }
        (true, true, "configure") => {
            let node = node.ok_or_else(|| perr(Condition::BadRequest, Some("nodeid-required")))?;
            let x = first
                .get_child("x", NS_DATA)
                .ok_or_else(|| StanzaError::from(Condition::BadRequest))?;
            if x.attr("type") == Some("cancel") {
                return Ok(None);
            }
            let fields = form_fields(x, NS_NODE_CONFIG).map_err(|_| perr(Condition::BadRequest, None))?;
            let n = node.clone();
            let done = ctx
                .server
                .store
                .call(move |c| {
                    let Some(mut cfg) = store::pep::node(c, account, &n)? else {
                        return Ok(Err(Condition::ItemNotFound));
                    };
                    for (var, values) in &fields {
                        if apply_field(&mut cfg, var, values).is_err() {
                            return Ok(Err(Condition::NotAcceptable));
                        }
                    }
                    store::pep::put_node(c, account, &n, &cfg, MAX_ITEMS)?;
                    Ok(Ok(()))
                })
                .await
                .map_err(internal)?;
            done.map_err(StanzaError::from)?;
            Ok(None)
        }
        (true, true, "delete") => {
            let node = node.ok_or_else(|| perr(Condition::BadRequest, Some("nodeid-required")))?;
            delete(ctx.server, &owner, account, &node).await?;
            Ok(None)
        }
        (true, true, "purge") => {
            let node = node.ok_or_else(|| perr(Condition::BadRequest, Some("nodeid-required")))?;
            let n = node.clone();
            let cfg = ctx
                .server
                .store
                .call(move |c| {
                    let cfg = store::pep::node(c, account, &n)?;
                    if cfg.is_some() {
                        store::pep::purge(c, account, &n)?;
                    }
                    Ok(cfg)
                })
                .await
                .map_err(internal)?
                .ok_or_else(|| StanzaError::from(Condition::ItemNotFound))?;
            let ev = elem("purge", NS_EVENT).with("node", node.clone());
            notify(ctx.server, &owner, account, &node, &cfg, ev).await;
            Ok(None)
        }
        (true, _, "affiliations" | "subscriptions" | "default") => {
            let mut e = perr(Condition::FeatureNotImplemented, None);
            e.extra = Some(Box::new(elem("unsupported", NS_ERRORS).with(
                "feature",
                match first.name() {
                    "affiliations" => "modify-affiliations",
                    "subscriptions" => "manage-subscriptions",
                    _ => "retrieve-default",
                },
            )));
            Err(e)
        }
        _ => Err(Condition::BadRequest.into()),
    }
}

/// The fields of a data form of type `form_type` (FORM_TYPE left out).
fn form_fields(x: &Element, form_type: &str) -> Result<Vec<(String, Vec<String>)>, ()> {
    let form = Form::read(x);
    if !form.is_type_or_untyped(form_type) {
        return Err(());
    }
    Ok(form.fields.into_iter().map(|f| (f.var, f.values)).collect())
}

fn parse_bool(v: &str) -> Result<bool, ()> {
    match v {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(()),
    }
}

/// Apply one configuration field. Fields this server supports only with one
/// value accept that value and nothing else; unknown fields are refused.
fn apply_field(cfg: &mut NodeConfig, var: &str, values: &[String]) -> Result<(), ()> {
    let one = || values.first().map(|s| s.trim()).ok_or(());
    match var {
        "pubsub#access_model" => cfg.access_model = Access::parse(one()?).ok_or(())?,
        "pubsub#persist_items" => cfg.persist_items = parse_bool(one()?)?,
        "pubsub#max_items" => {
            let v = one()?;
            cfg.max_items = if v == "max" {
                None
            } else {
                Some(v.parse::<u32>().map_err(|_| ())?)
            };
        }
        "pubsub#send_last_published_item" => cfg.send_last_published_item = SendLast::parse(one()?).ok_or(())?,
        "pubsub#notify_retract" => cfg.notify_retract = parse_bool(one()?)?,
        "pubsub#notify_delete" => cfg.notify_delete = parse_bool(one()?)?,
        "pubsub#deliver_payloads" => cfg.deliver_payloads = parse_bool(one()?)?,
        "pubsub#roster_groups_allowed" => cfg.roster_groups_allowed = values.to_vec(),
        "pubsub#title" => cfg.title = values.first().cloned(),
        "pubsub#description" => cfg.description = values.first().cloned(),
        "pubsub#type" => cfg.payload_type = values.first().cloned(),
        // Fixed behaviour of this service.
        "pubsub#deliver_notifications" if parse_bool(one()?)? => {}
        "pubsub#notify_config" if !parse_bool(one()?)? => {}
        "pubsub#publish_model" if one()? == "publishers" => {}
        "pubsub#notification_type" if one()? == "headline" => {}
        "pubsub#purge_offline" if !parse_bool(one()?)? => {}
        "pubsub#presence_based_delivery" if parse_bool(one()?)? => {}
        _ => return Err(()),
    }
    Ok(())
}

fn field(var: &str, typ: &str, values: &[&str]) -> Element {
    let mut f = elem("field", NS_DATA).with("var", var).with("type", typ);
    for v in values {
        f.append_child(elem("value", NS_DATA).text_child(*v));
    }
    f
}

fn list_field(var: &str, value: &str, options: &[&str]) -> Element {
    let mut f = field(var, "list-single", &[value]);
    for o in options {
        f.append_child(elem("option", NS_DATA).child(elem("value", NS_DATA).text_child(*o)));
    }
    f
}

fn b(v: bool) -> &'static str {
    if v {
        "1"
    } else {
        "0"
    }
}

/// The node configuration as a XEP-0004 form.
pub fn config_form(cfg: &NodeConfig) -> Element {
    let max = cfg.max_items.map(|m| m.to_string()).unwrap_or_else(|| "max".into());
    let mut groups = field("pubsub#roster_groups_allowed", "list-multi", &[]);
    for g in &cfg.roster_groups_allowed {
        groups.append_child(elem("value", NS_DATA).text_child(g.clone()));
    }
    elem("x", NS_DATA)
        .with("type", "form")
        .child(field("FORM_TYPE", "hidden", &[NS_NODE_CONFIG]))
        .child(list_field(
            "pubsub#access_model",
            cfg.access_model.as_str(),
            &["open", "presence", "roster", "whitelist"],
        ))
        .child(field("pubsub#persist_items", "boolean", &[b(cfg.persist_items)]))
        .child(field("pubsub#max_items", "text-single", &[&max]))
        .child(list_field(
            "pubsub#send_last_published_item",
            cfg.send_last_published_item.as_str(),
            &["never", "on_sub", "on_sub_and_presence"],
        ))
        .child(field("pubsub#notify_retract", "boolean", &[b(cfg.notify_retract)]))
        .child(field("pubsub#notify_delete", "boolean", &[b(cfg.notify_delete)]))
        .child(field("pubsub#deliver_payloads", "boolean", &[b(cfg.deliver_payloads)]))
        .child(field("pubsub#deliver_notifications", "boolean", &["1"]))
        .child(list_field("pubsub#publish_model", "publishers", &["publishers"]))
        .child(groups)
        .child(field(
            "pubsub#title",
            "text-single",
            &[cfg.title.as_deref().unwrap_or_default()],
        ))
        .child(field(
            "pubsub#description",
            "text-single",
            &[cfg.description.as_deref().unwrap_or_default()],
        ))
        .child(field(
            "pubsub#type",
            "text-single",
            &[cfg.payload_type.as_deref().unwrap_or_default()],
        ))
}

/// Why a contact (with roster row `roster`, seen from the owner) may not
/// read a node; `None` when it may.
pub fn access_denied(cfg: &NodeConfig, roster: Option<&RosterItem>) -> Option<StanzaError> {
    match cfg.access_model {
        Access::Open => None,
        Access::Presence if roster.is_some_and(|r| r.sub.from()) => None,
        Access::Presence => Some(perr(Condition::NotAuthorized, Some("presence-subscription-required"))),
        Access::Roster
            if roster
                .is_some_and(|r| r.in_roster && r.groups.iter().any(|g| cfg.roster_groups_allowed.contains(g))) =>
        {
            None
        }
        Access::Roster => Some(perr(Condition::NotAuthorized, Some("not-in-roster-group"))),
        Access::Whitelist => Some(perr(Condition::NotAllowed, Some("closed-node"))),
    }
}

pub(super) fn item_element(i: &Item, ns: &str) -> Element {
    let mut e = elem("item", ns).with("id", i.id.clone());
    if !i.publisher.is_empty() {
        e.set("publisher", i.publisher.clone());
    }
    match i.payload.parse::<Element>() {
        Ok(p) => e.append_child(p),
        Err(err) => {
            tracing::error!(error = %err, "unreadable PEP item skipped");
            return e;
        }
    };
    e
}

/// Publish an item (from the owner or on the owner's behalf). `hooks` runs
/// the conversions (avatar to vCard) that a publish triggers.
#[allow(clippy::too_many_arguments)]
pub async fn publish(
    server: &Arc<Server>,
    owner: &BareJid,
    account: i64,
    node: &str,
    id: &str,
    payload: Element,
    options: &[(String, Vec<String>)],
    hooks: bool,
) -> Result<(), StanzaError> {
    let n = node.to_string();
    let opts = options.to_vec();
    let item = Item {
        id: id.to_string(),
        payload: payload.to_xml(),
        publisher: owner.to_string(),
    };
    let it = item.clone();
    let cfg = server
        .store
        .call(move |c| {
            let cfg = match store::pep::node(c, account, &n)? {
                Some(cfg) => {
                    // XEP-0060 §7.1.5: publish-options are preconditions on an existing node.
                    for (var, values) in &opts {
                        let mut want = cfg.clone();
                        if apply_field(&mut want, var, values).is_err() || want != cfg {
                            return Ok(Err(var.clone()));
                        }
                    }
                    cfg
                }
                None => {
                    let mut cfg = NodeConfig::default();
                    for (var, values) in &opts {
                        if apply_field(&mut cfg, var, values).is_err() {
                            return Ok(Err(var.clone()));
                        }
                    }
                    if store::pep::nodes(c, account)?.len() >= MAX_NODES {
                        return Ok(Err(String::new()));
                    }
                    store::pep::put_node(c, account, &n, &cfg, MAX_ITEMS)?;
                    cfg
                }
            };
            if cfg.persist_items {
                let keep = cfg.max_items.unwrap_or(MAX_ITEMS).min(MAX_ITEMS);
                store::pep::publish(c, account, &n, &it, keep)?;
            }
            Ok(Ok(cfg))
        })
        .await
        .map_err(internal)?;
    let cfg = match cfg {
        Ok(cfg) => cfg,
        Err(var) if var.is_empty() => {
            return Err(StanzaError::new(Condition::ResourceConstraint, "too many PEP nodes"));
        }
        Err(var) => {
            let mut e = perr(Condition::Conflict, Some("precondition-not-met"));
            e.text = Some(format!("the node's configuration does not satisfy {var}"));
            return Err(e);
        }
    };
    let mut ev_item = item_element(&item, NS_EVENT);
    if !cfg.deliver_payloads {
        ev_item = elem("item", NS_EVENT).with("id", item.id.clone());
    }
    let ev = elem("items", NS_EVENT).with("node", node).child(ev_item);
    notify(server, owner, account, node, &cfg, ev).await;
    if hooks {
        super::vcard::after_pep_publish(server, owner, account, node, &payload).await;
        use super::bookmarks::{self, Source};
        let source = match node {
            bookmarks::NS_0402 => Some(Source::Native),
            bookmarks::NS_0048 => Some(Source::Pep),
            _ => None,
        };
        if let Some(source) = source {
            // Boxed: the conversion publishes again (without hooks).
            Box::pin(bookmarks::sync(server, owner, source)).await;
        }
    }
    Ok(())
}

/// Retract items on the owner's behalf, notifying recipients.
pub async fn retract_items(
    server: &Arc<Server>,
    owner: &BareJid,
    account: i64,
    node: &str,
    ids: &[String],
) -> Result<(), StanzaError> {
    retract(server, owner, account, node, ids, true).await
}

async fn retract(
    server: &Arc<Server>,
    owner: &BareJid,
    account: i64,
    node: &str,
    ids: &[String],
    notify_flag: bool,
) -> Result<(), StanzaError> {
    let n = node.to_string();
    let ids2 = ids.to_vec();
    let cfg = server
        .store
        .call(move |c| {
            let Some(cfg) = store::pep::node(c, account, &n)? else {
                return Ok(None);
            };
            let mut gone = vec![];
            for id in &ids2 {
                if store::pep::retract(c, account, &n, id)? {
                    gone.push(id.clone());
                }
            }
            Ok(Some((cfg, gone)))
        })
        .await
        .map_err(internal)?;
    let Some((cfg, gone)) = cfg else {
        return Err(Condition::ItemNotFound.into());
    };
    if gone.is_empty() {
        return Err(Condition::ItemNotFound.into());
    }
    if notify_flag || cfg.notify_retract {
        let mut ev = elem("items", NS_EVENT).with("node", node);
        for id in gone {
            ev.append_child(elem("retract", NS_EVENT).with("id", id));
        }
        notify(server, owner, account, node, &cfg, ev).await;
    }
    Ok(())
}

async fn delete(server: &Arc<Server>, owner: &BareJid, account: i64, node: &str) -> Result<(), StanzaError> {
    let n = node.to_string();
    let cfg = server
        .store
        .call(move |c| {
            let cfg = store::pep::node(c, account, &n)?;
            if cfg.is_some() {
                store::pep::delete_node(c, account, &n)?;
            }
            Ok(cfg)
        })
        .await
        .map_err(internal)?
        .ok_or_else(|| StanzaError::from(Condition::ItemNotFound))?;
    if cfg.notify_delete {
        let ev = elem("delete", NS_EVENT).with("node", node);
        notify(server, owner, account, node, &cfg, ev).await;
    }
    Ok(())
}

pub(super) fn event_message(owner: &BareJid, to: &Jid, ev: Element) -> Element {
    let id: u64 = rand::random();
    elem("message", NS_CLIENT)
        .with("type", "headline")
        .with("from", owner.to_string())
        .with("to", to.to_string())
        .with("id", format!("pep{id:x}"))
        .child(elem("event", NS_EVENT).child(ev))
}

/// Send an event about `node` to every online resource that asked for it
/// (`node+notify` in its caps) and to its explicit subscribers, when they
/// may see the node.
async fn notify(server: &Arc<Server>, owner: &BareJid, account: i64, node: &str, cfg: &NodeConfig, ev: Element) {
    let want = format!("{node}+notify");
    let implicit: Vec<FullJid> = {
        let map = state(server).recipients.lock().unwrap_or_else(|e| e.into_inner());
        map.get(owner)
            .map(|m| {
                m.iter()
                    .filter(|(_, r)| r.features.as_ref().is_some_and(|f| f.contains(&want)))
                    .map(|(j, _)| j.clone())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut targets: Vec<Jid> = implicit.iter().cloned().map(Jid::from).collect();
    for j in super::pep_subscribe::subscribers(server, account, node).await {
        // A bare subscriber whose resources get the event through caps already is skipped.
        let covered = match j.try_as_full() {
            Ok(_) => targets.contains(&j),
            Err(_) => implicit.iter().any(|f| f.to_bare() == j.to_bare()),
        };
        if !covered {
            targets.push(j);
        }
    }
    if targets.is_empty() {
        return;
    }
    let roster = if cfg.access_model == Access::Open {
        HashMap::new()
    } else {
        server
            .store
            .call(move |c| store::roster::all(c, account))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read a roster for PEP notifications");
                vec![]
            })
            .into_iter()
            .map(|i| (i.contact.clone(), i))
            .collect()
    };
    for t in targets {
        let bare = t.to_bare();
        if bare != *owner && access_denied(cfg, roster.get(&bare.to_string())).is_some() {
            continue;
        }
        route(server, event_message(owner, &t, ev.clone())).await;
    }
}

/// Send the last item of every node `jid` is interested in (new implicit
/// subscription or a newly available resource).
async fn send_last_items(server: &Arc<Server>, owner: BareJid, jid: FullJid, features: Arc<HashSet<String>>) {
    let wanted: Vec<String> = features
        .iter()
        .filter_map(|f| f.strip_suffix("+notify").map(str::to_string))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let Ok(Some(account)) = account_id(server, &owner).await else {
        return;
    };
    let contact = jid.to_bare().to_string();
    let self_ = jid.to_bare() == owner;
    let res = server
        .store
        .call(move |c| {
            let roster = store::roster::get(c, account, &contact)?;
            let mut out = vec![];
            for node in wanted {
                let Some(cfg) = store::pep::node(c, account, &node)? else {
                    continue;
                };
                if cfg.send_last_published_item == SendLast::Never {
                    continue;
                }
                if !self_ && access_denied(&cfg, roster.as_ref()).is_some() {
                    continue;
                }
                if let Some(last) = store::pep::items(c, account, &node, Some(1))?.pop() {
                    out.push((node, cfg, last));
                }
            }
            Ok(out)
        })
        .await;
    let items = match res {
        Ok(i) => i,
        Err(e) => return tracing::error!(error = %e, "cannot read PEP items"),
    };
    for (node, cfg, item) in items {
        let ev_item = if cfg.deliver_payloads {
            item_element(&item, NS_EVENT)
        } else {
            elem("item", NS_EVENT).with("id", item.id.clone())
        };
        let ev = elem("items", NS_EVENT).with("node", node).child(ev_item);
        route(server, event_message(&owner, &Jid::from(jid.clone()), ev)).await;
    }
}

/// Presence from `from` reached the account `owner` (a contact's presence,
/// or one of the owner's own resources): track who is online with which
/// caps, ask for unknown caps once per `ver`, and send last items.
async fn on_presence(server: &Arc<Server>, p: &Element, from: &Jid, owner: &BareJid) {
    let Ok(full) = from.try_as_full() else {
        return;
    };
    let pep = &state(server);
    let t = p.attr("type").unwrap_or("");
    if t == "unavailable" || t == "error" {
        let mut map = pep.recipients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = map.get_mut(owner) {
            m.remove(full);
            if m.is_empty() {
                map.remove(owner);
            }
        }
        return;
    }
    if !t.is_empty() {
        return;
    }
    let ver = caps::ver_of(p);
    let known = ver.as_ref().and_then(|v| pep.caps.lookup(v));
    let changed = {
        let mut map = pep.recipients.lock().unwrap_or_else(|e| e.into_inner());
        let m = map.entry(owner.clone()).or_default();
        let prev = m.get(full);
        let changed = prev.is_none_or(|r| r.ver != ver.as_ref().map(|v| v.key()));
        if changed {
            m.insert(
                full.clone(),
                Recipient {
                    ver: ver.as_ref().map(|v| v.key()),
                    features: known.clone(),
                },
            );
        }
        changed
    };
    if !changed {
        return;
    }
    match (ver, known) {
        (_, Some(features)) => send_last_items(server, owner.clone(), full.clone(), features).await,
        (Some(v), None) => {
            if let Some(q) = pep.caps.start_query(&v, owner, full) {
                route(server, q).await;
            }
        }
        (None, None) => {}
    }
}

/// An IQ result or error addressed to an account or the domain: the answer
/// to a caps query, if it is one. Returns whether it was consumed.
async fn on_iq_response(server: &Arc<Server>, iq: &Element) -> bool {
    let pep = &state(server);
    let Some((key, waiters, features)) = pep.caps.finish_query(iq) else {
        return false;
    };
    let mut ready = vec![];
    {
        let mut map = pep.recipients.lock().unwrap_or_else(|e| e.into_inner());
        for (owner, jid) in waiters {
            if let Some(r) = map.get_mut(&owner).and_then(|m| m.get_mut(&jid)) {
                if r.ver.as_deref() == Some(key.as_str()) {
                    r.features = Some(features.clone());
                    ready.push((owner, jid));
                }
            }
        }
    }
    for (owner, jid) in ready {
        send_last_items(server, owner, jid, features.clone()).await;
    }
    true
}

/// disco#items of an account: the nodes the requester may see.
pub async fn disco_items(server: &Arc<Server>, from: &Jid, owner: &BareJid) -> Vec<Element> {
    let Ok(Some(account)) = account_id(server, owner).await else {
        return vec![];
    };
    let requester = from.to_bare();
    let self_ = requester == *owner;
    let res = server
        .store
        .call(move |c| {
            let roster = store::roster::get(c, account, &requester.to_string())?;
            Ok(store::pep::nodes(c, account)?
                .into_iter()
                .filter(|(_, cfg)| self_ || access_denied(cfg, roster.as_ref()).is_none())
                .map(|(n, _)| n)
                .collect::<Vec<_>>())
        })
        .await
        .unwrap_or_default();
    res.into_iter()
        .map(|n| {
            elem("item", super::disco::NS_ITEMS)
                .with("jid", owner.to_string())
                .with("node", n)
        })
        .collect()
}

//! Changing a node: publish (with its hooks), retract, delete, and the
//! event messages they cause.

use super::*;

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
        crate::xmpp::modules::vcard::after_pep_publish(server, owner, account, node, &payload).await;
        use crate::xmpp::modules::bookmarks::{self, Source};
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

pub(super) async fn retract(
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

pub(super) async fn delete(server: &Arc<Server>, owner: &BareJid, account: i64, node: &str) -> Result<(), StanzaError> {
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

//! Explicit XEP-0060 subscriptions to PEP nodes (§6.1 subscribe, §6.2
//! unsubscribe): for entities that want a node's events without advertising
//! `+notify` in their caps (bots, other servers' components, clients
//! without caps). A new subscriber gets the node's last item at once;
//! later publishes reach it beside the caps-filtered recipients.

use super::{access_denied, event_message, item_element, perr, NS_EVENT, NS_PUBSUB};
use crate::xmpp::modules::{internal, IqReply};
use crate::{
    store::{self, pep::SendLast},
    xmpp::Server,
    xmpp::{
        router::route,
        stanza::{Condition, StanzaError},
        xml::{elem, ElementExt},
    },
};
use jid::{BareJid, Jid};
use minidom::Element;
use std::sync::Arc;

/// The `jid` attribute, which must name the requester (bare or full).
fn subscriber(from: &Jid, el: &Element) -> Result<Jid, StanzaError> {
    let jid = el
        .attr("jid")
        .and_then(|j| Jid::new(j).ok())
        .ok_or_else(|| perr(Condition::BadRequest, Some("jid-required")))?;
    if jid.to_bare() != from.to_bare() {
        return Err(perr(Condition::BadRequest, Some("invalid-jid")));
    }
    Ok(jid)
}

/// §6.1: subscribe the requester to `node` of `owner`'s PEP service.
pub async fn subscribe(server: &Arc<Server>, owner: &BareJid, account: i64, from: &Jid, el: &Element) -> IqReply {
    let node = el
        .attr("node")
        .ok_or_else(|| perr(Condition::BadRequest, Some("nodeid-required")))?
        .to_string();
    let jid = subscriber(from, el)?;
    let is_owner = jid.to_bare() == *owner;
    let (n, who, contact) = (node.clone(), jid.to_string(), jid.to_bare().to_string());
    let subid = uuid::Uuid::new_v4().to_string();
    let (cfg, roster) = server
        .store
        .call(move |c| {
            let Some(cfg) = store::pep::node(c, account, &n)? else {
                return Ok(None);
            };
            Ok(Some((cfg, store::roster::get(c, account, &contact)?)))
        })
        .await
        .map_err(internal)?
        .ok_or_else(|| StanzaError::from(Condition::ItemNotFound))?;
    if let Some(e) = access_denied(&cfg, roster.as_ref()).filter(|_| !is_owner) {
        return Err(e);
    }
    let n = node.clone();
    let (subid, last) = server
        .store
        .call(move |c| {
            let subid = store::pep_subscriptions::subscribe(c, account, &n, &who, &subid)?;
            let last = store::pep::items(c, account, &n, Some(1))?.pop();
            Ok((subid, last))
        })
        .await
        .map_err(internal)?;
    tracing::debug!(node = %node, subscriber = %jid, "explicit PEP subscription");
    if cfg.send_last_published_item != SendLast::Never {
        if let Some(item) = last {
            let ev_item = if cfg.deliver_payloads {
                item_element(&item, NS_EVENT)
            } else {
                elem("item", NS_EVENT).with("id", item.id.clone())
            };
            let ev = elem("items", NS_EVENT).with("node", node.clone()).child(ev_item);
            // In the background, so that it normally follows the IQ result (XEP-0060 §6.1.7).
            let (server, owner, to) = (server.clone(), owner.clone(), jid.clone());
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                route(&server, event_message(&owner, &to, ev)).await;
            });
        }
    }
    Ok(Some(
        elem("pubsub", NS_PUBSUB).child(
            elem("subscription", NS_PUBSUB)
                .with("node", node)
                .with("jid", jid.to_string())
                .with("subid", subid)
                .with("subscription", "subscribed"),
        ),
    ))
}

/// §6.2: remove the requester's subscription to `node`.
pub async fn unsubscribe(server: &Arc<Server>, account: i64, from: &Jid, el: &Element) -> IqReply {
    let node = el
        .attr("node")
        .ok_or_else(|| perr(Condition::BadRequest, Some("nodeid-required")))?
        .to_string();
    let jid = subscriber(from, el)?.to_string();
    let removed = server
        .store
        .call(move |c| {
            if store::pep::node(c, account, &node)?.is_none() {
                return Ok(None);
            }
            Ok(Some(store::pep_subscriptions::unsubscribe(c, account, &node, &jid)?))
        })
        .await
        .map_err(internal)?
        .ok_or_else(|| StanzaError::from(Condition::ItemNotFound))?;
    if !removed {
        return Err(perr(Condition::UnexpectedRequest, Some("not-subscribed")));
    }
    Ok(None)
}

/// The explicit subscribers of a node (for notifications).
pub async fn subscribers(server: &Arc<Server>, account: i64, node: &str) -> Vec<Jid> {
    let n = node.to_string();
    match server
        .store
        .call(move |c| store::pep_subscriptions::subscribers(c, account, &n))
        .await
    {
        Ok(v) => v.into_iter().filter_map(|j| Jid::new(&j).ok()).collect(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read PEP subscribers");
            vec![]
        }
    }
}

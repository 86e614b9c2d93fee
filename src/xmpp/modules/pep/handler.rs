//! The PEP IQ requests: publish, retract, items, create, configure,
//! delete, purge, subscribe and unsubscribe, answered for the owner or a contact.

use super::*;

pub(super) async fn handle(ctx: IqCtx<'_>) -> IqReply {
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
    let owner_ns = p.has_ns(NS_OWNER);
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
            if node == crate::xmpp::modules::bookmarks::NS_0402 {
                crate::xmpp::modules::bookmarks::sync(
                    ctx.server,
                    &owner,
                    crate::xmpp::modules::bookmarks::Source::Native,
                )
                .await;
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
        (false, true, "subscribe") => subscribe::subscribe(ctx.server, &owner, account, ctx.from, first).await,
        (false, true, "unsubscribe") => subscribe::unsubscribe(ctx.server, account, ctx.from, first).await,
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

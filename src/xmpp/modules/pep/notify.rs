//! Who hears about a node: events to online resources that asked
//! (`+notify` in their caps) and to explicit subscribers, last items when a
//! resource comes online, and the caps queries that tell us which is which.

use super::*;

/// Send an event about `node` to every online resource that asked for it
/// (`node+notify` in its caps) and to its explicit subscribers, when they
/// may see the node.
pub(super) async fn notify(
    server: &Arc<Server>,
    owner: &BareJid,
    account: i64,
    node: &str,
    cfg: &NodeConfig,
    ev: Element,
) {
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
    for j in subscribe::subscribers(server, account, node).await {
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
pub(super) async fn send_last_items(
    server: &Arc<Server>,
    owner: BareJid,
    jid: FullJid,
    features: Arc<HashSet<String>>,
) {
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
pub(super) async fn on_presence(server: &Arc<Server>, p: &Element, from: &Jid, owner: &BareJid) {
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
pub(super) async fn on_iq_response(server: &Arc<Server>, iq: &Element) -> bool {
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

//! PEP: the OMEMO compliance sequence, publish-options, access models,
//! caps-filtered notifications and last items.

use super::*;

/// A client's disco#info with `+notify` for `nodes`, and its caps ver.
fn client_info(nodes: &[&str]) -> (DiscoInfoResult, String) {
    let mut features: BTreeSet<String> = [
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/caps",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for n in nodes {
        features.insert(format!("{n}+notify"));
    }
    let info = DiscoInfoResult {
        node: None,
        identities: vec![Identity::new("client", "phone", "en", "test")],
        features,
        extensions: vec![],
    };
    let ver = caps::hash_caps(&caps::compute_disco(&info), Algo::Sha_1).unwrap();
    use base64::Engine;
    let ver = base64::engine::general_purpose::STANDARD.encode(ver.hash);
    (info, ver)
}

fn caps_presence(ver: &str) -> Element {
    xml(&format!(
        "<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{CAPS_NODE}' ver='{ver}'/></presence>"
    ))
}

/// Answer the server's disco#info query about our caps.
async fn answer_caps_query(c: &mut TestClient, info: &DiscoInfoResult, ver: &str) {
    let q = c
        .expect("caps disco#info query", |e| {
            e.name() == "iq"
                && e.attr("type") == Some("get")
                && e.get_child("query", "http://jabber.org/protocol/disco#info").is_some()
        })
        .await;
    let node = q
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap()
        .attr("node")
        .unwrap()
        .to_string();
    assert_eq!(node, format!("{CAPS_NODE}#{ver}"));
    let mut info = info.clone();
    info.node = Some(node);
    let reply = Element::builder("iq", "jabber:client")
        .attr("type".try_into().unwrap(), "result")
        .attr("id".try_into().unwrap(), q.attr("id").unwrap())
        .attr("to".try_into().unwrap(), q.attr("from").unwrap())
        .append(Element::from(info))
        .build();
    c.send_el(reply).await;
}

fn is_event(e: &Element, from: &str, node: &str) -> bool {
    e.name() == "message"
        && e.attr("from") == Some(from)
        && e.get_child("event", EVENT)
            .and_then(|ev| ev.children().next())
            .is_some_and(|c| c.attr("node") == Some(node))
}

fn event_item_ids(e: &Element) -> Vec<String> {
    e.get_child("event", EVENT)
        .and_then(|ev| ev.get_child("items", EVENT))
        .map(|i| {
            i.children()
                .filter(|c| c.name() == "item")
                .filter_map(|c| c.attr("id").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn omemo_compliance_sequence_and_publish_options() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let mut a = s.client("alice", "pw", false).await;

    // Disco of the account says what the PEP service can do.
    let info = a
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        ))
        .await;
    let q = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert!(q
        .children()
        .any(|c| c.name() == "identity" && c.attr("category") == Some("pubsub") && c.attr("type") == Some("pep")));
    let feats: Vec<_> = q.children().filter_map(|c| c.attr("var")).collect();
    for f in [
        "http://jabber.org/protocol/pubsub",
        "http://jabber.org/protocol/pubsub#publish",
        "http://jabber.org/protocol/pubsub#publish-options",
        "http://jabber.org/protocol/pubsub#config-node",
        "http://jabber.org/protocol/pubsub#retract-items",
        "http://jabber.org/protocol/pubsub#delete-nodes",
        "http://jabber.org/protocol/pubsub#persistent-items",
        "http://jabber.org/protocol/pubsub#access-open",
        "http://jabber.org/protocol/pubsub#access-whitelist",
        "http://jabber.org/protocol/pubsub#multi-items",
        "urn:xmpp:pep-vcard-conversion:0",
    ] {
        assert!(feats.contains(&f), "missing {f} in {feats:?}");
    }

    // The OMEMO check: a fresh legacy node with access_model=open.
    let node = format!("eu.siacs.conversations.axolotl.{}", uuid::Uuid::new_v4());
    let r = publish(
        &mut a,
        &node,
        "current",
        "<list xmlns='eu.siacs.conversations.axolotl'><device id='1234'/></list>",
        &[("pubsub#access_model", "open")],
    )
    .await;
    assert!(is_result(&r), "{}", to_s(&r));
    assert_eq!(
        config_value(&mut a, &node, "pubsub#access_model").await.as_deref(),
        Some("open")
    );
    // Same options again: fine. Conflicting ones: XEP-0060 §7.1.5.
    let r = publish(
        &mut a,
        &node,
        "current",
        "<list xmlns='eu.siacs.conversations.axolotl'/>",
        &[("pubsub#access_model", "open")],
    )
    .await;
    assert!(is_result(&r), "{}", to_s(&r));
    let r = publish(
        &mut a,
        &node,
        "current",
        "<list xmlns='eu.siacs.conversations.axolotl'/>",
        &[("pubsub#access_model", "presence")],
    )
    .await;
    assert_eq!(
        error_of(&r),
        ("conflict".into(), Some(format!("{ERRORS}#precondition-not-met")))
    );
    let r = a
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='set'><pubsub xmlns='{OWNER}'><delete node='{node}'/></pubsub></iq>"
        )))
        .await;
    assert!(is_result(&r), "{}", to_s(&r));
    let r = items(&mut a, "alice@localhost", &node, "").await;
    assert_eq!(error_of(&r).0, "item-not-found");

    // persist_items + max_items=max (OMEMO 2 bundles, XEP-0402 bookmarks).
    let bundles = "urn:xmpp:omemo:2:bundles";
    for id in ["11", "22", "33"] {
        let r = publish(
            &mut a,
            bundles,
            id,
            &format!("<bundle xmlns='urn:xmpp:omemo:2'><spk id='{id}'/></bundle>"),
            &[
                ("pubsub#persist_items", "true"),
                ("pubsub#max_items", "max"),
                ("pubsub#access_model", "open"),
            ],
        )
        .await;
        assert!(is_result(&r), "{}", to_s(&r));
        // The id we asked for is echoed.
        let got = r
            .get_child("pubsub", PUBSUB)
            .unwrap()
            .get_child("publish", PUBSUB)
            .unwrap();
        assert_eq!(got.get_child("item", PUBSUB).unwrap().attr("id"), Some(id));
    }
    assert_eq!(
        config_value(&mut a, bundles, "pubsub#max_items").await.as_deref(),
        Some("max")
    );
    assert_eq!(
        config_value(&mut a, bundles, "pubsub#persist_items").await.as_deref(),
        Some("1")
    );
    let r = items(&mut a, "alice@localhost", bundles, "").await;
    assert_eq!(item_ids(&r), ["11", "22", "33"]);
    let r = items(&mut a, "alice@localhost", bundles, "max_items='1'").await;
    assert_eq!(item_ids(&r), ["33"]);
    let r = a
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='get' to='alice@localhost'><pubsub xmlns='{PUBSUB}'><items node='{bundles}'><item id='22'/></items></pubsub></iq>"
        )))
        .await;
    assert_eq!(item_ids(&r), ["22"]);
    let payload = r
        .get_child("pubsub", PUBSUB)
        .unwrap()
        .get_child("items", PUBSUB)
        .unwrap()
        .children()
        .next()
        .unwrap()
        .children()
        .next()
        .unwrap()
        .clone();
    assert_eq!(payload.name(), "bundle");
    assert_eq!(payload.ns(), "urn:xmpp:omemo:2");
    // Retract one.
    let r = a
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='set'><pubsub xmlns='{PUBSUB}'><retract node='{bundles}' notify='true'><item id='22'/></retract></pubsub></iq>"
        )))
        .await;
    assert!(is_result(&r), "{}", to_s(&r));
    let r = items(&mut a, "alice@localhost", bundles, "").await;
    assert_eq!(item_ids(&r), ["11", "33"]);

    // A numeric max_items trims; configure can change it afterwards.
    let devices = "urn:xmpp:omemo:2:devices";
    for id in ["a", "b", "c"] {
        let r = publish(
            &mut a,
            devices,
            id,
            "<devices xmlns='urn:xmpp:omemo:2'/>",
            &[("pubsub#max_items", "2")],
        )
        .await;
        assert!(is_result(&r), "{}", to_s(&r));
    }
    assert_eq!(
        item_ids(&items(&mut a, "alice@localhost", devices, "").await),
        ["b", "c"]
    );
    let r = a
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='set'><pubsub xmlns='{OWNER}'><configure node='{devices}'>\
             <x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
             <field var='pubsub#max_items'><value>1</value></field>\
             <field var='pubsub#access_model'><value>whitelist</value></field></x></configure></pubsub></iq>"
        )))
        .await;
    assert!(is_result(&r), "{}", to_s(&r));
    assert_eq!(item_ids(&items(&mut a, "alice@localhost", devices, "").await), ["c"]);
    assert_eq!(
        config_value(&mut a, devices, "pubsub#access_model").await.as_deref(),
        Some("whitelist")
    );
    // An unsupported option is a precondition failure, not silently ignored.
    let r = publish(
        &mut a,
        "urn:xmpp:avatar:metadata",
        "x",
        "<metadata xmlns='urn:xmpp:avatar:metadata'/>",
        &[("pubsub#itemreply", "publisher")],
    )
    .await;
    assert_eq!(error_of(&r).1, Some(format!("{ERRORS}#precondition-not-met")));
    // Items without an id get one.
    let r = a
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='set'><pubsub xmlns='{PUBSUB}'><publish node='urn:xmpp:microblog:0'><item><entry xmlns='http://www.w3.org/2005/Atom'/></item></publish></pubsub></iq>"
        )))
        .await;
    let id = r
        .get_child("pubsub", PUBSUB)
        .unwrap()
        .get_child("publish", PUBSUB)
        .unwrap()
        .get_child("item", PUBSUB)
        .unwrap()
        .attr("id")
        .unwrap()
        .to_string();
    assert!(!id.is_empty());
    // disco#items lists the nodes.
    let r = a
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        ))
        .await;
    let nodes: Vec<_> = r
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .unwrap()
        .children()
        .filter_map(|c| c.attr("node"))
        .collect();
    assert!(nodes.contains(&bundles) && nodes.contains(&devices), "{nodes:?}");
    s.stop().await;
}

#[tokio::test]
async fn access_models_for_other_accounts() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, "pw");
    }
    let mut a = online(&s, "alice").await;
    let mut b = online(&s, "bob").await;
    let mut c = online(&s, "carol").await;
    befriend(&mut a, "alice", &mut b, "bob").await;
    let nick = "http://jabber.org/protocol/nick";
    assert!(is_result(
        &publish(
            &mut a,
            nick,
            "current",
            "<nick xmlns='http://jabber.org/protocol/nick'>Al</nick>",
            &[]
        )
        .await
    ));
    assert!(is_result(
        &publish(
            &mut a,
            "open-node",
            "1",
            "<x xmlns='urn:test'/>",
            &[("pubsub#access_model", "open")]
        )
        .await
    ));
    assert!(is_result(
        &publish(
            &mut a,
            "closed",
            "1",
            "<x xmlns='urn:test'/>",
            &[("pubsub#access_model", "whitelist")]
        )
        .await
    ));
    assert!(is_result(
        &publish(
            &mut a,
            "friends",
            "1",
            "<x xmlns='urn:test'/>",
            &[("pubsub#access_model", "roster")]
        )
        .await
    ));
    // Default access model is presence: bob (subscribed) reads, carol does not.
    assert_eq!(item_ids(&items(&mut b, "alice@localhost", nick, "").await), ["current"]);
    let r = items(&mut c, "alice@localhost", nick, "").await;
    assert_eq!(
        error_of(&r),
        (
            "not-authorized".into(),
            Some(format!("{ERRORS}#presence-subscription-required"))
        )
    );
    assert_eq!(
        item_ids(&items(&mut c, "alice@localhost", "open-node", "").await),
        ["1"]
    );
    let r = items(&mut b, "alice@localhost", "closed", "").await;
    assert_eq!(
        error_of(&r),
        ("not-allowed".into(), Some(format!("{ERRORS}#closed-node")))
    );
    let r = items(&mut b, "alice@localhost", "friends", "").await;
    assert_eq!(
        error_of(&r),
        ("not-authorized".into(), Some(format!("{ERRORS}#not-in-roster-group")))
    );
    // Only the owner publishes or configures.
    let r = b
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='set' to='alice@localhost'><pubsub xmlns='{PUBSUB}'><publish node='open-node'><item id='2'><x xmlns='urn:test'/></item></publish></pubsub></iq>"
        )))
        .await;
    assert_eq!(error_of(&r).0, "forbidden");
    let r = b
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='set' to='alice@localhost'><pubsub xmlns='{OWNER}'><delete node='open-node'/></pubsub></iq>"
        )))
        .await;
    assert_eq!(error_of(&r).0, "forbidden");
    s.stop().await;
}

#[tokio::test]
async fn notifications_follow_caps_and_last_item_on_presence() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, "pw");
    }
    let mut a = online(&s, "alice").await;
    let mut b = online(&s, "bob").await;
    befriend(&mut a, "alice", &mut b, "bob").await;
    let nick = "http://jabber.org/protocol/nick";
    let devlist = "eu.siacs.conversations.axolotl.devicelist";
    assert!(is_result(
        &publish(
            &mut a,
            nick,
            "current",
            "<nick xmlns='http://jabber.org/protocol/nick'>Al</nick>",
            &[]
        )
        .await
    ));

    // Bob announces caps with nick+notify: the server asks once, then sends the last item.
    let (info, ver) = client_info(&[nick, devlist]);
    b.send_el(caps_presence(&ver)).await;
    answer_caps_query(&mut b, &info, &ver).await;
    let ev = b
        .expect("last nick item", |e| is_event(e, "alice@localhost", nick))
        .await;
    assert_eq!(ev.attr("type"), Some("headline"));
    assert_eq!(event_item_ids(&ev), ["current"]);
    let nick_el = ev
        .get_child("event", EVENT)
        .unwrap()
        .get_child("items", EVENT)
        .unwrap()
        .children()
        .next()
        .unwrap()
        .get_child("nick", nick)
        .unwrap()
        .text();
    assert_eq!(nick_el, "Al");

    // A new publish is pushed to bob.
    assert!(is_result(
        &publish(
            &mut a,
            devlist,
            "current",
            "<list xmlns='eu.siacs.conversations.axolotl'><device id='7'/></list>",
            &[]
        )
        .await
    ));
    let ev = b
        .expect("devicelist notification", |e| is_event(e, "alice@localhost", devlist))
        .await;
    assert_eq!(event_item_ids(&ev), ["current"]);

    // Carol has the same caps but no subscription: her directed presence makes
    // her a recipient, yet presence-access nodes stay hidden; open ones arrive.
    let mut c = s.client("carol", "pw", false).await;
    let mut p = caps_presence(&ver);
    p.set_attr(
        tokio_xmpp::parsers::minidom::rxml::Namespace::NONE,
        "to".try_into().unwrap(),
        "alice@localhost",
    );
    c.send_el(p).await;
    ping(&mut c).await;
    assert!(is_result(
        &publish(
            &mut a,
            nick,
            "current",
            "<nick xmlns='http://jabber.org/protocol/nick'>Alice</nick>",
            &[]
        )
        .await
    ));
    assert!(is_result(
        &publish(
            &mut a,
            devlist,
            "current",
            "<list xmlns='eu.siacs.conversations.axolotl'/>",
            &[("pubsub#access_model", "presence")]
        )
        .await
    ));
    // Make the devicelist open: carol must get that one and never the nick.
    let r = a
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='set'><pubsub xmlns='{OWNER}'><configure node='{devlist}'>\
             <x xmlns='jabber:x:data' type='submit'><field var='pubsub#access_model'><value>open</value></field></x></configure></pubsub></iq>"
        )))
        .await;
    assert!(is_result(&r), "{}", to_s(&r));
    assert!(is_result(
        &publish(
            &mut a,
            devlist,
            "current",
            "<list xmlns='eu.siacs.conversations.axolotl'><device id='8'/></list>",
            &[]
        )
        .await
    ));
    c.expect("open devicelist", |e| is_event(e, "alice@localhost", devlist))
        .await;
    assert!(
        !c.backlog.iter().any(|e| is_event(e, "alice@localhost", nick)),
        "carol got a presence-only node: {:?}",
        c.backlog.iter().map(to_s).collect::<Vec<_>>()
    );
    // Bob got the new nick (he is subscribed).
    let ev = b
        .expect("nick update", |e| {
            is_event(e, "alice@localhost", nick) && to_s(e).contains("Alice")
        })
        .await;
    assert_eq!(event_item_ids(&ev), ["current"]);

    // Bob goes away and comes back with the same caps: the cached ver is
    // used (no query to answer) and the last items arrive on presence.
    b.close().await;
    let mut b2 = s.client("bob", "pw", false).await;
    b2.send_el(caps_presence(&ver)).await;
    let ev = b2
        .expect("last nick on presence", |e| is_event(e, "alice@localhost", nick))
        .await;
    assert!(to_s(&ev).contains("Alice"));
    b2.expect("last devicelist on presence", |e| {
        is_event(e, "alice@localhost", devlist)
    })
    .await;

    // Retract and delete notifications.
    let r = a
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='set'><pubsub xmlns='{PUBSUB}'><retract node='{devlist}' notify='1'><item id='current'/></retract></pubsub></iq>"
        )))
        .await;
    assert!(is_result(&r));
    let ev = b2
        .expect("retract", |e| {
            is_event(e, "alice@localhost", devlist) && to_s(e).contains("retract")
        })
        .await;
    assert!(ev
        .get_child("event", EVENT)
        .unwrap()
        .get_child("items", EVENT)
        .unwrap()
        .get_child("retract", EVENT)
        .is_some());
    let r = a
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='set'><pubsub xmlns='{OWNER}'><delete node='{nick}'/></pubsub></iq>"
        )))
        .await;
    assert!(is_result(&r));
    let ev = b2
        .expect("delete", |e| {
            is_event(e, "alice@localhost", nick)
                && e.get_child("event", EVENT)
                    .unwrap()
                    .get_child("delete", EVENT)
                    .is_some()
        })
        .await;
    assert_eq!(ev.attr("type"), Some("headline"));
    s.stop().await;
}

#[tokio::test]
async fn own_resources_with_notify_get_own_events() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let bookmarks = "urn:xmpp:bookmarks:1";
    let (info, ver) = client_info(&[bookmarks]);
    let mut phone = s.client("alice", "pw", false).await;
    phone.send_el(caps_presence(&ver)).await;
    answer_caps_query(&mut phone, &info, &ver).await;
    ping(&mut phone).await;
    let mut laptop = online(&s, "alice").await;
    let r = publish(
        &mut laptop,
        bookmarks,
        "room@muc.example",
        "<conference xmlns='urn:xmpp:bookmarks:1' autojoin='true' name='Room'/>",
        &[
            ("pubsub#persist_items", "true"),
            ("pubsub#max_items", "max"),
            ("pubsub#send_last_published_item", "never"),
            ("pubsub#access_model", "whitelist"),
        ],
    )
    .await;
    assert!(is_result(&r), "{}", to_s(&r));
    let ev = phone
        .expect("own bookmark event", |e| is_event(e, "alice@localhost", bookmarks))
        .await;
    assert_eq!(event_item_ids(&ev), ["room@muc.example"]);
    s.stop().await;
}

//! Account data against the real daemon: PEP (XEP-0163 on XEP-0060, incl.
//! the OMEMO compliance sequence and caps-filtered notifications), vCard
//! with XEP-0398 conversion, private XML storage and blocking (XEP-0191).

mod common;
use common::*;
use std::collections::BTreeSet;
use tokio_xmpp::parsers::{
    caps,
    disco::{DiscoInfoResult, Identity},
    hashes::Algo,
    minidom::Element,
};

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const CAPS_NODE: &str = "https://client.example/test";

fn is_result(iq: &Element) -> bool {
    iq.attr("type") == Some("result")
}

/// The defined condition of an error reply, and its application-specific child.
fn error_of(st: &Element) -> (String, Option<String>) {
    let e = st
        .get_child("error", "jabber:client")
        .unwrap_or_else(|| panic!("not an error: {}", to_s(st)));
    let cond = e
        .children()
        .find(|c| c.ns() == STANZAS && c.name() != "text")
        .map(|c| c.name().to_string())
        .unwrap_or_default();
    let app = e
        .children()
        .find(|c| c.ns() != STANZAS)
        .map(|c| format!("{}#{}", c.ns(), c.name()));
    (cond, app)
}

fn to_s(e: &Element) -> String {
    String::from(e)
}

fn publish_options(fields: &[(&str, &str)]) -> String {
    if fields.is_empty() {
        return String::new();
    }
    let f: String = fields
        .iter()
        .map(|(k, v)| format!("<field var='{k}'><value>{v}</value></field>"))
        .collect();
    format!(
        "<publish-options><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         {f}</x></publish-options>"
    )
}

async fn publish(c: &mut TestClient, node: &str, id: &str, payload: &str, opts: &[(&str, &str)]) -> Element {
    c.iq(xml(&format!(
        "<iq xmlns='jabber:client' type='set'><pubsub xmlns='{PUBSUB}'><publish node='{node}'>\
         <item id='{id}'>{payload}</item></publish>{}</pubsub></iq>",
        publish_options(opts)
    )))
    .await
}

async fn items(c: &mut TestClient, owner: &str, node: &str, extra: &str) -> Element {
    c.iq(xml(&format!(
        "<iq xmlns='jabber:client' type='get' to='{owner}'><pubsub xmlns='{PUBSUB}'><items node='{node}' {extra}/></pubsub></iq>"
    )))
    .await
}

fn item_ids(reply: &Element) -> Vec<String> {
    reply
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .map(|i| i.children().filter_map(|c| c.attr("id").map(str::to_string)).collect())
        .unwrap_or_default()
}

async fn config_value(c: &mut TestClient, node: &str, var: &str) -> Option<String> {
    let r = c
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='get'><pubsub xmlns='{OWNER}'><configure node='{node}'/></pubsub></iq>"
        )))
        .await;
    assert!(is_result(&r), "{}", to_s(&r));
    let x = r
        .get_child("pubsub", OWNER)?
        .get_child("configure", OWNER)?
        .get_child("x", "jabber:x:data")?;
    x.children()
        .find(|f| f.attr("var") == Some(var))
        .and_then(|f| f.get_child("value", "jabber:x:data"))
        .map(|v| v.text())
}

async fn ping(c: &mut TestClient) {
    let r = c
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        ))
        .await;
    assert!(is_result(&r));
}

/// `x` subscribes to `y` and `y` approves (both must be available).
async fn subscribe(x: &mut TestClient, xn: &str, y: &mut TestClient, yn: &str) {
    x.send_el(xml(&format!(
        "<presence xmlns='jabber:client' type='subscribe' to='{yn}@localhost'/>"
    )))
    .await;
    y.expect("subscribe", |e| {
        e.name() == "presence" && e.attr("type") == Some("subscribe")
    })
    .await;
    y.send_el(xml(&format!(
        "<presence xmlns='jabber:client' type='subscribed' to='{xn}@localhost'/>"
    )))
    .await;
    x.expect("subscribed", |e| {
        e.name() == "presence" && e.attr("type") == Some("subscribed")
    })
    .await;
}

/// Make `a` and `b` subscribed to each other.
async fn befriend(a: &mut TestClient, an: &str, b: &mut TestClient, bn: &str) {
    subscribe(a, an, b, bn).await;
    subscribe(b, bn, a, an).await;
}

async fn online(s: &TestServer, name: &str) -> TestClient {
    let mut c = s.client(name, "pw", false).await;
    c.send_el(xml("<presence xmlns='jabber:client'/>")).await;
    ping(&mut c).await;
    c
}

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

#[tokio::test]
async fn vcard_and_avatar_conversion() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = s.client("alice", "pw", false).await;
    let mut b = s.client("bob", "pw", false).await;
    // No vCard yet: an empty one.
    let r = b
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
        ))
        .await;
    assert!(is_result(&r));
    assert_eq!(r.get_child("vCard", "vcard-temp").unwrap().children().count(), 0);
    // Set with a PHOTO: readable by others, and published as a XEP-0084 avatar.
    let png = b"\x89PNG\r\n\x1a\nnot really a picture".to_vec();
    let r = a
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='set'><vCard xmlns='vcard-temp'><FN>Alice</FN>\
             <PHOTO><TYPE>image/png</TYPE><BINVAL>{}</BINVAL></PHOTO></vCard></iq>",
            b64.encode(&png)
        )))
        .await;
    assert!(is_result(&r), "{}", to_s(&r));
    let r = b
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
        ))
        .await;
    assert_eq!(
        r.get_child("vCard", "vcard-temp")
            .unwrap()
            .get_child("FN", "vcard-temp")
            .unwrap()
            .text(),
        "Alice"
    );
    use sha1::Digest;
    let id: String = sha1::Sha1::digest(&png).iter().map(|b| format!("{b:02x}")).collect();
    let meta = items(&mut b, "alice@localhost", "urn:xmpp:avatar:metadata", "").await;
    assert!(is_result(&meta), "{}", to_s(&meta));
    assert_eq!(item_ids(&meta), std::slice::from_ref(&id));
    let info = meta
        .get_child("pubsub", PUBSUB)
        .unwrap()
        .get_child("items", PUBSUB)
        .unwrap()
        .children()
        .next()
        .unwrap()
        .get_child("metadata", "urn:xmpp:avatar:metadata")
        .unwrap()
        .get_child("info", "urn:xmpp:avatar:metadata")
        .unwrap()
        .clone();
    assert_eq!(info.attr("bytes"), Some(png.len().to_string().as_str()));
    assert_eq!(info.attr("type"), Some("image/png"));
    let data = items(&mut b, "alice@localhost", "urn:xmpp:avatar:data", "").await;
    let d = data
        .get_child("pubsub", PUBSUB)
        .unwrap()
        .get_child("items", PUBSUB)
        .unwrap()
        .children()
        .next()
        .unwrap()
        .get_child("data", "urn:xmpp:avatar:data")
        .unwrap()
        .text();
    assert_eq!(b64.decode(d.trim()).unwrap(), png);

    // The other way: an avatar published over PEP becomes the vCard PHOTO.
    let jpeg = b"\xff\xd8\xff\xe0 a second picture".to_vec();
    let id2: String = sha1::Sha1::digest(&jpeg).iter().map(|b| format!("{b:02x}")).collect();
    let r = publish(
        &mut a,
        "urn:xmpp:avatar:data",
        &id2,
        &format!("<data xmlns='urn:xmpp:avatar:data'>{}</data>", b64.encode(&jpeg)),
        &[],
    )
    .await;
    assert!(is_result(&r), "{}", to_s(&r));
    let r = publish(
        &mut a,
        "urn:xmpp:avatar:metadata",
        &id2,
        &format!(
            "<metadata xmlns='urn:xmpp:avatar:metadata'><info id='{id2}' bytes='{}' type='image/jpeg'/></metadata>",
            jpeg.len()
        ),
        &[],
    )
    .await;
    assert!(is_result(&r), "{}", to_s(&r));
    let r = b
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
        ))
        .await;
    let card = r.get_child("vCard", "vcard-temp").unwrap();
    assert_eq!(
        card.get_child("FN", "vcard-temp").unwrap().text(),
        "Alice",
        "other fields kept"
    );
    let photo = card.get_child("PHOTO", "vcard-temp").unwrap();
    assert_eq!(photo.get_child("TYPE", "vcard-temp").unwrap().text(), "image/jpeg");
    assert_eq!(
        b64.decode(photo.get_child("BINVAL", "vcard-temp").unwrap().text().trim())
            .unwrap(),
        jpeg
    );
    // Nobody else sets alice's vCard.
    let r = b
        .iq(xml("<iq xmlns='jabber:client' type='set' to='alice@localhost'><vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard></iq>"))
        .await;
    assert_eq!(error_of(&r).0, "forbidden");
    s.stop().await;
}

#[tokio::test]
async fn private_xml_storage() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = s.client("alice", "pw", false).await;
    let mut b = s.client("bob", "pw", false).await;
    let r = a
        .iq(xml("<iq xmlns='jabber:client' type='get'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>"))
        .await;
    assert!(is_result(&r));
    let st = r
        .get_child("query", "jabber:iq:private")
        .unwrap()
        .get_child("storage", "storage:bookmarks")
        .unwrap();
    assert_eq!(st.children().count(), 0, "nothing stored yet: the empty element");
    let r = a
        .iq(xml("<iq xmlns='jabber:client' type='set'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>\
                 <conference jid='room@muc.example' autojoin='true' name='Room'><nick>al</nick></conference></storage></query></iq>"))
        .await;
    assert!(is_result(&r), "{}", to_s(&r));
    let r = a
        .iq(xml("<iq xmlns='jabber:client' type='get'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>"))
        .await;
    let st = r
        .get_child("query", "jabber:iq:private")
        .unwrap()
        .get_child("storage", "storage:bookmarks")
        .unwrap();
    let conf = st.get_child("conference", "storage:bookmarks").unwrap();
    assert_eq!(conf.attr("jid"), Some("room@muc.example"));
    assert_eq!(conf.get_child("nick", "storage:bookmarks").unwrap().text(), "al");
    // Other namespaces are separate; other accounts cannot look.
    let r = a
        .iq(xml("<iq xmlns='jabber:client' type='get'><query xmlns='jabber:iq:private'><prefs xmlns='urn:test:prefs'/></query></iq>"))
        .await;
    assert_eq!(
        r.get_child("query", "jabber:iq:private")
            .unwrap()
            .get_child("prefs", "urn:test:prefs")
            .unwrap()
            .children()
            .count(),
        0
    );
    let r = b
        .iq(xml("<iq xmlns='jabber:client' type='get' to='alice@localhost'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>"))
        .await;
    assert_eq!(error_of(&r).0, "forbidden");
    let r = a
        .iq(xml(
            "<iq xmlns='jabber:client' type='set'><query xmlns='jabber:iq:private'/></iq>",
        ))
        .await;
    assert_eq!(error_of(&r).0, "not-acceptable");
    s.stop().await;
}

fn body(to: &str, text: &str) -> Element {
    xml(&format!(
        "<message xmlns='jabber:client' type='chat' to='{to}'><body>{text}</body></message>"
    ))
}

#[tokio::test]
async fn blocking_pushes_and_enforcement() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, "pw");
    }
    // Domain disco advertises blocking.
    let mut a = online(&s, "alice").await;
    let r = a
        .iq(xml("<iq xmlns='jabber:client' type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"))
        .await;
    assert!(to_s(&r).contains("urn:xmpp:blocking"));
    let mut a2 = online(&s, "alice").await;
    let mut a3 = online(&s, "alice").await;
    let mut b = online(&s, "bob").await;
    let mut c = online(&s, "carol").await;
    for x in [&mut a, &mut a2] {
        let r = x
            .iq(xml(
                "<iq xmlns='jabber:client' type='get'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
            ))
            .await;
        assert_eq!(
            r.get_child("blocklist", "urn:xmpp:blocking")
                .unwrap()
                .children()
                .count(),
            0
        );
    }
    let r = a
        .iq(xml("<iq xmlns='jabber:client' type='set'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>"))
        .await;
    assert!(is_result(&r), "{}", to_s(&r));
    let is_push = |e: &Element| {
        e.name() == "iq" && e.attr("type") == Some("set") && e.get_child("block", "urn:xmpp:blocking").is_some()
    };
    a.expect("block push to the requester", is_push).await;
    a2.expect("block push to the other interested resource", is_push).await;
    // a3 never asked for the list: a later message to it arrives with no push before it.
    a.send_el(body(&a3.full_jid(), "after the block")).await;
    a3.expect("message from a", |e| e.name() == "message").await;
    assert!(!a3.backlog.iter().any(is_push), "a3 did not request the blocklist");
    let r = a2
        .iq(xml(
            "<iq xmlns='jabber:client' type='get'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
        ))
        .await;
    assert!(to_s(&r).contains("bob@localhost"));

    // Inbound: bob's message is refused with service-unavailable, never delivered.
    b.send_el(body("alice@localhost", "from bob")).await;
    let e = b
        .expect("error", |e| e.name() == "message" && e.attr("type") == Some("error"))
        .await;
    assert_eq!(error_of(&e).0, "service-unavailable");
    let r = b
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='get' to='{}'><query xmlns='jabber:iq:version'/></iq>",
            a.full_jid()
        )))
        .await;
    assert_eq!(error_of(&r).0, "service-unavailable");
    b.send_el(xml(
        "<presence xmlns='jabber:client' to='alice@localhost'><status>hi</status></presence>",
    ))
    .await;
    ping(&mut b).await;
    c.send_el(body("alice@localhost", "from carol")).await;
    let m = a
        .expect("carol's message", |e| {
            e.name() == "message" && to_s(e).contains("from carol")
        })
        .await;
    assert!(m.attr("from").unwrap().starts_with("carol@"));
    assert!(
        !a.backlog
            .iter()
            .any(|e| e.attr("from").is_some_and(|f| f.starts_with("bob@"))),
        "nothing from bob got through: {:?}",
        a.backlog.iter().map(to_s).collect::<Vec<_>>()
    );

    // Outbound: alice cannot write to bob.
    a.send_el(body("bob@localhost", "to bob")).await;
    let e = a
        .expect("not-acceptable", |e| {
            e.name() == "message" && e.attr("type") == Some("error")
        })
        .await;
    assert_eq!(
        error_of(&e),
        ("not-acceptable".into(), Some("urn:xmpp:blocking:errors#blocked".into()))
    );
    let r = a
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='get' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
            b.full_jid()
        )))
        .await;
    assert_eq!(error_of(&r).0, "not-acceptable");

    // Unblock everything: pushes, and messages flow again.
    let r = a
        .iq(xml(
            "<iq xmlns='jabber:client' type='set'><unblock xmlns='urn:xmpp:blocking'/></iq>",
        ))
        .await;
    assert!(is_result(&r));
    a2.expect("unblock push", |e| {
        e.name() == "iq" && e.get_child("unblock", "urn:xmpp:blocking").is_some()
    })
    .await;
    b.send_el(body("alice@localhost", "bob again")).await;
    a.expect("bob's message after unblock", |e| {
        e.name() == "message" && to_s(e).contains("bob again")
    })
    .await;
    // A domain-wide block covers every account there.
    let r = a
        .iq(xml("<iq xmlns='jabber:client' type='set'><block xmlns='urn:xmpp:blocking'><item jid='localhost'/></block></iq>"))
        .await;
    assert!(is_result(&r));
    c.send_el(body("alice@localhost", "carol blocked")).await;
    let e = c
        .expect("error", |e| e.name() == "message" && e.attr("type") == Some("error"))
        .await;
    assert_eq!(error_of(&e).0, "service-unavailable");
    // Bad input.
    let r = a
        .iq(xml(
            "<iq xmlns='jabber:client' type='set'><block xmlns='urn:xmpp:blocking'/></iq>",
        ))
        .await;
    assert_eq!(error_of(&r).0, "bad-request");
    let r = a
        .iq(xml(
            "<iq xmlns='jabber:client' type='set'><block xmlns='urn:xmpp:blocking'><item jid='@@bad'/></block></iq>",
        ))
        .await;
    assert_eq!(error_of(&r).0, "jid-malformed");
    // A new session sees the list.
    a.close().await;
    let mut a4 = s.client("alice", "pw", false).await;
    let r = a4
        .iq(xml(
            "<iq xmlns='jabber:client' type='get'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
        ))
        .await;
    assert!(
        to_s(&r).contains("jid=\"localhost\"") || to_s(&r).contains("jid='localhost'"),
        "{}",
        to_s(&r)
    );
    s.stop().await;
}

async fn private_bookmarks(c: &mut TestClient) -> Element {
    let r = c
        .iq(xml("<iq xmlns='jabber:client' type='get'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>"))
        .await;
    assert!(is_result(&r), "{}", to_s(&r));
    r.get_child("query", "jabber:iq:private")
        .unwrap()
        .get_child("storage", "storage:bookmarks")
        .unwrap()
        .clone()
}

fn rooms_of(storage: &Element) -> Vec<String> {
    storage
        .children()
        .filter(|c| c.name() == "conference")
        .filter_map(|c| c.attr("jid").map(str::to_string))
        .collect()
}

#[tokio::test]
async fn bookmarks_stay_in_sync_across_0048_and_0402() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let mut a = s.client("alice", "pw", false).await;
    let r = a
        .iq(xml("<iq xmlns='jabber:client' type='get' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"))
        .await;
    for f in [
        "urn:xmpp:bookmarks:1#compat",
        "urn:xmpp:bookmarks:1#compat-pep",
        "urn:xmpp:bookmarks-conversion:0",
    ] {
        assert!(to_s(&r).contains(f), "missing {f}");
    }
    // An old client writes XEP-0048 into private storage...
    let r = a
        .iq(xml(
            "<iq xmlns='jabber:client' type='set'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>\
                 <conference jid='one@muc.example' autojoin='true' name='One'><nick>al</nick></conference>\
                 <url name='site' url='https://example.org/'/></storage></query></iq>",
        ))
        .await;
    assert!(is_result(&r), "{}", to_s(&r));
    // ...and a XEP-0402 client sees it as a native bookmark, a XEP-0223 one in PEP.
    let r = items(&mut a, "alice@localhost", "urn:xmpp:bookmarks:1", "").await;
    assert_eq!(item_ids(&r), ["one@muc.example"]);
    let conf = r
        .get_child("pubsub", PUBSUB)
        .unwrap()
        .get_child("items", PUBSUB)
        .unwrap()
        .children()
        .next()
        .unwrap()
        .get_child("conference", "urn:xmpp:bookmarks:1")
        .unwrap()
        .clone();
    assert_eq!(conf.attr("name"), Some("One"));
    assert_eq!(conf.attr("autojoin"), Some("true"));
    assert_eq!(conf.get_child("nick", "urn:xmpp:bookmarks:1").unwrap().text(), "al");
    assert_eq!(
        config_value(&mut a, "urn:xmpp:bookmarks:1", "pubsub#access_model")
            .await
            .as_deref(),
        Some("whitelist")
    );
    let r = items(&mut a, "alice@localhost", "storage:bookmarks", "").await;
    assert!(to_s(&r).contains("one@muc.example"), "{}", to_s(&r));

    // A XEP-0402 client adds a room: private storage follows (URL bookmarks kept).
    let r = publish(
        &mut a,
        "urn:xmpp:bookmarks:1",
        "two@muc.example",
        "<conference xmlns='urn:xmpp:bookmarks:1' name='Two'/>",
        &[
            ("pubsub#persist_items", "true"),
            ("pubsub#max_items", "max"),
            ("pubsub#send_last_published_item", "never"),
            ("pubsub#access_model", "whitelist"),
        ],
    )
    .await;
    assert!(is_result(&r), "{}", to_s(&r));
    let st = private_bookmarks(&mut a).await;
    assert_eq!(rooms_of(&st), ["one@muc.example", "two@muc.example"]);
    assert!(
        st.children().any(|c| c.name() == "url"),
        "URL bookmarks survive: {}",
        to_s(&st)
    );
    // Retracting a native bookmark removes it everywhere.
    let r = a
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='set'><pubsub xmlns='{PUBSUB}'><retract node='urn:xmpp:bookmarks:1' notify='true'><item id='one@muc.example'/></retract></pubsub></iq>"
        )))
        .await;
    assert!(is_result(&r), "{}", to_s(&r));
    assert_eq!(rooms_of(&private_bookmarks(&mut a).await), ["two@muc.example"]);
    // A XEP-0048-over-PEP client replaces the list: the other two follow.
    let r = publish(
        &mut a,
        "storage:bookmarks",
        "current",
        "<storage xmlns='storage:bookmarks'><conference jid='three@muc.example' autojoin='false'/></storage>",
        &[],
    )
    .await;
    assert!(is_result(&r), "{}", to_s(&r));
    assert_eq!(
        item_ids(&items(&mut a, "alice@localhost", "urn:xmpp:bookmarks:1", "").await),
        ["three@muc.example"]
    );
    assert_eq!(rooms_of(&private_bookmarks(&mut a).await), ["three@muc.example"]);
    s.stop().await;
}

//! Explicit XEP-0060 subscriptions to PEP nodes (§6.1, §6.2) against the
//! real daemon: a client without caps subscribes, gets the last item at
//! once and later publishes, stops getting them after unsubscribing; access
//! models and the XEP's error conditions hold; deleting a node ends its
//! subscriptions.

mod common;
use common::*;
use minidom::Element;
use std::time::Duration;

/// The complete `<iq/>` with `id` in `raw`, parsed (None while incomplete).
fn find_iq(raw: &str, id: &str) -> Option<Element> {
    let at = raw.find(&format!("id='{id}'"))?;
    let start = raw[..at].rfind("<iq")?;
    let open_end = start + raw[start..].find('>')?;
    let end = if raw[..open_end].ends_with('/') {
        open_end + 1
    } else {
        start + raw[start..].find("</iq>")? + 5
    };
    let text = &raw[start..end];
    if text[..text.find('>').unwrap_or(text.len())].contains("xmlns=") {
        text.parse().ok()
    } else {
        text.replacen("<iq", "<iq xmlns='jabber:client'", 1).parse().ok()
    }
}

/// Send `body` (an IQ with `id`) and return the answer; what else arrived stays in `received`.
async fn iq(c: &mut RawClient, id: &str, body: &str) -> Element {
    c.send(body).await;
    c.read_until(&format!("id='{id}'")).await;
    for _ in 0..200 {
        if let Some(e) = find_iq(&c.received, id) {
            return e;
        }
        c.read_for(Duration::from_millis(100)).await;
    }
    panic!("no complete answer to {id}: {}", c.received)
}

/// The stanza error's condition and pubsub#errors child names.
fn error(e: &Element) -> (String, String) {
    let err = e
        .get_child("error", "jabber:client")
        .unwrap_or_else(|| panic!("not an error: {e:?}"));
    let cond = err
        .children()
        .find(|c| c.ns() == "urn:ietf:params:xml:ns:xmpp-stanzas")
        .map(|c| c.name().to_string())
        .unwrap_or_default();
    let app = err
        .children()
        .find(|c| c.ns() == "http://jabber.org/protocol/pubsub#errors")
        .map(|c| c.name().to_string())
        .unwrap_or_default();
    (cond, app)
}

fn publish(id: &str, node: &str, item: &str, access: &str) -> String {
    format!(
        "<iq type='set' id='{id}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{node}'>\
         <item id='{item}'><status xmlns='urn:example:status'>{item}</status></item></publish>\
         <publish-options><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var='pubsub#access_model'><value>{access}</value></field></x></publish-options></pubsub></iq>"
    )
}

fn sub(verb: &str, id: &str, node: &str, jid: &str) -> String {
    format!(
        "<iq type='set' id='{id}' to='alice@localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
         <{verb} node='{node}' jid='{jid}'/></pubsub></iq>"
    )
}

/// A ping round trip: whatever the server queued for `c` before it has arrived.
async fn barrier(c: &mut RawClient, id: &str) {
    iq(
        c,
        id,
        &format!("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"),
    )
    .await;
}

#[tokio::test]
async fn explicit_subscribers_get_the_last_item_and_later_publishes() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, "pw");
    }
    let mut a = RawClient::login_as(s.c2s, "alice", "pw", Some("desk")).await;
    let node = "urn:example:status";
    let r = iq(&mut a, "p1", &publish("p1", node, "one", "open")).await;
    assert_eq!(r.attr("type"), Some("result"));

    // Bob's client sends no caps: only an explicit subscription brings events.
    let mut b = RawClient::login_as(s.c2s, "bob", "pw", Some("bot")).await;
    let r = iq(&mut b, "s0", &sub("subscribe", "s0", node, "alice@localhost")).await;
    assert_eq!(error(&r), ("bad-request".into(), "invalid-jid".into()));
    let r = iq(&mut b, "s1", &sub("subscribe", "s1", node, "bob@localhost/bot")).await;
    assert_eq!(r.attr("type"), Some("result"));
    let subscription = r
        .get_child("pubsub", "http://jabber.org/protocol/pubsub")
        .and_then(|p| p.get_child("subscription", "http://jabber.org/protocol/pubsub"))
        .expect("a subscription element");
    assert_eq!(subscription.attr("subscription"), Some("subscribed"));
    assert_eq!(subscription.attr("jid"), Some("bob@localhost/bot"));
    assert!(subscription.attr("subid").is_some_and(|s| !s.is_empty()));
    // The last item, at once.
    b.read_until("<status xmlns='urn:example:status'>one</status>").await;
    b.received.clear();

    let r = iq(&mut a, "p2", &publish("p2", node, "two", "open")).await;
    assert_eq!(r.attr("type"), Some("result"));
    let got = b.read_until(">two</status>").await;
    assert!(got.contains("http://jabber.org/protocol/pubsub#event"), "{got}");
    b.received.clear();

    // Unsubscribed: the next publish does not reach Bob.
    let r = iq(&mut b, "u1", &sub("unsubscribe", "u1", node, "bob@localhost/bot")).await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = iq(&mut b, "u2", &sub("unsubscribe", "u2", node, "bob@localhost/bot")).await;
    assert_eq!(error(&r), ("unexpected-request".into(), "not-subscribed".into()));
    b.received.clear();
    let r = iq(&mut a, "p3", &publish("p3", node, "three", "open")).await;
    assert_eq!(r.attr("type"), Some("result"));
    barrier(&mut b, "ping1").await;
    assert!(!b.received.contains(">three</status>"), "{}", b.received);

    // A missing node, and a node open only to presence subscribers.
    let r = iq(
        &mut b,
        "s2",
        &sub("subscribe", "s2", "urn:example:none", "bob@localhost/bot"),
    )
    .await;
    assert_eq!(error(&r).0, "item-not-found");
    let r = iq(&mut a, "p4", &publish("p4", "urn:example:private", "x", "presence")).await;
    assert_eq!(r.attr("type"), Some("result"));
    let mut c = RawClient::login_as(s.c2s, "carol", "pw", Some("c")).await;
    let r = iq(
        &mut c,
        "s3",
        &sub("subscribe", "s3", "urn:example:private", "carol@localhost/c"),
    )
    .await;
    assert_eq!(
        error(&r),
        ("not-authorized".into(), "presence-subscription-required".into())
    );

    // Deleting the node ends the subscription: a new node of the same name starts empty of subscribers.
    // (A bare-JID subscription reaches available resources.)
    b.send("<presence/>").await;
    let r = iq(&mut b, "s4", &sub("subscribe", "s4", node, "bob@localhost")).await;
    assert_eq!(r.attr("type"), Some("result"));
    b.read_until(">three</status>").await;
    let r = iq(
        &mut a,
        "d1",
        &format!("<iq type='set' id='d1'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><delete node='{node}'/></pubsub></iq>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    b.received.clear();
    let r = iq(&mut a, "p5", &publish("p5", node, "four", "open")).await;
    assert_eq!(r.attr("type"), Some("result"));
    barrier(&mut b, "ping2").await;
    assert!(!b.received.contains(">four</status>"), "{}", b.received);
    s.stop().await;
}

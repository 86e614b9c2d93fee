//! Blocking (XEP-0191): pushes to interested resources and enforcement.

use super::*;

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

//! The message archive (XEP-0313) against the real daemon: both parties'
//! rows of a message between two local accounts, the ids handed to clients
//! live and in query results, paging by those ids.

mod common;
use common::*;

/// A MAM query with `with` and an RSM `<set/>`.
fn query(id: &str, with: &str, rsm: &str) -> String {
    format!(
        "<iq type='set' id='{id}'><query xmlns='urn:xmpp:mam:2' queryid='{id}'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>\
         <field var='with'><value>{with}</value></field></x>\
         <set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set></query></iq>"
    )
}

/// The `<result/>` ids of a query's answer, in order.
fn result_ids(xml: &str) -> Vec<String> {
    xml.match_indices("<result ")
        .map(|(i, _)| attr_after(&xml[i..], "<result ", "id"))
        .collect()
}

#[tokio::test]
async fn both_parties_archive_the_message_as_sent() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = RawClient::login_as(s.c2s, "alice", "pw", Some("phone")).await;
    a.send("<presence/>").await;
    let mut b = RawClient::login_as(s.c2s, "bob", "pw", Some("desk")).await;
    b.send("<presence/>").await;
    a.send("<iq type='get' id='p0' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    a.read_until("id='p0'").await;
    a.received.clear();
    b.send("<message type='chat' to='alice@localhost' id='m1'><body>one &amp; only</body></message>")
        .await;
    // A message that a later MessageOut hook changes (carbons drop
    // `<private/>`): each row has its own text.
    b.send("<message type='chat' to='alice@localhost' id='m2'><body>second</body><private xmlns='urn:xmpp:carbons:2'/></message>")
        .await;
    let live = a.read_until("second").await;
    let live_id = attr_after(&live, "<stanza-id", "id");
    assert_eq!(attr_after(&live, "<stanza-id", "by"), "alice@localhost");
    a.send(&query("qa", "bob@localhost", "<max>10</max>")).await;
    let r = a.read_until("</fin>").await;
    let ids = result_ids(&r);
    assert_eq!(ids.len(), 2, "{r}");
    assert_eq!(ids[0], live_id, "the live stanza-id is the archive id: {r}");
    assert_ne!(ids[0], ids[1], "{r}");
    assert!(r.contains("one &amp; only") && r.contains("second"), "{r}");
    assert!(r.contains("from='bob@localhost/desk'"), "{r}");
    b.send(&query("qb", "alice@localhost", "<max>10</max>")).await;
    let r = b.read_until("</fin>").await;
    assert_eq!(result_ids(&r).len(), 2, "{r}");
    assert!(r.contains("one &amp; only") && r.contains("second"), "{r}");
    assert!(r.contains("to='alice@localhost'"), "{r}");
    // The sender's row keeps what it sent, `<private/>` included.
    assert!(r.contains("<private xmlns='urn:xmpp:carbons:2'"), "{r}");
    s.stop().await;
}

#[tokio::test]
async fn ids_survive_a_restart_and_page_in_order() {
    let mut s = TestServer::start().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut b = RawClient::login_as(s.c2s, "bob", "pw", Some("desk")).await;
    for i in 1..=3 {
        b.send(&format!(
            "<message type='chat' to='alice@localhost'><body>before{i}</body></message>"
        ))
        .await;
    }
    b.send(&query("q1", "alice@localhost", "<max>10</max>")).await;
    let r = b.read_until("</fin>").await;
    let first = result_ids(&r);
    assert_eq!(first.len(), 3, "{r}");
    drop(b);
    s.restart().await;
    let mut b = RawClient::login_as(s.c2s, "bob", "pw", Some("desk")).await;
    for i in 1..=2 {
        b.send(&format!(
            "<message type='chat' to='alice@localhost'><body>after{i}</body></message>"
        ))
        .await;
    }
    b.send(&query(
        "q2",
        "alice@localhost",
        &format!("<max>10</max><after>{}</after>", first[2]),
    ))
    .await;
    let r = b.read_until("</fin>").await;
    let later = result_ids(&r);
    assert_eq!(later.len(), 2, "{r}");
    assert!(
        r.contains("after1") && r.contains("after2") && !r.contains("before"),
        "{r}"
    );
    for (x, y) in first.iter().chain(&later).zip(first.iter().chain(&later).skip(1)) {
        assert!(
            x.parse::<u64>().unwrap() < y.parse::<u64>().unwrap(),
            "ids increase across the restart: {first:?} {later:?}"
        );
    }
    // before-id / after-id in the form, and `ids`.
    b.received.clear();
    b.send(&format!(
        "<iq type='set' id='q3'><query xmlns='urn:xmpp:mam:2' queryid='q3'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>\
         <field var='after-id'><value>{}</value></field><field var='before-id'><value>{}</value></field></x></query></iq>",
        first[0], later[1]
    ))
    .await;
    let r = b.read_until("</fin>").await;
    assert_eq!(
        result_ids(&r),
        [first[1].clone(), first[2].clone(), later[0].clone()],
        "{r}"
    );
    b.received.clear();
    b.send(&format!(
        "<iq type='set' id='q4'><query xmlns='urn:xmpp:mam:2' queryid='q4'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>\
         <field var='ids'><value>{}</value><value>{}</value></field></x></query></iq>",
        first[1], later[0]
    ))
    .await;
    let r = b.read_until("</fin>").await;
    assert_eq!(result_ids(&r), [first[1].clone(), later[0].clone()], "{r}");
    s.stop().await;
}

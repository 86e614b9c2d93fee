//! The message archive (XEP-0313) against the real daemon: both parties'
//! rows of a message between two local accounts, the ids handed to clients
//! live and in query results, paging by those ids.

mod common;
use common::*;

/// The value of `attr='…'` after `tag` in raw XML.
fn attr_after(xml: &str, tag: &str, attr: &str) -> String {
    let i = xml.find(tag).unwrap_or_else(|| panic!("{tag} not in {xml}"));
    let rest = &xml[i..];
    let a = format!("{attr}='");
    let j = rest.find(&a).unwrap_or_else(|| panic!("{attr} not in {rest}")) + a.len();
    rest[j..j + rest[j..].find('\'').unwrap()].to_string()
}

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

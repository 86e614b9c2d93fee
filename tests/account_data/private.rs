//! Private XML storage (XEP-0049).

use super::*;

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

//! Bookmarks kept equal across XEP-0048 (private XML and PEP) and XEP-0402.

use super::*;

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

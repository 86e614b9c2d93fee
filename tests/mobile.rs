//! Mobile-grade XMPP against the real daemon: stream management with
//! resumption (XEP-0198), carbons (XEP-0280), MAM (XEP-0313), CSI (XEP-0352).
//! Each scenario runs twice: with sessions bound the legacy way (RFC 6120
//! SASL, restart, `<bind/>`) and with SASL2 + Bind 2 (XEP-0388/0386), which
//! must give the same session.

mod common;
use common::*;
use pushbox::xmpp::xml::ElementExt;

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// A `#[tokio::test]` per login method for a scenario `async fn name(how: Login)`.
macro_rules! both_logins {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test]
            async fn legacy() {
                super::$name(Login::Legacy).await
            }
            #[tokio::test]
            async fn bind2() {
                super::$name(Login::Bind2).await
            }
        }
    )*};
}

both_logins!(
    sm_resume_after_cut_connection_loses_and_duplicates_nothing,
    hibernation_timeout_moves_unacked_messages_offline,
    acks_are_answered_and_counted,
    carbons_reach_the_other_resource,
    mam_returns_history_paged_both_ways,
    csi_holds_presence_and_lets_messages_through,
    stream_features_advertise_mobile_support,
    push_published_for_offline_and_hibernated_accounts,
);

async fn send_chat(c: &mut RawClient, to: &str, body: &str) {
    c.send(&format!("<message type='chat' to='{to}'><body>{body}</body></message>"))
        .await;
}

async fn sm_resume_after_cut_connection_loses_and_duplicates_nothing(how: Login) {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let (mut a, phone) = RawClient::login_with(s.c2s, "alice", "pw", Some("phone"), how).await;
    a.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await;
    let en = a.read_until("<enabled").await;
    let en = a
        .read_until("/>")
        .await
        .split("<enabled")
        .nth(1)
        .map(|x| format!("<enabled{x}"))
        .unwrap_or(en);
    let id = attr_after(&en, "<enabled", "id");
    a.send("<presence/>").await;
    a.received.clear();
    let mut b = RawClient::login(s.c2s, "bob", "pw").await;
    for i in 1..=3 {
        send_chat(&mut b, &phone, &format!("m{i}")).await;
    }
    a.read_until("m3</body>").await;
    // Alice handled only the first message, then her network dies.
    drop(a);
    for i in 4..=5 {
        send_chat(&mut b, &phone, &format!("m{i}")).await;
    }
    // Make sure bob's messages were routed before resuming.
    b.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    b.read_until("id='sync'").await;
    let mut a2 = RawClient::connect_tls(s.c2s).await;
    a2.auth_plain("alice", "pw").await;
    a2.send(&format!("<resume xmlns='urn:xmpp:sm:3' h='1' previd='{id}'/>"))
        .await;
    let got = a2.read_until("m5</body>").await;
    assert!(got.contains("<resumed"), "{got}");
    for m in ["m2", "m3", "m4", "m5"] {
        assert_eq!(count(&got, &format!(">{m}<")), 1, "{m} exactly once: {got}");
    }
    assert_eq!(count(&got, ">m1<"), 0, "m1 was acknowledged: {got}");
    // The resumed stream is a working session.
    a2.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    a2.read_until("id='p'").await;
    s.stop().await;
}

#[tokio::test]
async fn resume_with_unknown_id_fails_cleanly() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let mut a = RawClient::connect_tls(s.c2s).await;
    a.auth_plain("alice", "pw").await;
    a.send("<resume xmlns='urn:xmpp:sm:3' h='0' previd='nope'/>").await;
    let r = a.read_until("</failed>").await;
    assert!(r.contains("item-not-found"), "{r}");
    // The client can still bind normally.
    a.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        .await;
    a.read_until("</bind>").await;
    s.stop().await;
}

async fn hibernation_timeout_moves_unacked_messages_offline(how: Login) {
    let s =
        TestServer::start_with("[limits]\nhibernation_timeout = \"1s\"\nconnections_per_ip_per_minute = 1000\n").await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let (mut a, _) = RawClient::login_with(s.c2s, "alice", "pw", Some("phone"), how).await;
    a.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await;
    a.read_until("<enabled").await;
    a.send("<presence/>").await;
    let mut b = RawClient::login(s.c2s, "bob", "pw").await;
    send_chat(&mut b, "alice@localhost", "never acked").await;
    a.read_until("never acked").await;
    drop(a);
    send_chat(&mut b, "alice@localhost", "sent while asleep").await;
    // After the hibernation window the session ends and both messages wait offline.
    let mut got = String::new();
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let (mut c, _) = RawClient::login_with(s.c2s, "alice", "pw", None, how).await;
        c.send("<presence/>").await;
        c.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            .await;
        got = c.read_until("id='sync'").await;
        if got.contains("sent while asleep") {
            break;
        }
    }
    assert_eq!(count(&got, "never acked"), 1, "{got}");
    assert_eq!(count(&got, "sent while asleep"), 1, "{got}");
    s.stop().await;
}

async fn acks_are_answered_and_counted(how: Login) {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let (mut a, _) = RawClient::login_with(s.c2s, "alice", "pw", None, how).await;
    a.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    a.read_until("<enabled").await;
    a.send("<iq type='get' id='1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq><iq type='get' id='2' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq><r xmlns='urn:xmpp:sm:3'/>").await;
    a.read_until("<a ").await;
    let r = a.read_until("/>").await;
    let h = attr_after(&r[r.find("<a ").unwrap()..], "<a ", "h");
    assert_eq!(h, "2", "{r}");
    // The server asks for acks of what it sent.
    assert!(r.contains("<r xmlns='urn:xmpp:sm:3'/>"), "{r}");
    a.send("<a xmlns='urn:xmpp:sm:3' h='2'/>").await;
    // Acknowledging more than was sent is an error.
    a.send("<a xmlns='urn:xmpp:sm:3' h='99'/>").await;
    let e = a.read_to_end().await;
    assert!(e.contains("<undefined-condition"), "{e}");
    s.stop().await;
}

async fn carbons_reach_the_other_resource(how: Login) {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let (mut phone, phone_jid) = RawClient::login_with(s.c2s, "alice", "pw", Some("phone"), how).await;
    let (mut laptop, _) = RawClient::login_with(s.c2s, "alice", "pw", Some("laptop"), how).await;
    for c in [&mut phone, &mut laptop] {
        c.send("<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
            .await;
        c.read_until("id='c'").await;
        c.send("<presence/>").await;
        c.received.clear();
    }
    let mut b = RawClient::login(s.c2s, "bob", "pw").await;
    b.send("<presence/>").await;
    send_chat(&mut b, &phone_jid, "to the phone").await;
    phone.read_until("to the phone").await;
    let r = laptop.read_until("to the phone").await;
    assert!(r.contains("<received xmlns='urn:xmpp:carbons:2'>"), "{r}");
    send_chat(&mut phone, "bob@localhost", "from the phone").await;
    let r = laptop.read_until("from the phone").await;
    assert!(r.contains("<sent xmlns='urn:xmpp:carbons:2'>"), "{r}");
    // <private/> is not copied.
    phone.send("<message type='chat' to='bob@localhost'><body>secret</body><private xmlns='urn:xmpp:carbons:2'/></message>").await;
    b.read_until("secret").await;
    laptop
        .send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let r = laptop.read_until("id='sync'").await;
    assert!(!r.contains("secret"), "{r}");
    s.stop().await;
}

async fn mam_returns_history_paged_both_ways(how: Login) {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = s.client("alice", "pw", false).await;
    let info = a.iq(xml("<iq xmlns='jabber:client' type='get' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")).await;
    assert!(info.to_xml().contains("urn:xmpp:mam:2"));
    let mut b = RawClient::login(s.c2s, "bob", "pw").await;
    for i in 1..=5 {
        send_chat(&mut b, "alice@localhost", &format!("hist{i}")).await;
    }
    b.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    b.read_until("id='sync'").await;
    a.close().await;
    let (mut a, _) = RawClient::login_with(s.c2s, "alice", "pw", None, how).await;
    let q = |id: &str, rsm: &str| {
        format!("<iq type='set' id='{id}'><query xmlns='urn:xmpp:mam:2' queryid='{id}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field><field var='with'><value>bob@localhost</value></field></x><set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set></query></iq>")
    };
    a.send(&q("q1", "<max>2</max>")).await;
    let r = a.read_until("</fin>").await;
    assert!(
        r.contains("hist1") && r.contains("hist2") && !r.contains("hist3"),
        "{r}"
    );
    assert!(!r.contains("complete='true'"), "{r}");
    let last = r[r.find("<last>").unwrap() + 6..r.find("</last>").unwrap()].to_string();
    a.received.clear();
    a.send(&q("q2", &format!("<max>10</max><after>{last}</after>"))).await;
    let r = a.read_until("</fin>").await;
    assert!(
        r.contains("hist3") && r.contains("hist5") && !r.contains("hist2"),
        "{r}"
    );
    assert!(r.contains("complete='true'"), "{r}");
    assert!(r.contains("<stanza-id") || r.contains("<result"), "{r}");
    a.received.clear();
    a.send(&q("q3", "<max>2</max><before/>")).await;
    let r = a.read_until("</fin>").await;
    assert!(
        r.contains("hist4") && r.contains("hist5") && !r.contains("hist3"),
        "last page: {r}"
    );
    a.received.clear();
    a.send(&q("q4", "<after>no-such-id</after>")).await;
    assert!(a.read_until("</iq>").await.contains("item-not-found"));
    s.stop().await;
}

async fn csi_holds_presence_and_lets_messages_through(how: Login) {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let (mut a, phone) = RawClient::login_with(s.c2s, "alice", "pw", Some("phone"), how).await;
    a.send("<presence/>").await;
    a.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    a.send("<iq type='get' id='p0' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    a.read_until("id='p0'").await;
    let mut b = RawClient::login(s.c2s, "bob", "pw").await;
    b.send(&format!("<presence to='{phone}'><status>held</status></presence>"))
        .await;
    b.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    b.read_until("id='sync'").await;
    a.received.clear();
    // An IQ answer is not held: it overtakes the presence routed before it.
    a.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let r = a.read_until("id='p1'").await;
    assert!(!r.contains(">held<"), "presence is held while inactive: {r}");
    // A message with a body goes through at once (held presence first).
    send_chat(&mut b, &phone, "wake").await;
    let r = a.read_until(">wake<").await;
    assert!(r.contains(">held<"), "{r}");
    a.received.clear();
    b.send(&format!("<presence to='{phone}'><status>again</status></presence>"))
        .await;
    b.send("<iq type='get' id='sync2' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    b.read_until("id='sync2'").await;
    a.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    a.read_until(">again<").await;
    s.stop().await;
}

async fn stream_features_advertise_mobile_support(how: Login) {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let mut a = RawClient::connect_tls(s.c2s).await;
    let f = match how {
        Login::Legacy => {
            a.auth_plain("alice", "pw").await;
            a.received.clone()
        }
        Login::Bind2 => {
            let r = a.sasl2_plain("alice", "pw", "<bind xmlns='urn:xmpp:bind:0'/>").await;
            // Bound already: the features that follow offer no second binding.
            let f = &r[r.find("</success>").unwrap()..];
            assert!(!f.contains("urn:ietf:params:xml:ns:xmpp-bind"), "{f}");
            f.to_string()
        }
    };
    for x in [
        "urn:xmpp:sm:3",
        "urn:xmpp:csi:0",
        "urn:xmpp:features:rosterver",
        "http://jabber.org/protocol/caps",
    ] {
        assert!(f.contains(x), "{x} missing from {f}");
    }
    s.stop().await;
}

const ENABLE_PUSH: &str = "<iq type='set' id='push'><enable xmlns='urn:xmpp:push:0' jid='app@localhost/server' node='n1'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>s3cr3t</value></field></x></enable></iq>";

async fn push_published_for_offline_and_hibernated_accounts(how: Login) {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "app"] {
        s.add_user(u, "pw");
    }
    // A client plays the app server: it receives the XEP-0357 publishes.
    let mut app = RawClient::login_as(s.c2s, "app", "pw", Some("server")).await;
    let (mut a, _) = RawClient::login_with(s.c2s, "alice", "pw", Some("phone"), how).await;
    let info = {
        a.send(
            "<iq type='get' id='d' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
        a.read_until("id='d'").await;
        a.read_until("</iq>").await
    };
    assert!(info.contains("urn:xmpp:push:0"), "{info}");
    a.send(ENABLE_PUSH).await;
    let r = a.read_until("id='push'").await;
    assert!(r.contains("id='push'") && !r.contains("type='error'"), "{r}");
    a.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await;
    a.read_until("<enabled").await;
    a.send("<presence/>").await;
    a.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    a.read_until("id='p'").await;
    // Alice's phone loses its connection: the session hibernates.
    drop(a);
    let mut b = RawClient::login(s.c2s, "bob", "pw").await;
    send_chat(&mut b, "alice@localhost", "are you there?").await;
    let p = app.read_until("</iq>").await;
    assert!(p.contains("<publish node='n1'>"), "{p}");
    assert!(p.contains("<notification xmlns='urn:xmpp:push:0'>"), "{p}");
    assert!(
        p.contains("urn:xmpp:push:summary") && p.contains("message-count"),
        "{p}"
    );
    assert!(p.contains("New message"), "a fixed body marks an important push: {p}");
    assert!(!p.contains("are you there?"), "no message text by default: {p}");
    assert!(!p.contains("bob@localhost"), "no sender by default: {p}");
    assert!(p.contains("s3cr3t"), "publish-options are echoed: {p}");
    assert!(p.contains("from='alice@localhost'"), "{p}");
    let id = attr_after(&p, "<iq", "id");
    app.send(&format!("<iq type='result' id='{id}' to='alice@localhost'/>"))
        .await;
    // A chat state alone wakes nobody; a second message does.
    app.received.clear();
    b.send("<message type='chat' to='alice@localhost'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    send_chat(&mut b, "alice@localhost", "second").await;
    let p = app.read_until("</iq>").await;
    assert_eq!(count(&p, "<publish "), 1, "{p}");
    // The app server says the registration is gone: pushbox forgets it.
    let id = attr_after(&p, "<iq", "id");
    app.send(&format!("<iq type='error' id='{id}' to='alice@localhost'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")).await;
    let store = pushbox::store::Store::open_in(&s.config.data_dir).unwrap();
    wait_until("registration removed after item-not-found", || {
        store
            .blocking(|c| {
                let id = pushbox::store::accounts::id_of(c, "alice")?.unwrap();
                Ok(pushbox::store::push::list(c, id)?.len())
            })
            .unwrap()
            == 0
    })
    .await;
    s.stop().await;
}

//! End-to-end tests of client connections against the real daemon, driven
//! by tokio-xmpp (a real client) and a raw TLS client for hostile input.

mod common;
use common::*;
use pushbox::xmpp::xml::ElementExt;
use tokio_xmpp::parsers::{
    jid::Jid,
    message::{Lang, Message},
    presence::Presence,
};

fn body_of(m: &tokio_xmpp::parsers::minidom::Element) -> Option<String> {
    m.get_child("body", "jabber:client").map(|b| b.text())
}

#[tokio::test]
async fn scram_login_over_starttls_and_direct_tls() {
    let s = TestServer::start().await;
    s.add_user("alice", "secret");
    let a = s.client("alice", "secret", false).await;
    assert!(a.full_jid().starts_with("alice@localhost/"), "{}", a.full_jid());
    let b = s.client("alice", "secret", true).await;
    assert!(b.full_jid().starts_with("alice@localhost/"));
    assert_ne!(a.full_jid(), b.full_jid(), "server-generated resources differ");
    a.close().await;
    b.close().await;
    s.stop().await;
}

#[tokio::test]
async fn chat_message_between_two_accounts() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw1");
    s.add_user("bob", "pw2");
    let mut a = s.client("alice", "pw1", false).await;
    let mut b = s.client("bob", "pw2", true).await;
    b.send(Presence::available()).await;
    // Wait until bob's presence is processed (he sees his own broadcast via a ping round trip).
    let pong = b
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        ))
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    let to: Jid = s.jid("bob").into();
    a.send(Message::chat(Some(to)).with_body(Lang::new(), "hello bob".into()))
        .await;
    let m = b.expect("chat message", |e| e.name() == "message").await;
    assert_eq!(body_of(&m).as_deref(), Some("hello bob"));
    assert_eq!(
        m.attr("from"),
        Some(a.full_jid().as_str()),
        "from is stamped with the sender's full JID"
    );
    s.stop().await;
}

#[tokio::test]
async fn offline_message_is_delivered_on_next_login() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = s.client("alice", "pw", false).await;
    let to: Jid = s.jid("bob").into();
    a.send(Message::chat(Some(to)).with_body(Lang::new(), "while you were out".into()))
        .await;
    // A round trip proves the message was routed (and stored) before bob logs in.
    a.iq(xml(
        "<iq xmlns='jabber:client' type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
    ))
    .await;
    let mut b = s.client("bob", "pw", false).await;
    b.send(Presence::available()).await;
    let m = b.expect("offline message", |e| e.name() == "message").await;
    assert_eq!(body_of(&m).as_deref(), Some("while you were out"));
    assert!(m.get_child("delay", "urn:xmpp:delay").is_some(), "XEP-0203 delay stamp");
    // Delivered once: a second login gets nothing more.
    b.close().await;
    let mut b2 = s.client("bob", "pw", false).await;
    b2.send(Presence::available()).await;
    let r = b2
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    s.stop().await;
}

#[tokio::test]
async fn roster_and_full_subscription_handshake_with_presence_both_ways() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = s.client("alice", "pw", false).await;
    let mut b = s.client("bob", "pw", false).await;
    for c in [&mut a, &mut b] {
        let r = c
            .iq(xml(
                "<iq xmlns='jabber:client' type='get'><query xmlns='jabber:iq:roster'/></iq>",
            ))
            .await;
        assert_eq!(r.attr("type"), Some("result"));
        c.send(Presence::available()).await;
    }
    // Alice adds Bob to her roster.
    let r = a
        .iq(xml("<iq xmlns='jabber:client' type='set'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='Bob'><group>Friends</group></item></query></iq>"))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let push = a
        .expect("roster push", |e| e.name() == "iq" && e.attr("type") == Some("set"))
        .await;
    assert!(push.to_xml().contains("bob@localhost"));
    // Subscribe, approve, and the same the other way.
    a.send(Presence::subscribe().with_to(Jid::from(s.jid("bob")))).await;
    let req = b
        .expect("subscribe", |e| {
            e.name() == "presence" && e.attr("type") == Some("subscribe")
        })
        .await;
    assert_eq!(req.attr("from"), Some("alice@localhost"));
    b.send(Presence::subscribed().with_to(Jid::from(s.jid("alice")))).await;
    let ok = a
        .expect("subscribed", |e| {
            e.name() == "presence" && e.attr("type") == Some("subscribed")
        })
        .await;
    assert_eq!(ok.attr("from"), Some("bob@localhost"));
    // Alice now sees Bob's presence.
    let p = a
        .expect("bob's presence", |e| {
            e.name() == "presence" && e.attr("type").is_none() && e.attr("from").is_some_and(|f| f.starts_with("bob@"))
        })
        .await;
    assert_eq!(p.attr("from"), Some(b.full_jid().as_str()));
    b.send(Presence::subscribe().with_to(Jid::from(s.jid("alice")))).await;
    a.expect("subscribe from bob", |e| {
        e.name() == "presence" && e.attr("type") == Some("subscribe")
    })
    .await;
    a.send(Presence::subscribed().with_to(Jid::from(s.jid("bob")))).await;
    b.expect("subscribed from alice", |e| {
        e.name() == "presence" && e.attr("type") == Some("subscribed")
    })
    .await;
    let p = b
        .expect("alice's presence", |e| {
            e.name() == "presence"
                && e.attr("type").is_none()
                && e.attr("from").is_some_and(|f| f.starts_with("alice@"))
        })
        .await;
    assert_eq!(p.attr("from"), Some(a.full_jid().as_str()));
    // Both rosters say "both", and survive a restart of the daemon.
    let r = a
        .iq(xml(
            "<iq xmlns='jabber:client' type='get'><query xmlns='jabber:iq:roster'/></iq>",
        ))
        .await;
    let text = r.to_xml();
    assert!(text.contains("subscription='both'"), "{text}");
    assert!(text.contains("Friends"));
    // Unavailable is broadcast when a client leaves.
    a.close().await;
    let u = b
        .expect("alice unavailable", |e| {
            e.name() == "presence" && e.attr("type") == Some("unavailable")
        })
        .await;
    assert!(u.attr("from").unwrap().starts_with("alice@localhost/"));
    s.stop().await;
}

#[tokio::test]
async fn roster_version_unchanged_returns_empty_result() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let mut a = s.client("alice", "pw", false).await;
    a.iq(xml("<iq xmlns='jabber:client' type='set'><query xmlns='jabber:iq:roster'><item jid='carol@localhost'/></query></iq>")).await;
    let r = a
        .iq(xml(
            "<iq xmlns='jabber:client' type='get'><query xmlns='jabber:iq:roster' ver=''/></iq>",
        ))
        .await;
    let q = r.get_child("query", "jabber:iq:roster").expect("full roster");
    let ver = q.attr("ver").unwrap().to_string();
    let r2 = a
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='get'><query xmlns='jabber:iq:roster' ver='{ver}'/></iq>"
        )))
        .await;
    assert_eq!(r2.attr("type"), Some("result"));
    assert!(
        r2.get_child("query", "jabber:iq:roster").is_none(),
        "unchanged roster: empty result"
    );
    s.stop().await;
}

#[tokio::test]
async fn disco_ping_version_and_unknown_iq() {
    let s = TestServer::start_with("[contact]\nabuse = [\"mailto:abuse@localhost\"]\n").await;
    s.add_user("alice", "pw");
    let mut a = s.client("alice", "pw", false).await;
    let info = a.iq(xml("<iq xmlns='jabber:client' type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")).await;
    let t = info.to_xml().replace('"', "'");
    for f in [
        "msgoffline",
        "urn:xmpp:ping",
        "jabber:iq:version",
        "category='server'",
        "mailto:abuse@localhost",
    ] {
        assert!(t.contains(f), "domain disco#info lacks {f}: {t}");
    }
    let acc = a.iq(xml("<iq xmlns='jabber:client' type='get' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")).await;
    assert!(acc.to_xml().contains("category='account'"));
    let ping = a
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        ))
        .await;
    assert_eq!(ping.attr("type"), Some("result"));
    let v = a
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='localhost'><query xmlns='jabber:iq:version'/></iq>",
        ))
        .await;
    assert!(v.to_xml().contains("pushbox"));
    let u = a
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='localhost'><query xmlns='urn:example:nothing'/></iq>",
        ))
        .await;
    assert_eq!(u.attr("type"), Some("error"));
    assert!(u.to_xml().contains("service-unavailable"));
    // tokio-xmpp cannot send an IQ without a payload; the raw client can.
    let mut raw = RawClient::login(s.c2s, "alice", "pw").await;
    raw.send("<iq type='get' id='empty' to='localhost'/>").await;
    let bad = raw.read_until("</iq>").await;
    assert!(bad.contains("<bad-request"), "{bad}");
    s.stop().await;
}

#[tokio::test]
async fn wrong_password_fails_and_server_keeps_serving() {
    let s = TestServer::start().await;
    s.add_user("alice", "right");
    let mut c = RawClient::connect_tls(s.c2s).await;
    c.send(HEADER).await;
    let f = c.read_until("</stream:features>").await;
    assert!(
        f.contains("SCRAM-SHA-256") && f.contains("SCRAM-SHA-1") && f.contains("PLAIN"),
        "{f}"
    );
    use base64::Engine;
    let cred = base64::engine::general_purpose::STANDARD.encode("\0alice\0wrong");
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>"
    ))
    .await;
    let r = c.read_until("</failure>").await;
    assert!(r.contains("<not-authorized"), "{r}");
    // Another client logs in fine meanwhile.
    let a = s.client("alice", "right", false).await;
    assert!(a.full_jid().starts_with("alice@"));
    s.stop().await;
}

#[tokio::test]
async fn too_many_failures_close_the_stream() {
    let s = TestServer::start_with(
        "[limits]\nmax_auth_failures = 2\nconnections_per_ip_per_minute = 1000\nmax_auth_failures_per_ip = 1000\n",
    )
    .await;
    s.add_user("alice", "right");
    let mut c = RawClient::connect_tls(s.c2s).await;
    c.send(HEADER).await;
    c.read_until("</stream:features>").await;
    use base64::Engine;
    let cred = base64::engine::general_purpose::STANDARD.encode("\0alice\0wrong");
    for _ in 0..2 {
        c.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>"
        ))
        .await;
    }
    let r = c.read_to_end().await;
    assert!(r.contains("<policy-violation"), "{r}");
    s.stop().await;
}

#[tokio::test]
async fn malformed_xml_gets_not_well_formed() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let mut c = RawClient::login(s.c2s, "alice", "pw").await;
    c.send("<message><body>unclosed</presence>").await;
    let r = c.read_to_end().await;
    assert!(r.contains("<not-well-formed"), "{r}");
    assert!(r.contains("</stream:stream>"), "{r}");
    let a = s.client("alice", "pw", false).await;
    assert!(a.full_jid().starts_with("alice@"), "server still serves");
    s.stop().await;
}

#[tokio::test]
async fn oversized_stanza_gets_policy_violation() {
    let s = TestServer::start_with("[limits]\nmax_stanza_size = 10000\nconnections_per_ip_per_minute = 1000\n").await;
    s.add_user("alice", "pw");
    let mut c = RawClient::login(s.c2s, "alice", "pw").await;
    let big = format!(
        "<message to='alice@localhost'><body>{}</body></message>",
        "x".repeat(20_000)
    );
    c.send(&big).await;
    let r = c.read_to_end().await;
    assert!(r.contains("<policy-violation"), "{r}");
    s.stop().await;
}

#[tokio::test]
async fn auth_without_tls_is_refused() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let mut c = RawClient::connect(s.c2s).await;
    c.send(HEADER).await;
    let f = c.read_until("</stream:features>").await;
    assert!(f.contains("<required"), "STARTTLS is mandatory: {f}");
    assert!(!f.contains("mechanism"), "no SASL offered before TLS: {f}");
    use base64::Engine;
    let cred = base64::engine::general_purpose::STANDARD.encode("\0alice\0pw");
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>"
    ))
    .await;
    let r = c.read_to_end().await;
    assert!(
        r.contains("encryption-required") || r.contains("policy-violation"),
        "{r}"
    );
    assert!(!r.contains("<success"), "{r}");
    s.stop().await;
}

#[tokio::test]
async fn wrong_host_and_namespace_are_stream_errors() {
    let s = TestServer::start().await;
    let mut c = RawClient::connect(s.c2s).await;
    c.send("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='elsewhere.example' version='1.0'>").await;
    assert!(c.read_to_end().await.contains("<host-unknown"));
    let mut c = RawClient::connect(s.c2s).await;
    c.send("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>").await;
    assert!(c.read_to_end().await.contains("<invalid-namespace"));
    s.stop().await;
}

#[tokio::test]
async fn spoofed_from_ends_the_stream() {
    let s = TestServer::start().await;
    s.add_user("mallory", "pw");
    let mut c = RawClient::login(s.c2s, "mallory", "pw").await;
    c.send("<message from='alice@localhost/x' to='mallory@localhost'><body>hi</body></message>")
        .await;
    assert!(c.read_to_end().await.contains("<invalid-from"));
    s.stop().await;
}

#[tokio::test]
async fn resource_conflict_replaces_the_older_session() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let mut first = RawClient::login_as(s.c2s, "alice", "pw", Some("phone")).await;
    let _second = RawClient::login_as(s.c2s, "alice", "pw", Some("phone")).await;
    let r = first.read_to_end().await;
    assert!(r.contains("<conflict"), "the older 'phone' session is replaced: {r}");
    s.stop().await;
}

#[tokio::test]
async fn in_band_registration_when_open() {
    let s = TestServer::start_with("[registration]\nmode = \"open\"\n").await;
    let mut c = RawClient::connect_tls(s.c2s).await;
    c.send(HEADER).await;
    let f = c.read_until("</stream:features>").await;
    assert!(f.contains("http://jabber.org/features/iq-register"), "{f}");
    c.send("<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>newbie</username><password>pw</password></query></iq>").await;
    let r = c.read_until("id='r1'").await;
    assert!(r.contains("id='r1' type='result'"), "{r}");
    let a = s.client("newbie", "pw", false).await;
    assert!(a.full_jid().starts_with("newbie@"));
    // Taken names conflict.
    c.received.clear();
    c.send("<iq type='set' id='r2'><query xmlns='jabber:iq:register'><username>newbie</username><password>x</password></query></iq>").await;
    assert!(c.read_until("</iq>").await.contains("<conflict"));
    s.stop().await;
}

#[tokio::test]
async fn registration_closed_by_default_and_invite_mode_needs_a_token() {
    let s = TestServer::start().await;
    let mut c = RawClient::connect_tls(s.c2s).await;
    c.send(HEADER).await;
    let f = c.read_until("</stream:features>").await;
    assert!(!f.contains("iq-register"), "closed by default: {f}");
    c.send("<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>x</username><password>pw</password></query></iq>").await;
    assert!(c.read_until("</iq>").await.contains("service-unavailable"));
    s.stop().await;

    let s = TestServer::start_with("[registration]\nmode = \"invite\"\n").await;
    let store = pushbox::store::Store::open_in(&s.config.data_dir).unwrap();
    let token = store
        .blocking(|c| pushbox::store::invites::create(c, 3600, 1, false))
        .unwrap();
    let mut c = RawClient::connect_tls(s.c2s).await;
    c.send(HEADER).await;
    let f = c.read_until("</stream:features>").await;
    assert!(f.contains("urn:xmpp:invite"), "{f}");
    c.send("<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>x</username><password>pw</password></query></iq>").await;
    assert!(
        c.read_until("</iq>").await.contains("not-allowed"),
        "no token, no account"
    );
    c.received.clear();
    c.send("<iq type='set' id='p0'><preauth xmlns='urn:xmpp:pars:0' token='wrong'/></iq>")
        .await;
    assert!(c.read_until("</iq>").await.contains("item-not-found"));
    c.received.clear();
    c.send(&format!(
        "<iq type='set' id='p1'><preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>"
    ))
    .await;
    assert!(c.read_until("id='p1'").await.contains("id='p1' type='result'"));
    c.received.clear();
    c.send("<iq type='set' id='r2'><query xmlns='jabber:iq:register'><username>invited</username><password>pw</password></query></iq>").await;
    let r = c.read_until("id='r2'").await;
    assert!(r.contains("id='r2' type='result'"), "{r}");
    s.client("invited", "pw", false).await;
    // The single-use token is spent.
    let mut d = RawClient::connect_tls(s.c2s).await;
    d.send(HEADER).await;
    d.read_until("</stream:features>").await;
    d.send(&format!(
        "<iq type='set' id='p1'><preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>"
    ))
    .await;
    assert!(d.read_until("</iq>").await.contains("item-not-found"));
    s.stop().await;
}

#[tokio::test]
async fn shutdown_closes_streams_cleanly() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let mut c = RawClient::login(s.c2s, "alice", "pw").await;
    let reader = tokio::spawn(async move { c.read_to_end().await });
    s.stop().await;
    let r = reader.await.unwrap();
    assert!(r.contains("<system-shutdown"), "{r}");
    assert!(r.ends_with("</stream:stream>"), "{r}");
}

#[tokio::test]
async fn external_services_hand_out_turn_credentials() {
    let s = TestServer::start_with(
        "[turn]\nhost = \"turn.localhost\"\nsecret = \"0123456789abcdef0123\"\ntls_port = 5349\n",
    )
    .await;
    s.add_user("alice", "pw");
    let mut a = s.client("alice", "pw", false).await;
    let info = a
        .iq(xml("<iq xmlns='jabber:client' type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"))
        .await;
    assert!(info.to_xml().contains("urn:xmpp:extdisco:2"));
    let r = a
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='localhost'><services xmlns='urn:xmpp:extdisco:2'/></iq>",
        ))
        .await;
    let t = r.to_xml();
    assert!(
        t.contains("type='stun'") && t.contains("type='turn'") && t.contains("type='turns'"),
        "{t}"
    );
    assert!(
        t.contains("username='") && t.contains(":alice@localhost'") && t.contains("password='"),
        "{t}"
    );
    assert!(
        !t.contains("0123456789abcdef0123"),
        "the shared secret never leaves the server"
    );
    s.stop().await;
}

/// After bob approves alice's subscription, alice's client gets bob's
/// current presence once per bob resource: not once from the approval and
/// again from the probe (0.1 sent it two or three times).
#[tokio::test]
async fn an_approved_subscription_brings_presence_once() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = RawClient::login(s.c2s, "alice", "pw").await;
    let mut b = RawClient::login(s.c2s, "bob", "pw").await;
    a.send("<presence/>").await;
    b.send("<presence><status>here</status></presence>").await;
    a.send("<presence type='subscribe' to='bob@localhost'/>").await;
    b.read_until("type='subscribe'").await;
    b.send("<presence type='subscribed' to='alice@localhost'/>").await;
    a.read_until("type='subscribed'").await;
    // Let every presence the approval causes arrive, then count.
    a.read_for(std::time::Duration::from_millis(800)).await;
    a.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let text = a.read_until("id='sync'").await;
    let from_bob = text
        .split("<presence")
        .skip(1)
        .filter(|p| {
            let head = p.split('>').next().unwrap_or_default();
            head.contains("from='bob@localhost/") && !head.contains("type=")
        })
        .count();
    assert_eq!(
        from_bob, 1,
        "bob's available presence reached alice {from_bob} times:\n{text}"
    );
    s.stop().await;
}

/// `limits.idle_timeout` counts whitespace keepalives (RFC 6120 §4.6.1) as
/// activity, whether the stream's parser is active or resting; silence
/// still ends the session.
#[tokio::test]
async fn whitespace_keepalives_keep_an_idle_session_open() {
    use std::time::{Duration, Instant};
    let s = TestServer::start_with("[limits]\nidle_timeout = \"2s\"\nconnections_per_ip_per_minute = 1000\n").await;
    s.add_user("alice", "pw");
    let mut c = RawClient::login(s.c2s, "alice", "pw").await;
    // Keepalives for more than twice the timeout: a space, a newline, and one
    // right behind a stanza; at first often, then with pauses longer than
    // the second after which a quiet stream frees its parser.
    c.send("<presence/>\n").await;
    for (i, pause) in [400, 400, 400, 1300, 1300, 1300].into_iter().enumerate() {
        c.send(if i % 2 == 0 { " " } else { "\n" }).await;
        assert!(
            c.read_for(Duration::from_millis(pause)).await,
            "closed while keepalives flowed: {}",
            c.received
        );
    }
    assert!(!c.received.contains("connection-timeout"), "{}", c.received);
    c.send("<iq type='get' id='alive' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let r = c.read_until("alive").await;
    assert!(r.contains("type='result'") || r.contains("type=\"result\""), "{r}");
    // Silence: the session ends after the timeout, with the stream error
    // that says why (RFC 6120 §4.9.3.4).
    let quiet = Instant::now();
    let end = c.read_to_end().await;
    assert!(quiet.elapsed() >= Duration::from_millis(1500), "{:?}", quiet.elapsed());
    assert!(
        end.contains("<connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>")
            || end.contains("<connection-timeout xmlns=\"urn:ietf:params:xml:ns:xmpp-streams\"/>"),
        "{end}"
    );
    s.stop().await;
}

/// Read plaintext from `tcp` until `needle` (the phase before STARTTLS).
async fn read_plain_until(tcp: &mut tokio::net::TcpStream, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while !got.contains(needle) {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before {needle}: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    got
}

/// A TLS 1.3 handshake driven by hand so that the client's Finished and
/// the stream header leave in one write: the server has to find the header
/// in the bytes that completed its handshake. Returns what the server
/// answered up to its features.
async fn header_pipelined_with_finished(mut tcp: tokio::net::TcpStream) -> String {
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = client_tls_config_for(&[&rustls::version::TLS13]);
    let mut tls = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    async fn receive(tls: &mut rustls::ClientConnection, tcp: &mut tokio::net::TcpStream, buf: &mut [u8]) {
        let n = tokio::time::timeout(WAIT, tcp.read(buf)).await.unwrap().unwrap();
        assert!(n > 0, "server closed");
        let mut s = &buf[..n];
        while !s.is_empty() {
            tls.read_tls(&mut s).unwrap();
            tls.process_new_packets().unwrap();
        }
    }
    let mut out = Vec::new();
    while tls.is_handshaking() {
        while tls.wants_write() {
            tls.write_tls(&mut out).unwrap();
        }
        tcp.write_all(&out).await.unwrap();
        out.clear();
        receive(&mut tls, &mut tcp, &mut buf).await;
    }
    // The Finished is still queued: the header goes with it.
    tls.writer().write_all(HEADER.as_bytes()).unwrap();
    while tls.wants_write() {
        tls.write_tls(&mut out).unwrap();
    }
    tcp.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("</stream:features>") {
        receive(&mut tls, &mut tcp, &mut buf).await;
        let mut plain = [0u8; 4096];
        while let Ok(n) = tls.reader().read(&mut plain) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&plain[..n]);
        }
    }
    String::from_utf8(got).unwrap()
}

#[tokio::test]
async fn a_stream_header_pipelined_with_the_tls_finished_is_answered() {
    use tokio::io::AsyncWriteExt;
    let s = TestServer::start().await;
    // STARTTLS: the handshake right after <proceed/>.
    let mut tcp = tokio::net::TcpStream::connect(s.c2s).await.unwrap();
    tcp.write_all(HEADER.as_bytes()).await.unwrap();
    read_plain_until(&mut tcp, "</stream:features>").await;
    tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await
        .unwrap();
    read_plain_until(&mut tcp, "<proceed").await;
    let features = header_pipelined_with_finished(tcp).await;
    assert!(features.contains("<stream:stream"), "{features}");
    assert!(features.contains("SCRAM-SHA-256-PLUS"), "{features}");
    // Direct TLS (XEP-0368).
    let tcp = tokio::net::TcpStream::connect(s.c2s_tls).await.unwrap();
    let features = header_pipelined_with_finished(tcp).await;
    assert!(features.contains("<mechanisms"), "{features}");
    s.stop().await;
}

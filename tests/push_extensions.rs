//! XEP-0357 extensions on the server side, against the real daemon:
//! Tigase's `tigase:push:encrypt:0` / `priority:0` / `jingle:0` (a client
//! enables push with a key; a stand-in app server, logged in as an account,
//! receives the publish and decrypts it with that key), and ChatSecure-style
//! direct pushes (publish-options `endpoint` + `token`): POSTed over HTTPS to
//! another daemon's relay API, or submitted in process to this daemon's own
//! relay, and in both cases exactly one push reaches the APNs stand-in.

mod common;
mod support;
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use common::*;
use minidom::Element;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};

const PUBLISH_OPTIONS: &str =
    "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>";

/// The last complete `<iq …>…</iq>` in `raw` that contains `needle`, parsed.
fn iq_with(raw: &str, needle: &str) -> Element {
    let mut at = 0;
    let mut found = None;
    while let Some(i) = raw[at..].find("<iq") {
        let start = at + i;
        let Some(len) = raw[start..].find("</iq>") else { break };
        let text = &raw[start..start + len + 5];
        if text.contains(needle) {
            found = Some(text.to_string());
        }
        at = start + 3;
    }
    let text = found.unwrap_or_else(|| panic!("no iq with {needle} in {raw}"));
    xml(&with_ns(&text))
}

/// The server writes `xmlns='jabber:client'` on stanzas; add it where missing.
fn with_ns(iq: &str) -> String {
    let open = &iq[..iq.find('>').unwrap_or(iq.len())];
    if open.contains("xmlns=") {
        iq.to_string()
    } else {
        iq.replacen("<iq", "<iq xmlns='jabber:client'", 1)
    }
}

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
    with_ns(&raw[start..end]).parse().ok()
}

/// Send `body` (an IQ with `id`) and return the answer.
async fn iq(c: &mut RawClient, id: &str, body: &str) -> Element {
    c.received.clear();
    c.send(body).await;
    c.read_until(&format!("id='{id}'")).await;
    for _ in 0..200 {
        if let Some(e) = find_iq(&c.received, id) {
            return e;
        }
        c.read_for(std::time::Duration::from_millis(100)).await;
    }
    panic!("no complete answer to {id}: {}", c.received)
}

fn error_condition(e: &Element) -> Option<String> {
    let err = e.get_child("error", "jabber:client")?;
    err.children()
        .find(|c| c.ns() == "urn:ietf:params:xml:ns:xmpp-stanzas")
        .map(|c| c.name().to_string())
}

/// Log out cleanly, so that the account has no session left.
async fn log_out(mut c: RawClient) {
    c.send("</stream:stream>").await;
    c.read_to_end().await;
}

fn open(key: &[u8], encrypted: &Element) -> serde_json::Value {
    let iv = B64.decode(encrypted.attr("iv").expect("iv attribute")).unwrap();
    assert_eq!(iv.len(), 12, "a 96-bit IV");
    let mut sealed = B64.decode(encrypted.text().trim()).unwrap();
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key).unwrap());
    let plain = key
        .open_in_place(
            Nonce::try_assume_unique_for_key(&iv).unwrap(),
            Aad::empty(),
            &mut sealed,
        )
        .expect("the payload opens with the client's key and its tag checks");
    serde_json::from_slice(plain).unwrap()
}

#[tokio::test]
async fn encrypted_push_is_sealed_with_the_clients_key() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "svc"] {
        s.add_user(u, "pw");
    }
    let mut a = RawClient::login_as(s.c2s, "alice", "pw", Some("phone")).await;

    // Siskin looks for the extensions on the account's bare JID.
    a.send(
        "<iq type='get' id='disco' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .await;
    let d = a.read_until("</iq>").await;
    for f in [
        "urn:xmpp:push:0",
        "tigase:push:encrypt:0",
        "tigase:push:encrypt:aes-128-gcm",
        "tigase:push:priority:0",
        "tigase:push:jingle:0",
    ] {
        assert!(d.contains(&format!("var='{f}'")), "{f} missing: {d}");
    }
    a.received.clear();

    // A key that is not 16 bytes, or another algorithm, is refused.
    let r = iq(
        &mut a,
        "bad",
        "<iq type='set' id='bad'><enable xmlns='urn:xmpp:push:0' jid='svc@localhost/app' node='n1'>\
         <encrypt xmlns='tigase:push:encrypt:0' alg='aes-128-gcm'>AAEC</encrypt></enable></iq>",
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    let r = iq(
        &mut a,
        "alg",
        "<iq type='set' id='alg'><enable xmlns='urn:xmpp:push:0' jid='svc@localhost/app' node='n1'>\
         <encrypt xmlns='tigase:push:encrypt:0' alg='aes-256-cbc'>AAECAwQFBgcICQoLDA0ODw==</encrypt></enable></iq>",
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("feature-not-implemented"));

    let key = support::rand_bytes::<16>();
    let r = iq(
        &mut a,
        "en",
        &format!(
            "<iq type='set' id='en'><enable xmlns='urn:xmpp:push:0' jid='svc@localhost/app' node='n1'>\
         <x xmlns='jabber:x:data' type='submit'>{PUBLISH_OPTIONS}<field var='secret'><value>s3cret</value></field></x>\
         <encrypt xmlns='tigase:push:encrypt:0' alg='aes-128-gcm'>{}</encrypt></enable></iq>",
            B64.encode(key)
        ),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    log_out(a).await;

    // The app server: here an account's resource, answering publishes.
    let mut svc = RawClient::login_as(s.c2s, "svc", "pw", Some("app")).await;
    let mut b = RawClient::login(s.c2s, "bob", "pw").await;
    b.send("<message type='chat' to='alice@localhost' id='m1'><body>meet at noon</body></message>")
        .await;
    let raw = svc.read_until("</iq>").await;
    let pub_iq = iq_with(&raw, "pubsub");
    assert_eq!(pub_iq.attr("type"), Some("set"));
    assert_eq!(pub_iq.attr("from"), Some("alice@localhost"));
    let pubsub = pub_iq.get_child("pubsub", "http://jabber.org/protocol/pubsub").unwrap();
    let publish = pubsub
        .get_child("publish", "http://jabber.org/protocol/pubsub")
        .unwrap();
    assert_eq!(publish.attr("node"), Some("n1"));
    let notification = publish
        .get_child("item", "http://jabber.org/protocol/pubsub")
        .and_then(|i| i.get_child("notification", "urn:xmpp:push:0"))
        .unwrap();
    assert!(
        notification.get_child("x", "jabber:x:data").is_none(),
        "the plaintext summary is left out when the payload is sealed: {raw}"
    );
    assert!(!raw.contains("meet at noon") && !raw.contains("bob@localhost"), "{raw}");
    let prio = notification.get_child("priority", "tigase:push:priority:0").unwrap();
    assert_eq!(prio.text(), "high");
    let enc = notification.get_child("encrypted", "tigase:push:encrypt:0").unwrap();
    assert!(enc.attr("type").is_none());
    let v = open(&key, enc);
    assert_eq!(v["type"], "chat", "{v}");
    assert_eq!(v["sender"], "bob@localhost", "{v}");
    assert_eq!(v["message"], "meet at noon", "{v}");
    assert_eq!(v["unread"], 1, "{v}");
    // The secret from the publish-options reaches the app server too.
    assert!(raw.contains("s3cret"), "{raw}");
    svc.send(&format!(
        "<iq type='result' id='{}' to='alice@localhost'/>",
        pub_iq.attr("id").unwrap()
    ))
    .await;
    svc.received.clear();

    // A call invite: flagged as a voip push, with the call's id and media.
    b.send("<message to='alice@localhost' id='c1'><propose xmlns='urn:xmpp:jingle-message:0' id='call-42'>\
            <description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='video'/></propose></message>")
        .await;
    let raw = svc.read_until("</iq>").await;
    let pub_iq = iq_with(&raw, "pubsub");
    let enc = pub_iq
        .get_child("pubsub", "http://jabber.org/protocol/pubsub")
        .and_then(|p| p.get_child("publish", "http://jabber.org/protocol/pubsub"))
        .and_then(|p| p.get_child("item", "http://jabber.org/protocol/pubsub"))
        .and_then(|i| i.get_child("notification", "urn:xmpp:push:0"))
        .and_then(|n| n.get_child("encrypted", "tigase:push:encrypt:0"))
        .unwrap_or_else(|| panic!("{raw}"));
    assert_eq!(enc.attr("type"), Some("voip"), "{raw}");
    let v = open(&key, enc);
    assert_eq!(v["type"], "call", "{v}");
    assert_eq!(v["sid"], "call-42", "{v}");
    assert_eq!(v["media"], serde_json::json!(["audio", "video"]), "{v}");
    assert_eq!(v["unread"], 2, "{v}");
    svc.send(&format!(
        "<iq type='result' id='{}' to='alice@localhost'/>",
        pub_iq.attr("id").unwrap()
    ))
    .await;
    svc.received.clear();

    // Enabling again without a key turns encryption off: the summary form is back.
    let mut a = RawClient::login_as(s.c2s, "alice", "pw", Some("phone")).await;
    let r = iq(
        &mut a,
        "en2",
        "<iq type='set' id='en2'><enable xmlns='urn:xmpp:push:0' jid='svc@localhost/app' node='n1'/></iq>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    log_out(a).await;
    b.send("<message type='chat' to='alice@localhost' id='m3'><body>plain</body></message>")
        .await;
    let raw = svc.read_until("</iq>").await;
    let pub_iq = iq_with(&raw, "pubsub");
    let n = pub_iq
        .get_child("pubsub", "http://jabber.org/protocol/pubsub")
        .and_then(|p| p.get_child("publish", "http://jabber.org/protocol/pubsub"))
        .and_then(|p| p.get_child("item", "http://jabber.org/protocol/pubsub"))
        .and_then(|i| i.get_child("notification", "urn:xmpp:push:0"))
        .unwrap();
    assert!(n.get_child("encrypted", "tigase:push:encrypt:0").is_none(), "{raw}");
    assert!(raw.contains("message-count"), "{raw}");
    assert!(n.get_child("priority", "tigase:push:priority:0").is_some(), "{raw}");
    s.stop().await;
}

/// Register an APNs device on the relay at `api` and return a whitelist token.
async fn relay_token(api: &support::Api, device: &str) -> String {
    let user = api.signup("chatsecure").await;
    user.apns_device_and_token(device).await.1
}

async fn enable_direct(c2s: std::net::SocketAddr, endpoint: &str, token: &str) {
    enable_direct_form(c2s, endpoint, token, true).await
}

/// `token_field` false: ChatSecure's form, where the node is the token.
async fn enable_direct_form(c2s: std::net::SocketAddr, endpoint: &str, token: &str, token_field: bool) {
    let token_field = if token_field {
        format!("<field var='token'><value>{token}</value></field>")
    } else {
        String::new()
    };
    let mut a = RawClient::login_as(c2s, "alice", "pw", Some("phone")).await;
    let r = iq(
        &mut a,
        "en",
        &format!(
            "<iq type='set' id='en'><enable xmlns='urn:xmpp:push:0' jid='push.chatsecure.example' node='{token}'>\
         <x xmlns='jabber:x:data' type='submit'>{PUBLISH_OPTIONS}\
         <field var='endpoint'><value>{endpoint}</value></field>{token_field}</x></enable></iq>"
        ),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    log_out(a).await;
}

fn registrations(s: &TestServer) -> i64 {
    let c = rusqlite::Connection::open(s.config.data_dir.join("pushbox.sqlite3")).unwrap();
    c.query_row("SELECT COUNT(*) FROM push_registrations", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn direct_push_is_posted_to_another_relay_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::TestCa::new(dir.path());
    let apns = support::ApnsStandIn::start(&ca, dir.path()).await;
    let relay = support::Daemon::start(dir.path(), &apns.config(&ca)).await;
    let device = support::apns_token();
    let token = relay_token(&relay.api(), &device).await;
    let endpoint = format!("{}/api/v1/messages/", relay.url);

    // The XMPP server trusts the relay's CA for direct pushes.
    let s = TestServer::start_with(&format!("[relay]\nca_roots = {:?}\n", relay.ca.display().to_string())).await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");

    // Not https: refused at enable.
    let mut a = RawClient::login_as(s.c2s, "alice", "pw", Some("phone")).await;
    let r = iq(&mut a, "en", &format!(
        "<iq type='set' id='en'><enable xmlns='urn:xmpp:push:0' jid='push.chatsecure.example' node='x'>\
         <x xmlns='jabber:x:data' type='submit'>{PUBLISH_OPTIONS}\
         <field var='endpoint'><value>http://localhost/api/v1/messages/</value></field><field var='token'><value>x</value></field></x></enable></iq>"
    ))
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    log_out(a).await;

    enable_direct(s.c2s, &endpoint, &token).await;
    let mut b = RawClient::login(s.c2s, "bob", "pw").await;
    b.send("<message type='chat' to='alice@localhost'><body>wake up</body></message>")
        .await;
    let path = format!("/3/device/{device}");
    let seen = apns.log.wait_for(1, |x| x.path == path).await;
    assert_eq!(
        seen[0].headers.get("apns-priority").unwrap(),
        "10",
        "a message is an alert"
    );
    assert!(!seen[0].body.to_string().contains("wake up"), "{}", seen[0].body);

    // A token the relay does not know (404): the registration is removed.
    enable_direct(s.c2s, &endpoint, "0000000000000000000000000000000000000000").await;
    assert_eq!(registrations(&s), 2);
    b.send("<message type='chat' to='alice@localhost'><body>again</body></message>")
        .await;
    support::eventually(|| async { (registrations(&s) == 1).then_some(()) }).await;
    // The good registration pushed once more; nothing else reached APNs.
    apns.log.wait_for(2, |x| x.path == path).await;
    assert_eq!(apns.log.seen().len(), 2, "{:?}", apns.log.seen());
    assert!(apns.log.violations().is_empty(), "{:?}", apns.log.violations());
    s.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn direct_push_to_the_own_relay_is_submitted_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::TestCa::new(dir.path());
    let apns = support::ApnsStandIn::start(&ca, dir.path()).await;
    let s = TestServer::start_with_https(&apns.config(&ca)).await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let https = s.https.unwrap();
    let api = support::Api::new(
        &format!("https://localhost:{}", https.port()),
        &test_ca().join("ca.pem"),
    );
    let device = support::apns_token();
    let token = relay_token(&api, &device).await;
    let endpoint = format!("https://localhost:{}/api/v1/messages/", https.port());
    // ChatSecure's form: the endpoint only, the node is the token.
    enable_direct_form(s.c2s, &endpoint, &token, false).await;
    let mut b = RawClient::login(s.c2s, "bob", "pw").await;
    b.send("<message type='chat' to='alice@localhost'><body>ring</body></message>")
        .await;
    let path = format!("/3/device/{device}");
    apns.log.wait_for(1, |x| x.path == path).await;
    // A ping round trip, then the count: the relay got exactly one push.
    b.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    b.read_until("id='p'").await;
    assert_eq!(apns.log.seen().iter().filter(|x| x.path == path).count(), 1);
    assert_eq!(registrations(&s), 1);
    s.stop().await;
}

#[tokio::test]
async fn direct_push_is_retried_after_a_busy_answer() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let ca = support::TestCa::new(dir.path());
    // A relay stand-in: 503 with Retry-After first, then 202.
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let log = seen.clone();
    let handler: support::Handler = Arc::new(move |req| {
        let log = log.clone();
        Box::pin(async move {
            let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap_or_default();
            let n = {
                let mut l = log.lock().unwrap();
                l.push(body);
                l.len()
            };
            if n == 1 {
                support::reply(503, serde_json::Value::Null, &[("retry-after", "1".into())])
            } else {
                support::reply(202, serde_json::json!({}), &[])
            }
        })
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _task = support::serve(listener, ca.server_config(&[b"h2", b"http/1.1"]), false, handler);
    let s = TestServer::start_with(&format!("[relay]\nca_roots = {:?}\n", ca.ca_pem.display().to_string())).await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    enable_direct(s.c2s, &format!("https://localhost:{port}/api/v1/messages/"), "tok-1").await;
    let mut b = RawClient::login(s.c2s, "bob", "pw").await;
    b.send("<message type='chat' to='alice@localhost'><body>busy?</body></message>")
        .await;
    // The failure is not counted once the retry went through.
    let failures = || {
        let c = rusqlite::Connection::open(s.config.data_dir.join("pushbox.sqlite3")).unwrap();
        c.query_row("SELECT failures FROM push_registrations", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    support::eventually(|| async { (seen.lock().unwrap().len() >= 2).then_some(()) }).await;
    let bodies = seen.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    for b in &bodies {
        assert_eq!(b["token"], "tok-1");
        assert_eq!(b["priority"], "high");
        assert!(b.get("data").is_none(), "no content leaves the server: {b}");
    }
    assert_eq!(registrations(&s), 1);
    assert_eq!(failures(), 0);
    s.stop().await;
}

#[tokio::test]
async fn sealed_push_through_the_local_app_server_is_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::TestCa::new(dir.path());
    let apns = support::ApnsStandIn::start(&ca, dir.path()).await;
    let s = TestServer::start_with(&apns.config(&ca)).await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let device = support::apns_token();
    let mut a = RawClient::login_as(s.c2s, "alice", "pw", Some("phone")).await;
    a.send(&format!(
        "<iq type='set' id='reg' to='push.localhost'><command xmlns='http://jabber.org/protocol/commands' node='register-push-apns' action='execute'>\
         <x xmlns='jabber:x:data' type='submit'><field var='token'><value>{device}</value></field><field var='device-id'><value>phone-1</value></field></x></command></iq>"
    ))
    .await;
    let r = a.read_until("</iq>").await;
    let (jid, node, secret) = (form_field(&r, "jid"), form_field(&r, "node"), form_field(&r, "secret"));
    a.received.clear();
    let r = iq(
        &mut a,
        "en",
        &format!(
            "<iq type='set' id='en'><enable xmlns='urn:xmpp:push:0' jid='{jid}' node='{node}'>\
             <x xmlns='jabber:x:data' type='submit'>{PUBLISH_OPTIONS}<field var='secret'><value>{secret}</value></field></x>\
             <encrypt xmlns='tigase:push:encrypt:0' alg='aes-128-gcm'>{}</encrypt></enable></iq>",
            B64.encode(support::rand_bytes::<16>())
        ),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    log_out(a).await;
    let mut b = RawClient::login(s.c2s, "bob", "pw").await;
    b.send("<message type='chat' to='alice@localhost'><body>sealed</body></message>")
        .await;
    let path = format!("/3/device/{device}");
    let seen = apns.log.wait_for(1, |x| x.path == path).await;
    // No summary form reached the app server, yet the priority mark makes it an alert.
    assert_eq!(seen[0].headers.get("apns-push-type").unwrap(), "alert");
    assert_eq!(seen[0].headers.get("apns-priority").unwrap(), "10");
    assert!(!seen[0].body.to_string().contains("sealed"), "{}", seen[0].body);
    assert!(apns.log.violations().is_empty(), "{:?}", apns.log.violations());
    s.stop().await;
}

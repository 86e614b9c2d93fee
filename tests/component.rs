//! External components (XEP-0114) against the real daemon: the handshake
//! with a good and a bad secret, routing both ways between a component and
//! a client, the component's forged `from` refused, one connection per
//! component, and its domain in the server's disco#items.

mod common;
use common::*;
use sha1::{Digest, Sha1};

const SECRET: &str = "a-component-secret-of-some-length";
const CONFIG: &str = "[components.\"bridge.localhost\"]\nsecret = \"a-component-secret-of-some-length\"\n";

fn header(to: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{to}'>"
    )
}

/// Open a component stream to `to` and send the handshake for `secret`;
/// returns the connection and what the server answered.
async fn connect(s: &TestServer, to: &str, secret: &str) -> (RawClient, String) {
    let mut c = RawClient::connect(s.component.expect("a component listener")).await;
    c.send(&header(to)).await;
    let head = c.read_until(">").await;
    if head.contains("<stream:error") || !head.contains(" id=") {
        let rest = c.read_to_end().await;
        return (c, rest);
    }
    let head = c.read_until("'>").await;
    let id = head
        .split(" id='")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap_or_else(|| panic!("no stream id in {head}"))
        .to_string();
    let opening = &head[head.find("<stream:stream").unwrap()..];
    assert!(
        !opening.contains(" version="),
        "XEP-0114 streams have no version: {head}"
    );
    let digest: String = Sha1::digest(format!("{id}{secret}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    c.received.clear();
    c.send(&format!("<handshake>{digest}</handshake>")).await;
    let answer = c.read_to_end_or_handshake().await;
    (c, answer)
}

trait ReadHandshake {
    async fn read_to_end_or_handshake(&mut self) -> String;
}

impl ReadHandshake for RawClient {
    /// Until `<handshake/>` arrives or the server closes.
    async fn read_to_end_or_handshake(&mut self) -> String {
        for _ in 0..100 {
            if self.received.contains("<handshake") || !self.read_for(std::time::Duration::from_millis(100)).await {
                break;
            }
        }
        let out = self.received.clone();
        self.received.clear();
        out
    }
}

#[tokio::test]
async fn the_handshake_needs_the_secret_and_a_configured_domain() {
    let s = TestServer::start_with(CONFIG).await;
    let (_, a) = connect(&s, "bridge.localhost", "the-wrong-secret-entirely").await;
    assert!(a.contains("<not-authorized"), "{a}");
    assert!(
        !a.contains("<stream:stream"),
        "the error follows the header already sent: {a}"
    );
    let (_, a) = connect(&s, "other.localhost", SECRET).await;
    assert!(a.contains("<host-unknown"), "{a}");
    let (mut first, a) = connect(&s, "bridge.localhost", SECRET).await;
    assert!(a.contains("<handshake"), "{a}");
    // One connection per component: a second one is refused, the first stays.
    let (_, second) = connect(&s, "bridge.localhost", SECRET).await;
    assert!(second.contains("<conflict"), "{second}");
    first
        .send("<iq from='bridge.localhost' to='localhost' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert!(first.read_until("id='p'").await.contains("type='result'"));
    // Once it has gone, the component may connect again.
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut again = String::new();
    while tokio::time::Instant::now() < deadline {
        again = connect(&s, "bridge.localhost", SECRET).await.1;
        if again.contains("<handshake") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(again.contains("<handshake"), "{again}");
    s.stop().await;
}

#[tokio::test]
async fn stanzas_flow_both_ways_and_forged_senders_are_refused() {
    let s = TestServer::start_with(CONFIG).await;
    s.add_user("alice", "pw");
    let mut alice = online(&s, "alice").await;

    // Not connected yet: the domain answers service-unavailable.
    let r = alice
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='bridge.localhost'><query xmlns='jabber:iq:version'/></iq>",
        ))
        .await;
    assert!(String::from(&r).contains("service-unavailable"), "{}", String::from(&r));

    let (mut comp, a) = connect(&s, "bridge.localhost", SECRET).await;
    assert!(a.contains("<handshake"), "{a}");

    // The server lists the component's domain.
    let items = alice
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        ))
        .await;
    assert!(
        String::from(&items).contains("bridge.localhost"),
        "{}",
        String::from(&items)
    );

    // Client → component, in the component namespace with a trusted from.
    alice
        .send_el(xml(
            "<message xmlns='jabber:client' to='echo@bridge.localhost' type='chat' id='m1'><body>ping</body></message>",
        ))
        .await;
    let got = comp.read_until("</message>").await;
    assert!(got.contains("<body>ping</body>"), "{got}");
    assert!(got.contains("jabber:component:accept"), "{got}");
    assert!(
        got.contains(&format!("from='{}'", alice.full_jid()))
            || got.contains(&format!("from=\"{}\"", alice.full_jid())),
        "{got}"
    );
    comp.received.clear();

    // Component → client.
    comp.send(&format!(
        "<message from='echo@bridge.localhost' to='{}' type='chat' id='m2'><body>pong</body></message>",
        alice.full_jid()
    ))
    .await;
    let m = alice
        .expect("the component's message", |e| {
            e.name() == "message" && e.attr("id") == Some("m2")
        })
        .await;
    assert_eq!(m.attr("from"), Some("echo@bridge.localhost"));
    assert_eq!(
        m.get_child("body", "jabber:client").map(|b| b.text()).as_deref(),
        Some("pong")
    );

    // An IQ without `to` is a bad request.
    comp.send("<iq from='bridge.localhost' type='get' id='q1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let bad = comp.read_until("</iq>").await;
    assert!(bad.contains("<bad-request"), "{bad}");
    comp.received.clear();
    // The component asks the server, and gets the answer.
    comp.send("<iq from='bridge.localhost' to='localhost' type='get' id='q2'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let pong = comp.read_until("id='q2'").await;
    assert!(pong.contains("type='result'"), "{pong}");
    comp.received.clear();

    // A forged sender ends the stream (invalid-from, as Prosody 0.12 does);
    // alice never sees the stanza.
    comp.send("<message from='mallory@localhost' to='alice@localhost' id='f1'><body>forged</body></message>")
        .await;
    let end = comp.read_to_end().await;
    assert!(end.contains("<invalid-from"), "{end}");
    ping(&mut alice).await;
    assert!(
        !alice.backlog.iter().any(|e| String::from(e).contains("forged")),
        "the forged message was not delivered"
    );
    s.stop().await;
}

#[test]
fn a_component_needs_a_long_secret_and_its_own_domain() {
    use pushbox::config::Config;
    let e = Config::from_toml_str("[components.\"bridge.localhost\"]\nsecret = \"short\"\n", None).unwrap_err();
    assert!(e.to_string().contains("at least 16"), "{e}");
    let e = Config::from_toml_str(
        &format!("[components.\"push.localhost\"]\nsecret = \"{SECRET}\"\n"),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("already served"), "{e}");
    let e = Config::from_toml_str("[components.\"bridge.localhost\"]\nsecrte = \"x\"\n", None).unwrap_err();
    assert!(e.to_string().contains("secrte"), "{e}");
    // The secret never shows in the configuration's debug output.
    let c = Config::from_toml_str(CONFIG, None).unwrap();
    assert!(!format!("{c:?}").contains(SECRET));
    // secret_file: the first line of a file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bridge.secret"), format!("{SECRET}\n")).unwrap();
    std::fs::write(
        dir.path().join("pushbox.toml"),
        "[components.\"bridge.localhost\"]\nsecret_file = \"bridge.secret\"\n",
    )
    .unwrap();
    let c = Config::load(Some(&dir.path().join("pushbox.toml"))).unwrap();
    assert_eq!(c.components["bridge.localhost"].secret(), SECRET);
}

/// Hostile component streams get the named stream errors, with the limits
/// of server streams, and the daemon keeps serving the real component.
#[tokio::test]
async fn hostile_component_input_gets_named_stream_errors() {
    let s = TestServer::start_with(&format!("{CONFIG}[federation]\nmax_stanza_size = 8192\n")).await;
    let addr = s.component.unwrap();
    let cases: &[(&str, String, &str)] = &[
        (
            "client namespace",
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='bridge.localhost'>"
                .to_string(),
            "<invalid-namespace",
        ),
        (
            "no to",
            "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>".to_string(),
            "<host-unknown",
        ),
        (
            "a stanza instead of the handshake",
            format!("{}<message to='alice@localhost'><body>x</body></message>", header("bridge.localhost")),
            "<not-authorized",
        ),
        (
            "an oversized handshake",
            format!("{}<handshake>{}</handshake>", header("bridge.localhost"), "a".repeat(10_000)),
            "<policy-violation",
        ),
        (
            "not XML",
            format!("{}<handshake><</handshake>", header("bridge.localhost")),
            "<not-well-formed",
        ),
    ];
    for (what, input, want) in cases {
        let mut c = RawClient::connect(addr).await;
        c.send(input).await;
        let out = c.read_to_end().await;
        assert!(out.contains(want), "{what}: {out}");
    }
    let (_c, a) = connect(&s, "bridge.localhost", SECRET).await;
    assert!(a.contains("<handshake"), "still serving: {a}");
    s.stop().await;
}

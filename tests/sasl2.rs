//! SASL2 (XEP-0388) and Bind 2 (XEP-0386) against the real daemon: the
//! feature and its inline list, SCRAM through SASL2 with the XEP-0474
//! hash, a bound session with stream management, carbons and CSI switched
//! on in the same round trip, stable resources per installation, stream
//! resumption inside SASL2 after a cut connection, and the failures.

mod common;
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use common::{scram::*, *};
use sha2::{Digest, Sha256};

const AGENT: &str = "d4565fa7-4d72-4749-b3d3-740edbf87770";

fn agent(id: &str) -> String {
    user_agent(id, "CI")
}

fn authenticate(mech: &str, initial: &str, extra: &str) -> String {
    sasl2_authenticate(mech, initial, extra)
}

async fn features(s: &TestServer) -> (RawClient, String) {
    RawClient::features(s.c2s).await
}

#[tokio::test]
async fn the_feature_lists_mechanisms_and_what_can_be_inlined() {
    let s = TestServer::start().await;
    let (_c, f) = features(&s).await;
    let auth = &f[f.find("<authentication xmlns='urn:xmpp:sasl:2'>").expect(&f)..];
    let auth = &auth[..auth.find("</authentication>").unwrap()];
    for m in ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] {
        assert!(auth.contains(&format!("<mechanism>{m}</mechanism>")), "{m}: {auth}");
    }
    assert!(auth.contains("<sm xmlns='urn:xmpp:sm:3'/>"), "{auth}");
    for var in ["urn:xmpp:carbons:2", "urn:xmpp:csi:0", "urn:xmpp:sm:3"] {
        assert!(auth.contains(&format!("<feature var='{var}'/>")), "{var}: {auth}");
    }
    // SASL1 stays offered beside it.
    assert!(
        f.contains("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"),
        "{f}"
    );
    s.stop().await;
}

/// SCRAM-SHA-256 through SASL2 with Bind 2 asking for everything inline:
/// one request, one challenge, and the session is bound with stream
/// management (resumable), carbons and CSI on.
#[tokio::test]
async fn scram_with_bind2_and_inline_features_in_one_round_trip() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let (mut c, f) = features(&s).await;
    let mut scram = ScramClient::new(true, "alice", "pw", "n,,", &[]);
    let inline = format!(
        "{}<bind xmlns='urn:xmpp:bind:0'><tag>Tests</tag>\
         <enable xmlns='urn:xmpp:sm:3' resume='true'/><enable xmlns='urn:xmpp:carbons:2'/>\
         <inactive xmlns='urn:xmpp:csi:0'/></bind>",
        agent(AGENT)
    );
    c.send(&authenticate("SCRAM-SHA-256", &scram.first(), &inline)).await;
    let challenge = decoded(&c.read_until("</challenge>").await, "challenge");
    // XEP-0474: the hash of what was offered, keyed into the proofs.
    let mut offered: Vec<&str> = [
        "PLAIN",
        "SCRAM-SHA-1",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-256-PLUS",
    ]
    .into_iter()
    .filter(|m| f.contains(&format!("<mechanism>{m}</mechanism>")))
    .collect();
    offered.sort();
    let mut sdp = offered.join("\u{1e}");
    let mut types: Vec<&str> = f
        .split("<channel-binding type='")
        .skip(1)
        .map(|r| &r[..r.find('\'').unwrap()])
        .collect();
    if !types.is_empty() {
        types.sort();
        sdp.push('\u{1f}');
        sdp.push_str(&types.join("\u{1e}"));
    }
    let h = challenge
        .split(',')
        .find_map(|a| a.strip_prefix("h="))
        .expect(&challenge);
    assert_eq!(
        B64.decode(h).unwrap(),
        Sha256::digest(sdp.as_bytes()).to_vec(),
        "{challenge}"
    );
    c.received.clear();
    c.send(&format!(
        "<response xmlns='urn:xmpp:sasl:2'>{}</response>",
        B64.encode(scram.finish(&challenge))
    ))
    .await;
    let out = c.read_until("</stream:features>").await;
    let success = &out[..out.find("</success>").expect(&out)];
    assert!(
        scram.verify(&decoded(success, "additional-data")),
        "server signature: {out}"
    );
    let jid = authorization_identifier(&out);
    assert!(jid.starts_with("alice@localhost/Tests/"), "{jid}");
    assert!(!jid.contains(AGENT), "the user-agent id stays private: {jid}");
    assert!(success.contains("<bound xmlns='urn:xmpp:bind:0'>"), "{out}");
    assert!(success.contains("<enabled xmlns='urn:xmpp:sm:3'"), "{out}");
    assert_eq!(attr_after(success, "<enabled", "resume"), "true");
    // No restart, and nothing left to bind.
    let after = &out[out.find("</success>").unwrap()..];
    assert!(after.contains("<stream:features>"), "{out}");
    assert!(!after.contains("xmpp-bind") && !after.contains("<sm "), "{after}");
    c.received.clear();

    // The session works: presence, CSI holding presence, a message through,
    // acknowledgements counted from the inline <enable/>.
    c.send("<presence/>").await;
    let mut b = RawClient::login(s.c2s, "bob", "pw").await;
    b.send(&format!("<presence to='{jid}'><status>held</status></presence>"))
        .await;
    b.send(&format!("<message type='chat' to='{jid}'><body>hello</body></message>"))
        .await;
    let got = c.read_until(">hello<").await;
    assert!(
        got.find(">held<").unwrap() < got.find(">hello<").unwrap(),
        "held presence first: {got}"
    );
    c.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    let a = c.read_until("<a ").await;
    let a = &a[a.rfind("<a ").unwrap()..];
    c.read_until("/>").await;
    // One stanza handled: the presence.
    assert!(c.received.contains("h='1'"), "{a} / {}", c.received);
    // Carbons were enabled inline: a message alice sends elsewhere is copied here.
    let (mut other, _) = RawClient::login_with(s.c2s, "alice", "pw", Some("other"), Login::Bind2).await;
    other
        .send("<message type='chat' to='bob@localhost'><body>from the other device</body></message>")
        .await;
    let got = c.read_until("from the other device").await;
    assert!(got.contains("<sent xmlns='urn:xmpp:carbons:2'>"), "{got}");
    s.stop().await;
}

/// The same installation gets the same resource each time; its new login
/// replaces its old session (RFC 6120 §7.7.2.2).
#[tokio::test]
async fn the_resource_is_stable_per_installation() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let bind = |id: &str| format!("{}<bind xmlns='urn:xmpp:bind:0'><tag>Tests</tag></bind>", agent(id));
    let mut first = RawClient::connect_tls(s.c2s).await;
    let j1 = authorization_identifier(&first.sasl2_plain("alice", "pw", &bind(AGENT)).await);
    let mut second = RawClient::connect_tls(s.c2s).await;
    let j2 = authorization_identifier(&second.sasl2_plain("alice", "pw", &bind(AGENT)).await);
    assert_eq!(j1, j2);
    let end = first.read_to_end().await;
    assert!(end.contains("<conflict"), "{end}");
    let mut third = RawClient::connect_tls(s.c2s).await;
    let j3 = authorization_identifier(
        &third
            .sasl2_plain("alice", "pw", &bind("0b7d2f39-3b6a-4b9a-9a59-0d3c2c1e0f11"))
            .await,
    );
    assert_ne!(j1, j3, "another installation, another resource");
    // The installation is remembered for the account.
    let store = pushbox::store::Store::open_in(&s.config.data_dir).unwrap();
    let devices = store
        .blocking(|c| pushbox::store::devices::list(c, "alice"))
        .unwrap()
        .unwrap();
    let d = devices.iter().find(|d| d.agent_id == AGENT).expect("remembered");
    assert_eq!(d.software.as_deref(), Some("pushbox tests"));
    assert_eq!(d.device.as_deref(), Some("CI"));
    assert_eq!(devices.len(), 2);
    s.stop().await;
}

/// SASL2 without Bind 2: the bare JID, features with legacy binding, no
/// restart.
#[tokio::test]
async fn sasl2_without_bind2_leaves_binding_to_the_client() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let mut c = RawClient::connect_tls(s.c2s).await;
    let out = c.sasl2_plain("alice", "pw", "").await;
    assert_eq!(authorization_identifier(&out), "alice@localhost");
    assert!(
        out.contains("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"),
        "{out}"
    );
    assert!(!out.contains("<additional-data"), "PLAIN has none: {out}");
    c.received.clear();
    c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>")
        .await;
    assert!(c.read_until("</iq>").await.contains("<jid>alice@localhost/r</jid>"));
    // A second authentication on an authenticated stream is a stream error.
    c.send(&authenticate("PLAIN", "\0alice\0pw", "")).await;
    let end = c.read_to_end().await;
    assert!(end.contains("<stream:error>"), "{end}");
    s.stop().await;
}

/// XEP-0198 §6.2: a session whose connection was cut is resumed inside the
/// SASL2 request; what the client had not acknowledged comes again, once,
/// and no stream features follow `<success/>`.
#[tokio::test]
async fn stream_resumption_inside_sasl2_after_a_cut_connection() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = RawClient::connect_tls(s.c2s).await;
    let out = a
        .sasl2_plain(
            "alice",
            "pw",
            &format!(
                "{}<bind xmlns='urn:xmpp:bind:0'><tag>Phone</tag><enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>",
                agent(AGENT)
            ),
        )
        .await;
    let jid = authorization_identifier(&out);
    let previd = attr_after(&out, "<enabled", "id");
    a.send("<presence/>").await;
    a.received.clear();
    let mut b = RawClient::login(s.c2s, "bob", "pw").await;
    for i in 1..=2 {
        b.send(&format!("<message type='chat' to='{jid}'><body>m{i}</body></message>"))
            .await;
    }
    a.read_until("m2</body>").await;
    drop(a);
    b.send(&format!("<message type='chat' to='{jid}'><body>m3</body></message>"))
        .await;
    b.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    b.read_until("id='sync'").await;

    let mut a2 = RawClient::connect_tls(s.c2s).await;
    let out = a2
        .sasl2_plain(
            "alice",
            "pw",
            &format!(
                "{}<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='1'/><bind xmlns='urn:xmpp:bind:0'><tag>Phone</tag></bind>",
                agent(AGENT)
            ),
        )
        .await;
    assert!(out.contains("<resumed xmlns='urn:xmpp:sm:3'"), "{out}");
    assert_eq!(attr_after(&out, "<resumed", "previd"), previd);
    assert_eq!(authorization_identifier(&out), jid);
    assert!(!out.contains("<bound"), "bind is skipped on resumption: {out}");
    let got = a2.read_until("m3</body>").await;
    assert!(!got.contains("<stream:features>"), "{got}");
    assert_eq!(got.matches(">m1<").count(), 0, "acknowledged: {got}");
    assert_eq!(got.matches(">m2<").count(), 1, "{got}");
    assert_eq!(got.matches(">m3<").count(), 1, "{got}");
    a2.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    a2.read_until("id='p'").await;

    // An unknown session: <failed/> inside <success/>, and a new session is bound.
    let mut a3 = RawClient::connect_tls(s.c2s).await;
    let out = a3
        .sasl2_plain(
            "alice",
            "pw",
            "<resume xmlns='urn:xmpp:sm:3' previd='gone' h='0'/><bind xmlns='urn:xmpp:bind:0'/>",
        )
        .await;
    let success = &out[..out.find("</success>").unwrap()];
    assert!(
        success.contains("<failed xmlns='urn:xmpp:sm:3'><item-not-found"),
        "{out}"
    );
    assert!(success.contains("<bound xmlns='urn:xmpp:bind:0'"), "{out}");
    assert!(
        out[out.find("</success>").unwrap()..].contains("<stream:features>"),
        "{out}"
    );
    s.stop().await;
}

/// Failures carry RFC 6120 conditions in SASL2's `<failure/>`; only wrong
/// credentials count, and the stream ends at the limit as with SASL1.
#[tokio::test]
async fn failures_and_the_login_limit() {
    let s = TestServer::start_with("[limits]\nconnections_per_ip_per_minute = 1000\nmax_auth_failures = 3\n").await;
    s.add_user("alice", "pw");
    let (mut c, _) = features(&s).await;
    c.send(&authenticate("NOPE", "x", "")).await;
    let r = c.read_until("</failure>").await;
    assert!(
        r.contains("<failure xmlns='urn:xmpp:sasl:2'><invalid-mechanism xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"),
        "{r}"
    );
    c.received.clear();
    // SCRAM refused for downgrade reasons is negotiation, not a guess.
    c.send(&authenticate("SCRAM-SHA-256", "y,,n=alice,r=x", "")).await;
    let r = c.read_until("</failure>").await;
    assert!(
        r.contains("<mechanism-too-weak") && r.contains("<text>e=server-does-support-channel-binding</text>"),
        "{r}"
    );
    c.received.clear();
    // An abort in the middle of SCRAM.
    c.send(&authenticate("SCRAM-SHA-1", "n,,n=alice,r=abc", "")).await;
    c.read_until("</challenge>").await;
    c.send("<abort xmlns='urn:xmpp:sasl:2'/>").await;
    assert!(c.read_until("</failure>").await.contains("<aborted"));
    for _ in 0..2 {
        c.received.clear();
        c.send(&authenticate(
            "PLAIN",
            "\0alice\0wrong",
            "<bind xmlns='urn:xmpp:bind:0'/>",
        ))
        .await;
        let r = c.read_until("</failure>").await;
        assert!(r.contains("<not-authorized") && !r.contains("<bound"), "{r}");
    }
    c.received.clear();
    c.send(&authenticate("PLAIN", "\0alice\0wrong", "")).await;
    let end = c.read_to_end().await;
    assert!(
        end.contains("<not-authorized") && end.contains("<policy-violation"),
        "{end}"
    );
    s.stop().await;
}

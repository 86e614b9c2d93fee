//! Logging in the way real clients do: walking down the offered SASL
//! mechanisms, channel bindings (`tls-exporter`, `tls-server-end-point`),
//! and the limits that count only wrong credentials (issue 18).

mod common;
use common::{scram::*, *};
use std::net::SocketAddr;

/// One SASL attempt; returns everything up to the end of the server's answer.
async fn attempt(c: &mut RawClient, mech: &str, first: &str) -> String {
    c.received.clear();
    c.send(&auth(mech, first)).await;
    c.read_until("</failure>").await
}

/// A full SCRAM exchange that must succeed; checks the server's signature.
async fn scram_ok(c: &mut RawClient, mech: &str, mut client: ScramClient) {
    c.received.clear();
    c.send(&auth(mech, &client.first())).await;
    let server_first = decoded(&c.read_until("</challenge>").await, "challenge");
    c.received.clear();
    c.send(&response(&client.finish(&server_first))).await;
    let out = c.read_until("</success>").await;
    assert!(client.verify(&decoded(&out, "success")), "server signature: {out}");
}

/// A full SCRAM exchange that must fail at the end; returns the failure.
async fn scram_refused(c: &mut RawClient, mech: &str, mut client: ScramClient) -> String {
    c.received.clear();
    c.send(&auth(mech, &client.first())).await;
    let server_first = decoded(&c.read_until("</challenge>").await, "challenge");
    c.received.clear();
    c.send(&response(&client.finish(&server_first))).await;
    c.read_until("</failure>").await
}

async fn bind(c: &mut RawClient) {
    c.received.clear();
    c.send(HEADER).await;
    c.read_until("</stream:features>").await;
    c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        .await;
    let r = c.read_until("</iq>").await;
    assert!(r.contains("<jid>alice@localhost/"), "{r}");
}

async fn features(addr: SocketAddr) -> (RawClient, String) {
    RawClient::features(addr).await
}

fn exporter(c: &RawClient) -> Vec<u8> {
    let mut out = [0u8; 32];
    c.tls_conn()
        .export_keying_material(&mut out, b"EXPORTER-Channel-Binding", None)
        .unwrap();
    out.to_vec()
}

/// The walk slixmpp 1.8.3 (poezio) makes on TLS 1.3: -PLUS with
/// `tls-unique`, then SCRAM with the `y` flag, then a mechanism that works.
/// More refusals than `max_auth_failures` (3), all on one connection, and
/// the login still succeeds.
#[tokio::test]
async fn a_client_walking_down_the_mechanisms_logs_in_on_the_same_connection() {
    let s = TestServer::start_with("[limits]\nconnections_per_ip_per_minute = 1000\n").await;
    s.add_user("alice", "pw");
    let (mut c, f) = features(s.c2s).await;
    assert!(f.contains("<mechanism>SCRAM-SHA-256-PLUS</mechanism>"), "{f}");
    assert!(
        f.contains("<channel-binding type=\"tls-exporter\"/>") || f.contains("<channel-binding type='tls-exporter'/>"),
        "{f}"
    );

    for mech in ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"] {
        let r = attempt(&mut c, mech, "p=tls-unique,,n=alice,r=walk1").await;
        assert!(r.contains("<invalid-mechanism"), "{r}");
        assert!(r.contains("e=unsupported-channel-binding-type"), "{r}");
    }
    for mech in ["SCRAM-SHA-256", "SCRAM-SHA-1"] {
        let r = attempt(&mut c, mech, "y,,n=alice,r=walk2").await;
        assert!(r.contains("<mechanism-too-weak"), "{r}");
        assert!(r.contains("e=server-does-support-channel-binding"), "{r}");
    }
    scram_ok(
        &mut c,
        "SCRAM-SHA-1",
        ScramClient::new(false, "alice", "pw", "n,,", &[]),
    )
    .await;
    bind(&mut c).await;
    s.stop().await;
}

#[tokio::test]
async fn scram_plus_with_tls_exporter_and_a_binding_mismatch() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let (mut c, _) = features(s.c2s).await;
    // Bound to other data: refused with RFC 5802's error, not counted (no proof was checked).
    for _ in 0..4 {
        let r = scram_refused(
            &mut c,
            "SCRAM-SHA-256-PLUS",
            ScramClient::new(true, "alice", "pw", "p=tls-exporter,,", &[0u8; 32]),
        )
        .await;
        assert!(r.contains("<not-authorized"), "{r}");
        assert!(r.contains("e=channel-bindings-dont-match"), "{r}");
    }
    let cb = exporter(&c);
    scram_ok(
        &mut c,
        "SCRAM-SHA-256-PLUS",
        ScramClient::new(true, "alice", "pw", "p=tls-exporter,,", &cb),
    )
    .await;
    bind(&mut c).await;
    s.stop().await;
}

/// TLS with only the given versions, then the stream's features.
async fn features_with(addr: SocketAddr, config: std::sync::Arc<rustls::ClientConfig>) -> (RawClient, String) {
    let mut c = RawClient::connect(addr).await;
    c.starttls_with(config).await;
    let f = c.open_stream().await;
    (c, f)
}

/// RFC 5929 §4, computed here from what the client received: the leaf
/// certificate hashed with SHA-256 (the daemon's certificates are
/// ecdsa-with-SHA256) or SHA-384 (ecdsa-with-SHA384).
fn end_point(c: &RawClient, sha384: bool) -> Vec<u8> {
    use sha2::Digest;
    let leaf = &c.tls_conn().peer_certificates().expect("a server certificate")[0];
    if sha384 {
        sha2::Sha384::digest(leaf.as_ref()).to_vec()
    } else {
        sha2::Sha256::digest(leaf.as_ref()).to_vec()
    }
}

fn offers_binding(features: &str, t: &str) -> bool {
    features.contains(&format!("<channel-binding type=\"{t}\"/>"))
        || features.contains(&format!("<channel-binding type='{t}'/>"))
}

/// Conversations pins SCRAM-SHA-256-PLUS with `tls-server-end-point`; XEP-0440
/// makes it mandatory for servers. It works on TLS 1.2 (where it is the only
/// binding) and on TLS 1.3 (beside `tls-exporter`), and data bound to another
/// certificate is refused without counting as a wrong password.
#[tokio::test]
async fn scram_plus_with_tls_server_end_point_on_tls12_and_tls13() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    for (version, exporter_too) in [(&rustls::version::TLS12, false), (&rustls::version::TLS13, true)] {
        let (mut c, f) = features_with(s.c2s, client_tls_config_for(&[version])).await;
        assert!(
            f.contains("<mechanism>SCRAM-SHA-256-PLUS</mechanism>"),
            "{version:?}: {f}"
        );
        assert!(offers_binding(&f, "tls-server-end-point"), "{version:?}: {f}");
        assert_eq!(offers_binding(&f, "tls-exporter"), exporter_too, "{version:?}: {f}");
        let cb = end_point(&c, false);
        for _ in 0..4 {
            let r = scram_refused(
                &mut c,
                "SCRAM-SHA-256-PLUS",
                ScramClient::new(true, "alice", "pw", "p=tls-server-end-point,,", &[7u8; 32]),
            )
            .await;
            assert!(r.contains("e=channel-bindings-dont-match"), "{version:?}: {r}");
        }
        // SCRAM-SHA-1-PLUS binds to the same data (the certificate's hash, not SCRAM's).
        let mech = if exporter_too {
            "SCRAM-SHA-1-PLUS"
        } else {
            "SCRAM-SHA-256-PLUS"
        };
        scram_ok(
            &mut c,
            mech,
            ScramClient::new(!exporter_too, "alice", "pw", "p=tls-server-end-point,,", &cb),
        )
        .await;
        bind(&mut c).await;
    }
    s.stop().await;
}

/// A certificate signed with ECDSA SHA-384 (mode `files`): the binding is its
/// SHA-384 hash, as RFC 5929 says.
#[tokio::test]
async fn the_end_point_hash_follows_the_certificate_signature() {
    let dir = tempfile::tempdir().unwrap();
    let alg = &rcgen::PKCS_ECDSA_P384_SHA384;
    let ca_key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf_key = rcgen::KeyPair::generate_for(alg).unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    let s = TestServer::start_with(&format!(
        "[tls]\nmode = \"files\"\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    ))
    .await;
    s.add_user("alice", "pw");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let (mut c, f) = features_with(s.c2s, config).await;
    assert!(offers_binding(&f, "tls-server-end-point"), "{f}");
    let wrong = end_point(&c, false);
    let r = scram_refused(
        &mut c,
        "SCRAM-SHA-256-PLUS",
        ScramClient::new(true, "alice", "pw", "p=tls-server-end-point,,", &wrong),
    )
    .await;
    assert!(
        r.contains("e=channel-bindings-dont-match"),
        "SHA-256 of a SHA-384 certificate: {r}"
    );
    let cb = end_point(&c, true);
    assert_eq!(cb.len(), 48);
    scram_ok(
        &mut c,
        "SCRAM-SHA-256-PLUS",
        ScramClient::new(true, "alice", "pw", "p=tls-server-end-point,,", &cb),
    )
    .await;
    bind(&mut c).await;
    s.stop().await;
}

/// XEP-0474: the server-first message carries `h`, the hash of the
/// mechanisms and binding types offered, which a client recomputes from the
/// features it saw. Computed here from the features text.
#[tokio::test]
async fn the_server_first_message_carries_the_downgrade_protection_hash() {
    use base64::Engine;
    use sha2::Digest;
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let (mut c, f) = features_with(s.c2s, client_tls_config_for(&[version])).await;
        // XEP-0474 §5.1: the list of the SASL profile in use (SASL1 here;
        // SASL2's `<authentication/>` lists the same ones).
        let sasl1 = &f[f.find("<mechanisms").unwrap()..f.find("</mechanisms>").unwrap()];
        let mut mechs: Vec<&str> = sasl1
            .split("<mechanism>")
            .skip(1)
            .map(|m| &m[..m.find("</mechanism>").unwrap()])
            .collect();
        mechs.sort();
        let mut types: Vec<&str> = ["tls-exporter", "tls-server-end-point", "tls-unique"]
            .into_iter()
            .filter(|t| offers_binding(&f, t))
            .collect();
        types.sort();
        let seen = format!("{}\u{1f}{}", mechs.join("\u{1e}"), types.join("\u{1e}"));
        let want = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(seen.as_bytes()));
        let client = ScramClient::new(true, "alice", "pw", "n,,", &[]);
        c.received.clear();
        c.send(&auth("SCRAM-SHA-256", &client.first())).await;
        let server_first = decoded(&c.read_until("</challenge>").await, "challenge");
        let h = server_first
            .split(',')
            .find_map(|a| a.strip_prefix("h="))
            .unwrap_or_default();
        assert_eq!(h, want, "{version:?}: {server_first} for {seen:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn three_wrong_passwords_still_end_the_connection() {
    let s = TestServer::start_with("[limits]\nconnections_per_ip_per_minute = 1000\n").await;
    s.add_user("alice", "pw");
    let (mut c, _) = features(s.c2s).await;
    for i in 0..2 {
        let r = scram_refused(
            &mut c,
            "SCRAM-SHA-256",
            ScramClient::new(true, "alice", "nope", "n,,", &[]),
        )
        .await;
        assert!(
            r.contains("<not-authorized") && r.contains("e=invalid-proof"),
            "{i}: {r}"
        );
    }
    // Negotiation in between does not bring the end closer, nor push it away.
    let r = attempt(&mut c, "SCRAM-SHA-256-PLUS", "p=tls-unique,,n=alice,r=x").await;
    assert!(r.contains("<invalid-mechanism"), "{r}");
    c.received.clear();
    c.send(&auth("PLAIN", "\0alice\0still-wrong")).await;
    let out = c.read_to_end().await;
    assert!(out.contains("<not-authorized"), "{out}");
    assert!(out.contains("<policy-violation"), "{out}");
    s.stop().await;
}

#[tokio::test]
async fn the_per_address_limit_counts_only_wrong_credentials() {
    let s = TestServer::start_with(
        "[limits]\nconnections_per_ip_per_minute = 1000\nmax_auth_failures = 3\nmax_auth_failures_per_ip = 2\n",
    )
    .await;
    s.add_user("alice", "pw");
    // Negotiation failures, many of them, then a good login: nothing counted.
    for _ in 0..3 {
        let (mut c, _) = features(s.c2s).await;
        for _ in 0..4 {
            attempt(&mut c, "SCRAM-SHA-256", "y,,n=alice,r=x").await;
        }
        scram_ok(
            &mut c,
            "SCRAM-SHA-256",
            ScramClient::new(true, "alice", "pw", "n,,", &[]),
        )
        .await;
    }
    // Wrong passwords from this address: two are allowed, the third blocks it.
    let (mut c, _) = features(s.c2s).await;
    for _ in 0..2 {
        let r = attempt(&mut c, "PLAIN", "\0alice\0wrong").await;
        assert!(r.contains("<not-authorized"), "{r}");
    }
    c.received.clear();
    c.send(&auth("PLAIN", "\0alice\0wrong")).await;
    assert!(c.read_to_end().await.contains("<policy-violation"));
    // Even the right password is refused from this address now.
    let (mut c, _) = features(s.c2s).await;
    c.send(&auth("PLAIN", "\0alice\0pw")).await;
    let out = c.read_to_end().await;
    assert!(out.contains("too many failed logins"), "{out}");
    s.stop().await;
}

/// poezio asks the domain's disco#info for `jabber:iq:private` or
/// `pubsub#publish` before it uses remote bookmarks.
#[tokio::test]
async fn the_domain_announces_bookmark_storage() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let mut c = RawClient::login(s.c2s, "alice", "pw").await;
    c.send("<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let r = c.read_until("</iq>").await;
    assert!(
        r.contains("var=\"jabber:iq:private\"") || r.contains("var='jabber:iq:private'"),
        "{r}"
    );
    assert!(r.contains("http://jabber.org/protocol/pubsub#publish"), "{r}");
    assert!(
        r.contains("category=\"pubsub\"") || r.contains("category='pubsub'"),
        "{r}"
    );
    s.stop().await;
}

//! Federation between two in-process daemons (`a.example` and `b.example`,
//! reached through `[federation.hosts]`), plus hostile and failing peers
//! played by raw TCP/TLS: a forged `from` ends the stream, an unreachable
//! or silent domain bounces with the right error, a peer whose certificate
//! does not verify is refused when valid certificates are required.

mod common;

use common::{install_test_ca, rand_id, test_ca, xml, TestClient, WAIT};
use pushbox::config::Config;
use std::{net::SocketAddr, path::Path, sync::Arc};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_xmpp::{connect::DnsConfig, parsers::jid::BareJid, xmlstream::Timeouts, Client};

struct Node {
    /// First, so that dropping a node stops its daemon before its directory goes.
    daemon: common::daemon::InProcess,
    domain: String,
    c2s: SocketAddr,
    s2s: SocketAddr,
    /// Its XEP-0114 listener (answers only for configured components).
    component: SocketAddr,
    dir: tempfile::TempDir,
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

impl Node {
    /// Start a daemon for `domain` on pre-bound listeners. `shared_ca`: sign
    /// its certificate with the test CA (which `SSL_CERT_FILE` makes trusted).
    async fn start(domain: &str, c2s: TcpListener, s2s: TcpListener, shared_ca: bool, extra: &str) -> Node {
        // Made first: it also sets SSL_CERT_FILE, which the clients read.
        test_ca();
        if let Ok(f) = std::env::var("PUSHBOX_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(f)
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("data/tls");
        if shared_ca {
            install_test_ca(&tls);
        } else {
            std::fs::create_dir_all(&tls).unwrap();
        }
        let (c2s_addr, s2s_addr) = (c2s.local_addr().unwrap(), s2s.local_addr().unwrap());
        let toml = format!(
            "domain = \"{domain}\"\n\
             [listen]\nc2s = [\"{c2s_addr}\"]\nc2s_direct_tls = []\ns2s = [\"{s2s_addr}\"]\nhttps = []\n\
             [limits]\nconnections_per_ip_per_minute = 10000\n\
             {extra}\n"
        );
        let config = Config::from_toml_str(&toml, Some(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        let component = bind().await;
        let component_addr = component.local_addr().unwrap();
        let listeners = pushbox::Listeners {
            c2s: vec![c2s],
            s2s: vec![s2s],
            component: vec![component],
            ..Default::default()
        };
        let daemon = common::daemon::InProcess::start(config, listeners, WAIT).await;
        Node {
            domain: domain.into(),
            c2s: c2s_addr,
            s2s: s2s_addr,
            component: component_addr,
            dir,
            daemon,
        }
    }

    fn add_user(&self, name: &str, pw: &str) {
        let s = pushbox::store::Store::open_in(&self.dir.path().join("data")).unwrap();
        s.blocking(|c| pushbox::store::accounts::create(c, name, pw, false))
            .unwrap();
    }

    fn jid(&self, name: &str) -> String {
        format!("{name}@{}", self.domain)
    }

    async fn client(&self, name: &str, pw: &str) -> TestClient {
        let jid = BareJid::new(&self.jid(name)).unwrap();
        let client = Client::new_starttls(jid, pw, DnsConfig::addr(&self.c2s.to_string()), Timeouts::default());
        let mut c = TestClient {
            client,
            jid: None,
            backlog: Default::default(),
        };
        c.wait_online().await;
        c
    }

    async fn stop(mut self) {
        self.daemon.stop(WAIT).await.expect("daemon stops").unwrap();
    }
}

/// `connect_timeout` covers TCP, TLS and dialback (with the peer's own
/// connection back): 10 s leaves room on a loaded machine and is still
/// well within what a test waits for a bounce ([`WAIT`]).
fn federation(hosts: &[(&str, SocketAddr)], more: &str) -> String {
    let mut s = format!("[federation]\nenabled = true\nconnect_timeout = \"5s\"\n{more}\n[federation.hosts]\n");
    for (d, a) in hosts {
        s.push_str(&format!("\"{d}\" = \"{a}\"\n"));
    }
    s
}

/// Two daemons that trust each other's certificates (one test CA).
async fn pair(more: &str) -> (Node, Node) {
    two_nodes(more, &["a.example"]).await
}

/// `a.example` (with `alice`) reaching `b.example` (with `bob`) through
/// `[federation.hosts]`; `b.example` reaches `a.example`'s s2s listener
/// under the names in `b_knows` only.
async fn two_nodes(more: &str, b_knows: &[&str]) -> (Node, Node) {
    let (ac, as_, bc, bs) = (bind().await, bind().await, bind().await, bind().await);
    let (a_s2s, b_s2s) = (as_.local_addr().unwrap(), bs.local_addr().unwrap());
    let a = Node::start("a.example", ac, as_, true, &federation(&[("b.example", b_s2s)], more)).await;
    let b_hosts: Vec<_> = b_knows.iter().map(|n| (*n, a_s2s)).collect();
    let b = Node::start("b.example", bc, bs, true, &federation(&b_hosts, more)).await;
    a.add_user("alice", "pw-a");
    b.add_user("bob", "pw-b");
    (a, b)
}

#[tokio::test]
async fn messages_presence_and_iq_cross_between_two_daemons() {
    let (a, b) = pair("require_valid_certificates = true").await;
    let mut alice = a.client("alice", "pw-a").await;
    let mut bob = b.client("bob", "pw-b").await;
    let (aj, bj) = (a.jid("alice"), b.jid("bob"));
    alice.send_el(xml("<presence xmlns='jabber:client'/>")).await;
    bob.send_el(xml("<presence xmlns='jabber:client'/>")).await;

    // Messages both ways.
    alice
        .send_el(xml(&format!(
            "<message xmlns='jabber:client' to='{bj}' type='chat'><body>hi bob</body></message>"
        )))
        .await;
    let m = bob
        .expect("message from alice", |e| {
            e.name() == "message" && e.attr("from").is_some_and(|f| f.starts_with(&aj))
        })
        .await;
    assert_eq!(m.get_child("body", "jabber:client").unwrap().text(), "hi bob");
    bob.send_el(xml(&format!(
        "<message xmlns='jabber:client' to='{}' type='chat'><body>hi alice</body></message>",
        alice.full_jid()
    )))
    .await;
    let m = alice
        .expect("message from bob", |e| {
            e.name() == "message" && e.attr("from").is_some_and(|f| f.starts_with(&bj))
        })
        .await;
    assert_eq!(m.get_child("body", "jabber:client").unwrap().text(), "hi alice");

    // Presence subscription: alice asks, bob approves, then the reverse.
    alice
        .send_el(xml(&format!(
            "<presence xmlns='jabber:client' to='{bj}' type='subscribe'/>"
        )))
        .await;
    bob.expect("subscribe", |e| {
        e.name() == "presence" && e.attr("type") == Some("subscribe")
    })
    .await;
    bob.send_el(xml(&format!(
        "<presence xmlns='jabber:client' to='{aj}' type='subscribed'/>"
    )))
    .await;
    alice
        .expect("subscribed", |e| {
            e.name() == "presence" && e.attr("type") == Some("subscribed")
        })
        .await;
    // Bob's current presence follows the approval.
    alice
        .expect("bob's presence", |e| {
            e.name() == "presence" && e.attr("type").is_none() && e.attr("from").is_some_and(|f| f.starts_with(&bj))
        })
        .await;
    bob.send_el(xml(&format!(
        "<presence xmlns='jabber:client' to='{aj}' type='subscribe'/>"
    )))
    .await;
    alice
        .expect("subscribe from bob", |e| {
            e.name() == "presence" && e.attr("type") == Some("subscribe")
        })
        .await;
    alice
        .send_el(xml(&format!(
            "<presence xmlns='jabber:client' to='{bj}' type='subscribed'/>"
        )))
        .await;
    bob.expect("subscribed from alice", |e| {
        e.name() == "presence" && e.attr("type") == Some("subscribed")
    })
    .await;

    // IQ round trip: ping the remote server and version of the remote domain.
    let r = alice
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='b.example'><ping xmlns='urn:xmpp:ping'/></iq>",
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let r = bob
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='a.example'><query xmlns='jabber:iq:version'/></iq>",
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    assert!(r.get_child("query", "jabber:iq:version").is_some());

    // A fresh login of alice probes bob (mutual subscription) and gets his presence.
    alice.close().await;
    let mut alice2 = a.client("alice", "pw-a").await;
    alice2.send_el(xml("<presence xmlns='jabber:client'/>")).await;
    alice2
        .expect("bob's presence after a probe", |e| {
            e.name() == "presence" && e.attr("type").is_none() && e.attr("from").is_some_and(|f| f.starts_with(&bj))
        })
        .await;
    alice2.close().await;
    bob.close().await;
    a.stop().await;
    b.stop().await;
}

/// With certificates both sides trust, streams authenticate with SASL
/// EXTERNAL: `b.example` here has no way to reach `a.example` (no DNS, no
/// host override), so a dialback check could never succeed, yet alice's
/// message arrives.
#[tokio::test]
async fn sasl_external_authenticates_without_dialback() {
    let (a, b) = two_nodes("require_valid_certificates = true", &[]).await;
    let mut alice = a.client("alice", "pw-a").await;
    let mut bob = b.client("bob", "pw-b").await;
    bob.send_el(xml("<presence xmlns='jabber:client'/>")).await;
    alice
        .send_el(xml(
            "<message xmlns='jabber:client' to='bob@b.example' type='chat'><body>no dialback needed</body></message>",
        ))
        .await;
    let m = bob
        .expect("message from alice", |e| {
            e.name() == "message" && e.attr("from").is_some_and(|f| f.starts_with("alice@a.example"))
        })
        .await;
    assert_eq!(
        m.get_child("body", "jabber:client").unwrap().text(),
        "no dialback needed"
    );
    alice.close().await;
    bob.close().await;
    a.stop().await;
    b.stop().await;
}

/// A remote server reaches this daemon's services (`push.a.example`) over
/// federation: the incoming stream is for the service's name, and the
/// answer goes back on an outgoing stream from that name, which the remote
/// server verifies by dialback against `push.a.example` itself.
#[tokio::test]
async fn remote_servers_reach_the_service_subdomains() {
    let (a, b) = two_nodes(
        "require_valid_certificates = true",
        &["a.example", "push.a.example", "upload.a.example"],
    )
    .await;
    let mut bob = b.client("bob", "pw-b").await;
    let r = bob
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='push.a.example'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    assert_eq!(r.attr("from"), Some("push.a.example"));
    let q = r.get_child("query", "http://jabber.org/protocol/disco#info").unwrap();
    assert!(
        q.children()
            .any(|c| c.name() == "identity" && c.attr("category") == Some("pubsub") && c.attr("type") == Some("push")),
        "{r:?}"
    );
    // A name the daemon does not serve is refused at the stream header.
    let r = bob
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='nothing.a.example'><ping xmlns='urn:xmpp:ping'/></iq>",
        ))
        .await;
    assert_eq!(r.attr("type"), Some("error"), "{r:?}");
    bob.close().await;
    a.stop().await;
    b.stop().await;
}

/// An external component on `bridge.a.example` (XEP-0114) is reached from
/// `b.example` and answers over federation. Its name is not in `a.example`'s
/// certificate, so the peers authenticate it with dialback.
#[tokio::test]
async fn a_component_domain_federates() {
    let secret = "component-secret-for-federation";
    let (ac, as_, bc, bs) = (bind().await, bind().await, bind().await, bind().await);
    let (a_s2s, b_s2s) = (as_.local_addr().unwrap(), bs.local_addr().unwrap());
    let more = "require_valid_certificates = false";
    let a = Node::start(
        "a.example",
        ac,
        as_,
        true,
        &format!(
            "[components.\"bridge.a.example\"]\nsecret = \"{secret}\"\n{}",
            federation(&[("b.example", b_s2s)], more)
        ),
    )
    .await;
    let b = Node::start(
        "b.example",
        bc,
        bs,
        true,
        &federation(&[("a.example", a_s2s), ("bridge.a.example", a_s2s)], more),
    )
    .await;
    b.add_user("bob", "pw-b");

    // The component: XEP-0114 by hand.
    let mut comp = TcpStream::connect(a.component).await.unwrap();
    comp.write_all(
        b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='bridge.a.example'>",
    )
    .await
    .unwrap();
    let mut acc = String::new();
    read_until_plain(&mut comp, &mut acc, "id='").await;
    read_until_plain(&mut comp, &mut acc, "'>").await;
    let id = acc
        .split("id='")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap()
        .to_string();
    use sha1::Digest;
    let hs: String = sha1::Sha1::digest(format!("{id}{secret}"))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    comp.write_all(format!("<handshake>{hs}</handshake>").as_bytes())
        .await
        .unwrap();
    read_until_plain(&mut comp, &mut acc, "<handshake").await;
    acc.clear();

    let mut bob = b.client("bob", "pw-b").await;
    bob.send_el(xml(
        "<message xmlns='jabber:client' to='echo@bridge.a.example' id='fed1'><body>over s2s</body></message>",
    ))
    .await;
    read_until_plain(&mut comp, &mut acc, "</message>").await;
    assert!(acc.contains("over s2s") && acc.contains("bob@b.example/"), "{acc}");
    comp.write_all(
        format!(
            "<message from='echo@bridge.a.example' to='{}' id='fed2'><body>and back</body></message>",
            bob.full_jid()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let m = bob
        .expect("the component's answer", |e| {
            e.name() == "message" && e.attr("id") == Some("fed2")
        })
        .await;
    assert_eq!(m.attr("from"), Some("echo@bridge.a.example"));
    bob.close().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn unreachable_and_silent_domains_bounce() {
    // A port nothing listens on, and a listener that never says a word.
    let closed = bind().await.local_addr().unwrap();
    let silent = bind().await;
    let silent_addr = silent.local_addr().unwrap();
    let keep = tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let (ac, as_) = (bind().await, bind().await);
    let a = Node::start(
        "a.example",
        ac,
        as_,
        true,
        &format!(
            "[federation]\nenabled = true\nconnect_timeout = \"5s\"\n[federation.hosts]\n\
             \"closed.example\" = \"{closed}\"\n\"silent.example\" = \"{silent_addr}\"\n"
        ),
    )
    .await;
    a.add_user("alice", "pw-a");
    let mut alice = a.client("alice", "pw-a").await;
    for (to, cond) in [
        ("x@closed.example", "remote-server-not-found"),
        ("x@silent.example", "remote-server-timeout"),
    ] {
        let id = format!("m{}", rand_id());
        alice
            .send_el(xml(&format!(
                "<message xmlns='jabber:client' id='{id}' to='{to}' type='chat'><body>anyone?</body></message>"
            )))
            .await;
        let e = alice
            .expect("bounce", |e| e.name() == "message" && e.attr("id") == Some(id.as_str()))
            .await;
        assert_eq!(e.attr("type"), Some("error"), "{e:?}");
        let err = e.get_child("error", "jabber:client").expect("an error child");
        assert!(
            err.get_child(cond, "urn:ietf:params:xml:ns:xmpp-stanzas").is_some(),
            "{to}: expected {cond}: {e:?}"
        );
    }
    alice.close().await;
    a.stop().await;
    keep.abort();
}

#[tokio::test]
async fn a_peer_with_an_unverifiable_certificate_is_refused_when_required() {
    // b.example signs with its own CA, which a.example does not trust.
    let (ac, as_, bc, bs) = (bind().await, bind().await, bind().await, bind().await);
    let (a_s2s, b_s2s) = (as_.local_addr().unwrap(), bs.local_addr().unwrap());
    let auth = bind().await;
    let auth_addr = auth.local_addr().unwrap();
    let fake = tokio::spawn(fake_authoritative(auth));
    let a = Node::start(
        "a.example",
        ac,
        as_,
        true,
        &federation(
            &[("b.example", b_s2s), ("evil.example", auth_addr)],
            "require_valid_certificates = true",
        ),
    )
    .await;
    let b = Node::start(
        "b.example",
        bc,
        bs,
        false,
        &federation(&[("a.example", a_s2s)], "require_valid_certificates = false"),
    )
    .await;
    a.add_user("alice", "pw-a");
    b.add_user("bob", "pw-b");
    let mut alice = a.client("alice", "pw-a").await;
    let id = format!("m{}", rand_id());
    alice
        .send_el(xml(&format!(
            "<message xmlns='jabber:client' id='{id}' to='bob@b.example' type='chat'><body>x</body></message>"
        )))
        .await;
    let e = alice
        .expect("bounce", |e| e.name() == "message" && e.attr("id") == Some(id.as_str()))
        .await;
    assert_eq!(e.attr("type"), Some("error"), "{e:?}");

    // Incoming: evil.example's authoritative server shows a self-signed
    // certificate, so its dialback key cannot be checked: refused.
    let mut evil = RawServer::connect(a.s2s, "evil.example", "a.example").await;
    evil.send("<db:result from='evil.example' to='a.example'>some-key</db:result>")
        .await;
    let got = evil.read_until("</db:result>").await;
    assert!(got.contains("type='error'") && !got.contains("type='valid'"), "{got}");
    fake.abort();
    alice.close().await;
    a.stop().await;
    b.stop().await;
}

/// A raw server-to-server client: TCP, STARTTLS, then text.
struct RawServer {
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    received: String,
}

fn header(from: &str, to: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' \
         xmlns:stream='http://etherx.jabber.org/streams' from='{from}' to='{to}' version='1.0'>"
    )
}

async fn read_until_plain(tcp: &mut TcpStream, acc: &mut String, needle: &str) {
    let mut buf = [0u8; 4096];
    while !acc.contains(needle) {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before {needle}: {acc}");
        acc.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

fn trust_all_ca(ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

impl RawServer {
    async fn connect(addr: SocketAddr, from: &str, to: &str) -> RawServer {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut acc = String::new();
        tcp.write_all(header(from, to).as_bytes()).await.unwrap();
        read_until_plain(&mut tcp, &mut acc, "</stream:features>").await;
        tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await
            .unwrap();
        read_until_plain(&mut tcp, &mut acc, "<proceed").await;
        let name = rustls_pki_types::ServerName::try_from(to.to_string()).unwrap();
        let tls = tokio_rustls::TlsConnector::from(trust_all_ca(&test_ca().join("ca.pem")))
            .connect(name, tcp)
            .await
            .unwrap();
        let mut s = RawServer {
            tls,
            received: String::new(),
        };
        s.send(&header(from, to)).await;
        s.read_until("</stream:features>").await;
        s
    }

    async fn send(&mut self, s: &str) {
        self.tls.write_all(s.as_bytes()).await.unwrap();
    }

    async fn read_until(&mut self, needle: &str) -> String {
        let fut = async {
            let mut buf = [0u8; 8192];
            while !self.received.contains(needle) {
                let n = self.tls.read(&mut buf).await.unwrap_or(0);
                assert!(n > 0, "closed before {needle:?}: {}", self.received);
                self.received.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            self.received.clone()
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {needle:?}: {}", self.received))
    }

    async fn read_to_end(&mut self) -> String {
        let fut = async {
            let mut buf = [0u8; 8192];
            loop {
                let n = self.tls.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return self.received.clone();
                }
                self.received.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .expect("the server closes the stream")
    }
}

/// The fake peer `evil.example`: its authoritative server is this raw
/// listener, which answers every dialback verification "valid".
async fn fake_authoritative(listener: TcpListener) {
    while let Ok((mut tcp, _)) = listener.accept().await {
        tokio::spawn(async move {
            let cert = rcgen::generate_simple_self_signed(vec!["evil.example".to_string()]).unwrap();
            let key = rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
            let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert.der().clone()], key)
                .unwrap();
            let mut acc = String::new();
            read_until_plain(&mut tcp, &mut acc, ">").await;
            tcp.write_all(
                format!(
                    "{}<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>",
                    header("evil.example", "a.example").replace("from=", "id='v1' from=")
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            read_until_plain(&mut tcp, &mut acc, "<starttls").await;
            tcp.write_all(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                .await
                .unwrap();
            let mut tls = tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
                .accept(tcp)
                .await
                .unwrap();
            let mut acc = String::new();
            let mut buf = [0u8; 4096];
            let mut sent_header = false;
            loop {
                let n = tls.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                acc.push_str(&String::from_utf8_lossy(&buf[..n]));
                if !sent_header && acc.contains("<stream:stream") {
                    sent_header = true;
                    let h = header("evil.example", "a.example").replace("from=", "id='v2' from=");
                    tls.write_all(format!("{h}<stream:features/>").as_bytes())
                        .await
                        .unwrap();
                }
                if let Some(i) = acc
                    .find(" id='")
                    .or_else(|| acc.find(" id=\""))
                    .filter(|_| acc.contains("</verify>") || acc.contains("</db:verify>"))
                {
                    let rest = &acc[i + 5..];
                    let id: String = rest.chars().take_while(|c| *c != '\'' && *c != '"').collect();
                    // Answer for whichever domain was asked about (evil.example or a subdomain).
                    let asked = acc
                        .find("verify ")
                        .map(|v| &acc[v..])
                        .and_then(|v| v.find(" to='").map(|t| &v[t + 5..]))
                        .map(|t| t.chars().take_while(|c| *c != '\'').collect::<String>())
                        .unwrap_or_else(|| "evil.example".into());
                    let answer = format!("<db:verify from='{asked}' to='a.example' id='{id}' type='valid'/>");
                    tls.write_all(answer.as_bytes()).await.unwrap();
                    return;
                }
            }
        });
    }
}

/// `a.example` with `alice` online, and [`fake_authoritative`] serving as
/// the authoritative server of `domains` (certificates not required).
async fn a_and_a_fake_peer(domains: &[&str]) -> (tokio::task::JoinHandle<()>, Node, TestClient) {
    let auth = bind().await;
    let auth_addr = auth.local_addr().unwrap();
    let fake = tokio::spawn(fake_authoritative(auth));
    let (ac, as_) = (bind().await, bind().await);
    let hosts: Vec<_> = domains.iter().map(|d| (*d, auth_addr)).collect();
    let a = Node::start(
        "a.example",
        ac,
        as_,
        true,
        &federation(&hosts, "require_valid_certificates = false"),
    )
    .await;
    a.add_user("alice", "pw-a");
    let alice = a.client("alice", "pw-a").await;
    (fake, a, alice)
}

/// XEP-0220 §4.4, receiving side: a peer authenticated on a stream may
/// authenticate further domains on it (piggybacking), and may address any
/// of the names this daemon serves.
#[tokio::test]
async fn dialback_piggybacking_on_an_incoming_stream() {
    let (fake, a, mut alice) = a_and_a_fake_peer(&["evil.example", "sub.evil.example"]).await;
    let mut peer = RawServer::connect(a.s2s, "evil.example", "a.example").await;
    peer.send("<db:result from='evil.example' to='a.example'>key-1</db:result>")
        .await;
    peer.read_until("type='valid'").await;
    peer.received.clear();
    // A second domain on the same stream: checked with its own authoritative server.
    peer.send("<db:result from='sub.evil.example' to='a.example'>key-2</db:result>")
        .await;
    let got = peer.read_until("type='valid'").await;
    assert!(
        got.contains("to='sub.evil.example'") || got.contains("to=\"sub.evil.example\""),
        "{got}"
    );
    peer.received.clear();
    // An authenticated domain towards a service name of this daemon.
    peer.send("<db:result from='evil.example' to='push.a.example'>key-3</db:result>")
        .await;
    let got = peer.read_until("type='valid'").await;
    assert!(
        got.contains("from='push.a.example'") || got.contains("from=\"push.a.example\""),
        "{got}"
    );
    peer.send(&format!(
        "<message from='eve@sub.evil.example/y' to='{}' type='chat'><body>piggybacked</body></message>",
        alice.full_jid()
    ))
    .await;
    let m = alice
        .expect("message from sub.evil.example", |e| e.name() == "message")
        .await;
    assert_eq!(m.attr("from"), Some("eve@sub.evil.example/y"));
    // A domain nobody vouched for is still refused.
    peer.send(&format!(
        "<message from='x@other.evil.example' to='{}' type='chat'><body>no</body></message>",
        alice.full_jid()
    ))
    .await;
    assert!(peer.read_to_end().await.contains("invalid-from"));
    alice.close().await;
    a.stop().await;
    fake.abort();
}

#[tokio::test]
async fn a_forged_from_on_an_authenticated_stream_ends_it() {
    let (fake, a, mut alice) = a_and_a_fake_peer(&["evil.example"]).await;

    let mut evil = RawServer::connect(a.s2s, "evil.example", "a.example").await;
    // Before authentication, no stanza is accepted.
    evil.send("<db:result from='evil.example' to='a.example'>some-key</db:result>")
        .await;
    evil.read_until("type='valid'").await;
    // Authenticated as evil.example: its stanzas are delivered.
    evil.send(&format!(
        "<message from='mallory@evil.example/x' to='{}' type='chat'><body>legit</body></message>",
        alice.full_jid()
    ))
    .await;
    let m = alice
        .expect("message from evil.example", |e| e.name() == "message")
        .await;
    assert_eq!(m.attr("from"), Some("mallory@evil.example/x"));
    assert_eq!(m.ns(), "jabber:client");
    // A stanza claiming another domain ends the stream with invalid-from.
    evil.send(&format!(
        "<message from='bob@b.example' to='{}' type='chat'><body>forged</body></message>",
        alice.full_jid()
    ))
    .await;
    let all = evil.read_to_end().await;
    assert!(all.contains("invalid-from"), "{all}");
    // And the forged message was not delivered.
    let probe = format!("m{}", rand_id());
    alice
        .send_el(xml(&format!(
            "<message xmlns='jabber:client' id='{probe}' to='{}' type='chat'><body>self</body></message>",
            alice.full_jid()
        )))
        .await;
    alice
        .expect("own message", |e| e.attr("id") == Some(probe.as_str()))
        .await;
    assert!(
        !alice.backlog.iter().any(|e| e
            .get_child("body", "jabber:client")
            .is_some_and(|b| b.text() == "forged")),
        "the forged stanza was delivered"
    );
    alice.close().await;
    a.stop().await;
    fake.abort();
}

#[tokio::test]
async fn stanzas_before_dialback_are_refused() {
    let (ac, as_) = (bind().await, bind().await);
    let a = Node::start("a.example", ac, as_, true, "[federation]\nenabled = true\n").await;
    let mut peer = RawServer::connect(a.s2s, "b.example", "a.example").await;
    assert!(
        peer.received.contains("urn:xmpp:features:dialback"),
        "{}",
        peer.received
    );
    peer.send("<message from='x@b.example' to='alice@a.example'><body>hi</body></message>")
        .await;
    let all = peer.read_to_end().await;
    assert!(all.contains("invalid-from"), "{all}");
    a.stop().await;
}

/// Read on a plain TCP stream until the peer closes (or is quiet for WAIT).
async fn read_all_plain(tcp: &mut TcpStream) -> String {
    let mut acc = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(Ok(n)) = tokio::time::timeout(WAIT, tcp.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        acc.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&acc).into_owned()
}

/// The client's session still answers a ping to its server.
async fn still_serving(alice: &mut TestClient, case: &str) {
    let id = format!("alive{}", rand_id());
    let r = alice
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='get' id='{id}' to='a.example'><ping xmlns='urn:xmpp:ping'/></iq>"
        )))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "after {case}");
}

/// Hostile input on the s2s port, each case with the answer it must get.
/// After every case the local client's session still answers a ping and a
/// new peer stream still gets its features after STARTTLS.
#[tokio::test]
async fn hostile_s2s_input_gets_the_named_answers() {
    let (ac, as_) = (bind().await, bind().await);
    let a = Node::start(
        "a.example",
        ac,
        as_,
        true,
        // Continues the base config's `[limits]` table.
        "auth_timeout = \"3s\"\n[federation]\nenabled = true\n",
    )
    .await;
    a.add_user("alice", "pw-a");
    let mut alice = a.client("alice", "pw-a").await;
    let mut failures = Vec::new();
    let mut n = 0;
    // Before TLS, on plain TCP.
    let plain: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "binary garbage",
            b"\x16\x03\x01\x02\x00\xff\xfe\x00garbage".to_vec(),
            "not-well-formed",
        ),
        // Text without a `<` is held as character data until the auth timeout ends the stream.
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n".to_vec(),
            "connection-timeout",
        ),
        (
            "jabber:client on the s2s port",
            header("b.example", "a.example")
                .replace("jabber:server", "jabber:client")
                .into_bytes(),
            "invalid-namespace",
        ),
        (
            "a domain not served here",
            header("b.example", "nowhere.example").into_bytes(),
            "host-unknown",
        ),
        (
            "a stanza before STARTTLS",
            format!(
                "{}<message from='x@b.example' to='alice@a.example'><body>hi</body></message>",
                header("b.example", "a.example")
            )
            .into_bytes(),
            "</stream:stream>",
        ),
        (
            "garbage after the header",
            format!("{}\u{0}\u{1}<<>>", header("b.example", "a.example")).into_bytes(),
            "not-well-formed",
        ),
    ];
    for (name, bytes, want) in plain {
        n += 1;
        let mut tcp = TcpStream::connect(a.s2s).await.unwrap();
        tcp.write_all(&bytes).await.unwrap();
        let got = read_all_plain(&mut tcp).await;
        if !got.contains(want) || got.contains("hi</body>") {
            failures.push(format!("{name}: want {want:?}, got {got:.400}"));
        }
        still_serving(&mut alice, name).await;
    }

    // After STARTTLS, as b.example (whose dialback is never verified).
    let big = format!(
        "<message from='x@b.example' to='alice@a.example'><body>{}</body></message>",
        "a".repeat(600 * 1024)
    );
    let tls_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "binary garbage after TLS",
            b"\xff\xfe\x00\x01<<>>".to_vec(),
            "not-well-formed",
        ),
        (
            "dialback verify with a wrong key",
            b"<db:verify from='b.example' to='a.example' id='stream-1'>not-the-key</db:verify>".to_vec(),
            "type='invalid'",
        ),
        (
            "a stanza from a domain that never authenticated",
            b"<message from='x@b.example' to='alice@a.example'><body>hi</body></message>".to_vec(),
            "invalid-from",
        ),
        (
            "a stanza claiming the receiving server's own domain",
            b"<message from='alice@a.example' to='alice@a.example'><body>hi</body></message>".to_vec(),
            "invalid-from",
        ),
        (
            "a stanza without from",
            b"<message to='alice@a.example'><body>hi</body></message>".to_vec(),
            "invalid-from",
        ),
        ("a 600 kB stanza", big.into_bytes(), "policy-violation"),
        (
            "DOCTYPE with an entity",
            b"<!DOCTYPE x [<!ENTITY e 'lol'>]><message>&e;</message>".to_vec(),
            "not-well-formed",
        ),
        (
            "a second stream header",
            header("b.example", "a.example").into_bytes(),
            "</stream:stream>",
        ),
    ];
    for (name, bytes, want) in tls_cases {
        n += 1;
        let mut peer = RawServer::connect(a.s2s, "b.example", "a.example").await;
        let _ = peer.tls.write_all(&bytes).await;
        let got = if want == "type='invalid'" {
            peer.read_until(want).await
        } else {
            peer.read_to_end().await
        };
        if !got.contains(want) || got.contains("hi</body>") {
            failures.push(format!("{name}: want {want:?}, got {got:.400}"));
        }
        still_serving(&mut alice, name).await;
        // A well-behaved peer still gets a stream.
        let ok = RawServer::connect(a.s2s, "b.example", "a.example").await;
        assert!(ok.received.contains("</stream:features>"), "after {name}");
    }
    assert!(
        !alice.backlog.iter().any(|e| e.name() == "message"),
        "a hostile stanza reached alice"
    );
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    alice.close().await;
    a.stop().await;
}

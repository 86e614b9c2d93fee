//! Test harness: boots the real daemon in-process on 127.0.0.1 port 0 with a
//! temporary data directory, plus clients to drive it (tokio-xmpp, and a raw
//! TLS client for hostile input).

#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

#[allow(clippy::duplicate_mod)] // `support` loads it too
pub mod daemon;
#[allow(clippy::duplicate_mod)] // `support` loads it too
pub mod poll;
pub mod scram;
pub mod turn;

use futures_util::StreamExt;
use pushbox::config::Config;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_xmpp::{
    connect::DnsConfig,
    parsers::{jid::BareJid, minidom::Element},
    xmlstream::Timeouts,
    Client, Event, Stanza,
};

pub const WAIT: Duration = Duration::from_secs(20);

/// One CA for the whole test process, made at start (never committed).
/// Each daemon's `self-signed` mode signs its certificate with it, and
/// `SSL_CERT_FILE` makes tokio-xmpp's native-roots loader trust it.
pub fn test_ca() -> &'static Path {
    static CA: OnceLock<PathBuf> = OnceLock::new();
    CA.get_or_init(|| {
        // A directory of its own, made fresh: a name derived from the process
        // id could be left over, half written, by an earlier process that had
        // the same id. Kept (never removed) because SSL_CERT_FILE points into it.
        let dir = tempfile::Builder::new()
            .prefix("pushbox-test-ca-")
            .tempdir()
            .unwrap()
            .keep();
        // Let a throwaway daemon data dir create the CA the same way production does.
        let cfg = Config::from_toml_str("", Some(&dir)).unwrap();
        pushbox::certs::CertStore::new(&cfg).unwrap();
        let ca = dir.join("data/tls/ca.pem");
        // SAFETY-free: set before any client thread reads it; tests call this first.
        unsafe { std::env::set_var("SSL_CERT_FILE", &ca) };
        dir.join("data/tls")
    })
}

/// Put the test CA into a daemon's TLS directory (`<data_dir>/tls`, created
/// here), so that its `self-signed` mode signs its certificate with it.
pub fn install_test_ca(tls: &Path) {
    std::fs::create_dir_all(tls).unwrap();
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(test_ca().join(f), tls.join(f))
            .unwrap_or_else(|e| panic!("copying the test CA's {f} into {}: {e}", tls.display()));
    }
}

pub struct TestServer {
    /// First, so that dropping the server stops the daemon before its directory goes.
    daemon: daemon::InProcess,
    /// The https listener, when started with [`TestServer::start_with_https`].
    pub https: Option<SocketAddr>,
    pub c2s: SocketAddr,
    pub c2s_tls: SocketAddr,
    /// The component listener (XEP-0114), when a component is configured.
    pub component: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config: Config,
    /// The built-in TURN server, when started with [`TestServer::start_with_turn`].
    pub turn: Option<turn::TurnPorts>,
    /// The first `[metrics]` listener, when one is configured (bind it to
    /// port 0: it is bound here and handed over, like the others).
    pub metrics: Option<SocketAddr>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with("").await
    }

    /// Start with extra TOML appended to the test defaults.
    pub async fn start_with(extra: &str) -> TestServer {
        Self::start_inner(extra, false).await
    }

    /// Like [`TestServer::start_with`], with an https listener too.
    pub async fn start_with_https(extra: &str) -> TestServer {
        Self::start_inner(extra, true).await
    }

    /// Start with the built-in TURN server on 127.0.0.1 (free ports found
    /// here); `turn_keys` are more keys of its `[turn]` section, `extra` other sections.
    pub async fn start_with_turn(turn_keys: &str, extra: &str) -> TestServer {
        let (ports, sockets) = turn::TurnPorts::bind().await;
        let extra = format!(
            "[turn]\nmode = \"builtin\"\nbind = [\"127.0.0.1\"]\nport = {}\ntls_port = {}\n{turn_keys}\n{extra}",
            ports.port, ports.tls_port
        );
        let mut s = Self::start_full(&extra, false, Some(sockets)).await;
        s.turn = Some(ports);
        s
    }

    async fn start_inner(extra: &str, with_https: bool) -> TestServer {
        Self::start_full(extra, with_https, None).await
    }

    async fn start_full(extra: &str, with_https: bool, turn_sockets: Option<turn::TurnSockets>) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        install_test_ca(&dir.path().join("data/tls"));
        let toml = format!(
            "domain = \"localhost\"\n\
             [listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = [\"127.0.0.1:0\"]\nhttps = []\ncomponent = [\"127.0.0.1:0\"]\n\
             {extra}\n"
        );
        let toml = merge_limits(&toml);
        let https = if with_https {
            Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        } else {
            None
        };
        let https_addr = https.as_ref().map(|l| l.local_addr().unwrap());
        let toml = match https_addr {
            Some(a) if !toml.contains("[relay]") => {
                format!("{toml}\n[relay]\npublic_url = \"https://localhost:{}\"\n", a.port())
            }
            _ => toml,
        };
        let config = Config::from_toml_str(&toml, Some(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        // The TURN sockets are bound already (UDP and TCP on one free port).
        let mut bind_config = config.clone();
        if turn_sockets.is_some() {
            bind_config.turn = None;
        }
        let mut listeners = pushbox::Listeners::bind(&bind_config).await.unwrap();
        listeners.https.extend(https);
        if let Some(t) = turn_sockets {
            listeners.turn_udp.push(t.udp);
            listeners.turn_tcp.push(t.tcp);
            listeners.turn_tls.push(t.tls);
        }
        let c2s = listeners.c2s[0].local_addr().unwrap();
        let c2s_tls = listeners.c2s_direct_tls[0].local_addr().unwrap();
        let component = listeners.component.first().map(|l| l.local_addr().unwrap());
        let metrics = listeners.metrics.first().map(|l| l.local_addr().unwrap());
        let daemon = daemon::InProcess::start(config.clone(), listeners, WAIT).await;
        TestServer {
            https: https_addr,
            c2s,
            c2s_tls,
            component,
            dir,
            config,
            daemon,
            turn: None,
            metrics,
        }
    }

    pub fn add_user(&self, name: &str, pw: &str) {
        let s = pushbox::store::Store::open_in(&self.config.data_dir).unwrap();
        s.blocking(|c| pushbox::store::accounts::create(c, name, pw, false))
            .unwrap();
    }

    pub fn jid(&self, name: &str) -> BareJid {
        BareJid::new(&format!("{name}@localhost")).unwrap()
    }

    /// A tokio-xmpp client over STARTTLS (or direct TLS), already online.
    pub async fn client(&self, name: &str, pw: &str, direct_tls: bool) -> TestClient {
        let jid = self.jid(name);
        let client = if direct_tls {
            Client::new_direct_tls_with_config(jid, pw, DnsConfig::addr(&self.c2s_tls.to_string()), Timeouts::default())
        } else {
            Client::new_starttls(jid, pw, DnsConfig::addr(&self.c2s.to_string()), Timeouts::default())
        };
        let mut c = TestClient {
            client,
            jid: None,
            backlog: Default::default(),
        };
        c.wait_online().await;
        c
    }

    /// Stop the daemon and start it again on the same configuration and
    /// data (new listening ports).
    pub async fn restart(&mut self) {
        self.daemon.stop(WAIT).await.expect("daemon stops").unwrap();
        let listeners = pushbox::Listeners::bind(&self.config).await.unwrap();
        self.c2s = listeners.c2s[0].local_addr().unwrap();
        self.c2s_tls = listeners.c2s_direct_tls[0].local_addr().unwrap();
        self.component = listeners.component.first().map(|l| l.local_addr().unwrap());
        self.metrics = listeners.metrics.first().map(|l| l.local_addr().unwrap());
        self.daemon = daemon::InProcess::start(self.config.clone(), listeners, WAIT).await;
    }

    /// Stop the daemon and wait for it to finish.
    pub async fn stop(mut self) {
        self.daemon.stop(WAIT).await.expect("daemon stops").unwrap();
    }
}

/// Tests log in many times from 127.0.0.1: raise the per-IP limits unless a test sets them.
fn merge_limits(toml: &str) -> String {
    if toml.contains("[limits]") {
        toml.to_string()
    } else {
        format!("{toml}\n[limits]\nconnections_per_ip_per_minute = 10000\nmax_auth_failures_per_ip = 1000\n")
    }
}

pub struct TestClient {
    pub client: Client,
    pub jid: Option<tokio_xmpp::parsers::jid::Jid>,
    /// Stanzas received while waiting for something else, oldest first.
    pub backlog: std::collections::VecDeque<Element>,
}

impl TestClient {
    pub async fn wait_online(&mut self) {
        loop {
            match tokio::time::timeout(WAIT, self.client.next())
                .await
                .expect("online in time")
            {
                Some(Event::Online { bound_jid, .. }) => {
                    self.jid = Some(bound_jid);
                    return;
                }
                Some(Event::Disconnected(e)) => panic!("disconnected before online: {e}"),
                Some(Event::Stanza(_)) => {}
                None => panic!("client stream ended"),
            }
        }
    }

    pub fn full_jid(&self) -> String {
        self.jid.as_ref().unwrap().to_string()
    }

    pub async fn send(&mut self, s: impl Into<Stanza>) {
        self.client.send_stanza(s.into()).await.unwrap();
    }

    /// Send a raw element (message, presence or iq).
    pub async fn send_el(&mut self, el: Element) {
        let s = Stanza::try_from(el).expect("a stanza");
        self.send(s).await;
    }

    /// Wait for a stanza matching `pred`, skipping others.
    pub async fn expect(&mut self, what: &str, mut pred: impl FnMut(&Element) -> bool) -> Element {
        if let Some(i) = self.backlog.iter().position(&mut pred) {
            return self.backlog.remove(i).unwrap();
        }
        let fut = async {
            loop {
                match self.client.next().await {
                    Some(Event::Stanza(s)) => {
                        let el: Element = s.into();
                        if pred(&el) {
                            return el;
                        }
                        self.backlog.push_back(el);
                    }
                    Some(Event::Disconnected(e)) => {
                        panic!("disconnected while waiting for {what}: {e}")
                    }
                    Some(Event::Online { .. }) => {}
                    None => panic!("stream ended while waiting for {what}"),
                }
            }
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// Send an IQ (as an element with `id`) and wait for its answer.
    pub async fn iq(&mut self, mut iq: Element) -> Element {
        let id = format!("t{}", rand_id());
        iq.set_attr(
            tokio_xmpp::parsers::minidom::rxml::Namespace::NONE,
            "id".try_into().unwrap(),
            id.clone(),
        );
        self.send_el(iq).await;
        self.expect("iq reply", |e| e.name() == "iq" && e.attr("id") == Some(id.as_str()))
            .await
    }

    pub async fn close(self) {
        let _ = tokio::time::timeout(WAIT, self.client.send_end()).await;
    }
}

/// Wait until `check` holds, for what settles in the background (a
/// deletion, a write); panics naming `what` after [`WAIT`].
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    poll::until(what, WAIT, || std::future::ready(check().then_some(()))).await
}

pub fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Parse XML text into an element (for building test stanzas).
pub fn xml(s: &str) -> Element {
    s.parse().unwrap_or_else(|e| panic!("bad test XML {s}: {e}"))
}

/// A raw client: plain TCP, then STARTTLS by hand, then arbitrary bytes.
pub struct RawClient {
    tls: Option<tokio_rustls::client::TlsStream<TcpStream>>,
    tcp: Option<TcpStream>,
    pub received: String,
}

pub const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

fn client_tls_config() -> Arc<rustls::ClientConfig> {
    client_tls_config_for(rustls::DEFAULT_VERSIONS)
}

/// The test CA's client configuration, limited to the given TLS versions.
/// A SASL2 `<authenticate/>` (XEP-0388) with `mechanism`, the initial
/// response (base64-encoded here) and `extra` children.
pub fn sasl2_authenticate(mechanism: &str, initial: impl AsRef<[u8]>, extra: &str) -> String {
    use base64::Engine;
    format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='{mechanism}'><initial-response>{}</initial-response>{extra}</authenticate>",
        base64::engine::general_purpose::STANDARD.encode(initial)
    )
}

/// A SASL2 `<user-agent/>` naming one installation of the test client.
pub fn user_agent(id: &str, device: &str) -> String {
    format!("<user-agent id='{id}'><software>pushbox tests</software><device>{device}</device></user-agent>")
}

/// The value of `attr='…'` after `tag` in raw XML.
pub fn attr_after(xml: &str, tag: &str, attr: &str) -> String {
    let i = xml.find(tag).unwrap_or_else(|| panic!("{tag} not in {xml}"));
    let rest = &xml[i..];
    let a = format!("{attr}='");
    let j = rest.find(&a).unwrap_or_else(|| panic!("{attr} not in {rest}")) + a.len();
    rest[j..j + rest[j..].find('\'').unwrap()].to_string()
}

pub fn client_tls_config_for(versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<rustls::ClientConfig> {
    let ca = test_ca().join("ca.pem");
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let tcp = TcpStream::connect(addr).await.unwrap();
        RawClient {
            tls: None,
            tcp: Some(tcp),
            received: String::new(),
        }
    }

    /// Connect from a given local loopback address (127.0.0.x), to test per-IP limits.
    pub async fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> std::io::Result<RawClient> {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(local, 0))?;
        let tcp = sock.connect(addr).await?;
        Ok(RawClient {
            tls: None,
            tcp: Some(tcp),
            received: String::new(),
        })
    }

    /// Negotiate STARTTLS on a plain connection made with [`RawClient::connect_from`].
    pub async fn starttls(&mut self) {
        self.starttls_with(client_tls_config()).await
    }

    /// [`RawClient::starttls`] with a given client configuration (to pin a TLS version).
    pub async fn starttls_with(&mut self, config: Arc<rustls::ClientConfig>) {
        self.send(HEADER).await;
        self.read_until("</stream:features>").await;
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await;
        self.read_until("<proceed").await;
        let tcp = self.tcp.take().unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        self.tls = Some(tls);
        self.received.clear();
    }

    /// The client side of the TLS connection (after [`RawClient::starttls`]).
    pub fn tls_conn(&self) -> &rustls::ClientConnection {
        self.tls.as_ref().expect("TLS is up").get_ref().1
    }

    /// After [`RawClient::starttls`]: SASL PLAIN, restart, bind.
    pub async fn plain_login_and_bind(&mut self, user: &str, pw: &str) {
        self.auth_plain(user, pw).await;
        self.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
            .await;
        self.read_until("</iq>").await;
        self.received.clear();
    }

    /// Connect and negotiate STARTTLS, leaving a fresh TLS stream before its header.
    pub async fn connect_tls(addr: SocketAddr) -> RawClient {
        let mut c = Self::connect(addr).await;
        c.starttls().await;
        c
    }

    /// A fresh TLS stream (STARTTLS) opened: the client, with nothing
    /// kept in `received`, and the features it was offered.
    pub async fn features(addr: SocketAddr) -> (RawClient, String) {
        let mut c = Self::connect_tls(addr).await;
        let f = c.open_stream().await;
        (c, f)
    }

    /// Send the stream header and read the features; returns them and
    /// leaves `received` empty.
    pub async fn open_stream(&mut self) -> String {
        self.send(HEADER).await;
        let f = self.read_until("</stream:features>").await;
        self.received.clear();
        f
    }

    /// SASL PLAIN on a fresh TLS stream, then the stream restart; `received`
    /// holds the post-authentication features afterwards.
    pub async fn auth_plain(&mut self, user: &str, pw: &str) {
        use base64::Engine;
        self.open_stream().await;
        let cred = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pw}"));
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>"
        ))
        .await;
        self.read_until("<success").await;
        self.received.clear();
        self.send(HEADER).await;
        self.read_until("</stream:features>").await;
    }

    /// STARTTLS, then SASL PLAIN, then restart and bind a resource.
    pub async fn login(addr: SocketAddr, user: &str, pw: &str) -> RawClient {
        Self::login_as(addr, user, pw, None).await
    }

    /// Like [`RawClient::login`], asking for a given resource.
    pub async fn login_as(addr: SocketAddr, user: &str, pw: &str, resource: Option<&str>) -> RawClient {
        Self::login_with(addr, user, pw, resource, Login::Legacy).await.0
    }

    /// Log in the way `how` says, with `resource` as the resource (legacy
    /// binding) or the client tag (Bind 2); returns the client, past all
    /// negotiation, and its bound full JID.
    pub async fn login_with(
        addr: SocketAddr,
        user: &str,
        pw: &str,
        resource: Option<&str>,
        how: Login,
    ) -> (RawClient, String) {
        let mut c = Self::connect_tls(addr).await;
        let jid = match how {
            Login::Legacy => {
                c.auth_plain(user, pw).await;
                let res = resource
                    .map(|r| format!("<resource>{r}</resource>"))
                    .unwrap_or_default();
                c.send(&format!(
                    "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{res}</bind></iq>"
                ))
                .await;
                let r = c.read_until("</iq>").await;
                r[r.find("<jid>").unwrap() + 5..r.find("</jid>").unwrap()].to_string()
            }
            Login::Bind2 => {
                let tag = resource.map(|r| format!("<tag>{r}</tag>")).unwrap_or_default();
                let agent = format!(
                    "<user-agent id='{}'><software>pushbox tests</software></user-agent>",
                    uuid::Uuid::new_v4()
                );
                let r = c
                    .sasl2_plain(user, pw, &format!("{agent}<bind xmlns='urn:xmpp:bind:0'>{tag}</bind>"))
                    .await;
                authorization_identifier(&r)
            }
        };
        c.received.clear();
        (c, jid)
    }

    /// SASL2 PLAIN on a fresh TLS stream, with `extra` inside
    /// `<authenticate/>`; returns everything read up to the end of the
    /// stream features that follow success (or of `<success/>` alone when
    /// the session was resumed, which has no features after it).
    pub async fn sasl2_plain(&mut self, user: &str, pw: &str, extra: &str) -> String {
        self.open_stream().await;
        self.send(&sasl2_authenticate("PLAIN", format!("\0{user}\0{pw}"), extra))
            .await;
        let r = self.read_until("</success>").await;
        if r.contains("<resumed") {
            return r;
        }
        self.read_until("</stream:features>").await
    }

    pub async fn send(&mut self, s: &str) {
        self.send_bytes(s.as_bytes()).await
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        // Flush too: TLS records that did not fit in the socket's buffer
        // would otherwise wait in rustls until the next write.
        let r = match (&mut self.tls, &mut self.tcp) {
            (Some(t), _) => {
                async {
                    t.write_all(b).await?;
                    t.flush().await
                }
                .await
            }
            (None, Some(t)) => {
                async {
                    t.write_all(b).await?;
                    t.flush().await
                }
                .await
            }
            _ => unreachable!(),
        };
        r.unwrap();
    }

    /// Read until `needle` appears (panics on timeout); returns everything read so far.
    pub async fn read_until(&mut self, needle: &str) -> String {
        let fut = async {
            let mut buf = [0u8; 8192];
            while !self.received.contains(needle) {
                let n = match (&mut self.tls, &mut self.tcp) {
                    (Some(t), _) => t.read(&mut buf).await.unwrap_or(0),
                    (None, Some(t)) => t.read(&mut buf).await.unwrap_or(0),
                    _ => unreachable!(),
                };
                if n == 0 {
                    panic!("connection closed before {needle:?}; got: {}", self.received);
                }
                self.received.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            self.received.clone()
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {needle:?}; got: {}", self.received))
    }

    /// Write without panicking (the peer may have closed already).
    pub async fn try_send_bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        match (&mut self.tls, &mut self.tcp) {
            (Some(t), _) => t.write_all(b).await,
            (None, Some(t)) => t.write_all(b).await,
            _ => unreachable!(),
        }
    }

    /// Read whatever arrives within `d`; returns false once the peer has closed.
    pub async fn read_for(&mut self, d: Duration) -> bool {
        let mut buf = [0u8; 8192];
        let read = async {
            loop {
                let n = match (&mut self.tls, &mut self.tcp) {
                    (Some(t), _) => t.read(&mut buf).await.unwrap_or(0),
                    (None, Some(t)) => t.read(&mut buf).await.unwrap_or(0),
                    _ => unreachable!(),
                };
                if n == 0 {
                    return false;
                }
                self.received.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        };
        tokio::time::timeout(d, read).await.unwrap_or(true)
    }

    /// Read until stream features arrive or the peer closes; returns everything read.
    pub async fn read_to_end_or_features(&mut self) -> String {
        let mut buf = [0u8; 8192];
        while !self.received.contains("</stream:features>") {
            let n = match (&mut self.tls, &mut self.tcp) {
                (Some(t), _) => t.read(&mut buf).await.unwrap_or(0),
                (None, Some(t)) => t.read(&mut buf).await.unwrap_or(0),
                _ => unreachable!(),
            };
            if n == 0 {
                break;
            }
            self.received.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        self.received.clone()
    }

    /// Read until the peer closes; returns everything read.
    pub async fn read_to_end(&mut self) -> String {
        let fut = async {
            let mut buf = [0u8; 8192];
            loop {
                let n = match (&mut self.tls, &mut self.tcp) {
                    (Some(t), _) => t.read(&mut buf).await.unwrap_or(0),
                    (None, Some(t)) => t.read(&mut buf).await.unwrap_or(0),
                    _ => unreachable!(),
                };
                if n == 0 {
                    return self.received.clone();
                }
                self.received.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .unwrap_or_else(|_| panic!("peer did not close; got: {}", self.received))
    }
}

/// How a test client binds its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// SASL (RFC 6120), stream restart, `<bind/>` IQ.
    Legacy,
    /// SASL2 (XEP-0388) with Bind 2 (XEP-0386) in the same request.
    Bind2,
}

/// The `<authorization-identifier/>` of a SASL2 success.
pub fn authorization_identifier(xml: &str) -> String {
    let i = xml
        .find("<authorization-identifier")
        .unwrap_or_else(|| panic!("no authorization-identifier in {xml}"));
    let rest = &xml[i..];
    rest[rest.find('>').unwrap() + 1..rest.find("</authorization-identifier>").unwrap()].to_string()
}

/// The `<value/>` of data-form field `var` in a raw XML answer.
pub fn form_field(xml: &str, var: &str) -> String {
    let i = xml
        .find(&format!("var='{var}'"))
        .unwrap_or_else(|| panic!("no field {var} in {xml}"));
    let rest = &xml[i..];
    let v = rest.find("<value>").unwrap() + 7;
    rest[v..v + rest[v..].find("</value>").unwrap()].to_string()
}

// ---------------------------------------------------------------- presence and rosters

pub async fn ping(c: &mut TestClient) {
    let r = c
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
}

/// `x` subscribes to `y` and `y` approves (both must be available).
pub async fn subscribe(x: &mut TestClient, xn: &str, y: &mut TestClient, yn: &str) {
    x.send_el(xml(&format!(
        "<presence xmlns='jabber:client' type='subscribe' to='{yn}@localhost'/>"
    )))
    .await;
    y.expect("subscribe", |e| {
        e.name() == "presence" && e.attr("type") == Some("subscribe")
    })
    .await;
    y.send_el(xml(&format!(
        "<presence xmlns='jabber:client' type='subscribed' to='{xn}@localhost'/>"
    )))
    .await;
    x.expect("subscribed", |e| {
        e.name() == "presence" && e.attr("type") == Some("subscribed")
    })
    .await;
}

/// Make `a` and `b` subscribed to each other.
pub async fn befriend(a: &mut TestClient, an: &str, b: &mut TestClient, bn: &str) {
    subscribe(a, an, b, bn).await;
    subscribe(b, bn, a, an).await;
}

pub async fn online(s: &TestServer, name: &str) -> TestClient {
    let mut c = s.client(name, "pw", false).await;
    c.send_el(xml("<presence xmlns='jabber:client'/>")).await;
    ping(&mut c).await;
    c
}

/// Answer every IQ get the server sent in `text`, as a client must
/// (the server proves offline delivery with a ping: `xmpp::offline`).
pub async fn answer_server_pings(c: &mut RawClient, text: &str) {
    for part in text.split("<iq ").skip(1) {
        let head = part.split('>').next().unwrap_or_default();
        if head.contains("type='get'") && head.contains("from='localhost'") {
            if let Some(id) = head.split("id='").nth(1).and_then(|r| r.split('\'').next()) {
                c.send(&format!("<iq type='result' id='{id}' to='localhost'/>")).await;
            }
        }
    }
}

//! XMPP over WebSocket (RFC 7395) and its discovery (XEP-0156) against the
//! real daemon: host-meta in both forms, logins over WebSocket with SASL1
//! and with SASL2 + Bind 2 (SCRAM-PLUS bound to the HTTPS connection's TLS
//! exporter), chat with a TCP client, a session resumed across transports,
//! and hostile input (handshakes without the subprotocol, binary, huge and
//! non-XML messages, unmasked frames) answered without harm.

mod common;
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use bytes::Bytes;
use common::{scram::*, *};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use pushbox::push::client::HttpsClient;
use std::net::SocketAddr;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::{
    client_async,
    tungstenite::{client::IntoClientRequest, Message},
    WebSocketStream,
};

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_to(addr: SocketAddr) -> Tls {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(client_tls_config_for(rustls::DEFAULT_VERSIONS))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// A WebSocket XMPP client written for the test: every message it receives
/// must be exactly one XML element (RFC 7395 §3.3.3).
struct Ws {
    ws: WebSocketStream<Tls>,
    received: String,
    /// The TLS exporter of the HTTPS connection (RFC 9266).
    exporter: Vec<u8>,
}

impl Ws {
    async fn connect(addr: SocketAddr) -> Ws {
        let tls = tls_to(addr).await;
        let mut exporter = [0u8; 32];
        tls.get_ref()
            .1
            .export_keying_material(&mut exporter, b"EXPORTER-Channel-Binding", None)
            .unwrap();
        let mut req = format!("wss://localhost:{}/xmpp-websocket", addr.port())
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("sec-websocket-protocol", "xmpp".parse().unwrap());
        let (ws, resp) = client_async(req, tls).await.unwrap();
        assert_eq!(
            resp.headers().get("sec-websocket-protocol").map(|v| v.as_bytes()),
            Some(&b"xmpp"[..])
        );
        Ws {
            ws,
            received: String::new(),
            exporter: exporter.to_vec(),
        }
    }

    async fn send(&mut self, s: &str) {
        self.ws.send(Message::text(s)).await.unwrap();
    }

    /// The next text message (`None` once the server closed the WebSocket).
    async fn next(&mut self) -> Option<String> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message in time")
            {
                Some(Ok(Message::Text(t))) => {
                    let t = t.to_string();
                    let el: Result<minidom::Element, _> = t.parse();
                    assert!(el.is_ok(), "one element per message: {t}");
                    self.received.push_str(&t);
                    return Some(t);
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    async fn read_until(&mut self, needle: &str) -> String {
        while !self.received.contains(needle) {
            if self.next().await.is_none() {
                panic!("closed before {needle:?}: {}", self.received);
            }
        }
        self.received.clone()
    }

    /// Everything until the server closes the WebSocket.
    async fn read_to_end(&mut self) -> String {
        while self.next().await.is_some() {}
        self.received.clone()
    }

    async fn open(&mut self) -> String {
        self.received.clear();
        self.send("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>")
            .await;
        self.read_until("</stream:features>").await
    }

    /// On an opened stream: SASL PLAIN, the restart (RFC 7395 §3.5: a new
    /// `<open/>`), and a bind, with `resource` or one the server picks;
    /// returns the bind result.
    async fn login_plain(&mut self, user: &str, pw: &str, resource: Option<&str>) -> String {
        self.received.clear();
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
            B64.encode(format!("\0{user}\0{pw}"))
        ))
        .await;
        self.read_until("<success").await;
        self.open().await;
        let bind = match resource {
            Some(r) => format!("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{r}</resource></bind>"),
            None => "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>".to_string(),
        };
        self.send(&format!("<iq xmlns='jabber:client' type='set' id='b'>{bind}</iq>"))
            .await;
        self.read_until("</iq>").await
    }
}

async fn server() -> TestServer {
    TestServer::start_with_https("[limits]\nconnections_per_ip_per_minute = 1000\n").await
}

#[tokio::test]
async fn host_meta_names_the_websocket_endpoint_in_both_forms() {
    let s = server().await;
    let port = s.https.unwrap().port();
    let http = HttpsClient::new(Some(&test_ca().join("ca.pem"))).unwrap();
    let get = |path: &str| {
        hyper::Request::get(format!("https://localhost:{port}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let url = format!("wss://localhost:{port}/xmpp-websocket");
    let xrd = http.send(get("/.well-known/host-meta")).await.unwrap();
    assert_eq!(xrd.status(), 200);
    assert_eq!(xrd.headers()["content-type"], "application/xrd+xml");
    assert_eq!(xrd.headers()["access-control-allow-origin"], "*");
    let body = String::from_utf8_lossy(xrd.body()).to_string();
    let doc: minidom::Element = body
        .trim_start_matches("<?xml version='1.0' encoding='utf-8'?>")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(doc.ns(), "http://docs.oasis-open.org/ns/xri/xrd-1.0");
    let link = doc.children().find(|l| l.name() == "Link").unwrap();
    assert_eq!(link.attr("rel"), Some("urn:xmpp:alt-connections:websocket"));
    assert_eq!(link.attr("href"), Some(url.as_str()));
    let j = http.send(get("/.well-known/host-meta.json")).await.unwrap();
    assert_eq!(j.status(), 200);
    assert_eq!(j.headers()["access-control-allow-origin"], "*");
    let v: serde_json::Value = serde_json::from_slice(j.body()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"links": [{"rel": "urn:xmpp:alt-connections:websocket", "href": url}]})
    );
    s.stop().await;

    // With WebSocket off nothing is announced.
    let s = TestServer::start_with_https("[websocket]\nenabled = false\n").await;
    let http = HttpsClient::new(Some(&test_ca().join("ca.pem"))).unwrap();
    let port = s.https.unwrap().port();
    let r = http
        .send(
            hyper::Request::get(format!("https://localhost:{port}/.well-known/host-meta"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    s.stop().await;
}

#[tokio::test]
async fn sasl1_login_and_chat_with_a_tcp_client() {
    let s = server().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut w = Ws::connect(s.https.unwrap()).await;
    let f = w.open().await;
    assert!(f.contains("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'"), "{f}");
    assert!(f.contains("from='localhost'") && f.contains("version='1.0'"), "{f}");
    assert!(!f.contains("<starttls"), "already TLS: {f}");
    assert!(
        f.contains("<mechanism>SCRAM-SHA-256-PLUS</mechanism>"),
        "bound to the HTTPS TLS: {f}"
    );
    assert!(w
        .login_plain("alice", "pw", Some("web"))
        .await
        .contains("alice@localhost/web"));
    w.send("<presence xmlns='jabber:client'/>").await;
    // Quiet for longer than a session waits before it frees its parser: the
    // framed parser is rebuilt from its root when the next message comes.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut b = RawClient::login(s.c2s, "bob", "pw").await;
    b.send("<presence/>").await;
    b.send("<message type='chat' to='alice@localhost/web'><body>over TCP</body></message>")
        .await;
    w.read_until("over TCP").await;
    w.send("<message xmlns='jabber:client' type='chat' to='bob@localhost'><body>over WebSocket</body></message>")
        .await;
    b.read_until("over WebSocket").await;
    // A clean close: <close/> answered with <close/>, then the WebSocket closes.
    w.received.clear();
    w.send("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>").await;
    let end = w.read_to_end().await;
    assert!(
        end.contains("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"),
        "{end}"
    );
    s.stop().await;
}

/// SASL2 with SCRAM-SHA-256-PLUS bound to the HTTPS connection, Bind 2 with
/// stream management; the WebSocket is cut and the session resumes on a
/// TCP connection, with nothing lost.
#[tokio::test]
async fn sasl2_plus_over_websocket_and_resumption_on_tcp() {
    let s = server().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut w = Ws::connect(s.https.unwrap()).await;
    w.open().await;
    w.received.clear();
    let mut scram = ScramClient::new(true, "alice", "pw", "p=tls-exporter,,", &w.exporter);
    w.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='SCRAM-SHA-256-PLUS'><initial-response>{}</initial-response>\
         <user-agent id='5c1b8f0e-2d7a-4e6b-9c3f-8a1d2e4b6c70'><software>web</software></user-agent>\
         <bind xmlns='urn:xmpp:bind:0'><tag>Web</tag><enable xmlns='urn:xmpp:sm:3' resume='true'/></bind></authenticate>",
        B64.encode(scram.first())
    ))
    .await;
    let challenge = decoded(&w.read_until("</challenge>").await, "challenge");
    w.received.clear();
    w.send(&format!(
        "<response xmlns='urn:xmpp:sasl:2'>{}</response>",
        B64.encode(scram.finish(&challenge))
    ))
    .await;
    let out = w.read_until("</stream:features>").await;
    assert!(scram.verify(&decoded(&out, "additional-data")), "{out}");
    let jid = authorization_identifier(&out);
    let previd = {
        let i = out.find("<enabled").expect(&out);
        let rest = &out[i..];
        let j = rest.find("id='").unwrap() + 4;
        rest[j..j + rest[j..].find('\'').unwrap()].to_string()
    };
    w.send("<presence xmlns='jabber:client'/>").await;
    let mut b = RawClient::login(s.c2s, "bob", "pw").await;
    b.send(&format!("<message type='chat' to='{jid}'><body>first</body></message>"))
        .await;
    w.read_until(">first<").await;
    // The browser tab's network drops.
    drop(w);
    b.send(&format!(
        "<message type='chat' to='{jid}'><body>second</body></message>"
    ))
    .await;
    b.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    b.read_until("id='sync'").await;
    // The same session continues over TCP: both messages unacknowledged come again.
    let mut t = RawClient::connect_tls(s.c2s).await;
    let out = t
        .sasl2_plain(
            "alice",
            "pw",
            &format!("<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='0'/>"),
        )
        .await;
    assert!(out.contains("<resumed"), "{out}");
    let got = t.read_until(">second<").await;
    assert!(got.contains(">first<"), "{got}");
    t.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    t.read_until("id='p'").await;
    s.stop().await;
}

/// A raw HTTP/1.1 request on a TLS connection; returns the head of the answer.
async fn raw_http(addr: SocketAddr, req: &str) -> String {
    let mut tls = tls_to(addr).await;
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        out.extend_from_slice(&buf[..n]);
        if n == 0 || out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn hostile_handshakes_and_messages() {
    let s = server().await;
    s.add_user("alice", "pw");
    let addr = s.https.unwrap();
    let upgrade = |proto: &str| {
        format!(
            "GET /xmpp-websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n"
        )
    };
    // No subprotocol, another subprotocol: refused with a reason.
    for proto in ["", "Sec-WebSocket-Protocol: mqtt\r\n"] {
        let r = raw_http(addr, &upgrade(proto)).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    }
    // A plain GET: 426 naming the upgrade.
    let r = raw_http(addr, "GET /xmpp-websocket HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.1 426") && r.to_ascii_lowercase().contains("upgrade: websocket"),
        "{r}"
    );
    // A wrong version.
    let r = raw_http(
        addr,
        &upgrade("Sec-WebSocket-Protocol: xmpp\r\n").replace("Version: 13", "Version: 8"),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 426") && r.contains("13"), "{r}");
    // The right handshake, by hand: the RFC 6455 example's accept key.
    let r = raw_http(addr, &upgrade("Sec-WebSocket-Protocol: xmpp\r\n")).await;
    assert!(r.starts_with("HTTP/1.1 101"), "{r}");
    assert!(r.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{r}");

    // A binary message: unsupported-encoding, then <close/>.
    let mut w = Ws::connect(addr).await;
    w.open().await;
    w.ws.send(Message::binary(b"<message/>".to_vec())).await.unwrap();
    let end = w.read_to_end().await;
    assert!(end.contains("<unsupported-encoding"), "{end}");
    assert!(
        end.ends_with("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"),
        "{end}"
    );
    // Text that is not XML.
    let mut w = Ws::connect(addr).await;
    w.open().await;
    w.send("this is not XML <<<").await;
    assert!(w.read_to_end().await.contains("<not-well-formed"));
    // A message over the stanza limit (256 KiB by default).
    let mut w = Ws::connect(addr).await;
    w.open().await;
    let huge = format!(
        "<message xmlns='jabber:client'><body>{}</body></message>",
        "x".repeat(300 * 1024)
    );
    let _ = w.ws.send(Message::text(huge)).await;
    assert!(w.read_to_end().await.contains("<policy-violation"));
    // Stanzas before authentication.
    let mut w = Ws::connect(addr).await;
    w.open().await;
    w.send("<message xmlns='jabber:client' to='alice@localhost'><body>x</body></message>")
        .await;
    assert!(w.read_to_end().await.contains("<not-authorized"));
    // An <open/> for another domain.
    let mut w = Ws::connect(addr).await;
    w.send("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com' version='1.0'/>")
        .await;
    assert!(w.read_to_end().await.contains("<host-unknown"));

    // An unmasked client frame breaks RFC 6455 §5.1: the server fails the
    // connection; the daemon keeps serving.
    let mut tls = tls_to(addr).await;
    tls.write_all(upgrade("Sec-WebSocket-Protocol: xmpp\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    let open = b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>";
    let mut frame = vec![0x81, open.len() as u8];
    frame.extend_from_slice(open);
    tls.write_all(&frame).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(
        !String::from_utf8_lossy(&rest).contains("<stream:features"),
        "nothing served"
    );
    let mut w = Ws::connect(addr).await;
    assert!(w.open().await.contains("<mechanism>"));
    s.stop().await;
}

/// `pushbox check web` fetches host-meta and opens the WebSocket like a web
/// client, certificate verified.
#[tokio::test]
async fn check_web_verifies_discovery_from_outside() {
    use pushbox::check::{run, Level, Section};
    let s = server().await;
    let report = run(&s.config, &[Section::Web]).await;
    let port = s.https.unwrap().port();
    let find = |subject: &str| {
        report
            .findings
            .iter()
            .find(|f| f.subject == subject)
            .unwrap_or_else(|| panic!("no finding for {subject}: {:?}", report.findings))
    };
    for path in ["host-meta", "host-meta.json"] {
        let f = find(&format!("https://localhost:{port}/.well-known/{path}"));
        assert_eq!(f.level, Level::Ok, "{f:?}");
        // Port 443 of the domain, where XEP-0156 clients look, serves nothing here.
        let f = find(&format!("https://localhost/.well-known/{path}"));
        assert_eq!(f.level, Level::Warning, "{f:?}");
        assert!(f.fix.as_deref().unwrap_or_default().contains("port 443"), "{f:?}");
    }
    let f = find(&format!("wss://localhost:{port}/xmpp-websocket"));
    assert_eq!(f.level, Level::Ok, "{f:?}");
    assert!(report.ok, "{:?}", report.findings);
    s.stop().await;

    // A public URL where nothing answers is an error.
    let s = TestServer::start_with_https("[websocket]\npublic_url = \"wss://localhost:1/xmpp-websocket\"\n").await;
    let report = run(&s.config, &[Section::Web]).await;
    assert!(!report.ok, "{:?}", report.findings);
    s.stop().await;
}

/// A WebSocket ping (or pong) counts as activity for `limits.idle_timeout`,
/// as a whitespace keepalive does on TCP; silence ends the session.
#[tokio::test]
async fn websocket_pings_keep_an_idle_session_open() {
    use std::time::{Duration, Instant};
    let s =
        TestServer::start_with_https("[limits]\nidle_timeout = \"2s\"\nconnections_per_ip_per_minute = 1000\n").await;
    s.add_user("alice", "pw");
    let mut w = Ws::connect(s.https.unwrap()).await;
    w.open().await;
    w.login_plain("alice", "pw", None).await;
    // Pings and pongs, and nothing else, for more than twice the timeout.
    for (i, pause) in [400u64, 400, 1300, 1300, 1300].into_iter().enumerate() {
        let frame = match i % 2 {
            0 => Message::Ping(Bytes::from_static(b"still here")),
            _ => Message::Pong(Bytes::from_static(b"heartbeat")),
        };
        w.ws.send(frame).await.unwrap();
        let until = Instant::now() + Duration::from_millis(pause);
        while let Ok(m) = tokio::time::timeout_at(until.into(), w.ws.next()).await {
            match m {
                Some(Ok(Message::Pong(_))) => {}
                other => panic!("the session ended while pings flowed: {other:?} {}", w.received),
            }
        }
    }
    w.received.clear();
    w.send("<iq xmlns='jabber:client' type='get' id='alive' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert!(w.read_until("alive").await.contains("type='result'"), "{}", w.received);
    let quiet = Instant::now();
    // (The connection is dropped, as a lost one is: no stream error.)
    w.read_to_end().await;
    assert!(quiet.elapsed() >= Duration::from_millis(1500), "{:?}", quiet.elapsed());
    s.stop().await;
}

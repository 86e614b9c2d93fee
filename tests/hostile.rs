//! Hostile input on client connections: each case sends something a broken
//! or malicious client might, checks the exact answer (stream error, SASL
//! failure or stanza error), then checks that the server still serves a new
//! client and that a session logged in before the suite was not disturbed.

mod common;
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use common::*;
use std::{net::SocketAddr, time::Duration};

/// Where a case starts.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// A fresh TCP connection to the STARTTLS port, nothing sent.
    Plain,
    /// STARTTLS done; the client must send its stream header itself.
    Tls,
    /// STARTTLS done, stream opened, features read (SASL next).
    PreSasl,
    /// Logged in as `alice` with a bound resource.
    Bound,
    /// A fresh TCP connection to the direct TLS port, nothing sent.
    DirectTcp,
}

/// What the server must answer.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// This stream error, then the stream and connection close.
    Stream(&'static str),
    /// A SASL `<failure>` with this condition.
    Sasl(&'static str),
    /// A stanza error with this condition (connection stays up).
    Stanza(&'static str),
    /// The connection is closed (no XMPP answer possible: TLS level).
    Closed,
    /// This text appears in the answer and the connection stays up.
    Reply(&'static str),
}

struct Case {
    name: &'static str,
    phase: Phase,
    /// Sent in order; a step starting with `WAIT:` waits for that text instead.
    send: Vec<Vec<u8>>,
    expect: Expect,
}

fn case(name: &'static str, phase: Phase, send: &[&str], expect: Expect) -> Case {
    Case {
        name,
        phase,
        send: send.iter().map(|s| s.as_bytes().to_vec()).collect(),
        expect,
    }
}

fn bytes(name: &'static str, phase: Phase, send: Vec<u8>, expect: Expect) -> Case {
    Case {
        name,
        phase,
        send: vec![send],
        expect,
    }
}

fn auth(mech: &str, payload: &[u8]) -> String {
    format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{}</auth>",
        B64.encode(payload)
    )
}

fn plain(authz: &str, user: &str, pw: &str) -> String {
    auth("PLAIN", format!("{authz}\0{user}\0{pw}").as_bytes())
}

fn response(payload: &[u8]) -> String {
    format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(payload)
    )
}

fn header_with(attrs: &str) -> String {
    format!("<?xml version='1.0'?><stream:stream {attrs}>")
}

const NS: &str = "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'";

fn cases() -> Vec<Case> {
    use Expect::*;
    use Phase::*;
    let h = HEADER;
    let deep = format!("<message>{}{}</message>", "<x>".repeat(40), "</x>".repeat(40));
    let many_attrs = format!(
        "<message {}/>",
        (0..100).map(|i| format!("a{i}='v' ")).collect::<String>()
    );
    let huge_attr = format!("<message to='alice@localhost' x='{}'/>", "a".repeat(300_000));
    let huge_text = format!("<message><body>{}</body></message>", "b".repeat(300_000));
    let many_children = format!(
        "<message to='alice@localhost'>{}</message>",
        "<c xmlns='urn:x'/>".repeat(20_000)
    );
    // Over the parser's 32 KiB token limit, far under the stanza limit.
    let token = "t".repeat(pushbox::xmpp::xml::MAX_TOKEN_SIZE + 1);
    let long_value = format!("<message to='alice@localhost'><x xmlns='urn:x' v='{token}'/></message>");
    let long_attr_name = format!("<message to='alice@localhost' {token}='1'/>");
    let long_el_name = format!("<message to='alice@localhost'><{token} xmlns='urn:x'/></message>");
    let long_node = "n".repeat(1100);
    let long_res = "r".repeat(1100);
    let long_user_plain = plain("", &"u".repeat(3000), "pw");
    let to_long_node = format!("<message to='{long_node}@localhost' id='j2'><body>x</body></message>");
    let bind = |res: &str| {
        format!("<iq type='set' id='bind2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{res}</resource></bind></iq>")
    };
    let scram_first = |mech: &str| auth(mech, b"n,,n=alice,r=abcdefghijklmnop");
    vec![
        // ---- before TLS ----
        bytes("binary garbage", Plain, vec![0x00, 0xff, 0xfe, 0x01, 0x80, 0x90, 0x0a], Stream("not-well-formed")),
        case("HTTP request on the XMPP port", Plain, &["GET / HTTP/1.1\r\nHost: x\r\n\r\n<html>"], Stream("not-well-formed")),
        case("DOCTYPE with an entity", Plain, &["<?xml version='1.0'?><!DOCTYPE s [<!ENTITY x 'y'>]><stream:stream/>"], Stream("not-well-formed")),
        case("stream namespace wrong", Plain, &["<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong' to='localhost' version='1.0'>"], Stream("invalid-namespace")),
        case("content namespace jabber:server", Plain, &["<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"], Stream("invalid-namespace")),
        case("no content namespace", Plain, &["<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"], Stream("invalid-namespace")),
        case("root is not stream:stream", Plain, &["<?xml version='1.0'?><html xmlns='jabber:client'>"], Stream("invalid-namespace")),
        case("stream element under another prefix", Plain, &["<?xml version='1.0'?><s:stream xmlns='jabber:client' xmlns:s='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"], Stream("invalid-namespace")),
        case("unknown host", Plain, &[&header_with(&format!("{NS} to='evil.example' version='1.0'"))], Stream("host-unknown")),
        case("no to attribute", Plain, &[&header_with(&format!("{NS} version='1.0'"))], Stream("host-unknown")),
        case("version 2.0", Plain, &[&header_with(&format!("{NS} to='localhost' version='2.0'"))], Stream("unsupported-version")),
        case("undeclared prefix in header", Plain, &["<?xml version='1.0'?><stream:stream xmlns='jabber:client' to='localhost'>"], Stream("invalid-namespace")),
        case("processing instruction after header", Plain, &[h, "<?evil payload?>"], Stream("restricted-xml")),
        case("comment after header", Plain, &[h, "<!-- hello -->"], Stream("restricted-xml")),
        case("text at stream level", Plain, &[h, "hello<presence/>"], Stream("not-well-formed")),
        case("second stream header (its XML declaration is a PI)", Plain, &[h, h], Stream("restricted-xml")),
        case("message before TLS", Plain, &[h, "<message to='alice@localhost'><body>x</body></message>"], Stream("policy-violation")),
        case("SASL before TLS", Plain, &[h, &plain("", "alice", "pw")], Stream("policy-violation")),
        case("data pipelined after starttls", Plain, &[&format!("{h}<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><presence/>")], Stream("policy-violation")),
        bytes("invalid UTF-8 in the header", Plain, b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='\xc3\x28'>".to_vec(), Stream("not-well-formed")),
        case("undefined entity in an attribute", Plain, &["<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='&xxe;'>"], Stream("not-well-formed")),
        case("XML 1.1 declaration", Plain, &["<?xml version='1.1'?><stream:stream/>"], Stream("restricted-xml")),
        case("deep nesting before TLS", Plain, &[h, &deep], Stream("policy-violation")),
        // ---- after TLS, before authentication ----
        case("message before authentication", Tls, &[h, "<message to='alice@localhost'><body>x</body></message>"], Stream("not-authorized")),
        case("presence before authentication", Tls, &[h, "<presence/>"], Stream("not-authorized")),
        case("roster get before authentication", Tls, &[h, "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>"], Stanza("service-unavailable")),
        case("bind before authentication", Tls, &[h, &bind("x")], Stanza("service-unavailable")),
        case("auth in the wrong namespace", PreSasl, &["<auth xmlns='urn:wrong' mechanism='PLAIN'>AGFsaWNlAHB3</auth>"], Stream("not-authorized")),
        case("second header before auth", PreSasl, &[h], Stream("restricted-xml")),
        case("unknown mechanism", PreSasl, &[&auth("X-EVIL", b"x")], Sasl("invalid-mechanism")),
        case("no mechanism attribute", PreSasl, &["<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>AGFsaWNlAHB3</auth>"], Sasl("invalid-mechanism")),
        case("PLUS with an unsupported binding type", PreSasl, &[&auth("SCRAM-SHA-1-PLUS", b"p=tls-unique,,n=alice,r=abc")], Sasl("invalid-mechanism")),
        case("PLAIN with bad base64", PreSasl, &["<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>!!!not base64***</auth>"], Sasl("malformed-request")),
        // RFC 6120 §6.4.2: no initial response gets an empty challenge; the empty answer is malformed.
        case("PLAIN empty", PreSasl, &["<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>", "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>=</response>"], Sasl("malformed-request")),
        case("PLAIN '=' (empty response)", PreSasl, &["<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>=</auth>"], Sasl("malformed-request")),
        case("SASL2 without a mechanism", PreSasl, &["<authenticate xmlns='urn:xmpp:sasl:2'><initial-response>AGFsaWNlAHB3</initial-response></authenticate>"], Sasl("invalid-mechanism")),
        case("SASL2 unknown mechanism", PreSasl, &["<authenticate xmlns='urn:xmpp:sasl:2' mechanism='X-NOPE'><initial-response>AA==</initial-response></authenticate>"], Sasl("invalid-mechanism")),
        case("SASL2 bad base64", PreSasl, &["<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>!!!</initial-response></authenticate>"], Sasl("malformed-request")),
        case("SASL2 wrong password with Bind 2", PreSasl, &["<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>AGFsaWNlAHdyb25n</initial-response><bind xmlns='urn:xmpp:bind:0'/></authenticate>"], Sasl("not-authorized")),
        case("SASL2 a stanza inside SCRAM", PreSasl, &["<authenticate xmlns='urn:xmpp:sasl:2' mechanism='SCRAM-SHA-1'><initial-response>biwsbj1hbGljZSxyPWFiYw==</initial-response></authenticate>", "<message to='bob@localhost'><body>x</body></message>"], Sasl("malformed-request")),
        case("SASL2 response without a request", PreSasl, &["<response xmlns='urn:xmpp:sasl:2'>AA==</response>"], Stream("not-authorized")),
        case("PLAIN without separators", PreSasl, &[&auth("PLAIN", b"alicepw")], Sasl("malformed-request")),
        case("PLAIN with four fields", PreSasl, &[&auth("PLAIN", b"\0alice\0pw\0extra")], Sasl("malformed-request")),
        case("PLAIN invalid UTF-8", PreSasl, &[&auth("PLAIN", b"\0al\xffice\0pw")], Sasl("malformed-request")),
        case("PLAIN wrong password", PreSasl, &[&plain("", "alice", "wrong")], Sasl("not-authorized")),
        case("PLAIN unknown user", PreSasl, &[&plain("", "nobody", "pw")], Sasl("not-authorized")),
        case("PLAIN authzid of another user", PreSasl, &[&plain("bob@localhost", "alice", "pw")], Sasl("invalid-authzid")),
        case("PLAIN username failing PRECIS", PreSasl, &[&plain("", "al ice\u{7}", "pw")], Sasl("not-authorized")),
        case("PLAIN username of 3000 bytes", PreSasl, &[&long_user_plain], Sasl("not-authorized")),
        case("SCRAM garbage client-first", PreSasl, &[&auth("SCRAM-SHA-1", b"hello world")], Sasl("malformed-request")),
        case("SCRAM without nonce", PreSasl, &[&auth("SCRAM-SHA-256", b"n,,n=alice")], Sasl("malformed-request")),
        case("SCRAM bad gs2 header", PreSasl, &[&auth("SCRAM-SHA-256", b"x,,n=alice,r=abc")], Sasl("malformed-request")),
        case("SCRAM mandatory extension", PreSasl, &[&auth("SCRAM-SHA-256", b"n,,m=ext,n=alice,r=abc")], Sasl("malformed-request")),
        case("SCRAM abort after challenge", PreSasl, &[&scram_first("SCRAM-SHA-256"), "WAIT:</challenge>", "<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"], Sasl("aborted")),
        case("SCRAM mismatched nonce", PreSasl, &[&scram_first("SCRAM-SHA-256"), "WAIT:</challenge>", &response(b"c=biws,r=notthenonce,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")], Sasl("not-authorized")),
        case("SCRAM empty response", PreSasl, &[&scram_first("SCRAM-SHA-1"), "WAIT:</challenge>", "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"], Sasl("malformed-request")),
        case("SCRAM response bad base64", PreSasl, &[&scram_first("SCRAM-SHA-1"), "WAIT:</challenge>", "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>%%%</response>"], Sasl("malformed-request")),
        case("SCRAM response with a wrong element", PreSasl, &[&scram_first("SCRAM-SHA-1"), "WAIT:</challenge>", "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AA==</auth>"], Sasl("malformed-request")),
        case("SCRAM unknown user gets a challenge, then fails", PreSasl, &[&auth("SCRAM-SHA-256", b"n,,n=nobody,r=abcdefgh"), "WAIT:</challenge>", &response(b"c=biws,r=abcdefgh,p=AAAA")], Sasl("not-authorized")),
        // ---- authenticated ----
        case("spoofed from (another account)", Bound, &["<message from='bob@localhost/x' to='bob@localhost'><body>x</body></message>"], Stream("invalid-from")),
        case("from that is not a JID", Bound, &["<message from='@@@' to='bob@localhost'><body>x</body></message>"], Stream("invalid-from")),
        case("from = own bare JID is accepted", Bound, &["<iq from='alice@localhost' type='get' id='own' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"], Reply("id='own'")),
        case("unknown top-level element", Bound, &["<foo/>"], Stream("unsupported-stanza-type")),
        case("stanza in a foreign namespace", Bound, &["<message xmlns='urn:evil'/>"], Stream("unsupported-stanza-type")),
        case("undeclared prefix", Bound, &["<evil:message/>"], Stream("not-well-formed")),
        case("mismatched end tag", Bound, &["<message><body>x</presence>"], Stream("not-well-formed")),
        case("truncated stanza then stream end", Bound, &["<message><body>x", "</stream:stream>"], Stream("not-well-formed")),
        case("DOCTYPE inside the stream", Bound, &["<!DOCTYPE x [<!ENTITY a 'b'>]>"], Stream("not-well-formed")),
        case("billion laughs entity use", Bound, &["<message><body>&lol9;</body></message>"], Stream("not-well-formed")),
        case("processing instruction in a stanza", Bound, &["<message><?php system('x') ?></message>"], Stream("restricted-xml")),
        case("comment in a stanza", Bound, &["<message><!-- c --></message>"], Stream("restricted-xml")),
        case("character reference to NUL", Bound, &["<message><body>&#0;</body></message>"], Stream("not-well-formed")),
        bytes("invalid UTF-8 in text", Bound, b"<message><body>\xc3\x28</body></message>".to_vec(), Stream("not-well-formed")),
        case("deep nesting", Bound, &[&deep], Stream("policy-violation")),
        case("too many attributes", Bound, &[&many_attrs], Stream("policy-violation")),
        case("huge attribute value", Bound, &[&huge_attr], Stream("policy-violation")),
        case("huge text", Bound, &[&huge_text], Stream("policy-violation")),
        case("attribute value over the token limit", Bound, &[&long_value], Stream("policy-violation")),
        case("attribute name over the token limit", Bound, &[&long_attr_name], Stream("policy-violation")),
        case("element name over the token limit", Bound, &[&long_el_name], Stream("policy-violation")),
        case("oversized stanza of small children", Bound, &[&many_children], Stream("policy-violation")),
        case("duplicate attribute", Bound, &["<message to='a@localhost' to='b@localhost'/>"], Stream("not-well-formed")),
        case("colliding expanded attribute names", Bound, &["<message to='alice@localhost' xmlns:x='urn:a' xmlns:y='urn:a' x:a='1' y:a='2'><body>x</body></message>"], Stream("not-well-formed")),
        case("CDATA is plain text", Bound, &["<presence/><message to='alice@localhost' id='cd'><body><![CDATA[<b>&]]></body></message>"], Reply("&amp;")),
        case("iq without a payload", Bound, &["<iq type='get' id='e1' to='localhost'/>"], Stanza("bad-request")),
        case("iq with an unknown type", Bound, &["<iq type='bogus' id='e2' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"], Stanza("bad-request")),
        case("message to a malformed JID", Bound, &["<message to='a@b@c' id='j1'><body>x</body></message>"], Stanza("jid-malformed")),
        case("message to an over-long node", Bound, &[&to_long_node], Stanza("jid-malformed")),
        case("iq to a missing full JID", Bound, &["<iq type='get' id='j3' to='bob@localhost/none'><ping xmlns='urn:xmpp:ping'/></iq>"], Stanza("service-unavailable")),
        case("second bind after binding", Bound, &[&bind("again")], Stanza("")),
        case("whitespace flood then ping", Bound, &[&" ".repeat(100_000), "<iq type='get' id='ws' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"], Reply("id='ws'")),
        case("client closes the stream", Bound, &["</stream:stream>"], Reply("</stream:stream>")),
        // ---- resource binding edge cases (fresh login, bind with a chosen resource) ----
        case("resource of 1100 bytes", Tls, &["BIND:"], Stanza("bad-request")).with_bind(&long_res),
        case("resource with a control character (not XML)", Tls, &["BIND:"], Stream("not-well-formed")).with_bind("a\u{7}b"),
        case("resource failing resourceprep", Tls, &["BIND:"], Stanza("bad-request")).with_bind("a\u{fff9}b"),
        case("resource with a right-to-left mix", Tls, &["BIND:"], Stanza("bad-request")).with_bind("\u{05d0}1a"),
        case("resource of spaces only", Tls, &["BIND:"], Reply("<jid>alice@localhost/")).with_bind("   "),
        // ---- direct TLS port ----
        bytes("garbage on the direct TLS port", DirectTcp, b"\x00\x01garbage garbage\r\n\r\n".to_vec(), Closed),
        case("plain XMPP on the direct TLS port", DirectTcp, &[h], Closed),
        bytes("truncated ClientHello", DirectTcp, vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc], Closed),
        bytes("TLS record of absurd length", DirectTcp, vec![0x16, 0x03, 0x03, 0xff, 0xff, 0x01, 0x00, 0xff, 0xfb, 0x03, 0x03], Closed),
    ]
}

impl Case {
    fn with_bind(mut self, res: &str) -> Case {
        self.send = vec![format!("BIND:{res}").into_bytes()];
        self
    }
}

/// The server's two client ports.
#[derive(Clone, Copy)]
struct Ports {
    c2s: SocketAddr,
    c2s_tls: SocketAddr,
}

impl From<&TestServer> for Ports {
    fn from(s: &TestServer) -> Ports {
        Ports {
            c2s: s.c2s,
            c2s_tls: s.c2s_tls,
        }
    }
}

async fn open(s: impl Into<Ports>, phase: Phase) -> RawClient {
    let s: Ports = s.into();
    match phase {
        Phase::Plain => RawClient::connect(s.c2s).await,
        Phase::DirectTcp => RawClient::connect(s.c2s_tls).await,
        Phase::Tls => RawClient::connect_tls(s.c2s).await,
        Phase::PreSasl => {
            let mut c = RawClient::connect_tls(s.c2s).await;
            c.send(HEADER).await;
            c.read_until("</stream:features>").await;
            c.received.clear();
            c
        }
        Phase::Bound => RawClient::login(s.c2s, "alice", "pw").await,
    }
}

async fn run_case(s: Ports, c: &Case) {
    let mut cl = open(s, c.phase).await;
    for step in &c.send {
        if let Some(needle) = step.strip_prefix(b"WAIT:") {
            cl.read_until(std::str::from_utf8(needle).unwrap()).await;
            continue;
        }
        if let Some(res) = step.strip_prefix(b"BIND:") {
            // Authenticate, then bind with the resource under test.
            let res = String::from_utf8(res.to_vec()).unwrap();
            cl.send(HEADER).await;
            cl.read_until("</stream:features>").await;
            cl.send(&plain("", "alice", "pw")).await;
            cl.read_until("<success").await;
            cl.received.clear();
            cl.send(HEADER).await;
            cl.read_until("</stream:features>").await;
            cl.received.clear();
            cl.send(&format!(
                "<iq type='set' id='rb'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{res}</resource></bind></iq>"
            ))
            .await;
            continue;
        }
        cl.send_bytes(step).await;
    }
    let name = c.name;
    match c.expect {
        Expect::Stream(cond) => {
            let r = cl.read_to_end().await;
            let tag = format!("<{cond} xmlns='urn:ietf:params:xml:ns:xmpp-streams'");
            assert!(r.contains(&tag), "{name}: expected stream error {cond}, got: {r}");
            assert!(r.ends_with("</stream:stream>"), "{name}: stream not closed: {r}");
        }
        Expect::Sasl(cond) => {
            let r = cl.read_until("</failure>").await;
            assert!(
                r.contains(&format!("<{cond}")),
                "{name}: expected SASL {cond}, got: {r}"
            );
            assert!(!r.contains("<success"), "{name}: {r}");
        }
        Expect::Stanza(cond) => {
            let r = cl.read_until("</error>").await;
            assert!(r.contains("type='error'"), "{name}: expected a stanza error, got: {r}");
            assert!(
                r.contains(&format!("<{cond}")),
                "{name}: expected stanza error {cond}, got: {r}"
            );
        }
        Expect::Closed => {
            let r = cl.read_to_end().await;
            assert!(!r.contains("<stream:features"), "{name}: got XMPP: {r}");
        }
        Expect::Reply(text) => {
            let r = cl.read_until(text).await;
            assert!(!r.contains("<stream:error"), "{name}: {r}");
        }
    }
}

/// A ping on a session that must stay undisturbed.
async fn ping(c: &mut RawClient, n: usize) {
    c.received.clear();
    c.send(&format!(
        "<iq type='get' id='sentinel{n}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let r = c.read_until(&format!("id='sentinel{n}'")).await;
    assert!(r.contains("type='result'"), "sentinel ping {n}: {r}");
    assert!(!r.contains("<stream:error"), "sentinel disturbed: {r}");
}

/// A normal client can still log in and gets answers.
async fn healthy(addr: SocketAddr, n: usize) {
    let mut c = RawClient::login(addr, "bob", "pw").await;
    ping(&mut c, n).await;
}

#[tokio::test]
async fn hostile_input_table() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    s.add_user("sentinel", "pw");
    let mut sentinel = RawClient::login(s.c2s, "sentinel", "pw").await;
    sentinel.send("<presence/>").await;
    let cases = cases();
    assert!(cases.len() >= 50, "{} cases", cases.len());
    let ports = Ports::from(&s);
    let mut failed = vec![];
    for (i, c) in cases.into_iter().enumerate() {
        // Each case in its own task, so that one failure still lets the rest run.
        let name = c.name;
        if let Err(e) = tokio::spawn(async move { run_case(ports, &c).await }).await {
            failed.push(format!("{name}: {}", panic_text(e)));
        }
        healthy(s.c2s, i).await;
        ping(&mut sentinel, i).await;
    }
    s.stop().await;
    assert!(
        failed.is_empty(),
        "{} cases failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
        Err(e) => e.to_string(),
    }
}

/// A SCRAM client-final replayed on a new connection (new server nonce) fails.
#[tokio::test]
async fn scram_replay_is_refused() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let mut sentinel = RawClient::login(s.c2s, "alice", "pw").await;
    let first_bare = "n=alice,r=replaynonce0123456789";
    let mut c = open(&s, Phase::PreSasl).await;
    c.send(&auth("SCRAM-SHA-256", format!("n,,{first_bare}").as_bytes()))
        .await;
    let server_first = challenge(&c.read_until("</challenge>").await);
    let fin = scram_final(first_bare, &server_first, "pw");
    c.received.clear();
    c.send(&response(fin.as_bytes())).await;
    assert!(
        c.read_until("<success").await.contains("<success"),
        "a real exchange works"
    );
    // Replay: same client-first, the recorded client-final.
    let mut r = open(&s, Phase::PreSasl).await;
    r.send(&auth("SCRAM-SHA-256", format!("n,,{first_bare}").as_bytes()))
        .await;
    let second = challenge(&r.read_until("</challenge>").await);
    assert_ne!(second, server_first, "the server nonce is fresh");
    r.received.clear();
    r.send(&response(fin.as_bytes())).await;
    let out = r.read_until("</failure>").await;
    assert!(out.contains("<not-authorized"), "{out}");
    healthy_as(s.c2s, "alice").await;
    ping(&mut sentinel, 1).await;
    s.stop().await;
}

async fn healthy_as(addr: SocketAddr, user: &str) {
    let mut c = RawClient::login(addr, user, "pw").await;
    ping(&mut c, 0).await;
}

fn challenge(r: &str) -> String {
    let start = r.find("<challenge").unwrap();
    let body = &r[start..];
    let text = &body[body.find('>').unwrap() + 1..body.find("</challenge>").unwrap()];
    String::from_utf8(B64.decode(text).unwrap()).unwrap()
}

/// RFC 5802 client-final for SCRAM-SHA-256 without channel binding.
fn scram_final(first_bare: &str, server_first: &str, pw: &str) -> String {
    use hmac::{digest::KeyInit, Hmac, Mac};
    use sha2::{Digest, Sha256};
    let mut r = "";
    let mut salt = vec![];
    let mut iters = 0u32;
    for a in server_first.split(',') {
        if let Some(v) = a.strip_prefix("r=") {
            r = v;
        } else if let Some(v) = a.strip_prefix("s=") {
            salt = B64.decode(v).unwrap();
        } else if let Some(v) = a.strip_prefix("i=") {
            iters = v.parse().unwrap();
        }
    }
    let mut sp = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(pw.as_bytes(), &salt, iters, &mut sp);
    let mac = |k: &[u8], d: &[u8]| {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(k).unwrap();
        m.update(d);
        m.finalize().into_bytes().to_vec()
    };
    let ck = mac(&sp, b"Client Key");
    let stored = Sha256::digest(&ck);
    let without = format!("c=biws,r={r}");
    let am = format!("{first_bare},{server_first},{without}");
    let sig = mac(&stored, am.as_bytes());
    let proof: Vec<u8> = ck.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
    format!("{without},p={}", B64.encode(proof))
}

/// Bytes trickled slowly never finish authentication: the auth timeout ends
/// the connection, before and after TLS.
#[tokio::test]
async fn slowloris_is_cut_off_by_the_auth_timeout() {
    let s = TestServer::start_with(
        "[limits]\nauth_timeout = \"2s\"\nconnections_per_ip_per_minute = 10000\nmax_auth_failures_per_ip = 1000\n",
    )
    .await;
    s.add_user("alice", "pw");
    let mut sentinel = RawClient::login(s.c2s, "alice", "pw").await;
    for tls in [false, true] {
        let mut c = if tls {
            RawClient::connect_tls(s.c2s).await
        } else {
            RawClient::connect(s.c2s).await
        };
        // One byte every 100 ms: 200 bytes would take 20 s; the server must
        // end the connection long before.
        let mut open = true;
        for b in HEADER.as_bytes().iter().cycle().take(200) {
            if c.try_send_bytes(&[*b]).await.is_err() || !c.read_for(Duration::from_millis(100)).await {
                open = false;
                break;
            }
        }
        assert!(!open, "tls={tls}: still open after 20 s of trickling");
        let r = c.received.clone();
        assert!(r.contains("<connection-timeout"), "tls={tls}: {r}");
    }
    // Bytes that never contain '<' (a line protocol spoken to the XMPP port)
    // are buffered as text until the auth timeout ends the connection.
    let mut c = RawClient::connect(s.c2s).await;
    c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = c.read_to_end().await;
    assert!(r.contains("<connection-timeout"), "{r}");
    healthy_as(s.c2s, "alice").await;
    ping(&mut sentinel, 1).await;
    s.stop().await;
}

/// More connections per minute than allowed from one address: the extra ones
/// are closed at once; other addresses and existing sessions are unaffected.
#[tokio::test]
async fn connection_flood_is_limited_per_address() {
    let s =
        TestServer::start_with("[limits]\nconnections_per_ip_per_minute = 5\nmax_auth_failures_per_ip = 1000\n").await;
    s.add_user("alice", "pw");
    let mut sentinel = RawClient::login(s.c2s, "alice", "pw").await;
    let flood_ip = "127.0.0.1".parse().unwrap();
    let mut refused = 0;
    let mut held = vec![];
    for _ in 0..30 {
        let mut c = RawClient::connect_from(s.c2s, flood_ip).await.unwrap();
        c.send(HEADER).await;
        let answer = tokio::time::timeout(Duration::from_secs(5), c.read_to_end_or_features()).await;
        match answer {
            Ok(r) if r.contains("<stream:features") => held.push(c),
            Ok(_) => refused += 1,
            Err(_) => panic!("neither served nor refused"),
        }
    }
    assert_eq!(held.len(), 4, "the sentinel plus four more fit in the minute");
    assert_eq!(refused, 26);
    // Another address is served, and the sentinel session is untouched.
    let mut other = RawClient::connect_from(s.c2s, "127.0.0.2".parse().unwrap())
        .await
        .unwrap();
    other.starttls().await;
    other.plain_login_and_bind("alice", "pw").await;
    ping(&mut other, 0).await;
    ping(&mut sentinel, 1).await;
    s.stop().await;
}

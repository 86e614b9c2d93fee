//! One XMPP client connection as a real client makes it: TCP, STARTTLS or
//! direct TLS, optional in-band registration, then either SASL (SCRAM or
//! PLAIN), stream restart and resource binding, or SASL2 (XEP-0388) with
//! Bind 2 (XEP-0386) in one request, with SCRAM or a FAST token
//! (XEP-0484, HT-SHA-256-NONE); initial presence. Each connection counts
//! its round trips (client flights that wait for an answer).

use crate::{
    rxstamp::RxStamped,
    scram::{self, Mech, Scram},
    xml::{esc, Ev, Reader},
};
use anyhow::{anyhow, bail, Context, Result};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use minidom::Element;
use rustls_pki_types::ServerName;
use sha2::{Digest, Sha256};
use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{self, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{client::TlsStream, TlsConnector};

const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// Every step of a login must answer within this.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and how to connect.
pub struct Target {
    pub addr: SocketAddr,
    /// Local addresses to connect from, in turn (more than ~28,000
    /// connections to one server port need several: one source address has
    /// that many ephemeral ports). Empty: the system's choice.
    pub sources: Vec<std::net::IpAddr>,
    pub next_source: std::sync::atomic::AtomicUsize,
    pub domain: String,
    pub direct_tls: bool,
    /// No TLS at all: the stream's first features must offer SASL (only the
    /// floor forwarder does; a real server insists on TLS).
    pub plain: bool,
    pub tls: Arc<rustls::ClientConfig>,
    pub mech: Option<Mech>,
}

/// An XML stream over a byte stream.
pub struct Xs<S> {
    pub io: S,
    rd: Reader,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    /// Round trips so far: flights of ours that waited for an answer.
    pub rtts: u32,
    awaiting: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Xs<S> {
    pub fn new(io: S) -> Self {
        Xs {
            io,
            rd: Reader::new(),
            buf: vec![0; 8192].into_boxed_slice(),
            pos: 0,
            len: 0,
            rtts: 0,
            awaiting: false,
        }
    }

    pub async fn send(&mut self, s: &str) -> Result<()> {
        if !self.awaiting {
            self.rtts += 1;
            self.awaiting = true;
        }
        self.io.write_all(s.as_bytes()).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// The next event from the server (cancel-safe: the only await is the read).
    pub async fn next(&mut self) -> Result<Ev> {
        loop {
            let mut slice = &self.buf[self.pos..self.len];
            let before = slice.len();
            let r = self.rd.next(&mut slice)?;
            self.pos += before - slice.len();
            if let Some(ev) = r {
                self.awaiting = false;
                return Ok(ev);
            }
            self.pos = 0;
            self.len = 0;
            let n = self.io.read(&mut self.buf).await?;
            if n == 0 {
                bail!("server closed the connection");
            }
            self.len = n;
        }
    }

    /// Bytes read but not parsed yet (after the last event returned), and
    /// the byte stream: for a peer that stops parsing (the floor forwarder).
    pub fn into_parts(self) -> (S, Vec<u8>) {
        (self.io, self.buf[self.pos..self.len].to_vec())
    }

    /// Start parsing a new stream (after STARTTLS or SASL success).
    pub fn restart(&mut self) {
        self.rd = Reader::new();
    }

    /// The next top-level element, with a timeout; stream errors become errors.
    pub async fn element(&mut self) -> Result<Element> {
        match tokio::time::timeout(STEP_TIMEOUT, self.next()).await {
            Err(_) => bail!("server did not answer in {STEP_TIMEOUT:?}"),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Ev::El(e))) if e.name() == "error" && e.ns() == "http://etherx.jabber.org/streams" => {
                let cond = e.children().next().map(|c| c.name().to_string()).unwrap_or_default();
                bail!("stream error: {cond}")
            }
            Ok(Ok(Ev::El(e))) => Ok(e),
            Ok(Ok(Ev::Header)) => bail!("unexpected stream header"),
            Ok(Ok(Ev::Close)) => bail!("server closed the stream"),
        }
    }

    /// Send our stream header, read the server's and its features.
    async fn open(&mut self, domain: &str) -> Result<Element> {
        self.rd = Reader::new();
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0' xml:lang='en'>",
            esc(domain)
        ))
        .await?;
        match tokio::time::timeout(STEP_TIMEOUT, self.next()).await {
            Ok(Ok(Ev::Header)) => {}
            Ok(Ok(_)) => bail!("expected a stream header"),
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("no stream header in {STEP_TIMEOUT:?}"),
        }
        let f = self.element().await?;
        if f.name() != "features" {
            bail!("expected stream features, got <{}>", f.name());
        }
        Ok(f)
    }
}

pub type Conn = Xs<Io>;

/// A client connection's byte stream: TLS, or plain TCP (`--plain`, only
/// for the floor forwarder, which measures what TLS adds).
pub enum Io {
    Tls(Box<TlsStream<RxStamped>>),
    Plain(RxStamped),
}

impl Io {
    /// When the kernel received the bytes of the last read (µs on the
    /// generator's clock), where it says.
    pub fn last_rx_us(&self) -> Option<u64> {
        match self {
            Io::Tls(s) => s.get_ref().0.last_rx_us(),
            Io::Plain(s) => s.last_rx_us(),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut task::Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Accept any certificate (loopback benchmarks with self-signed servers).
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS client settings: trust `ca` (PEM) or, without it, any certificate.
pub fn tls_config(ca: Option<&std::path::Path>, direct_tls: bool, resume: bool) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let mut cfg = match ca {
        Some(path) => {
            use rustls_pki_types::{pem::PemObject, CertificateDer};
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(path).with_context(|| format!("reading {}", path.display()))? {
                roots.add(c?)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth(),
    };
    if direct_tls {
        cfg.alpn_protocols = vec![b"xmpp-client".to_vec()];
    }
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

async fn tls(t: &Target, tcp: RxStamped) -> Result<TlsStream<RxStamped>> {
    let name = ServerName::try_from(t.domain.clone())?;
    let s = tokio::time::timeout(STEP_TIMEOUT, TlsConnector::from(t.tls.clone()).connect(name, tcp))
        .await
        .map_err(|_| anyhow!("TLS handshake timed out"))??;
    Ok(s)
}

fn mechanisms(features: &Element) -> Vec<String> {
    features
        .get_child("mechanisms", NS_SASL)
        .map(|m| m.children().map(|c| c.text()).collect())
        .unwrap_or_default()
}

/// What to do once connected.
#[derive(Clone, Copy, Default)]
pub struct Steps {
    /// Register the account in-band first (XEP-0077); "already exists" is fine.
    pub register: bool,
    /// Send initial presence after binding.
    pub presence: bool,
}

/// How a login authenticates and binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// RFC 6120 SASL, stream restart, `<bind/>` IQ.
    Sasl1,
    /// SASL2 with SCRAM (or PLAIN) and Bind 2 in the same request.
    Sasl2,
    /// SASL2 with a FAST token (HT-SHA-256-NONE) and Bind 2.
    Fast,
    /// No authentication: TCP, TLS and the first stream features only (the
    /// floor every login pays).
    TlsOnly,
}

/// A bound session.
pub struct Session {
    pub conn: Conn,
    pub jid: String,
    /// A FAST token the server issued in this login.
    pub token: Option<String>,
}

/// Connect, authenticate as `user`, bind; returns the stream and the bound JID.
pub async fn login(t: &Target, user: &str, password: &str, steps: Steps) -> Result<(Conn, String)> {
    let s = login_with(t, user, password, steps, Auth::Sasl1, None, false).await?;
    Ok((s.conn, s.jid))
}

/// TCP and TLS (direct or STARTTLS); returns the stream and its features.
async fn connect(t: &Target) -> Result<(Conn, Element)> {
    let tcp = if t.sources.is_empty() {
        TcpStream::connect(t.addr).await.context("connect")?
    } else {
        let i = t.next_source.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let src = t.sources[i % t.sources.len()];
        let sock = if src.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.bind(SocketAddr::new(src, 0)).context("bind the source address")?;
        sock.connect(t.addr).await.context("connect")?
    };
    tcp.set_nodelay(true)?;
    let tcp = RxStamped::new(tcp, crate::start())?;
    if t.plain {
        let mut xs = Xs::new(Io::Plain(tcp));
        let features = xs.open(&t.domain).await?;
        return Ok((xs, features));
    }
    let mut xs = if t.direct_tls {
        Xs::new(Io::Tls(Box::new(tls(t, tcp).await?)))
    } else {
        let mut plain = Xs::new(tcp);
        let f = plain.open(&t.domain).await?;
        if f.get_child("starttls", NS_TLS).is_none() {
            bail!("the server does not offer STARTTLS");
        }
        plain.send(&format!("<starttls xmlns='{NS_TLS}'/>")).await?;
        let p = plain.element().await?;
        if p.name() != "proceed" {
            bail!("STARTTLS refused: <{}>", p.name());
        }
        let rtts = plain.rtts;
        let mut xs = Xs::new(Io::Tls(Box::new(tls(t, plain.io).await?)));
        xs.rtts = rtts;
        xs
    };
    // The TLS 1.3 handshake: one round trip.
    xs.rtts += 1;
    let features = xs.open(&t.domain).await?;
    Ok((xs, features))
}

/// Log in as `user` the way `auth` says (`token` for [`Auth::Fast`]);
/// with SASL2 the client names itself with a user-agent id derived from
/// the account, and `request_token` asks for a FAST token.
pub async fn login_with(
    t: &Target,
    user: &str,
    password: &str,
    steps: Steps,
    auth: Auth,
    token: Option<&str>,
    request_token: bool,
) -> Result<Session> {
    let (mut xs, features) = connect(t).await?;
    if auth == Auth::TlsOnly {
        return Ok(Session {
            conn: xs,
            jid: String::new(),
            token: None,
        });
    }
    if steps.register {
        xs.send(&format!(
            "<iq type='set' id='reg1'><query xmlns='jabber:iq:register'><username>{}</username>\
             <password>{}</password></query></iq>",
            esc(user),
            esc(password)
        ))
        .await?;
        let r = xs.element().await?;
        let conflict = r
            .get_child("error", "jabber:client")
            .is_some_and(|e| e.get_child("conflict", "urn:ietf:params:xml:ns:xmpp-stanzas").is_some());
        if r.attr("type") != Some("result") && !conflict {
            bail!("registration of {user} failed: {}", String::from(&r));
        }
    }
    let (jid, token) = match auth {
        Auth::Sasl1 => {
            let offered = mechanisms(&features);
            let mech = match t.mech {
                Some(m) => m,
                None => [Mech::Sha256, Mech::Sha1, Mech::Plain]
                    .into_iter()
                    .find(|m| offered.iter().any(|o| o == m.name()))
                    .ok_or_else(|| anyhow!("no usable SASL mechanism among {offered:?}"))?,
            };
            authenticate(&mut xs, mech, user, password).await?;
            xs.open(&t.domain).await?;
            xs.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
                .await?;
            let jid = loop {
                let r = xs.element().await?;
                if r.name() == "iq" && r.attr("id") == Some("bind1") {
                    if r.attr("type") != Some("result") {
                        bail!("bind failed: {}", String::from(&r));
                    }
                    break r
                        .get_child("bind", NS_BIND)
                        .and_then(|b| b.get_child("jid", NS_BIND))
                        .map(|j| j.text())
                        .ok_or_else(|| anyhow!("bind result without a JID"))?;
                }
            };
            (jid, None)
        }
        Auth::Sasl2 | Auth::Fast => {
            if features.get_child("authentication", NS_SASL2).is_none() {
                bail!("the server does not offer SASL2");
            }
            let token = if auth == Auth::Fast { token } else { None };
            sasl2(&mut xs, t, user, password, token, request_token).await?
        }
        Auth::TlsOnly => unreachable!("returned above"),
    };
    if steps.presence {
        xs.send("<presence/>").await?;
    }
    Ok(Session { conn: xs, jid, token })
}

const NS_SASL2: &str = "urn:xmpp:sasl:2";

/// A user-agent id (a UUID) that is the same for every login of `user`.
fn agent_id(user: &str) -> String {
    let h = Sha256::digest(user.as_bytes());
    let x: String = h[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-8{}-{}",
        &x[..8],
        &x[8..12],
        &x[13..16],
        &x[17..20],
        &x[20..32]
    )
}

/// SASL2 + Bind 2: SCRAM-SHA-256 asking for a FAST token, or the token.
/// Returns the bound JID and the token the server issued, if any.
async fn sasl2(
    xs: &mut Conn,
    t: &Target,
    user: &str,
    password: &str,
    token: Option<&str>,
    request_token: bool,
) -> Result<(String, Option<String>)> {
    let inline = format!(
        "<user-agent id='{}'><software>pushbox-loadgen</software></user-agent>\
         <bind xmlns='urn:xmpp:bind:0'><tag>loadgen</tag></bind>",
        agent_id(user)
    );
    let responder;
    let mut scram = None;
    match token {
        Some(tok) => {
            let mut initial = format!("{user}\0").into_bytes();
            initial.extend(hmac_sha256(tok.as_bytes(), b"Initiator"));
            responder = Some(hmac_sha256(tok.as_bytes(), b"Responder"));
            xs.send(&format!(
                "<authenticate xmlns='{NS_SASL2}' mechanism='HT-SHA-256-NONE'><initial-response>{}</initial-response>\
                 {inline}<fast xmlns='urn:xmpp:fast:0'/></authenticate>",
                B64.encode(initial)
            ))
            .await?;
        }
        None => {
            responder = None;
            let mech = t.mech.unwrap_or(Mech::Sha256);
            let (s, first) = Scram::start(mech, user, password);
            scram = Some(s);
            let request = if request_token {
                "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"
            } else {
                ""
            };
            xs.send(&format!(
                "<authenticate xmlns='{NS_SASL2}' mechanism='{}'><initial-response>{}</initial-response>\
                 {inline}{request}</authenticate>",
                mech.name(),
                B64.encode(first)
            ))
            .await?;
        }
    }
    loop {
        let el = xs.element().await?;
        match el.name() {
            "challenge" => {
                let s = scram.as_mut().ok_or_else(|| anyhow!("a challenge for a token login"))?;
                let d = B64.decode(el.text().trim()).context("base64 from the server")?;
                let reply = s.respond(&d)?;
                xs.send(&format!(
                    "<response xmlns='{NS_SASL2}'>{}</response>",
                    B64.encode(reply)
                ))
                .await?;
            }
            "success" => {
                let data = el
                    .get_child("additional-data", NS_SASL2)
                    .map(|d| B64.decode(d.text().trim()))
                    .transpose()
                    .context("base64 from the server")?
                    .unwrap_or_default();
                match (&scram, &responder) {
                    (Some(s), _) => s.verify(&data)?,
                    (None, Some(r)) if *r == data => {}
                    _ => bail!("the server's FAST answer does not match the token"),
                }
                let jid = el
                    .get_child("authorization-identifier", NS_SASL2)
                    .map(|j| j.text())
                    .ok_or_else(|| anyhow!("success without an authorization identifier"))?;
                let token = el
                    .get_child("token", "urn:xmpp:fast:0")
                    .and_then(|t| t.attr("token"))
                    .map(str::to_string);
                // The authenticated stream's features follow in the same flight.
                let f = xs.element().await?;
                if f.name() != "features" {
                    bail!("expected stream features after SASL2 success, got <{}>", f.name());
                }
                return Ok((jid, token));
            }
            _ => bail!("authentication of {user} failed: {}", String::from(&el)),
        }
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::{digest::KeyInit, Hmac, Mac};
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

async fn authenticate(xs: &mut Conn, mech: Mech, user: &str, password: &str) -> Result<()> {
    let (mut scram, first) = match mech {
        Mech::Plain => (None, scram::plain(user, password)),
        m => {
            let (s, first) = Scram::start(m, user, password);
            (Some(s), first)
        }
    };
    xs.send(&format!(
        "<auth xmlns='{NS_SASL}' mechanism='{}'>{}</auth>",
        mech.name(),
        B64.encode(first)
    ))
    .await?;
    loop {
        let el = xs.element().await?;
        let data = || B64.decode(el.text().trim()).context("base64 from the server");
        match el.name() {
            "challenge" => {
                let s = scram.as_mut().ok_or_else(|| anyhow!("a challenge for PLAIN"))?;
                let d = data()?;
                // Some servers send the server-final message as a last challenge.
                let reply = if d.starts_with(b"v=") {
                    s.verify(&d)?;
                    vec![]
                } else {
                    s.respond(&d)?
                };
                xs.send(&format!("<response xmlns='{NS_SASL}'>{}</response>", B64.encode(reply)))
                    .await?;
            }
            "success" => {
                let d = data()?;
                if let (Some(s), false) = (&scram, d.is_empty()) {
                    s.verify(&d)?;
                }
                return Ok(());
            }
            _ => bail!("authentication of {user} failed: {}", String::from(&el)),
        }
    }
}

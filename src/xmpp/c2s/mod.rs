//! Client connections: STARTTLS (5222), direct TLS (5223, XEP-0368) and
//! WebSocket (RFC 7395, on the HTTPS listeners), SASL (RFC 6120 and SASL2,
//! XEP-0388), resource binding (legacy and Bind 2, XEP-0386) or
//! resumption, and the session loop. One task owns each connection; the
//! rest of the server reaches it through its channel.

pub mod auth;
pub mod bind2;
pub mod fast;
pub mod sasl2;
pub mod session;
pub mod websocket;

use super::{
    modules::register::{self, PreAuthState},
    sasl::{self, ChannelBindings, Failure, Refused},
    sessions::{inbox, SessionHandle, ToSession},
    stanza::{self, iq_result, Kind},
    starttls,
    stream::{ConnError, Plain, Transport, XmlStream},
    xml::{elem, ElementExt, Event, ParserLimits, StreamError, NS_BIND, NS_CLIENT, NS_SASL, NS_SASL_CB, NS_SESSION},
};
use crate::net::tls::Acceptor;
use crate::{certs::ALPN_XMPP_CLIENT, xmpp::Server};
use auth::{Authenticated, Offer, Profile};
use jid::{BareJid, FullJid};
use minidom::Element;
use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncBufRead, AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tracing::Instrument;

pub use super::starttls::Tls;
pub use super::stream::new_id;

/// What a client stream runs over: TLS on the XMPP ports, or a WebSocket
/// on the HTTPS listeners. A session may resume on either. (The stream
/// that holds it is boxed, so the TLS state is not boxed again.)
#[allow(clippy::large_enum_variant)] // the stream holding it is boxed
pub enum ClientIo {
    Tls(Tls),
    WebSocket(Box<websocket::WsIo>),
}

/// A client's XML stream, whatever its transport.
pub type ClientStream = XmlStream<ClientIo>;

impl ClientIo {
    /// When the transport itself last heard from the client (a WebSocket
    /// ping or pong; TLS has no such frames).
    pub fn heard(&self) -> Option<tokio::time::Instant> {
        match self {
            ClientIo::Tls(_) => None,
            ClientIo::WebSocket(w) => w.heard(),
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Tls(t) => Pin::new(t).poll_read(cx, buf),
            ClientIo::WebSocket(w) => Pin::new(w.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncBufRead for ClientIo {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<&[u8]>> {
        match self.get_mut() {
            ClientIo::Tls(t) => Pin::new(t).poll_fill_buf(cx),
            ClientIo::WebSocket(w) => Pin::new(w.as_mut()).poll_fill_buf(cx),
        }
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        match self.get_mut() {
            ClientIo::Tls(t) => Pin::new(t).consume(amt),
            ClientIo::WebSocket(w) => Pin::new(w.as_mut()).consume(amt),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Tls(t) => Pin::new(t).poll_write(cx, buf),
            ClientIo::WebSocket(w) => Pin::new(w.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Tls(t) => Pin::new(t).poll_flush(cx),
            ClientIo::WebSocket(w) => Pin::new(w.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Tls(t) => Pin::new(t).poll_shutdown(cx),
            ClientIo::WebSocket(w) => Pin::new(w.as_mut()).poll_shutdown(cx),
        }
    }
}

fn limits(server: &Server) -> ParserLimits {
    let l = &server.config.limits;
    ParserLimits {
        max_stanza_size: l.max_stanza_size,
        max_depth: l.max_depth,
        max_attributes: l.max_attributes,
    }
}

/// Serve one connection on a STARTTLS listener.
pub async fn serve_starttls(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("c2s", %peer, jid = tracing::field::Empty);
    async move {
        let _ = tcp.set_nodelay(true);
        let xs = XmlStream::plain(tcp, limits(&server));
        let acceptor = Acceptor::new(server.certs.server_config(&[]));
        let open = async |xs: &mut XmlStream<Plain>| open_plaintext(&server, xs).await;
        // Boxed, like every phase before binding: the task keeps the
        // largest state it ever awaited, and a session lives for hours.
        let (xs, cb, peer_ip) = match Box::pin(starttls::negotiate(&server, xs, NS_CLIENT, acceptor, open)).await {
            Some(tls) => tls_stream(&server, tls),
            None => return,
        };
        negotiate(server, xs, cb, peer_ip).await
    }
    .instrument(span)
    .await
}

/// Serve one connection on a direct TLS listener.
pub async fn serve_direct_tls(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("c2s", %peer, tls = "direct", jid = tracing::field::Empty);
    async move {
        let acceptor = Acceptor::new(server.certs.server_config(&[ALPN_XMPP_CLIENT]));
        let (xs, cb, peer_ip) = match Box::pin(starttls::direct(tcp, acceptor)).await {
            Some(tls) => tls_stream(&server, tls),
            None => return,
        };
        negotiate(server, xs, cb, peer_ip).await
    }
    .instrument(span)
    .await
}

/// Run a negotiation phase with a deadline, ending it if the daemon stops.
async fn until_shutdown<T>(
    server: &Server,
    deadline: Duration,
    phase: impl std::future::Future<Output = Result<T, ConnError>>,
) -> Result<T, ConnError> {
    let mut stop = server.shutdown.clone();
    tokio::select! {
        r = tokio::time::timeout(deadline, phase) => r.unwrap_or(Err(ConnError::Timeout)),
        _ = crate::shutdown::stopped(&mut stop) => Err(ConnError::Stream(StreamError::SystemShutdown)),
    }
}

/// Log the end of a connection once and send the right stream error.
pub(crate) async fn end<S: Transport>(server: &Server, xs: &mut XmlStream<S>, e: ConnError) {
    xs.end(NS_CLIENT, server.domain(), e).await
}

async fn expect_header<S: Transport>(server: &Server, xs: &mut XmlStream<S>) -> Result<(), ConnError> {
    match xs.next_event().await? {
        Event::Header(h) => h.check(NS_CLIENT, |to| server.is_local(to)).map_err(ConnError::Stream),
        _ => Err(ConnError::Stream(StreamError::NotWellFormed)),
    }
}

/// The plaintext stream header and our answer (features follow).
async fn open_plaintext(server: &Server, xs: &mut XmlStream<Plain>) -> Result<(), ConnError> {
    expect_header(server, xs).await?;
    xs.queue_header(NS_CLIENT, server.domain(), None, &new_id());
    Ok(())
}

/// A TLS connection as a client stream, with what SASL binds to. The
/// stream is boxed from here on: an async fn keeps its arguments and its
/// locals apart, so a stream passed by value down the calls would be
/// stored in the task once per level.
fn tls_stream(server: &Server, mut tls: Tls) -> (Box<ClientStream>, ChannelBindings, Option<std::net::IpAddr>) {
    let info = tls.take_handshake_info();
    let cb = server
        .certs
        .channel_bindings_of(info.tls_exporter.map(|e| e.to_vec()), info.server_name.as_deref());
    let peer_ip = tls.get_ref().peer_addr().map(|a| a.ip()).ok();
    (
        Box::new(XmlStream::new(ClientIo::Tls(tls), limits(server))),
        cb,
        peer_ip,
    )
}

/// Authenticate and bind (or resume) a client stream, then serve the session.
async fn negotiate(
    server: Arc<Server>,
    mut xs: Box<ClientStream>,
    cb: ChannelBindings,
    peer_ip: Option<std::net::IpAddr>,
) {
    let deadline = server.config.limits.auth_timeout.get();
    // Boxed: SASL and binding need far more state than an idle session.
    let bound = Box::pin(until_shutdown(
        &server,
        deadline,
        authenticate_and_bind(&server, &mut xs, cb, peer_ip),
    ))
    .await;
    match bound {
        Ok(Bound::New(session)) => {
            tracing::Span::current().record("jid", tracing::field::display(&session.handle().jid));
            tracing::info!("session started");
            session.run(xs).await
        }
        Ok(Bound::Resume(target, h, success)) => {
            tracing::Span::current().record("jid", tracing::field::display(&target.jid));
            // Hand this connection to the session task; it answers <resumed/>.
            let req = Box::new(session::ResumeRequest { xs, h, success });
            if let Err(e) = target.tx.send(ToSession::Resume(req)) {
                if let ToSession::Resume(req) = e.0 {
                    let mut xs = req.xs;
                    // The session ended between the lookup and now.
                    let _ = Box::pin(xs.send(&session::failed("item-not-found"))).await;
                    Box::pin(xs.close()).await;
                }
            }
        }
        Err(e) => Box::pin(end(&server, &mut xs, e)).await,
    }
}

/// What a negotiated connection becomes.
enum Bound {
    /// A new session, bound (and maybe with stream management on).
    New(Box<session::Session>),
    /// XEP-0198 resumption of this session with this `h`; with SASL2, the
    /// `<success/>` that carries `<resumed/>`.
    Resume(Arc<SessionHandle>, u32, Option<Element>),
}

/// Register a new bound session for `jid` (the older one with the same
/// resource is replaced, RFC 6120 §7.7.2.2).
fn new_session(server: &Arc<Server>, jid: FullJid) -> session::Session {
    let (tx, rx) = inbox::new();
    let handle = Arc::new(SessionHandle::new(server.sessions.next_id(), jid, tx));
    if let Some(old) = server.sessions.bind(handle.clone()) {
        tracing::info!(jid = %handle.jid, "resource conflict: replacing the older session");
        let _ = old.tx.send(ToSession::Replaced);
    }
    session::Session::new(server.clone(), handle, rx)
}

fn bare_jid(server: &Server, username: &str) -> Result<BareJid, ConnError> {
    BareJid::new(&format!("{username}@{}", server.domain()))
        .map_err(|_| ConnError::Stream(StreamError::InternalServerError))
}

async fn authenticate_and_bind(
    server: &Arc<Server>,
    xs: &mut ClientStream,
    cb: ChannelBindings,
    peer_ip: Option<std::net::IpAddr>,
) -> Result<Bound, ConnError> {
    match authenticate(server, xs, cb, peer_ip).await? {
        Login::Sasl1(username) => {
            xs.restart();
            expect_header(server, xs).await?;
            xs.queue_header(NS_CLIENT, server.domain(), None, &new_id());
            bind(server, xs, &username).await
        }
        Login::Sasl2(a, req) => after_sasl2(server, xs, a, *req).await,
    }
}

/// SASL2 succeeded: resume (XEP-0198 §6.2) or bind inline (Bind 2) as the
/// request asks, send `<success/>` with the results, then the features of
/// the authenticated stream (none after a resumption).
async fn after_sasl2(
    server: &Arc<Server>,
    xs: &mut ClientStream,
    a: Authenticated,
    req: sasl2::Request,
) -> Result<Bound, ConnError> {
    let username = a.username;
    let mut success = sasl2::success(a.additional.as_deref());
    if let Some(token) = fast::settle(server, &username, &req, a.token).await {
        success.append_child(token);
    }
    if let Some((previd, h)) = &req.resume {
        let owner = bare_jid(server, &username)?;
        if let Some(t) = server.sessions.resumable(previd, &owner) {
            return Ok(Bound::Resume(t, *h, Some(success)));
        }
    }
    if req.resume.is_some() || req.bad_resume {
        success.append_child(session::failed("item-not-found"));
    }
    let Some(bind_req) = &req.bind else {
        success.append_child(sasl2::authorization_identifier(bare_jid(server, &username)?.as_str()));
        xs.queue(&success);
        return bind(server, xs, &username).await;
    };
    let (session, bound) = bind2::bind(server, &username, req.agent.id.as_deref(), bind_req);
    success.append_child(sasl2::authorization_identifier(session.handle().jid.as_str()));
    success.append_child(bound);
    xs.queue(&success);
    // The authenticated stream's features: no binding left to do, and
    // stream management only if it is not on yet.
    let mut features = vec![elem("csi", session::NS_CSI)];
    if !session.sm_enabled() {
        features.push(elem("sm", session::NS_SM));
    }
    for m in server.modules.iter() {
        features.extend(m.stream_features(server));
    }
    xs.queue_features(&features);
    xs.flush().await?;
    Ok(Bound::New(Box::new(session)))
}

/// Offer the authenticated stream's features and run legacy resource
/// binding (RFC 6120 §7), or XEP-0198 resumption.
async fn bind(server: &Arc<Server>, xs: &mut ClientStream, username: &str) -> Result<Bound, ConnError> {
    let mut features = vec![
        elem("bind", NS_BIND),
        elem("session", NS_SESSION).child(elem("optional", NS_SESSION)),
        elem("sm", session::NS_SM),
        elem("csi", session::NS_CSI),
    ];
    for m in server.modules.iter() {
        features.extend(m.stream_features(server));
    }
    xs.queue_features(&features);
    xs.flush().await?;
    loop {
        let el = match xs.next_event().await? {
            Event::Stanza(el) => el,
            Event::Close => return Err(ConnError::Eof),
            Event::Header(_) => return Err(ConnError::Stream(StreamError::NotWellFormed)),
        };
        if el.has_ns(session::NS_SM) && el.name() == "resume" {
            let owner = bare_jid(server, username)?;
            let h = el.attr("h").and_then(|h| h.parse::<u32>().ok());
            let target = el.attr("previd").and_then(|id| server.sessions.resumable(id, &owner));
            match (target, h) {
                (Some(t), Some(h)) => return Ok(Bound::Resume(t, h, None)),
                _ => {
                    xs.send(&session::failed("item-not-found")).await?;
                    continue;
                }
            }
        }
        if el.has_ns(session::NS_SM) && el.name() == "enable" {
            // Enabling needs a bound resource (XEP-0198 §3).
            xs.send(&session::failed("unexpected-request")).await?;
            continue;
        }
        if Kind::of(&el) != Some(Kind::Iq) {
            return Err(ConnError::Stream(StreamError::NotAuthorized));
        }
        let Some(bind) = el.get_child("bind", NS_BIND) else {
            // Nothing but binding is possible before a resource is bound.
            xs.send(
                &stanza::bounce(&el, stanza::Condition::NotAuthorized, server.domain()).unwrap_or_else(|| el.clone()),
            )
            .await?;
            continue;
        };
        if stanza::typ(&el) != "set" {
            if let Some(b) = stanza::bounce(&el, stanza::Condition::BadRequest, server.domain()) {
                xs.send(&b).await?;
            }
            continue;
        }
        let wanted = bind
            .get_child("resource", NS_BIND)
            .map(|r| r.text())
            .filter(|r| !r.is_empty());
        let resource = match wanted {
            Some(r) if r.len() <= 1023 => r,
            Some(_) => {
                xs.send(&stanza::bounce(&el, stanza::Condition::BadRequest, server.domain()).expect("iq set"))
                    .await?;
                continue;
            }
            None => format!("pushbox-{}", &new_id()[..12]),
        };
        let Ok(jid) = FullJid::new(&format!("{username}@{}/{resource}", server.domain())) else {
            xs.send(&stanza::bounce(&el, stanza::Condition::BadRequest, server.domain()).expect("iq set"))
                .await?;
            continue;
        };
        let session = new_session(server, jid.clone());
        let mut reply = iq_result(
            &el,
            Some(elem("bind", NS_BIND).child(elem("jid", NS_BIND).text_child(jid.to_string()))),
        );
        reply.unset("from");
        xs.send(&reply).await?;
        return Ok(Bound::New(Box::new(session)));
    }
}

/// SASL attempts one stream may make, whatever their outcome: clients walk
/// down the offered mechanisms (at most five here), so this only stops a
/// client that loops.
const MAX_SASL_ATTEMPTS: u32 = 10;

/// How a stream authenticated.
enum Login {
    /// RFC 6120 SASL (success sent; a stream restart follows).
    Sasl1(String),
    /// SASL2: success is still to be sent, with the inline results.
    Sasl2(Authenticated, Box<sasl2::Request>),
}

/// One authentication request, in either profile.
enum Attempt {
    Sasl1 {
        mechanism: String,
        initial: Option<Vec<u8>>,
    },
    Sasl2(Box<sasl2::Request>),
}

impl Attempt {
    fn profile(&self) -> Profile {
        match self {
            Attempt::Sasl1 { .. } => Profile::Sasl1,
            Attempt::Sasl2(_) => Profile::Sasl2,
        }
    }
}

/// Read an `<auth/>` or `<authenticate/>`; `Ok(None)` for anything else.
fn read_attempt(el: &Element) -> Option<Result<Attempt, (Profile, Failure)>> {
    if el.has_ns(NS_SASL) && el.name() == "auth" {
        let mechanism = el.attr("mechanism").unwrap_or_default().to_string();
        // RFC 6120 §6.4.2: no text is no initial response, `=` an empty one.
        let initial = match el.text().trim() {
            "" => None,
            _ => match auth::decode(el) {
                Ok(d) => Some(d),
                Err(f) => return Some(Err((Profile::Sasl1, f))),
            },
        };
        return Some(Ok(Attempt::Sasl1 { mechanism, initial }));
    }
    if el.has_ns(auth::NS_SASL2) && el.name() == "authenticate" {
        return Some(
            sasl2::parse(el)
                .map(|r| Attempt::Sasl2(Box::new(r)))
                .map_err(|f| (Profile::Sasl2, f)),
        );
    }
    None
}

/// SASL in either profile; returns how the stream authenticated.
async fn authenticate(
    server: &Arc<Server>,
    xs: &mut ClientStream,
    cb: ChannelBindings,
    peer_ip: Option<std::net::IpAddr>,
) -> Result<Login, ConnError> {
    expect_header(server, xs).await?;
    xs.queue_header(NS_CLIENT, server.domain(), None, &new_id());
    let offer = Offer::new(cb);
    let mut features = vec![
        offer.mechanism_list("mechanisms", NS_SASL),
        sasl2::feature(&offer, fast::enabled(server)),
    ];
    if offer.cb.any() {
        // XEP-0440: which channel-binding types this connection supports.
        let mut list = elem("sasl-channel-binding", NS_SASL_CB);
        for t in offer.cb.types() {
            list.append_child(elem("channel-binding", NS_SASL_CB).with("type", t.name()));
        }
        features.push(list);
    }
    features.extend(register::pre_auth_features(server));
    xs.queue_features(&features);
    xs.flush().await?;

    let mut failures = 0u32;
    let mut attempts = 0u32;
    let mut reg = PreAuthState::default();
    let max_failures = server.config.limits.max_auth_failures;
    loop {
        let el = match xs.next_event().await? {
            Event::Stanza(el) => el,
            Event::Close => return Err(ConnError::Eof),
            Event::Header(_) => return Err(ConnError::Stream(StreamError::NotWellFormed)),
        };
        if Kind::of(&el) == Some(Kind::Iq) {
            let reply = match register::pre_auth(server, &el, &mut reg).await {
                Ok(p) => Some(iq_result(&el, p)),
                Err(e) => stanza::bounce(&el, e, server.domain()),
            };
            if let Some(mut r) = reply {
                r.unset("to");
                xs.send(&r).await?;
            }
            continue;
        }
        let Some(attempt) = read_attempt(&el) else {
            return Err(ConnError::Stream(StreamError::NotAuthorized));
        };
        attempts += 1;
        let attempt = match attempt {
            Ok(a) => a,
            Err((profile, f)) => {
                xs.send(&profile.failure(f, None)).await?;
                if attempts >= MAX_SASL_ATTEMPTS {
                    return Err(ConnError::Stream(StreamError::PolicyViolation));
                }
                continue;
            }
        };
        let profile = attempt.profile();
        if peer_ip.is_some_and(|ip| server.limiter.login_blocked(ip)) {
            tracing::warn!("login refused: too many failures from this address");
            xs.send(&profile.failure(Failure::NotAuthorized, Some("too many failed logins; try again later")))
                .await?;
            return Err(ConnError::Stream(StreamError::PolicyViolation));
        }
        let outcome = match &attempt {
            Attempt::Sasl1 { mechanism, initial } => {
                auth::exchange(server, xs, profile, &offer, mechanism, initial.clone(), None).await?
            }
            Attempt::Sasl2(req) => {
                let agent = req.agent.id.as_deref();
                auth::exchange(server, xs, profile, &offer, &req.mechanism, req.initial.clone(), agent).await?
            }
        };
        match (outcome, attempt) {
            (Ok(a), Attempt::Sasl1 { .. }) => {
                crate::metrics::login(true);
                let mut success = elem("success", NS_SASL);
                if let Some(d) = &a.additional {
                    success = success.text_child(profile.encode(d));
                }
                xs.send(&success).await?;
                return Ok(Login::Sasl1(a.username));
            }
            (Ok(a), Attempt::Sasl2(req)) => {
                crate::metrics::login(true);
                return Ok(Login::Sasl2(a, req));
            }
            (Err(r), _) => {
                let blocked = refused(server, r, &mut failures, peer_ip).await;
                xs.send(&profile.failure(r.condition, r.text().as_deref())).await?;
                if failures >= max_failures || blocked || attempts >= MAX_SASL_ATTEMPTS {
                    return Err(ConnError::Stream(StreamError::PolicyViolation));
                }
            }
        }
    }
}

/// Account for a refused attempt: log it, and when it proved wrong
/// credentials count it (per stream and per address) and slow the client
/// down. Returns whether the address is now blocked.
pub(crate) async fn refused(
    server: &Server,
    r: Refused,
    failures: &mut u32,
    peer_ip: Option<std::net::IpAddr>,
) -> bool {
    let scram = r.scram.map(|e| e.value());
    if !r.bad_credentials {
        if r.scram == Some(sasl::ScramError::ChannelBindingsDontMatch) {
            tracing::warn!("SCRAM channel binding does not match: a client bug or a man in the middle");
        } else {
            tracing::info!(
                condition = r.condition.condition(),
                scram,
                "SASL attempt refused (not counted)"
            );
        }
        return false;
    }
    crate::metrics::login(false);
    *failures += 1;
    let blocked = peer_ip.is_some_and(|ip| server.limiter.login_failed(ip));
    tracing::info!(
        condition = r.condition.condition(),
        failures = *failures,
        "authentication failed"
    );
    // Slow down guessing: each failure costs the client a moment.
    tokio::time::sleep(Duration::from_millis(200 * u64::from((*failures).min(10)))).await;
    blocked
}

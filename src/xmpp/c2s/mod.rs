//! Client connections: STARTTLS (5222) and direct TLS (5223, XEP-0368),
//! SASL, resource binding and the session loop. One task owns each
//! connection; the rest of the server reaches it through its channel.

pub mod session;

use super::{
    modules::register::{self, PreAuthState},
    sasl::{self, ChannelBindings, Failure, Mechanism, Refused, ScramServer},
    sessions::{SessionHandle, ToSession},
    stanza::{self, iq_result, Kind},
    starttls,
    stream::{new_id, ConnError, XmlStream},
    xml::{elem, ElementExt, Event, ParserLimits, StreamError, NS_BIND, NS_CLIENT, NS_SASL, NS_SASL_CB, NS_SESSION},
};
use crate::{certs::ALPN_XMPP_CLIENT, store, xmpp::Server};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use jid::{BareJid, FullJid};
use minidom::Element;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::mpsc,
};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

pub use super::starttls::Tls;

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
        let xs = XmlStream::new(tcp, limits(&server));
        let acceptor = TlsAcceptor::from(server.certs.server_config(&[]));
        let open = async |xs: &mut XmlStream<TcpStream>| open_plaintext(&server, xs).await;
        if let Some(tls) = starttls::negotiate(&server, xs, NS_CLIENT, acceptor, open).await {
            after_tls(server, tls).await
        }
    }
    .instrument(span)
    .await
}

/// Serve one connection on a direct TLS listener.
pub async fn serve_direct_tls(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("c2s", %peer, tls = "direct", jid = tracing::field::Empty);
    async move {
        let acceptor = TlsAcceptor::from(server.certs.server_config(&[ALPN_XMPP_CLIENT]));
        if let Some(tls) = starttls::direct(tcp, acceptor).await {
            after_tls(server, tls).await
        }
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
pub(crate) async fn end<S: AsyncRead + AsyncWrite + Unpin>(server: &Server, xs: &mut XmlStream<S>, e: ConnError) {
    xs.end(NS_CLIENT, server.domain(), e).await
}

async fn expect_header<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Server,
    xs: &mut XmlStream<S>,
) -> Result<(), ConnError> {
    match xs.next_event().await? {
        Event::Header(h) => h.check(NS_CLIENT, |to| server.is_local(to)).map_err(ConnError::Stream),
        _ => Err(ConnError::Stream(StreamError::NotWellFormed)),
    }
}

/// The plaintext stream header and our answer (features follow).
async fn open_plaintext(server: &Server, xs: &mut XmlStream<TcpStream>) -> Result<(), ConnError> {
    expect_header(server, xs).await?;
    xs.queue_header(NS_CLIENT, server.domain(), None, &new_id());
    Ok(())
}

/// What SCRAM-*-PLUS can bind to on this connection: the TLS 1.3 exporter
/// value (`tls-exporter`, RFC 9266) and, on TLS 1.2 and 1.3, the hash of
/// the certificate this connection was given (`tls-server-end-point`,
/// RFC 5929), which XEP-0440 requires of servers.
fn channel_bindings(server: &Server, tls: &Tls) -> ChannelBindings {
    let conn = tls.get_ref().1;
    let tls_exporter = if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
        conn.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
            .ok()
    } else {
        None
    };
    ChannelBindings {
        tls_exporter,
        tls_server_end_point: server.certs.end_point_binding(conn.server_name()).map(|b| b.to_vec()),
    }
}

async fn after_tls(server: Arc<Server>, tls: Tls) {
    let cb = channel_bindings(&server, &tls);
    let peer_ip = tls.get_ref().0.peer_addr().map(|a| a.ip()).ok();
    let mut xs = XmlStream::new(tls, limits(&server));
    let deadline = server.config.limits.auth_timeout.get();
    let bound = until_shutdown(&server, deadline, authenticate_and_bind(&server, &mut xs, &cb, peer_ip)).await;
    match bound {
        Ok(Bound::New(jid, handle, rx)) => {
            tracing::Span::current().record("jid", tracing::field::display(&jid));
            tracing::info!("session started");
            session::Session::new(server, handle, rx).run(xs).await
        }
        Ok(Bound::Resume(target, h)) => {
            tracing::Span::current().record("jid", tracing::field::display(&target.jid));
            // Hand this connection to the session task; it answers <resumed/>.
            let req = Box::new(session::ResumeRequest { xs, h });
            if let Err(e) = target.tx.send(ToSession::Resume(req)) {
                if let ToSession::Resume(req) = e.0 {
                    let mut xs = req.xs;
                    let _ = xs.send(&session::failed("item-not-found")).await;
                    xs.close().await;
                }
            }
        }
        Err(e) => end(&server, &mut xs, e).await,
    }
}

/// What a negotiated connection becomes.
enum Bound {
    New(FullJid, Arc<SessionHandle>, mpsc::UnboundedReceiver<ToSession>),
    /// XEP-0198 resumption of this session with this `h`.
    Resume(Arc<SessionHandle>, u32),
}

async fn authenticate_and_bind(
    server: &Arc<Server>,
    xs: &mut XmlStream<Tls>,
    cb: &ChannelBindings,
    peer_ip: Option<std::net::IpAddr>,
) -> Result<Bound, ConnError> {
    let username = authenticate(server, xs, cb, peer_ip).await?;
    xs.restart();
    expect_header(server, xs).await?;
    xs.queue_header(NS_CLIENT, server.domain(), None, &new_id());
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
        if el.ns() == session::NS_SM && el.name() == "resume" {
            let owner = BareJid::new(&format!("{username}@{}", server.domain()))
                .map_err(|_| ConnError::Stream(StreamError::InternalServerError))?;
            let h = el.attr("h").and_then(|h| h.parse::<u32>().ok());
            let target = el.attr("previd").and_then(|id| server.sessions.resumable(id, &owner));
            match (target, h) {
                (Some(t), Some(h)) => return Ok(Bound::Resume(t, h)),
                _ => {
                    xs.send(&session::failed("item-not-found")).await?;
                    continue;
                }
            }
        }
        if el.ns() == session::NS_SM && el.name() == "enable" {
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
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = Arc::new(SessionHandle::new(server.sessions.next_id(), jid.clone(), tx));
        if let Some(old) = server.sessions.bind(handle.clone()) {
            // RFC 6120 §7.7.2.2: the newer session wins.
            tracing::info!(%jid, "resource conflict: replacing the older session");
            let _ = old.tx.send(ToSession::Replaced);
        }
        let mut reply = iq_result(
            &el,
            Some(elem("bind", NS_BIND).child(elem("jid", NS_BIND).text_child(jid.to_string()))),
        );
        reply.unset("from");
        xs.send(&reply).await?;
        return Ok(Bound::New(jid, handle, rx));
    }
}

/// SASL attempts one stream may make, whatever their outcome: clients walk
/// down the offered mechanisms (at most five here), so this only stops a
/// client that loops.
const MAX_SASL_ATTEMPTS: u32 = 10;

/// SASL: returns the authenticated username.
async fn authenticate(
    server: &Arc<Server>,
    xs: &mut XmlStream<Tls>,
    cb: &ChannelBindings,
    peer_ip: Option<std::net::IpAddr>,
) -> Result<String, ConnError> {
    expect_header(server, xs).await?;
    xs.queue_header(NS_CLIENT, server.domain(), None, &new_id());
    let mut mechs = elem("mechanisms", NS_SASL);
    for m in Mechanism::offered(cb) {
        mechs.append_child(elem("mechanism", NS_SASL).text_child(m.name()));
    }
    let mut features = vec![mechs];
    if cb.any() {
        // XEP-0440: which channel-binding types this connection supports.
        let mut list = elem("sasl-channel-binding", NS_SASL_CB);
        for t in cb.types() {
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
        if el.ns() != NS_SASL || el.name() != "auth" {
            return Err(ConnError::Stream(StreamError::NotAuthorized));
        }
        if peer_ip.is_some_and(|ip| server.limiter.login_blocked(ip)) {
            tracing::warn!("login refused: too many failures from this address");
            xs.send(&sasl_failure(
                Failure::NotAuthorized,
                Some("too many failed logins; try again later"),
            ))
            .await?;
            return Err(ConnError::Stream(StreamError::PolicyViolation));
        }
        attempts += 1;
        match sasl_exchange(server, xs, &el, cb).await? {
            Ok(username) => {
                crate::metrics::login(true);
                return Ok(username);
            }
            Err(r) => {
                let blocked = refused(server, r, &mut failures, peer_ip).await;
                xs.send(&sasl_failure(r.condition, r.text().as_deref())).await?;
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

fn sasl_failure(f: Failure, text: Option<&str>) -> Element {
    let mut e = elem("failure", NS_SASL).child(elem(f.condition(), NS_SASL));
    if let Some(t) = text {
        e.append_child(elem("text", NS_SASL).text_child(t));
    }
    e
}

fn decode_payload(el: &Element) -> Result<Vec<u8>, Failure> {
    let t = el.text();
    let t = t.trim();
    if t.is_empty() || t == "=" {
        return Ok(vec![]);
    }
    B64.decode(t).map_err(|_| Failure::MalformedRequest)
}

/// One SASL exchange. The outer `Result` is the connection; the inner one
/// the authentication outcome.
async fn sasl_exchange(
    server: &Arc<Server>,
    xs: &mut XmlStream<Tls>,
    auth: &Element,
    cb: &ChannelBindings,
) -> Result<Result<String, Refused>, ConnError> {
    let mech = auth
        .attr("mechanism")
        .and_then(Mechanism::from_name)
        .filter(|m| Mechanism::offered(cb).contains(m));
    let Some(mech) = mech else {
        return Ok(Err(Failure::InvalidMechanism.into()));
    };
    let initial = match decode_payload(auth) {
        Ok(p) => p,
        Err(f) => return Ok(Err(f.into())),
    };
    if mech == Mechanism::Plain {
        return match check_plain(server, &initial).await {
            Ok(username) => {
                xs.send(&elem("success", NS_SASL)).await?;
                Ok(Ok(username))
            }
            Err(r) => Ok(Err(r)),
        };
    }
    let first = match sasl::scram_client_first(mech, &initial, cb) {
        Ok(f) => f,
        Err(r) => return Ok(Err(r)),
    };
    let (scram, server_first, username) = scram_start(server, mech, first, cb).await;
    xs.send(&elem("challenge", NS_SASL).text_child(B64.encode(server_first)))
        .await?;
    let response = match xs.next_event().await? {
        Event::Stanza(el) if el.ns() == NS_SASL && el.name() == "response" => el,
        Event::Stanza(el) if el.ns() == NS_SASL && el.name() == "abort" => return Ok(Err(Failure::Aborted.into())),
        Event::Stanza(_) => return Ok(Err(Failure::MalformedRequest.into())),
        Event::Close => return Err(ConnError::Eof),
        Event::Header(_) => return Err(ConnError::Stream(StreamError::NotWellFormed)),
    };
    let final_msg = match decode_payload(&response) {
        Ok(p) => p,
        Err(f) => return Ok(Err(f.into())),
    };
    match scram.finish(&final_msg, cb) {
        Ok(server_final) => {
            xs.send(&elem("success", NS_SASL).text_child(B64.encode(server_final)))
                .await?;
            Ok(Ok(username))
        }
        Err(r) => Ok(Err(r)),
    }
}

/// PLAIN: check `authzid NUL authcid NUL password`; returns the username.
pub(crate) async fn check_plain(server: &Server, initial: &[u8]) -> Result<String, Refused> {
    let (authz, authc, pw) = sasl::parse_plain(initial)?;
    let Ok(username) = store::accounts::normalize(&authc) else {
        return Err(Refused::wrong_credentials());
    };
    if let Some(a) = authz {
        if BareJid::new(&a).ok().map(|j| j.to_string()) != Some(format!("{username}@{}", server.domain())) {
            return Err(Failure::InvalidAuthzid.into());
        }
    }
    let u = username.clone();
    let ok = server
        .store
        .call(move |c| Ok(store::accounts::get(c, &u)?.is_some_and(|a| a.keys.verify_password(&pw))))
        .await
        .unwrap_or(false);
    if ok {
        Ok(username)
    } else {
        Err(Refused::wrong_credentials())
    }
}

/// SCRAM's first server step: look the user up and answer with server-first.
pub(crate) async fn scram_start(
    server: &Server,
    mech: Mechanism,
    first: sasl::ClientFirst,
    cb: &ChannelBindings,
) -> (ScramServer, Vec<u8>, String) {
    let username = match store::accounts::normalize(&first.username) {
        Ok(u) => u,
        Err(_) => first.username.clone(),
    };
    let u = username.clone();
    let keys = server
        .store
        .call(move |c| Ok(store::accounts::get(c, &u)?.map(|a| a.keys)))
        .await
        .unwrap_or(None);
    let (scram, server_first) = ScramServer::new(mech, first, keys, &server.fake_salt_secret, cb);
    (scram, server_first, username)
}

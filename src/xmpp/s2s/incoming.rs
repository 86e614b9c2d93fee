//! Incoming server streams (`listen.s2s` with STARTTLS, `listen.s2s_direct_tls`
//! with ALPN `xmpp-server`): TLS from the shared certificate store, then
//! Server Dialback. A `db:result` is checked by asking the originating
//! domain's authoritative server (a verify connection, whose TLS certificate
//! must verify when `federation.require_valid_certificates` is on); a
//! `db:verify` is answered from our own key. Stanzas are accepted only from
//! domains authenticated on this stream (else stream error `invalid-from`),
//! converted to `jabber:client` and routed like local ones.

use super::{db, header, limits, tls::AnyClientCert, to_client_ns, NS_DIALBACK, NS_DIALBACK_FEATURE};
use crate::{
    certs::ALPN_XMPP_SERVER,
    net::tls::Acceptor,
    shutdown,
    xmpp::Server,
    xmpp::{
        router,
        stanza::{self, Kind},
        starttls,
        stream::{new_id, ConnError, Plain, Transport, XmlStream},
        xml::{elem, ElementExt, Event, StreamError, NS_SASL, NS_SERVER},
    },
};
use minidom::Element;
use std::{collections::HashSet, net::SocketAddr, sync::Arc};
use tokio::{net::TcpStream, sync::mpsc, time::Instant};
use tracing::Instrument;

use crate::xmpp::starttls::Tls;

/// Dialback requests one stream may have in flight.
const MAX_PENDING_VERIFICATIONS: usize = 4;

/// Serve one connection on an s2s STARTTLS listener.
pub async fn serve_starttls(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("s2s-in", %peer, from = tracing::field::Empty);
    async move {
        let _ = tcp.set_nodelay(true);
        let xs = XmlStream::plain(tcp, limits(&server));
        let acceptor = Acceptor::new(server.certs.server_config_with_client_auth(&[], AnyClientCert::new()));
        let open = async |xs: &mut XmlStream<Plain>| open_stream(&server, xs).await.map(|_| ());
        if let Some(tls) = starttls::negotiate(&server, xs, NS_SERVER, acceptor, open).await {
            after_tls(server, tls).await
        }
    }
    .instrument(span)
    .await
}

/// Serve one connection on an s2s direct TLS listener.
pub async fn serve_direct_tls(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("s2s-in", %peer, tls = "direct", from = tracing::field::Empty);
    async move {
        let acceptor = Acceptor::new(
            server
                .certs
                .server_config_with_client_auth(&[ALPN_XMPP_SERVER], AnyClientCert::new()),
        );
        if let Some(tls) = starttls::direct(tcp, acceptor).await {
            after_tls(server, tls).await
        }
    }
    .instrument(span)
    .await
}

async fn end<S: Transport>(server: &Server, xs: &mut XmlStream<S>, e: ConnError) {
    xs.end(NS_SERVER, server.domain(), e).await
}

/// Read and answer a stream header; returns the id we gave the stream.
async fn open_stream<S: Transport>(
    server: &Server,
    xs: &mut XmlStream<S>,
) -> Result<(String, Option<String>), ConnError> {
    let h = match xs.next_event().await? {
        Event::Header(h) => h,
        _ => return Err(ConnError::Stream(StreamError::NotWellFormed)),
    };
    h.check(NS_SERVER, |to| server.serves(to)).map_err(ConnError::Stream)?;
    let id = new_id();
    // Answer as the name the peer asked for: the domain or one of its services.
    let local = h.to.as_deref().unwrap_or(server.domain()).to_ascii_lowercase();
    xs.queue_raw(&header(&local, h.from.as_deref(), Some(&id)));
    xs.header_sent = true;
    Ok((id, h.from))
}

/// Answer `<auth/>` on an incoming stream: SASL EXTERNAL for `domain`, the
/// name the peer's certificate was verified for. On success the stream
/// restarts and its new id is returned; on a failure the stream goes on
/// (dialback may still follow).
async fn sasl_external(
    server: &Arc<Server>,
    xs: &mut XmlStream<Tls>,
    domain: Option<&str>,
    authenticated: &mut HashSet<String>,
    auth: &Element,
) -> Result<Option<String>, ConnError> {
    let failure = |cond: &str| elem("failure", NS_SASL).child(elem(cond, NS_SASL));
    let Some(domain) = domain.filter(|_| auth.attr("mechanism") == Some("EXTERNAL")) else {
        xs.send(&failure("invalid-mechanism")).await?;
        return Ok(None);
    };
    // The authorization identity: empty or "=" means the certificate's
    // domain; otherwise it must name that same domain (XEP-0178).
    let text = auth.text();
    let authzid = match text.trim() {
        "" | "=" => Some(domain.to_string()),
        b64 => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
        }
    };
    if !authzid.is_some_and(|a| a.eq_ignore_ascii_case(domain)) {
        xs.send(&failure("invalid-authzid")).await?;
        return Ok(None);
    }
    if !authenticated.contains(domain)
        && !server
            .s2s
            .enter(domain, server.config.federation.max_streams_per_domain)
    {
        tracing::warn!(from = %domain, "too many incoming streams from this domain");
        xs.send(&failure("temporary-auth-failure")).await?;
        return Ok(None);
    }
    xs.send(&elem("success", NS_SASL)).await?;
    authenticated.insert(domain.to_string());
    tracing::info!(from = %domain, "remote domain authenticated with SASL EXTERNAL");
    tracing::Span::current().record("from", tracing::field::display(domain));
    xs.restart();
    let (id, _) = open_stream(server, xs).await?;
    xs.queue_features(&[]);
    xs.flush().await?;
    Ok(Some(id))
}

/// A dialback verification finished: (originating domain, our domain, verdict).
type Verdict = (String, String, Result<bool, String>);

async fn after_tls(server: Arc<Server>, tls: Tls) {
    let mut xs = XmlStream::new(tls, limits(&server));
    let mut authenticated: HashSet<String> = HashSet::new();
    let r = serve(&server, &mut xs, &mut authenticated).await;
    for d in &authenticated {
        server.s2s.leave(d);
    }
    match r {
        Ok(()) => tracing::info!("incoming stream ended"),
        Err(e) => end(&server, &mut xs, e).await,
    }
}

async fn serve(
    server: &Arc<Server>,
    xs: &mut XmlStream<Tls>,
    authenticated: &mut HashSet<String>,
) -> Result<(), ConnError> {
    let auth_deadline = Instant::now() + server.config.limits.auth_timeout.get();
    let idle = server.config.limits.idle_timeout.get();
    let (mut stream_id, peer_from) = tokio::time::timeout_at(auth_deadline, open_stream(server, xs))
        .await
        .unwrap_or(Err(ConnError::Timeout))?;
    // SASL EXTERNAL is offered when the certificate the peer showed during
    // the handshake verifies for the domain its stream header names.
    let external_for = peer_from.map(|f| f.to_ascii_lowercase()).filter(|f| {
        let chain = xs.get_ref().peer_certificates().unwrap_or_default();
        server.s2s.tls.verifies_for(chain, f)
    });
    let mut features = vec![];
    if external_for.is_some() {
        features.push(elem("mechanisms", NS_SASL).child(elem("mechanism", NS_SASL).text_child("EXTERNAL")));
    }
    features.push(elem("dialback", NS_DIALBACK_FEATURE).child(elem("errors", NS_DIALBACK_FEATURE)));
    xs.queue_features(&features);
    xs.flush().await?;
    let (verdict_tx, mut verdicts) = mpsc::channel::<Verdict>(MAX_PENDING_VERIFICATIONS);
    let mut pending: HashSet<String> = HashSet::new();
    let mut stop = server.shutdown.clone();
    let mut last = Instant::now();
    loop {
        // Until a domain is authenticated, the whole stream shares the auth deadline.
        let deadline = if authenticated.is_empty() {
            auth_deadline
        } else {
            last + idle
        };
        tokio::select! {
            ev = xs.next_event() => {
                last = Instant::now();
                match ev? {
                    Event::Stanza(el) if el.is("auth", NS_SASL) => {
                        if let Some(id) = sasl_external(server, xs, external_for.as_deref(), authenticated, &el).await? {
                            stream_id = id;
                        }
                    }
                    Event::Stanza(el) => {
                        element(server, xs, &stream_id, authenticated, &mut pending, &verdict_tx, el).await?
                    }
                    Event::Close => {
                        xs.close().await;
                        return Ok(());
                    }
                    Event::Header(_) => return Err(ConnError::Stream(StreamError::NotWellFormed)),
                }
            }
            Some((from, to, verdict)) = verdicts.recv() => {
                pending.remove(&from);
                // XEP-0220 §2.4: `invalid` for a wrong key, `error` when it could not be checked.
                let refusal = match verdict {
                    Ok(true) if server.s2s.enter(&from, server.config.federation.max_streams_per_domain) => None,
                    Ok(true) => {
                        tracing::warn!(%from, "too many incoming streams from this domain");
                        Some(Some("resource-constraint"))
                    }
                    Ok(false) => {
                        tracing::warn!(%from, "dialback key did not verify");
                        Some(None)
                    }
                    Err(e) => {
                        tracing::info!(%from, error = %e, "dialback verification failed");
                        Some(Some("remote-connection-failed"))
                    }
                };
                let valid = refusal.is_none();
                let answer = db("result").with("from", to).with("to", from.clone());
                let answer = match refusal {
                    None => answer.with("type", "valid"),
                    Some(None) => answer.with("type", "invalid"),
                    Some(Some(cond)) => answer.with("type", "error").child(
                        elem("error", crate::xmpp::xml::NS_SERVER)
                            .with("type", "cancel")
                            .child(elem(cond, crate::xmpp::xml::NS_STANZAS)),
                    ),
                };
                xs.send(&answer).await?;
                if valid {
                    tracing::info!(%from, "remote domain authenticated by dialback");
                    tracing::Span::current().record("from", tracing::field::display(&from));
                    authenticated.insert(from);
                }
            }
            _ = tokio::time::sleep_until(deadline) => match xs.heard().filter(|t| *t > last && !authenticated.is_empty()) {
                // A whitespace keepalive restarts the idle count.
                Some(t) => last = t,
                None => return Err(ConnError::Timeout),
            },
            _ = shutdown::stopped(&mut stop) => return Err(ConnError::Stream(StreamError::SystemShutdown)),
        }
        xs.shrink();
    }
}

fn domain_of(s: &str) -> Option<String> {
    jid::Jid::new(s)
        .ok()
        .filter(|j| j.node().is_none() && j.resource().is_none())
        .map(|j| j.domain().as_str().to_ascii_lowercase())
}

/// One top-level element on an incoming stream.
#[allow(clippy::too_many_arguments)]
async fn element(
    server: &Arc<Server>,
    xs: &mut XmlStream<Tls>,
    stream_id: &str,
    authenticated: &HashSet<String>,
    pending: &mut HashSet<String>,
    verdicts: &mpsc::Sender<Verdict>,
    el: Element,
) -> Result<(), ConnError> {
    if el.has_ns(NS_DIALBACK) {
        let (Some(from), Some(to)) = (el.attr("from").and_then(domain_of), el.attr("to").and_then(domain_of)) else {
            return Err(ConnError::Stream(StreamError::ImproperAddressing));
        };
        if !server.serves(&to) {
            return Err(ConnError::Stream(StreamError::HostUnknown));
        }
        match el.name() {
            "result" if el.attr("type").is_none() => {
                if authenticated.contains(&from) {
                    let ok = db("result").with("from", to).with("to", from).with("type", "valid");
                    return xs.send(&ok).await;
                }
                if pending.contains(&from) {
                    return Ok(());
                }
                if pending.len() >= MAX_PENDING_VERIFICATIONS {
                    return Err(ConnError::Stream(StreamError::PolicyViolation));
                }
                pending.insert(from.clone());
                let key = el.text();
                let (server, id, tx) = (server.clone(), stream_id.to_string(), verdicts.clone());
                let span = tracing::info_span!(parent: None, "s2s-verify", remote = %from);
                tokio::spawn(
                    async move {
                        let v = super::outgoing::verify(&server, &to, &from, &id, &key).await;
                        let _ = tx.send((from, to, v)).await;
                    }
                    .instrument(span),
                );
                Ok(())
            }
            "verify" if el.attr("type").is_none() => {
                // We are the authoritative server: was this key ours?
                let id = el.attr("id").unwrap_or_default();
                let ok = server.s2s.check_key(&from, &to, id, &el.text());
                tracing::info!(receiving = %from, valid = ok, "answered a dialback verification");
                let answer = db("verify")
                    .with("from", to)
                    .with("to", from)
                    .with("id", id)
                    .with("type", if ok { "valid" } else { "invalid" });
                xs.send(&answer).await
            }
            _ => Ok(()),
        }
    } else if el.has_ns(NS_SERVER) && matches!(el.name(), "message" | "presence" | "iq") {
        let from_domain = el
            .attr("from")
            .and_then(|f| jid::Jid::new(f).ok())
            .map(|j| j.domain().as_str().to_ascii_lowercase());
        match from_domain {
            Some(d) if authenticated.contains(&d) => {}
            _ => {
                tracing::warn!(from = ?el.attr("from"), "stanza from a domain not authenticated on this stream");
                return Err(ConnError::Stream(StreamError::InvalidFrom));
            }
        }
        match stanza::to(&el) {
            Ok(Some(to)) if server.serves(to.domain().as_str()) => {}
            Ok(_) => return Err(ConnError::Stream(StreamError::HostUnknown)),
            Err(_) => return Err(ConnError::Stream(StreamError::ImproperAddressing)),
        }
        let el = to_client_ns(&el);
        debug_assert!(Kind::of(&el).is_some());
        router::route(server, el).await;
        Ok(())
    } else if authenticated.is_empty() {
        Err(ConnError::Stream(StreamError::NotAuthorized))
    } else {
        tracing::debug!(name = el.name(), ns = %el.ns(), "ignoring an unknown element on an incoming stream");
        Ok(())
    }
}

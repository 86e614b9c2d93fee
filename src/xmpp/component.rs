//! External components (XEP-0114, `jabber:component:accept`): the
//! `listen.component` side. A component opens a stream to its configured
//! domain, proves the shared secret with `<handshake/>` (hex SHA-1 of the
//! stream id and the secret, compared in constant time), and is attached to
//! its domain's service ([`super::services::component`]), through which the
//! router reaches it. Stanzas it sends must come from its domain (else the
//! stream ends with `invalid-from`, as with Prosody 0.12) and carry a `to`
//! (else they bounce with `bad-request`); they are moved to `jabber:client`
//! here, the component edge, and routed like any other, locally or over
//! federation.

use super::{
    router::route,
    s2s,
    services::component::Component,
    stanza::{self, Condition, StanzaError},
    stream::{new_id, ConnError, XmlStream},
    xml::{elem, ElementExt, Event, StreamError, NS_CLIENT},
    Server,
};
use minidom::Element;
use sha1::{Digest, Sha1};
use std::{net::SocketAddr, sync::Arc};
use subtle::ConstantTimeEq;
use tokio::{net::TcpStream, sync::mpsc};
use tracing::Instrument;

/// The component protocol's stream namespace.
pub const NS_COMPONENT: &str = "jabber:component:accept";

/// Serve one connection on a component listener.
pub async fn serve(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("component", %peer, domain = tracing::field::Empty);
    async move {
        let _ = tcp.set_nodelay(true);
        let mut xs = XmlStream::new(tcp, s2s::limits(&server));
        let deadline = server.config.limits.auth_timeout.get();
        let mut stop = server.shutdown.clone();
        let authed = tokio::select! {
            r = tokio::time::timeout(deadline, handshake(&server, &mut xs, peer)) => r.unwrap_or(Err(ConnError::Timeout)),
            _ = crate::shutdown::stopped(&mut stop) => Err(ConnError::Stream(StreamError::SystemShutdown)),
        };
        let component = match authed {
            Ok(c) => c,
            Err(e) => return xs.end(NS_COMPONENT, server.domain(), e).await,
        };
        let domain = component.domain().to_string();
        tracing::Span::current().record("domain", domain.as_str());
        let (tx, rx) = mpsc::unbounded_channel();
        let Some(link) = component.attach(tx) else {
            tracing::warn!("a second connection for a connected component: refused");
            let e = StreamError::Conflict;
            return xs.stream_error(NS_COMPONENT, &domain, e, Some("this component is already connected")).await;
        };
        tracing::info!("component connected");
        let end = run(&server, component, &mut xs, rx).await;
        component.detach(link);
        match end {
            Ok(()) => {
                tracing::info!("component disconnected");
                xs.close().await
            }
            Err(e) => xs.end(NS_COMPONENT, &domain, e).await,
        }
    }
    .instrument(span)
    .await
}

/// XEP-0114's opening: the header for a configured component domain, our
/// header with a fresh id, then a `<handshake/>` that proves the secret.
async fn handshake<'s>(
    server: &'s Server,
    xs: &mut XmlStream<TcpStream>,
    peer: SocketAddr,
) -> Result<&'s Component, ConnError> {
    let h = match xs.next_event().await? {
        Event::Header(h) => h,
        _ => return Err(ConnError::Stream(StreamError::NotWellFormed)),
    };
    if h.default_ns.as_deref() != Some(NS_COMPONENT) {
        return Err(ConnError::Stream(StreamError::InvalidNamespace));
    }
    let to = h.to.unwrap_or_default();
    let Some(component) = server.services.get::<Component>(&to) else {
        tracing::info!(to, "component stream for a domain that is not configured");
        return Err(ConnError::Stream(StreamError::HostUnknown));
    };
    let id = new_id();
    // No version: XEP-0114 streams have no features.
    xs.queue_raw(&format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS_COMPONENT}' \
         xmlns:stream='http://etherx.jabber.org/streams' from='{}' id='{id}'>",
        super::stream::escape(component.domain())
    ));
    xs.header_sent = true;
    xs.flush().await?;
    let el = match xs.next_event().await? {
        Event::Stanza(el) if el.name() == "handshake" => el,
        Event::Stanza(_) => return Err(ConnError::Stream(StreamError::NotAuthorized)),
        Event::Close => return Err(ConnError::Eof),
        Event::Header(_) => return Err(ConnError::Stream(StreamError::NotWellFormed)),
    };
    if server.limiter.login_blocked(peer.ip()) {
        tracing::warn!("component handshake refused: too many failures from this address");
        return Err(ConnError::Stream(StreamError::PolicyViolation));
    }
    let got = el.text().trim().to_ascii_lowercase();
    if !bool::from(
        handshake_value(&id, component.secret())
            .as_bytes()
            .ct_eq(got.as_bytes()),
    ) {
        server.limiter.login_failed(peer.ip());
        tracing::warn!(domain = component.domain(), "component handshake failed: wrong secret");
        return Err(ConnError::Stream(StreamError::NotAuthorized));
    }
    xs.send(&elem("handshake", NS_COMPONENT)).await?;
    Ok(component)
}

/// The handshake a component must send: lower-case hex SHA-1 of the stream
/// id followed by the secret.
pub fn handshake_value(stream_id: &str, secret: &str) -> String {
    let mut h = Sha1::new();
    h.update(stream_id.as_bytes());
    h.update(secret.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The attached component's life: its stanzas to the router, the router's
/// to it, until either side ends or the daemon stops.
async fn run(
    server: &Arc<Server>,
    component: &Component,
    xs: &mut XmlStream<TcpStream>,
    mut rx: mpsc::UnboundedReceiver<Element>,
) -> Result<(), ConnError> {
    let mut stop = server.shutdown.clone();
    loop {
        tokio::select! {
            ev = xs.next_event() => match ev? {
                Event::Stanza(el) => from_component(server, component, xs, el).await?,
                Event::Close => return Ok(()),
                Event::Header(_) => return Err(ConnError::Stream(StreamError::NotWellFormed)),
            },
            out = rx.recv() => match out {
                Some(el) => xs.send(&s2s::rename_ns(&el, NS_CLIENT, NS_COMPONENT)).await?,
                None => return Ok(()),
            },
            _ = crate::shutdown::stopped(&mut stop) => {
                return Err(ConnError::Stream(StreamError::SystemShutdown));
            }
        }
        xs.shrink();
    }
}

/// One stanza from the component: checked, moved to `jabber:client`, routed.
async fn from_component(
    server: &Arc<Server>,
    component: &Component,
    xs: &mut XmlStream<TcpStream>,
    el: Element,
) -> Result<(), ConnError> {
    let mut el = s2s::rename_ns(&el, NS_COMPONENT, NS_CLIENT);
    if stanza::Kind::of(&el).is_none() {
        return Err(ConnError::Stream(StreamError::UnsupportedStanzaType));
    }
    let refuse = |el: &Element, c: Condition, text: String| {
        stanza::bounce(el, StanzaError::new(c, text), component.domain())
            .map(|b| s2s::rename_ns(&b, NS_CLIENT, NS_COMPONENT))
    };
    match stanza::from(&el) {
        // Prosody's COMPAT: a stanza without `from` is from the component's domain.
        None if el.attr("from").is_none() => el.set("from", component.domain()),
        Some(f) if f.domain().as_str().eq_ignore_ascii_case(component.domain()) => {}
        _ => {
            // As Prosody 0.12 does (and as c2s does): the stream ends.
            tracing::warn!(
                from = el.attr("from"),
                "component sent a stanza from outside its domain"
            );
            return Err(ConnError::Stream(StreamError::InvalidFrom));
        }
    }
    if el.attr("to").is_none() {
        if let Some(b) = refuse(
            &el,
            Condition::BadRequest,
            "components must address every stanza".into(),
        ) {
            xs.send(&b).await?;
        }
        return Ok(());
    }
    route(server, el).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_is_hex_sha1_of_id_and_secret() {
        // The value computed independently (Python's hashlib.sha1).
        assert_eq!(
            handshake_value("3BF96D32", "sundayfunday"),
            "d9c80e67ee152997c5f252c1b448df159469feaa"
        );
    }
}

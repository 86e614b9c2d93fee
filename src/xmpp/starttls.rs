//! Getting a connection into TLS, the same way for clients (c2s) and
//! servers (s2s): direct TLS (XEP-0368) is a handshake with a deadline;
//! STARTTLS (RFC 6120 §5) is a plaintext stream whose only acceptable
//! request is `<starttls/>`, then the handshake. Each side supplies its own
//! acceptor (ALPN, client certificates) and its way of opening the stream.

use super::{
    stream::{ConnError, Plain, XmlStream},
    xml::{elem, ElementExt, Event, StreamError, NS_SASL, NS_TLS},
    Server,
};
use crate::net::tls::{Acceptor, TlsStream};
use std::time::Duration;
use tokio::net::TcpStream;

pub type Tls = TlsStream<TcpStream>;

/// Time allowed for a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Direct TLS: the handshake, or `None` (logged) when it fails or times out.
pub async fn direct(tcp: TcpStream, acceptor: Acceptor) -> Option<Tls> {
    let _ = tcp.set_nodelay(true);
    handshake(acceptor, tcp).await
}

/// STARTTLS: run the plaintext phase on `xs` (`open` reads the stream header
/// and answers it; then `<starttls required/>` is offered) within
/// `limits.auth_timeout`, refuse bytes pipelined after `<starttls/>`, and
/// hand the socket to `acceptor`. A failure ends the stream with its error
/// (in the stream namespace `ns`) and returns `None`.
pub async fn negotiate(
    server: &Server,
    mut xs: XmlStream<Plain>,
    ns: &str,
    acceptor: Acceptor,
    open: impl AsyncFnOnce(&mut XmlStream<Plain>) -> Result<(), ConnError>,
) -> Option<Tls> {
    let deadline = server.config.limits.auth_timeout.get();
    let phase = async {
        open(&mut xs).await?;
        plaintext(&mut xs).await
    };
    let mut stop = server.shutdown.clone();
    let r = tokio::select! {
        r = tokio::time::timeout(deadline, phase) => r.unwrap_or(Err(ConnError::Timeout)),
        _ = crate::shutdown::stopped(&mut stop) => Err(ConnError::Stream(StreamError::SystemShutdown)),
    };
    if let Err(e) = r {
        xs.end(ns, server.domain(), e).await;
        return None;
    }
    if xs.has_buffered_input() {
        // Bytes pipelined after <starttls/> were sent in the clear: refuse them.
        xs.end(ns, server.domain(), ConnError::Stream(StreamError::PolicyViolation))
            .await;
        return None;
    }
    handshake(acceptor, xs.into_tcp()).await
}

/// After the header: offer STARTTLS as required and accept nothing else.
async fn plaintext(xs: &mut XmlStream<Plain>) -> Result<(), ConnError> {
    xs.queue_features(&[elem("starttls", NS_TLS).child(elem("required", NS_TLS))]);
    xs.flush().await?;
    match xs.next_event().await? {
        Event::Stanza(el) if el.name() == "starttls" && el.has_ns(NS_TLS) => {
            xs.send(&elem("proceed", NS_TLS)).await?;
            Ok(())
        }
        Event::Stanza(el) if el.has_ns(NS_SASL) => {
            tracing::info!("authentication attempted before TLS");
            xs.queue(&elem("failure", NS_SASL).child(elem("encryption-required", NS_SASL)));
            Err(ConnError::Stream(StreamError::PolicyViolation))
        }
        Event::Stanza(_) => Err(ConnError::Stream(StreamError::PolicyViolation)),
        Event::Close => Err(ConnError::Eof),
        Event::Header(_) => Err(ConnError::Stream(StreamError::NotWellFormed)),
    }
}

async fn handshake(acceptor: Acceptor, tcp: TcpStream) -> Option<Tls> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::info!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!("TLS handshake timed out");
            None
        }
    }
}

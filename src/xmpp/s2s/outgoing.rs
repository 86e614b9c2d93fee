//! Outgoing server streams: one task per (local domain, remote domain) that
//! resolves, connects (STARTTLS or direct TLS), authenticates with Server
//! Dialback and then writes the stanzas queued for it. Stanzas wait in the
//! task's channel while it connects; if it cannot connect and authenticate
//! within `federation.connect_timeout` they are bounced to their senders
//! (`remote-server-not-found`, or `remote-server-timeout` when time ran
//! out). A stream idle for `federation.idle_timeout` is closed. Also opens
//! the short "verify" connections the incoming side uses to check a
//! dialback key with the originating domain's authoritative server.

use super::{db, header, limits, resolve::Target, to_server_ns, NS_DIALBACK};
use crate::{
    shutdown,
    xmpp::Server,
    xmpp::{
        stanza::Condition,
        stream::{ConnError, Transport, XmlStream},
        xml::{elem, ElementExt, Event, StreamError, NS_SASL, NS_SERVER, NS_STREAM, NS_TLS},
    },
};
use minidom::Element;
use rustls_pki_types::ServerName;
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{net::TcpStream, sync::mpsc, time::Instant};
use tokio_rustls::client::TlsStream;
use tracing::Instrument;

type Tls = TlsStream<TcpStream>;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// The sending side of an outgoing stream's queue.
pub struct Handle {
    tx: mpsc::UnboundedSender<Element>,
    id: u64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Queue `stanza` on the stream for (local, remote), starting it if needed.
pub(super) fn enqueue(server: &Arc<Server>, local: String, remote: String, stanza: Element) {
    let key = (local.clone(), remote.clone());
    let mut map = server.s2s.outgoing.lock().unwrap_or_else(|p| p.into_inner());
    let stanza = match map.get(&key) {
        Some(h) => match h.tx.send(stanza) {
            Ok(()) => return,
            // That stream is ending: start a new one.
            Err(e) => e.0,
        },
        None => stanza,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let _ = tx.send(stanza);
    map.insert(key, Handle { tx, id });
    drop(map);
    let span = tracing::info_span!(parent: None, "s2s-out", %local, %remote);
    tokio::spawn(run(server.clone(), local, remote, id, rx).instrument(span));
}

/// Why an outgoing stream could not be set up.
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error("{0}")]
    Resolve(#[from] super::resolve::ResolveError),
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("stream: {0}")]
    Conn(#[from] ConnError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Protocol(&'static str),
    #[error("the remote server refused dialback ({0})")]
    Refused(String),
}

async fn run(server: Arc<Server>, local: String, remote: String, id: u64, mut rx: mpsc::UnboundedReceiver<Element>) {
    let deadline = server.config.federation.connect_timeout.get();
    let mut stop = server.shutdown.clone();
    let r = tokio::select! {
        r = tokio::time::timeout(deadline, connect_and_authenticate(&server, &local, &remote)) => r,
        _ = shutdown::stopped(&mut stop) => return,
    };
    let mut xs = match r {
        Ok(Ok(xs)) => xs,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "cannot reach the remote server; bouncing its queue");
            let why = format!("cannot reach {remote}: {e}");
            return end(
                &server,
                &local,
                &remote,
                id,
                rx,
                Some((Condition::RemoteServerNotFound, why)),
            )
            .await;
        }
        Err(_) => {
            tracing::info!("connecting to the remote server timed out; bouncing its queue");
            let why = format!("{remote} did not answer in time");
            return end(
                &server,
                &local,
                &remote,
                id,
                rx,
                Some((Condition::RemoteServerTimeout, why)),
            )
            .await;
        }
    };
    tracing::info!("outgoing stream established");
    let idle = server.config.federation.idle_timeout.get();
    let mut last = Instant::now();
    let reason = loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(el) = m else { break "queue closed" };
                xs.queue(&to_server_ns(&el));
                while let Ok(el) = rx.try_recv() {
                    xs.queue(&to_server_ns(&el));
                }
                if let Err(e) = xs.flush().await {
                    tracing::info!(error = %e, "write failed");
                    break "write failed";
                }
                last = Instant::now();
                xs.shrink();
            }
            ev = xs.next_event() => match ev {
                Ok(Event::Stanza(el)) => {
                    if el.name() == "error" && el.has_ns(NS_STREAM) {
                        tracing::info!(error = %el.to_xml(), "the remote server ended the stream");
                        break "stream error";
                    }
                    // Nothing else is expected on an outgoing stream.
                    tracing::debug!(name = el.name(), "ignoring an element on an outgoing stream");
                }
                Ok(Event::Close) => break "closed by the remote server",
                Ok(Event::Header(_)) => break "unexpected header",
                Err(e) => {
                    tracing::info!(error = %e, "outgoing stream failed");
                    break "failed";
                }
            },
            _ = tokio::time::sleep_until(last + idle) => break "idle",
            _ = shutdown::stopped(&mut stop) => break "shutdown",
        }
    };
    tracing::info!(reason, "closing the outgoing stream");
    // Leave the registry first so new stanzas start a fresh stream.
    forget(&server, &local, &remote, id);
    xs.close().await;
    if reason != "shutdown" {
        end(&server, &local, &remote, id, rx, None).await;
    }
}

fn forget(server: &Server, local: &str, remote: &str, id: u64) {
    let mut map = server.s2s.outgoing.lock().unwrap_or_else(|p| p.into_inner());
    let key = (local.to_string(), remote.to_string());
    if map.get(&key).is_some_and(|h| h.id == id) {
        map.remove(&key);
    }
}

/// Leave the registry and empty the queue: bounce with `error`, or (after a
/// working stream ended) hand the stanzas to a new stream.
async fn end(
    server: &Arc<Server>,
    local: &str,
    remote: &str,
    id: u64,
    mut rx: mpsc::UnboundedReceiver<Element>,
    error: Option<(Condition, String)>,
) {
    forget(server, local, remote, id);
    rx.close();
    while let Ok(el) = rx.try_recv() {
        match &error {
            Some((c, why)) => super::bounce(server, &el, *c, why).await,
            None => enqueue(server, local.to_string(), remote.to_string(), el),
        }
    }
}

async fn connect_and_authenticate(server: &Arc<Server>, local: &str, remote: &str) -> Result<XmlStream<Tls>, Failed> {
    let targets = server.s2s.resolver.targets(remote).await?;
    let mut last = None;
    for t in &targets {
        match open(server, local, remote, t).await {
            Ok(o) => {
                return match sasl_external(server, local, remote, o).await? {
                    Ok(xs) => Ok(xs),
                    Err(o) => dialback(server, local, remote, o).await,
                }
            }
            Err(e) => {
                tracing::debug!(host = %t.host, port = t.port, error = %e, "candidate failed");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(Failed::Protocol("no candidate to connect to")))
}

/// A TLS-protected stream whose header and features have been read.
struct Opened {
    xs: XmlStream<Tls>,
    stream_id: String,
    /// The features offered after TLS.
    features: Element,
}

/// Connect to one target and get to the features after TLS.
async fn open(server: &Arc<Server>, local: &str, remote: &str, t: &Target) -> Result<Opened, Failed> {
    let addrs = server.s2s.resolver.addresses(&t.host, t.port).await?;
    let tcp = super::resolve::happy_eyeballs(&addrs).await?;
    let _ = tcp.set_nodelay(true);
    let (connector, verified) = server
        .s2s
        .tls
        .connector(t.direct_tls, server.certs.certified_key(local));
    let sni = ServerName::try_from(remote.to_string()).map_err(|e| Failed::Tls(e.to_string()))?;
    let tcp = if t.direct_tls {
        tcp
    } else {
        let mut xs = XmlStream::plain(tcp, limits(server));
        xs.send_raw(&header(local, Some(remote), None)).await?;
        read_header(&mut xs).await?;
        let features = read_features(&mut xs).await?;
        if features.get_child("starttls", NS_TLS).is_none() {
            return Err(Failed::Protocol("the remote server does not offer STARTTLS"));
        }
        xs.send(&elem("starttls", NS_TLS)).await?;
        match xs.next_event().await? {
            Event::Stanza(el) if el.name() == "proceed" && el.has_ns(NS_TLS) => {}
            _ => return Err(Failed::Protocol("STARTTLS refused")),
        }
        xs.into_tcp()
    };
    let tls = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, connector.connect(sni, tcp))
        .await
        .map_err(|_| Failed::Tls("handshake timed out".into()))?
        .map_err(|e| Failed::Tls(e.to_string()))?;
    let verified = verified.load(Ordering::Acquire);
    tracing::debug!(verified, "TLS with the remote server");
    let mut xs = XmlStream::new(tls, limits(server));
    xs.send_raw(&header(local, Some(remote), None)).await?;
    let stream_id = read_header(&mut xs).await?;
    let features = read_features(&mut xs).await?;
    Ok(Opened {
        xs,
        stream_id,
        features,
    })
}

/// SASL EXTERNAL (RFC 6120 §6, XEP-0178) when the peer offers it: the peer
/// accepts our certificate for `local`, and no dialback round trip is
/// needed. `Ok(None)` gives the stream back for dialback: EXTERNAL was not
/// offered, or the peer refused it with a SASL failure.
async fn sasl_external(
    server: &Arc<Server>,
    local: &str,
    remote: &str,
    o: Opened,
) -> Result<Result<XmlStream<Tls>, Opened>, Failed> {
    let offered = o.features.get_child("mechanisms", NS_SASL).is_some_and(|m| {
        m.children()
            .any(|c| c.name() == "mechanism" && c.text().trim() == "EXTERNAL")
    });
    if !offered || server.certs.certified_key(local).is_none() {
        return Ok(Err(o));
    }
    let Opened {
        mut xs,
        stream_id,
        features,
    } = o;
    use base64::Engine;
    let authzid = base64::engine::general_purpose::STANDARD.encode(local);
    xs.send(&elem("auth", NS_SASL).with("mechanism", "EXTERNAL").text_child(authzid))
        .await?;
    loop {
        match xs.next_event().await? {
            Event::Stanza(el) if el.name() == "success" && el.has_ns(NS_SASL) => break,
            Event::Stanza(el) if el.name() == "failure" && el.has_ns(NS_SASL) => {
                let why = el.children().next().map(|c| c.name().to_string()).unwrap_or_default();
                tracing::debug!(reason = %why, "SASL EXTERNAL refused; trying dialback");
                return Ok(Err(Opened {
                    xs,
                    stream_id,
                    features,
                }));
            }
            Event::Stanza(el) if el.name() == "error" && el.has_ns(NS_STREAM) => {
                return Err(Failed::Refused(stream_error_condition(&el)))
            }
            Event::Stanza(_) => {}
            Event::Close => return Err(Failed::Conn(ConnError::Eof)),
            Event::Header(_) => return Err(Failed::Conn(ConnError::Stream(StreamError::NotWellFormed))),
        }
    }
    // Restart the stream on the authenticated connection.
    xs.restart();
    xs.send_raw(&header(local, Some(remote), None)).await?;
    read_header(&mut xs).await?;
    read_features(&mut xs).await?;
    tracing::info!("authenticated to the remote server with SASL EXTERNAL");
    Ok(Ok(xs))
}

async fn read_header<S>(xs: &mut XmlStream<S>) -> Result<String, Failed>
where
    S: Transport,
{
    match xs.next_event().await? {
        Event::Header(h) => {
            if h.default_ns.as_deref() != Some(NS_SERVER) {
                return Err(Failed::Protocol("the remote stream is not jabber:server"));
            }
            Ok(h.id.unwrap_or_default())
        }
        _ => Err(Failed::Protocol("expected a stream header")),
    }
}

async fn read_features<S>(xs: &mut XmlStream<S>) -> Result<Element, Failed>
where
    S: Transport,
{
    match xs.next_event().await? {
        Event::Stanza(el) if el.name() == "features" && el.has_ns(NS_STREAM) => Ok(el),
        Event::Stanza(el) if el.name() == "error" && el.has_ns(NS_STREAM) => {
            Err(Failed::Refused(stream_error_condition(&el)))
        }
        _ => Err(Failed::Protocol("expected stream features")),
    }
}

fn stream_error_condition(el: &Element) -> String {
    el.children()
        .find(|c| c.name() != "text")
        .map(|c| c.name().to_string())
        .unwrap_or_else(|| "stream error".into())
}

/// XEP-0220 as the originating server: send our key, wait for the verdict.
async fn dialback(server: &Arc<Server>, local: &str, remote: &str, o: Opened) -> Result<XmlStream<Tls>, Failed> {
    let Opened { mut xs, stream_id, .. } = o;
    if stream_id.is_empty() {
        return Err(Failed::Protocol("the remote stream has no id"));
    }
    let key = server.s2s.dialback_key(remote, local, &stream_id);
    xs.send(&db("result").with("from", local).with("to", remote).text_child(key))
        .await?;
    loop {
        match xs.next_event().await? {
            Event::Stanza(el) if el.name() == "result" && el.has_ns(NS_DIALBACK) => {
                return match el.attr("type") {
                    Some("valid") => Ok(xs),
                    other => {
                        let cond = el
                            .get_child("error", NS_DIALBACK)
                            .or_else(|| el.children().find(|c| c.name() == "error"))
                            .and_then(|e| e.children().next().map(|c| c.name().to_string()));
                        Err(Failed::Refused(format!(
                            "type {}{}",
                            other.unwrap_or("missing"),
                            cond.map(|c| format!(", {c}")).unwrap_or_default()
                        )))
                    }
                };
            }
            Event::Stanza(el) if el.name() == "error" && el.has_ns(NS_STREAM) => {
                return Err(Failed::Refused(stream_error_condition(&el)))
            }
            Event::Stanza(_) => {}
            Event::Close => return Err(Failed::Conn(ConnError::Eof)),
            Event::Header(_) => return Err(Failed::Conn(ConnError::Stream(StreamError::NotWellFormed))),
        }
    }
}

/// XEP-0220 as the receiving server: ask `remote`'s authoritative server
/// whether `key` is the one it generated for our stream `stream_id`.
/// `Ok(false)` is a definite "invalid"; errors mean it could not be asked.
pub async fn verify(
    server: &Arc<Server>,
    local: &str,
    remote: &str,
    stream_id: &str,
    key: &str,
) -> Result<bool, String> {
    let deadline = server.config.federation.connect_timeout.get();
    let work = async {
        let targets = server.s2s.resolver.targets(remote).await.map_err(|e| e.to_string())?;
        let mut last = String::from("no candidate to connect to");
        for t in &targets {
            let mut o = match open(server, local, remote, t).await {
                Ok(o) => o,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let req = db("verify")
                .with("from", local)
                .with("to", remote)
                .with("id", stream_id)
                .text_child(key);
            o.xs.send(&req).await.map_err(|e| e.to_string())?;
            loop {
                match o.xs.next_event().await.map_err(|e| e.to_string())? {
                    Event::Stanza(el) if el.name() == "verify" && el.has_ns(NS_DIALBACK) => {
                        if el.attr("id") != Some(stream_id) {
                            continue;
                        }
                        let ok = el.attr("type") == Some("valid");
                        o.xs.close().await;
                        return Ok(ok);
                    }
                    Event::Stanza(el) if el.name() == "error" && el.has_ns(NS_STREAM) => {
                        return Err(format!("stream error {}", stream_error_condition(&el)))
                    }
                    Event::Stanza(_) => {}
                    Event::Close => return Err("closed before answering".into()),
                    Event::Header(_) => return Err("unexpected header".into()),
                }
            }
        }
        Err(last)
    };
    tokio::time::timeout(deadline, work)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

//! The floor under a routed message (issue 14): a forwarder that lets the
//! generator's clients log in (STARTTLS or direct TLS, or plain TCP, SASL
//! PLAIN with any password, bind) and then stops parsing: whatever bytes a
//! client sends go as they are to its partner's connection (account `lg2k`
//! with `lg2k+1`). What it spends per message is what any server on this
//! machine spends at least: a receive and a send system call, TLS
//! decryption and encryption, and, with `--hop`, one wake-up of the
//! partner's task (a server's session task, as pushbox's).

use crate::{
    client::Xs,
    xml::{esc, Ev},
};
use anyhow::{anyhow, bail, Context, Result};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{server::TlsStream, TlsAcceptor};

/// How the forwarder listens.
pub struct Options {
    pub listen: SocketAddr,
    pub domain: String,
    /// TLS from the first byte (XEP-0368) instead of STARTTLS.
    pub direct_tls: bool,
    /// Hand each chunk to the partner's own writer task (a channel and a
    /// wake-up, as a server's session task) instead of writing it into the
    /// partner's socket from the reading task.
    pub hop: bool,
}

type Writer = WriteHalf<Box<dyn Stream>>;

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Where a logged-in account's bytes go.
#[derive(Clone)]
enum Sink {
    /// The partner's write half, written by the sender's task.
    Direct(Arc<tokio::sync::Mutex<Writer>>),
    /// The partner's writer task.
    Hop(mpsc::UnboundedSender<Vec<u8>>),
}

type Sinks = Arc<Mutex<HashMap<String, Sink>>>;

/// Serve until killed.
/// Serve until killed; `tls` is the certificate and key (PEM files), none
/// for plain TCP.
pub async fn serve(o: Options, tls: Option<(&Path, &Path)>) -> Result<()> {
    let acceptor = tls.map(|(cert, key)| acceptor(cert, key)).transpose()?;
    let listener = TcpListener::bind(o.listen)
        .await
        .with_context(|| format!("listening on {}", o.listen))?;
    let sinks: Sinks = Default::default();
    let o = Arc::new(o);
    loop {
        let (tcp, _) = listener.accept().await?;
        let (o, acceptor, sinks) = (o.clone(), acceptor.clone(), sinks.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(&o, acceptor, sinks, tcp).await {
                eprintln!("floor: {e:#}");
            }
        });
    }
}

fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";

/// The partner of `lgN`: `lgN+1` for even N, `lgN-1` for odd N (the
/// generator pairs its connections in login order).
fn partner(user: &str) -> Option<String> {
    let digits = user.len() - user.bytes().rev().take_while(u8::is_ascii_digit).count();
    let n: u64 = user[digits..].parse().ok()?;
    Some(format!("{}{}", &user[..digits], n ^ 1))
}

async fn connection(o: &Options, acceptor: Option<TlsAcceptor>, sinks: Sinks, tcp: TcpStream) -> Result<()> {
    tcp.set_nodelay(true)?;
    let stream: Box<dyn Stream> = match (&acceptor, o.direct_tls) {
        (None, _) => Box::new(tcp),
        (Some(a), true) => Box::new(a.accept(tcp).await?),
        (Some(a), false) => {
            let mut xs = Xs::new(tcp);
            header(&mut xs, &o.domain, &format!("<starttls xmlns='{NS_TLS}'/>")).await?;
            let el = xs.element().await?;
            if el.name() != "starttls" {
                bail!("expected <starttls/>, got <{}>", el.name());
            }
            send(&mut xs, &format!("<proceed xmlns='{NS_TLS}'/>")).await?;
            let (tcp, rest) = xs.into_parts();
            if !rest.is_empty() {
                bail!("bytes after <starttls/>");
            }
            let tls: TlsStream<TcpStream> = a.accept(tcp).await?;
            Box::new(tls)
        }
    };
    let mut xs = Xs::new(stream);
    header(
        &mut xs,
        &o.domain,
        &format!("<mechanisms xmlns='{NS_SASL}'><mechanism>PLAIN</mechanism></mechanisms>"),
    )
    .await?;
    let auth = xs.element().await?;
    if auth.name() != "auth" || auth.attr("mechanism") != Some("PLAIN") {
        bail!("expected SASL PLAIN, got <{}>", auth.name());
    }
    // authzid NUL authcid NUL password: any password will do.
    let plain = B64.decode(auth.text().trim()).context("base64")?;
    let user = plain
        .split(|b| *b == 0)
        .nth(1)
        .map(|u| String::from_utf8_lossy(u).into_owned())
        .ok_or_else(|| anyhow!("malformed PLAIN response"))?;
    send(&mut xs, &format!("<success xmlns='{NS_SASL}'/>")).await?;
    xs.restart();
    header(&mut xs, &o.domain, &format!("<bind xmlns='{NS_BIND}'/>")).await?;
    let iq = xs.element().await?;
    if iq.name() != "iq" || !iq.has_child("bind", NS_BIND) {
        bail!("expected a bind request, got <{}>", iq.name());
    }
    let id = iq.attr("id").unwrap_or_default();
    send(
        &mut xs,
        &format!(
            "<iq type='result' id='{}'><bind xmlns='{NS_BIND}'><jid>{}@{}/floor</jid></bind></iq>",
            esc(id),
            esc(&user),
            esc(&o.domain)
        ),
    )
    .await?;
    // From here on bytes are forwarded, not parsed.
    let peer = partner(&user).ok_or_else(|| anyhow!("account {user} does not end in a number"))?;
    let (stream, rest) = xs.into_parts();
    let (mut rd, wr) = tokio::io::split(stream);
    let me = if o.hop {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_task(wr, rx));
        Sink::Hop(tx)
    } else {
        Sink::Direct(Arc::new(tokio::sync::Mutex::new(wr)))
    };
    sinks.lock().unwrap().insert(user.clone(), me.clone());
    forward(&sinks, &peer, &rest).await;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        forward(&sinks, &peer, &buf[..n]).await;
    }
    sinks.lock().unwrap().remove(&user);
    if let Sink::Direct(w) = me {
        let _ = w.lock().await.shutdown().await;
    }
    Ok(())
}

/// Give `bytes` to `peer`'s connection. Before the partner logs in (its
/// initial presence), they are dropped.
async fn forward(sinks: &Sinks, peer: &str, bytes: &[u8]) {
    let to = sinks.lock().unwrap().get(peer).cloned();
    match to {
        Some(Sink::Direct(w)) => {
            let mut w = w.lock().await;
            // A partner gone is not this connection's error.
            if w.write_all(bytes).await.is_ok() {
                let _ = w.flush().await;
            }
        }
        Some(Sink::Hop(tx)) => {
            let _ = tx.send(bytes.to_vec());
        }
        None => {}
    }
}

/// A connection's writer when chunks come through a channel: what is
/// queued goes out in one flush.
async fn write_task(mut wr: Writer, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(bytes) = next {
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// Read the client's stream header; answer with ours and `features`.
async fn header<S: AsyncRead + AsyncWrite + Unpin>(xs: &mut Xs<S>, domain: &str, features: &str) -> Result<()> {
    match xs.next().await? {
        Ev::Header => {}
        _ => bail!("expected a stream header"),
    }
    send(
        xs,
        &format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
             from='{}' id='floor' version='1.0'><stream:features>{features}</stream:features>",
            esc(domain)
        ),
    )
    .await
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(xs: &mut Xs<S>, s: &str) -> Result<()> {
    xs.io.write_all(s.as_bytes()).await?;
    xs.io.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::partner;

    #[test]
    fn partners_pair_even_with_odd() {
        assert_eq!(partner("lg0").as_deref(), Some("lg1"));
        assert_eq!(partner("lg1").as_deref(), Some("lg0"));
        assert_eq!(partner("lg38").as_deref(), Some("lg39"));
        assert_eq!(partner("user").as_deref(), None);
    }
}

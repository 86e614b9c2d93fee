//! Server-side TLS for XMPP streams (c2s and s2s incoming) over rustls'
//! unbuffered API: the handshake, received records read as `AsyncBufRead`,
//! writes encrypted into an outgoing buffer, close_notify and alerts. The
//! buffers are the stream's own and each is freed as soon as it is empty,
//! so an idle connection holds only rustls' connection state (its keys).
//!
//! rustls' buffered `ServerConnection` keeps a 4 KiB receive buffer for the
//! life of every connection; here bytes are read into a buffer on the
//! stack, records are decrypted there, and only a record that arrived in
//! part is copied to the heap until the rest comes.
//!
//! rustls 0.23's unbuffered connection does not tell the server name the
//! client asked for, nor export keying material. Both are taken while the
//! handshake runs: the certificate resolver sees the name, the key log
//! sees the TLS 1.3 exporter secret, from which the RFC 9266
//! `tls-exporter` channel binding is derived at once (the secret itself is
//! not kept). rustls calls both synchronously inside `process_tls_records`,
//! so a thread-local set around that call ties them to this connection.

use rustls::{
    pki_types::CertificateDer,
    server::{ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerConfig, UnbufferedServerConnection},
    sign::CertifiedKey,
    unbuffered::{AppDataRecord, ConnectionState, EncodeError, EncryptError, UnbufferedStatus},
    KeyLog,
};
use std::{
    cell::RefCell,
    io,
    mem::MaybeUninit,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};
use tokio::{
    io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// Bytes read from the socket at a time, into a buffer on the stack.
const READ_SIZE: usize = 16 * 1024;
/// Encrypted bytes waiting for the socket beyond which a writer waits.
const SEND_HIGH_WATER: usize = 64 * 1024;
/// Most plaintext in one record (rustls' default fragment size).
const MAX_FRAGMENT: usize = 16 * 1024;
/// More than a record's overhead: header, content type, tag, TLS 1.2's
/// explicit nonce.
const RECORD_OVERHEAD: usize = 64;
/// The key log label of the TLS 1.3 exporter master secret.
const EXPORTER_SECRET: &str = "EXPORTER_SECRET";

/// What a handshake said that the unbuffered connection does not keep.
#[derive(Debug, Default, Clone)]
pub struct HandshakeInfo {
    /// The server name the client asked for (SNI), as the certificate
    /// resolver saw it.
    pub server_name: Option<String>,
    /// RFC 9266 `tls-exporter` (TLS 1.3 only): 32 bytes exported with the
    /// label `EXPORTER-Channel-Binding` and no context.
    pub tls_exporter: Option<[u8; 32]>,
}

thread_local! {
    /// The handshake step running on this thread, set around
    /// `process_tls_records` while a connection is handshaking.
    static NOTES: RefCell<Option<HandshakeInfo>> = const { RefCell::new(None) };
}

/// Accepts TLS connections with one server configuration (certificate
/// resolver, ALPN, client certificates), adapted for [`TlsStream`].
#[derive(Clone)]
pub struct Acceptor {
    config: Arc<ServerConfig>,
}

impl Acceptor {
    /// Wraps the configuration's certificate resolver and sets its key log
    /// to take what the handshake says (see the module's notes). Sessions
    /// are not resumed: there is no place to store one's server name, and
    /// the c2s and s2s configurations never resumed (each connection had a
    /// configuration, so a session cache, of its own), so no tickets are
    /// sent either.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        let mut cfg = Arc::unwrap_or_clone(config);
        cfg.cert_resolver = Arc::new(NoteServerName(cfg.cert_resolver.clone()));
        cfg.key_log = Arc::new(NoteExporter);
        cfg.session_storage = Arc::new(NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        cfg.max_early_data_size = 0;
        Acceptor { config: Arc::new(cfg) }
    }

    /// The server side of a TLS handshake on `io`.
    pub async fn accept<IO: AsyncRead + AsyncWrite + Unpin>(&self, io: IO) -> io::Result<TlsStream<IO>> {
        let conn = UnbufferedServerConnection::new(self.config.clone()).map_err(invalid_data)?;
        let mut tls = TlsStream {
            conn,
            io,
            incoming: Vec::new(),
            q: Queues::default(),
            info: HandshakeInfo::default(),
            eof: false,
            closing: false,
            failed: None,
        };
        std::future::poll_fn(|cx| tls.poll_handshake(cx)).await?;
        Ok(tls)
    }
}

/// The certificate resolver, noting the server name the client asked for.
#[derive(Debug)]
struct NoteServerName(Arc<dyn ResolvesServerCert>);

impl ResolvesServerCert for NoteServerName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name();
        NOTES.with(|n| {
            if let Some(n) = n.borrow_mut().as_mut() {
                n.server_name = name.map(str::to_string);
            }
        });
        self.0.resolve(hello)
    }

    fn only_raw_public_keys(&self) -> bool {
        self.0.only_raw_public_keys()
    }
}

/// A key log that logs nothing: it derives the `tls-exporter` binding from
/// the exporter secret and drops the secret.
#[derive(Debug)]
struct NoteExporter;

impl KeyLog for NoteExporter {
    fn will_log(&self, label: &str) -> bool {
        label == EXPORTER_SECRET
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if label != EXPORTER_SECRET {
            return;
        }
        let value = tls_exporter(secret);
        NOTES.with(|n| {
            if let Some(n) = n.borrow_mut().as_mut() {
                n.tls_exporter = value;
            }
        });
    }
}

/// RFC 8446 §7.5 with the label of RFC 9266 and an empty context:
/// HKDF-Expand-Label(Derive-Secret(secret, label, ""), "exporter",
/// Hash(""), 32). The hash is the suite's, known by the secret's length.
fn tls_exporter(exporter_secret: &[u8]) -> Option<[u8; 32]> {
    use ring::{digest, hkdf};
    let (alg, hash) = match exporter_secret.len() {
        32 => (hkdf::HKDF_SHA256, &digest::SHA256),
        48 => (hkdf::HKDF_SHA384, &digest::SHA384),
        _ => return None,
    };
    let empty = digest::digest(hash, b"");
    let mut derived = [0u8; 48];
    let derived = &mut derived[..exporter_secret.len()];
    expand_label(
        &hkdf::Prk::new_less_safe(alg, exporter_secret),
        b"EXPORTER-Channel-Binding",
        empty.as_ref(),
        derived,
    )?;
    let mut out = [0u8; 32];
    let r = expand_label(
        &hkdf::Prk::new_less_safe(alg, derived),
        b"exporter",
        empty.as_ref(),
        &mut out,
    );
    derived.fill(0);
    r.map(|_| out)
}

/// RFC 8446 §7.1 HKDF-Expand-Label.
fn expand_label(prk: &ring::hkdf::Prk, label: &[u8], context: &[u8], out: &mut [u8]) -> Option<()> {
    struct Len(usize);
    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let length = u16::try_from(out.len()).ok()?.to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).ok()?];
    let context_len = [u8::try_from(context.len()).ok()?];
    let info: [&[u8]; 6] = [&length, &label_len, b"tls13 ", label, &context_len, context];
    prk.expand(&info, Len(out.len())).ok()?.fill(out).ok()
}

/// The stream's plaintext and ciphertext queues.
#[derive(Default)]
struct Queues {
    /// Decrypted bytes, read from `plain_at`; freed once all are read.
    plain: Vec<u8>,
    plain_at: usize,
    /// Encrypted bytes for the socket, sent from `sent`; freed once sent.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer's close_notify was read: reads end there.
    peer_closed: bool,
}

/// What to do once rustls can carry application data.
enum Goal<'a> {
    /// Nothing: process what was received.
    Read,
    Write(&'a [u8]),
    CloseNotify,
}

/// A TLS connection accepted by [`Acceptor::accept`].
pub struct TlsStream<IO = TcpStream> {
    conn: UnbufferedServerConnection,
    io: IO,
    /// Received bytes rustls has not used up: a record (or handshake
    /// message) that arrived in part. Empty, and unallocated, otherwise.
    incoming: Vec<u8>,
    q: Queues,
    info: HandshakeInfo,
    /// The socket reached end of file.
    eof: bool,
    /// Our close_notify is queued: no more writes.
    closing: bool,
    /// A fatal TLS error (its alert queued): reads and writes fail with it.
    failed: Option<rustls::Error>,
}

impl<IO> TlsStream<IO> {
    /// The transport (for the peer's address).
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The certificate chain the peer showed, if it was asked for one.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The server name and `tls-exporter` value of the handshake, taken
    /// out (what is left is empty).
    pub fn take_handshake_info(&mut self) -> HandshakeInfo {
        std::mem::take(&mut self.info)
    }

    /// Bytes of buffer capacity the stream holds now: received, decrypted,
    /// to send. An idle stream holds none.
    pub fn buffered_capacity(&self) -> (usize, usize, usize) {
        (
            self.incoming.capacity(),
            self.q.plain.capacity(),
            self.q.outgoing.capacity(),
        )
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // Our flight goes out before we wait for the peer's.
            ready!(self.poll_send(cx))?;
            if let Some(e) = &self.failed {
                return Poll::Ready(Err(invalid_data(e.clone())));
            }
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                )));
            }
            ready!(self.poll_receive(cx))?;
        }
    }

    /// Read what the socket has and let rustls process it; ready after one
    /// read (`eof` set at end of file).
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut stack = [MaybeUninit::<u8>::uninit(); READ_SIZE];
        let mut buf = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let fresh = buf.filled_mut();
        if fresh.is_empty() {
            self.eof = true;
            return Poll::Ready(Ok(()));
        }
        let r = if self.incoming.is_empty() {
            // Records decrypted where they were read; a partial one is kept.
            self.process(Some(fresh), Goal::Read).map(|(used, _)| {
                if used < fresh.len() {
                    self.incoming = fresh[used..].to_vec();
                }
            })
        } else {
            self.incoming.extend_from_slice(fresh);
            self.process(None, Goal::Read).map(|_| ())
        };
        if let Err(e) = r {
            let e = self.fail(e);
            // The alert saying why, if the socket takes it now.
            let _ = self.poll_send(cx);
            return Poll::Ready(Err(e));
        }
        // Handshake flights, a key update's answer: sent without waiting.
        if let Poll::Ready(Err(e)) = self.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(()))
    }

    /// Run rustls over the received bytes (`fresh`, or else `incoming`)
    /// until it needs more bytes or can carry application data, and reach
    /// `goal` there. Returns the bytes of `fresh` used up (those of
    /// `incoming` are removed here) and whether the goal was reached.
    fn process(&mut self, fresh: Option<&mut [u8]>, goal: Goal<'_>) -> Result<(usize, bool), rustls::Error> {
        let handshaking = self.conn.is_handshaking();
        if handshaking {
            let info = std::mem::take(&mut self.info);
            NOTES.with(|n| *n.borrow_mut() = Some(info));
        }
        let r = match fresh {
            Some(buf) => run(&mut self.conn, buf, &mut self.q, goal),
            None => {
                let r = run(&mut self.conn, &mut self.incoming, &mut self.q, goal);
                if let Ok((used, _)) = r {
                    self.incoming.drain(..used);
                    if self.incoming.is_empty() {
                        self.incoming = Vec::new();
                    } else if self.incoming.capacity() > 4 * self.incoming.len().max(4096) {
                        self.incoming.shrink_to_fit();
                    }
                }
                r
            }
        };
        if handshaking {
            self.info = NOTES.with(|n| n.borrow_mut().take()).unwrap_or_default();
        }
        r
    }

    /// After a fatal error: keep rustls' alert for the socket, free the
    /// receive side, and fail from now on.
    fn fail(&mut self, e: rustls::Error) -> io::Error {
        // rustls queued the alert; it comes out as data to encode.
        for _ in 0..8 {
            let status = self.conn.process_tls_records(&mut []);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    let _ = append(&mut self.q.outgoing, 64, |out| enc.encode(out), encode_need);
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    while let Some(Ok(rec)) = r.next_record() {
                        self.q.plain.extend_from_slice(rec.payload);
                    }
                }
                _ => break,
            }
        }
        self.incoming = Vec::new();
        tracing::debug!(error = %e, "TLS error");
        self.failed = Some(e.clone());
        invalid_data(e)
    }

    /// Send the outgoing queue; frees it once sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.q.sent < self.q.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.q.outgoing[self.q.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.q.sent += n;
        }
        if self.q.outgoing.capacity() > 0 {
            self.q.outgoing = Vec::new();
            self.q.sent = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Encrypt or close through rustls, on the bytes already received.
    fn write_goal(&mut self, goal: Goal<'_>) -> io::Result<()> {
        match self.process(None, goal) {
            Ok((_, true)) => Ok(()),
            Ok((_, false)) if self.conn.is_handshaking() => Err(io::ErrorKind::NotConnected.into()),
            Ok((_, false)) => Err(io::ErrorKind::BrokenPipe.into()),
            Err(e) => Err(self.fail(e)),
        }
    }
}

/// rustls' state machine over `incoming` until it blocks for more bytes or
/// can carry application data (where `goal` is done). Returns the bytes of
/// `incoming` used up and whether the goal was reached.
fn run(
    conn: &mut UnbufferedServerConnection,
    incoming: &mut [u8],
    q: &mut Queues,
    mut goal: Goal<'_>,
) -> Result<(usize, bool), rustls::Error> {
    let mut used = 0;
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(&mut incoming[used..]);
        let mut done = None;
        match state? {
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(rec) = r.next_record() {
                    let AppDataRecord { discard: more, payload } = rec?;
                    discard += more;
                    q.plain.extend_from_slice(payload);
                }
            }
            ConnectionState::EncodeTlsData(mut enc) => {
                append(&mut q.outgoing, 512, |out| enc.encode(out), encode_need)
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
            }
            // Encoded bytes are in `outgoing`, sent in order with the rest.
            ConnectionState::TransmitTlsData(t) => t.done(),
            ConnectionState::WriteTraffic(mut w) => {
                match std::mem::replace(&mut goal, Goal::Read) {
                    Goal::Read => {}
                    Goal::Write(data) => {
                        let records = data.len().div_ceil(MAX_FRAGMENT).max(1);
                        append(
                            &mut q.outgoing,
                            data.len() + records * RECORD_OVERHEAD,
                            |out| w.encrypt(data, out),
                            encrypt_need,
                        )
                        .map_err(encrypt_error)?;
                    }
                    Goal::CloseNotify => {
                        append(
                            &mut q.outgoing,
                            RECORD_OVERHEAD,
                            |out| w.queue_close_notify(out),
                            encrypt_need,
                        )
                        .map_err(encrypt_error)?;
                    }
                }
                done = Some(true);
            }
            ConnectionState::PeerClosed => q.peer_closed = true,
            ConnectionState::BlockedHandshake => done = Some(matches!(goal, Goal::Read)),
            ConnectionState::Closed => {
                q.peer_closed = true;
                done = Some(matches!(goal, Goal::Read));
            }
            // Early data is off (`max_early_data_size` 0).
            _ => return Err(rustls::Error::General("unexpected TLS state".into())),
        }
        used += discard;
        if let Some(reached) = done {
            return Ok((used, reached));
        }
    }
}

fn encode_need(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

fn encrypt_need(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

fn encrypt_error(e: EncryptError) -> rustls::Error {
    match e {
        EncryptError::EncryptExhausted => rustls::Error::EncryptError,
        e => rustls::Error::General(e.to_string()),
    }
}

/// Let `f` write at the end of `out`, growing it to the size `f` asks for
/// if `guess` was too small.
fn append<E>(
    out: &mut Vec<u8>,
    guess: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, E>,
    need: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let start = out.len();
    out.resize(start + guess, 0);
    let r = match f(&mut out[start..]) {
        Err(e) => match need(&e) {
            Some(n) => {
                out.resize(start + n, 0);
                f(&mut out[start..])
            }
            None => Err(e),
        },
        ok => ok,
    };
    match r {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

fn invalid_data(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncBufRead for TlsStream<IO> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        // What was decrypted before an error or the end is read first.
        while this.q.plain_at == this.q.plain.len() {
            if let Some(e) = &this.failed {
                return Poll::Ready(Err(invalid_data(e.clone())));
            }
            if this.q.peer_closed {
                return Poll::Ready(Ok(&[]));
            }
            if this.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            if let Err(e) = ready!(this.poll_receive(cx)) {
                // Records decrypted before the error are read first; a TLS
                // error stays in `failed` for the next call.
                if this.q.plain_at == this.q.plain.len() {
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(&this.q.plain[this.q.plain_at..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let q = &mut self.get_mut().q;
        q.plain_at = (q.plain_at + amt).min(q.plain.len());
        if q.plain_at == q.plain.len() {
            q.plain = Vec::new();
            q.plain_at = 0;
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        poll_read_buffered(self, cx, buf)
    }
}

/// `AsyncRead::poll_read` for a transport whose reading is its
/// `AsyncBufRead` (this stream, the WebSocket one): copy what `fill_buf`
/// has, then consume it, so there is one read path to keep right.
pub fn poll_read_buffered<R: AsyncBufRead + ?Sized>(
    mut r: Pin<&mut R>,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let data = ready!(r.as_mut().poll_fill_buf(cx))?;
    let n = data.len().min(buf.remaining());
    buf.put_slice(&data[..n]);
    r.consume(n);
    Poll::Ready(Ok(()))
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = &this.failed {
            return Poll::Ready(Err(invalid_data(e.clone())));
        }
        if this.closing {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.q.outgoing.len() - this.q.sent >= SEND_HIGH_WATER {
            ready!(this.poll_send(cx))?;
        }
        this.write_goal(Goal::Write(data))?;
        // Sent now as far as the socket takes it; the flush sends the rest.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            if this.failed.is_none() {
                // Nothing to do when both sides had already closed.
                let _ = this.write_goal(Goal::CloseNotify);
            }
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! A real rustls client (the buffered API, driven by hand so that the
    //! bytes on the wire are under the test's control) against the stream,
    //! over loopback TCP.

    use super::*;
    use rustls::{
        pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
        ClientConfig, ClientConnection, RootCertStore, SupportedProtocolVersion,
    };
    use std::io::{Read, Write};
    use tokio::{
        io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    const NAME: &str = "example.test";
    const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
    const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A server acceptor with a fresh self-signed certificate for [`NAME`],
    /// and that certificate (for the client to trust).
    fn acceptor() -> (Acceptor, CertificateDer<'static>) {
        let ck = rcgen::generate_simple_self_signed(vec![NAME.to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        (Acceptor::new(Arc::new(cfg)), cert)
    }

    /// The socket under the stream: at most `max` bytes per read, counting
    /// the reads that returned bytes.
    struct Trickle {
        tcp: TcpStream,
        max: usize,
        reads: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let mut tmp = vec![0u8; self.max.min(buf.remaining())];
            let mut small = ReadBuf::new(&mut tmp);
            ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut small))?;
            let n = small.filled().len();
            buf.put_slice(&tmp[..n]);
            if n > 0 {
                self.reads += 1;
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.tcp).poll_write(cx, b)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.tcp).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.tcp).poll_shutdown(cx)
        }
    }

    /// The client: rustls' buffered connection over a TCP socket.
    struct Peer {
        tls: ClientConnection,
        tcp: TcpStream,
    }

    impl Peer {
        /// Write everything rustls has for the wire in one socket write.
        async fn send(&mut self) {
            let mut out = Vec::new();
            while self.tls.wants_write() {
                self.tls.write_tls(&mut out).unwrap();
            }
            self.tcp.write_all(&out).await.unwrap();
        }

        /// One socket read through rustls; `Ok(false)` at end of file.
        async fn receive(&mut self) -> Result<bool, rustls::Error> {
            // Small reads: rustls' client refuses to hold more than 16 KiB
            // of unread plaintext.
            let mut buf = vec![0u8; 4096];
            let n = self.tcp.read(&mut buf).await.unwrap();
            let mut s = &buf[..n];
            while !s.is_empty() {
                self.tls.read_tls(&mut s).unwrap();
                self.tls.process_new_packets()?;
            }
            Ok(n > 0)
        }

        /// The handshake, leaving the client's last flight (TLS 1.3: its
        /// Finished) unsent.
        async fn handshake(&mut self) {
            while self.tls.is_handshaking() {
                self.send().await;
                if self.tls.is_handshaking() {
                    assert!(self.receive().await.unwrap(), "server closed during the handshake");
                }
            }
        }

        /// Plaintext until `n` bytes came, or the peer's close_notify.
        async fn read(&mut self, n: usize) -> Vec<u8> {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            while got.len() < n {
                match self.tls.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => got.extend_from_slice(&buf[..k]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        assert!(self.receive().await.unwrap(), "end of file before close_notify");
                    }
                    Err(e) => panic!("client read: {e}"),
                }
            }
            got
        }

        fn write(&mut self, data: &[u8]) {
            self.tls.writer().write_all(data).unwrap();
        }
    }

    /// A connected client and the server's side of the TCP connection.
    async fn connect(
        versions: &[&'static SupportedProtocolVersion],
        cert: &CertificateDer<'static>,
    ) -> (Peer, TcpStream) {
        connect_with(provider(), versions, cert).await
    }

    /// [`connect`] with the client's own crypto provider (to pin a suite).
    async fn connect_with(
        provider: Arc<rustls::crypto::CryptoProvider>,
        versions: &[&'static SupportedProtocolVersion],
        cert: &CertificateDer<'static>,
    ) -> (Peer, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        let cfg = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tls = ClientConnection::new(Arc::new(cfg), ServerName::try_from(NAME).unwrap()).unwrap();
        tls.set_buffer_limit(None);
        (Peer { tls, tcp }, server)
    }

    /// A handshake over a socket that reads `max` bytes at a time.
    async fn established(versions: &[&'static SupportedProtocolVersion], max: usize) -> (Peer, TlsStream<Trickle>) {
        let (acceptor, cert) = acceptor();
        let (mut peer, tcp) = connect(versions, &cert).await;
        let io = Trickle { tcp, max, reads: 0 };
        let (server, ()) = tokio::join!(acceptor.accept(io), async {
            peer.handshake().await;
            peer.send().await;
        });
        (peer, server.expect("handshake"))
    }

    /// One record each way: `up` from the client must reach the server
    /// whole, then `down` from the server the client.
    async fn exchange(peer: &mut Peer, server: &mut TlsStream<Trickle>, up: &[u8], down: &[u8]) {
        peer.write(up);
        peer.send().await;
        assert_eq!(read_server(server, up.len()).await.unwrap(), up);
        server.write_all(down).await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(peer.read(down.len()).await, down);
    }

    /// The channel binding SCRAM-*-PLUS uses, as the client computes it.
    fn client_exporter(peer: &Peer) -> [u8; 32] {
        peer.tls
            .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
            .unwrap()
    }

    /// Read from the stream until `n` bytes came (or its end).
    async fn read_server(s: &mut TlsStream<Trickle>, n: usize) -> io::Result<Vec<u8>> {
        let mut got = Vec::new();
        while got.len() < n {
            let buf = s.fill_buf().await?;
            if buf.is_empty() {
                break;
            }
            let k = buf.len();
            got.extend_from_slice(buf);
            s.consume(k);
        }
        Ok(got)
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_handshake_split_into_one_byte_reads_tls13_and_tls12() {
        for versions in [TLS13, TLS12] {
            let (mut peer, mut server) = established(versions, 1).await;
            assert!(server.get_ref().reads > 100, "{} reads", server.get_ref().reads);
            assert_eq!(server.protocol_version(), Some(versions[0].version));
            let info = server.take_handshake_info();
            assert_eq!(info.server_name.as_deref(), Some(NAME));
            match versions[0].version {
                rustls::ProtocolVersion::TLSv1_3 => assert_eq!(info.tls_exporter, Some(client_exporter(&peer))),
                _ => assert_eq!(info.tls_exporter, None),
            }
            exchange(&mut peer, &mut server, b"<hello/>", b"<world/>").await;
        }
    }

    #[tokio::test]
    async fn the_tls_exporter_follows_each_suites_hash() {
        use rustls::crypto::ring::cipher_suite;
        for suite in [
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
        ] {
            let (acceptor, cert) = acceptor();
            let pinned = rustls::crypto::CryptoProvider {
                cipher_suites: vec![suite],
                ..rustls::crypto::ring::default_provider()
            };
            let (mut peer, tcp) = connect_with(Arc::new(pinned), TLS13, &cert).await;
            let (server, ()) = tokio::join!(acceptor.accept(tcp), async {
                peer.handshake().await;
                peer.send().await;
            });
            let mut server = server.unwrap();
            assert_eq!(peer.tls.negotiated_cipher_suite(), Some(suite));
            assert_eq!(
                server.take_handshake_info().tls_exporter,
                Some(client_exporter(&peer)),
                "{suite:?}"
            );
        }
    }

    #[tokio::test]
    async fn records_coalesced_in_one_read() {
        let (mut peer, mut server) = established(TLS13, usize::MAX).await;
        let before = server.get_ref().reads;
        // Three records, one socket write.
        for part in [&b"<a/>"[..], b"<b/>", b"<c/>"] {
            peer.write(part);
        }
        peer.send().await;
        assert_eq!(read_server(&mut server, 12).await.unwrap(), b"<a/><b/><c/>");
        assert_eq!(server.get_ref().reads - before, 1);
    }

    #[tokio::test]
    async fn a_record_split_across_reads_then_no_buffers_held() {
        let (mut peer, mut server) = established(TLS13, 7).await;
        let data = pattern(5000);
        peer.write(&data);
        peer.send().await;
        let before = server.get_ref().reads;
        assert_eq!(read_server(&mut server, data.len()).await.unwrap(), data);
        assert!(server.get_ref().reads - before > 700);
        server.write_all(b"<ok/>").await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(peer.read(5).await, b"<ok/>");
        // Idle: nothing received in part, nothing unread, nothing unsent.
        assert_eq!(server.buffered_capacity(), (0, 0, 0));
    }

    #[tokio::test]
    async fn data_pipelined_with_the_clients_finished() {
        let (acceptor, cert) = acceptor();
        let (mut peer, tcp) = connect(TLS13, &cert).await;
        let io = Trickle {
            tcp,
            max: usize::MAX,
            reads: 0,
        };
        let (server, ()) = tokio::join!(acceptor.accept(io), async {
            peer.handshake().await;
            // The stream header in the same write as the Finished.
            peer.write(b"<stream:stream>");
            peer.send().await;
        });
        let mut server = server.unwrap();
        // Already decrypted by the read that completed the handshake.
        assert!(server.buffered_capacity().1 > 0);
        assert_eq!(read_server(&mut server, 15).await.unwrap(), b"<stream:stream>");
    }

    #[tokio::test]
    async fn writes_and_reads_larger_than_a_record() {
        let (mut peer, mut server) = established(TLS13, usize::MAX).await;
        let big = pattern(100_000);
        server.write_all(&big).await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(peer.read(big.len()).await, big);
        let up = pattern(70_000);
        peer.write(&up);
        peer.send().await;
        assert_eq!(read_server(&mut server, up.len()).await.unwrap(), up);
        assert_eq!(server.buffered_capacity(), (0, 0, 0));
    }

    #[tokio::test]
    async fn close_notify_from_the_client_then_from_the_server() {
        let (mut peer, mut server) = established(TLS13, usize::MAX).await;
        peer.write(b"<last/>");
        peer.tls.send_close_notify();
        peer.send().await;
        // The data before it, then a clean end of stream.
        assert_eq!(read_server(&mut server, 100).await.unwrap(), b"<last/>");
        assert!(server.fill_buf().await.unwrap().is_empty());
        // Writing after the peer closed is allowed; then our close_notify.
        server.write_all(b"<bye/>").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(peer.read(100).await, b"<bye/>");
        assert!(
            peer.tls.reader().read(&mut [0u8; 8]).is_ok_and(|n| n == 0),
            "clean close"
        );
        assert!(!peer.receive().await.unwrap(), "TCP closed after close_notify");
        assert!(server.write_all(b"x").await.is_err());
    }

    #[tokio::test]
    async fn close_notify_from_the_server_then_from_the_client() {
        let (mut peer, mut server) = established(TLS12, usize::MAX).await;
        server.write_all(b"<bye/>").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(peer.read(100).await, b"<bye/>");
        assert!(
            peer.tls.reader().read(&mut [0u8; 8]).is_ok_and(|n| n == 0),
            "clean close"
        );
        peer.tls.send_close_notify();
        peer.send().await;
        assert!(server.fill_buf().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_abrupt_close_is_an_unexpected_eof() {
        let (peer, mut server) = established(TLS13, usize::MAX).await;
        drop(peer);
        let e = server.fill_buf().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_garbage_record_fails_with_an_alert_after_the_good_data() {
        let (mut peer, mut server) = established(TLS13, usize::MAX).await;
        peer.write(b"<fine/>");
        let mut out = Vec::new();
        while peer.tls.wants_write() {
            peer.tls.write_tls(&mut out).unwrap();
        }
        // An application data record that does not decrypt, in the same write.
        out.extend_from_slice(&[23, 3, 3, 0, 32]);
        out.extend_from_slice(&[0xAA; 32]);
        peer.tcp.write_all(&out).await.unwrap();
        let mut got = Vec::new();
        let e = loop {
            match server.fill_buf().await {
                Ok(b) => {
                    assert!(!b.is_empty());
                    let n = b.len();
                    got.extend_from_slice(b);
                    server.consume(n);
                }
                Err(e) => break e,
            }
        };
        assert_eq!(got, b"<fine/>");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("decrypt"), "{e}");
        // The client was told why.
        let alert = peer.receive().await.unwrap_err();
        assert_eq!(
            alert,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac),
            "{alert}"
        );
        // And the stream stays failed.
        assert!(server.write_all(b"<more/>").await.is_err());
        assert!(server.fill_buf().await.is_err());
    }

    #[tokio::test]
    async fn plain_text_instead_of_a_handshake_is_refused_with_an_alert() {
        let (acceptor, _) = acceptor();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut tcp = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        tcp.write_all(b"<?xml version='1.0'?><stream:stream>").await.unwrap();
        let e = acceptor.accept(server).await.err().expect("no handshake");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let mut got = Vec::new();
        tcp.read_to_end(&mut got).await.unwrap();
        // A TLS alert record (content type 21), then the end.
        assert_eq!(got.first(), Some(&21), "{got:?}");
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_answered() {
        let (mut peer, mut server) = established(TLS13, usize::MAX).await;
        // KeyUpdate with update_requested: the server must change its
        // sending keys too, and say so before its next record.
        peer.tls.refresh_traffic_keys().unwrap();
        exchange(&mut peer, &mut server, b"<after/>", b"<reply/>").await;
        peer.write(b"<again/>");
        peer.send().await;
        assert_eq!(read_server(&mut server, 8).await.unwrap(), b"<again/>");
    }
}

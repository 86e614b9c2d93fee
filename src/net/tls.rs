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

    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
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
            ready!(this.poll_receive(cx))?;
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
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let data = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = data.len().min(buf.remaining());
        buf.put_slice(&data[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
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

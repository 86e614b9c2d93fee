//! XMPP over WebSocket (RFC 7395): a connection upgraded by `http::websocket`
//! becomes the same client stream as one on 5222/5223, with the same
//! limits, both SASL profiles, Bind 2 and stream management (a session may
//! resume on the other transport). [`WsIo`] makes the message-framed socket
//! look like a byte stream to `XmlStream` in framed mode: reads yield the
//! text of each message in turn, and each flush of the writer sends what
//! was written since as one text message.

use super::{limits, negotiate, ClientIo};
use crate::{
    http::websocket::{Connection, Socket},
    xmpp::{
        stream::{FramingViolation, XmlStream},
        xml::{Limit, StreamError},
        Server,
    },
};
use bytes::Bytes;
use futures_util::{Sink, Stream};
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, error::CapacityError, Message};
use tracing::Instrument;

/// Serve one XMPP WebSocket connection until it ends.
pub async fn serve(server: Arc<Server>, conn: Connection) {
    let span = tracing::info_span!("c2s", peer = %conn.peer, transport = "websocket", jid = tracing::field::Empty);
    async move {
        let cb = conn.bindings;
        let xs = Box::new(XmlStream::framed(
            ClientIo::WebSocket(Box::new(WsIo::new(conn.ws))),
            limits(&server),
        ));
        negotiate(server, xs, cb, Some(conn.peer.ip())).await
    }
    .instrument(span)
    .await
}

/// A WebSocket seen as a byte stream (see the module comment).
pub struct WsIo {
    ws: Socket,
    /// The message being read, and how much of it was read.
    input: Bytes,
    pos: usize,
    /// Written since the last flush: the next message.
    output: Vec<u8>,
    /// When a ping or pong last arrived (activity without XMPP data).
    heard: Option<Instant>,
}

impl WsIo {
    pub fn new(ws: Socket) -> WsIo {
        WsIo {
            ws,
            input: Bytes::new(),
            pos: 0,
            output: Vec::new(),
            heard: None,
        }
    }

    /// When the client last sent a ping or pong: it counts as activity for
    /// the session's idle timeout, like a whitespace keepalive on TCP.
    pub fn heard(&self) -> Option<Instant> {
        self.heard
    }
}

fn violation(e: StreamError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, FramingViolation(e))
}

impl AsyncBufRead for WsIo {
    /// The unread rest of the current message, or the next text message.
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.pos >= this.input.len() {
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Text(t))) => {
                    this.input = Bytes::from(t);
                    this.pos = 0;
                }
                // RFC 7395 §3.2: XMPP travels in text messages only.
                Some(Ok(Message::Binary(_))) => return Poll::Ready(Err(violation(StreamError::UnsupportedEncoding))),
                // The client closed the WebSocket: the end of the stream.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(&[])),
                // Pings are answered by tungstenite itself; they and pongs
                // (RFC 6455 §5.5.3: a one-way heartbeat) keep the session.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => this.heard = Some(Instant::now()),
                Some(Ok(Message::Frame(_))) => {}
                Some(Err(tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                    tracing::info!(size, max_size, "WebSocket message over the size limit");
                    return Poll::Ready(Err(violation(StreamError::Limit(Limit::StanzaSize))));
                }
                Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
                    return Poll::Ready(Ok(&[]))
                }
                Some(Err(tungstenite::Error::Io(e))) => return Poll::Ready(Err(e)),
                // Bad framing (unmasked frames, bad opcodes, invalid UTF-8):
                // tungstenite has failed the connection (RFC 6455 §7.1.7).
                Some(Err(e)) => {
                    tracing::info!(error = %e, "WebSocket protocol error");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            }
        }
        Poll::Ready(Ok(&this.input[this.pos..]))
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        self.pos = (self.pos + amt).min(self.input.len());
        if self.pos == self.input.len() {
            // Nothing of a read message is kept while the socket is quiet.
            self.input = Bytes::new();
            self.pos = 0;
        }
    }
}

impl AsyncRead for WsIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        crate::net::tls::poll_read_buffered(self, cx, buf)
    }
}

impl AsyncWrite for WsIo {
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.output.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    /// Send what was written since the last flush as one text message.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.output.is_empty() {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
            let bytes = std::mem::take(&mut self.output);
            // The stream writer produces UTF-8 only; a lossy conversion
            // never changes what it wrote.
            let text = String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            Pin::new(&mut self.ws).start_send(Message::text(text)).map_err(to_io)?;
        }
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}

fn to_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        e => io::Error::other(e),
    }
}

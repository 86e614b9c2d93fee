//! A byte stream carrying XML: reads events through [`StreamParser`],
//! writes headers, elements and stream errors. In framed mode (XMPP over
//! WebSocket, RFC 7395) the same calls speak the framing: `<open/>` and
//! `<close/>` instead of the stream's head and tail, one element per
//! message (the transport ends a message at each flush of the writer).

use super::xml::{Event, ParserLimits, StreamError, StreamHeader, StreamParser, NS_CLIENT, NS_STREAM, NS_STREAMS_ERR};
use minidom::Element;
use std::{io, time::Duration};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How a connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("peer closed the connection")]
    Eof,
    #[error("stream error: {}", .0.condition())]
    Stream(StreamError),
    #[error("timed out")]
    Timeout,
}

const READ_CHUNK: usize = 4096;

/// RFC 7395's namespace for `<open/>` and `<close/>`.
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// A transport's own protocol was broken (a binary WebSocket message, one
/// over the size limit): carried inside an `io::Error` so that the stream
/// answers with this stream error instead of dropping the connection.
#[derive(Debug)]
pub struct FramingViolation(pub StreamError);

impl std::fmt::Display for FramingViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "framing violation ({})", self.0.condition())
    }
}

impl std::error::Error for FramingViolation {}
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct XmlStream<S> {
    io: S,
    parser: StreamParser,
    limits: ParserLimits,
    rbuf: Vec<u8>,
    pos: usize,
    len: usize,
    wbuf: Vec<u8>,
    /// Framed mode: where each message queued in `wbuf` ends.
    frames: Option<Vec<usize>>,
    /// Whether our stream header went out (errors need one first).
    pub header_sent: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> XmlStream<S> {
    pub fn new(io: S, limits: ParserLimits) -> Self {
        XmlStream {
            io,
            parser: StreamParser::new(limits),
            limits,
            rbuf: Vec::new(),
            pos: 0,
            len: 0,
            wbuf: Vec::new(),
            frames: None,
            header_sent: false,
        }
    }

    /// A stream in RFC 7395 framing over a message transport whose flush
    /// ends a message.
    pub fn framed(io: S, limits: ParserLimits) -> Self {
        XmlStream {
            parser: StreamParser::framed(limits),
            frames: Some(Vec::new()),
            ..Self::new(io, limits)
        }
    }

    pub fn is_framed(&self) -> bool {
        self.frames.is_some()
    }

    fn new_parser(&self) -> StreamParser {
        match self.frames {
            Some(_) => StreamParser::framed(self.limits),
            None => StreamParser::new(self.limits),
        }
    }

    /// Start a new stream on the same transport (after SASL success).
    pub fn restart(&mut self) {
        self.parser = self.new_parser();
        self.header_sent = false;
        self.skip_whitespace();
    }

    /// Close the message queued so far (framed mode).
    fn end_frame(&mut self) {
        let end = self.wbuf.len();
        if let Some(f) = self.frames.as_mut() {
            if f.last() != Some(&end) && end > 0 {
                f.push(end);
            }
        }
    }

    /// Drop whitespace left after the last element of a stream (many
    /// clients end each element with a newline); the next stream must begin
    /// with its own header.
    fn skip_whitespace(&mut self) {
        while self.pos < self.len && self.rbuf[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    /// Bytes received but not parsed yet, other than whitespace (there must
    /// be none at STARTTLS).
    pub fn has_buffered_input(&mut self) -> bool {
        self.skip_whitespace();
        self.pos < self.len
    }

    pub fn into_inner(self) -> S {
        self.io
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The next event. Cancel-safe: the only await is the socket read.
    pub async fn next_event(&mut self) -> Result<Event, ConnError> {
        loop {
            // Always ask the parser first: it may hold events from earlier bytes.
            let mut slice = &self.rbuf[self.pos..self.len];
            let before = slice.len();
            let r = self.parser.next(&mut slice);
            self.pos += before - slice.len();
            match r {
                Ok(Some(ev)) if self.frames.is_some() => return unframe(ev),
                Ok(Some(ev)) => return Ok(ev),
                Ok(None) => {}
                Err(e) => return Err(ConnError::Stream(e)),
            }
            if self.rbuf.is_empty() {
                self.rbuf = vec![0; READ_CHUNK];
            }
            self.pos = 0;
            self.len = 0;
            let n = match self.io.read(&mut self.rbuf).await {
                Ok(n) => n,
                Err(e) => match e.get_ref().and_then(|i| i.downcast_ref::<FramingViolation>()) {
                    Some(v) => return Err(ConnError::Stream(v.0)),
                    None => return Err(e.into()),
                },
            };
            if n == 0 {
                return Err(ConnError::Eof);
            }
            self.len = n;
        }
    }

    /// Give the read buffer back while the connection is idle.
    pub fn shrink(&mut self) {
        if self.pos >= self.len {
            self.rbuf = Vec::new();
            self.pos = 0;
            self.len = 0;
        }
        if self.wbuf.capacity() > READ_CHUNK {
            self.wbuf = Vec::new();
        }
    }

    /// Queue an element; [`XmlStream::flush`] sends it.
    pub fn queue(&mut self, el: &Element) {
        let start = self.wbuf.len();
        if el.write_to(&mut self.wbuf).is_err() {
            tracing::error!("an element could not be serialised and was dropped");
            self.wbuf.truncate(start);
        }
        self.end_frame();
    }

    /// `<stream:features>` with these children (written with the `stream:`
    /// prefix, which some clients compare literally; framed, the prefix is
    /// declared on it, there being no stream header to declare it).
    pub fn queue_features(&mut self, children: &[Element]) {
        let open = match self.frames {
            Some(_) => format!("<stream:features xmlns:stream='{NS_STREAM}'>"),
            None => "<stream:features>".to_string(),
        };
        self.wbuf.extend_from_slice(open.as_bytes());
        for c in children {
            if c.write_to(&mut self.wbuf).is_err() {
                tracing::error!("a stream feature could not be serialised");
            }
        }
        self.queue_raw("</stream:features>");
    }

    /// Queue bytes as they are (framed: as one message).
    pub fn queue_raw(&mut self, s: &str) {
        self.wbuf.extend_from_slice(s.as_bytes());
        self.end_frame();
    }

    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let io = &mut self.io;
        let buf = &self.wbuf;
        let frames = self.frames.as_deref();
        let r = tokio::time::timeout(WRITE_TIMEOUT, async {
            match frames {
                // One message per element: the transport ends one at each flush.
                Some(ends) => {
                    let mut start = 0;
                    for &end in ends {
                        io.write_all(&buf[start..end]).await?;
                        io.flush().await?;
                        start = end;
                    }
                    Ok(())
                }
                None => {
                    io.write_all(buf).await?;
                    io.flush().await
                }
            }
        })
        .await;
        self.wbuf.clear();
        if let Some(f) = self.frames.as_mut() {
            f.clear();
        }
        match r {
            Ok(r) => Ok(r?),
            Err(_) => Err(ConnError::Timeout),
        }
    }

    pub async fn send(&mut self, el: &Element) -> Result<(), ConnError> {
        self.queue(el);
        self.flush().await
    }

    pub async fn send_raw(&mut self, s: &str) -> Result<(), ConnError> {
        self.queue_raw(s);
        self.flush().await
    }

    /// Our `<stream:stream>` header (framed: `<open/>`, RFC 7395 §3.4).
    pub fn queue_header(&mut self, ns: &str, from: &str, to: Option<&str>, id: &str) {
        let to = to.map(|t| format!(" to='{}'", escape(t))).unwrap_or_default();
        if self.frames.is_some() {
            self.queue_raw(&format!(
                "<open xmlns='{NS_FRAMING}' from='{}'{to} id='{id}' version='1.0' xml:lang='en'/>",
                escape(from)
            ));
            self.header_sent = true;
            return;
        }
        self.queue_raw(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='{ns}' xmlns:stream='http://etherx.jabber.org/streams' \
             from='{}'{to} id='{id}' version='1.0' xml:lang='en'>",
            escape(from)
        ));
        self.header_sent = true;
    }

    /// End a connection that failed: log why once, and send the stream
    /// error that says so (`ns` is the stream's content namespace, `from`
    /// the name we answer as).
    pub async fn end(&mut self, ns: &str, from: &str, e: ConnError) {
        match e {
            ConnError::Stream(se) => {
                tracing::info!(condition = se.condition(), "closing the stream with an error");
                self.stream_error(ns, from, se, None).await;
            }
            ConnError::Timeout => {
                tracing::info!("connection timed out");
                self.stream_error(ns, from, StreamError::ConnectionTimeout, None).await;
            }
            ConnError::Eof => tracing::debug!("peer closed the connection"),
            ConnError::Io(e) => tracing::debug!(error = %e, "connection error"),
        }
    }

    /// Send a stream error and close the stream (RFC 6120 §4.9).
    pub async fn stream_error(&mut self, ns: &str, from: &str, e: StreamError, text: Option<&str>) {
        if !self.header_sent {
            self.queue_header(ns, from, None, &new_id());
        }
        let text = text
            .map(|t| format!("<text xmlns='{NS_STREAMS_ERR}' xml:lang='en'>{}</text>", escape(t)))
            .unwrap_or_default();
        if self.frames.is_some() {
            // RFC 7395 §3.6: the error, then <close/>.
            self.queue_raw(&format!(
                "<stream:error xmlns:stream='{NS_STREAM}'><{} xmlns='{NS_STREAMS_ERR}'/>{text}</stream:error>",
                e.condition()
            ));
            self.queue_raw(&format!("<close xmlns='{NS_FRAMING}'/>"));
        } else {
            self.queue_raw(&format!(
                "<stream:error><{} xmlns='{NS_STREAMS_ERR}'/>{text}</stream:error></stream:stream>",
                e.condition()
            ));
        }
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.io.shutdown()).await;
    }

    /// Close our side cleanly.
    pub async fn close(&mut self) {
        match self.frames {
            Some(_) => self.queue_raw(&format!("<close xmlns='{NS_FRAMING}'/>")),
            None => self.queue_raw("</stream:stream>"),
        }
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.io.shutdown()).await;
    }
}

/// RFC 7395 framing read back into stream events: `<open/>` is a stream
/// header in `jabber:client`, `<close/>` the stream's end.
fn unframe(ev: Event) -> Result<Event, ConnError> {
    match ev {
        Event::Stanza(el) if el.ns() == NS_FRAMING => match el.name() {
            "open" => Ok(Event::Header(StreamHeader {
                to: el.attr("to").map(str::to_string),
                from: el.attr("from").map(str::to_string),
                id: el.attr("id").map(str::to_string),
                version: el.attr("version").map(str::to_string),
                lang: el.attr("xml:lang").map(str::to_string),
                default_ns: Some(NS_CLIENT.to_string()),
                prefixes: vec![("stream".into(), NS_STREAM.into())],
            })),
            "close" => Ok(Event::Close),
            _ => Err(ConnError::Stream(StreamError::UnsupportedStanzaType)),
        },
        // The root of a framed parser never closes, and never opens twice.
        Event::Header(_) | Event::Close => Err(ConnError::Stream(StreamError::NotWellFormed)),
        ev => Ok(ev),
    }
}

/// A fresh random stream id.
pub fn new_id() -> String {
    let r: [u8; 12] = rand::random();
    r.iter().map(|b| format!("{b:02x}")).collect()
}

pub use crate::escape::escape;

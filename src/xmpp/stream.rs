//! A byte stream carrying XML: reads events through [`StreamParser`],
//! writes headers, elements and stream errors. In framed mode (XMPP over
//! WebSocket, RFC 7395) the same calls speak the framing: `<open/>` and
//! `<close/>` instead of the stream's head and tail, one element per
//! message (the transport ends a message at each flush of the writer).

use super::xml::{
    Event, ParserLimits, StreamDecls, StreamError, StreamHeader, StreamParser, NS_CLIENT, NS_STREAM, NS_STREAMS_ERR,
};
use super::xml_write::write_element;
use minidom::Element;
use std::{io, pin::Pin, time::Duration};
use tokio::time::Instant;
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::TcpStream,
};

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

const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

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

/// What an XML stream runs on: a buffered reader (the TLS layer's own
/// plaintext buffer, so the stream needs no read buffer of its own) that
/// can be written to.
pub trait Transport: AsyncBufRead + AsyncWrite + Unpin {}
impl<T: AsyncBufRead + AsyncWrite + Unpin> Transport for T {}

/// The plaintext phase of a STARTTLS connection.
pub type Plain = BufReader<TcpStream>;

/// Read buffer of the plaintext phase (a stream header and `<starttls/>`).
const PLAIN_READ_BUFFER: usize = 2048;

/// A write buffer larger than this is given back after each burst.
const SHRINK_ABOVE: usize = 4096;

/// The stream's parser, or while the stream rests (see
/// [`XmlStream::rest`]) only what it is rebuilt from.
enum Parser {
    Active(Box<StreamParser>),
    Resting(StreamDecls),
}

impl Parser {
    /// The parser, rebuilt first if the stream was resting (a framed
    /// parser rests with its root's declarations too).
    fn wake(&mut self, limits: ParserLimits) -> &mut StreamParser {
        if let Parser::Resting(d) = self {
            *self = Parser::Active(Box::new(StreamParser::resume(limits, d)));
        }
        match self {
            Parser::Active(p) => p,
            Parser::Resting(_) => unreachable!("woken just above"),
        }
    }
}

pub struct XmlStream<S> {
    io: S,
    parser: Parser,
    limits: ParserLimits,
    wbuf: Vec<u8>,
    /// Set by a stream restart: whitespace that ended the previous stream
    /// is dropped before the next header.
    skip_whitespace: bool,
    /// Framed mode: where each message queued in `wbuf` ends.
    frames: Option<Vec<usize>>,
    /// Whether our stream header went out (errors need one first).
    pub header_sent: bool,
    /// When whitespace between stanzas (a keepalive) was last read: it
    /// yields no event, yet counts as activity for idle timeouts.
    heard: Option<Instant>,
}

impl XmlStream<Plain> {
    /// A stream on a plain TCP connection (STARTTLS comes next).
    pub fn plain(tcp: TcpStream, limits: ParserLimits) -> Self {
        XmlStream::new(BufReader::with_capacity(PLAIN_READ_BUFFER, tcp), limits)
    }

    /// Bytes received but not parsed yet, other than whitespace (there must
    /// be none at STARTTLS).
    pub fn has_buffered_input(&mut self) -> bool {
        let ws = self.io.buffer().iter().take_while(|b| b.is_ascii_whitespace()).count();
        Pin::new(&mut self.io).consume(ws);
        !self.io.buffer().is_empty()
    }

    /// The TCP connection, for the TLS handshake.
    pub fn into_tcp(self) -> TcpStream {
        self.io.into_inner()
    }
}

impl<S: Transport> XmlStream<S> {
    pub fn new(io: S, limits: ParserLimits) -> Self {
        XmlStream {
            io,
            parser: Parser::Active(Box::new(StreamParser::new(limits))),
            limits,
            wbuf: Vec::new(),
            skip_whitespace: false,
            frames: None,
            header_sent: false,
            heard: None,
        }
    }

    /// A stream in RFC 7395 framing over a message transport whose flush
    /// ends a message.
    pub fn framed(io: S, limits: ParserLimits) -> Self {
        XmlStream {
            parser: Parser::Active(Box::new(StreamParser::framed(limits))),
            frames: Some(Vec::new()),
            ..Self::new(io, limits)
        }
    }

    pub fn is_framed(&self) -> bool {
        self.frames.is_some()
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

    /// Start a new stream on the same transport (after SASL success).
    pub fn restart(&mut self) {
        self.parser = Parser::Active(Box::new(match self.frames {
            Some(_) => StreamParser::framed(self.limits),
            None => StreamParser::new(self.limits),
        }));
        self.header_sent = false;
        // Many clients end each element with a newline; the next stream
        // must begin with its own header.
        self.skip_whitespace = true;
    }

    pub fn into_inner(self) -> S {
        self.io
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The next event. Cancel-safe: the only await is the transport's
    /// `fill_buf`, and bytes are consumed only once parsed.
    pub async fn next_event(&mut self) -> Result<Event, ConnError> {
        // The parser may hold events from earlier bytes.
        if let Parser::Active(p) = &mut self.parser {
            if let Some(ev) = p.next(&mut &[][..]).map_err(ConnError::Stream)? {
                return self.unframe(ev);
            }
        }
        loop {
            let buf = match self.io.fill_buf().await {
                Ok(buf) => buf,
                Err(e) => match e.get_ref().and_then(|i| i.downcast_ref::<FramingViolation>()) {
                    Some(v) => return Err(ConnError::Stream(v.0)),
                    None => return Err(e.into()),
                },
            };
            if buf.is_empty() {
                return Err(ConnError::Eof);
            }
            // Whitespace before a stream's header (after a restart: many
            // clients end each element with a newline) or between stanzas
            // (a keepalive) is consumed here, so that a resting parser stays
            // at rest, and remembered as activity.
            let between = match &self.parser {
                Parser::Active(p) => p.at_rest(),
                Parser::Resting(_) => true,
            };
            if self.skip_whitespace || between {
                let ws = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
                if ws > 0 {
                    self.heard = Some(Instant::now());
                    Pin::new(&mut self.io).consume(ws);
                    continue;
                }
                self.skip_whitespace = false;
            }
            let parser = self.parser.wake(self.limits);
            let mut slice = buf;
            let r = parser.next(&mut slice);
            let used = buf.len() - slice.len();
            Pin::new(&mut self.io).consume(used);
            match r {
                Ok(Some(ev)) => return self.unframe(ev),
                Ok(None) => {}
                Err(e) => return Err(ConnError::Stream(e)),
            }
        }
    }

    /// When the peer last sent whitespace between stanzas (RFC 6120 §4.6.1
    /// keepalives), which [`XmlStream::next_event`] reads without an event.
    pub fn heard(&self) -> Option<Instant> {
        self.heard
    }

    /// Framed mode reads its `<open/>` and `<close/>` back as stream events.
    fn unframe(&self, ev: Event) -> Result<Event, ConnError> {
        match self.frames {
            Some(_) => unframe(ev),
            None => Ok(ev),
        }
    }

    /// After a burst: give back a write buffer that grew large (a quiet
    /// stream gives back all of it in [`XmlStream::rest`]; doing that after
    /// every stanza would allocate it again for the next one).
    pub fn shrink(&mut self) {
        if self.wbuf.is_empty() && self.wbuf.capacity() > SHRINK_ABOVE {
            self.wbuf = Vec::new();
        }
    }

    /// Whether [`XmlStream::rest`] would free the parser now.
    pub fn can_rest(&self) -> bool {
        matches!(&self.parser, Parser::Active(p) if p.at_rest())
    }

    /// For a connection that has gone quiet: when the parser is between
    /// stanzas with nothing pending, free it (and the write buffer) and keep
    /// only the stream's namespace declarations; the next bytes rebuild it.
    pub fn rest(&mut self) {
        if let Some(d) = match &self.parser {
            Parser::Active(p) => p.rest_point(),
            Parser::Resting(_) => None,
        } {
            self.parser = Parser::Resting(d);
        }
        self.wbuf = Vec::new();
        if let Some(f) = self.frames.as_mut() {
            *f = Vec::new();
        }
    }

    /// Queue an element; [`XmlStream::flush`] sends it.
    pub fn queue(&mut self, el: &Element) {
        // On error the buffer is left as it was.
        if write_element(el, &mut self.wbuf).is_err() {
            tracing::error!("an element could not be serialised and was dropped");
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
            if write_element(c, &mut self.wbuf).is_err() {
                tracing::error!("a stream feature could not be serialised");
            }
        }
        self.queue_raw("</stream:features>");
    }

    /// [`XmlStream::queue_features`] with the children already written out.
    pub fn queue_features_raw(&mut self, children: &str) {
        match self.frames {
            Some(_) => {
                self.wbuf.extend_from_slice(b"<stream:features xmlns:stream='");
                self.wbuf.extend_from_slice(NS_STREAM.as_bytes());
                self.wbuf.extend_from_slice(b"'>");
            }
            None => self.wbuf.extend_from_slice(b"<stream:features>"),
        }
        self.wbuf.extend_from_slice(children.as_bytes());
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
                self.stream_error(ns, from, se, se.text()).await;
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
        Event::Stanza(el) if el.has_ns(NS_FRAMING) => match el.name() {
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
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let r: [u8; 12] = rand::random();
    // One allocation (a `format!` per byte made 13).
    let mut id = String::with_capacity(24);
    for b in r {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 15)]));
    }
    id
}

pub use crate::escape::escape;

#[cfg(test)]
mod tests {
    #[test]
    fn stream_ids_are_24_lowercase_hex_digits() {
        let a = super::new_id();
        assert_eq!(a.len(), 24);
        assert!(
            a.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{a}"
        );
        assert_ne!(a, super::new_id());
    }
}

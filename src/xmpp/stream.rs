//! A byte stream carrying XML: reads events through [`StreamParser`],
//! writes headers, elements and stream errors.

use super::xml::{Event, ParserLimits, StreamDecls, StreamError, StreamParser, NS_STREAMS_ERR};
use minidom::Element;
use std::{io, pin::Pin, time::Duration};
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

/// What an XML stream runs on: a buffered reader (the TLS layer's own
/// plaintext buffer, so the stream needs no read buffer of its own) that
/// can be written to.
pub trait Transport: AsyncBufRead + AsyncWrite + Unpin {}
impl<T: AsyncBufRead + AsyncWrite + Unpin> Transport for T {}

/// The plaintext phase of a STARTTLS connection.
pub type Plain = BufReader<TcpStream>;

/// Read buffer of the plaintext phase (a stream header and `<starttls/>`).
const PLAIN_READ_BUFFER: usize = 2048;

pub struct XmlStream<S> {
    io: S,
    /// `None` while the stream rests (see [`XmlStream::rest`]).
    parser: Option<Box<StreamParser>>,
    /// What a resting stream's parser is rebuilt from.
    rest: Option<StreamDecls>,
    limits: ParserLimits,
    wbuf: Vec<u8>,
    /// Set by a stream restart: whitespace that ended the previous stream
    /// is dropped before the next header.
    skip_whitespace: bool,
    /// Whether our stream header went out (errors need one first).
    pub header_sent: bool,
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
            parser: Some(Box::new(StreamParser::new(limits))),
            rest: None,
            limits,
            wbuf: Vec::new(),
            skip_whitespace: false,
            header_sent: false,
        }
    }

    /// Start a new stream on the same transport (after SASL success).
    pub fn restart(&mut self) {
        self.parser = Some(Box::new(StreamParser::new(self.limits)));
        self.rest = None;
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
        if let Some(p) = self.parser.as_mut() {
            if let Some(ev) = p.next(&mut &[][..]).map_err(ConnError::Stream)? {
                return Ok(ev);
            }
        }
        loop {
            let buf = self.io.fill_buf().await?;
            if buf.is_empty() {
                return Err(ConnError::Eof);
            }
            let mut slice = buf;
            if self.skip_whitespace {
                let ws = slice.iter().take_while(|b| b.is_ascii_whitespace()).count();
                if ws < slice.len() {
                    self.skip_whitespace = false;
                }
                slice = &slice[ws..];
            }
            let parser = match &mut self.parser {
                Some(p) => p,
                None => {
                    let p = match self.rest.take() {
                        Some(d) => StreamParser::resume(self.limits, &d),
                        None => StreamParser::new(self.limits),
                    };
                    self.parser.insert(Box::new(p))
                }
            };
            let before = buf.len();
            let r = parser.next(&mut slice);
            let used = before - slice.len();
            Pin::new(&mut self.io).consume(used);
            match r {
                Ok(Some(ev)) => return Ok(ev),
                Ok(None) => {}
                Err(e) => return Err(ConnError::Stream(e)),
            }
        }
    }

    /// Give the write buffer back while the connection is idle.
    pub fn shrink(&mut self) {
        if self.wbuf.is_empty() {
            self.wbuf = Vec::new();
        }
    }

    /// Whether [`XmlStream::rest`] would free the parser now.
    pub fn can_rest(&self) -> bool {
        self.parser.as_ref().is_some_and(|p| p.at_rest())
    }

    /// For a connection that has gone quiet: when the parser is between
    /// stanzas with nothing pending, free it (and the write buffer) and keep
    /// only the stream's namespace declarations; the next bytes rebuild it.
    pub fn rest(&mut self) {
        if let Some(d) = self.parser.as_ref().and_then(|p| p.rest_point()) {
            self.parser = None;
            self.rest = Some(d);
        }
        self.shrink();
    }

    /// Queue an element; [`XmlStream::flush`] sends it.
    pub fn queue(&mut self, el: &Element) {
        if el.write_to(&mut self.wbuf).is_err() {
            tracing::error!("an element could not be serialised and was dropped");
        }
    }

    /// `<stream:features>` with these children (written with the `stream:`
    /// prefix, which some clients compare literally).
    pub fn queue_features(&mut self, children: &[Element]) {
        self.queue_raw("<stream:features>");
        for c in children {
            self.queue(c);
        }
        self.queue_raw("</stream:features>");
    }

    pub fn queue_raw(&mut self, s: &str) {
        self.wbuf.extend_from_slice(s.as_bytes());
    }

    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let io = &mut self.io;
        let buf = &self.wbuf;
        let r = tokio::time::timeout(WRITE_TIMEOUT, async {
            io.write_all(buf).await?;
            io.flush().await
        })
        .await;
        self.wbuf.clear();
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

    /// Our `<stream:stream>` header.
    pub fn queue_header(&mut self, ns: &str, from: &str, to: Option<&str>, id: &str) {
        let to = to.map(|t| format!(" to='{}'", escape(t))).unwrap_or_default();
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
        self.queue_raw(&format!(
            "<stream:error><{} xmlns='{NS_STREAMS_ERR}'/>{text}</stream:error></stream:stream>",
            e.condition()
        ));
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.io.shutdown()).await;
    }

    /// Close our side cleanly.
    pub async fn close(&mut self) {
        self.queue_raw("</stream:stream>");
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.io.shutdown()).await;
    }
}

/// A fresh random stream id.
pub fn new_id() -> String {
    let r: [u8; 12] = rand::random();
    r.iter().map(|b| format!("{b:02x}")).collect()
}

pub use crate::escape::escape;

//! The XML stream parser: bytes in, stream header / stanzas / close out,
//! with the limits rxml does not enforce (stanza size, nesting depth,
//! attribute count). Also small helpers to build and edit elements.

use minidom::{tree_builder::TreeBuilder, Element};
use rxml::{error::EndOrError, Parse, RawEvent, RawParser};

pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
pub const NS_CLIENT: &str = "jabber:client";
pub const NS_SERVER: &str = "jabber:server";
pub const NS_STREAMS_ERR: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
/// XEP-0440 channel-binding type list.
pub const NS_SASL_CB: &str = "urn:xmpp:sasl-cb:0";
/// Reserved by Namespaces in XML: never declared, never bound.
const NS_XMLNS: &str = "http://www.w3.org/2000/xmlns/";
/// Bound to the `xml` prefix and only to it.
const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParserLimits {
    pub max_stanza_size: usize,
    pub max_depth: usize,
    pub max_attributes: usize,
    /// Longest element name, attribute name or attribute value, in bytes
    /// (rxml's `max_token_length`; longer text is read in pieces of this
    /// size, so it bounds no text). Streams use [`MAX_TOKEN_SIZE`].
    pub max_token_size: usize,
}

/// The longest name or attribute value a stream accepts, in bytes: 32 KiB.
/// rxml reserves a scratch buffer of this size for every parser it makes
/// (several per login, one more whenever a resting stream wakes), so it is
/// kept far below glibc's 128 KiB mmap threshold: a buffer above it is
/// mapped and unmapped per parser, and once freed it raises glibc's dynamic
/// threshold so that the next ones come from the heap and leave their
/// touched pages behind. The longest attribute values real clients send are
/// JIDs (RFC 7622: 3,071 bytes at most) and URLs (`uri`, `url`, `target` of
/// references, avatars and file sharing; HTTP servers refuse request lines
/// above 8 KiB). See docs/decisions.md.
pub const MAX_TOKEN_SIZE: usize = 32 * 1024;

/// Which of the parser's limits a peer went past: the stream error is
/// `policy-violation` (RFC 6120 §4.9.3.14) with a text naming the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    StanzaSize,
    Depth,
    Attributes,
    TokenSize,
}

impl Limit {
    pub fn text(self) -> &'static str {
        match self {
            Limit::StanzaSize => "stanza too large",
            Limit::Depth => "elements nested too deep",
            Limit::Attributes => "too many attributes on one element",
            Limit::TokenSize => "element name, attribute name or attribute value too long",
        }
    }
}

/// The attributes of a `<stream:stream>` header.
#[derive(Debug, Clone, Default)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    /// The stream id (set by the receiving entity; read by s2s dialback).
    pub id: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
    /// The default namespace (`jabber:client` or `jabber:server`).
    pub default_ns: Option<String>,
    /// Namespaces declared with other prefixes (`db` for dialback).
    pub prefixes: Vec<(String, String)>,
}

impl StreamHeader {
    /// RFC 6120 §4.7–4.9 checks every stream header gets: the content
    /// namespace `ns`, a 1.x version, and a `to` that `serves` accepts.
    pub fn check(&self, ns: &str, serves: impl Fn(&str) -> bool) -> Result<(), StreamError> {
        if self.default_ns.as_deref() != Some(ns) {
            return Err(StreamError::InvalidNamespace);
        }
        if self.version.as_deref().is_some_and(|v| !v.starts_with("1.")) {
            return Err(StreamError::UnsupportedVersion);
        }
        match &self.to {
            Some(to) if serves(to) => Ok(()),
            _ => Err(StreamError::HostUnknown),
        }
    }
}

#[derive(Debug)]
pub enum Event {
    Header(StreamHeader),
    Stanza(Element),
    /// `</stream:stream>`.
    Close,
}

/// A stream-level error condition (RFC 6120 §4.9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    BadFormat,
    HostUnknown,
    ImproperAddressing,
    InvalidFrom,
    InvalidNamespace,
    NotAuthorized,
    NotWellFormed,
    PolicyViolation,
    ResourceConstraint,
    RestrictedXml,
    SystemShutdown,
    UnsupportedEncoding,
    UnsupportedStanzaType,
    UnsupportedVersion,
    Conflict,
    ConnectionTimeout,
    InternalServerError,
    UndefinedCondition,
    Reset,
    /// `policy-violation` for one of the parser's limits, with a text.
    Limit(Limit),
}

impl StreamError {
    pub fn condition(self) -> &'static str {
        use StreamError::*;
        match self {
            BadFormat => "bad-format",
            HostUnknown => "host-unknown",
            ImproperAddressing => "improper-addressing",
            InvalidFrom => "invalid-from",
            InvalidNamespace => "invalid-namespace",
            NotAuthorized => "not-authorized",
            NotWellFormed => "not-well-formed",
            PolicyViolation => "policy-violation",
            ResourceConstraint => "resource-constraint",
            RestrictedXml => "restricted-xml",
            SystemShutdown => "system-shutdown",
            UnsupportedEncoding => "unsupported-encoding",
            UnsupportedStanzaType => "unsupported-stanza-type",
            UnsupportedVersion => "unsupported-version",
            Conflict => "conflict",
            ConnectionTimeout => "connection-timeout",
            InternalServerError => "internal-server-error",
            UndefinedCondition => "undefined-condition",
            Reset => "reset",
            Limit(_) => "policy-violation",
        }
    }

    /// The human-readable text sent with the condition, when there is one.
    pub fn text(self) -> Option<&'static str> {
        match self {
            StreamError::Limit(l) => Some(l.text()),
            _ => None,
        }
    }
}

/// Incremental parser for one stream (a new one after each stream restart).
pub struct StreamParser {
    raw: RawParser,
    tree: TreeBuilder,
    limits: ParserLimits,
    depth: usize,
    /// Bytes in the stanza being parsed so far.
    stanza_bytes: usize,
    attrs_here: usize,
    /// Qualified names (`prefix:name` or `name`) of the attributes seen on
    /// the element being opened, end to end, and where each ends:
    /// duplicates are not well-formed. Reused from element to element, so
    /// the check allocates nothing per attribute.
    attr_names: String,
    attr_ends: Vec<usize>,
    /// Prefixed attributes of the element being opened, `(prefix, local name)`:
    /// checked for colliding expanded names once its declarations are known.
    prefixed_attrs: Vec<(String, String)>,
    /// Prefix declarations of every open element, outermost first.
    scopes: Vec<Vec<(String, String)>>,
    header: Option<StreamHeader>,
    in_header: bool,
    header_open_ok: bool,
    /// The namespace declarations of this stream's header, once read.
    decls: Option<StreamDecls>,
    /// Everything given so far became events and the last one ended at
    /// stream level: a parser rebuilt from `decls` would be in this state.
    at_rest: bool,
}

/// What a stream's parser needs to know between stanzas: the namespaces its
/// header declared. An idle connection keeps only this (see
/// [`StreamParser::rest_point`]): rxml reserves `max_token_size` bytes for
/// its token buffer, and a parser holds a few KiB of buffers besides.
#[derive(Debug, Clone)]
pub struct StreamDecls {
    default_ns: Option<String>,
    prefixes: Vec<(String, String)>,
}

impl StreamParser {
    pub fn new(limits: ParserLimits) -> StreamParser {
        // No single name or attribute value may outgrow a stanza either.
        let options = rxml::Options {
            max_token_length: limits.max_token_size.min(limits.max_stanza_size),
            ..Default::default()
        };
        let mut raw = <RawParser as rxml::WithOptions>::with_options(options);
        raw.set_text_buffering(true);
        StreamParser {
            raw,
            tree: TreeBuilder::new(),
            limits,
            depth: 0,
            stanza_bytes: 0,
            attrs_here: 0,
            attr_names: String::new(),
            attr_ends: Vec::new(),
            prefixed_attrs: Vec::new(),
            scopes: Vec::new(),
            header: None,
            in_header: false,
            header_open_ok: false,
            decls: None,
            at_rest: false,
        }
    }

    /// The declarations to rebuild this parser from, when it is between
    /// stanzas with nothing pending (`None` otherwise).
    pub fn rest_point(&self) -> Option<StreamDecls> {
        if self.at_rest() {
            self.decls.clone()
        } else {
            None
        }
    }

    /// Between stanzas with nothing pending (see [`StreamParser::rest_point`]).
    pub fn at_rest(&self) -> bool {
        self.at_rest && self.depth == 1 && self.decls.is_some()
    }

    /// A parser in the state of one that read a header with these
    /// declarations and nothing since: it is fed such a header.
    pub fn resume(limits: ParserLimits, decls: &StreamDecls) -> StreamParser {
        use std::fmt::Write;
        let mut header = String::from("<stream:stream");
        if let Some(ns) = &decls.default_ns {
            let _ = write!(header, " xmlns='{}'", crate::escape::escape(ns));
        }
        for (p, ns) in &decls.prefixes {
            let _ = write!(header, " xmlns:{p}='{}'", crate::escape::escape(ns));
        }
        header.push('>');
        let mut p = StreamParser::new(limits);
        let mut bytes = header.as_bytes();
        let ok = matches!(p.next(&mut bytes), Ok(Some(Event::Header(_)))) && bytes.is_empty();
        debug_assert!(ok, "a parser rebuilt from its own header's declarations");
        p
    }

    /// A parser for RFC 7395 framing, where every WebSocket message is one
    /// element and there is no `<stream:stream>`: it starts inside a root
    /// that declares what a stream header would (`jabber:client`, the
    /// `stream` prefix), so each message parses as a child of it. The
    /// framing's `<open/>` and `<close/>` arrive as elements.
    pub fn framed(limits: ParserLimits) -> StreamParser {
        let root = StreamDecls {
            default_ns: Some(NS_CLIENT.to_string()),
            prefixes: vec![("stream".to_string(), NS_STREAM.to_string())],
        };
        StreamParser::resume(limits, &root)
    }

    /// Parse from `buf`, consuming what was used. `Ok(None)` means more data
    /// is needed.
    pub fn next(&mut self, buf: &mut &[u8]) -> Result<Option<Event>, StreamError> {
        if !buf.is_empty() {
            self.at_rest = false;
        }
        loop {
            // Called even with an empty buffer: the parser may hold queued events.
            let ev = match self.raw.parse(buf, false) {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(None),
                // Bytes held in the lexer are bounded by max_token_size.
                Err(EndOrError::NeedMoreData) => return Ok(None),
                Err(EndOrError::Error(e)) => return Err(map_rxml_error(&e)),
            };
            if let Some(out) = self.handle(ev)? {
                // An event ends at an element's `>`: bytes after it are
                // still the caller's, so the parser itself is between
                // stanzas now (at stream level, see `at_rest`).
                self.at_rest = !matches!(out, Event::Close);
                return Ok(Some(out));
            }
        }
    }

    fn handle(&mut self, ev: RawEvent) -> Result<Option<Event>, StreamError> {
        let len = ev.metrics().len();
        if self.depth >= 2 || matches!(ev, RawEvent::ElementHeadOpen(..) if self.depth == 1) {
            self.stanza_bytes += len;
            if self.stanza_bytes > self.limits.max_stanza_size {
                return Err(StreamError::Limit(Limit::StanzaSize));
            }
        }
        match ev {
            RawEvent::XmlDeclaration(..) => Ok(None),
            RawEvent::ElementHeadOpen(m, (prefix, name)) => {
                self.attrs_here = 0;
                self.attr_names.clear();
                self.attr_ends.clear();
                self.prefixed_attrs.clear();
                self.scopes.push(Vec::new());
                if self.depth == 0 {
                    self.in_header = true;
                    self.header_open_ok =
                        prefix.as_deref().map(|p| p.as_str()) == Some("stream") && name.as_str() == "stream";
                    self.header = Some(StreamHeader::default());
                } else {
                    if self.depth == 1 {
                        self.stanza_bytes = len;
                    }
                    if self.depth > self.limits.max_depth {
                        return Err(StreamError::Limit(Limit::Depth));
                    }
                }
                self.tree
                    .process_event(RawEvent::ElementHeadOpen(m, (prefix, name)))
                    .map_err(|_| StreamError::NotWellFormed)?;
                Ok(None)
            }
            RawEvent::Attribute(m, (prefix, name), value) => {
                self.attrs_here += 1;
                if self.attrs_here > self.limits.max_attributes {
                    return Err(StreamError::Limit(Limit::Attributes));
                }
                let start = self.attr_names.len();
                if let Some(p) = prefix.as_deref() {
                    self.attr_names.push_str(p.as_str());
                    self.attr_names.push(':');
                }
                self.attr_names.push_str(name.as_str());
                let qname = &self.attr_names[start..];
                let mut from = 0;
                for &end in &self.attr_ends {
                    if &self.attr_names[from..end] == qname {
                        return Err(StreamError::NotWellFormed);
                    }
                    from = end;
                }
                self.attr_ends.push(self.attr_names.len());
                match prefix.as_deref().map(|p| p.as_str()) {
                    Some("xmlns") => {
                        if let Some(scope) = self.scopes.last_mut() {
                            scope.push((name.to_string(), value.to_string()));
                        }
                    }
                    Some(p) => self.prefixed_attrs.push((p.to_string(), name.to_string())),
                    None => {}
                }
                let declared = match (prefix.as_deref().map(|p| p.as_str()), name.as_str()) {
                    (None, "xmlns") => Some(None),
                    (Some("xmlns"), p) => Some(Some(p)),
                    _ => None,
                };
                if let Some(declared) = declared {
                    // Namespaces in XML §3: nothing may be bound to the xmlns
                    // namespace, the xmlns prefix may not be declared, and the
                    // xml prefix only to its own name. Such declarations are
                    // not well-formed; the one harmless case (xmlns:xml bound
                    // to its fixed name) is dropped, since the tree re-declares
                    // every prefix it was given when it writes the stanza out.
                    if value.as_str() == NS_XMLNS || declared == Some("xmlns") {
                        return Err(StreamError::NotWellFormed);
                    }
                    if declared == Some("xml") {
                        if value.as_str() != NS_XML {
                            return Err(StreamError::NotWellFormed);
                        }
                        return Ok(None);
                    }
                }
                if self.in_header {
                    let h = self.header.as_mut().expect("header started");
                    match (prefix.as_deref().map(|p| p.as_str()), name.as_str()) {
                        (None, "to") => h.to = Some(value.to_string()),
                        (None, "from") => h.from = Some(value.to_string()),
                        (None, "id") => h.id = Some(value.to_string()),
                        (None, "version") => h.version = Some(value.to_string()),
                        (None, "xmlns") => h.default_ns = Some(value.to_string()),
                        (Some("xml"), "lang") => h.lang = Some(value.to_string()),
                        (Some("xmlns"), p) => h.prefixes.push((p.to_string(), value.to_string())),
                        _ => {}
                    }
                }
                self.tree
                    .process_event(RawEvent::Attribute(m, (prefix, name), value))
                    .map_err(|_| StreamError::NotWellFormed)?;
                Ok(None)
            }
            RawEvent::ElementHeadClose(m) => {
                // Namespaces in XML §6.3: no two attributes may have the same
                // expanded name (`x:a` and `y:a` with x and y bound to one URI).
                if self.prefixed_attrs.len() > 1 {
                    let mut seen: Vec<(&str, &str)> = Vec::with_capacity(self.prefixed_attrs.len());
                    for (p, local) in &self.prefixed_attrs {
                        let uri = if p == "xml" {
                            Some(NS_XML)
                        } else {
                            self.scopes
                                .iter()
                                .rev()
                                .flat_map(|s| s.iter().rev())
                                .find(|(q, _)| q == p)
                                .map(|(_, u)| u.as_str())
                        };
                        // An undeclared prefix is reported by the tree below.
                        if let Some(uri) = uri {
                            if seen.contains(&(uri, local.as_str())) {
                                return Err(StreamError::NotWellFormed);
                            }
                            seen.push((uri, local.as_str()));
                        }
                    }
                }
                self.tree.process_event(RawEvent::ElementHeadClose(m)).map_err(|e| {
                    if self.in_header {
                        StreamError::InvalidNamespace
                    } else {
                        tracing::debug!(error = %e, "element with an undeclared prefix");
                        StreamError::NotWellFormed
                    }
                })?;
                self.depth += 1;
                if self.in_header {
                    self.in_header = false;
                    let h = self.header.take().expect("header started");
                    let stream_ns_ok = h.prefixes.iter().any(|(p, ns)| p == "stream" && ns == NS_STREAM);
                    if !self.header_open_ok || !stream_ns_ok {
                        return Err(StreamError::InvalidNamespace);
                    }
                    self.decls = Some(StreamDecls {
                        default_ns: h.default_ns.clone(),
                        prefixes: h.prefixes.clone(),
                    });
                    return Ok(Some(Event::Header(h)));
                }
                Ok(None)
            }
            RawEvent::Text(m, text) => {
                if self.depth <= 1 {
                    // Whitespace keepalives between stanzas. Text at stream
                    // level is not allowed (RFC 6120 §11.7); don't keep it.
                    if !text.trim_matches(|c: char| c.is_ascii_whitespace()).is_empty() {
                        return Err(StreamError::NotWellFormed);
                    }
                    return Ok(None);
                }
                self.tree
                    .process_event(RawEvent::Text(m, text))
                    .map_err(|_| StreamError::NotWellFormed)?;
                Ok(None)
            }
            RawEvent::ElementFoot(m) => {
                self.scopes.pop();
                self.depth -= 1;
                if self.depth == 0 {
                    return Ok(Some(Event::Close));
                }
                self.tree
                    .process_event(RawEvent::ElementFoot(m))
                    .map_err(|_| StreamError::NotWellFormed)?;
                if self.depth == 1 {
                    self.stanza_bytes = 0;
                    let mut el = self.tree.unshift_child().ok_or(StreamError::InternalServerError)?;
                    forget_prefixes(&mut el);
                    return Ok(Some(Event::Stanza(el)));
                }
                Ok(None)
            }
        }
    }
}

/// Drop the sender's prefix declarations from a parsed stanza: names are
/// already resolved to namespaces, and the writer picks its own prefixes.
/// Kept, they would be re-declared as written, and rxml's writer panics on
/// a prefix re-bound in a child or one that collides with its own `tns0…`.
fn forget_prefixes(el: &mut Element) {
    el.prefixes = Default::default();
    for child in el.children_mut() {
        forget_prefixes(child);
    }
}

fn map_rxml_error(e: &rxml::Error) -> StreamError {
    match e {
        // A name or attribute value longer than `max_token_size` (or a
        // character reference longer than any valid one).
        rxml::Error::RestrictedXml("long name or reference") => StreamError::Limit(Limit::TokenSize),
        rxml::Error::RestrictedXml(_) => StreamError::RestrictedXml,
        _ => StreamError::NotWellFormed,
    }
}

/// Small conveniences over minidom's builder API.
pub trait ElementExt: Sized {
    /// Set (or replace) an unprefixed attribute.
    fn set(&mut self, name: &str, value: impl Into<String>);
    /// Remove an unprefixed attribute.
    fn unset(&mut self, name: &str);
    /// Builder form of [`ElementExt::set`].
    fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set(name, value);
        self
    }
    /// Builder form of `Option` attributes.
    fn with_opt(self, name: &str, value: Option<impl Into<String>>) -> Self {
        match value {
            Some(v) => self.with(name, v),
            None => self,
        }
    }
    fn child(self, c: Element) -> Self;
    fn text_child(self, t: impl Into<String>) -> Self;
    /// Serialise to a string (no XML declaration).
    fn to_xml(&self) -> String;
}

fn ncname(name: &str) -> rxml::NcName {
    rxml::NcName::try_from(name).expect("attribute names used by pushbox are valid")
}

impl ElementExt for Element {
    fn set(&mut self, name: &str, value: impl Into<String>) {
        self.attrs_mut()
            .insert(rxml::Namespace::NONE, ncname(name), value.into());
    }
    fn unset(&mut self, name: &str) {
        self.attrs_mut().remove(&rxml::Namespace::NONE, name);
    }
    fn child(mut self, c: Element) -> Self {
        self.append_child(c);
        self
    }
    fn text_child(mut self, t: impl Into<String>) -> Self {
        self.append_text_node(t.into());
        self
    }
    fn to_xml(&self) -> String {
        super::xml_write::to_string(self)
    }
}

/// The value of an unprefixed attribute, as `Element::attr` gives it.
/// Stanzas carry a handful of attributes, and walking them comparing
/// lengths first is far cheaper than `Element::attr`'s look-up in its
/// two-level B-tree (about 9 against 150 ns per call on the development
/// machine, release build); the routing path asks for `type`, `from` and
/// `to` in every hook.
pub fn attr<'a>(el: &'a Element, name: &str) -> Option<&'a str> {
    el.attrs()
        .iter()
        .find(|((ns, n), _)| n.len() == name.len() && ns.is_none() && n.as_str() == name)
        .map(|(_, v)| v.as_str())
}

/// A copy of `el` keeping only the child elements `keep` accepts (text
/// directly inside `el` is dropped; stanzas carry none that matters).
pub fn retain_children(el: &Element, mut keep: impl FnMut(&Element) -> bool) -> Element {
    let mut fresh = Element::bare(el.name(), el.ns());
    for ((ns, name), v) in el.attrs().iter() {
        fresh.attrs_mut().insert(ns.clone(), name.clone(), v.clone());
    }
    for c in el.children().filter(|c| keep(c)) {
        fresh.append_child(c.clone());
    }
    fresh
}

/// A new element with no attributes.
pub fn elem(name: &str, ns: &str) -> Element {
    Element::bare(name, ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: ParserLimits = ParserLimits {
        max_stanza_size: 1000,
        max_depth: 5,
        max_attributes: 8,
        max_token_size: 64,
    };

    fn parse_all(input: &[u8], chunk: usize) -> Result<Vec<Event>, StreamError> {
        let mut p = StreamParser::new(LIM);
        let mut out = vec![];
        for c in input.chunks(chunk) {
            let mut b = c;
            while let Some(ev) = p.next(&mut b)? {
                out.push(ev);
            }
        }
        Ok(out)
    }

    const HDR: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

    #[test]
    fn header_stanzas_close_in_any_chunking() {
        let doc = format!("{HDR} <message to='a@b'><body>hi &amp; bye</body></message>\n<presence/></stream:stream>");
        for chunk in [1, 3, 7, 1000] {
            let evs = parse_all(doc.as_bytes(), chunk).unwrap();
            assert_eq!(evs.len(), 4, "chunk {chunk}");
            let Event::Header(h) = &evs[0] else { panic!() };
            assert_eq!(h.to.as_deref(), Some("localhost"));
            assert_eq!(h.default_ns.as_deref(), Some(NS_CLIENT));
            let Event::Stanza(m) = &evs[1] else { panic!() };
            assert_eq!(m.name(), "message");
            assert_eq!(m.ns(), NS_CLIENT);
            assert_eq!(m.get_child("body", NS_CLIENT).unwrap().text(), "hi & bye");
            assert!(matches!(evs[3], Event::Close));
        }
    }

    #[test]
    fn limits_and_errors() {
        let deep = format!("{HDR}<a><b><c><d><e><f><g/></f></e></d></c></b></a>");
        assert_eq!(
            parse_all(deep.as_bytes(), 50).unwrap_err(),
            StreamError::Limit(Limit::Depth)
        );
        let big = format!("{HDR}<message><body>{}</body></message>", "x".repeat(5000));
        assert_eq!(
            parse_all(big.as_bytes(), 100).unwrap_err(),
            StreamError::Limit(Limit::StanzaSize)
        );
        let attrs = format!(
            "{HDR}<message {}/>",
            (0..20).map(|i| format!("a{i}='x' ")).collect::<String>()
        );
        assert_eq!(
            parse_all(attrs.as_bytes(), 100).unwrap_err(),
            StreamError::Limit(Limit::Attributes)
        );
        for e in [Limit::Depth, Limit::StanzaSize, Limit::Attributes, Limit::TokenSize] {
            assert_eq!(StreamError::Limit(e).condition(), "policy-violation");
            assert!(StreamError::Limit(e).text().is_some_and(|t| !t.is_empty()));
        }
        let bad = format!("{HDR}<message></presence>");
        assert_eq!(parse_all(bad.as_bytes(), 100).unwrap_err(), StreamError::NotWellFormed);
        let dtd = "<?xml version='1.0'?><!DOCTYPE foo [<!ENTITY x 'y'>]><stream:stream/>";
        assert!(matches!(
            parse_all(dtd.as_bytes(), 100).unwrap_err(),
            StreamError::RestrictedXml | StreamError::NotWellFormed
        ));
        let wrong_ns = "<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong'>";
        assert_eq!(
            parse_all(wrong_ns.as_bytes(), 100).unwrap_err(),
            StreamError::InvalidNamespace
        );
        let text = format!("{HDR}garbage<presence/>");
        assert_eq!(parse_all(text.as_bytes(), 100).unwrap_err(), StreamError::NotWellFormed);
    }

    /// `max_token_size` bounds names and attribute values; text longer than
    /// it is read in pieces and joined into one text node, a character cut
    /// at a piece's end included. Only the stanza limit bounds text.
    #[test]
    fn token_limit_bounds_names_and_values_not_text() {
        let long = "x".repeat(LIM.max_token_size + 1);
        let just = "y".repeat(LIM.max_token_size);
        for refused in [
            format!("<message to='{long}'/>"),
            format!("<message {long}='1'/>"),
            format!("<{long}/>"),
            format!("<message><x xmlns='urn:{long}'/></message>"),
        ] {
            for chunk in [1, 7, 1000] {
                let doc = format!("{HDR}{refused}");
                assert_eq!(
                    parse_all(doc.as_bytes(), chunk).unwrap_err(),
                    StreamError::Limit(Limit::TokenSize),
                    "{refused} in pieces of {chunk}"
                );
            }
        }
        // 'é' is two bytes: with an odd prefix one falls across every piece's end.
        let text = format!("a{}", "é&amp;".repeat(60));
        let doc = format!("{HDR}<message to='{just}'><body>{text}</body></message>");
        assert!(text.len() > 4 * LIM.max_token_size);
        for chunk in [1, 5, 64, 1000] {
            let evs = parse_all(doc.as_bytes(), chunk).unwrap();
            let Event::Stanza(m) = &evs[1] else { panic!() };
            assert_eq!(attr(m, "to"), Some(just.as_str()));
            let body = m.get_child("body", NS_CLIENT).unwrap();
            assert_eq!(body.texts().count(), 1, "one text node");
            assert_eq!(body.text(), text.replace("&amp;", "&"), "chunk {chunk}");
        }
        // A token limit above the stanza limit is the stanza limit.
        let wide = ParserLimits {
            max_token_size: 1 << 20,
            ..LIM
        };
        let mut p = StreamParser::new(wide);
        let doc = format!("{HDR}<message to='{}'/>", "z".repeat(1200));
        let mut b = doc.as_bytes();
        assert!(matches!(p.next(&mut b), Ok(Some(Event::Header(_)))));
        assert!(matches!(
            p.next(&mut b),
            Err(StreamError::Limit(Limit::TokenSize | Limit::StanzaSize))
        ));
    }

    /// Every stanza the parser accepts can be written out again: the tree
    /// writer panics on reserved namespaces, so the parser must refuse them.
    #[test]
    fn reserved_namespaces() {
        let refused = [
            "<message xmlns='http://www.w3.org/2000/xmlns/'/>",
            "<x:message xmlns:x='http://www.w3.org/2000/xmlns/'/>",
            "<message x:a='1' xmlns:x='http://www.w3.org/2000/xmlns/'/>",
            "<message xmlns:xmlns='urn:a'/>",
            "<message xmlns='http://www.w3.org/XML/1998/namespace'/>",
            "<x:message xmlns:x='http://www.w3.org/XML/1998/namespace'/>",
            "<message><x:a xmlns:x='http://www.w3.org/XML/1998/namespace'/></message>",
            "<message xmlns:xml='urn:not-xml'/>",
        ];
        for c in refused {
            let doc = format!("{HDR}{c}");
            assert_eq!(
                parse_all(doc.as_bytes(), 7).unwrap_err(),
                StreamError::NotWellFormed,
                "{c}"
            );
        }
        let accepted = [
            ("<message xml:lang='en'/>", "xml:lang='en'"),
            (
                "<message xmlns:xml='http://www.w3.org/XML/1998/namespace' xml:lang='de'/>",
                "xml:lang='de'",
            ),
        ];
        for (c, expect) in accepted {
            let doc = format!("{HDR}{c}");
            let evs = parse_all(doc.as_bytes(), 7).unwrap();
            let Event::Stanza(el) = &evs[1] else { panic!("{c}") };
            let out = el.to_xml();
            assert!(out.contains(expect), "{c} => {out}");
        }
    }

    /// A prefix re-bound in a child, a prefix named like the writer's own,
    /// and the fuzzer's find (`stream` re-bound inside a stanza) are written
    /// out again with the same expanded names.
    #[test]
    fn rebound_prefixes_are_written_out_again() {
        let cases = [
            "<iq type='set' id='a' xmlns:stream='urn:a'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind' xmlns:stream='urn:b' stream:x='1'><resource>r</resource></bind></iq>",
            "<message xmlns:x='urn:a' x:a='1'><body xmlns:x='urn:b' x:a='2'/></message>",
            "<message xmlns:tns0='urn:a' tns0:a='1'><x:body xmlns:x='urn:b' x:b='2' xmlns:y='urn:c' y:c='3'/></message>",
            "<message xmlns:tns1='urn:a'><tns1:x><y xmlns='urn:b' xmlns:tns0='urn:c' tns0:q='1' xmlns:z='urn:d' z:r='2'/></tns1:x></message>",
        ];
        for c in cases {
            let doc = format!("{HDR}{c}");
            let evs = parse_all(doc.as_bytes(), 5).unwrap();
            let Event::Stanza(el) = &evs[1] else { panic!("{c}") };
            let out = el.to_xml();
            let again = parse_all(format!("{HDR}{out}").as_bytes(), 3).unwrap();
            let Event::Stanza(el2) = &again[1] else { panic!("{out}") };
            assert_eq!(el, el2, "{c} => {out}");
        }
    }

    #[test]
    fn colliding_expanded_attribute_names_are_not_well_formed() {
        let refused = [
            // Two prefixes bound to one namespace on the element itself.
            "<message xmlns:x='urn:a' xmlns:y='urn:a' x:a='1' y:a='2'/>",
            // One declared on a parent, one here.
            "<message xmlns:x='urn:a'><body xmlns:y='urn:a' x:b='1' y:b='2'/></message>",
            // The declarations after the attributes they bind.
            "<message x:a='1' y:a='2' xmlns:x='urn:a' xmlns:y='urn:a'/>",
            // xml: and a prefix bound to the XML namespace name is refused earlier;
            // the xml prefix twice is a plain duplicate.
            "<message xml:lang='en' xml:lang='de'/>",
            // Plain duplicates, first and last or in the middle.
            "<message a='1' b='2' a='3'/>",
            "<message to='x' id='1' type='chat' id='2' from='y'/>",
        ];
        for c in refused {
            let doc = format!("{HDR}{c}");
            assert_eq!(
                parse_all(doc.as_bytes(), 7).unwrap_err(),
                StreamError::NotWellFormed,
                "{c}"
            );
        }
        let accepted = [
            // Same local name, different namespaces.
            "<message xmlns:x='urn:a' xmlns:y='urn:b' x:a='1' y:a='2'/>",
            // A prefixed and an unprefixed attribute never collide.
            "<message xmlns:x='urn:a' a='1' x:a='2'/>",
            // A prefix re-bound in a child scope.
            "<message xmlns:x='urn:a' x:a='1'><body xmlns:x='urn:b' x:a='2'/></message>",
            // The same names on parent and child; names that are prefixes of each other.
            "<message id='1' to='a'><body id='2' to='b'/></message>",
            "<message a='1' ab='2' b='3' x:a='4' xmlns:x='urn:a'/>",
        ];
        for c in accepted {
            let doc = format!("{HDR}{c}");
            assert!(parse_all(doc.as_bytes(), 7).is_ok(), "{c}");
        }
    }

    /// A parser freed between stanzas and rebuilt from the header's
    /// declarations reads what follows exactly as the original would,
    /// prefixes declared on the header included; mid-stanza there is no
    /// rest point.
    #[test]
    fn a_rebuilt_parser_continues_the_stream() {
        let hdr = "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' to='a' version='1.0'>";
        let rest = "<db:result from='b' to='a'>key</db:result><message to='x@a'><body>hi</body></message>";
        let whole = parse_all(format!("{hdr}{rest}").as_bytes(), 1000).unwrap();
        let mut p = StreamParser::new(LIM);
        let mut b = hdr.as_bytes();
        assert!(matches!(p.next(&mut b).unwrap(), Some(Event::Header(_))));
        let decls = p.rest_point().expect("at rest after the header");
        let mut b = &b"<presence><sta"[..];
        assert!(p.next(&mut b).unwrap().is_none());
        assert!(p.rest_point().is_none(), "no rest point inside a stanza");
        let mut q = StreamParser::resume(LIM, &decls);
        let mut b = rest.as_bytes();
        let mut got = Vec::new();
        while let Some(ev) = q.next(&mut b).unwrap() {
            got.push(ev);
            // After a stanza the parser holds nothing of what follows (the
            // bytes left are the caller's): a parser rebuilt here reads the
            // rest as this one does.
            let point = q.rest_point().expect("at rest after each stanza");
            if !b.is_empty() {
                let mut r = StreamParser::resume(LIM, &point);
                let mut left = b;
                let Some(Event::Stanza(next)) = r.next(&mut left).unwrap() else {
                    panic!("a stanza follows")
                };
                assert_eq!(next.name(), "message");
            }
        }
        let (Event::Stanza(a), Event::Stanza(b2)) = (&whole[1], &got[0]) else {
            panic!()
        };
        assert_eq!(a, b2);
        assert_eq!(b2.ns(), "jabber:server:dialback");
        let (Event::Stanza(a), Event::Stanza(b2)) = (&whole[2], &got[1]) else {
            panic!()
        };
        assert_eq!(a, b2);
    }

    #[test]
    fn attr_finds_what_element_attr_finds() {
        let mut b = &b"<message to='a@b' from='c@d/e' type='chat' id='1' xml:lang='en' xmlns:x='urn:x' x:type='no' typ='y'><body id='2'/></message>"[..];
        let mut p = StreamParser::new(LIM);
        let mut hdr = HDR.as_bytes();
        assert!(matches!(p.next(&mut hdr), Ok(Some(Event::Header(_)))));
        let Ok(Some(Event::Stanza(el))) = p.next(&mut b) else {
            panic!()
        };
        for name in [
            "to", "from", "type", "id", "lang", "xml:lang", "t", "typ", "x", "", "types", "body",
        ] {
            assert_eq!(attr(&el, name), el.attr(name), "{name}");
        }
        assert_eq!(attr(&el, "type"), Some("chat"));
        assert_eq!(attr(&el, "lang"), None);
        let bare = elem("presence", NS_CLIENT);
        assert_eq!(attr(&bare, "type"), None);
    }

    #[test]
    fn whitespace_keepalives_do_not_accumulate() {
        let mut p = StreamParser::new(LIM);
        let mut b = HDR.as_bytes();
        assert!(matches!(p.next(&mut b).unwrap(), Some(Event::Header(_))));
        for _ in 0..10_000 {
            let mut b = &b" "[..];
            assert!(p.next(&mut b).unwrap().is_none());
        }
        let mut b = &b"<iq type='get' id='1'/>"[..];
        assert!(matches!(p.next(&mut b).unwrap(), Some(Event::Stanza(_))));
    }
}

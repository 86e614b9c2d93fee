//! Stanza-level helpers: kinds, addressing and RFC 6120 §8.3 errors.

use super::xml::{elem, ElementExt, NS_CLIENT, NS_STANZAS};
use jid::Jid;
use minidom::Element;
use std::sync::Arc;

/// RFC 6120 §8.3.3 conditions, with the error type each one carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    BadRequest,
    Conflict,
    FeatureNotImplemented,
    Forbidden,
    InternalServerError,
    ItemNotFound,
    JidMalformed,
    NotAcceptable,
    NotAllowed,
    NotAuthorized,
    PolicyViolation,
    RecipientUnavailable,
    RegistrationRequired,
    RemoteServerNotFound,
    RemoteServerTimeout,
    ResourceConstraint,
    ServiceUnavailable,
    UndefinedCondition,
    UnexpectedRequest,
}

impl Condition {
    pub fn name(self) -> &'static str {
        use Condition::*;
        match self {
            BadRequest => "bad-request",
            Conflict => "conflict",
            FeatureNotImplemented => "feature-not-implemented",
            Forbidden => "forbidden",
            InternalServerError => "internal-server-error",
            ItemNotFound => "item-not-found",
            JidMalformed => "jid-malformed",
            NotAcceptable => "not-acceptable",
            NotAllowed => "not-allowed",
            NotAuthorized => "not-authorized",
            PolicyViolation => "policy-violation",
            RecipientUnavailable => "recipient-unavailable",
            RegistrationRequired => "registration-required",
            RemoteServerNotFound => "remote-server-not-found",
            RemoteServerTimeout => "remote-server-timeout",
            ResourceConstraint => "resource-constraint",
            ServiceUnavailable => "service-unavailable",
            UndefinedCondition => "undefined-condition",
            UnexpectedRequest => "unexpected-request",
        }
    }

    /// The `type` attribute RFC 6120 suggests for the condition.
    pub fn error_type(self) -> &'static str {
        use Condition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation | UnexpectedRequest => "modify",
            Conflict
            | FeatureNotImplemented
            | Forbidden
            | ItemNotFound
            | NotAllowed
            | NotAuthorized
            | RemoteServerNotFound
            | ServiceUnavailable => "cancel",
            InternalServerError | RecipientUnavailable | RemoteServerTimeout | ResourceConstraint => "wait",
            UndefinedCondition => "cancel",
            RegistrationRequired => "auth",
        }
    }
}

/// A stanza error with an optional human-readable text and extra child.
#[derive(Debug, Clone)]
pub struct StanzaError {
    pub condition: Condition,
    pub text: Option<String>,
    pub extra: Option<Box<Element>>,
}

impl From<Condition> for StanzaError {
    fn from(condition: Condition) -> Self {
        StanzaError {
            condition,
            text: None,
            extra: None,
        }
    }
}

impl StanzaError {
    pub fn new(condition: Condition, text: impl Into<String>) -> Self {
        StanzaError {
            condition,
            text: Some(text.into()),
            extra: None,
        }
    }

    pub fn to_element(&self, by: Option<&str>) -> Element {
        let mut e = elem("error", NS_CLIENT)
            .with("type", self.condition.error_type())
            .with_opt("by", by)
            .child(elem(self.condition.name(), NS_STANZAS));
        if let Some(t) = &self.text {
            e = e.child(elem("text", NS_STANZAS).text_child(t.clone()));
        }
        if let Some(x) = &self.extra {
            e = e.child((**x).clone());
        }
        e
    }
}

/// The three stanza kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message,
    Presence,
    Iq,
}

impl Kind {
    pub fn of(el: &Element) -> Option<Kind> {
        if !el.has_ns(NS_CLIENT) {
            return None;
        }
        match el.name() {
            "message" => Some(Kind::Message),
            "presence" => Some(Kind::Presence),
            "iq" => Some(Kind::Iq),
            _ => None,
        }
    }

    /// The element name, also the label of the routed-stanza metric.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Presence => "presence",
            Kind::Iq => "iq",
        }
    }
}

/// A stanza on its way through the router and the module hooks, with what
/// every hook asks of it worked out once: its kind, its addresses (parsed
/// and normalised) and, once a hook needed it, its serialised form. Hooks
/// may change the element's children through [`Stanza::el_mut`] (which
/// drops the serialised form) but not its addresses.
pub struct Stanza {
    el: Element,
    pub kind: Kind,
    /// The sender, as its stream authenticated it.
    pub from: Jid,
    /// The address; the sender's bare JID when the stanza has no `to`.
    pub to: Jid,
    /// `el` serialised ([`ElementExt::to_xml`]), kept for the next hook
    /// that needs it: both archive rows of a message between two local
    /// accounts are written from one serialisation.
    xml: Option<Arc<str>>,
}

/// Why an element cannot be routed.
#[derive(Debug)]
pub enum Unroutable {
    /// Not a message, presence or IQ of `jabber:client`.
    NotAStanza,
    /// No `from`, or one that is not a JID.
    NoFrom,
    /// A `to` that is not a JID: the element comes back, to be bounced.
    BadTo(Element),
}

impl Stanza {
    /// Read a stanza's kind and addresses.
    pub fn new(el: Element) -> Result<Stanza, Unroutable> {
        let kind = Kind::of(&el).ok_or(Unroutable::NotAStanza)?;
        let from = from(&el).ok_or(Unroutable::NoFrom)?;
        Stanza::from_sender(el, kind, from)
    }

    /// A stanza whose `from` is already known as `from` (a local session's
    /// own address, just set on it).
    pub fn from_sender(el: Element, kind: Kind, from: Jid) -> Result<Stanza, Unroutable> {
        let to = match to(&el) {
            Ok(Some(t)) => t,
            Ok(None) => Jid::from(from.to_bare()),
            Err(_) => return Err(Unroutable::BadTo(el)),
        };
        Ok(Stanza {
            el,
            kind,
            from,
            to,
            xml: None,
        })
    }

    pub fn el(&self) -> &Element {
        &self.el
    }

    /// The element, to change its children (not its addresses): its
    /// serialised form is dropped.
    pub fn el_mut(&mut self) -> &mut Element {
        self.xml = None;
        &mut self.el
    }

    /// The `type` attribute (`""` when absent).
    pub fn typ(&self) -> &str {
        typ(&self.el)
    }

    /// The element serialised, made on the first call.
    pub fn xml(&mut self) -> Arc<str> {
        self.xml.get_or_insert_with(|| self.el.to_xml().into()).clone()
    }

    pub fn into_element(self) -> Element {
        self.el
    }

    /// The element, its sender and its address.
    pub fn into_parts(self) -> (Element, Jid, Jid) {
        (self.el, self.from, self.to)
    }
}

pub fn typ(el: &Element) -> &str {
    super::xml::attr(el, "type").unwrap_or("")
}

/// Parse the `to` attribute. `Ok(None)` when absent.
pub fn to(el: &Element) -> Result<Option<Jid>, Condition> {
    super::xml::attr(el, "to")
        .map(|t| jid(t).ok_or(Condition::JidMalformed))
        .transpose()
}

pub fn from(el: &Element) -> Option<Jid> {
    super::xml::attr(el, "from").and_then(jid)
}

/// Parse and normalise a JID to a fixed point. The jid crate's
/// normalisation is not always idempotent (`ax\u{1d34}` prints as `axH`,
/// which parses to `axh`): the printed form is parsed once more, so that
/// the router, blocklists and rosters see one spelling of an address; a
/// JID that still changes on a third round is refused (`None`).
pub fn jid(s: &str) -> Option<Jid> {
    let once = Jid::new(s).ok()?;
    if once.as_str() == s {
        // Printed as given: parsing it again would repeat this very parse
        // (the usual case: clients and the server send normalised JIDs).
        return Some(once);
    }
    let twice = Jid::new(once.as_str()).ok()?;
    if twice == once {
        return Some(once);
    }
    let thrice = Jid::new(twice.as_str()).ok()?;
    (thrice == twice).then_some(twice)
}

/// Turn `stanza` into the error reply for it, or `None` when it must not be
/// answered (it is an error itself, or an IQ result).
pub fn bounce(stanza: &Element, err: impl Into<StanzaError>, server: &str) -> Option<Element> {
    let t = typ(stanza);
    if t == "error" || (stanza.name() == "iq" && t == "result") {
        return None;
    }
    let err = err.into();
    let mut reply = elem(stanza.name(), NS_CLIENT).with("type", "error");
    if let Some(id) = stanza.attr("id") {
        reply.set("id", id);
    }
    if let Some(f) = stanza.attr("from") {
        reply.set("to", f);
    }
    // A `to` that is not a JID cannot be the error's sender (jid-malformed).
    reply.set(
        "from",
        stanza.attr("to").filter(|t| Jid::new(t).is_ok()).unwrap_or(server),
    );
    // Include the original payload so the sender can tell which request failed.
    if stanza.name() != "iq" || t == "get" || t == "set" {
        for c in stanza.children() {
            if c.name() != "error" {
                reply.append_child(c.clone());
            }
        }
    }
    Some(reply.child(err.to_element(None)))
}

/// An IQ result for `iq` with an optional payload.
pub fn iq_result(iq: &Element, payload: Option<Element>) -> Element {
    let mut r = elem("iq", NS_CLIENT).with("type", "result");
    if let Some(id) = iq.attr("id") {
        r.set("id", id);
    }
    if let Some(f) = iq.attr("from") {
        r.set("to", f);
    }
    if let Some(t) = iq.attr("to") {
        r.set("from", t);
    }
    if let Some(p) = payload {
        r.append_child(p);
    }
    r
}

/// The single payload child of an IQ get/set, or `bad-request`.
pub fn iq_payload(iq: &Element) -> Result<&Element, Condition> {
    let mut it = iq.children();
    match (it.next(), it.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(Condition::BadRequest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stanza_parses_its_addresses_once_and_keeps_its_text_true() {
        let el: Element =
            "<message xmlns='jabber:client' from='Alice@Example.org/phone' type='chat'><body>hi</body></message>"
                .parse()
                .unwrap();
        let mut s = Stanza::new(el).unwrap();
        assert_eq!(s.kind, Kind::Message);
        assert_eq!(s.from.as_str(), "alice@example.org/phone");
        // No `to`: the sender's own account.
        assert_eq!(s.to.as_str(), "alice@example.org");
        assert_eq!(s.typ(), "chat");
        let first = s.xml();
        assert!(Arc::ptr_eq(&first, &s.xml()), "made once, then shared");
        assert_eq!(&*first, s.el().to_xml());
        s.el_mut().append_child(elem("x", "urn:example"));
        let second = s.xml();
        assert!(!Arc::ptr_eq(&first, &second), "a changed element is serialised again");
        assert!(second.contains("urn:example"));

        let bad: Element = "<message xmlns='jabber:client' from='a@b/c' to='@@'/>".parse().unwrap();
        assert!(matches!(Stanza::new(bad), Err(Unroutable::BadTo(_))));
        let anonymous: Element = "<message xmlns='jabber:client' to='a@b'/>".parse().unwrap();
        assert!(matches!(Stanza::new(anonymous), Err(Unroutable::NoFrom)));
        let other: Element = "<r xmlns='urn:xmpp:sm:3' from='a@b'/>".parse().unwrap();
        assert!(matches!(Stanza::new(other), Err(Unroutable::NotAStanza)));
    }

    #[test]
    fn jids_are_normalised_to_a_fixed_point() {
        // One round gives axH; the second, axh; the result parses to itself.
        let j = jid("ax\u{1d34}@example.org").unwrap();
        assert_eq!(j.as_str(), "axh@example.org");
        assert_eq!(jid(j.as_str()).unwrap(), j);
        assert_eq!(jid("Alice@Example.ORG/Res").unwrap().as_str(), "alice@example.org/Res");
        assert!(jid("@@").is_none());
        // Found by the fuzzer: the crate accepts `ß--8` (its hyphen check
        // runs before `ß` maps to `ss`) and prints `ss--8`, which it refuses.
        assert!(jid::Jid::new("\u{df}--8.\u{da}$$/&").is_ok());
        assert!(jid("\u{df}--8.\u{da}$$/&").is_none());
        assert!(jid("\u{df}--8.example").is_none());
    }
}

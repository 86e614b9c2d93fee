//! Writing elements out: a direct serialiser for the shapes stanzas have
//! (no prefixes, attributes without a namespace or in `xml:`), straight
//! into the caller's buffer, with minidom's writer as the fallback for
//! anything else.
//!
//! minidom's writer is general (any prefix, any namespace on attributes)
//! and pays for it on every stanza: an encoder with B-tree namespace
//! tracking, a buffer and a copy per item, a name validated and copied
//! per element. The output here is what minidom writes for the same tree,
//! byte for byte (tests compare both, and a fuzz target re-parses them).

use minidom::{Element, Node};

/// Append `el` to `out`, serialised without an XML declaration. On error
/// (a name minidom refuses, a character XML cannot carry) `out` is left
/// as it was.
pub fn write_element(el: &Element, out: &mut Vec<u8>) -> Result<(), minidom::Error> {
    let start = out.len();
    match fast(el, None, out) {
        Ok(()) => return Ok(()),
        Err(NotFast::Shape) => out.truncate(start),
        Err(NotFast::Char) => {
            out.truncate(start);
            return Err(not_carriable());
        }
    }
    // minidom's writer panics on such characters ("encoder driven
    // incorrectly"): look for them first on this rarer path.
    if !carriable(el) {
        return Err(not_carriable());
    }
    let r = el.write_to(out);
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// `el` serialised to a string (no XML declaration); empty if minidom
/// could not write it either.
pub fn to_string(el: &Element) -> String {
    let mut out = Vec::with_capacity(256);
    if write_element(el, &mut out).is_err() {
        return String::new();
    }
    // Both writers emit UTF-8: names and text come from `String`s.
    String::from_utf8(out).unwrap_or_default()
}

/// Why the fast path did not write an element.
enum NotFast {
    /// Outside its shapes: minidom writes it.
    Shape,
    /// A character XML 1.0 cannot carry: nobody can write it.
    Char,
}

fn not_carriable() -> minidom::Error {
    minidom::Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "a character XML cannot carry",
    ))
}

/// No text, attribute value or namespace of `el` holds a character XML
/// cannot carry.
fn carriable(el: &Element) -> bool {
    let mut sink = Vec::new();
    let mut ok = |s: &str| {
        sink.clear();
        escape(s, true, &mut sink).is_ok()
    };
    el.attrs().iter().all(|((ns, _), v)| ok(ns.as_str()) && ok(v))
        && ok(&el.ns())
        && el.nodes().all(|n| match n {
            Node::Element(c) => carriable(c),
            Node::Text(t) => ok(t),
        })
}

/// Namespaces most stanzas and their children are in: the writer needs an
/// element's namespace as text when it differs from its parent's, and
/// minidom only hands it out as a new `String`; these are found by a
/// borrowed comparison instead.
const COMMON_NS: &[&str] = &[
    super::xml::NS_CLIENT,
    super::xml::NS_SERVER,
    super::ns::SID,
    super::ns::CARBONS,
    super::ns::FORWARD,
    super::ns::HINTS,
    super::ns::DELAY,
    super::ns::MAM,
    "urn:xmpp:receipts",
    "http://jabber.org/protocol/chatstates",
    "urn:xmpp:chat-markers:0",
    "urn:xmpp:sm:3",
    "eu.siacs.conversations.axolotl",
    "urn:xmpp:eme:0",
];

/// One element: `default` is the namespace in scope without a prefix
/// (`None` at the root, where minidom declares any non-empty namespace).
fn fast(el: &Element, default: Option<&str>, out: &mut Vec<u8>) -> Result<(), NotFast> {
    if !el.prefixes.declared_prefixes().is_empty() {
        return Err(NotFast::Shape);
    }
    let name = el.name();
    if !simple_name(name) {
        return Err(NotFast::Shape);
    }
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());

    // The namespace, declared when it is not the one in scope.
    let owned;
    let ns: &str = match default {
        Some(d) if el.has_ns(d) => d,
        _ => match COMMON_NS.iter().find(|n| el.has_ns(**n)) {
            Some(n) => n,
            None => {
                owned = el.ns();
                &owned
            }
        },
    };
    let declare = match default {
        Some(d) => d != ns,
        None => !ns.is_empty(),
    };
    if declare {
        out.extend_from_slice(b" xmlns='");
        escape(ns, true, out)?;
        out.push(b'\'');
    }

    for ((ans, aname), value) in el.attrs().iter() {
        let prefix: &[u8] = if ans.is_none() {
            b" "
        } else if *ans == rxml::Namespace::XML {
            b" xml:"
        } else {
            return Err(NotFast::Shape);
        };
        out.extend_from_slice(prefix);
        out.extend_from_slice(aname.as_bytes());
        out.extend_from_slice(b"='");
        escape(value, true, out)?;
        out.push(b'\'');
    }

    let mut nodes = el.nodes().peekable();
    if nodes.peek().is_none() {
        out.extend_from_slice(b"/>");
        return Ok(());
    }
    out.push(b'>');
    for node in nodes {
        match node {
            Node::Element(child) => fast(child, Some(ns), out)?,
            Node::Text(text) => escape(text, false, out)?,
        }
    }
    out.extend_from_slice(b"</");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
    Ok(())
}

/// An ASCII name that is certainly a valid XML name without a colon; any
/// other (non-ASCII letters, or not a name at all) goes through minidom,
/// which checks it in full.
fn simple_name(name: &str) -> bool {
    let b = name.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {}
        _ => return false,
    }
    b.iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// Escape as rxml's encoder does: `<`, `>`, `&` and CR always; in
/// attribute values also both quotes, LF and tab (which a parser would
/// otherwise normalise to spaces). Characters XML 1.0 cannot carry (C0
/// controls other than tab, LF, CR; U+FFFE, U+FFFF) are refused.
fn escape(s: &str, attr: bool, out: &mut Vec<u8>) -> Result<(), NotFast> {
    let b = s.as_bytes();
    let mut last = 0;
    for (i, &c) in b.iter().enumerate() {
        let rep: &[u8] = match c {
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'&' => b"&amp;",
            b'\r' => b"&#xd;",
            b'"' if attr => b"&#34;",
            b'\'' if attr => b"&#39;",
            b'\n' if attr => b"&#xa;",
            b'\t' if attr => b"&#x9;",
            b'\t' | b'\n' => continue,
            0..=0x1f => return Err(NotFast::Char),
            // U+FFFE and U+FFFF are EF BF BE / EF BF BF in UTF-8.
            0xbe | 0xbf if i >= 2 && b[i - 2] == 0xef && b[i - 1] == 0xbf => return Err(NotFast::Char),
            _ => continue,
        };
        out.extend_from_slice(&b[last..i]);
        out.extend_from_slice(rep);
        last = i + 1;
    }
    out.extend_from_slice(&b[last..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmpp::xml::ElementExt;

    fn minidom(el: &Element) -> Option<String> {
        let mut out = Vec::new();
        el.write_to(&mut out).ok()?;
        String::from_utf8(out).ok()
    }

    fn fast_only(el: &Element) -> Option<String> {
        let mut out = Vec::new();
        fast(el, None, &mut out).ok()?;
        Some(String::from_utf8(out).unwrap())
    }

    fn parse(s: &str) -> Element {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn forget(el: &mut Element) {
        el.prefixes = Default::default();
        for c in el.children_mut() {
            forget(c);
        }
    }

    /// `s` read back as a document would read it: inside a root that
    /// declares no default namespace (minidom's reader wants a namespaced
    /// root), without the prefixes the reader records.
    fn reparse(s: &str) -> Element {
        let mut w = parse(&format!("<w:w xmlns:w='urn:wrapper' xmlns=''>{s}</w:w>"));
        let mut el = w.unshift_child().expect("one element");
        forget(&mut el);
        el
    }

    /// Elements of varied shapes: namespaces switching on children and
    /// back, unnamespaced children, xml:lang, every character that needs
    /// escaping in text and attributes, Unicode.
    fn samples() -> Vec<Element> {
        let mut v = Vec::new();
        let msg = Element::builder("message", "jabber:client")
            .attr(rxml::NcName::try_from("to").unwrap(), "juliet@example.com/balcony")
            .attr(rxml::NcName::try_from("type").unwrap(), "chat")
            .append(Element::builder("body", "jabber:client").append("Wherefore art thou? <&>\"' é ✓ 𝄞"))
            .append(Element::bare("active", "http://jabber.org/protocol/chatstates"))
            .append(
                Element::builder("stanza-id", "urn:xmpp:sid:0")
                    .attr(rxml::NcName::try_from("id").unwrap(), "a'b\"c<d>&e\tf\ng\rh")
                    .build(),
            )
            .build();
        v.push(msg.clone());
        let mut lang = msg.clone();
        lang.attrs_mut().insert(
            rxml::Namespace::XML,
            rxml::NcName::try_from("lang").unwrap(),
            "en".into(),
        );
        v.push(lang);
        // A child in another namespace whose children return to the outer one.
        v.push(
            Element::builder("iq", "jabber:client")
                .append(
                    Element::builder("query", "urn:a")
                        .append(Element::bare("item", "jabber:client"))
                        .append(Element::builder("x", "urn:a").append("t\r\nu"))
                        .append(Element::bare("none", "")),
                )
                .build(),
        );
        // No namespace at the root, namespaced and unnamespaced below it.
        v.push(
            Element::builder("root", "")
                .append(Element::bare("a", "urn:x"))
                .append(Element::bare("b", ""))
                .build(),
        );
        // Mixed content, a namespace needing escaping.
        let mut mixed = Element::bare("p", "urn:x?a=1&b='2'");
        mixed.append_text_node("one ");
        mixed.append_child(Element::bare("em", "urn:x?a=1&b='2'").text_child("two"));
        mixed.append_text_node(" three > four");
        v.push(mixed);
        // Parsed stanzas (prefixes forgotten as the stream parser does).
        for s in [
            "<message xmlns='jabber:client' from='a@b/c' id='1'><body>hi &amp; bye</body><request xmlns='urn:xmpp:receipts'/></message>",
            "<presence xmlns='jabber:client'><show>away</show><status xml:lang='de'>weg</status><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v='/></presence>",
            "<iq xmlns='jabber:client' type='result' id='x'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:omemo:2:devices'><item id='current'><devices xmlns='urn:xmpp:omemo:2'><device id='1'/></devices></item></items></pubsub></iq>",
        ] {
            let mut el = parse(s);
            forget(&mut el);
            v.push(el);
        }
        v
    }

    #[test]
    fn byte_for_byte_what_minidom_writes() {
        for el in samples() {
            let slow = minidom(&el).expect("minidom writes it");
            let quick = fast_only(&el).expect("in the fast path's shapes");
            assert_eq!(quick, slow);
            assert_eq!(to_string(&el), slow);
            // And both mean the element they came from.
            assert_eq!(reparse(&quick), el, "{quick}");
            assert_eq!(reparse(&slow), el, "{slow}");
        }
    }

    #[test]
    fn other_shapes_fall_back_to_minidom() {
        // A prefix declared on a parsed element, an attribute in a namespace.
        let prefixed = parse("<x:a xmlns:x='urn:x' xmlns:y='urn:y' y:b='1'><x:c/></x:a>");
        assert!(fast_only(&prefixed).is_none());
        assert_eq!(to_string(&prefixed), minidom(&prefixed).unwrap());
        let mut nsattr = Element::bare("a", "urn:x");
        nsattr.attrs_mut().insert(
            rxml::Namespace::from("urn:y"),
            rxml::NcName::try_from("b").unwrap(),
            "1".into(),
        );
        assert!(fast_only(&nsattr).is_none());
        let again = parse(&to_string(&nsattr));
        assert_eq!(again.attr_ns("urn:y", "b"), Some("1"));
        // A non-ASCII name is checked by minidom.
        let uni = Element::bare("café", "urn:x");
        assert!(fast_only(&uni).is_none());
        assert_eq!(to_string(&uni), minidom(&uni).unwrap());
    }

    #[test]
    fn what_xml_cannot_carry_is_refused_without_a_panic() {
        for bad in ["a\u{1}b", "\u{fffe}", "x\u{ffff}"] {
            let el = Element::builder("a", "urn:x").append(bad).build();
            assert!(fast_only(&el).is_none(), "{bad:?}");
            let mut out = b"kept".to_vec();
            assert!(write_element(&el, &mut out).is_err());
            assert_eq!(out, b"kept");
            assert_eq!(to_string(&el), "");
        }
        // Also on the fallback path (minidom's writer would panic).
        let mut el = Element::bare("a", "urn:x");
        el.attrs_mut().insert(
            rxml::Namespace::from("urn:y"),
            rxml::NcName::try_from("b").unwrap(),
            "\u{2}".into(),
        );
        assert!(write_element(&el, &mut Vec::new()).is_err());
        // A name minidom refuses.
        let el = Element::bare("a b", "urn:x");
        assert!(minidom(&el).is_none());
        assert_eq!(to_string(&el), "");
        // An empty text node (which no reader gives back) is written as
        // minidom writes it.
        let mut el = Element::bare("a", "urn:x");
        el.append_text_node("");
        assert_eq!(fast_only(&el).as_deref(), Some("<a xmlns='urn:x'></a>"));
        assert_eq!(fast_only(&el), minidom(&el));
        // U+FFFD and other non-characters' neighbours are fine.
        let el = Element::builder("a", "urn:x")
            .append("\u{fffd}\u{fffc}\u{effe}")
            .build();
        assert_eq!(fast_only(&el), minidom(&el));
    }
}

//! Fuzz target: the XMPP stream parser, fed in chunks of a size the input
//! chooses; every stanza is written out again by the server's serialiser
//! (and by minidom's, which must agree byte for byte) and read back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use minidom::Element;
use pushbox::xmpp::xml::{Event, ParserLimits, StreamParser};
use pushbox::xmpp::xml_write::write_element;

const LIMITS: ParserLimits = ParserLimits {
    max_stanza_size: 4096,
    max_depth: 8,
    max_attributes: 16,
    // Far below the stanza limit, so that long text is read in pieces.
    max_token_size: 256,
};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut p = StreamParser::new(LIMITS);
    let mut events = 0usize;
    for piece in rest.chunks(chunk) {
        let mut buf = piece;
        loop {
            match p.next(&mut buf) {
                Ok(Some(ev)) => {
                    events += 1;
                    if let Event::Stanza(el) = ev {
                        round_trip(&el);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
            // Each event consumes input or ends a stanza: a stuck parser would loop here.
            assert!(events <= rest.len() + 2, "more events than bytes");
        }
        assert!(buf.is_empty(), "the parser left bytes unread without asking for more");
    }
});

/// What the server does with every stanza: serialise it again. The direct
/// serialiser writes what minidom's writer does, and what it writes reads
/// back as the same stanza.
fn round_trip(el: &Element) {
    let mut ours = b"kept".to_vec();
    let r = write_element(el, &mut ours);
    let mut theirs = b"kept".to_vec();
    let r2 = el.write_to(&mut theirs);
    assert_eq!(r.is_ok(), r2.is_ok(), "{r:?} vs {r2:?}");
    if r.is_err() {
        assert_eq!(ours, b"kept", "the buffer is left as it was");
        return;
    }
    assert_eq!(
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(&theirs),
        "both writers write the same bytes"
    );
    // Read back in a stream whose default namespace is not the stanza's. A
    // stanza in no namespace (`<x xmlns=''/>` at stream level) is written,
    // by both writers, without a declaration: it means the same only where
    // no default namespace is in scope.
    let default = if el.has_ns("") { "" } else { "urn:other" };
    let mut doc =
        format!("<stream:stream xmlns='{default}' xmlns:stream='http://etherx.jabber.org/streams'>").into_bytes();
    doc.extend_from_slice(&ours[4..]);
    let mut p = StreamParser::new(ROUND_TRIP);
    let mut buf = &doc[..];
    assert!(matches!(p.next(&mut buf), Ok(Some(Event::Header(_)))));
    match p.next(&mut buf) {
        Ok(Some(Event::Stanza(back))) => assert_eq!(&back, el, "{}", String::from_utf8_lossy(&ours)),
        other => panic!("{other:?} reading back {}", String::from_utf8_lossy(&ours)),
    }
}

/// Reading back: the written form may be larger than the input (escapes,
/// declarations repeated on children).
const ROUND_TRIP: ParserLimits = ParserLimits {
    max_stanza_size: 1 << 20,
    max_depth: 64,
    max_attributes: 1024,
    max_token_size: 1 << 20,
};

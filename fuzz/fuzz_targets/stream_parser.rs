//! Fuzz target: the XMPP stream parser, fed in chunks of a size the input chooses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushbox::xmpp::xml::{Event, ParserLimits, StreamParser};

const LIMITS: ParserLimits = ParserLimits {
    max_stanza_size: 4096,
    max_depth: 8,
    max_attributes: 16,
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
                        // What the server does with every stanza: serialise it again.
                        let mut out = Vec::new();
                        let _ = el.write_to(&mut out);
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

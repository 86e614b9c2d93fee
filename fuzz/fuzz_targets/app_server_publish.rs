//! Fuzz target: XEP-0357 publish IQs to the app server, from bytes through the stream parser to the
//! node, secret and priority.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushbox::xmpp::{
    services::app_server::parse_publish,
    stanza::iq_payload,
    xml::{Event, ParserLimits, StreamParser},
};

const LIMITS: ParserLimits = ParserLimits {
    max_stanza_size: 8192,
    max_depth: 12,
    max_attributes: 16,
    max_token_size: pushbox::xmpp::xml::MAX_TOKEN_SIZE,
};

const HEADER: &[u8] = b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
    to='push.example.org' version='1.0'>";

fuzz_target!(|data: &[u8]| {
    let mut p = StreamParser::new(LIMITS);
    let mut buf = HEADER;
    while let Ok(Some(_)) = p.next(&mut buf) {}
    let mut buf = data;
    loop {
        match p.next(&mut buf) {
            Ok(Some(Event::Stanza(st))) => {
                let Ok(payload) = iq_payload(&st) else { continue };
                if let Ok(publish) = parse_publish(payload) {
                    // What the app server hashes and looks up.
                    let _ = (publish.node.len(), publish.secret.len(), publish.priority);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
});

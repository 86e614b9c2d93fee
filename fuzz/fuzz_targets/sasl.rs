//! Fuzz target: SASL message parsing (SCRAM client-first and client-final, PLAIN).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushbox::xmpp::sasl::{parse_plain, scram_client_first, ChannelBindings, Mechanism, ScramKeys, ScramServer};
use std::sync::OnceLock;

fn keys() -> &'static ScramKeys {
    static K: OnceLock<ScramKeys> = OnceLock::new();
    // Few iterations: the target checks parsing, not key derivation.
    K.get_or_init(|| ScramKeys::derive_with_salt("pw", b"0123456789abcdef", 1))
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mech = match sel % 4 {
        0 => Mechanism::ScramSha256,
        1 => Mechanism::ScramSha1,
        2 => Mechanism::ScramSha256Plus,
        _ => Mechanism::ScramSha1Plus,
    };
    // With bit 2 the connection offers both bindings, so -PLUS parses.
    let cb = if sel & 4 != 0 {
        ChannelBindings {
            tls_exporter: Some(vec![7u8; 32]),
            tls_server_end_point: Some(vec![9u8; 32]),
        }
    } else {
        ChannelBindings::default()
    };
    match sel >> 3 {
        0 => {
            let _ = parse_plain(rest);
        }
        1 => {
            let _ = scram_client_first(mech, rest, &cb);
        }
        _ => {
            // A valid first message, then the fuzzed final one (split at the first NUL:
            // the first part is used as the client-first message when it parses).
            let (first, fin) = match rest.iter().position(|b| *b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (&b"n,,n=alice,r=clientnonce"[..], rest),
            };
            let Ok(first) = scram_client_first(mech, first, &cb) else {
                return;
            };
            let known = sel & 8 != 0;
            let (server, _server_first) = ScramServer::new(mech, first, known.then(|| keys().clone()), b"secret", &cb);
            // Random input must never authenticate.
            assert!(server.finish(fin, &cb).is_err(), "fuzzed proof accepted");
        }
    }
});

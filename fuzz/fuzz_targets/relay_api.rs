//! Fuzz target: the relay API's request bodies (JSON or form-encoded) and the field checks of every endpoint.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushbox::http::relay_api::fuzzing::request;

fuzz_target!(|data: &[u8]| {
    // First byte: the endpoint (low bits) and the content type (high bit).
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    if let Err(status) = request(sel & 0x7f, sel & 0x80 != 0, body) {
        // A refused body is a client error, never a server error.
        assert!(status == 400 || status == 413, "answer {status}");
    }
});

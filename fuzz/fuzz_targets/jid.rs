//! Fuzz target: JID parsing and username normalisation; what parses must
//! print and parse again to the same JID.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(j) = jid::Jid::new(s) {
        let again = jid::Jid::new(j.as_str()).expect("a printed JID parses");
        assert_eq!(again, j, "JID round trip");
    }
    if let Ok(u) = pushbox::store::accounts::normalize(s) {
        assert_eq!(
            pushbox::store::accounts::normalize(&u).ok().as_deref(),
            Some(u.as_str()),
            "normalisation is idempotent"
        );
    }
});

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
        // One parse is not always a fixed point in the jid crate (docs/reliability.md:
        // "ax\u{1d34}" prints as "axH", which parses to "axh"); a second one must be.
        let third = jid::Jid::new(again.as_str()).expect("a printed JID parses");
        assert_eq!(third, again, "JID normalisation settles after two rounds");
    }
    // What the router uses: a fixed point after one call.
    if let Some(j) = pushbox::xmpp::stanza::jid(s) {
        assert_eq!(
            pushbox::xmpp::stanza::jid(j.as_str()),
            Some(j),
            "stanza::jid is a fixed point"
        );
    }
    // Usernames: what normalises is a fixed point (names that do not settle
    // in one round are refused; docs/reliability.md).
    if let Ok(u) = pushbox::store::accounts::normalize(s) {
        assert_eq!(
            pushbox::store::accounts::normalize(&u).ok().as_deref(),
            Some(u.as_str()),
            "username normalisation is idempotent"
        );
    }
});

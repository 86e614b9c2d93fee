//! Fuzz target: JID parsing and username normalisation; what pushbox
//! accepts prints and parses again to the same JID.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    // The jid crate alone is not a fixed point: one parse can print a form
    // that parses to something else (`ax\u{1d34}` → `axH` → `axh`), or a
    // form it refuses (`ß--8` passes its hyphen check before mapping and
    // prints as `ss--8`, which fails it; docs/reliability.md). pushbox
    // reads every stanza address through `stanza::jid`, which settles the
    // first kind and refuses the second.
    if let Ok(j) = jid::Jid::new(s) {
        if jid::Jid::new(j.as_str()).is_err() {
            assert!(
                pushbox::xmpp::stanza::jid(s).is_none(),
                "an address whose printed form does not parse is refused"
            );
        }
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

//! Tigase's extensions to XEP-0357 that Siskin and Snikket iOS use:
//! `tigase:push:encrypt:0` (the notification is sealed with AES-128-GCM under
//! a key the client gave in `<enable/>`, so the app server and the platform
//! push service never read the sender or text), `tigase:push:priority:0`
//! (pushes a person should see are marked `high`) and `tigase:push:jingle:0`
//! (call invites are flagged so the app can ring).

use super::push::Event;
use crate::xmpp::{
    stanza::{Condition, StanzaError},
    xml::{elem, ElementExt},
};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use minidom::Element;
use ring::{
    aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, NONCE_LEN},
    rand::{SecureRandom, SystemRandom},
};

pub const NS_ENCRYPT: &str = "tigase:push:encrypt:0";
/// The one algorithm offered, advertised as its own feature.
pub const NS_ENCRYPT_AES_128_GCM: &str = "tigase:push:encrypt:aes-128-gcm";
pub const NS_PRIORITY: &str = "tigase:push:priority:0";
pub const NS_JINGLE: &str = "tigase:push:jingle:0";
const ALG: &str = "aes-128-gcm";
const KEY_LEN: usize = 16;
/// Longest message text put in an encrypted payload, in characters.
const MAX_BODY: usize = 255;

/// The key of an `<encrypt/>` child of `<enable/>`: `Ok(None)` without one,
/// an error for another algorithm or a key that is not 16 bytes of base64.
pub fn parse_encrypt(enable: &Element) -> Result<Option<Vec<u8>>, StanzaError> {
    let Some(e) = enable.get_child("encrypt", NS_ENCRYPT) else {
        return Ok(None);
    };
    if e.attr("alg") != Some(ALG) {
        return Err(StanzaError::new(
            Condition::FeatureNotImplemented,
            "the only push encryption offered is alg='aes-128-gcm'",
        ));
    }
    let text: String = e.text().chars().filter(|c| !c.is_whitespace()).collect();
    match B64.decode(text.as_bytes()) {
        Ok(k) if k.len() == KEY_LEN => Ok(Some(k)),
        _ => Err(StanzaError::new(
            Condition::BadRequest,
            "the push encryption key must be 16 bytes in base64",
        )),
    }
}

/// Whether the push should alert the user (text, encrypted message, call).
pub fn is_high(event: &Event) -> bool {
    !event.subscription && (event.important || event.body.is_some())
}

/// `<priority xmlns='tigase:push:priority:0'>high</priority>`.
pub fn priority_element() -> Element {
    elem("priority", NS_PRIORITY).text_child("high")
}

/// The JSON the device decrypts: `unread`, `sender`, `type` (`chat`, `call`,
/// `subscribe`), `message` for chats, `sid` and `media` for calls.
pub fn payload(event: &Event, count: u32) -> serde_json::Value {
    let mut p = serde_json::json!({ "unread": count });
    if let Some(s) = &event.sender {
        p["sender"] = s.to_bare().to_string().into();
    }
    if event.subscription {
        p["type"] = "subscribe".into();
    } else if let Some(call) = &event.call {
        p["type"] = "call".into();
        p["sid"] = call.sid.clone().into();
        p["media"] = call.media.clone().into();
        // The device answers the call to this resource.
        if let Some(s) = &event.sender {
            p["sender"] = s.to_string().into();
        }
    } else {
        p["type"] = "chat".into();
        let text = if event.encrypted {
            Some("You have received an encrypted message".to_string())
        } else {
            event.body.as_ref().map(|b| b.chars().take(MAX_BODY).collect())
        };
        if let Some(t) = text {
            p["message"] = t.into();
        }
    }
    p
}

/// Seal `plain` with AES-128-GCM under `key` and a fresh random 12-byte IV;
/// the result is the ciphertext followed by the 16-byte tag.
pub fn seal(key: &[u8], plain: &[u8]) -> anyhow::Result<([u8; NONCE_LEN], Vec<u8>)> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key).map_err(|_| anyhow::anyhow!("bad key length"))?);
    let mut iv = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut iv)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let mut buf = plain.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut buf)
        .map_err(|_| anyhow::anyhow!("sealing failed"))?;
    Ok((iv, buf))
}

/// `<encrypted xmlns='tigase:push:encrypt:0' iv='…'>base64</encrypted>`
/// (with `type='voip'` for a call) carrying [`payload`].
pub fn encrypted_element(key: &[u8], event: &Event, count: u32) -> anyhow::Result<Element> {
    let json = payload(event, count).to_string();
    let (iv, sealed) = seal(key, json.as_bytes())?;
    let mut e = elem("encrypted", NS_ENCRYPT)
        .with("iv", B64.encode(iv))
        .text_child(B64.encode(sealed));
    if event.call.is_some() {
        e.set("type", "voip");
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmpp::modules::push::Call;

    fn open(key: &[u8], iv: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key).ok()?);
        let mut buf = sealed.to_vec();
        let n = Nonce::try_assume_unique_for_key(iv).ok()?;
        key.open_in_place(n, Aad::empty(), &mut buf).ok().map(|p| p.to_vec())
    }

    #[test]
    fn enable_key_is_checked() {
        let e = |s: &str| s.parse::<Element>().unwrap();
        let ok = e("<enable xmlns='urn:xmpp:push:0'><encrypt xmlns='tigase:push:encrypt:0' alg='aes-128-gcm'>AAECAwQFBgcICQoLDA0ODw==</encrypt></enable>");
        assert_eq!(parse_encrypt(&ok).unwrap().unwrap(), (0u8..16).collect::<Vec<_>>());
        let none = e("<enable xmlns='urn:xmpp:push:0'/>");
        assert!(parse_encrypt(&none).unwrap().is_none());
        let short = e("<enable xmlns='urn:xmpp:push:0'><encrypt xmlns='tigase:push:encrypt:0' alg='aes-128-gcm'>AAEC</encrypt></enable>");
        assert_eq!(parse_encrypt(&short).unwrap_err().condition, Condition::BadRequest);
        let alg = e("<enable xmlns='urn:xmpp:push:0'><encrypt xmlns='tigase:push:encrypt:0' alg='aes-256-gcm'>AAECAwQFBgcICQoLDA0ODw==</encrypt></enable>");
        assert_eq!(
            parse_encrypt(&alg).unwrap_err().condition,
            Condition::FeatureNotImplemented
        );
    }

    #[test]
    fn sealed_payload_opens_with_the_key_and_fails_when_tampered() {
        let key = [7u8; 16];
        let ev = Event {
            sender: Some("romeo@example.org/phone".parse().unwrap()),
            body: Some("hi".into()),
            important: false,
            subscription: false,
            encrypted: false,
            call: None,
        };
        let el = encrypted_element(&key, &ev, 3).unwrap();
        let iv = B64.decode(el.attr("iv").unwrap()).unwrap();
        let mut sealed = B64.decode(el.text()).unwrap();
        let plain = open(&key, &iv, &sealed).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(v["unread"], 3);
        assert_eq!(v["sender"], "romeo@example.org");
        assert_eq!(v["message"], "hi");
        assert_eq!(v["type"], "chat");
        assert!(el.attr("type").is_none());
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(open(&key, &iv, &sealed).is_none(), "the tag is checked");
        // A fresh IV each time.
        let other = encrypted_element(&key, &ev, 3).unwrap();
        assert_ne!(other.attr("iv"), el.attr("iv"));
    }

    #[test]
    fn call_invites_are_voip() {
        let ev = Event {
            sender: Some("romeo@example.org/phone".parse().unwrap()),
            body: None,
            important: true,
            subscription: false,
            encrypted: false,
            call: Some(Call {
                sid: "c1".into(),
                media: vec!["audio".into()],
            }),
        };
        let p = payload(&ev, 1);
        assert_eq!(p["type"], "call");
        assert_eq!(p["sid"], "c1");
        assert_eq!(p["media"][0], "audio");
        assert_eq!(p["sender"], "romeo@example.org/phone");
        assert_eq!(encrypted_element(&[1; 16], &ev, 1).unwrap().attr("type"), Some("voip"));
        assert!(is_high(&ev));
    }
}

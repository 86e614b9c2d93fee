//! TURN long-term credentials (RFC 8489 §9.2) with the "TURN REST API"
//! scheme that XEP-0215 hands out: username `expiry:user`, password
//! base64(HMAC-SHA1(secret, username)). The built-in server checks them in
//! process; coturn's `use-auth-secret` checks the same ones. Nonces are
//! stateless: an expiry and the client's address under a per-process key.

use crate::store::scram::{hmac, Hash};
use base64::{
    engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD},
    Engine,
};
use md5::{Digest, Md5};
use std::{
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// TURN REST credentials for `user`, valid for `ttl` from `now`: the
/// username, the password, and when they expire.
pub fn credentials(secret: &str, user: &str, ttl: Duration, now: SystemTime) -> (String, String, SystemTime) {
    let expires = now + ttl;
    let exp = expires.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let username = format!("{exp}:{user}");
    let password = password(secret, &username);
    (username, password, expires)
}

/// The REST-API password of `username`: base64(HMAC-SHA1(secret, username)).
pub fn password(secret: &str, username: &str) -> String {
    B64.encode(hmac(Hash::Sha1, secret.as_bytes(), username.as_bytes()))
}

/// Why a REST username is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not `expiry:user`.
    Malformed,
    /// Its expiry has passed.
    Expired,
}

/// The user part of a REST username that has not expired at `now`.
pub fn check_username(username: &str, now: SystemTime) -> Result<&str, Refused> {
    let (exp, user) = username.split_once(':').ok_or(Refused::Malformed)?;
    let exp: u64 = exp.parse().map_err(|_| Refused::Malformed)?;
    if user.is_empty() {
        return Err(Refused::Malformed);
    }
    let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if exp <= now {
        return Err(Refused::Expired);
    }
    Ok(user)
}

/// The long-term key: MD5(username ":" realm ":" password). Realm and
/// password are ASCII here (a DNS name, base64), so the OpaqueString
/// preparation RFC 8489 asks for leaves them unchanged.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// Stateless nonces: `<expiry hex>.<tag>`, the tag an HMAC of the expiry
/// and the client's IP address, so a nonce works from one address only
/// and for `ttl`.
pub struct Nonces {
    key: [u8; 32],
    ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Ours, but expired: the client should retry with a fresh one (438).
    Stale,
    /// Not ours (or for another address).
    Invalid,
}

impl Nonces {
    pub fn new(ttl: Duration) -> Nonces {
        Nonces {
            key: rand::random(),
            ttl,
        }
    }

    fn tag(&self, exp: u64, ip: IpAddr) -> String {
        let mut data = [0u8; 24];
        data[..8].copy_from_slice(&exp.to_be_bytes());
        let n = match ip {
            IpAddr::V4(a) => {
                data[8..12].copy_from_slice(&a.octets());
                12
            }
            IpAddr::V6(a) => {
                data[8..].copy_from_slice(&a.octets());
                24
            }
        };
        URL_SAFE_NO_PAD.encode(&hmac(Hash::Sha256, &self.key, &data[..n])[..18])
    }

    pub fn make(&self, ip: IpAddr, now: SystemTime) -> String {
        let exp = (now + self.ttl)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("{exp:x}.{}", self.tag(exp, ip))
    }

    pub fn check(&self, nonce: &str, ip: IpAddr, now: SystemTime) -> NonceCheck {
        let Some((exp, tag)) = nonce.split_once('.') else {
            return NonceCheck::Invalid;
        };
        let Ok(exp) = u64::from_str_radix(exp, 16) else {
            return NonceCheck::Invalid;
        };
        let want = self.tag(exp, ip);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(want.as_bytes(), tag.as_bytes())) {
            return NonceCheck::Invalid;
        }
        let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if exp <= now {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_match_coturn_scheme() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (u, p, _) = credentials("s3cret", "alice@example.org", Duration::from_secs(3600), now);
        assert_eq!(u, "1700003600:alice@example.org");
        // Computed apart from this code:
        // printf %s 1700003600:alice@example.org | openssl dgst -sha1 -hmac s3cret -binary | base64
        assert_eq!(p, "sjcYaPQf5gqrPgmOWpDM1M2GDq8=");
        assert_eq!(check_username(&u, now), Ok("alice@example.org"));
        assert_eq!(
            check_username(&u, now + Duration::from_secs(3600)),
            Err(Refused::Expired)
        );
        assert_eq!(check_username("alice", now), Err(Refused::Malformed));
        assert_eq!(check_username("12x:alice", now), Err(Refused::Malformed));
    }

    #[test]
    fn long_term_key_verifies_the_rfc5769_request() {
        // RFC 5769 §2.4: a request with long-term credentials; the password
        // "TheMatrIX" is the SASLprep'd form of the RFC's password.
        let msg: &[u8] = &[
            0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda,
            0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88, 0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83,
            0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00, 0x15, 0x00, 0x1c, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39,
            0x6b, 0x39, 0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79,
            0x36, 0x34, 0x73, 0x41, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72,
            0x67, 0x00, 0x00, 0x08, 0x00, 0x14, 0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02, 0xb8, 0xe0, 0x71,
            0x2e, 0x85, 0xc9, 0xa2, 0x8c, 0xa8, 0x96, 0x66,
        ];
        let m = super::super::stun::Message::parse(msg).unwrap();
        let user = m.text(super::super::stun::attr::USERNAME).unwrap();
        assert_eq!(user, "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}");
        assert!(m.verify(&long_term_key(user, "example.org", "TheMatrIX")));
        assert!(!m.verify(&long_term_key(user, "example.org", "TheMatrix")));
    }

    #[test]
    fn nonces_are_bound_to_address_and_time() {
        let n = Nonces::new(Duration::from_secs(60));
        let now = SystemTime::now();
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        let nonce = n.make(a, now);
        assert_eq!(n.check(&nonce, a, now), NonceCheck::Valid);
        assert_eq!(
            n.check(&nonce, "198.51.100.8".parse().unwrap(), now),
            NonceCheck::Invalid
        );
        assert_eq!(n.check(&nonce, a, now + Duration::from_secs(61)), NonceCheck::Stale);
        assert_eq!(n.check("abc.def", a, now), NonceCheck::Invalid);
        assert_eq!(
            Nonces::new(Duration::from_secs(60)).check(&nonce, a, now),
            NonceCheck::Invalid
        );
    }
}

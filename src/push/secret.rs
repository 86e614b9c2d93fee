//! Secrets of the relay: API keys and whitelist tokens. 160 random bits,
//! shown once as 40 hex characters, stored as SHA-256, compared in constant
//! time, logged by prefix only.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Characters of a secret that may appear in logs and listings.
pub const PREFIX_LEN: usize = 8;

/// A new secret: 20 random bytes as 40 lowercase hex characters.
pub fn generate() -> String {
    let bytes: [u8; 20] = rand::random();
    hex(&bytes)
}

pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Whether `stored` is the hash of `secret`, in constant time.
pub fn matches(stored: &[u8], secret: &str) -> bool {
    bool::from(stored.ct_eq(&hash(secret)))
}

/// The loggable start of a secret.
pub fn prefix(secret: &str) -> &str {
    let end = secret
        .char_indices()
        .nth(PREFIX_LEN)
        .map(|(i, _)| i)
        .unwrap_or(secret.len());
    &secret[..end]
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_40_hex_and_distinct() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 40);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
        assert!(matches(&hash(&a), &a));
        assert!(!matches(&hash(&a), &b));
        assert_eq!(prefix(&a), &a[..8]);
        assert_eq!(prefix("abc"), "abc");
    }
}

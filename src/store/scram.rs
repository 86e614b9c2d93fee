//! SCRAM key material (RFC 5802): what an account stores for its password
//! and how it is derived. The SASL exchange itself (`xmpp::sasl`) and the
//! account table both use it, so it lives below both.

use hmac::{digest::KeyInit, Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// PBKDF2 iterations for new passwords.
pub const ITERATIONS: u32 = 4096;

/// What is stored for a password: never the password, never the salted
/// password, only what the server side of SCRAM needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub sha1_stored: Vec<u8>,
    pub sha1_server: Vec<u8>,
    pub sha256_stored: Vec<u8>,
    pub sha256_server: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha256,
}

pub fn hmac(h: Hash, key: &[u8], data: &[u8]) -> Vec<u8> {
    match h {
        Hash::Sha1 => {
            let mut m = <Hmac<Sha1> as KeyInit>::new_from_slice(key).expect("any key length");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        Hash::Sha256 => {
            let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
    }
}

pub fn digest(h: Hash, data: &[u8]) -> Vec<u8> {
    match h {
        Hash::Sha1 => Sha1::digest(data).to_vec(),
        Hash::Sha256 => Sha256::digest(data).to_vec(),
    }
}

pub fn salted_password(h: Hash, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    match h {
        Hash::Sha1 => {
            let mut out = [0u8; 20];
            pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out);
            out.to_vec()
        }
        Hash::Sha256 => {
            let mut out = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
            out.to_vec()
        }
    }
}

impl ScramKeys {
    /// Derive the stored keys for a new password with a fresh random salt.
    pub fn derive(password: &str, iterations: u32) -> ScramKeys {
        let salt: [u8; 16] = rand::random();
        Self::derive_with_salt(password, &salt, iterations)
    }

    pub fn derive_with_salt(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        let one = |h: Hash| {
            let sp = salted_password(h, password.as_bytes(), salt, iterations);
            let client_key = hmac(h, &sp, b"Client Key");
            (digest(h, &client_key), hmac(h, &sp, b"Server Key"))
        };
        let (sha1_stored, sha1_server) = one(Hash::Sha1);
        let (sha256_stored, sha256_server) = one(Hash::Sha256);
        ScramKeys {
            salt: salt.to_vec(),
            iterations,
            sha1_stored,
            sha1_server,
            sha256_stored,
            sha256_server,
        }
    }

    pub fn stored(&self, h: Hash) -> &[u8] {
        match h {
            Hash::Sha1 => &self.sha1_stored,
            Hash::Sha256 => &self.sha256_stored,
        }
    }

    pub fn server(&self, h: Hash) -> &[u8] {
        match h {
            Hash::Sha1 => &self.sha1_server,
            Hash::Sha256 => &self.sha256_server,
        }
    }

    /// Check a plaintext password (PLAIN) in constant time. CPU-heavy: run
    /// it on the blocking pool.
    pub fn verify_password(&self, password: &str) -> bool {
        let sp = salted_password(Hash::Sha256, password.as_bytes(), &self.salt, self.iterations);
        let stored = digest(Hash::Sha256, &hmac(Hash::Sha256, &sp, b"Client Key"));
        stored.ct_eq(&self.sha256_stored).into()
    }
}

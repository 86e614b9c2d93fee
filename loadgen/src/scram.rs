//! The client side of SASL: SCRAM-SHA-1 / SCRAM-SHA-256 (RFC 5802, 7677,
//! without channel binding) and PLAIN (RFC 4616). Salted passwords are
//! cached per (salt, iterations), as real clients do.

use anyhow::{anyhow, bail, Result};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use hmac::{digest::KeyInit, Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mech {
    Sha256,
    Sha1,
    Plain,
}

impl Mech {
    pub fn name(self) -> &'static str {
        match self {
            Mech::Sha256 => "SCRAM-SHA-256",
            Mech::Sha1 => "SCRAM-SHA-1",
            Mech::Plain => "PLAIN",
        }
    }

    pub fn parse(s: &str) -> Result<Mech> {
        [Mech::Sha256, Mech::Sha1, Mech::Plain]
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| anyhow!("unknown mechanism {s:?} (SCRAM-SHA-256, SCRAM-SHA-1, PLAIN)"))
    }
}

fn hmac(m: Mech, key: &[u8], data: &[u8]) -> Vec<u8> {
    if m == Mech::Sha1 {
        let mut h = <Hmac<Sha1> as KeyInit>::new_from_slice(key).expect("any key length");
        h.update(data);
        h.finalize().into_bytes().to_vec()
    } else {
        let mut h = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
        h.update(data);
        h.finalize().into_bytes().to_vec()
    }
}

fn digest(m: Mech, data: &[u8]) -> Vec<u8> {
    if m == Mech::Sha1 {
        Sha1::digest(data).to_vec()
    } else {
        Sha256::digest(data).to_vec()
    }
}

type Key = (Mech, String, Vec<u8>, u32);

fn salted(m: Mech, pw: &str, salt: &[u8], i: u32) -> Vec<u8> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Vec<u8>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (m, pw.to_string(), salt.to_vec(), i);
    if let Some(v) = cache.lock().unwrap().get(&key) {
        return v.to_vec();
    }
    let out = if m == Mech::Sha1 {
        let mut o = [0u8; 20];
        pbkdf2::pbkdf2_hmac::<Sha1>(pw.as_bytes(), salt, i, &mut o);
        o.to_vec()
    } else {
        let mut o = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(pw.as_bytes(), salt, i, &mut o);
        o.to_vec()
    };
    cache.lock().unwrap().insert(key, Arc::new(out.clone()));
    out
}

/// One SCRAM exchange in progress.
pub struct Scram {
    mech: Mech,
    password: String,
    nonce: String,
    first_bare: String,
    server_sig: Vec<u8>,
}

impl Scram {
    /// Returns the state and the client-first message.
    pub fn start(mech: Mech, user: &str, password: &str) -> (Scram, Vec<u8>) {
        let n: [u8; 18] = rand::random();
        let nonce = B64.encode(n);
        let user = user.replace('=', "=3D").replace(',', "=2C");
        let first_bare = format!("n={user},r={nonce}");
        let msg = format!("n,,{first_bare}").into_bytes();
        let s = Scram {
            mech,
            password: password.to_string(),
            nonce,
            first_bare,
            server_sig: vec![],
        };
        (s, msg)
    }

    /// Answer the server-first message with the client-final message.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<Vec<u8>> {
        let sf = std::str::from_utf8(server_first)?;
        let (mut r, mut s, mut i) = (None, None, None);
        for a in sf.split(',') {
            match a.split_at_checked(2) {
                Some(("r=", v)) => r = Some(v),
                Some(("s=", v)) => s = Some(B64.decode(v)?),
                Some(("i=", v)) => i = Some(v.parse::<u32>()?),
                _ => {}
            }
        }
        let (Some(r), Some(s), Some(i)) = (r, s, i) else {
            bail!("server-first message incomplete: {sf}");
        };
        if !r.starts_with(&self.nonce) {
            bail!("server nonce does not extend ours");
        }
        let m = self.mech;
        let sp = salted(m, &self.password, &s, i);
        let ck = hmac(m, &sp, b"Client Key");
        let stored = digest(m, &ck);
        let without = format!("c=biws,r={r}");
        let am = format!("{},{sf},{without}", self.first_bare);
        let sig = hmac(m, &stored, am.as_bytes());
        let proof: Vec<u8> = ck.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let sk = hmac(m, &sp, b"Server Key");
        self.server_sig = hmac(m, &sk, am.as_bytes());
        Ok(format!("{without},p={}", B64.encode(proof)).into_bytes())
    }

    /// Check the server's signature in the success data.
    pub fn verify(&self, server_final: &[u8]) -> Result<()> {
        let sf = std::str::from_utf8(server_final)?;
        let v = sf.strip_prefix("v=").ok_or_else(|| anyhow!("server-final: {sf}"))?;
        if B64.decode(v)? != self.server_sig {
            bail!("the server's SCRAM signature is wrong");
        }
        Ok(())
    }
}

pub fn plain(user: &str, password: &str) -> Vec<u8> {
    format!("\0{user}\0{password}").into_bytes()
}

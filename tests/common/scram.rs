//! A SCRAM client written from RFC 5802 (SHA-1 and SHA-256, any GS2 header,
//! any channel-binding data), to drive the server's SASL by hand.

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use hmac::{digest::KeyInit, Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

pub struct ScramClient {
    sha256: bool,
    password: String,
    gs2: String,
    cb: Vec<u8>,
    first_bare: String,
    server_signature: Vec<u8>,
}

impl ScramClient {
    /// `gs2` is the whole GS2 header (`n,,`, `y,,`, `p=tls-exporter,,`);
    /// `cb` the binding data the client believes in (empty without `p=`).
    pub fn new(sha256: bool, user: &str, password: &str, gs2: &str, cb: &[u8]) -> ScramClient {
        let nonce = format!("c{:016x}", rand::random::<u64>());
        ScramClient {
            sha256,
            password: password.into(),
            gs2: gs2.into(),
            cb: cb.to_vec(),
            first_bare: format!("n={user},r={nonce}"),
            server_signature: vec![],
        }
    }

    /// The client-first message.
    pub fn first(&self) -> String {
        format!("{}{}", self.gs2, self.first_bare)
    }

    fn mac(&self, k: &[u8], d: &[u8]) -> Vec<u8> {
        if self.sha256 {
            let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(k).unwrap();
            m.update(d);
            m.finalize().into_bytes().to_vec()
        } else {
            let mut m = <Hmac<Sha1> as KeyInit>::new_from_slice(k).unwrap();
            m.update(d);
            m.finalize().into_bytes().to_vec()
        }
    }

    /// The client-final message for `server_first`.
    pub fn finish(&mut self, server_first: &str) -> String {
        let mut r = "";
        let mut salt = vec![];
        let mut iters = 0u32;
        for a in server_first.split(',') {
            if let Some(v) = a.strip_prefix("r=") {
                r = v;
            } else if let Some(v) = a.strip_prefix("s=") {
                salt = B64.decode(v).unwrap();
            } else if let Some(v) = a.strip_prefix("i=") {
                iters = v.parse().unwrap();
            }
        }
        let sp = if self.sha256 {
            let mut o = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(self.password.as_bytes(), &salt, iters, &mut o);
            o.to_vec()
        } else {
            let mut o = [0u8; 20];
            pbkdf2::pbkdf2_hmac::<Sha1>(self.password.as_bytes(), &salt, iters, &mut o);
            o.to_vec()
        };
        let ck = self.mac(&sp, b"Client Key");
        let sk = if self.sha256 {
            Sha256::digest(&ck).to_vec()
        } else {
            Sha1::digest(&ck).to_vec()
        };
        let mut cbind = self.gs2.as_bytes().to_vec();
        cbind.extend_from_slice(&self.cb);
        let without = format!("c={},r={r}", B64.encode(&cbind));
        let am = format!("{},{server_first},{without}", self.first_bare);
        let sig = self.mac(&sk, am.as_bytes());
        let server_key = self.mac(&sp, b"Server Key");
        self.server_signature = self.mac(&server_key, am.as_bytes());
        let proof: Vec<u8> = ck.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        format!("{without},p={}", B64.encode(proof))
    }

    /// Whether the server-final message proves the server knew the password.
    pub fn verify(&self, server_final: &str) -> bool {
        server_final.strip_prefix("v=").map(|v| B64.decode(v).unwrap()) == Some(self.server_signature.clone())
    }
}

/// `<auth/>` (SASL1) with a base64 initial response.
pub fn auth(mech: &str, initial: &str) -> String {
    format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{}</auth>",
        B64.encode(initial)
    )
}

/// `<response/>` (SASL1).
pub fn response(data: &str) -> String {
    format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(data)
    )
}

/// The decoded text of the last `<NAME …>…</NAME>` in `xml`.
pub fn decoded(xml: &str, name: &str) -> String {
    let start = xml
        .rfind(&format!("<{name}"))
        .unwrap_or_else(|| panic!("no <{name}> in {xml}"));
    let body = &xml[start..];
    let text = &body[body.find('>').unwrap() + 1..body.find(&format!("</{name}>")).unwrap()];
    String::from_utf8(B64.decode(text.trim()).unwrap()).unwrap()
}

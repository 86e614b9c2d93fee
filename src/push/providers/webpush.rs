//! Web Push: RFC 8030 delivery, RFC 8291 `aes128gcm` payload encryption and
//! RFC 8292 VAPID, all with ring. The VAPID key (P-256) is made on first
//! start and kept in `data_dir/relay/vapid.pk8`; with a shared database it
//! is one key for every node, kept in the database (the first node to start
//! puts its key there, the file's if it has one).

use super::{message_dict, priority, ttl_left, Outcome};
use crate::{
    push::{
        backend::RelayStore,
        client::{retry_after, HttpsClient},
        jwt, Priority,
    },
    store::relay::Delivery,
};
use bytes::Bytes;
use http_body_util::Full;
use ring::{
    aead, agreement, hkdf,
    rand::{SecureRandom, SystemRandom},
    signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING},
};
use std::path::Path;

/// Record size announced in the header; one record carries the whole payload.
const RECORD_SIZE: u32 = 4096;

pub struct WebPush {
    client: HttpsClient,
    key: EcdsaKeyPair,
    subject: String,
}

/// Where the shared VAPID key is kept in the relay's store.
const VAPID_NAME: &str = "vapid-pkcs8";

/// The VAPID key (PKCS#8 DER). One node: the file in `data_dir/relay`,
/// made on first start. `shared`: the store's, which the first node to
/// start puts there (its file's key if it has one, so a relay that moves
/// from SQLite to PostgreSQL keeps its subscriptions working).
pub async fn vapid_key(data_dir: &Path, shared: bool, store: &dyn RelayStore) -> anyhow::Result<Vec<u8>> {
    let dir = data_dir.join("relay");
    let path = dir.join("vapid.pk8");
    let local = match std::fs::read(&path) {
        Ok(d) => Some(d),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    };
    let generate = || {
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| anyhow::anyhow!("cannot generate the VAPID key"))
    };
    if shared {
        let candidate = match local {
            Some(d) => d,
            None => generate()?,
        };
        let stored = store.shared_value(VAPID_NAME, &jwt::b64(&candidate)).await?;
        return jwt::b64_decode(&stored)
            .ok_or_else(|| anyhow::anyhow!("the VAPID key in the database is not base64url"));
    }
    match local {
        Some(d) => Ok(d),
        None => {
            std::fs::create_dir_all(&dir)?;
            let der = generate()?;
            write_private(&path, &der)?;
            tracing::info!(path = %path.display(), "generated the VAPID key for Web Push");
            Ok(der)
        }
    }
}

impl WebPush {
    pub fn new(client: HttpsClient, der: &[u8], subject: String) -> anyhow::Result<WebPush> {
        Ok(WebPush {
            client,
            key: jwt::es256_key(der)?,
            subject,
        })
    }

    /// The application server key subscribers pass to `pushManager.subscribe`.
    pub fn public_key_b64(&self) -> String {
        jwt::b64(self.key.public_key().as_ref())
    }

    pub async fn send(&self, d: &Delivery) -> Outcome {
        let endpoint = &d.device.registration_id;
        let (Some(p256dh), Some(auth)) = (
            d.device.p256dh.as_deref().and_then(jwt::b64_decode),
            d.device.auth.as_deref().and_then(jwt::b64_decode),
        ) else {
            return Outcome::Drop("Web Push subscription without valid keys".into());
        };
        let plain = serde_json::json!({ "message": message_dict(d), "priority": priority(d).as_str() }).to_string();
        let body = match encrypt(plain.as_bytes(), &p256dh, &auth) {
            Ok(b) => b,
            Err(e) => return Outcome::Dead(format!("Web Push keys unusable: {e}")),
        };
        let Ok(uri) = endpoint.parse::<hyper::Uri>() else {
            return Outcome::Dead("Web Push endpoint is not a URL".into());
        };
        let aud = format!("https://{}", uri.authority().map(|a| a.as_str()).unwrap_or_default());
        let claims = serde_json::json!({ "aud": aud, "exp": crate::store::now() + 12 * 3600, "sub": self.subject });
        let vapid = match jwt::es256(&self.key, &serde_json::json!({ "typ": "JWT", "alg": "ES256" }), &claims) {
            Ok(t) => t,
            Err(e) => return Outcome::Drop(e.to_string()),
        };
        let urgency = match priority(d) {
            Priority::High => "high",
            Priority::Low => "normal",
        };
        let req = hyper::Request::post(uri)
            .header("authorization", format!("vapid t={vapid}, k={}", self.public_key_b64()))
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("ttl", ttl_left(d).to_string())
            .header("urgency", urgency)
            .header("topic", &d.collapse)
            .body(Full::new(Bytes::from(body)));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Outcome::Drop(format!("bad Web Push request: {e}")),
        };
        match self.client.send(req).await {
            Ok(resp) => super::by_status(resp.status().as_u16(), retry_after(&resp), "Web Push endpoint"),
            Err(e) => Outcome::Retry {
                after: None,
                reason: format!("Web Push: {e}"),
            },
        }
    }
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand with SHA-256 (ring's `fill` only fails for lengths HKDF forbids).
pub fn expand(prk: &hkdf::Prk, info: &[&[u8]], len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    prk.expand(info, Len(len))
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF length within limits");
    out
}

/// The content-encryption key and nonce of RFC 8291 §3.4 / RFC 8188 §2.2.
pub fn derive(ecdh_secret: &[u8], auth: &[u8], ua_public: &[u8], as_public: &[u8], salt: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let prk_key = hkdf::Salt::new(hkdf::HKDF_SHA256, auth).extract(ecdh_secret);
    let ikm = expand(&prk_key, &[b"WebPush: info\0", ua_public, as_public], 32);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&ikm);
    let cek = expand(&prk, &[b"Content-Encoding: aes128gcm\0"], 16);
    let nonce = expand(&prk, &[b"Content-Encoding: nonce\0"], 12);
    (cek, nonce)
}

/// Encrypt `plain` for a subscription (`p256dh` public key, `auth` secret):
/// one `aes128gcm` record with the header `salt | rs | idlen | keyid`.
pub fn encrypt(plain: &[u8], p256dh: &[u8], auth: &[u8]) -> Result<Vec<u8>, &'static str> {
    if auth.len() != 16 {
        return Err("auth secret is not 16 bytes");
    }
    let rng = SystemRandom::new();
    let eph = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng).map_err(|_| "key generation")?;
    let as_public = eph.compute_public_key().map_err(|_| "public key")?;
    let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, p256dh);
    let secret = agreement::agree_ephemeral(eph, &peer, |s| s.to_vec()).map_err(|_| "p256dh is not a P-256 point")?;
    let mut salt = [0u8; 16];
    rng.fill(&mut salt).map_err(|_| "random")?;
    let (cek, nonce) = derive(&secret, auth, p256dh, as_public.as_ref(), &salt);
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_128_GCM, &cek).map_err(|_| "key")?);
    let mut buf = plain.to_vec();
    buf.push(2); // padding delimiter of the last record
    let nonce = aead::Nonce::try_assume_unique_for_key(&nonce).map_err(|_| "nonce")?;
    key.seal_in_place_append_tag(nonce, aead::Aad::empty(), &mut buf)
        .map_err(|_| "seal")?;
    let rs = RECORD_SIZE.max(buf.len() as u32 + 1);
    let mut out = Vec::with_capacity(16 + 4 + 1 + 65 + buf.len());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&rs.to_be_bytes());
    out.push(as_public.as_ref().len() as u8);
    out.extend_from_slice(as_public.as_ref());
    out.extend_from_slice(&buf);
    Ok(out)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)?.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8291 §5's worked example: the derived key and nonce match.
    #[test]
    fn rfc8291_example_keys() {
        let d = |s: &str| jwt::b64_decode(s).unwrap();
        let ua_public = d("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4");
        let as_public = d("BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8");
        let auth = d("BTBZMqHH6r4Tts7J_aSIgg");
        let salt = d("DGv6ra1nlYgDCS1FRnbzlw");
        let ecdh = d("kyrL1jIIOHEzg3sM2ZWRHDRB62YACZhhSlknJ672kSs");
        let (cek, nonce) = derive(&ecdh, &auth, &ua_public, &as_public, &salt);
        assert_eq!(jwt::b64(&cek), "oIhVW04MRdy2XN9CiKLxTg");
        assert_eq!(jwt::b64(&nonce), "4h_95klXJ5E_qnoN");
    }
}

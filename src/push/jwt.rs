//! Compact JWS signing for provider credentials: ES256 (APNs provider
//! tokens, VAPID) and RS256 (Google service-account grants), with ring.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use ring::{
    rand::SystemRandom,
    signature::{EcdsaKeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256},
};
use rustls_pki_types::{pem::PemObject, PrivatePkcs8KeyDer};

pub fn b64(data: &[u8]) -> String {
    B64.encode(data)
}

pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    B64.decode(s.trim_end_matches('=')).ok()
}

/// Read a PKCS#8 private key from PEM text.
pub fn pkcs8_from_pem(pem: &str) -> anyhow::Result<Vec<u8>> {
    let k =
        PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| anyhow::anyhow!("not a PKCS#8 PEM key: {e}"))?;
    Ok(k.secret_pkcs8_der().to_vec())
}

pub fn es256_key(pkcs8: &[u8]) -> anyhow::Result<EcdsaKeyPair> {
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &SystemRandom::new())
        .map_err(|e| anyhow::anyhow!("not a P-256 key: {e}"))
}

pub fn rs256_key(pkcs8: &[u8]) -> anyhow::Result<RsaKeyPair> {
    RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| anyhow::anyhow!("not an RSA key: {e}"))
}

fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

pub fn es256(key: &EcdsaKeyPair, header: &serde_json::Value, claims: &serde_json::Value) -> anyhow::Result<String> {
    let input = signing_input(header, claims);
    let sig = key
        .sign(&SystemRandom::new(), input.as_bytes())
        .map_err(|_| anyhow::anyhow!("ES256 signing failed"))?;
    Ok(format!("{input}.{}", b64(sig.as_ref())))
}

pub fn rs256(key: &RsaKeyPair, header: &serde_json::Value, claims: &serde_json::Value) -> anyhow::Result<String> {
    let input = signing_input(header, claims);
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig)
        .map_err(|_| anyhow::anyhow!("RS256 signing failed"))?;
    Ok(format!("{input}.{}", b64(&sig)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

    #[test]
    fn es256_verifies_with_the_public_key() {
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
        let key = es256_key(doc.as_ref()).unwrap();
        let jwt = es256(
            &key,
            &serde_json::json!({"alg": "ES256"}),
            &serde_json::json!({"iss": "T"}),
        )
        .unwrap();
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let pk = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key().as_ref());
        pk.verify(input.as_bytes(), &b64_decode(sig).unwrap()).unwrap();
        assert!(pk.verify(b"other", &b64_decode(sig).unwrap()).is_err());
    }
}

//! RFC 5929 §4 `tls-server-end-point`: the channel binding made of a hash of
//! the server's certificate, with the hash function of the certificate's
//! own signature algorithm (SHA-256 where that is MD5 or SHA-1). Defined
//! for TLS 1.2 and 1.3 alike; XEP-0440 makes it mandatory for servers.

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// The hash functions a certificate signature can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The binding hash for a signature algorithm (dotted OID), with the
/// RSASSA-PSS hash OID when the algorithm is PSS. `None`: RFC 5929 defines
/// no binding (no single hash, as with Ed25519 and Ed448, or unknown).
fn hash_for(sig_alg: &str, pss_hash: Option<&str>) -> Option<Hash> {
    Some(match sig_alg {
        // MD5 and SHA-1 signatures bind with SHA-256 (RFC 5929 §4.1).
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.3.14.3.2.29"
        | "1.2.840.10045.4.1"
        | "1.2.840.10040.4.3" => Hash::Sha256,
        "1.2.840.113549.1.1.14" | "1.2.840.10045.4.3.1" | "2.16.840.1.101.3.4.3.1" => Hash::Sha224,
        "1.2.840.113549.1.1.11" | "1.2.840.10045.4.3.2" | "2.16.840.1.101.3.4.3.2" => Hash::Sha256,
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Hash::Sha384,
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Hash::Sha512,
        // RSASSA-PSS: the hash is in the parameters (SHA-1 when absent, RFC 4055).
        "1.2.840.113549.1.1.10" => match pss_hash.unwrap_or("1.3.14.3.2.26") {
            "1.3.14.3.2.26" | "2.16.840.1.101.3.4.2.1" => Hash::Sha256,
            "2.16.840.1.101.3.4.2.4" => Hash::Sha224,
            "2.16.840.1.101.3.4.2.2" => Hash::Sha384,
            "2.16.840.1.101.3.4.2.3" => Hash::Sha512,
            _ => return None,
        },
        _ => return None,
    })
}

/// The `tls-server-end-point` binding data of a DER certificate, or `None`
/// when it cannot be parsed or its signature algorithm defines none.
pub fn server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let alg = &cert.signature_algorithm;
    let pss_hash = match x509_parser::signature_algorithm::SignatureAlgorithm::try_from(alg) {
        Ok(x509_parser::signature_algorithm::SignatureAlgorithm::RSASSA_PSS(p)) => {
            Some(p.hash_algorithm_oid().to_id_string())
        }
        _ => None,
    };
    let h = hash_for(&alg.algorithm.to_id_string(), pss_hash.as_deref())?;
    Some(match h {
        Hash::Sha224 => Sha224::digest(der).to_vec(),
        Hash::Sha256 => Sha256::digest(der).to_vec(),
        Hash::Sha384 => Sha384::digest(der).to_vec(),
        Hash::Sha512 => Sha512::digest(der).to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate signed with `alg` (rcgen, fresh key).
    fn cert(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["example.org".to_string()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_hash_follows_the_signature() {
        let p256 = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(server_end_point(&p256), Some(Sha256::digest(&p256).to_vec()));
        let p384 = cert(&rcgen::PKCS_ECDSA_P384_SHA384);
        let got = server_end_point(&p384).unwrap();
        assert_eq!(got.len(), 48);
        assert_eq!(got, Sha384::digest(&p384).to_vec());
        // Ed25519 names no single hash: no binding (RFC 5929 §4.1).
        assert_eq!(server_end_point(&cert(&rcgen::PKCS_ED25519)), None);
        assert_eq!(server_end_point(b"not a certificate"), None);
    }

    #[test]
    fn weak_and_other_signature_hashes() {
        // sha1WithRSAEncryption, md5WithRSAEncryption, ecdsa-with-SHA1 bind with SHA-256.
        for weak in ["1.2.840.113549.1.1.5", "1.2.840.113549.1.1.4", "1.2.840.10045.4.1"] {
            assert_eq!(hash_for(weak, None), Some(Hash::Sha256), "{weak}");
        }
        assert_eq!(hash_for("1.2.840.113549.1.1.13", None), Some(Hash::Sha512));
        assert_eq!(hash_for("1.2.840.113549.1.1.12", None), Some(Hash::Sha384));
        assert_eq!(hash_for("1.2.840.113549.1.1.14", None), Some(Hash::Sha224));
        // RSASSA-PSS: the hash from the parameters, SHA-1 (so SHA-256) by default.
        assert_eq!(hash_for("1.2.840.113549.1.1.10", None), Some(Hash::Sha256));
        assert_eq!(
            hash_for("1.2.840.113549.1.1.10", Some("2.16.840.1.101.3.4.2.3")),
            Some(Hash::Sha512)
        );
        assert_eq!(hash_for("1.2.840.113549.1.1.10", Some("1.2.3")), None);
        assert_eq!(hash_for("1.3.101.113", None), None, "Ed448");
    }
}

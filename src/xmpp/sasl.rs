//! SASL on the server side: SCRAM-SHA-256(-PLUS), SCRAM-SHA-1(-PLUS) (RFC
//! 5802, 7677, 9266 `tls-exporter` binding) and PLAIN (RFC 4616, offered only
//! over TLS). Knows nothing of XML or sockets: the c2s layer feeds it decoded
//! bytes and sends back what it returns.

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use subtle::ConstantTimeEq;

use crate::store::scram::{digest, hmac};
pub use crate::store::scram::{Hash, ScramKeys};

/// SASL mechanisms pushbox offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    ScramSha256Plus,
    ScramSha1Plus,
    ScramSha256,
    ScramSha1,
    Plain,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::ScramSha1Plus => "SCRAM-SHA-1-PLUS",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
        }
    }

    pub fn from_name(s: &str) -> Option<Mechanism> {
        Some(match s {
            "SCRAM-SHA-256-PLUS" => Mechanism::ScramSha256Plus,
            "SCRAM-SHA-1-PLUS" => Mechanism::ScramSha1Plus,
            "SCRAM-SHA-256" => Mechanism::ScramSha256,
            "SCRAM-SHA-1" => Mechanism::ScramSha1,
            "PLAIN" => Mechanism::Plain,
            _ => return None,
        })
    }

    /// Mechanisms in order of preference; `-PLUS` only when the connection
    /// can export channel-binding data (TLS 1.3).
    pub fn offered(channel_binding: bool) -> &'static [Mechanism] {
        if channel_binding {
            &[
                Mechanism::ScramSha256Plus,
                Mechanism::ScramSha1Plus,
                Mechanism::ScramSha256,
                Mechanism::ScramSha1,
                Mechanism::Plain,
            ]
        } else {
            &[Mechanism::ScramSha256, Mechanism::ScramSha1, Mechanism::Plain]
        }
    }

    fn hash(self) -> Hash {
        match self {
            Mechanism::ScramSha1 | Mechanism::ScramSha1Plus => Hash::Sha1,
            _ => Hash::Sha256,
        }
    }

    fn plus(self) -> bool {
        matches!(self, Mechanism::ScramSha1Plus | Mechanism::ScramSha256Plus)
    }
}

/// RFC 6120 §6.5 failure conditions that SASL can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Aborted,
    InvalidAuthzid,
    InvalidMechanism,
    MalformedRequest,
    NotAuthorized,
}

impl Failure {
    pub fn condition(self) -> &'static str {
        match self {
            Failure::Aborted => "aborted",
            Failure::InvalidAuthzid => "invalid-authzid",
            Failure::InvalidMechanism => "invalid-mechanism",
            Failure::MalformedRequest => "malformed-request",
            Failure::NotAuthorized => "not-authorized",
        }
    }
}

/// First step of SCRAM, parsed.
#[derive(Debug)]
pub struct ClientFirst {
    pub username: String,
    gs2_header: String,
    client_first_bare: String,
    client_nonce: String,
}

/// Parse a SCRAM client-first message. `channel_binding` says whether the
/// server offered -PLUS on this connection (for the downgrade check).
pub fn scram_client_first(mech: Mechanism, msg: &[u8], channel_binding: bool) -> Result<ClientFirst, Failure> {
    let msg = std::str::from_utf8(msg).map_err(|_| Failure::MalformedRequest)?;
    // gs2-header = gs2-cbind-flag "," [ authzid ] ","
    let mut parts = msg.splitn(3, ',');
    let flag = parts.next().ok_or(Failure::MalformedRequest)?;
    let authzid = parts.next().ok_or(Failure::MalformedRequest)?;
    let bare = parts.next().ok_or(Failure::MalformedRequest)?;
    match (flag, mech.plus()) {
        ("p=tls-exporter", true) => {}
        (f, true) if f.starts_with("p=") => return Err(Failure::MalformedRequest),
        // The client can bind but believes we cannot, while we offered -PLUS: downgrade.
        ("y", false) if channel_binding => return Err(Failure::NotAuthorized),
        ("n" | "y", false) => {}
        _ => return Err(Failure::MalformedRequest),
    }
    if !authzid.is_empty() && !authzid.starts_with("a=") {
        return Err(Failure::MalformedRequest);
    }
    let mut username = None;
    let mut nonce = None;
    for attr in bare.split(',') {
        if let Some(v) = attr.strip_prefix("n=") {
            username = Some(unescape_saslname(v)?);
        } else if let Some(v) = attr.strip_prefix("r=") {
            nonce = Some(v.to_string());
        } else if attr.starts_with("m=") {
            // Mandatory extension we do not know (RFC 5802 §5.1).
            return Err(Failure::MalformedRequest);
        }
    }
    let username = username.ok_or(Failure::MalformedRequest)?;
    let client_nonce = nonce
        .filter(|n| !n.is_empty() && n.is_ascii())
        .ok_or(Failure::MalformedRequest)?;
    if !authzid.is_empty() {
        let az = unescape_saslname(&authzid[2..])?;
        // Only "act as myself" is allowed; the c2s layer compares it with the bare JID.
        let local = az.split('@').next().unwrap_or_default();
        if !local.eq_ignore_ascii_case(&username) {
            return Err(Failure::InvalidAuthzid);
        }
    }
    Ok(ClientFirst {
        username,
        gs2_header: format!("{flag},{authzid},"),
        client_first_bare: bare.to_string(),
        client_nonce,
    })
}

fn unescape_saslname(s: &str) -> Result<String, Failure> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(Failure::MalformedRequest),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// SCRAM server state after the server-first message.
pub struct ScramServer {
    mech: Mechanism,
    keys: ScramKeys,
    /// false for an unknown user: the exchange runs to the end and fails, so
    /// that a client cannot tell unknown users from wrong passwords.
    real: bool,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    /// `keys` is `None` for an unknown user; `fake_secret` then makes a
    /// stable fake salt so that repeated probes look alike.
    pub fn new(
        mech: Mechanism,
        first: ClientFirst,
        keys: Option<ScramKeys>,
        fake_secret: &[u8],
    ) -> (ScramServer, Vec<u8>) {
        let real = keys.is_some();
        let keys = keys.unwrap_or_else(|| {
            let salt = hmac(Hash::Sha256, fake_secret, first.username.as_bytes());
            ScramKeys {
                salt: salt[..16].to_vec(),
                iterations: crate::store::accounts::ITERATIONS,
                sha1_stored: vec![0; 20],
                sha1_server: vec![0; 20],
                sha256_stored: vec![0; 32],
                sha256_server: vec![0; 32],
            }
        });
        let server_nonce: [u8; 18] = rand::random();
        let nonce = format!("{}{}", first.client_nonce, B64.encode(server_nonce));
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&keys.salt), keys.iterations);
        let out = server_first.clone().into_bytes();
        (
            ScramServer {
                mech,
                keys,
                real,
                gs2_header: first.gs2_header,
                client_first_bare: first.client_first_bare,
                server_first,
                nonce,
            },
            out,
        )
    }

    /// Check the client-final message. On success returns the server-final
    /// message (`v=…`). `cb_data` is the tls-exporter value of this connection.
    pub fn finish(self, msg: &[u8], cb_data: Option<&[u8]>) -> Result<Vec<u8>, Failure> {
        let msg = std::str::from_utf8(msg).map_err(|_| Failure::MalformedRequest)?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(Failure::MalformedRequest)?;
        let proof = B64.decode(proof).map_err(|_| Failure::MalformedRequest)?;
        let mut c = None;
        let mut r = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                c = Some(B64.decode(v).map_err(|_| Failure::MalformedRequest)?);
            } else if let Some(v) = attr.strip_prefix("r=") {
                r = Some(v);
            }
        }
        let (c, r) = (c.ok_or(Failure::MalformedRequest)?, r.ok_or(Failure::MalformedRequest)?);
        if r != self.nonce {
            return Err(Failure::NotAuthorized);
        }
        let mut expected_c = self.gs2_header.as_bytes().to_vec();
        if self.mech.plus() {
            expected_c.extend_from_slice(cb_data.ok_or(Failure::NotAuthorized)?);
        }
        if !bool::from(c.ct_eq(&expected_c)) {
            return Err(Failure::NotAuthorized);
        }
        let h = self.mech.hash();
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let client_signature = hmac(h, self.keys.stored(h), auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(Failure::NotAuthorized);
        }
        let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(a, b)| a ^ b).collect();
        let ok: bool = digest(h, &client_key).ct_eq(self.keys.stored(h)).into();
        if !ok || !self.real {
            return Err(Failure::NotAuthorized);
        }
        let server_signature = hmac(h, self.keys.server(h), auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// Parse PLAIN's `authzid NUL authcid NUL passwd`.
pub fn parse_plain(msg: &[u8]) -> Result<(Option<String>, String, String), Failure> {
    let mut it = msg.split(|b| *b == 0);
    let (Some(authz), Some(authc), Some(pw), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(Failure::MalformedRequest);
    };
    let s = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| Failure::MalformedRequest);
    let authz = if authz.is_empty() { None } else { Some(s(authz)?) };
    let (authc, pw) = (s(authc)?, s(pw)?);
    if authc.is_empty() || pw.is_empty() {
        return Err(Failure::MalformedRequest);
    }
    Ok((authz, authc, pw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::scram::salted_password;

    /// A SCRAM client written from RFC 5802, to check the server against.
    fn client_final(h: Hash, password: &str, first_bare: &str, server_first: &str, gs2: &str, cb: &[u8]) -> String {
        let mut attrs = server_first.split(',');
        let r = attrs.next().unwrap().strip_prefix("r=").unwrap();
        let s = B64.decode(attrs.next().unwrap().strip_prefix("s=").unwrap()).unwrap();
        let i: u32 = attrs.next().unwrap().strip_prefix("i=").unwrap().parse().unwrap();
        let sp = salted_password(h, password.as_bytes(), &s, i);
        let ck = hmac(h, &sp, b"Client Key");
        let sk = digest(h, &ck);
        let mut cbind = gs2.as_bytes().to_vec();
        cbind.extend_from_slice(cb);
        let without = format!("c={},r={r}", B64.encode(&cbind));
        let am = format!("{first_bare},{server_first},{without}");
        let sig = hmac(h, &sk, am.as_bytes());
        let proof: Vec<u8> = ck.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        format!("{without},p={}", B64.encode(proof))
    }

    fn run(mech: Mechanism, stored_pw: &str, pw: &str, gs2: &str, cb: Option<&[u8]>) -> Result<Vec<u8>, Failure> {
        let keys = ScramKeys::derive(stored_pw, 4096);
        let first = format!("{gs2}n=alice,r=abcdef");
        let cf = scram_client_first(mech, first.as_bytes(), cb.is_some())?;
        let (srv, sf) = ScramServer::new(mech, cf, Some(keys), b"k");
        let fin = client_final(
            mech.hash(),
            pw,
            "n=alice,r=abcdef",
            std::str::from_utf8(&sf).unwrap(),
            gs2,
            cb.unwrap_or(&[]),
        );
        srv.finish(fin.as_bytes(), cb)
    }

    #[test]
    fn scram_sha256_and_sha1_accept_right_password() {
        assert!(run(Mechanism::ScramSha256, "pw", "pw", "n,,", None)
            .unwrap()
            .starts_with(b"v="));
        assert!(run(Mechanism::ScramSha1, "pw", "pw", "n,,", None).is_ok());
    }

    #[test]
    fn scram_rejects_wrong_password() {
        assert_eq!(
            run(Mechanism::ScramSha256, "pw", "nope", "n,,", None),
            Err(Failure::NotAuthorized)
        );
    }

    #[test]
    fn plus_checks_the_binding_data() {
        let cb = [7u8; 32];
        assert!(run(Mechanism::ScramSha256Plus, "pw", "pw", "p=tls-exporter,,", Some(&cb)).is_ok());
        // The client bound to different data (a man in the middle).
        let keys = ScramKeys::derive("pw", 4096);
        let cf = scram_client_first(Mechanism::ScramSha256Plus, b"p=tls-exporter,,n=alice,r=x", true).unwrap();
        let (srv, sf) = ScramServer::new(Mechanism::ScramSha256Plus, cf, Some(keys), b"k");
        let fin = client_final(
            Hash::Sha256,
            "pw",
            "n=alice,r=x",
            std::str::from_utf8(&sf).unwrap(),
            "p=tls-exporter,,",
            &[1u8; 32],
        );
        assert_eq!(srv.finish(fin.as_bytes(), Some(&cb)), Err(Failure::NotAuthorized));
    }

    #[test]
    fn downgrade_flag_is_refused_when_plus_was_offered() {
        assert_eq!(
            scram_client_first(Mechanism::ScramSha256, b"y,,n=alice,r=x", true).err(),
            Some(Failure::NotAuthorized)
        );
        assert!(scram_client_first(Mechanism::ScramSha256, b"y,,n=alice,r=x", false).is_ok());
    }

    #[test]
    fn unknown_user_fails_at_the_end() {
        let cf = scram_client_first(Mechanism::ScramSha256, b"n,,n=ghost,r=x", false).unwrap();
        let (srv, sf) = ScramServer::new(Mechanism::ScramSha256, cf, None, b"k");
        let fin = client_final(
            Hash::Sha256,
            "",
            "n=ghost,r=x",
            std::str::from_utf8(&sf).unwrap(),
            "n,,",
            &[],
        );
        assert_eq!(srv.finish(fin.as_bytes(), None), Err(Failure::NotAuthorized));
    }

    #[test]
    fn garbage_is_malformed() {
        for g in [
            &b""[..],
            b"n",
            b"x,,n=a,r=b",
            b"n,,r=b",
            b"n,,n=a",
            b"n,,n=a=ZZ,r=b",
            b"\xff\xfe",
        ] {
            assert_eq!(
                scram_client_first(Mechanism::ScramSha256, g, false).err(),
                Some(Failure::MalformedRequest),
                "{g:?}"
            );
        }
        assert!(parse_plain(b"\0alice").is_err());
        assert_eq!(parse_plain(b"\0alice\0pw").unwrap().1, "alice");
    }

    #[test]
    fn plain_verification() {
        let k = ScramKeys::derive("secret", 4096);
        assert!(k.verify_password("secret"));
        assert!(!k.verify_password("Secret"));
    }
}

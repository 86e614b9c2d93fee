//! SASL on the server side: SCRAM-SHA-256(-PLUS), SCRAM-SHA-1(-PLUS) (RFC
//! 5802, 7677; bindings `tls-exporter` RFC 9266 and `tls-server-end-point`
//! RFC 5929), XEP-0474 downgrade protection, PLAIN (RFC 4616, offered only
//! over TLS), and the hashed-token mechanism `HT-SHA-256-NONE`
//! (draft-schmaus-kitten-sasl-ht) that FAST (XEP-0484) logs in with. Knows
//! nothing of XML or sockets: the c2s layer feeds it decoded bytes and
//! sends back what it returns.

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use subtle::ConstantTimeEq;

use crate::store::scram::{digest, hmac};
pub use crate::store::scram::{Hash, ScramKeys};

/// Channel-binding types (names from the IANA channel-binding registry)
/// that a connection may offer to SCRAM-*-PLUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CbType {
    /// RFC 9266: keying material exported from TLS 1.3.
    TlsExporter,
    /// RFC 5929 §4: a hash of the server's certificate.
    TlsServerEndPoint,
}

impl CbType {
    pub fn name(self) -> &'static str {
        match self {
            CbType::TlsExporter => "tls-exporter",
            CbType::TlsServerEndPoint => "tls-server-end-point",
        }
    }

    pub fn from_name(s: &str) -> Option<CbType> {
        match s {
            "tls-exporter" => Some(CbType::TlsExporter),
            "tls-server-end-point" => Some(CbType::TlsServerEndPoint),
            _ => None,
        }
    }
}

pub use crate::certs::ChannelBindings;

impl ChannelBindings {
    /// The data for `t`, when this connection supports it.
    pub fn data(&self, t: CbType) -> Option<&[u8]> {
        match t {
            CbType::TlsExporter => self.tls_exporter.as_deref(),
            CbType::TlsServerEndPoint => self.tls_server_end_point.as_deref(),
        }
    }

    /// Supported types, strongest first (XEP-0440 lists them in this order).
    pub fn types(&self) -> Vec<CbType> {
        [CbType::TlsExporter, CbType::TlsServerEndPoint]
            .into_iter()
            .filter(|t| self.data(*t).is_some())
            .collect()
    }

    /// Whether any binding is possible, i.e. whether -PLUS is offered.
    pub fn any(&self) -> bool {
        self.tls_exporter.is_some() || self.tls_server_end_point.is_some()
    }
}

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
    /// has a channel binding to offer.
    pub fn offered(cb: &ChannelBindings) -> &'static [Mechanism] {
        if cb.any() {
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

    pub fn hash(self) -> Hash {
        match self {
            Mechanism::ScramSha1 | Mechanism::ScramSha1Plus => Hash::Sha1,
            _ => Hash::Sha256,
        }
    }

    pub fn plus(self) -> bool {
        matches!(self, Mechanism::ScramSha1Plus | Mechanism::ScramSha256Plus)
    }
}

/// RFC 6120 §6.5 failure conditions that SASL can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Aborted,
    CredentialsExpired,
    InvalidAuthzid,
    InvalidMechanism,
    MalformedRequest,
    MechanismTooWeak,
    NotAuthorized,
}

impl Failure {
    pub fn condition(self) -> &'static str {
        match self {
            Failure::Aborted => "aborted",
            Failure::CredentialsExpired => "credentials-expired",
            Failure::InvalidAuthzid => "invalid-authzid",
            Failure::InvalidMechanism => "invalid-mechanism",
            Failure::MalformedRequest => "malformed-request",
            Failure::MechanismTooWeak => "mechanism-too-weak",
            Failure::NotAuthorized => "not-authorized",
        }
    }
}

/// RFC 5802 §7 `server-error-value`s that pushbox sends (as `e=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramError {
    InvalidEncoding,
    ExtensionsNotSupported,
    InvalidProof,
    ChannelBindingsDontMatch,
    ServerDoesSupportChannelBinding,
    UnsupportedChannelBindingType,
    OtherError,
}

impl ScramError {
    pub fn value(self) -> &'static str {
        match self {
            ScramError::InvalidEncoding => "invalid-encoding",
            ScramError::ExtensionsNotSupported => "extensions-not-supported",
            ScramError::InvalidProof => "invalid-proof",
            ScramError::ChannelBindingsDontMatch => "channel-bindings-dont-match",
            ScramError::ServerDoesSupportChannelBinding => "server-does-support-channel-binding",
            ScramError::UnsupportedChannelBindingType => "unsupported-channel-binding-type",
            ScramError::OtherError => "other-error",
        }
    }
}

/// A refused SASL attempt: the condition to answer with, the SCRAM error
/// behind it, and whether the client proved wrong credentials. Only those
/// attempts count towards the per-connection and per-address login limits;
/// a client walking down the mechanisms (a channel-binding type we lack, a
/// `y` flag) is negotiating, not guessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub condition: Failure,
    pub scram: Option<ScramError>,
    pub bad_credentials: bool,
}

impl Refused {
    fn scram(condition: Failure, e: ScramError) -> Refused {
        Refused {
            condition,
            scram: Some(e),
            bad_credentials: false,
        }
    }

    /// A password or token that does not verify.
    pub fn wrong_credentials() -> Refused {
        Refused {
            condition: Failure::NotAuthorized,
            scram: None,
            bad_credentials: true,
        }
    }

    fn malformed() -> Refused {
        Refused::scram(Failure::MalformedRequest, ScramError::InvalidEncoding)
    }

    /// The RFC 5802 `e=` value, for the failure's `<text/>`.
    pub fn text(&self) -> Option<String> {
        self.scram.map(|e| format!("e={}", e.value()))
    }
}

impl From<Failure> for Refused {
    fn from(condition: Failure) -> Refused {
        Refused {
            condition,
            scram: None,
            bad_credentials: false,
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
    /// The binding the client asked for (`p=…`), which this connection supports.
    cb_type: Option<CbType>,
}

/// Parse a SCRAM client-first message. `cb` is what this connection can
/// bind to (non-empty exactly when -PLUS was offered).
pub fn scram_client_first(mech: Mechanism, msg: &[u8], cb: &ChannelBindings) -> Result<ClientFirst, Refused> {
    let msg = std::str::from_utf8(msg).map_err(|_| Refused::malformed())?;
    // gs2-header = gs2-cbind-flag "," [ authzid ] ","
    let mut parts = msg.splitn(3, ',');
    let flag = parts.next().ok_or_else(Refused::malformed)?;
    let authzid = parts.next().ok_or_else(Refused::malformed)?;
    let bare = parts.next().ok_or_else(Refused::malformed)?;
    let cb_type = match (flag, mech.plus()) {
        ("n", false) => None,
        // "I can bind, but I think you cannot" while we could: a man in the
        // middle may have removed -PLUS from the list (RFC 5802 §6).
        ("y", false) if cb.any() => {
            return Err(Refused::scram(
                Failure::MechanismTooWeak,
                ScramError::ServerDoesSupportChannelBinding,
            ))
        }
        ("y", false) => None,
        (f, true) if f.starts_with("p=") => match CbType::from_name(&f[2..]).filter(|t| cb.data(*t).is_some()) {
            Some(t) => Some(t),
            // A type this connection cannot provide (tls-unique, or
            // tls-exporter on TLS 1.2): the client may try another mechanism.
            None => {
                return Err(Refused::scram(
                    Failure::InvalidMechanism,
                    ScramError::UnsupportedChannelBindingType,
                ))
            }
        },
        _ => return Err(Refused::malformed()),
    };
    if !authzid.is_empty() && !authzid.starts_with("a=") {
        return Err(Refused::malformed());
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
            return Err(Refused::scram(
                Failure::MalformedRequest,
                ScramError::ExtensionsNotSupported,
            ));
        }
    }
    let username = username.ok_or_else(Refused::malformed)?;
    let client_nonce = nonce
        .filter(|n| !n.is_empty() && n.is_ascii())
        .ok_or_else(Refused::malformed)?;
    if !authzid.is_empty() {
        let az = unescape_saslname(&authzid[2..])?;
        // Only "act as myself" is allowed; the c2s layer compares it with the bare JID.
        let local = az.split('@').next().unwrap_or_default();
        if !local.eq_ignore_ascii_case(&username) {
            return Err(Failure::InvalidAuthzid.into());
        }
    }
    Ok(ClientFirst {
        username,
        gs2_header: format!("{flag},{authzid},"),
        client_first_bare: bare.to_string(),
        client_nonce,
        cb_type,
    })
}

fn unescape_saslname(s: &str) -> Result<String, Refused> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(Refused::malformed()),
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
    cb_type: Option<CbType>,
}

/// XEP-0474 (SSDP): what the client saw offered, as the server computes it:
/// the mechanisms sorted, joined by U+001E, then U+001F and the
/// channel-binding types of `<sasl-channel-binding/>` sorted and joined the
/// same way (only when that list was offered), hashed with the mechanism's
/// hash. The client compares it with its own view of the stream features,
/// so a man in the middle who removed -PLUS or a binding type is caught.
pub fn ssdp(mech: Mechanism, cb: &ChannelBindings) -> String {
    let mut mechs: Vec<&str> = Mechanism::offered(cb).iter().map(|m| m.name()).collect();
    mechs.sort_unstable();
    let mut s = mechs.join("\u{1e}");
    if cb.any() {
        let mut types: Vec<&str> = cb.types().iter().map(|t| t.name()).collect();
        types.sort_unstable();
        s.push('\u{1f}');
        s.push_str(&types.join("\u{1e}"));
    }
    B64.encode(digest(mech.hash(), s.as_bytes()))
}

impl ScramServer {
    /// `keys` is `None` for an unknown user; `fake_secret` then makes a
    /// stable fake salt so that repeated probes look alike. `cb` is what
    /// this connection offered; the server-first message carries its
    /// XEP-0474 hash as the extension attribute `h`.
    pub fn new(
        mech: Mechanism,
        first: ClientFirst,
        keys: Option<ScramKeys>,
        fake_secret: &[u8],
        cb: &ChannelBindings,
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
        let server_first = format!(
            "r={nonce},s={},i={},h={}",
            B64.encode(&keys.salt),
            keys.iterations,
            ssdp(mech, cb)
        );
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
                cb_type: first.cb_type,
            },
            out,
        )
    }

    /// Check the client-final message. On success returns the server-final
    /// message (`v=…`). `cb` is the same connection's binding data as for
    /// the first message. The binding is checked before the proof, so a
    /// mismatch tells nothing about the password.
    pub fn finish(self, msg: &[u8], cb: &ChannelBindings) -> Result<Vec<u8>, Refused> {
        let msg = std::str::from_utf8(msg).map_err(|_| Refused::malformed())?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or_else(Refused::malformed)?;
        let proof = B64.decode(proof).map_err(|_| Refused::malformed())?;
        let mut c = None;
        let mut r = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                c = Some(B64.decode(v).map_err(|_| Refused::malformed())?);
            } else if let Some(v) = attr.strip_prefix("r=") {
                r = Some(v);
            }
        }
        let (c, r) = (c.ok_or_else(Refused::malformed)?, r.ok_or_else(Refused::malformed)?);
        if r != self.nonce {
            return Err(Refused::scram(Failure::NotAuthorized, ScramError::OtherError));
        }
        let mut expected_c = self.gs2_header.as_bytes().to_vec();
        if let Some(t) = self.cb_type {
            let data = cb.data(t).ok_or(Refused::scram(
                Failure::NotAuthorized,
                ScramError::ChannelBindingsDontMatch,
            ))?;
            expected_c.extend_from_slice(data);
        }
        if !bool::from(c.ct_eq(&expected_c)) {
            return Err(Refused::scram(
                Failure::NotAuthorized,
                ScramError::ChannelBindingsDontMatch,
            ));
        }
        let h = self.mech.hash();
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let client_signature = hmac(h, self.keys.stored(h), auth_message.as_bytes());
        let invalid_proof = Refused {
            scram: Some(ScramError::InvalidProof),
            ..Refused::wrong_credentials()
        };
        if proof.len() != client_signature.len() {
            return Err(invalid_proof);
        }
        let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(a, b)| a ^ b).collect();
        let ok: bool = digest(h, &client_key).ct_eq(self.keys.stored(h)).into();
        if !ok || !self.real {
            return Err(invalid_proof);
        }
        let server_signature = hmac(h, self.keys.server(h), auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// The hashed-token mechanisms FAST tokens are issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMechanism {
    /// `HT-SHA-256-NONE`: no channel binding.
    HtSha256None,
}

impl TokenMechanism {
    pub const ALL: &'static [TokenMechanism] = &[TokenMechanism::HtSha256None];

    pub fn name(self) -> &'static str {
        match self {
            TokenMechanism::HtSha256None => "HT-SHA-256-NONE",
        }
    }

    pub fn from_name(s: &str) -> Option<TokenMechanism> {
        TokenMechanism::ALL.iter().copied().find(|m| m.name() == s)
    }
}

/// What the server keeps of a hashed token (never the token): the SHA-256
/// of the initiator's proof, and the responder's answer. For `-NONE` both
/// are the same on every login, so a stolen copy of them cannot produce a
/// proof: the proof is a preimage of `verifier`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenVerifier {
    pub verifier: Vec<u8>,
    pub responder: Vec<u8>,
}

impl TokenVerifier {
    /// Derive from a freshly issued token.
    pub fn of(m: TokenMechanism, token: &str) -> TokenVerifier {
        match m {
            TokenMechanism::HtSha256None => {
                let initiator = hmac(Hash::Sha256, token.as_bytes(), b"Initiator");
                TokenVerifier {
                    verifier: digest(Hash::Sha256, &initiator),
                    responder: hmac(Hash::Sha256, token.as_bytes(), b"Responder"),
                }
            }
        }
    }

    /// Whether `proof` (the initiator's hashed token) matches, in constant time.
    pub fn matches(&self, proof: &[u8]) -> bool {
        digest(Hash::Sha256, proof).ct_eq(&self.verifier).into()
    }
}

/// Parse an HT initial response: `authcid NUL initiator-hashed-token`.
pub fn parse_ht(msg: &[u8]) -> Result<(String, Vec<u8>), Failure> {
    let i = msg.iter().position(|b| *b == 0).ok_or(Failure::MalformedRequest)?;
    let authcid = std::str::from_utf8(&msg[..i]).map_err(|_| Failure::MalformedRequest)?;
    let proof = &msg[i + 1..];
    if authcid.is_empty() || proof.len() != 32 {
        return Err(Failure::MalformedRequest);
    }
    Ok((authcid.to_string(), proof.to_vec()))
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

    fn exporter(data: &[u8]) -> ChannelBindings {
        ChannelBindings {
            tls_exporter: Some(data.to_vec()),
            tls_server_end_point: None,
        }
    }

    fn run(mech: Mechanism, stored_pw: &str, pw: &str, gs2: &str, cb: &ChannelBindings) -> Result<Vec<u8>, Refused> {
        let keys = ScramKeys::derive(stored_pw, 4096);
        let first = format!("{gs2}n=alice,r=abcdef");
        let cf = scram_client_first(mech, first.as_bytes(), cb)?;
        let bound = cf.cb_type.and_then(|t| cb.data(t)).unwrap_or(&[]).to_vec();
        let (srv, sf) = ScramServer::new(mech, cf, Some(keys), b"k", cb);
        let fin = client_final(
            mech.hash(),
            pw,
            "n=alice,r=abcdef",
            std::str::from_utf8(&sf).unwrap(),
            gs2,
            &bound,
        );
        srv.finish(fin.as_bytes(), cb)
    }

    #[test]
    fn scram_sha256_and_sha1_accept_right_password() {
        let none = ChannelBindings::default();
        assert!(run(Mechanism::ScramSha256, "pw", "pw", "n,,", &none)
            .unwrap()
            .starts_with(b"v="));
        assert!(run(Mechanism::ScramSha1, "pw", "pw", "n,,", &none).is_ok());
    }

    #[test]
    fn scram_rejects_wrong_password_and_counts_it() {
        let r = run(Mechanism::ScramSha256, "pw", "nope", "n,,", &ChannelBindings::default()).unwrap_err();
        assert_eq!(r.condition, Failure::NotAuthorized);
        assert_eq!(r.scram, Some(ScramError::InvalidProof));
        assert!(r.bad_credentials);
    }

    #[test]
    fn plus_checks_the_binding_data() {
        let cb = exporter(&[7u8; 32]);
        assert!(run(Mechanism::ScramSha256Plus, "pw", "pw", "p=tls-exporter,,", &cb).is_ok());
        // The client bound to different data (a man in the middle).
        let keys = ScramKeys::derive("pw", 4096);
        let cf = scram_client_first(Mechanism::ScramSha256Plus, b"p=tls-exporter,,n=alice,r=x", &cb).unwrap();
        let (srv, sf) = ScramServer::new(Mechanism::ScramSha256Plus, cf, Some(keys), b"k", &cb);
        let fin = client_final(
            Hash::Sha256,
            "pw",
            "n=alice,r=x",
            std::str::from_utf8(&sf).unwrap(),
            "p=tls-exporter,,",
            &[1u8; 32],
        );
        let r = srv.finish(fin.as_bytes(), &cb).unwrap_err();
        assert_eq!(r.condition, Failure::NotAuthorized);
        assert_eq!(r.scram, Some(ScramError::ChannelBindingsDontMatch));
        assert_eq!(r.text().as_deref(), Some("e=channel-bindings-dont-match"));
        // The proof was never looked at: no guess was made.
        assert!(!r.bad_credentials);
    }

    #[test]
    fn each_type_binds_to_its_own_data() {
        let cb = ChannelBindings {
            tls_exporter: Some(vec![1; 32]),
            tls_server_end_point: Some(vec![2; 32]),
        };
        assert_eq!(cb.types(), vec![CbType::TlsExporter, CbType::TlsServerEndPoint]);
        assert!(run(Mechanism::ScramSha256Plus, "pw", "pw", "p=tls-server-end-point,,", &cb).is_ok());
        assert!(run(Mechanism::ScramSha1Plus, "pw", "pw", "p=tls-exporter,,", &cb).is_ok());
    }

    #[test]
    fn unsupported_binding_type_lets_the_client_move_on() {
        let cb = exporter(&[7u8; 32]);
        for gs2 in ["p=tls-unique,,", "p=tls-server-end-point,,", "p=made-up,,"] {
            let r = run(Mechanism::ScramSha256Plus, "pw", "pw", gs2, &cb).unwrap_err();
            assert_eq!(r.condition, Failure::InvalidMechanism, "{gs2}");
            assert_eq!(r.text().as_deref(), Some("e=unsupported-channel-binding-type"));
            assert!(!r.bad_credentials);
        }
        // p= with a mechanism without -PLUS, and -PLUS without p=, are malformed.
        for (m, gs2) in [
            (Mechanism::ScramSha256, "p=tls-exporter,,"),
            (Mechanism::ScramSha256Plus, "n,,"),
            (Mechanism::ScramSha256Plus, "y,,"),
        ] {
            let r = run(m, "pw", "pw", gs2, &cb).unwrap_err();
            assert_eq!(r.condition, Failure::MalformedRequest, "{gs2}");
            assert!(!r.bad_credentials);
        }
    }

    #[test]
    fn downgrade_flag_is_refused_when_plus_was_offered() {
        let r = scram_client_first(Mechanism::ScramSha256, b"y,,n=alice,r=x", &exporter(&[1; 32])).unwrap_err();
        assert_eq!(r.condition, Failure::MechanismTooWeak);
        assert_eq!(r.text().as_deref(), Some("e=server-does-support-channel-binding"));
        assert!(!r.bad_credentials);
        assert!(scram_client_first(Mechanism::ScramSha256, b"y,,n=alice,r=x", &ChannelBindings::default()).is_ok());
    }

    #[test]
    fn unknown_user_fails_at_the_end() {
        let none = ChannelBindings::default();
        let cf = scram_client_first(Mechanism::ScramSha256, b"n,,n=ghost,r=x", &none).unwrap();
        let (srv, sf) = ScramServer::new(Mechanism::ScramSha256, cf, None, b"k", &none);
        let fin = client_final(
            Hash::Sha256,
            "",
            "n=ghost,r=x",
            std::str::from_utf8(&sf).unwrap(),
            "n,,",
            &[],
        );
        let r = srv.finish(fin.as_bytes(), &none).unwrap_err();
        assert_eq!((r.condition, r.bad_credentials), (Failure::NotAuthorized, true));
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
            b"n,,m=ext,n=a,r=b",
        ] {
            let r = scram_client_first(Mechanism::ScramSha256, g, &ChannelBindings::default()).unwrap_err();
            assert_eq!(r.condition, Failure::MalformedRequest, "{g:?}");
            assert!(!r.bad_credentials);
        }
        assert!(parse_plain(b"\0alice").is_err());
        assert_eq!(parse_plain(b"\0alice\0pw").unwrap().1, "alice");
    }

    #[test]
    fn downgrade_protection_hashes_what_was_offered() {
        use sha2::{Digest, Sha256};
        let both = ChannelBindings {
            tls_exporter: Some(vec![1; 32]),
            tls_server_end_point: Some(vec![2; 32]),
        };
        // XEP-0474's string, written out by hand: sorted, U+001E between
        // items, U+001F before the binding types.
        let want = "PLAIN\u{1e}SCRAM-SHA-1\u{1e}SCRAM-SHA-1-PLUS\u{1e}SCRAM-SHA-256\u{1e}SCRAM-SHA-256-PLUS\
                    \u{1f}tls-exporter\u{1e}tls-server-end-point";
        assert_eq!(
            ssdp(Mechanism::ScramSha256Plus, &both),
            B64.encode(Sha256::digest(want))
        );
        let sha1 = digest(Hash::Sha1, want.as_bytes());
        assert_eq!(ssdp(Mechanism::ScramSha1, &both), B64.encode(sha1));
        // Without bindings: no -PLUS and no binding list.
        let none = ChannelBindings::default();
        let want = "PLAIN\u{1e}SCRAM-SHA-1\u{1e}SCRAM-SHA-256";
        assert_eq!(ssdp(Mechanism::ScramSha256, &none), B64.encode(Sha256::digest(want)));
        // The attribute is in the server-first message.
        let cf = scram_client_first(Mechanism::ScramSha256, b"n,,n=alice,r=x", &none).unwrap();
        let (_, sf) = ScramServer::new(Mechanism::ScramSha256, cf, None, b"k", &none);
        let sf = String::from_utf8(sf).unwrap();
        assert!(
            sf.ends_with(&format!(",h={}", ssdp(Mechanism::ScramSha256, &none))),
            "{sf}"
        );
    }

    #[test]
    fn hashed_token_none() {
        let token = "secret-token";
        let v = TokenVerifier::of(TokenMechanism::HtSha256None, token);
        let proof = hmac(Hash::Sha256, token.as_bytes(), b"Initiator");
        assert!(v.matches(&proof));
        assert!(!v.matches(&hmac(Hash::Sha256, b"other", b"Initiator")));
        assert!(!v.matches(&[]));
        assert_eq!(v.responder, hmac(Hash::Sha256, token.as_bytes(), b"Responder"));
        let mut msg = b"alice\0".to_vec();
        msg.extend_from_slice(&proof);
        assert_eq!(parse_ht(&msg).unwrap(), ("alice".to_string(), proof.clone()));
        assert!(parse_ht(b"alice").is_err());
        assert!(parse_ht(b"\0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").is_err());
        assert!(parse_ht(b"alice\0short").is_err());
        assert_eq!(
            TokenMechanism::from_name("HT-SHA-256-NONE"),
            Some(TokenMechanism::HtSha256None)
        );
        assert_eq!(TokenMechanism::from_name("HT-SHA-256-ENDP"), None);
    }

    #[test]
    fn plain_verification() {
        let k = ScramKeys::derive("secret", 4096);
        assert!(k.verify_password("secret"));
        assert!(!k.verify_password("Secret"));
    }
}

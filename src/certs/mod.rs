//! One certificate store for every TLS listener (c2s STARTTLS and direct TLS,
//! s2s, HTTPS). It resolves by SNI, so a certificate replaced here (SIGHUP in
//! `files` mode, renewal in `acme` mode) is served everywhere at once.
//! In `acme` mode it also answers TLS-ALPN-01 challenge handshakes and keeps
//! the HTTP-01 key authorizations for the plain HTTP listener.

pub mod acme;

mod end_point;
mod validity;

pub use end_point::server_end_point;

use crate::config::{Config, TlsMode};
use anyhow::{anyhow, Context, Result};
use rustls::{
    crypto::ring::sign::any_supported_type,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, RwLock,
    },
};

/// ALPN protocol of XEP-0368 direct TLS for clients.
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";
/// ALPN protocol of XEP-0368 direct TLS for servers.
pub const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";
/// ALPN protocol of ACME TLS-ALPN-01 challenge handshakes (RFC 8737).
pub const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

/// A certificate as served, with its RFC 5929 `tls-server-end-point`
/// binding computed once when it is installed.
#[derive(Clone)]
struct Served {
    key: Arc<CertifiedKey>,
    end_point: Option<Arc<[u8]>>,
}

#[derive(Default)]
struct Inner {
    by_name: HashMap<String, Served>,
    default: Option<Served>,
}

impl Inner {
    /// The certificate a handshake with this SNI gets: the one for that
    /// name, else the domain's. [`ResolvesServerCert::resolve`] and the
    /// channel binding both choose through here, so they agree.
    fn for_sni(&self, sni: Option<&str>) -> Option<&Served> {
        match sni {
            Some(sni) => self.by_name.get(&sni.to_ascii_lowercase()).or(self.default.as_ref()),
            None => self.default.as_ref(),
        }
    }
}

/// The channel-binding data one TLS connection can bind to, per type;
/// computed once after its handshake (`CertStore::channel_bindings`).
/// Empty means no -PLUS mechanism is offered; SASL reads it
/// (`xmpp::sasl`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelBindings {
    pub tls_exporter: Option<Vec<u8>>,
    pub tls_server_end_point: Option<Vec<u8>>,
}

pub struct CertStore {
    // A std RwLock: read on every handshake, written on reload, never held across await.
    inner: RwLock<Inner>,
    mode: TlsMode,
    domain: String,
    names: Vec<String>,
    files: Option<(PathBuf, PathBuf)>,
    tls_dir: PathBuf,
    /// The ACME worker's challenge state (mode `acme`), set when it starts.
    acme: RwLock<Option<Arc<rustls_acme::ResolvesServerCertAcme>>>,
    /// Whether HTTPS configurations offer `acme-tls/1` (mode `acme`, challenge `tls-alpn-01`).
    tls_alpn_challenge: bool,
    /// Unix time of the last "no certificate yet" warning, to log it at most every 10 s.
    last_refusal_log: AtomicI64,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("mode", &self.mode)
            .field("names", &self.names)
            .finish()
    }
}

impl CertStore {
    /// Build the store for `config` and load (or create) its certificates.
    pub fn new(config: &Config) -> Result<Arc<CertStore>> {
        let names = service_names(config);
        let store = CertStore {
            inner: RwLock::new(Inner::default()),
            mode: config.tls.mode,
            domain: config.domain.clone(),
            names,
            files: match (&config.tls.cert, &config.tls.key) {
                (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                _ => None,
            },
            tls_dir: config.data_dir.join("tls"),
            acme: RwLock::new(None),
            tls_alpn_challenge: config.tls.mode == TlsMode::Acme
                && config.tls.acme.challenge == crate::config::AcmeChallenge::TlsAlpn01,
            last_refusal_log: AtomicI64::new(0),
        };
        store.reload()?;
        Ok(Arc::new(store))
    }

    /// The names this server answers for: the domain and its service subdomains.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// (Re)load certificates from their source. On error the old ones stay.
    pub fn reload(&self) -> Result<()> {
        let key = match self.mode {
            TlsMode::SelfSigned => self_signed(&self.tls_dir, &self.names)?,
            TlsMode::Files => {
                let (c, k) = self
                    .files
                    .as_ref()
                    .ok_or_else(|| anyhow!("tls.cert and tls.key are required"))?;
                load_pem(c, k)?
            }
            // Filled by the ACME worker once it has a certificate.
            TlsMode::Acme => return Ok(()),
        };
        self.install(&self.names.clone(), key);
        Ok(())
    }

    /// Serve `key` for `names`; the first name's certificate is also the default.
    pub fn install(&self, names: &[String], key: Arc<CertifiedKey>) {
        let end_point = key.cert.first().and_then(|c| server_end_point(c)).map(Arc::from);
        let served = Served { key, end_point };
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        for n in names {
            inner.by_name.insert(n.to_ascii_lowercase(), served.clone());
        }
        if names.iter().any(|n| n.eq_ignore_ascii_case(&self.domain)) || inner.default.is_none() {
            inner.default = Some(served);
        }
    }

    /// A rustls server configuration using this store, with the given ALPN list.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let cfg = ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        self.finish_server_config(cfg, alpn)
    }

    /// Like [`CertStore::server_config`], asking the peer for a certificate
    /// that `verifier` judges (server-to-server streams: SASL EXTERNAL).
    pub fn server_config_with_client_auth(
        self: &Arc<Self>,
        alpn: &[&[u8]],
        verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    ) -> Arc<ServerConfig> {
        let cfg = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.clone());
        self.finish_server_config(cfg, alpn)
    }

    /// The certificate served for `name`, to present as a TLS client.
    pub fn certified_key(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.by_name.get(&name.to_ascii_lowercase()).map(|s| s.key.clone())
    }

    /// The `tls-server-end-point` channel binding (RFC 5929 §4) of the
    /// certificate served to a handshake that sent `sni`; `None` when the
    /// certificate's signature algorithm defines none (Ed25519) or there is
    /// no certificate. rustls does not say which certificate a connection
    /// was given, so this repeats the resolver's choice; a renewal in the
    /// instant between the handshake and this call gives the new
    /// certificate's value, and the exchange then fails with
    /// `channel-bindings-dont-match`: never a binding the client did not see.
    pub fn end_point_binding(&self, sni: Option<&str>) -> Option<Arc<[u8]>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.for_sni(sni)?.end_point.clone()
    }

    /// What SCRAM-*-PLUS can bind to on `conn`, once its handshake is
    /// done: the TLS 1.3 exporter value (`tls-exporter`, RFC 9266) and, on
    /// TLS 1.2 and 1.3, the hash of the certificate this connection was
    /// given (`tls-server-end-point`, RFC 5929), which XEP-0440 requires of
    /// servers. The same for XMPP over TCP and over WebSocket.
    pub fn channel_bindings(&self, conn: &rustls::ServerConnection) -> ChannelBindings {
        let tls_exporter = (conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3))
            .then(|| {
                conn.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                    .ok()
            })
            .flatten();
        self.channel_bindings_of(tls_exporter, conn.server_name())
    }

    /// [`CertStore::channel_bindings`] from what a handshake said: its
    /// `tls-exporter` value (TLS 1.3) and the server name the client asked
    /// for (for connections whose TLS layer keeps no `ServerConnection`).
    pub fn channel_bindings_of(&self, tls_exporter: Option<Vec<u8>>, sni: Option<&str>) -> ChannelBindings {
        ChannelBindings {
            tls_exporter,
            tls_server_end_point: self.end_point_binding(sni).map(|b| b.to_vec()),
        }
    }

    fn finish_server_config(&self, mut cfg: ServerConfig, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // TLS-ALPN-01 is validated on port 443: the HTTPS configuration (the one offering
        // HTTP) also accepts challenge handshakes. Other listeners keep their ALPN list as is.
        if self.tls_alpn_challenge && alpn.iter().any(|p| matches!(*p, b"http/1.1" | b"h2")) {
            cfg.alpn_protocols.push(ALPN_ACME_TLS.to_vec());
        }
        Arc::new(cfg)
    }

    /// Each served name with its certificate's `notAfter` (Unix seconds), sorted by name.
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = inner
            .by_name
            .iter()
            .filter_map(|(n, s)| Some((n.clone(), validity::not_after(s.key.cert.first()?)?)))
            .collect();
        v.sort();
        v
    }

    /// Hand the ACME worker's challenge state to the store (mode `acme`).
    pub fn set_acme_resolver(&self, r: Arc<rustls_acme::ResolvesServerCertAcme>) {
        *self.acme.write().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    /// The HTTP-01 key authorization for `token`, while a challenge is pending.
    pub fn http01_key_auth(&self, token: &str) -> Option<String> {
        let acme = self.acme.read().unwrap_or_else(|p| p.into_inner());
        acme.as_ref()?.get_http_01_key_auth(token)
    }

    /// Whether a certificate is installed.
    pub fn has_certificate(&self) -> bool {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).default.is_some()
    }

    /// Each served name with the expiry (Unix time) of its certificate, `None` when it has none.
    pub fn expiry_by_name(&self) -> Vec<(String, Option<i64>)> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        self.names
            .iter()
            .map(|n| {
                let exp = inner
                    .by_name
                    .get(n)
                    .and_then(|s| s.key.cert.first())
                    .and_then(|c| not_after(c));
                (n.clone(), exp)
            })
            .collect()
    }

    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// The path of the local CA certificate (mode `self-signed`), for users to trust.
    pub fn ca_path(&self) -> Option<PathBuf> {
        (self.mode == TlsMode::SelfSigned).then(|| self.tls_dir.join("ca.pem"))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if rustls_acme::is_tls_alpn_challenge(&hello) {
            // Only the CA's validator offers `acme-tls/1` alone; answer with the challenge certificate.
            let acme = self.acme.read().unwrap_or_else(|p| p.into_inner()).clone();
            return match acme {
                Some(r) => r.resolve(hello),
                None => None,
            };
        }
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let found = inner.for_sni(hello.server_name()).map(|s| s.key.clone());
        if found.is_none() {
            let now = crate::store::now();
            if now - self.last_refusal_log.swap(now, Ordering::Relaxed) >= 10 {
                if self.mode == TlsMode::Acme {
                    tracing::warn!(
                        sni = ?hello.server_name(),
                        "TLS handshake refused: no certificate yet; the ACME worker is still obtaining one. \
                         Run `pushbox check certs` to see why it has none (and `pushbox check dns` / \
                         `pushbox check ports`: the names must point to this host and port 443 or 80 must reach it)"
                    );
                } else {
                    tracing::warn!(sni = ?hello.server_name(), "TLS handshake refused: no certificate loaded (see `pushbox check certs`)");
                }
            }
        }
        found
    }
}

/// The domain and the service subdomains pushbox serves.
pub fn service_names(config: &Config) -> Vec<String> {
    let domain = &config.domain;
    let mut names = vec![domain.to_string(), format!("push.{domain}"), format!("upload.{domain}")];
    names.extend(config.muc_domain());
    names
}

/// The expiry (Unix time) of a DER certificate.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(c.validity().not_after.timestamp())
}

fn load_pem(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    if chain.is_empty() {
        return Err(anyhow!("{} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading private key {}", key.display()))?;
    let signer = any_supported_type(&key).map_err(|e| anyhow!("unsupported private key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

fn write_private(path: &Path, data: &str) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o.open(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data.as_bytes())?;
    Ok(())
}

fn ca_params() -> Result<rcgen::CertificateParams> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(rcgen::DnType::CommonName, "pushbox local CA");
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "pushbox self-signed");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2049, 12, 31);
    Ok(p)
}

/// Mode `self-signed`: a local CA made once (`ca.pem`, for users to trust)
/// and a certificate for `names` signed by it, remade when the names change.
fn self_signed(dir: &Path, names: &[String]) -> Result<Arc<CertifiedKey>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let (ca_pem, ca_key_pem) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (cert_pem, key_pem, names_file) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("names"));
    let want = names.join("\n");
    // `names` holds the names and the expiry; remake 30 days before expiry.
    if let Ok(saved) = std::fs::read_to_string(&names_file) {
        let (saved_names, expiry) = saved.rsplit_once("\n#expires=").unwrap_or((&saved, "0"));
        let expiry: i64 = expiry.trim().parse().unwrap_or(0);
        if cert_pem.exists() && key_pem.exists() && saved_names == want && expiry > crate::store::now() + 30 * 86400 {
            return load_pem(&cert_pem, &key_pem);
        }
    }
    let ca_key = if ca_key_pem.exists() && ca_pem.exists() {
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(&ca_key_pem)?)?
    } else {
        let k = rcgen::KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&k)?;
        write_private(&ca_key_pem, &k.serialize_pem())?;
        std::fs::write(&ca_pem, cert.pem())?;
        k
    };
    let issuer = rcgen::Issuer::new(ca_params()?, ca_key);
    let leaf_key = rcgen::KeyPair::generate()?;
    let mut p = rcgen::CertificateParams::new(names.to_vec())?;
    p.distinguished_name.push(rcgen::DnType::CommonName, names[0].clone());
    p.use_authority_key_identifier_extension = true;
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time_now();
    p.not_before = now.0;
    p.not_after = now.1;
    let leaf = p.signed_by(&leaf_key, &issuer)?;
    let chain = format!("{}{}", leaf.pem(), std::fs::read_to_string(&ca_pem)?);
    std::fs::write(&cert_pem, chain)?;
    write_private(&key_pem, &leaf_key.serialize_pem())?;
    std::fs::write(&names_file, format!("{want}\n#expires={}", now.1.unix_timestamp()))?;
    tracing::info!(names = ?names, ca = %ca_pem.display(), "generated a self-signed certificate; trust the CA file to verify it");
    load_pem(&cert_pem, &key_pem)
}

/// A validity window from yesterday to 800 days from now (Apple's clients
/// refuse leaf certificates valid for more than 825 days).
fn time_now() -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (now - time::Duration::days(1), now + time::Duration::days(800))
}

//! ACME (RFC 8555) certificates for `tls.mode = "acme"`: a background worker
//! built on rustls-acme that obtains one certificate for the domain and its
//! service subdomains, renews it without a restart, installs it in the
//! [`CertStore`], caches account and certificate under `data_dir/acme` (0700,
//! files 0600) and records its state in `status.json` for `pushbox check`.

use super::CertStore;
use crate::config::{AcmeChallenge, Config, TlsMode};
use anyhow::{anyhow, Context, Result};
use rustls::{crypto::ring::sign::any_supported_type, sign::CertifiedKey, RootCertStore};
use rustls_acme::{AccountCache, AcmeConfig, CertCache, EventError, EventOk, OrderError, UseChallenge};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};
use tokio::sync::watch;

/// Where account and certificates are cached.
pub fn cache_dir(config: &Config) -> PathBuf {
    config.data_dir.join("acme")
}

/// The state file the worker keeps for `pushbox check`.
pub fn status_path(config: &Config) -> PathBuf {
    cache_dir(config).join("status.json")
}

/// The cached certificate (private key then chain, PEM) for this configuration.
pub fn cert_path(config: &Config) -> Option<PathBuf> {
    let url = config.tls.acme.directory_url()?;
    Some(cache_dir(config).join(cert_file_name(&super::service_names(config), &url)))
}

fn digest(parts: &[String], last: &str) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.update(last.as_bytes());
    h.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// Names depend on the names and the CA, so a change of either orders anew.
fn cert_file_name(names: &[String], directory_url: &str) -> String {
    format!("cert-{}.pem", digest(names, directory_url))
}

fn account_file_name(contact: &[String], directory_url: &str) -> String {
    format!("account-{}.key", digest(contact, directory_url))
}

/// What the worker last did, written to `data_dir/acme/status.json` (no secrets in it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub directory: String,
    pub challenge: String,
    pub names: Vec<String>,
    /// `obtaining` (no certificate yet), `valid`, or `failing` (the last attempt failed).
    pub state: String,
    /// Unix time the worker started.
    pub started_at: i64,
    /// Unix time of the last change of this record.
    pub updated_at: i64,
    /// Expiry (Unix time) of the certificate being served.
    pub not_after: Option<i64>,
    /// `cache` or `ca`: where the served certificate came from.
    pub certificate_from: Option<String>,
    /// Seconds from start to the first certificate served, when this run obtained one.
    pub first_certificate_secs: Option<f64>,
    /// New certificates obtained from the CA since start.
    pub certificates_obtained: u32,
    /// Failed attempts since the last success.
    pub failures: u32,
    pub last_error: Option<String>,
    /// What to do about `last_error`.
    pub advice: Option<String>,
    pub last_error_at: Option<i64>,
    /// Unix time of the next attempt after a failure.
    pub next_attempt_at: Option<i64>,
}

impl Status {
    /// Read the worker's record, if there is one.
    pub fn load(config: &Config) -> Option<Status> {
        serde_json::from_slice(&std::fs::read(status_path(config)).ok()?).ok()
    }
}

/// Create `dir` (and parents) readable only by this user.
fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Write `data` to `path` with mode 0600 through a temporary file, so a crash never leaves half a key.
fn write_private_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o.open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Parse rustls-acme's cache format: the private key, then the chain, all PEM.
pub fn parse_cached(pem: &[u8]) -> Result<(Arc<CertifiedKey>, i64)> {
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| anyhow!("no private key: {e}"))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("bad certificate: {e}"))?;
    let leaf = chain.first().ok_or_else(|| anyhow!("no certificate"))?;
    let not_after = super::not_after(leaf).ok_or_else(|| anyhow!("unreadable certificate"))?;
    let signer = any_supported_type(&key).map_err(|e| anyhow!("unsupported private key: {e}"))?;
    Ok((Arc::new(CertifiedKey::new(chain, signer)), not_after))
}

/// rustls-acme's cache: files under `data_dir/acme`; every certificate read
/// or written is also installed in the [`CertStore`].
struct Cache {
    dir: PathBuf,
    certs: Arc<CertStore>,
    status: Arc<StatusWriter>,
}

impl Cache {
    fn install(&self, pem: &[u8], from: &str) -> io::Result<()> {
        match parse_cached(pem) {
            Ok((key, not_after)) if not_after > crate::store::now() => {
                self.certs.install(self.certs.names(), key);
                self.status.update(|s| {
                    s.not_after = Some(not_after);
                    s.certificate_from = Some(from.into());
                    s.state = "valid".into();
                    if from == "ca" {
                        s.last_error = None;
                        s.advice = None;
                    }
                });
                Ok(())
            }
            Ok(_) => {
                tracing::info!("the cached ACME certificate has expired; ordering a new one");
                Ok(())
            }
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, format!("{e:#}"))),
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

async fn read_if_exists(path: PathBuf) -> io::Result<Option<Vec<u8>>> {
    blocking(move || match std::fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    })
    .await
}

#[async_trait::async_trait]
impl CertCache for Cache {
    type EC = io::Error;
    async fn load_cert(&self, domains: &[String], directory_url: &str) -> io::Result<Option<Vec<u8>>> {
        let pem = read_if_exists(self.dir.join(cert_file_name(domains, directory_url))).await?;
        if let Some(pem) = &pem {
            self.install(pem, "cache")?;
        }
        Ok(pem)
    }
    async fn store_cert(&self, domains: &[String], directory_url: &str, cert: &[u8]) -> io::Result<()> {
        let (dir, path, data) = (
            self.dir.clone(),
            self.dir.join(cert_file_name(domains, directory_url)),
            cert.to_vec(),
        );
        let written = data.clone();
        blocking(move || {
            private_dir(&dir)?;
            write_private_atomic(&path, &data)
        })
        .await?;
        self.install(&written, "ca")
    }
}

#[async_trait::async_trait]
impl AccountCache for Cache {
    type EA = io::Error;
    async fn load_account(&self, contact: &[String], directory_url: &str) -> io::Result<Option<Vec<u8>>> {
        read_if_exists(self.dir.join(account_file_name(contact, directory_url))).await
    }
    async fn store_account(&self, contact: &[String], directory_url: &str, account: &[u8]) -> io::Result<()> {
        let (dir, path, data) = (
            self.dir.clone(),
            self.dir.join(account_file_name(contact, directory_url)),
            account.to_vec(),
        );
        blocking(move || {
            private_dir(&dir)?;
            write_private_atomic(&path, &data)
        })
        .await
    }
}

/// The status record, in memory and in `status.json`.
struct StatusWriter {
    path: PathBuf,
    status: std::sync::Mutex<Status>,
}

impl StatusWriter {
    fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
        s.updated_at = crate::store::now();
        let json = serde_json::to_vec_pretty(&*s).unwrap_or_default();
        drop(s);
        // A small file written rarely (a few times per renewal): not worth the blocking pool.
        if let Err(e) = write_private_atomic(&self.path, &json) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the ACME status file");
        }
    }

    fn get(&self) -> Status {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The TLS client configuration for talking to the CA: the public roots plus `ca_roots`.
fn client_config(config: &Config) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(p) = &config.tls.acme.ca_roots {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(p)
            .with_context(|| format!("reading tls.acme.ca_roots {}", p.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing tls.acme.ca_roots {}", p.display()))?;
        if certs.is_empty() {
            return Err(anyhow!("tls.acme.ca_roots {} holds no certificate", p.display()));
        }
        for c in certs {
            roots
                .add(c)
                .with_context(|| format!("tls.acme.ca_roots {}: unusable root", p.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// A handle on the running worker (tests and metrics read its status).
pub struct Worker {
    status: Arc<StatusWriter>,
}

impl Worker {
    pub fn status(&self) -> Status {
        self.status.get()
    }
}

/// Start the ACME worker for `certs` (mode `acme` only): load the cached
/// certificate or order one, then renew in the background until `stop`.
pub fn start(config: &Config, certs: Arc<CertStore>, stop: watch::Receiver<bool>) -> Result<Worker> {
    if config.tls.mode != TlsMode::Acme {
        return Err(anyhow!("tls.mode is not \"acme\""));
    }
    let url = config
        .tls
        .acme
        .directory_url()
        .ok_or_else(|| anyhow!("tls.acme.directory `{}` is not valid", config.tls.acme.directory))?;
    let dir = cache_dir(config);
    private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let names = certs.names().to_vec();
    let challenge = config.tls.acme.challenge;
    let status = Arc::new(StatusWriter {
        path: status_path(config),
        status: std::sync::Mutex::new(Status {
            directory: url.clone(),
            challenge: challenge_name(challenge).into(),
            names: names.clone(),
            state: "obtaining".into(),
            started_at: crate::store::now(),
            ..Default::default()
        }),
    });
    status.update(|_| {});
    let cache = Cache {
        dir,
        certs: certs.clone(),
        status: status.clone(),
    };
    let acme = AcmeConfig::new_with_client_config(&names, client_config(config)?)
        .directory(&url)
        .contact(config.tls.acme.contact.iter())
        .challenge_type(match challenge {
            AcmeChallenge::TlsAlpn01 => UseChallenge::TlsAlpn01,
            AcmeChallenge::Http01 => UseChallenge::Http01,
        })
        .cache(cache);
    let state = acme.state();
    certs.set_acme_resolver(state.resolver());
    tracing::info!(names = ?names, directory = %url, challenge = challenge_name(challenge), "ACME: starting");
    tokio::spawn(run(state, certs, status.clone(), url, challenge, stop));
    Ok(Worker { status })
}

fn challenge_name(c: AcmeChallenge) -> &'static str {
    match c {
        AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        AcmeChallenge::Http01 => "http-01",
    }
}

async fn run(
    mut state: rustls_acme::AcmeState<io::Error, io::Error>,
    certs: Arc<CertStore>,
    status: Arc<StatusWriter>,
    url: String,
    challenge: AcmeChallenge,
    mut stop: watch::Receiver<bool>,
) {
    use futures_util::StreamExt;
    let started = Instant::now();
    let names = certs.names().to_vec();
    loop {
        let event = tokio::select! {
            e = state.next() => e,
            _ = crate::shutdown::stopped(&mut stop) => return,
        };
        let Some(event) = event else { return };
        match event {
            Ok(EventOk::DeployedCachedCert) => {
                let s = status.get();
                status.update(|s| {
                    s.failures = 0;
                    s.first_certificate_secs.get_or_insert(started.elapsed().as_secs_f64());
                });
                tracing::info!(names = ?names, not_after = ?s.not_after.map(fmt_time), "ACME: serving the cached certificate");
            }
            Ok(EventOk::DeployedNewCert) => {
                // The cache store that follows installs it; record the success now.
                let secs = started.elapsed().as_secs_f64();
                status.update(|s| {
                    s.failures = 0;
                    s.next_attempt_at = None;
                    s.certificates_obtained += 1;
                    s.first_certificate_secs.get_or_insert(secs);
                });
                tracing::info!(names = ?names, directory = %url, after_secs = secs, "ACME: obtained a new certificate");
            }
            Ok(EventOk::CertCacheStore) => {
                let not_after = status.get().not_after.map(fmt_time);
                tracing::info!(not_after = ?not_after, "ACME: new certificate cached and served on every listener");
            }
            Ok(EventOk::AccountCacheStore) => tracing::debug!("ACME: account key cached"),
            Err(EventError::Order(e)) => {
                let (msg, advice) = explain(&e, challenge, &names, &url);
                let now = crate::store::now();
                status.update(|s| {
                    s.failures += 1;
                    // rustls-acme waits 1 s, 2 s, 4 s, … up to about 18 h between attempts.
                    s.next_attempt_at = Some(now + (1i64 << (s.failures - 1).min(16)));
                    s.state = if certs.has_certificate() { "valid" } else { "failing" }.into();
                    s.last_error = Some(msg.clone());
                    s.advice = Some(advice.clone());
                    s.last_error_at = Some(now);
                });
                let s = status.get();
                tracing::error!(
                    failures = s.failures,
                    retry_in_secs = s.next_attempt_at.map(|t| t - now),
                    "ACME: could not obtain a certificate: {msg}. What to do: {advice}"
                );
            }
            Err(e @ (EventError::CertCacheStore(_) | EventError::AccountCacheStore(_))) => {
                let dir = status
                    .path
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                tracing::error!(error = %e, "ACME: cannot write the cache in {dir}: make it writable by the pushbox user");
                record(
                    &status,
                    &certs,
                    format!("{e}"),
                    format!("make {dir} writable by the pushbox user"),
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "ACME: cache problem; ordering a new certificate");
                record(
                    &status,
                    &certs,
                    format!("{e}"),
                    "the cache is unreadable; a new certificate is ordered".into(),
                );
            }
        }
    }
}

fn record(status: &StatusWriter, certs: &CertStore, msg: String, advice: String) {
    status.update(|s| {
        s.last_error = Some(msg);
        s.advice = Some(advice);
        s.last_error_at = Some(crate::store::now());
        if !certs.has_certificate() {
            s.state = "failing".into();
        }
    });
}

fn fmt_time(t: i64) -> String {
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(when).to_string()
}

/// A short message and what to do about an order failure.
fn explain(e: &OrderError, challenge: AcmeChallenge, names: &[String], url: &str) -> (String, String) {
    let msg = match e {
        OrderError::BadAuth(auth) => {
            let rustls_acme::acme::Identifier::Dns(name) = &auth.identifier;
            let why: Vec<String> = auth
                .challenges
                .iter()
                .filter_map(|c| c.error.as_ref())
                .map(|p| {
                    format!(
                        "{} {}",
                        p.typ.as_deref().unwrap_or(""),
                        p.detail.as_deref().unwrap_or("")
                    )
                })
                .collect();
            format!("validation of {name} failed: {}", why.join("; "))
        }
        e => e.to_string(),
    };
    let (port, listener) = match challenge {
        AcmeChallenge::TlsAlpn01 => (443, "https"),
        AcmeChallenge::Http01 => (80, "http"),
    };
    let advice = if msg.contains("rateLimited") {
        "the CA is rate-limiting this account or these names; pushbox retries with growing delays. \
         Use directory = \"letsencrypt-staging\" while experimenting"
            .to_string()
    } else if matches!(e, OrderError::BadAuth(_)) && (msg.contains(":dns") || msg.contains("NXDOMAIN")) {
        format!(
            "the CA could not resolve the names: create A/AAAA records for {} pointing to this host (`pushbox check dns`)",
            names.join(", ")
        )
    } else if matches!(e, OrderError::BadAuth(_) | OrderError::TooManyAttemptsAuth(_)) {
        format!(
            "the CA could not complete {} on TCP port {port}: the names ({}) must resolve to this host and port {port} \
             must reach pushbox's `listen.{listener}` from the internet (`pushbox check dns`, `pushbox check ports`)",
            challenge_name(challenge),
            names.join(", ")
        )
    } else if matches!(e, OrderError::Acme(rustls_acme::acme::AcmeError::HttpRequest(_)))
        && !msg.contains("urn:ietf:params:acme")
    {
        format!(
            "cannot talk to the ACME directory {url}: check outbound HTTPS from this host, `tls.acme.directory`, \
             and `tls.acme.ca_roots` for a private CA"
        )
    } else {
        "pushbox retries with growing delays; if it keeps failing, check the CA's status and `pushbox check`".into()
    };
    (msg, advice)
}

//! `[relay]`: the push relay's HTTP API and its providers.

use super::Duration;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Signup {
    /// Anyone may create a relay account with `POST /api/v1/accounts/`.
    #[default]
    Open,
    /// Only existing accounts may log in.
    Closed,
}

/// HTTP/2 connections per provider credential unless
/// `relay.provider_connections` says otherwise.
pub const DEFAULT_PROVIDER_CONNECTIONS: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Serve the push relay API on the `https` listeners.
    pub enabled: bool,
    /// The URL clients reach the relay at, e.g. `https://push.example.org`.
    /// Unset: `https://<domain>` (with the port of the first https listener if not 443).
    pub public_url: Option<String>,
    pub signup: Signup,
    /// How long a whitelist token lives unless its creator asks for less (`date_expires`).
    pub token_lifetime: Duration,
    /// How long a push is kept and retried when the sender names no TTL.
    pub push_ttl: Duration,
    /// Longest wait between two delivery attempts of a push: retries back off
    /// from one second, doubling, up to this.
    pub max_retry_delay: Duration,
    /// Largest `data` of a push, in bytes of JSON (APNs allows 4 KiB for a whole payload).
    pub max_data_bytes: usize,
    /// Pushes per minute per whitelist token (a token may ask for less).
    pub token_rate: u32,
    /// API requests per minute per client IP address.
    pub ip_rate: u32,
    /// Extra PEM roots to trust for Web Push endpoints, upstream relays and direct-push relays.
    pub ca_roots: Option<PathBuf>,
    /// The VAPID `sub` claim (a `mailto:` or `https:` URL); unset: the public URL.
    pub vapid_subject: Option<String>,
    /// Where the relay keeps its state. Unset: the SQLite file in
    /// `data_dir` (one node). A `postgres://user:password@host:port/db` URL:
    /// PostgreSQL, shared by every node that names the same URL.
    pub database: Option<String>,
    /// Connections each node keeps to PostgreSQL.
    pub database_pool: usize,
    /// With PostgreSQL: how long a node owns the deliveries it claimed. A
    /// node that dies holding some loses them to the others when it runs
    /// out; it must outlast the slowest provider request (40 s).
    pub claim_lease: Duration,
    /// Most HTTP/2 connections a node opens per provider credential (per
    /// Web Push service). Pushes share one connection's streams; another
    /// is opened only when every stream the provider allows
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`) on the open ones is busy.
    pub provider_connections: usize,
    pub apns: Option<Apns>,
    pub fcm: Option<Fcm>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            enabled: true,
            public_url: None,
            signup: Signup::Open,
            token_lifetime: Duration::from_secs(30 * 86400),
            push_ttl: Duration::from_secs(86400),
            max_retry_delay: Duration::from_secs(15 * 60),
            max_data_bytes: 3072,
            token_rate: 60,
            ip_rate: 600,
            ca_roots: None,
            vapid_subject: None,
            database: None,
            database_pool: 16,
            claim_lease: Duration::from_secs(60),
            provider_connections: DEFAULT_PROVIDER_CONNECTIONS,
            apns: None,
            fcm: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ApnsEnvironment {
    #[default]
    Production,
    Sandbox,
}

/// One APNs credential: token authentication (`key`, `key_id`, `team_id`)
/// or certificate authentication (`certificate`, `certificate_key`), never both.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apns {
    /// Token authentication: path to the `.p8` token-signing key from Apple.
    pub key: Option<PathBuf>,
    /// Token authentication: the key's id (10 characters, from Apple's console).
    pub key_id: Option<String>,
    /// Token authentication: the developer team id.
    pub team_id: Option<String>,
    /// Certificate authentication: path to the PEM client certificate (chain)
    /// Apple issued for the app (converted from the `.p12` export).
    pub certificate: Option<PathBuf>,
    /// Certificate authentication: path to the PEM private key of
    /// `certificate` (PKCS#8, RSA or EC). Unset: the key is read from the
    /// `certificate` file itself.
    pub certificate_key: Option<PathBuf>,
    /// The app's bundle id, sent as `apns-topic`.
    pub topic: String,
    #[serde(default)]
    pub environment: ApnsEnvironment,
    /// Overrides the endpoint chosen by `environment`.
    pub endpoint: Option<String>,
    /// Extra PEM roots to trust for the endpoint.
    pub ca_roots: Option<PathBuf>,
}

/// How an APNs credential authenticates, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApnsAuth<'a> {
    /// A provider token (ES256 JWT) signed with the `.p8` key.
    Token {
        key: &'a Path,
        key_id: &'a str,
        team_id: &'a str,
    },
    /// A TLS client certificate; the key is in `key` (which may be the certificate file).
    Certificate { certificate: &'a Path, key: &'a Path },
}

impl Apns {
    /// The authentication this credential uses, or what is wrong with it as
    /// `(key, message)` pairs naming the `relay.apns` keys.
    pub fn auth(&self) -> Result<ApnsAuth<'_>, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let token = self.key.is_some() || self.key_id.is_some() || self.team_id.is_some();
        let cert = self.certificate.is_some() || self.certificate_key.is_some();
        match (token, cert) {
            (true, true) => problems.push((
                "relay.apns",
                "set either `key`, `key_id` and `team_id` (token authentication) or `certificate` \
                 (certificate authentication), not both"
                    .to_string(),
            )),
            (false, false) => problems.push((
                "relay.apns",
                "no credential: set `key`, `key_id` and `team_id` (token authentication, a .p8 key) \
                 or `certificate` (certificate authentication)"
                    .to_string(),
            )),
            (true, false) => {
                for (name, missing) in [
                    ("relay.apns.key", self.key.is_none()),
                    ("relay.apns.key_id", self.key_id.is_none()),
                    ("relay.apns.team_id", self.team_id.is_none()),
                ] {
                    if missing {
                        problems.push((
                            name,
                            "missing: token authentication needs `key`, `key_id` and `team_id`".into(),
                        ));
                    }
                }
            }
            (false, true) => {
                if self.certificate.is_none() {
                    problems.push((
                        "relay.apns.certificate",
                        "missing: `certificate_key` is set but not the certificate it belongs to".into(),
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(match (&self.key, &self.key_id, &self.team_id, &self.certificate) {
            (Some(key), Some(key_id), Some(team_id), None) => ApnsAuth::Token { key, key_id, team_id },
            (_, _, _, Some(certificate)) => ApnsAuth::Certificate {
                certificate,
                key: self.certificate_key.as_deref().unwrap_or(certificate),
            },
            _ => unreachable!("checked above"),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fcm {
    /// Path to the service-account JSON from the Firebase console.
    pub service_account: PathBuf,
    /// Overrides `https://fcm.googleapis.com`.
    pub endpoint: Option<String>,
    /// Extra PEM roots to trust for the endpoint and the token URI.
    pub ca_roots: Option<PathBuf>,
}

impl RelayConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(r) = &mut self.ca_roots {
            fix(r);
        }
        if let Some(a) = &mut self.apns {
            for p in [&mut a.key, &mut a.certificate, &mut a.certificate_key]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
            if let Some(r) = &mut a.ca_roots {
                fix(r);
            }
        }
        if let Some(f) = &mut self.fcm {
            fix(&mut f.service_account);
            if let Some(r) = &mut f.ca_roots {
                fix(r);
            }
        }
    }

    pub(crate) fn validate(&self, report: &mut dyn FnMut(&str, String)) {
        if let Some(u) = &self.public_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                report("relay.public_url", format!("`{u}` is not an http(s) URL"));
            }
        }
        if self.max_retry_delay.get() < std::time::Duration::from_secs(1) {
            report("relay.max_retry_delay", "must be at least 1s".into());
        }
        if let Some(url) = &self.database {
            if let Err(e) = database_url(url) {
                report("relay.database", e);
            }
        }
        if self.database_pool == 0 {
            report("relay.database_pool", "must be at least 1".into());
        }
        if self.provider_connections == 0 {
            report("relay.provider_connections", "must be at least 1".into());
        }
        if self.claim_lease.get() < std::time::Duration::from_secs(1) {
            report("relay.claim_lease", "must be at least 1s".into());
        }
        if self.token_rate == 0 {
            report("relay.token_rate", "must be at least 1".into());
        }
        if self.ip_rate == 0 {
            report("relay.ip_rate", "must be at least 1".into());
        }
        if let Some(r) = &self.ca_roots {
            if !r.is_file() {
                report(
                    "relay.ca_roots",
                    format!("file {} does not exist or is not readable", r.display()),
                );
            }
        }
        if let Some(a) = &self.apns {
            if let Some(e) = &a.endpoint {
                if !e.starts_with("https://") {
                    report("relay.apns.endpoint", format!("`{e}` is not an https URL"));
                }
            }
            let files = [
                ("relay.apns.key", &a.key),
                ("relay.apns.certificate", &a.certificate),
                ("relay.apns.certificate_key", &a.certificate_key),
                ("relay.apns.ca_roots", &a.ca_roots),
            ];
            for (name, path) in files {
                if let Some(p) = path {
                    if !p.is_file() {
                        report(name, format!("file {} does not exist or is not readable", p.display()));
                    }
                }
            }
            if let Err(problems) = a.auth() {
                for (name, message) in problems {
                    report(name, message);
                }
            }
        }
        if let Some(f) = &self.fcm {
            if let Some(e) = &f.endpoint {
                if !e.starts_with("https://") {
                    report("relay.fcm.endpoint", format!("`{e}` is not an https URL"));
                }
            }
            if !f.service_account.is_file() {
                report(
                    "relay.fcm.service_account",
                    format!("file {} does not exist or is not readable", f.service_account.display()),
                );
            }
        }
    }
}

/// A `[relay] database` URL, parsed: `postgres://` or `postgresql://`
/// with the connection settings libpq understands (`sslmode`, …). The
/// message of an error never repeats the URL, which may hold a password.
pub fn database_url(url: &str) -> Result<tokio_postgres::Config, String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("must be a `postgres://user:password@host:port/database` URL (unset: the SQLite file)".into());
    }
    let c: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| format!("not a usable PostgreSQL URL: {e}"))?;
    if c.get_hosts().is_empty() {
        return Err("names no host".into());
    }
    if c.get_dbname().is_none() {
        return Err("names no database (`postgres://user:password@host:port/database`)".into());
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn problems(apns: &str) -> Vec<(String, String)> {
        let toml = format!("[relay.apns]\ntopic = \"org.example.chat\"\n{apns}");
        match Config::from_toml_str(&toml, None) {
            Ok(_) => vec![],
            Err(e) => e.0.into_iter().map(|p| (p.key, p.message)).collect(),
        }
    }

    #[test]
    fn apns_needs_exactly_one_authentication() {
        let both = problems(
            "key = \"/nonexistent/AuthKey.p8\"\nkey_id = \"K\"\nteam_id = \"T\"\ncertificate = \"/nonexistent/apns.pem\"\n",
        );
        let m = both.iter().find(|(k, _)| k == "relay.apns").expect("both refused");
        assert!(
            m.1.contains("not both") && m.1.contains("`certificate`") && m.1.contains("`key`"),
            "{m:?}"
        );
        // The files are named too.
        assert!(both
            .iter()
            .any(|(k, m)| k == "relay.apns.key" && m.contains("/nonexistent/AuthKey.p8")));
        assert!(both
            .iter()
            .any(|(k, m)| k == "relay.apns.certificate" && m.contains("/nonexistent/apns.pem")));

        let neither = problems("");
        assert_eq!(neither.len(), 1, "{neither:?}");
        assert_eq!(neither[0].0, "relay.apns");
        assert!(neither[0].1.contains("no credential"), "{neither:?}");

        let half = problems("key = \"/nonexistent/AuthKey.p8\"\n");
        let keys: Vec<&str> = half.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["relay.apns.key", "relay.apns.key_id", "relay.apns.team_id"],
            "{half:?}"
        );

        let key_only = problems("certificate_key = \"/nonexistent/key.pem\"\n");
        let keys: Vec<&str> = key_only.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["relay.apns.certificate_key", "relay.apns.certificate"],
            "{key_only:?}"
        );
    }

    #[test]
    fn database_urls_are_checked_without_echoing_them() {
        let bad = |url: &str| match Config::from_toml_str(&format!("[relay]\ndatabase = {url:?}\n"), None) {
            Ok(_) => None,
            Err(e) => e.0.into_iter().find(|p| p.key == "relay.database").map(|p| p.message),
        };
        assert_eq!(bad("postgres://u:pw@db.example:5432/relay"), None);
        assert_eq!(bad("postgresql://u@127.0.0.1/relay?sslmode=require"), None);
        let m = bad("mysql://u:hunter2@db/relay").unwrap();
        assert!(m.contains("postgres://") && !m.contains("hunter2"), "{m}");
        let m = bad("postgres://u:hunter2@db.example:5432").unwrap();
        assert!(m.contains("database") && !m.contains("hunter2"), "{m}");
        let m = bad("postgres://u:hunter2@db.example:5432/relay?sslmode=sometimes").unwrap();
        assert!(!m.contains("hunter2"), "{m}");
    }

    #[test]
    fn apns_certificate_key_defaults_to_the_certificate_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("apns.pem");
        std::fs::write(&cert, "x").unwrap();
        let c = Config::from_toml_str(
            &format!(
                "[relay.apns]\ntopic = \"org.example.chat\"\ncertificate = {:?}\n",
                cert.display().to_string()
            ),
            None,
        )
        .unwrap();
        let a = c.relay.apns.as_ref().unwrap();
        assert_eq!(
            a.auth().unwrap(),
            super::ApnsAuth::Certificate {
                certificate: &cert,
                key: &cert
            }
        );
    }
}

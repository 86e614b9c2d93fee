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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apns {
    /// Path to the `.p8` token-signing key from Apple.
    pub key: PathBuf,
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id, sent as `apns-topic`.
    pub topic: String,
    #[serde(default)]
    pub environment: ApnsEnvironment,
    /// Overrides the endpoint chosen by `environment`.
    pub endpoint: Option<String>,
    /// Extra PEM roots to trust for the endpoint.
    pub ca_roots: Option<PathBuf>,
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
            fix(&mut a.key);
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
            if !a.key.is_file() {
                report(
                    "relay.apns.key",
                    format!("file {} does not exist or is not readable", a.key.display()),
                );
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

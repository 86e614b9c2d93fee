//! `[relay]`: the push relay's HTTP API and its providers.

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
    pub apns: Option<Apns>,
    pub fcm: Option<Fcm>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            enabled: true,
            public_url: None,
            signup: Signup::Open,
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
        if let Some(a) = &self.apns {
            if !a.key.is_file() {
                report(
                    "relay.apns.key",
                    format!("file {} does not exist or is not readable", a.key.display()),
                );
            }
        }
        if let Some(f) = &self.fcm {
            if !f.service_account.is_file() {
                report(
                    "relay.fcm.service_account",
                    format!("file {} does not exist or is not readable", f.service_account.display()),
                );
            }
        }
    }
}

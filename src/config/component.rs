//! `[components."<domain>"]`: external components (XEP-0114) and their
//! shared secrets. The handshake hashes the stream id with the secret, so
//! the server must hold the secret itself: it is kept as given, either in
//! this file or (better) in a file of its own named by `secret_file`, never
//! logged or printed, and compared in constant time.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Shortest secret accepted: the handshake is an offline-guessable SHA-1
/// of the stream id and the secret.
pub const MIN_SECRET: usize = 16;

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Component {
    /// The shared secret, as given. After loading, also the content of
    /// `secret_file`.
    pub secret: Option<String>,
    /// A file whose first line is the secret (relative to the configuration
    /// file's directory).
    pub secret_file: Option<PathBuf>,
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .finish()
    }
}

impl Component {
    /// The secret (empty only when the configuration did not load).
    pub fn secret(&self) -> &str {
        self.secret.as_deref().unwrap_or_default()
    }

    /// Make `secret_file` absolute against `base` and read it into `secret`;
    /// `report(key, message)` gets every problem.
    pub(super) fn resolve(&mut self, domain: &str, base: &Path, report: &mut dyn FnMut(&str, String)) {
        let key = |k: &str| format!("components.{domain}.{k}");
        match (&self.secret, &mut self.secret_file) {
            (Some(_), Some(_)) => report(&key("secret_file"), "set either secret or secret_file, not both".into()),
            (None, None) => report(&key("secret"), "is required (or secret_file)".into()),
            (None, Some(p)) => {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
                match std::fs::read_to_string(&*p) {
                    Ok(s) => self.secret = Some(s.lines().next().unwrap_or_default().trim().to_string()),
                    Err(e) => report(&key("secret_file"), format!("cannot read {}: {e}", p.display())),
                }
            }
            (Some(_), None) => {}
        }
        if let Some(s) = &self.secret {
            if s.chars().count() < MIN_SECRET {
                let k = if self.secret_file.is_some() {
                    "secret_file"
                } else {
                    "secret"
                };
                report(&key(k), format!("the secret must be at least {MIN_SECRET} characters"));
            }
        }
    }
}

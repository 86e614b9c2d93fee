//! `pushbox check config`: the configuration as loaded, and combinations
//! that load but will not work.

use super::{Level, Report, Section};
use crate::config::{AcmeChallenge, Config, TlsMode};
use std::net::SocketAddr;

pub fn check(config: &Config, r: &mut Report) {
    let s = Section::Config;
    let source = config
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    let mode = match config.tls.mode {
        TlsMode::SelfSigned => "self-signed".to_string(),
        TlsMode::Files => "files".into(),
        TlsMode::Acme => format!(
            "acme ({}, {})",
            config.tls.acme.directory,
            match config.tls.acme.challenge {
                AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
                AcmeChallenge::Http01 => "http-01",
            }
        ),
    };
    r.push(
        s,
        Level::Ok,
        source,
        format!(
            "valid; domain {}, tls {mode}, data_dir {}",
            config.domain,
            config.data_dir.display()
        ),
    );
    if config.tls.mode == TlsMode::Acme {
        // The CA always connects to port 443 (TLS-ALPN-01) or 80 (HTTP-01).
        let (key, addrs, port) = match config.tls.acme.challenge {
            AcmeChallenge::TlsAlpn01 => ("listen.https", &config.listen.https, 443),
            AcmeChallenge::Http01 => ("listen.http", &config.listen.http, 80),
        };
        if !addrs.iter().any(|a| a.port() == port) {
            r.push(
                s,
                Level::Warning,
                key,
                format!("the CA validates on port {port}, but {key} uses {addrs:?}"),
            );
            r.fix(format!(
                "forward port {port} to one of these addresses (or listen on port {port})"
            ));
        }
        if config.tls.acme.contact.is_none() {
            r.push(
                s,
                Level::Warning,
                "tls.acme.contact",
                "not set: the CA cannot warn you about problems with your certificates",
            );
            r.fix("set contact = \"mailto:you@example.org\" under [tls.acme]");
        }
    }
    components(config, r);
    if config.domain != "localhost" {
        let all: Vec<&SocketAddr> = config.listen.c2s.iter().chain(&config.listen.c2s_direct_tls).collect();
        if !all.is_empty() && all.iter().all(|a| a.ip().is_loopback()) {
            r.push(
                s,
                Level::Warning,
                "listen.c2s",
                format!(
                    "client listeners are on loopback only ({all:?}): clients of {} on other hosts cannot connect",
                    config.domain
                ),
            );
            r.fix("listen on 0.0.0.0 / [::] (e.g. c2s = [\"0.0.0.0:5222\"])");
        }
    }
}

/// External components (XEP-0114): each one, where it connects, and
/// whether its secret and listener are kept private.
fn components(config: &Config, r: &mut Report) {
    let s = Section::Config;
    let addrs = &config.listen.component;
    for (domain, c) in &config.components {
        let key = format!("components.{domain}");
        if addrs.is_empty() {
            r.push(
                s,
                Level::Error,
                key,
                "listen.component is empty: the component cannot connect",
            );
            r.fix("set component = [\"127.0.0.1:5347\"] under [listen]");
            continue;
        }
        let secret_from = match &c.secret_file {
            Some(p) => format!("secret in {}", p.display()),
            None => "secret in the configuration".to_string(),
        };
        r.push(
            s,
            Level::Ok,
            key.clone(),
            format!("external component (XEP-0114) on {addrs:?}, {secret_from}"),
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let file = c.secret_file.clone().or_else(|| config.source.clone());
            if let Some(f) = file {
                if std::fs::metadata(&f).is_ok_and(|m| m.permissions().mode() & 0o004 != 0) {
                    r.push(
                        s,
                        Level::Warning,
                        format!("components.{domain}.secret"),
                        format!(
                            "{} holds the secret and every user on this host can read it",
                            f.display()
                        ),
                    );
                    r.fix(format!("chmod o-r {}", f.display()));
                }
            }
        }
    }
    if !config.components.is_empty() {
        if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            r.push(
                s,
                Level::Warning,
                "listen.component",
                format!("{a} is not loopback: component streams are plain TCP (no TLS)"),
            );
            r.fix("keep components on 127.0.0.1, or reach them over a private network or a tunnel");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_listed_and_their_secrets_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("bridge.secret");
        std::fs::write(&secret, "0123456789abcdef-secret\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let toml = format!(
            "[listen]\ncomponent = [\"0.0.0.0:5347\"]\n[components.\"bridge.localhost\"]\nsecret_file = \"{}\"\n",
            secret.display()
        );
        let config = Config::from_toml_str(&toml, None).unwrap();
        let mut r = Report::default();
        check(&config, &mut r);
        let f = |subject: &str| r.findings.iter().find(|f| f.subject == subject);
        let listed = f("components.bridge.localhost").expect("the component is listed");
        assert_eq!(listed.level, Level::Ok);
        assert!(listed.message.contains("XEP-0114"), "{}", listed.message);
        assert_eq!(
            f("listen.component").map(|f| f.level),
            Some(Level::Warning),
            "not loopback"
        );
        #[cfg(unix)]
        assert_eq!(
            f("components.bridge.localhost.secret").map(|f| f.level),
            Some(Level::Warning),
            "a world-readable secret file"
        );
    }
}

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

//! `pushbox check certs`: the certificate that will be served (its names,
//! chain and expiry) and, in mode `acme`, the state of the ACME worker.

use super::{Level, Report, Section};
use crate::{
    certs::{acme, service_names},
    config::{Config, TlsMode},
};
use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

/// The certificate file to inspect, the roots it should chain to, and what to do when it is missing.
fn cert_source(config: &Config) -> (Option<PathBuf>, Vec<CertificateDer<'static>>, String) {
    let mut roots: Vec<CertificateDer<'static>> = vec![];
    match config.tls.mode {
        TlsMode::SelfSigned => {
            let dir = config.data_dir.join("tls");
            roots.extend(read_pems(&dir.join("ca.pem")));
            (
                Some(dir.join("cert.pem")),
                roots,
                "start pushbox once (`pushbox serve`): it generates the certificate".into(),
            )
        }
        TlsMode::Files => (
            config.tls.cert.clone(),
            roots,
            "set tls.cert to the PEM chain (leaf first)".into(),
        ),
        TlsMode::Acme => {
            if let Some(p) = &config.tls.acme.ca_roots {
                roots.extend(read_pems(p));
            }
            (
                acme::cert_path(config),
                roots,
                "start pushbox (`pushbox serve`) with DNS pointing here and the challenge port open; \
                 it obtains the certificate within a minute"
                    .into(),
            )
        }
    }
}

fn read_pems(p: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(p)
        .map(|i| i.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

pub fn check(config: &Config, r: &mut Report) {
    let s = Section::Certs;
    let names = service_names(config);
    let status = (config.tls.mode == TlsMode::Acme)
        .then(|| acme::Status::load(config))
        .flatten();
    if let Some(st) = &status {
        if let Some(err) = &st.last_error {
            let level = if st.state == "failing" {
                Level::Error
            } else {
                Level::Warning
            };
            let when = st.last_error_at.map(|t| crate::store::now() - t).unwrap_or(0);
            r.push(
                s,
                level,
                "acme",
                format!(
                    "the last attempt ({when} s ago, {} in a row) failed: {err}",
                    st.failures
                ),
            );
            if let Some(a) = &st.advice {
                r.fix(a.clone());
            }
        } else {
            r.push(s, Level::Ok, "acme", format!("{} from {}", st.state, st.directory));
        }
    }
    let (path, extra_roots, missing_fix) = cert_source(config);
    let Some(path) = path else {
        r.push(s, Level::Error, "certificate", "no certificate file configured");
        r.fix(missing_fix);
        return;
    };
    let chain = read_pems(&path);
    if chain.is_empty() {
        let why = if config.tls.mode == TlsMode::Acme {
            "no certificate yet: TLS handshakes are refused until the first one arrives"
        } else {
            "no certificate yet"
        };
        r.push(s, Level::Error, path.display().to_string(), why);
        r.fix(missing_fix);
        return;
    }
    let Ok((_, leaf)) = x509_parser::parse_x509_certificate(&chain[0]) else {
        r.push(
            s,
            Level::Error,
            path.display().to_string(),
            "the first certificate cannot be parsed",
        );
        return;
    };
    // Names covered.
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let covered = |n: &str| {
        sans.iter().any(|s| {
            s == n
                || s.strip_prefix("*.")
                    .is_some_and(|base| n.split_once('.').is_some_and(|(_, rest)| rest == base))
        })
    };
    let missing: Vec<&String> = names.iter().filter(|n| !covered(n)).collect();
    if missing.is_empty() {
        r.push(s, Level::Ok, "names", format!("covers {}", names.join(", ")));
    } else {
        r.push(
            s,
            Level::Error,
            "names",
            format!("does not cover {:?} (it covers {:?})", missing, sans),
        );
        r.fix(match config.tls.mode {
            TlsMode::Files => "get a certificate that also covers these names".to_string(),
            _ => "restart pushbox: it makes a certificate for every name".to_string(),
        });
    }
    // Days to expiry.
    let now = crate::store::now();
    let not_after = leaf.validity().not_after.timestamp();
    let days = (not_after - now) as f64 / 86400.0;
    let lifetime = (not_after - leaf.validity().not_before.timestamp()) as f64 / 86400.0;
    if days < 0.0 {
        r.push(s, Level::Error, "expiry", format!("expired {:.0} day(s) ago", -days));
    } else if config.tls.mode == TlsMode::Acme && days < lifetime / 6.0 {
        r.push(
            s,
            Level::Error,
            "expiry",
            format!("{days:.1} day(s) left: renewal should have happened by now"),
        );
        r.fix("see the acme line above and the log; `pushbox check dns` and `pushbox check ports`");
    } else if config.tls.mode == TlsMode::Files && days < 14.0 {
        r.push(s, Level::Warning, "expiry", format!("{days:.1} day(s) left"));
        r.fix("replace the files and send SIGHUP (`systemctl reload pushbox`)");
    } else {
        r.push(s, Level::Ok, "expiry", format!("{days:.1} day(s) left"));
    }
    // Chain: verify against public roots and the configured private ones.
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for c in extra_roots {
        let _ = roots.add(c);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()
    {
        Ok(v) => v,
        Err(e) => {
            r.push(s, Level::Error, "chain", format!("cannot build a verifier: {e}"));
            return;
        }
    };
    let name = ServerName::try_from(config.domain.clone());
    let result = match name {
        Ok(n) => {
            use rustls::client::danger::ServerCertVerifier;
            verifier
                .verify_server_cert(&chain[0], &chain[1..], &n, &[], UnixTime::now())
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    let issuer = leaf.issuer().to_string();
    match result {
        Ok(()) => r.push(
            s,
            Level::Ok,
            "chain",
            format!(
                "{} certificate(s), issued by {issuer}, verifies to a trusted root",
                chain.len()
            ),
        ),
        // A private ACME CA may issue from a root other than the one serving its API (`ca_roots`).
        Err(e) if config.tls.mode == TlsMode::Acme && config.tls.acme.ca_roots.is_some() => {
            r.push(
                s,
                Level::Warning,
                "chain",
                format!(
                    "{} certificate(s), issued by {issuer}, does not verify to a public root or tls.acme.ca_roots: {e}",
                    chain.len()
                ),
            );
            r.fix("make sure clients trust the private CA's issuing root");
        }
        Err(e) => {
            r.push(
                s,
                Level::Error,
                "chain",
                format!(
                    "{} certificate(s), issued by {issuer}, does not verify: {e}",
                    chain.len()
                ),
            );
            r.fix(match config.tls.mode {
                TlsMode::Files => "put the leaf then every intermediate in tls.cert".to_string(),
                TlsMode::Acme => "for a private ACME CA, set tls.acme.ca_roots to its root".to_string(),
                TlsMode::SelfSigned => "clients must trust data_dir/tls/ca.pem".to_string(),
            });
        }
    }
}

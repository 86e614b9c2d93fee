//! `pushbox check [config|dns|certs|ports] [--json]`: finds what stands
//! between the configuration and a working server (configuration problems,
//! DNS records, certificates, ports), each finding with what to fix. The exit
//! status is 2 for configuration problems, 1 when any other check fails.

use crate::{
    certs::{acme, service_names},
    config::{AcmeChallenge, Config, TlsMode},
};
use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime};
use serde::Serialize;
use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

/// One part of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    /// The configuration file and its combinations.
    Config,
    /// A/AAAA records of the domain and subdomains, SRV records against the listeners.
    Dns,
    /// Names covered, days to expiry and chain of the certificate.
    Certs,
    /// Whether each listener can bind or is already listening.
    Ports,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Error,
}

/// One finding: what was looked at, what was found, and what to do.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub section: Section,
    pub level: Level,
    pub subject: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Every finding of one run.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub errors: usize,
    pub warnings: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    fn push(&mut self, section: Section, level: Level, subject: impl Into<String>, message: impl Into<String>) {
        self.findings.push(Finding {
            section,
            level,
            subject: subject.into(),
            message: message.into(),
            fix: None,
        });
    }

    fn fix(&mut self, fix: impl Into<String>) {
        if let Some(f) = self.findings.last_mut() {
            f.fix = Some(fix.into());
        }
    }

    fn finish(mut self) -> Report {
        self.errors = self.findings.iter().filter(|f| f.level == Level::Error).count();
        self.warnings = self.findings.iter().filter(|f| f.level == Level::Warning).count();
        self.ok = self.errors == 0;
        self
    }

    /// Plain text, one line per finding and an indented line with the fix.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut section = None;
        for f in &self.findings {
            if section != Some(f.section) {
                section = Some(f.section);
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_value(f.section).unwrap().as_str().unwrap_or("")
                );
            }
            let level = match f.level {
                Level::Ok => "ok     ",
                Level::Warning => "WARNING",
                Level::Error => "ERROR  ",
            };
            let _ = writeln!(out, "  {level} {}: {}", f.subject, f.message);
            if let Some(fix) = &f.fix {
                let _ = writeln!(out, "          fix: {fix}");
            }
        }
        let _ = writeln!(
            out,
            "{}: {} error(s), {} warning(s)",
            if self.ok { "OK" } else { "PROBLEMS FOUND" },
            self.errors,
            self.warnings
        );
        out
    }
}

/// The `pushbox check` command: load the configuration from `path`, run
/// `what` (everything when `None`), print, and return the exit status.
pub fn main(path: Option<&Path>, what: Option<Section>, json: bool) -> u8 {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(problems) => {
            if json {
                let mut r = Report::default();
                for p in &problems.0 {
                    r.push(
                        Section::Config,
                        Level::Error,
                        format!("{} {}", p.source, p.key),
                        &p.message,
                    );
                }
                println!("{}", serde_json::to_string_pretty(&r.finish()).unwrap_or_default());
            } else {
                eprint!("pushbox: {problems}");
            }
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pushbox: {e}");
            return 1;
        }
    };
    let sections = match what {
        Some(s) => vec![s],
        None => vec![Section::Config, Section::Dns, Section::Certs, Section::Ports],
    };
    let report = rt.block_on(run(&config, &sections));
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print!("{}", report.to_text());
    }
    u8::from(!report.ok)
}

/// Run the given sections against a loaded configuration.
pub async fn run(config: &Config, sections: &[Section]) -> Report {
    let mut r = Report::default();
    for s in sections {
        match s {
            Section::Config => check_config(config, &mut r),
            Section::Dns => check_dns(config, &mut r).await,
            Section::Certs => check_certs(config, &mut r),
            Section::Ports => check_ports(config, &mut r).await,
        }
    }
    r.finish()
}

fn check_config(config: &Config, r: &mut Report) {
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

fn resolver(config: &Config) -> Result<hickory_resolver::TokioResolver, String> {
    use hickory_resolver::{
        config::{ConnectionConfig, NameServerConfig, ResolverConfig},
        net::runtime::TokioRuntimeProvider,
        Resolver,
    };
    let mut b = if config.federation.dns_servers.is_empty() {
        Resolver::builder_tokio().map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
    } else {
        let servers = config
            .federation
            .dns_servers
            .iter()
            .map(|a| {
                let mut udp = ConnectionConfig::udp();
                udp.port = a.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = a.port();
                NameServerConfig::new(a.ip(), true, vec![udp, tcp])
            })
            .collect();
        Resolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], servers),
            TokioRuntimeProvider::default(),
        )
    };
    b.options_mut().timeout = Duration::from_secs(3);
    b.options_mut().attempts = 2;
    b.build().map_err(|e| format!("cannot set up DNS: {e}"))
}

async fn check_dns(config: &Config, r: &mut Report) {
    let s = Section::Dns;
    if config.domain == "localhost" {
        r.push(s, Level::Ok, "localhost", "no DNS needed for the domain localhost");
        return;
    }
    let res = match resolver(config) {
        Ok(x) => x,
        Err(e) => {
            r.push(s, Level::Error, "resolver", e);
            return;
        }
    };
    let acme = config.tls.mode == TlsMode::Acme;
    for name in service_names(&config.domain) {
        match res.lookup_ip(format!("{name}.")).await {
            Ok(ips) => {
                let ips: Vec<IpAddr> = ips.iter().collect();
                if ips.is_empty() {
                    no_address(r, &name, acme, "no A/AAAA record");
                } else {
                    let list = ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
                    r.push(s, Level::Ok, &name, format!("A/AAAA {list}"));
                    if ips.iter().any(|i| i.is_loopback()) && acme {
                        r.push(
                            s,
                            Level::Warning,
                            &name,
                            "resolves to a loopback address: a public CA cannot reach it",
                        );
                        r.fix(format!("point {name} to this host's public address"));
                    }
                }
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => no_address(r, &name, acme, "no A/AAAA record"),
            Err(e) => {
                r.push(s, Level::Error, &name, format!("DNS lookup failed: {e}"));
                r.fix("check the host's DNS resolver (or federation.dns_servers)");
            }
        }
    }
    let l = &config.listen;
    let mut wanted = vec![
        (
            "_xmpp-client._tcp",
            "listen.c2s",
            &l.c2s,
            Some(5222),
            config.domain.clone(),
        ),
        (
            "_xmpps-client._tcp",
            "listen.c2s_direct_tls",
            &l.c2s_direct_tls,
            None,
            config.domain.clone(),
        ),
        (
            "_xmpp-server._tcp",
            "listen.s2s",
            &l.s2s,
            Some(5269),
            config.domain.clone(),
        ),
        (
            "_xmpps-server._tcp",
            "listen.s2s_direct_tls",
            &l.s2s_direct_tls,
            None,
            config.domain.clone(),
        ),
    ];
    if config.federation.enabled {
        // Other servers reach push.<domain> and upload.<domain> by their own
        // names (an XEP-0357 publish goes to push.<domain>), so those need
        // server records too.
        for name in service_names(&config.domain)
            .into_iter()
            .filter(|n| n != &config.domain)
        {
            wanted.push(("_xmpp-server._tcp", "listen.s2s", &l.s2s, Some(5269), name.clone()));
            wanted.push((
                "_xmpps-server._tcp",
                "listen.s2s_direct_tls",
                &l.s2s_direct_tls,
                None,
                name,
            ));
        }
    }
    for (service, key, addrs, default_port, domain) in wanted {
        let qname = format!("{service}.{domain}");
        let ports: Vec<u16> = addrs.iter().map(|a| a.port()).collect();
        let records: Vec<(String, u16)> = match res.srv_lookup(format!("{qname}.")).await {
            Ok(l) => l
                .answers()
                .iter()
                .filter_map(|rec| match &rec.data {
                    hickory_resolver::proto::rr::RData::SRV(srv) => {
                        Some((srv.target.to_string().trim_end_matches('.').to_string(), srv.port))
                    }
                    _ => None,
                })
                .collect(),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => vec![],
            Err(e) => {
                r.push(s, Level::Error, &qname, format!("DNS lookup failed: {e}"));
                continue;
            }
        };
        check_srv(r, &qname, key, &ports, default_port, &records, &domain);
        for (target, _) in records.iter().filter(|(t, _)| !t.is_empty()) {
            if let Err(e) = res.lookup_ip(format!("{target}.")).await {
                r.push(s, Level::Error, &qname, format!("target {target} has no address: {e}"));
                r.fix(format!("create an A/AAAA record for {target}"));
            }
        }
    }
}

fn no_address(r: &mut Report, name: &str, acme: bool, what: &str) {
    let level = if acme { Level::Error } else { Level::Warning };
    r.push(Section::Dns, level, name, what);
    r.fix(format!(
        "create an A (and AAAA, if this host has IPv6) record for {name} pointing to this host{}",
        if acme { "; the ACME CA validates every name" } else { "" }
    ));
}

/// Compare SRV records for one service with the ports of its listener.
fn check_srv(
    r: &mut Report,
    qname: &str,
    key: &str,
    ports: &[u16],
    default_port: Option<u16>,
    records: &[(String, u16)],
    domain: &str,
) {
    let s = Section::Dns;
    let shown = records
        .iter()
        .map(|(t, p)| format!("{t}:{p}"))
        .collect::<Vec<_>>()
        .join(", ");
    // A single record with target "." says the service is deliberately absent.
    let disabled = records.len() == 1 && records[0].0.is_empty();
    match (records.is_empty(), ports.is_empty()) {
        (true, true) => r.push(s, Level::Ok, qname, format!("no record, and {key} is off")),
        (true, false) => match default_port {
            Some(d) if ports.contains(&d) => r.push(
                s,
                Level::Ok,
                qname,
                format!("no record; peers fall back to {domain}:{d}, which {key} serves"),
            ),
            _ => {
                let level = if default_port.is_some() {
                    Level::Error
                } else {
                    Level::Warning
                };
                r.push(
                    s,
                    level,
                    qname,
                    format!("no record, so peers cannot find {key} on port(s) {ports:?}"),
                );
                r.fix(format!("add `{qname}. SRV 0 5 {} {domain}.`", ports[0]));
            }
        },
        (false, _) if disabled => {
            if ports.is_empty() {
                r.push(
                    s,
                    Level::Ok,
                    qname,
                    format!("record says the service is off, and {key} is off"),
                );
            } else {
                r.push(
                    s,
                    Level::Error,
                    qname,
                    format!("record says the service is off (target \".\"), but {key} serves ports {ports:?}"),
                );
                r.fix(format!("replace it with `{qname}. SRV 0 5 {} {domain}.`", ports[0]));
            }
        }
        (false, true) => {
            r.push(s, Level::Error, qname, format!("points to {shown}, but {key} is off"));
            r.fix(format!("remove the record or turn {key} on"));
        }
        (false, false) => {
            let wrong: Vec<_> = records.iter().filter(|(_, p)| !ports.contains(p)).collect();
            if wrong.is_empty() {
                r.push(s, Level::Ok, qname, format!("{shown} matches {key}"));
            } else {
                r.push(
                    s,
                    Level::Error,
                    qname,
                    format!("points to {shown}, but {key} listens on port(s) {ports:?}"),
                );
                r.fix(format!(
                    "make the record's port {} (or forward the advertised port to it)",
                    ports[0]
                ));
            }
        }
    }
}

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

fn check_certs(config: &Config, r: &mut Report) {
    let s = Section::Certs;
    let names = service_names(&config.domain);
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

async fn check_ports(config: &Config, r: &mut Report) {
    let s = Section::Ports;
    let l = &config.listen;
    for (key, addrs) in [
        ("listen.c2s", &l.c2s),
        ("listen.c2s_direct_tls", &l.c2s_direct_tls),
        ("listen.s2s", &l.s2s),
        ("listen.s2s_direct_tls", &l.s2s_direct_tls),
        ("listen.https", &l.https),
        ("listen.http", &l.http),
        ("metrics.listen", &config.metrics.listen),
    ] {
        for a in addrs {
            let subject = format!("{key} {a}");
            match std::net::TcpListener::bind(a) {
                Ok(_) => r.push(s, Level::Ok, subject, "free: pushbox can listen here"),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    let mut probe = *a;
                    if probe.ip().is_unspecified() {
                        probe.set_ip(match probe.ip() {
                            IpAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
                            IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                        });
                    }
                    let answers = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(probe))
                        .await
                        .is_ok_and(|c| c.is_ok());
                    if answers {
                        r.push(s, Level::Ok, subject, "already listening (pushbox, if it is running)");
                    } else {
                        r.push(s, Level::Error, subject, "in use, and nothing answers on it");
                        r.fix(format!("find the owner with `ss -ltnp 'sport = :{}'`", a.port()));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    r.push(s, Level::Error, subject, format!("cannot bind: {e}"));
                    r.fix(
                        "ports below 1024 need the capability CAP_NET_BIND_SERVICE \
                         (AmbientCapabilities=CAP_NET_BIND_SERVICE in the systemd unit)",
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                    r.push(s, Level::Error, subject, format!("this host has no address {}", a.ip()));
                    r.fix(format!("use an address of this host (or 0.0.0.0) in {key}"));
                }
                Err(e) => r.push(s, Level::Error, subject, format!("cannot bind: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_against_ports() {
        let mut r = Report::default();
        let q = "_xmpp-client._tcp.a.example";
        check_srv(&mut r, q, "listen.c2s", &[5222], Some(5222), &[], "a.example");
        check_srv(&mut r, q, "listen.c2s", &[5300], Some(5222), &[], "a.example");
        check_srv(
            &mut r,
            q,
            "listen.c2s",
            &[5222],
            Some(5222),
            &[("a.example".into(), 5222)],
            "a.example",
        );
        check_srv(
            &mut r,
            q,
            "listen.c2s",
            &[5222],
            Some(5222),
            &[("a.example".into(), 5999)],
            "a.example",
        );
        check_srv(
            &mut r,
            q,
            "listen.c2s",
            &[],
            Some(5222),
            &[("a.example".into(), 5222)],
            "a.example",
        );
        let levels: Vec<Level> = r.findings.iter().map(|f| f.level).collect();
        assert_eq!(
            levels,
            vec![Level::Ok, Level::Error, Level::Ok, Level::Error, Level::Error]
        );
        assert!(r.findings[1]
            .fix
            .as_deref()
            .unwrap()
            .contains("SRV 0 5 5300 a.example."));
    }
}

//! `pushbox check dns`: the domain's and its services' addresses, and the
//! XMPP SRV records against the configured ports.

use super::{Level, Report, Section};
use crate::{
    certs::service_names,
    config::{Config, TlsMode},
};
use std::net::IpAddr;

pub async fn check(config: &Config, r: &mut Report) {
    let s = Section::Dns;
    if config.domain == "localhost" {
        r.push(s, Level::Ok, "localhost", "no DNS needed for the domain localhost");
        return;
    }
    let res = match crate::net::dns::resolver(&config.federation.dns_servers, crate::net::dns::Patience::Quick) {
        Ok(x) => x,
        Err(e) => {
            r.push(s, Level::Error, "resolver", e);
            return;
        }
    };
    let acme = config.tls.mode == TlsMode::Acme;
    for name in service_names(config) {
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
        for name in service_names(config).into_iter().filter(|n| n != &config.domain) {
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

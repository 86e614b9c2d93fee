//! Where a remote XMPP domain's servers are: `[federation.hosts]` overrides
//! first, then DNS SRV `_xmpps-server._tcp` (direct TLS, XEP-0368) and
//! `_xmpp-server._tcp` (STARTTLS) ordered as RFC 6120 §3.2.1 and RFC 2782
//! say, then A/AAAA of the domain on port 5269. Connecting tries addresses
//! happy-eyeballs style (RFC 8305): a new attempt every 250 ms until one
//! succeeds.

use crate::{
    config::Federation,
    net::dns::{self, Patience},
};
use hickory_resolver::{proto::rr::RData, TokioResolver};
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};
use tokio::{net::TcpStream, task::JoinSet};

/// One place to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// TLS from the first byte (ALPN `xmpp-server`) instead of STARTTLS.
    pub direct_tls: bool,
}

/// Why a domain could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("the domain publishes no XMPP service (SRV target \".\")")]
    NoService,
    #[error("no address for {0}")]
    NoAddress(String),
    #[error("DNS: {0}")]
    Dns(String),
}

pub struct Resolver {
    dns: TokioResolver,
    hosts: BTreeMap<String, (String, u16)>,
}

impl Resolver {
    pub fn new(f: &Federation) -> anyhow::Result<Resolver> {
        let dns = match dns::resolver(&f.dns_servers, Patience::Default) {
            Ok(r) => r,
            Err(e) if f.dns_servers.is_empty() => {
                // No resolv.conf (containers, tests): fall back to loopback so startup still works.
                tracing::warn!(error = %e, "no system DNS configuration; set federation.dns_servers");
                dns::resolver(&[SocketAddr::from(([127, 0, 0, 1], 53))], Patience::Default)
                    .map_err(|e| anyhow::anyhow!("DNS resolver: {e}"))?
            }
            Err(e) => anyhow::bail!("DNS resolver: {e}"),
        };
        Ok(Resolver {
            dns,
            hosts: f.static_hosts(),
        })
    }

    /// The places to try for `domain`, best first.
    pub async fn targets(&self, domain: &str) -> Result<Vec<Target>, ResolveError> {
        if let Some((host, port)) = self.hosts.get(&domain.to_ascii_lowercase()) {
            return Ok(vec![Target {
                host: host.clone(),
                port: *port,
                direct_tls: false,
            }]);
        }
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let mut records = vec![];
        let mut any_answer = false;
        for (prefix, direct_tls) in [("_xmpps-server._tcp.", true), ("_xmpp-server._tcp.", false)] {
            match self.dns.srv_lookup(format!("{prefix}{fqdn}")).await {
                Ok(l) => {
                    for r in l.answers() {
                        if let RData::SRV(srv) = &r.data {
                            any_answer = true;
                            let host = srv.target.to_utf8();
                            let host = host.trim_end_matches('.').to_string();
                            records.push(Srv {
                                priority: srv.priority,
                                weight: srv.weight,
                                target: Target {
                                    host,
                                    port: srv.port,
                                    direct_tls,
                                },
                            });
                        }
                    }
                }
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {}
                Err(e) => tracing::debug!(error = %e, domain, "SRV look-up failed"),
            }
        }
        if any_answer {
            // RFC 6120 §3.2.1: a single "." target means no service.
            if records.len() == 1 && records[0].target.host.is_empty() {
                return Err(ResolveError::NoService);
            }
            records.retain(|r| !r.target.host.is_empty());
            return Ok(order_srv(records, &mut rand::rng()));
        }
        Ok(vec![Target {
            host: domain.to_string(),
            port: 5269,
            direct_tls: false,
        }])
    }

    /// Addresses of `host` (IPv6 and IPv4 interleaved, RFC 8305 §4).
    pub async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        let ips = self
            .dns
            .lookup_ip(fqdn)
            .await
            .map_err(|e| ResolveError::Dns(e.to_string()))?;
        let (v6, v4): (Vec<IpAddr>, Vec<IpAddr>) = ips.iter().partition(|ip| ip.is_ipv6());
        let mut out = vec![];
        let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
        loop {
            match (a.next(), b.next()) {
                (None, None) => break,
                (x, y) => out.extend(x.into_iter().chain(y).map(|ip| SocketAddr::new(ip, port))),
            }
        }
        if out.is_empty() {
            return Err(ResolveError::NoAddress(host.into()));
        }
        Ok(out)
    }
}

struct Srv {
    priority: u16,
    weight: u16,
    target: Target,
}

/// RFC 2782 ordering: ascending priority; within a priority, a weighted
/// random order (weight-0 records first in the running sum, so they are
/// picked rarely but still picked).
fn order_srv(mut records: Vec<Srv>, rng: &mut impl rand::Rng) -> Vec<Target> {
    use rand::RngExt as _;
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut out = vec![];
    let mut i = 0;
    while i < records.len() {
        let p = records[i].priority;
        let mut group: Vec<Srv> = vec![];
        while i < records.len() && records[i].priority == p {
            group.push(Srv {
                priority: p,
                weight: records[i].weight,
                target: records[i].target.clone(),
            });
            i += 1;
        }
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = rng.random_range(0..=total);
            let mut run = 0u32;
            let idx = group
                .iter()
                .position(|r| {
                    run += u32::from(r.weight);
                    run >= pick
                })
                .unwrap_or(0);
            out.push(group.remove(idx).target);
        }
    }
    out
}

/// Connect to the first address that answers, starting a new attempt every
/// 250 ms while earlier ones are still pending (RFC 8305 §5).
pub async fn happy_eyeballs(addrs: &[SocketAddr]) -> std::io::Result<TcpStream> {
    const STAGGER: Duration = Duration::from_millis(250);
    let mut set = JoinSet::new();
    let mut next = 0;
    let mut last_err = None;
    loop {
        if next < addrs.len() {
            let a = addrs[next];
            next += 1;
            set.spawn(async move { TcpStream::connect(a).await });
        }
        if set.is_empty() {
            return Err(last_err.unwrap_or_else(|| std::io::Error::other("no address to connect to")));
        }
        let more = next < addrs.len();
        let done = if more {
            match tokio::time::timeout(STAGGER, set.join_next()).await {
                Ok(d) => d,
                Err(_) => continue,
            }
        } else {
            set.join_next().await
        };
        match done {
            Some(Ok(Ok(s))) => return Ok(s),
            Some(Ok(Err(e))) => last_err = Some(e),
            Some(Err(e)) => last_err = Some(std::io::Error::other(e)),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, host: &str) -> Srv {
        Srv {
            priority,
            weight,
            target: Target {
                host: host.into(),
                port: 5269,
                direct_tls: false,
            },
        }
    }

    #[test]
    fn srv_priority_then_weight() {
        let mut rng = rand::rng();
        let mut first_b = 0;
        for _ in 0..2000 {
            let o = order_srv(
                vec![srv(20, 0, "z"), srv(10, 1, "a"), srv(10, 9, "b"), srv(5, 0, "p")],
                &mut rng,
            );
            let hosts: Vec<_> = o.iter().map(|t| t.host.as_str()).collect();
            assert_eq!(hosts[0], "p");
            assert_eq!(hosts[3], "z");
            assert!(hosts[1..3].contains(&"a") && hosts[1..3].contains(&"b"));
            if hosts[1] == "b" {
                first_b += 1;
            }
        }
        // Weight 9 against 1: "b" comes first about 90% of the time.
        assert!((1500..2000).contains(&first_b), "{first_b}");
    }
}

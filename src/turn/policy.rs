//! Which peers the relay may send to. By default none in loopback,
//! private, shared (CGNAT), link-local, multicast or reserved ranges, so
//! the TURN server is no open door into the operator's own network;
//! `allowed_peers` opens ranges again, `denied_peers` closes more.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Ranges refused unless `allowed_peers` names them.
const DENIED_BY_DEFAULT: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "64:ff9b:1::/48",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

#[derive(Debug, Clone)]
pub struct PeerPolicy {
    allowed: Vec<IpNet>,
    denied: Vec<IpNet>,
    defaults: Vec<IpNet>,
}

impl PeerPolicy {
    pub fn new(allowed: Vec<IpNet>, denied: Vec<IpNet>) -> PeerPolicy {
        PeerPolicy {
            allowed,
            denied,
            defaults: DENIED_BY_DEFAULT
                .iter()
                .map(|s| s.parse().expect("valid built-in range"))
                .collect(),
        }
    }

    /// Whether the relay may send to `ip`. IPv4 addresses inside IPv6
    /// (`::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) are judged as IPv4.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = embedded_v4(ip).map(IpAddr::V4).unwrap_or(ip);
        if self.denied.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        if self.allowed.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        !self.defaults.iter().any(|n| n.contains(&ip))
    }
}

fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    const NAT64: Ipv6Addr = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0);
    if v6.segments()[..6] == NAT64.segments()[..6] {
        let o = v6.octets();
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(allowed: &[&str], denied: &[&str]) -> PeerPolicy {
        PeerPolicy::new(
            allowed.iter().map(|s| s.parse().unwrap()).collect(),
            denied.iter().map(|s| s.parse().unwrap()).collect(),
        )
    }

    #[test]
    fn private_and_loopback_refused_by_default() {
        let d = p(&[], &[]);
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!d.permits(ip.parse().unwrap()), "{ip} should be refused");
        }
        for ip in ["203.0.113.5", "8.8.8.8", "2001:db8::1", "::ffff:203.0.113.5"] {
            assert!(d.permits(ip.parse().unwrap()), "{ip} should be allowed");
        }
    }

    #[test]
    fn allowed_opens_and_denied_closes() {
        let c = p(&["127.0.0.1/32", "10.0.0.0/8"], &["10.9.0.0/16", "203.0.113.0/24"]);
        assert!(c.permits("127.0.0.1".parse().unwrap()));
        assert!(!c.permits("127.0.0.2".parse().unwrap()));
        assert!(c.permits("10.1.0.1".parse().unwrap()));
        assert!(!c.permits("10.9.0.1".parse().unwrap()));
        assert!(!c.permits("203.0.113.5".parse().unwrap()));
    }
}

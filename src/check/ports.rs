//! `pushbox check ports`: whether every configured listener can bind or is
//! already served by pushbox.

use super::{Level, Report, Section};
use crate::config::Config;
use std::{net::IpAddr, time::Duration};

pub async fn check(config: &Config, r: &mut Report) {
    let s = Section::Ports;
    let l = &config.listen;
    // The component listener is bound only when a component is configured.
    let none = vec![];
    let component = if config.components.is_empty() {
        &none
    } else {
        &l.component
    };
    for (key, addrs) in [
        ("listen.c2s", &l.c2s),
        ("listen.c2s_direct_tls", &l.c2s_direct_tls),
        ("listen.s2s", &l.s2s),
        ("listen.s2s_direct_tls", &l.s2s_direct_tls),
        ("listen.https", &l.https),
        ("listen.http", &l.http),
        ("metrics.listen", &config.metrics.listen),
        ("listen.component", component),
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

//! `pushbox check ports`: whether every configured listener can bind or is
//! already served by pushbox; for the built-in TURN server also its UDP
//! port (a STUN Binding answers if it runs), its relay ports and the
//! address it announces (a warning when that is not public: NAT).

use super::{Level, Report, Section};
use crate::{
    config::{Config, TurnMode},
    turn::{
        announce_ip, is_global,
        stun::{self, attr, method, Builder, Class},
    },
};
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

pub async fn check(config: &Config, r: &mut Report) {
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
            tcp(r, key, *a).await;
        }
    }
    turn(config, r).await;
}

/// Whether pushbox can listen on TCP `a`, or something already answers there.
async fn tcp(r: &mut Report, key: &str, a: SocketAddr) {
    let s = Section::Ports;
    let subject = format!("{key} {a}");
    match std::net::TcpListener::bind(a) {
        Ok(_) => r.push(s, Level::Ok, subject, "free: pushbox can listen here"),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let probe = loopback_if_unspecified(a);
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
        Err(e) => bind_error(r, key, a, e),
    }
}

fn loopback_if_unspecified(mut a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        a.set_ip(match a.ip() {
            IpAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
            IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        });
    }
    a
}

fn bind_error(r: &mut Report, key: &str, a: SocketAddr, e: std::io::Error) {
    let s = Section::Ports;
    let subject = format!("{key} {a}");
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            r.push(s, Level::Error, subject, format!("cannot bind: {e}"));
            r.fix(
                "ports below 1024 need the capability CAP_NET_BIND_SERVICE \
                 (AmbientCapabilities=CAP_NET_BIND_SERVICE in the systemd unit)",
            );
        }
        std::io::ErrorKind::AddrNotAvailable => {
            r.push(s, Level::Error, subject, format!("this host has no address {}", a.ip()));
            r.fix(format!("use an address of this host (or 0.0.0.0) in {key}"));
        }
        _ => r.push(s, Level::Error, subject, format!("cannot bind: {e}")),
    }
}

/// The built-in TURN server: UDP and TCP on `port`, TLS on `tls_port`, the
/// relay range and the announced address.
async fn turn(config: &Config, r: &mut Report) {
    let Some(t) = config.turn.as_ref().filter(|t| t.mode == TurnMode::Builtin) else {
        return;
    };
    let s = Section::Ports;
    for ip in &t.bind {
        let a = SocketAddr::new(*ip, t.port);
        tcp(r, "turn.port (tcp)", a).await;
        if let Some(p) = t.tls_port() {
            tcp(r, "turn.tls_port", SocketAddr::new(*ip, p)).await;
        }
        let subject = format!("turn.port (udp) {a}");
        match std::net::UdpSocket::bind(a) {
            Ok(_) => r.push(s, Level::Ok, subject, "free: pushbox can listen here"),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if stun_answers(loopback_if_unspecified(a)).await {
                    r.push(
                        s,
                        Level::Ok,
                        subject,
                        "a STUN server answers (pushbox, if it is running)",
                    );
                } else {
                    r.push(s, Level::Error, subject, "in use, and no STUN server answers on it");
                    r.fix(format!(
                        "find the owner with `ss -lunp 'sport = :{}'` (coturn?)",
                        a.port()
                    ));
                }
            }
            Err(e) => bind_error(r, "turn.port (udp)", a, e),
        }
    }
    if let Some((lo, hi)) = t.relay_port_range() {
        let n = u32::from(hi - lo) + 1;
        let level = if n < 100 { Level::Warning } else { Level::Ok };
        r.push(
            s,
            level,
            format!("turn.relay_ports {lo}-{hi}"),
            format!("{n} UDP ports for relayed addresses (one per allocation); open them in the firewall"),
        );
        if n < 100 {
            r.fix("a call takes one or two ports per participant: widen turn.relay_ports");
        }
    }
    let v4 = t.bind.iter().find(|ip| ip.is_ipv4());
    if let Some(bind) = v4 {
        match announce_ip(t, *bind) {
            Some(ip) if is_global(ip) => r.push(s, Level::Ok, "turn relayed address", format!("announced as {ip}")),
            Some(ip) => {
                r.push(
                    s,
                    Level::Warning,
                    "turn relayed address",
                    format!("announced as {ip}, which is not a public address: clients elsewhere cannot reach it"),
                );
                r.fix(
                    "behind NAT, set turn.public_ipv4 to the public address and forward turn.port and turn.relay_ports",
                );
            }
            None => {
                r.push(s, Level::Error, "turn relayed address", "no IPv4 address to announce");
                r.fix("set turn.public_ipv4");
            }
        }
    }
}

/// Whether a STUN Binding request to `a` gets an answer.
async fn stun_answers(a: SocketAddr) -> bool {
    let Ok(sock) = tokio::net::UdpSocket::bind(SocketAddr::new(
        if a.is_ipv4() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
        },
        0,
    ))
    .await
    else {
        return false;
    };
    let tid: [u8; 12] = rand::random();
    let req = Builder::new(method::BINDING, Class::Request, tid).finish(None, true);
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        if sock.send_to(&req, a).await.is_err() {
            return false;
        }
        if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await {
            if let Ok(m) = stun::Message::parse(&buf[..n]) {
                return m.tid == tid && m.has(attr::XOR_MAPPED_ADDRESS);
            }
        }
    }
    false
}

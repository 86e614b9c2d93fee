//! The built-in STUN/TURN server against a real daemon: credentials fetched
//! over XMPP (XEP-0215) allocate relays that carry UDP between two clients;
//! expired and forged credentials, relays to loopback and private peers,
//! quotas and bandwidth are refused; TCP works like UDP; /metrics counts.

mod common;

use common::{
    turn::{Incoming, TurnClient},
    xml, TestServer,
};
use pushbox::{
    turn::stun::{attr, method, Builder, Class},
    xmpp::xml::ElementExt,
};
use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

const SHORT: Duration = Duration::from_millis(300);
/// One metrics registry per process, and each TURN server sets the
/// allocations gauge to its own count: the test that reads the gauge runs
/// alone (write), the others side by side (read).
static GAUGES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// For what must come; generous, as the machine may be loaded.
const WAIT: Duration = Duration::from_secs(20);

/// Alice's TURN credentials for UDP as XEP-0215 hands them out, and the
/// whole answer.
async fn credentials(s: &TestServer) -> (String, String, String) {
    s.add_user("alice", "pw");
    let mut c = s.client("alice", "pw", false).await;
    let r = c
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='localhost'><services xmlns='urn:xmpp:extdisco:2'/></iq>",
        ))
        .await;
    let services = r.get_child("services", "urn:xmpp:extdisco:2").expect("services");
    let udp = services
        .children()
        .find(|e| e.attr("type") == Some("turn") && e.attr("transport") == Some("udp"))
        .expect("a TURN service over UDP");
    assert_eq!(
        udp.attr("host"),
        Some("localhost"),
        "the built-in server is on the domain"
    );
    assert_eq!(
        udp.attr("port"),
        Some(s.turn.unwrap().port.to_string().as_str()),
        "the announced port is the server's"
    );
    (
        udp.attr("username").unwrap().to_string(),
        udp.attr("password").unwrap().to_string(),
        r.to_xml(),
    )
}

fn loopback_relays() -> &'static str {
    "allowed_peers = [\"127.0.0.1/32\"]\n"
}

#[tokio::test]
async fn xep0215_credentials_relay_udp_both_ways() {
    let _side_by_side = GAUGES.read().await;
    let s = TestServer::start_with_turn(loopback_relays(), "").await;
    let (user, pass, xml) = credentials(&s).await;
    let turns = format!(
        "port='{}' restricted='1' transport='tcp' type='turns'",
        s.turn.unwrap().tls_port
    );
    assert!(xml.contains(&turns) && xml.contains("type='stun'"), "{xml}");
    let server = s.turn.unwrap().udp();
    let mut a = TurnClient::udp(server, &user, &pass).await;
    let mut b = TurnClient::udp(server, &user, &pass).await;
    let ra = a.allocate().await.expect("allocation A");
    let rb = b.allocate().await.expect("allocation B");
    assert_eq!(ra.ip().to_string(), "127.0.0.1");
    assert_ne!(ra, rb);

    // Without a permission nothing passes.
    a.send_to_peer(rb, b"too early").await;
    assert_eq!(b.recv_from_peer(SHORT).await, None);

    a.create_permission(rb).await.expect("permission A → B");
    b.create_permission(ra).await.expect("permission B → A");
    a.send_to_peer(rb, b"hello from a").await;
    assert_eq!(
        b.recv_from_peer(WAIT).await,
        Some(Incoming::Data(ra, b"hello from a".to_vec()))
    );
    b.send_to_peer(ra, b"hello from b").await;
    assert_eq!(
        a.recv_from_peer(WAIT).await,
        Some(Incoming::Data(rb, b"hello from b".to_vec()))
    );

    // Channels: ChannelData both ways.
    a.channel_bind(0x4001, rb).await.expect("channel A");
    b.channel_bind(0x4abc, ra).await.expect("channel B");
    a.send_on_channel(0x4001, b"over a channel").await;
    assert_eq!(
        b.recv_from_peer(WAIT).await,
        Some(Incoming::Channel(0x4abc, b"over a channel".to_vec()))
    );
    b.send_on_channel(0x4abc, &[7u8; 1200]).await;
    assert_eq!(
        a.recv_from_peer(WAIT).await,
        Some(Incoming::Channel(0x4001, vec![7u8; 1200]))
    );
    // One channel number for one peer only.
    assert_eq!(
        a.channel_bind(0x4001, SocketAddr::new(rb.ip(), rb.port() ^ 1)).await,
        Err(400)
    );

    // Refresh to 0 deletes the allocation; what follows finds none.
    assert_eq!(a.refresh(0).await, Ok(0));
    assert_eq!(a.create_permission(rb).await, Err(437));
    s.stop().await;
}

#[tokio::test]
async fn stun_binding_answers_the_reflexive_address() {
    let _side_by_side = GAUGES.read().await;
    let s = TestServer::start_with_turn("", "").await;
    let mut c = TurnClient::udp(s.turn.unwrap().udp(), "", "").await;
    let a = c.request_once(method::BINDING, &|_: &mut Builder| {}, false).await;
    assert_eq!(a.class(), Class::Success);
    assert_eq!(a.address(attr::XOR_MAPPED_ADDRESS), Some(c.local_addr()));
    s.stop().await;
}

#[tokio::test]
async fn expired_and_forged_credentials_are_refused() {
    let _side_by_side = GAUGES.read().await;
    let s = TestServer::start_with_turn("", "").await;
    let (user, pass, _) = credentials(&s).await;
    let server = s.turn.unwrap().udp();

    // No credentials at all: a 401 challenge with realm and nonce.
    let mut anon = TurnClient::udp(server, &user, &pass).await;
    let a = anon
        .request_once(
            method::ALLOCATE,
            &|b: &mut Builder| {
                b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            },
            false,
        )
        .await;
    assert_eq!(a.code(), Some(401));
    assert_eq!(a.msg().text(attr::REALM), Some("localhost"));
    assert!(a.msg().text(attr::NONCE).is_some());

    // A forged password.
    let mut forged = TurnClient::udp(server, &user, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=").await;
    assert_eq!(forged.allocate().await, Err(401));
    // A username whose expiry was moved: its password no longer matches.
    let (exp, rest) = user.split_once(':').unwrap();
    let moved = format!("{}:{rest}", exp.parse::<u64>().unwrap() + 3600);
    let mut moved = TurnClient::udp(server, &moved, &pass).await;
    assert_eq!(moved.allocate().await, Err(401));
    // Credentials made with the server's secret that have expired.
    let secret = std::fs::read_to_string(s.config.data_dir.join("turn/secret")).expect("generated secret");
    let past = SystemTime::now() - Duration::from_secs(7200);
    let (old_user, old_pass, _) =
        pushbox::turn::auth::credentials(&secret, "alice@localhost", Duration::from_secs(3600), past);
    let mut expired = TurnClient::udp(server, &old_user, &old_pass).await;
    assert_eq!(expired.allocate().await, Err(401));
    // The same secret with a fresh expiry works: the refusals were about the credentials.
    let (u, p, _) =
        pushbox::turn::auth::credentials(&secret, "alice@localhost", Duration::from_secs(3600), SystemTime::now());
    let mut fresh = TurnClient::udp(server, &u, &p).await;
    assert!(fresh.allocate().await.is_ok());
    s.stop().await;
}

#[tokio::test]
async fn relays_to_loopback_and_private_peers_are_refused_by_default() {
    let _side_by_side = GAUGES.read().await;
    let s = TestServer::start_with_turn("", "").await;
    let (user, pass, _) = credentials(&s).await;
    let mut c = TurnClient::udp(s.turn.unwrap().udp(), &user, &pass).await;
    c.allocate().await.expect("allocation");
    for peer in [
        "127.0.0.1:9",
        "10.1.2.3:9",
        "192.168.0.1:9",
        "169.254.1.1:9",
        "172.16.0.1:9",
    ] {
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(c.create_permission(peer).await, Err(403), "{peer}");
        assert_eq!(c.channel_bind(0x4002, peer).await, Err(403), "{peer}");
    }
    // An IPv6 peer on an IPv4 allocation is a family mismatch.
    assert_eq!(c.create_permission("[2001:db8::1]:9".parse().unwrap()).await, Err(443));
    // A public address is fine (nothing is sent to it).
    assert_eq!(c.create_permission("203.0.113.7:9".parse().unwrap()).await, Ok(()));
    s.stop().await;
}

#[tokio::test]
async fn allocation_quota_per_user() {
    let _side_by_side = GAUGES.read().await;
    let s = TestServer::start_with_turn("max_allocations_per_user = 2\n", "").await;
    let (user, pass, _) = credentials(&s).await;
    let server = s.turn.unwrap().udp();
    let mut held = vec![];
    for _ in 0..2 {
        let mut c = TurnClient::udp(server, &user, &pass).await;
        c.allocate().await.expect("within quota");
        held.push(c);
    }
    let mut third = TurnClient::udp(server, &user, &pass).await;
    assert_eq!(third.allocate().await, Err(486));
    // A second Allocate on one 5-tuple is a mismatch, not a new allocation.
    assert_eq!(held[0].allocate().await, Err(437));
    // Freeing one makes room again.
    assert_eq!(held[0].refresh(0).await, Ok(0));
    assert!(third.allocate().await.is_ok());
    s.stop().await;
}

#[tokio::test]
async fn bandwidth_per_allocation_is_capped() {
    let _side_by_side = GAUGES.read().await;
    // 2000 bytes per second with one second of burst: of 20 datagrams of
    // 500 bytes sent at once, about four pass.
    let s = TestServer::start_with_turn(&format!("{}max_bandwidth = 2000\n", loopback_relays()), "").await;
    let (user, pass, _) = credentials(&s).await;
    let server = s.turn.unwrap().udp();
    let mut a = TurnClient::udp(server, &user, &pass).await;
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    a.allocate().await.unwrap();
    a.create_permission(peer.local_addr().unwrap()).await.unwrap();
    let start = std::time::Instant::now();
    for _ in 0..20 {
        a.send_to_peer(peer.local_addr().unwrap(), &[1u8; 500]).await;
    }
    let mut got = 0;
    let mut last = start;
    let mut buf = [0u8; 2048];
    while tokio::time::timeout(SHORT, peer.recv_from(&mut buf)).await.is_ok() {
        got += 1;
        last = std::time::Instant::now();
    }
    // The bucket refills while the server works through the datagrams: on a
    // loaded machine that can take a while, and the cap allows four more
    // for every second of it (measured from the first send to the last
    // datagram through, which spans the server's work).
    let refill = (4.0 * (last - start).as_secs_f64()).floor() as usize;
    assert!(
        (1..=6 + refill).contains(&got),
        "{got} datagrams passed a 2000 B/s cap in {:?}",
        last - start
    );
    s.stop().await;
}

#[tokio::test]
async fn tcp_allocation_relays_to_a_udp_peer() {
    let _side_by_side = GAUGES.read().await;
    let s = TestServer::start_with_turn(loopback_relays(), "").await;
    let (user, pass, _) = credentials(&s).await;
    let ports = s.turn.unwrap();
    let mut c = TurnClient::tcp(SocketAddr::from(([127, 0, 0, 1], ports.port)), &user, &pass).await;
    let relayed = c.allocate().await.expect("allocation over TCP");
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let pa = peer.local_addr().unwrap();
    c.channel_bind(0x4010, pa).await.unwrap();
    c.send_on_channel(0x4010, b"odd length").await;
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"odd length"[..], relayed));
    peer.send_to(b"back again", relayed).await.unwrap();
    assert_eq!(
        c.recv_from_peer(WAIT).await,
        Some(Incoming::Channel(0x4010, b"back again".to_vec()))
    );
    s.stop().await;
}

#[tokio::test]
async fn metrics_count_allocations_and_relayed_bytes() {
    let _alone = GAUGES.write().await;
    let s = TestServer::start_with_turn(loopback_relays(), "[metrics]\nlisten = [\"127.0.0.1:0\"]\n").await;
    let maddr = s.metrics.expect("the metrics listener");
    let (user, pass, _) = credentials(&s).await;
    let mut a = TurnClient::udp(s.turn.unwrap().udp(), &user, &pass).await;
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    a.allocate().await.unwrap();
    a.create_permission(peer.local_addr().unwrap()).await.unwrap();
    a.send_to_peer(peer.local_addr().unwrap(), &[0u8; 321]).await;
    let mut buf = [0u8; 2048];
    tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let body = scrape(maddr).await;
    let line = |name: &str| body.lines().find(|l| l.starts_with(name)).map(str::to_string);
    let allocs = line("pushbox_turn_allocations ").expect("allocation gauge");
    assert!(!allocs.ends_with(" 0"), "{allocs}");
    let bytes = line("pushbox_turn_relayed_bytes_total{direction=\"to_peer\"}").expect("relayed bytes");
    let n: u64 = bytes.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 321, "{bytes}");
    assert!(
        body.contains("pushbox_turn_requests_total{method=\"allocate\",result=\"ok\"}"),
        "{body}"
    );
    s.stop().await;
}

async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
    t.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut s = String::new();
    t.read_to_string(&mut s).await.unwrap();
    s
}

//! The built-in STUN/TURN server (`[turn] mode = "builtin"`): STUN Binding
//! (RFC 8489) and TURN with UDP relays (RFC 8656) over UDP, TCP and TLS,
//! with the REST-API credentials XEP-0215 hands out checked in process.
//! Limits: allocations per user, per client address and in all, lifetime,
//! bandwidth per allocation, and no relaying to loopback, private or
//! link-local peers unless configured. Shares the daemon's runtime,
//! shutdown, per-IP login limits, logging and metrics.
//!
//! The request handlers are synchronous (no await, so no lock is ever held
//! across one): a packet comes in on a listener, is answered or relayed at
//! once with non-blocking sends, like UDP itself drops what it cannot send.

pub mod auth;
mod handler;
pub mod policy;
mod secret;
pub mod stun;
pub mod transport;

pub use secret::load_or_create_secret;

use crate::{
    config::{Config, Turn},
    metrics,
    net::Limiter,
    shutdown::{stopped, Shutdown},
};
use anyhow::{bail, Result};
use auth::Nonces;
use policy::PeerPolicy;
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use tokio::{
    net::UdpSocket,
    sync::{mpsc, Notify},
};

/// Lifetime of an allocation that asks for none or less (RFC 8656 §3.2).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// Permissions last five minutes, channel bindings ten (RFC 8656 §9, §12).
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// A reserved odd port (EVEN-PORT with R) is kept this long (RFC 8656 §7.2).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// Nonces are renewed hourly (a stale one gets 438 and the client retries).
const NONCE_LIFETIME: Duration = Duration::from_secs(3600);
/// Permissions one allocation may hold (each is one peer address).
const MAX_PERMISSIONS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// The client's side of an allocation: transport, the server address it
/// reached, and its own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub transport: Transport,
    pub server: SocketAddr,
    pub client: SocketAddr,
}

/// How answers and relayed data reach a client: the listener's UDP socket,
/// or the queue of a TCP/TLS connection's writer.
#[derive(Clone)]
pub enum Link {
    Udp(Arc<UdpSocket>),
    Stream(mpsc::Sender<Vec<u8>>),
}

impl Link {
    /// Send without waiting; a full socket buffer or queue drops the packet,
    /// as UDP would. Returns whether it was sent.
    fn send(&self, to: SocketAddr, bytes: &[u8]) -> bool {
        match self {
            Link::Udp(s) => s.try_send_to(bytes, to).is_ok(),
            Link::Stream(q) => q.try_send(bytes.to_vec()).is_ok(),
        }
    }

    fn is_stream(&self) -> bool {
        matches!(self, Link::Stream(_))
    }
}

/// Where relayed sockets of one address family bind, and the address
/// clients are told.
#[derive(Debug, Clone, Copy)]
struct RelayIp {
    bind: IpAddr,
    announce: IpAddr,
}

struct Limits {
    per_user: u32,
    per_ip: u32,
    total: u32,
    max_lifetime: Duration,
    bandwidth: u64,
}

/// Counters of the relay path, looked up once.
struct Counters {
    bytes_to_peer: ::metrics::Counter,
    bytes_to_client: ::metrics::Counter,
    packets_to_peer: ::metrics::Counter,
    packets_to_client: ::metrics::Counter,
    dropped_permission: ::metrics::Counter,
    dropped_bandwidth: ::metrics::Counter,
    dropped_send: ::metrics::Counter,
    dropped_too_big: ::metrics::Counter,
}

impl Counters {
    fn new() -> Counters {
        use ::metrics::counter;
        Counters {
            bytes_to_peer: counter!(metrics::TURN_RELAYED_BYTES, "direction" => "to_peer"),
            bytes_to_client: counter!(metrics::TURN_RELAYED_BYTES, "direction" => "to_client"),
            packets_to_peer: counter!(metrics::TURN_RELAYED_PACKETS, "direction" => "to_peer"),
            packets_to_client: counter!(metrics::TURN_RELAYED_PACKETS, "direction" => "to_client"),
            dropped_permission: counter!(metrics::TURN_DROPPED_PACKETS, "reason" => "no_permission"),
            dropped_bandwidth: counter!(metrics::TURN_DROPPED_PACKETS, "reason" => "bandwidth"),
            dropped_send: counter!(metrics::TURN_DROPPED_PACKETS, "reason" => "send_failed"),
            dropped_too_big: counter!(metrics::TURN_DROPPED_PACKETS, "reason" => "too_big"),
        }
    }
}

/// The running TURN server: configuration, the allocation table, nonces.
pub struct TurnServer {
    realm: String,
    secret: String,
    nonces: Nonces,
    policy: PeerPolicy,
    limits: Limits,
    relay_v4: Option<RelayIp>,
    relay_v6: Option<RelayIp>,
    ports: (u16, u16),
    table: Mutex<Table>,
    limiter: Limiter,
    counters: Counters,
    shutdown: Shutdown,
}

#[derive(Default)]
struct Table {
    by_tuple: HashMap<FiveTuple, Arc<Allocation>>,
    per_user: HashMap<String, u32>,
    per_ip: HashMap<IpAddr, u32>,
    /// Odd ports kept for a later Allocate with RESERVATION-TOKEN.
    reservations: HashMap<[u8; 8], (std::net::UdpSocket, Instant)>,
}

/// One allocation: its relayed socket and what it may relay to.
struct Allocation {
    tuple: FiveTuple,
    link: Link,
    username: String,
    user: String,
    relay: Arc<UdpSocket>,
    /// The relayed transport address as announced.
    relayed: SocketAddr,
    state: Mutex<State>,
    closed: Notify,
    bytes_to_peer: AtomicU64,
    bytes_to_client: AtomicU64,
    created: Instant,
}

impl Allocation {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct State {
    expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    by_peer: HashMap<SocketAddr, u16>,
    bucket: Bucket,
    /// The Allocate transaction and its answer, for retransmissions.
    allocate: ([u8; 12], Vec<u8>),
}

impl State {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|t| *t > now)
    }

    fn channel_peer(&self, channel: u16, now: Instant) -> Option<SocketAddr> {
        self.channels.get(&channel).filter(|(_, t)| *t > now).map(|(p, _)| *p)
    }

    fn channel_of(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        let c = *self.by_peer.get(&peer)?;
        self.channel_peer(c, now).map(|_| c)
    }

    fn prune(&mut self, now: Instant) {
        self.permissions.retain(|_, t| *t > now);
        let by_peer = &mut self.by_peer;
        self.channels.retain(|_, (p, t)| {
            let keep = *t > now;
            if !keep {
                by_peer.remove(p);
            }
            keep
        });
    }
}

/// Bytes per second with one second of burst; `rate == 0` is unlimited.
struct Bucket {
    rate: u64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64, now: Instant) -> Bucket {
        Bucket {
            rate,
            tokens: rate as f64,
            last: now,
        }
    }

    fn take(&mut self, n: usize, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate as f64).min(self.rate as f64);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

impl TurnServer {
    /// Set up from `[turn]` (mode `builtin`, secret already resolved).
    pub fn new(config: &Config, limiter: Limiter, shutdown: Shutdown) -> Result<Arc<TurnServer>> {
        let Some(t) = &config.turn else {
            bail!("no [turn] section");
        };
        let nets = |l: &[String]| -> Vec<ipnet::IpNet> { l.iter().filter_map(|n| n.parse().ok()).collect() };
        let (relay_v4, relay_v6) = relay_ips(t)?;
        if let Some(r) = relay_v4.filter(|r| !is_global(r.announce)) {
            tracing::warn!(
                announce = %r.announce,
                "TURN relayed addresses are announced as a non-public IPv4 address; behind NAT, set turn.public_ipv4"
            );
        }
        Ok(Arc::new(TurnServer {
            realm: config.domain.clone(),
            secret: t.secret.clone(),
            nonces: Nonces::new(NONCE_LIFETIME),
            policy: PeerPolicy::new(nets(&t.allowed_peers), nets(&t.denied_peers)),
            limits: Limits {
                per_user: t.max_allocations_per_user,
                per_ip: t.max_allocations_per_ip,
                total: t.max_allocations,
                max_lifetime: t.max_lifetime.get(),
                bandwidth: t.max_bandwidth,
            },
            relay_v4,
            relay_v6,
            ports: t.relay_port_range().unwrap_or((49152, 65535)),
            table: Mutex::new(Table::default()),
            limiter,
            counters: Counters::new(),
            shutdown,
        }))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn allocation(&self, tuple: &FiveTuple) -> Option<Arc<Allocation>> {
        self.table().by_tuple.get(tuple).cloned()
    }

    /// Number of live allocations.
    pub fn allocations(&self) -> usize {
        self.table().by_tuple.len()
    }

    /// Delete the allocation of `tuple`, if any, and stop its relay.
    fn remove(&self, tuple: &FiveTuple, why: &'static str) {
        let a = {
            let mut t = self.table();
            let Some(a) = t.by_tuple.remove(tuple) else {
                return;
            };
            dec(&mut t.per_user, &a.user);
            dec(&mut t.per_ip, &a.tuple.client.ip());
            ::metrics::gauge!(metrics::TURN_ALLOCATIONS).set(t.by_tuple.len() as f64);
            a
        };
        a.closed.notify_one();
        tracing::info!(
            user = %a.user,
            client = %a.tuple.client,
            relayed = %a.relayed,
            why,
            seconds = a.created.elapsed().as_secs(),
            bytes_to_peer = a.bytes_to_peer.load(Ordering::Relaxed),
            bytes_to_client = a.bytes_to_client.load(Ordering::Relaxed),
            "TURN allocation closed"
        );
    }

    /// Expire allocations, permissions, channels and reservations once a
    /// second until shutdown.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let s = self.clone();
        let mut stop = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped(&mut stop) => break,
                }
                let now = Instant::now();
                // The table's lock only long enough to copy it: relaying
                // takes it for every datagram from a client.
                let all: Vec<Arc<Allocation>> = {
                    let mut t = s.table();
                    t.reservations.retain(|_, (_, at)| *at > now);
                    t.by_tuple.values().cloned().collect()
                };
                for a in all {
                    let expired = {
                        let mut st = a.state();
                        st.prune(now);
                        st.expires <= now
                    };
                    if expired {
                        s.remove(&a.tuple, "expired");
                    }
                }
            }
            // Shutdown: every relay task ends with its allocation.
            let all: Vec<FiveTuple> = s.table().by_tuple.keys().copied().collect();
            for k in all {
                s.remove(&k, "shutdown");
            }
        });
    }
}

fn dec<K: std::hash::Hash + Eq>(m: &mut HashMap<K, u32>, k: &K) {
    if let Some(n) = m.get_mut(k) {
        *n -= 1;
        if *n == 0 {
            m.remove(k);
        }
    }
}

/// Whether `ip` is routable on the Internet (not loopback, private, link-local, …).
pub fn is_global(ip: IpAddr) -> bool {
    PeerPolicy::new(vec![], vec![]).permits(ip)
}

/// The relay addresses of each family from `bind`, `public_ipv4/6` and the
/// machine's interfaces.
fn relay_ips(t: &Turn) -> Result<(Option<RelayIp>, Option<RelayIp>)> {
    let relay = |v4: bool| -> Result<Option<RelayIp>> {
        let Some(bind) = t.bind.iter().copied().find(|ip| ip.is_ipv4() == v4) else {
            return Ok(None);
        };
        let Some(announce) = announce_ip(t, bind) else {
            let (family, key) = if v4 {
                ("IPv4", "public_ipv4")
            } else {
                ("IPv6", "public_ipv6")
            };
            bail!("turn: cannot tell which {family} address to announce for relays; set turn.{key}");
        };
        Ok(Some(RelayIp { bind, announce }))
    };
    Ok((relay(true)?, relay(false)?))
}

/// The address announced in relayed addresses of `bind`'s family:
/// `public_ipv4` (or `_ipv6`), else `bind` if it is specific, else an
/// address of the machine's interfaces.
pub fn announce_ip(t: &Turn, bind: IpAddr) -> Option<IpAddr> {
    let public = match bind {
        IpAddr::V4(_) => t.public_ipv4.map(IpAddr::V4),
        IpAddr::V6(_) => t.public_ipv6.map(IpAddr::V6),
    };
    public
        .or_else(|| (!bind.is_unspecified()).then_some(bind))
        .or_else(|| interface_address(bind.is_ipv4()))
}

/// The machine's own address of one family that peers can best reach: a
/// public one if an interface has it, else a private one (behind NAT).
/// IPv6 only counts public addresses.
fn interface_address(v4: bool) -> Option<IpAddr> {
    let addrs: Vec<IpAddr> = if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| ip.is_ipv4() == v4 && !ip.is_loopback() && !ip.is_unspecified())
        .collect();
    addrs
        .iter()
        .copied()
        .find(|ip| is_global(*ip))
        .or_else(|| if v4 { addrs.first().copied() } else { None })
}

//! What the TURN server does with one packet from a client: STUN Binding,
//! the four TURN requests (Allocate, Refresh, CreatePermission,
//! ChannelBind) behind long-term credentials, Send indications and
//! ChannelData; and the relay task that brings peers' datagrams back.

use super::{
    auth::{self, NonceCheck},
    stun::{self, attr, method, Builder, Class, Integrity, Message, ParseError},
    Allocation, Bucket, FiveTuple, Link, State, Transport, TurnServer, CHANNEL_LIFETIME, DEFAULT_LIFETIME,
    MAX_PERMISSIONS, PERMISSION_LIFETIME, RESERVATION_LIFETIME,
};
use crate::{
    metrics,
    shutdown::{stopped, Shutdown},
};
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};
use tokio::{net::UdpSocket, sync::Notify};

/// The largest datagram relayed from a peer to a client.
const MAX_PEER_DATAGRAM: usize = 16 * 1024;

/// A request that passed the long-term credential check.
struct Authed<'a> {
    username: &'a str,
    user: &'a str,
    key: [u8; 16],
    integrity: Integrity,
}

/// An error answer, with or without MESSAGE-INTEGRITY.
struct Refusal {
    code: u16,
    extra: Vec<(u16, Vec<u8>)>,
}

impl Refusal {
    fn new(code: u16) -> Refusal {
        Refusal { code, extra: vec![] }
    }
}

fn method_name(m: u16) -> &'static str {
    match m {
        method::BINDING => "binding",
        method::ALLOCATE => "allocate",
        method::REFRESH => "refresh",
        method::CREATE_PERMISSION => "create_permission",
        method::CHANNEL_BIND => "channel_bind",
        _ => "other",
    }
}

fn code_name(code: u16) -> &'static str {
    match code {
        400 => "400",
        401 => "401",
        403 => "403",
        420 => "420",
        437 => "437",
        438 => "438",
        440 => "440",
        441 => "441",
        442 => "442",
        443 => "443",
        486 => "486",
        508 => "508",
        _ => "other",
    }
}

fn count(m: u16, result: &'static str) {
    ::metrics::counter!(metrics::TURN_REQUESTS, "method" => method_name(m), "result" => result).increment(1);
}

impl TurnServer {
    /// Handle one packet (a whole STUN message or ChannelData) from `tuple`.
    pub fn handle(self: &Arc<Self>, pkt: &[u8], tuple: FiveTuple, link: &Link) {
        if pkt.is_empty() {
            return;
        }
        match stun::kind(pkt[0]) {
            stun::Kind::ChannelData => self.channel_data(pkt, &tuple),
            stun::Kind::Stun => match Message::parse(pkt) {
                Ok(m) => self.message(&m, tuple, link),
                Err(ParseError::BadAttributes) => {
                    // A request with broken attributes still gets its 400.
                    if let Some((m, Class::Request, tid)) = stun::header(pkt) {
                        tracing::debug!(client = %tuple.client, method = method_name(m), "TURN request with malformed attributes");
                        count(m, "400");
                        let mut b = Builder::new(m, Class::Error, tid);
                        b.error(400);
                        link.send(tuple.client, &b.finish(None, false));
                    }
                }
                Err(ParseError::NotStun) => {}
            },
            stun::Kind::Other => {}
        }
    }

    fn message(self: &Arc<Self>, m: &Message, tuple: FiveTuple, link: &Link) {
        match (m.class, m.method) {
            (Class::Request, method::BINDING) => self.binding(m, &tuple, link),
            (Class::Request, method::ALLOCATE | method::REFRESH | method::CREATE_PERMISSION | method::CHANNEL_BIND) => {
                let reply = match self.authenticate(m, &tuple) {
                    Err(r) => {
                        count(m.method, code_name(r.code));
                        self.error(m, r, None)
                    }
                    Ok(a) => {
                        let unknown = m.unknown_required();
                        let result = if !unknown.is_empty() {
                            let v: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
                            Err(Refusal {
                                code: 420,
                                extra: vec![(attr::UNKNOWN_ATTRIBUTES, v)],
                            })
                        } else {
                            match m.method {
                                method::ALLOCATE => self.allocate(m, &a, tuple, link),
                                method::REFRESH => self.refresh(m, &a, &tuple),
                                method::CREATE_PERMISSION => self.create_permission(m, &a, &tuple),
                                _ => self.channel_bind(m, &a, &tuple),
                            }
                        };
                        match result {
                            Ok(b) => {
                                count(m.method, "ok");
                                b
                            }
                            Err(r) => {
                                count(m.method, code_name(r.code));
                                tracing::debug!(client = %tuple.client, method = method_name(m.method), code = r.code, "TURN request refused");
                                self.error(m, r, Some(&a))
                            }
                        }
                    }
                };
                if !reply.is_empty() {
                    link.send(tuple.client, &reply);
                }
            }
            (Class::Request, other) => {
                count(other, "400");
                link.send(tuple.client, &self.error(m, Refusal::new(400), None));
            }
            (Class::Indication, method::SEND) => self.send_indication(m, &tuple),
            // Binding indications are keepalives; answers are not ours to take.
            _ => {}
        }
    }

    fn binding(&self, m: &Message, tuple: &FiveTuple, link: &Link) {
        let unknown = m.unknown_required();
        let mut b = if unknown.is_empty() {
            let mut b = Builder::new(method::BINDING, Class::Success, m.tid);
            b.xor_address(attr::XOR_MAPPED_ADDRESS, tuple.client);
            count(method::BINDING, "ok");
            b
        } else {
            let mut b = Builder::new(method::BINDING, Class::Error, m.tid);
            b.error(420);
            let v: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
            b.attr(attr::UNKNOWN_ATTRIBUTES, &v);
            count(method::BINDING, "420");
            b
        };
        b.attr(attr::SOFTWARE, b"pushbox");
        link.send(tuple.client, &b.finish(None, m.fingerprint));
    }

    fn error(&self, m: &Message, r: Refusal, authed: Option<&Authed>) -> Vec<u8> {
        let mut b = Builder::new(m.method, Class::Error, m.tid);
        b.error(r.code);
        for (t, v) in &r.extra {
            b.attr(*t, v);
        }
        b.finish(authed.map(|a| (&a.key[..], a.integrity)), m.fingerprint)
    }

    /// RFC 8489 §9.2.4 with REST-API passwords.
    fn authenticate<'a>(&self, m: &Message<'a>, tuple: &FiveTuple) -> Result<Authed<'a>, Refusal> {
        let ip = tuple.client.ip();
        let now = SystemTime::now();
        let challenge = |code: u16| Refusal {
            code,
            extra: vec![
                (attr::REALM, self.realm.as_bytes().to_vec()),
                (attr::NONCE, self.nonces.make(ip, now).into_bytes()),
            ],
        };
        let Some(integrity) = m.integrity() else {
            return Err(challenge(401));
        };
        let (Some(username), Some(_realm), Some(nonce)) =
            (m.text(attr::USERNAME), m.text(attr::REALM), m.text(attr::NONCE))
        else {
            return Err(Refusal::new(400));
        };
        if self.nonces.check(nonce, ip, now) != NonceCheck::Valid {
            return Err(challenge(438));
        }
        if self.limiter.login_blocked(ip) {
            return Err(challenge(401));
        }
        let Ok(user) = auth::check_username(username, now) else {
            return Err(challenge(401));
        };
        let key = auth::long_term_key(username, &self.realm, &auth::password(&self.secret, username));
        if !m.verify(&key) {
            self.limiter.login_failed(ip);
            tracing::info!(client = %tuple.client, user, "TURN request with wrong credentials");
            return Err(challenge(401));
        }
        Ok(Authed {
            username,
            user,
            key,
            integrity,
        })
    }

    fn success(&self, m: &Message, a: &Authed, b: Builder) -> Vec<u8> {
        b.finish(Some((&a.key[..], a.integrity)), m.fingerprint)
    }

    /// The allocation of `tuple`, if this user made it.
    fn own_allocation(&self, a: &Authed, tuple: &FiveTuple) -> Result<Arc<Allocation>, Refusal> {
        let al = self.allocation(tuple).ok_or(Refusal::new(437))?;
        if al.username != a.username {
            return Err(Refusal::new(441));
        }
        Ok(al)
    }

    fn lifetime(&self, m: &Message) -> Duration {
        match m.u32(attr::LIFETIME) {
            Some(s) if Duration::from_secs(s.into()) > DEFAULT_LIFETIME => {
                Duration::from_secs(s.into()).min(self.limits.max_lifetime)
            }
            _ => DEFAULT_LIFETIME,
        }
    }

    /// RFC 8656 §7.2.
    fn allocate(self: &Arc<Self>, m: &Message, a: &Authed, tuple: FiveTuple, link: &Link) -> Result<Vec<u8>, Refusal> {
        if let Some(existing) = self.allocation(&tuple) {
            let st = existing.state();
            // A retransmission gets the same answer; anything else is a mismatch.
            if st.allocate.0 == m.tid && existing.username == a.username {
                return Ok(st.allocate.1.clone());
            }
            return Err(Refusal::new(437));
        }
        let transport = m.get(attr::REQUESTED_TRANSPORT).ok_or(Refusal::new(400))?;
        if transport.first() != Some(&17) {
            return Err(Refusal::new(442));
        }
        let even_port = m.get(attr::EVEN_PORT);
        let token = m.get(attr::RESERVATION_TOKEN);
        let family = m.get(attr::REQUESTED_ADDRESS_FAMILY);
        let additional = m.get(attr::ADDITIONAL_ADDRESS_FAMILY);
        if token.is_some() && (even_port.is_some() || family.is_some() || additional.is_some()) {
            return Err(Refusal::new(400));
        }
        if family.is_some() && additional.is_some() {
            return Err(Refusal::new(400));
        }
        let want_v6 = match family.and_then(|f| f.first()) {
            None => false,
            Some(1) => false,
            Some(2) => true,
            Some(_) => return Err(Refusal::new(440)),
        };
        let mut extra_error = None;
        if let Some(f) = additional {
            // Dual allocations are not offered: the IPv4 one succeeds and the
            // IPv6 one is refused in ADDRESS-ERROR-CODE (RFC 8656 §7.2).
            if f.first() != Some(&2) {
                return Err(Refusal::new(400));
            }
            extra_error = Some(440);
        }
        let lifetime = self.lifetime(m);
        let now = Instant::now();

        // The relayed socket: from a reservation, or a free port of the range.
        let reserved = match token {
            Some(tok) => {
                let tok: [u8; 8] = tok.try_into().map_err(|_| Refusal::new(400))?;
                let (s, _) = self.table().reservations.remove(&tok).ok_or(Refusal::new(508))?;
                Some(s)
            }
            None => None,
        };
        let (relay_ip, socket) = match reserved {
            Some(s) => {
                let ip = s.local_addr().map_err(|_| Refusal::new(508))?.ip();
                let r = if ip.is_ipv4() { self.relay_v4 } else { self.relay_v6 };
                (r.ok_or(Refusal::new(508))?, s)
            }
            None => {
                let r = if want_v6 { self.relay_v6 } else { self.relay_v4 };
                let r = r.ok_or(Refusal::new(440))?;
                (r, self.quota_then_bind(a.user, tuple.client.ip(), r.bind, even_port)?)
            }
        };
        let mut new_token = None;
        if even_port.and_then(|v| v.first()).is_some_and(|b| b & 0x80 != 0) {
            // R bit: keep the next port for the RTCP allocation.
            let port = socket.local_addr().map_err(|_| Refusal::new(508))?.port();
            let next =
                std::net::UdpSocket::bind(SocketAddr::new(relay_ip.bind, port + 1)).map_err(|_| Refusal::new(508))?;
            let tok: [u8; 8] = rand::random();
            self.table()
                .reservations
                .insert(tok, (next, now + RESERVATION_LIFETIME));
            new_token = Some(tok);
        }
        socket.set_nonblocking(true).map_err(|_| Refusal::new(508))?;
        let port = socket.local_addr().map_err(|_| Refusal::new(508))?.port();
        let relay = Arc::new(UdpSocket::from_std(socket).map_err(|_| Refusal::new(508))?);
        let relayed = SocketAddr::new(relay_ip.announce, port);

        let mut b = Builder::new(method::ALLOCATE, Class::Success, m.tid);
        b.xor_address(attr::XOR_RELAYED_ADDRESS, relayed)
            .u32(attr::LIFETIME, lifetime.as_secs() as u32)
            .xor_address(attr::XOR_MAPPED_ADDRESS, tuple.client);
        if let Some(t) = new_token {
            b.attr(attr::RESERVATION_TOKEN, &t);
        }
        if let Some(code) = extra_error {
            // ADDRESS-ERROR-CODE: family, then the ERROR-CODE layout.
            let mut v = vec![0x02, 0, (code / 100) as u8, (code % 100) as u8];
            v.extend_from_slice(stun::reason(code).as_bytes());
            b.attr(attr::ADDRESS_ERROR_CODE, &v);
        }
        let reply = self.success(m, a, b);

        let al = Arc::new(Allocation {
            tuple,
            link: link.clone(),
            username: a.username.to_string(),
            user: a.user.to_string(),
            relay,
            relayed,
            state: Mutex::new(State {
                expires: now + lifetime,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                by_peer: HashMap::new(),
                bucket: Bucket::new(self.limits.bandwidth, now),
                allocate: (m.tid, reply.clone()),
            }),
            closed: Notify::new(),
            bytes_to_peer: 0.into(),
            bytes_to_client: 0.into(),
            created: now,
        });
        {
            let mut t = self.table();
            // Counted again under the lock that inserts (two racing Allocates).
            if let Err(code) = self.quota(&t, a.user, tuple.client.ip()) {
                return Err(Refusal::new(code));
            }
            t.by_tuple.insert(tuple, al.clone());
            *t.per_user.entry(al.user.clone()).or_default() += 1;
            *t.per_ip.entry(tuple.client.ip()).or_default() += 1;
            ::metrics::gauge!(metrics::TURN_ALLOCATIONS).set(t.by_tuple.len() as f64);
        }
        tracing::info!(user = a.user, client = %tuple.client, %relayed, lifetime = lifetime.as_secs(), "TURN allocation");
        tokio::spawn(relay_task(self.clone(), al, self.shutdown.clone()));
        Ok(reply)
    }

    fn quota(&self, t: &super::Table, user: &str, ip: IpAddr) -> Result<(), u16> {
        if t.per_user.get(user).copied().unwrap_or(0) >= self.limits.per_user
            || t.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.per_ip
        {
            return Err(486);
        }
        if t.by_tuple.len() as u64 >= u64::from(self.limits.total) {
            return Err(508);
        }
        Ok(())
    }

    /// Check the quotas, then bind a relayed socket on a free port of the
    /// range (an even one if asked, with its odd neighbour free if the R bit
    /// is set).
    fn quota_then_bind(
        &self,
        user: &str,
        ip: IpAddr,
        bind: IpAddr,
        even_port: Option<&[u8]>,
    ) -> Result<std::net::UdpSocket, Refusal> {
        self.quota(&self.table(), user, ip).map_err(Refusal::new)?;
        let (lo, hi) = self.ports;
        let span = u32::from(hi - lo) + 1;
        let even = even_port.is_some();
        let reserve = even_port.and_then(|v| v.first()).is_some_and(|b| b & 0x80 != 0);
        let start: u32 = rand::random::<u32>() % span;
        for i in 0..span.min(200) {
            let mut port = lo as u32 + (start + i) % span;
            if even && port % 2 == 1 {
                port += 1;
            }
            if port > hi as u32 || (reserve && port + 1 > hi as u32) {
                continue;
            }
            if reserve && std::net::UdpSocket::bind(SocketAddr::new(bind, port as u16 + 1)).is_err() {
                continue;
            }
            if let Ok(s) = std::net::UdpSocket::bind(SocketAddr::new(bind, port as u16)) {
                return Ok(s);
            }
        }
        tracing::warn!(?self.ports, "TURN: no free relay port");
        Err(Refusal::new(508))
    }

    /// RFC 8656 §7.3.
    fn refresh(&self, m: &Message, a: &Authed, tuple: &FiveTuple) -> Result<Vec<u8>, Refusal> {
        let al = self.own_allocation(a, tuple)?;
        if let Some(f) = m.get(attr::REQUESTED_ADDRESS_FAMILY).and_then(|f| f.first()) {
            if (*f == 2) != al.relayed.is_ipv6() {
                return Err(Refusal::new(443));
            }
        }
        let lifetime = if m.u32(attr::LIFETIME) == Some(0) {
            self.remove(tuple, "refresh with lifetime 0");
            Duration::ZERO
        } else {
            let l = self.lifetime(m);
            al.state().expires = Instant::now() + l;
            l
        };
        let mut b = Builder::new(method::REFRESH, Class::Success, m.tid);
        b.u32(attr::LIFETIME, lifetime.as_secs() as u32);
        Ok(self.success(m, a, b))
    }

    /// Peer addresses of the request, each checked against the allocation's
    /// family and the peer policy.
    fn peers(&self, m: &Message, al: &Allocation) -> Result<Vec<SocketAddr>, Refusal> {
        let mut v = vec![];
        for raw in m.all(attr::XOR_PEER_ADDRESS) {
            let p = m.xor_address(raw).ok_or(Refusal::new(400))?;
            if p.is_ipv6() != al.relayed.is_ipv6() {
                return Err(Refusal::new(443));
            }
            if !self.policy.permits(p.ip()) {
                ::metrics::counter!(metrics::TURN_PEERS_REFUSED).increment(1);
                tracing::info!(user = %al.user, peer = %p.ip(), "TURN: peer address refused by policy");
                return Err(Refusal::new(403));
            }
            v.push(p);
        }
        if v.is_empty() {
            return Err(Refusal::new(400));
        }
        Ok(v)
    }

    /// RFC 8656 §9.
    fn create_permission(&self, m: &Message, a: &Authed, tuple: &FiveTuple) -> Result<Vec<u8>, Refusal> {
        let al = self.own_allocation(a, tuple)?;
        let peers = self.peers(m, &al)?;
        let now = Instant::now();
        {
            let mut st = al.state();
            let new = peers.iter().filter(|p| !st.permissions.contains_key(&p.ip())).count();
            if st.permissions.len() + new > MAX_PERMISSIONS {
                return Err(Refusal::new(508));
            }
            for p in peers {
                st.permissions.insert(p.ip(), now + PERMISSION_LIFETIME);
            }
        }
        Ok(self.success(m, a, Builder::new(method::CREATE_PERMISSION, Class::Success, m.tid)))
    }

    /// RFC 8656 §11.
    fn channel_bind(&self, m: &Message, a: &Authed, tuple: &FiveTuple) -> Result<Vec<u8>, Refusal> {
        let al = self.own_allocation(a, tuple)?;
        let number = m
            .get(attr::CHANNEL_NUMBER)
            .and_then(|v| Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?)))
            .ok_or(Refusal::new(400))?;
        // RFC 5766's range (see `stun::kind`).
        if !(0x4000..=0x7FFF).contains(&number) {
            return Err(Refusal::new(400));
        }
        let peers = self.peers(m, &al)?;
        let [peer] = peers[..] else {
            return Err(Refusal::new(400));
        };
        let now = Instant::now();
        {
            let mut st = al.state();
            if st.channel_peer(number, now).is_some_and(|p| p != peer)
                || st.channel_of(peer, now).is_some_and(|c| c != number)
            {
                return Err(Refusal::new(400));
            }
            if let Some((old, _)) = st.channels.insert(number, (peer, now + CHANNEL_LIFETIME)) {
                st.by_peer.remove(&old);
            }
            st.by_peer.insert(peer, number);
            st.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
        }
        Ok(self.success(m, a, Builder::new(method::CHANNEL_BIND, Class::Success, m.tid)))
    }

    /// RFC 8656 §10.2: data from the client to a peer it has a permission for.
    fn send_indication(&self, m: &Message, tuple: &FiveTuple) {
        let (Some(peer), Some(data)) = (
            m.get(attr::XOR_PEER_ADDRESS).and_then(|v| m.xor_address(v)),
            m.get(attr::DATA),
        ) else {
            return;
        };
        let Some(al) = self.allocation(tuple) else {
            return;
        };
        let admitted = self.admit(&mut al.state(), peer.ip(), data.len(), Instant::now());
        if admitted {
            self.to_peer(&al, peer, data);
        }
    }

    /// RFC 8656 §12.5: ChannelData from the client.
    fn channel_data(&self, pkt: &[u8], tuple: &FiveTuple) {
        let Some((channel, data)) = stun::parse_channel_data(pkt) else {
            return;
        };
        let Some(al) = self.allocation(tuple) else {
            return;
        };
        let now = Instant::now();
        // One look at the allocation's state: the channel's peer, its
        // permission and the bandwidth.
        let peer = {
            let mut st = al.state();
            match st.channel_peer(channel, now) {
                Some(peer) if self.admit(&mut st, peer.ip(), data.len(), now) => peer,
                _ => return,
            }
        };
        self.to_peer(&al, peer, data);
    }

    /// Whether `n` bytes to or from `ip` may pass: a permission for it and
    /// room in the bandwidth; a refusal is counted.
    fn admit(&self, st: &mut State, ip: IpAddr, n: usize, now: Instant) -> bool {
        if !st.permitted(ip, now) {
            self.counters.dropped_permission.increment(1);
            false
        } else if !st.bucket.take(n, now) {
            self.counters.dropped_bandwidth.increment(1);
            false
        } else {
            true
        }
    }

    /// Send admitted data from the allocation's relayed address to `peer`.
    fn to_peer(&self, al: &Allocation, peer: SocketAddr, data: &[u8]) {
        if al.relay.try_send_to(data, peer).is_ok() {
            al.bytes_to_peer.fetch_add(data.len() as u64, Ordering::Relaxed);
            self.counters.bytes_to_peer.increment(data.len() as u64);
            self.counters.packets_to_peer.increment(1);
        } else {
            self.counters.dropped_send.increment(1);
        }
    }

    /// The TCP or TLS connection of `tuple` ended: its allocation goes too
    /// (RFC 8656 §3.1).
    pub(super) fn connection_closed(&self, tuple: &FiveTuple) {
        if tuple.transport != Transport::Udp {
            self.remove(tuple, "connection closed");
        }
    }

    pub(super) fn has_allocation(&self, tuple: &FiveTuple) -> bool {
        self.table().by_tuple.contains_key(tuple)
    }
}

/// Datagrams from peers to the client of one allocation, as ChannelData
/// when a channel is bound to the peer and as Data indications otherwise;
/// ends when the allocation is deleted or the daemon stops.
async fn relay_task(server: Arc<TurnServer>, al: Arc<Allocation>, mut stop: Shutdown) {
    // Media datagrams stay under the path MTU; one more byte than the
    // largest relayed datagram tells a truncated one, which is dropped.
    let mut buf = vec![0u8; MAX_PEER_DATAGRAM + 1];
    let mut out = Vec::with_capacity(2048);
    let stream = al.link.is_stream();
    let c = &server.counters;
    loop {
        let (n, from) = tokio::select! {
            r = al.relay.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => {
                    // ICMP errors surface here on some systems; keep serving.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
            _ = al.closed.notified() => return,
            _ = stopped(&mut stop) => return,
        };
        if n > MAX_PEER_DATAGRAM {
            c.dropped_too_big.increment(1);
            continue;
        }
        let now = Instant::now();
        let channel = {
            let mut st = al.state();
            if !server.admit(&mut st, from.ip(), n, now) {
                continue;
            }
            st.channel_of(from, now)
        };
        let data = &buf[..n];
        match channel {
            Some(ch) => stun::channel_data(ch, data, stream, &mut out),
            None => {
                let mut b = Builder::reuse(
                    std::mem::take(&mut out),
                    method::DATA,
                    Class::Indication,
                    rand::random(),
                );
                b.xor_address(attr::XOR_PEER_ADDRESS, from).attr(attr::DATA, data);
                out = b.finish(None, false);
            }
        }
        if al.link.send(al.tuple.client, &out) {
            al.bytes_to_client.fetch_add(n as u64, Ordering::Relaxed);
            c.bytes_to_client.increment(n as u64);
            c.packets_to_client.increment(1);
        } else {
            c.dropped_send.increment(1);
        }
    }
}

//! A TURN client for tests (RFC 8656 over UDP or TCP, long-term
//! credentials with the 401/438 dance), written on pushbox's STUN codec,
//! and the free ports a test daemon's TURN server listens on.

use pushbox::turn::stun::{self, attr, method, Builder, Class, Integrity, Message};
use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
};

const PATIENCE: Duration = Duration::from_secs(5);

/// The ports of a test daemon's TURN server.
#[derive(Debug, Clone, Copy)]
pub struct TurnPorts {
    /// UDP and TCP.
    pub port: u16,
    pub tls_port: u16,
}

impl TurnPorts {
    pub fn udp(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

pub struct TurnSockets {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
    pub tls: TcpListener,
}

impl TurnPorts {
    /// A UDP socket on a free port and a TCP listener on the same number
    /// (another try if that TCP port is taken), plus a TLS listener.
    pub async fn bind() -> (TurnPorts, TurnSockets) {
        for _ in 0..50 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = udp.local_addr().unwrap().port();
            let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await else {
                continue;
            };
            let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let tls_port = tls.local_addr().unwrap().port();
            return (TurnPorts { port, tls_port }, TurnSockets { udp, tcp, tls });
        }
        panic!("no free port for both UDP and TCP");
    }
}

enum Conn {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream, Vec<u8>),
}

/// What arrived for the client from a peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A Data indication: the peer and the bytes.
    Data(SocketAddr, Vec<u8>),
    /// ChannelData: the channel and the bytes.
    Channel(u16, Vec<u8>),
}

/// An answer: the message bytes (parse with [`Message::parse`]).
pub struct Answer(pub Vec<u8>);

impl Answer {
    pub fn msg(&self) -> Message<'_> {
        Message::parse(&self.0).expect("a STUN answer")
    }
    pub fn class(&self) -> Class {
        self.msg().class
    }
    /// The error code, if this is an error answer.
    pub fn code(&self) -> Option<u16> {
        let m = self.msg();
        let v = m.get(attr::ERROR_CODE)?;
        Some(u16::from(v[2]) * 100 + u16::from(v[3]))
    }
    pub fn address(&self, typ: u16) -> Option<SocketAddr> {
        let m = self.msg();
        m.xor_address(m.get(typ)?)
    }
}

pub struct TurnClient {
    conn: Conn,
    pub username: String,
    pub password: String,
    realm: Option<String>,
    nonce: Option<String>,
    /// Datagrams from peers that arrived while waiting for an answer.
    pending: Vec<Vec<u8>>,
}

impl TurnClient {
    pub async fn udp(server: SocketAddr, username: &str, password: &str) -> TurnClient {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        Self::with(Conn::Udp(s, server), username, password)
    }

    pub async fn tcp(server: SocketAddr, username: &str, password: &str) -> TurnClient {
        let s = TcpStream::connect(server).await.unwrap();
        Self::with(Conn::Tcp(s, vec![]), username, password)
    }

    fn with(conn: Conn, username: &str, password: &str) -> TurnClient {
        TurnClient {
            conn,
            username: username.into(),
            password: password.into(),
            realm: None,
            nonce: None,
            pending: vec![],
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        match &self.conn {
            Conn::Udp(s, _) => s.local_addr().unwrap(),
            Conn::Tcp(s, _) => s.local_addr().unwrap(),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.conn {
            Conn::Udp(s, to) => {
                s.send_to(bytes, *to).await.unwrap();
            }
            Conn::Tcp(s, _) => s.write_all(bytes).await.unwrap(),
        }
    }

    /// The next packet from the server, or `None` after `wait`.
    pub async fn recv_raw(&mut self, wait: Duration) -> Option<Vec<u8>> {
        match &mut self.conn {
            Conn::Udp(s, _) => {
                let mut buf = vec![0u8; 65536];
                let (n, _) = tokio::time::timeout(wait, s.recv_from(&mut buf)).await.ok()?.ok()?;
                buf.truncate(n);
                Some(buf)
            }
            Conn::Tcp(s, buf) => loop {
                if let Some(Ok(len)) = stun::frame_len(buf) {
                    if buf.len() >= len {
                        return Some(buf.drain(..len).collect());
                    }
                }
                let mut chunk = vec![0u8; 65536];
                let n = tokio::time::timeout(wait, s.read(&mut chunk)).await.ok()?.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            },
        }
    }

    fn key(&self) -> [u8; 16] {
        pushbox::turn::auth::long_term_key(&self.username, self.realm.as_deref().unwrap_or(""), &self.password)
    }

    /// Send one request with `attrs` and wait for its answer (no retry).
    pub async fn request_once(&mut self, m: u16, attrs: &dyn Fn(&mut Builder), authed: bool) -> Answer {
        let tid: [u8; 12] = rand::random();
        let mut b = Builder::new(m, Class::Request, tid);
        attrs(&mut b);
        let key = self.key();
        if authed && self.nonce.is_some() {
            b.attr(attr::USERNAME, self.username.clone().as_bytes());
            b.attr(attr::REALM, self.realm.clone().unwrap_or_default().as_bytes());
            b.attr(attr::NONCE, self.nonce.clone().unwrap_or_default().as_bytes());
        }
        let bytes = b.finish(
            (authed && self.nonce.is_some()).then_some((&key[..], Integrity::Sha1)),
            true,
        );
        self.send_raw(&bytes).await;
        loop {
            let p = self.recv_raw(PATIENCE).await.expect("an answer in time");
            match stun::header(&p) {
                Some((_, Class::Success | Class::Error, t)) if t == tid => return Answer(p),
                _ => self.pending.push(p),
            }
        }
    }

    /// A request with long-term credentials: learns realm and nonce from a
    /// 401 or 438 and tries again (twice at most).
    pub async fn request(&mut self, m: u16, attrs: &dyn Fn(&mut Builder)) -> Answer {
        let mut last = None;
        for _ in 0..3 {
            let a = self.request_once(m, attrs, true).await;
            match a.code() {
                Some(401 | 438) => {
                    let msg = a.msg();
                    let (realm, nonce) = (msg.text(attr::REALM), msg.text(attr::NONCE));
                    if realm.is_none() || nonce.is_none() || (a.code() == Some(401) && self.nonce.is_some()) {
                        // A 401 after credentials were sent: they are wrong.
                        return a;
                    }
                    self.realm = realm.map(str::to_string);
                    self.nonce = nonce.map(str::to_string);
                    last = Some(a);
                }
                _ => {
                    if a.class() == Class::Success {
                        let m = a.msg();
                        assert!(m.verify(&self.key()), "answers carry MESSAGE-INTEGRITY with our key");
                    }
                    return a;
                }
            }
        }
        last.unwrap()
    }

    /// Allocate a UDP relay; the relayed address, or the error code.
    pub async fn allocate(&mut self) -> Result<SocketAddr, u16> {
        let a = self
            .request(method::ALLOCATE, &|b| {
                b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            })
            .await;
        match a.code() {
            Some(c) => Err(c),
            None => Ok(a.address(attr::XOR_RELAYED_ADDRESS).expect("XOR-RELAYED-ADDRESS")),
        }
    }

    pub async fn create_permission(&mut self, peer: SocketAddr) -> Result<(), u16> {
        let a = self
            .request(method::CREATE_PERMISSION, &|b| {
                b.xor_address(attr::XOR_PEER_ADDRESS, peer);
            })
            .await;
        a.code().map_or(Ok(()), Err)
    }

    pub async fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<(), u16> {
        let a = self
            .request(method::CHANNEL_BIND, &|b| {
                b.attr(attr::CHANNEL_NUMBER, &[(channel >> 8) as u8, channel as u8, 0, 0]);
                b.xor_address(attr::XOR_PEER_ADDRESS, peer);
            })
            .await;
        a.code().map_or(Ok(()), Err)
    }

    pub async fn refresh(&mut self, lifetime: u32) -> Result<u32, u16> {
        let a = self
            .request(method::REFRESH, &|b| {
                b.u32(attr::LIFETIME, lifetime);
            })
            .await;
        match a.code() {
            Some(c) => Err(c),
            None => Ok(a.msg().u32(attr::LIFETIME).unwrap()),
        }
    }

    /// A Send indication to `peer`.
    pub async fn send_to_peer(&mut self, peer: SocketAddr, data: &[u8]) {
        let mut b = Builder::new(method::SEND, Class::Indication, rand::random());
        b.xor_address(attr::XOR_PEER_ADDRESS, peer).attr(attr::DATA, data);
        let bytes = b.finish(None, false);
        self.send_raw(&bytes).await;
    }

    /// ChannelData on `channel` (padded on TCP).
    pub async fn send_on_channel(&mut self, channel: u16, data: &[u8]) {
        let mut out = vec![];
        stun::channel_data(channel, data, matches!(self.conn, Conn::Tcp(..)), &mut out);
        self.send_raw(&out).await;
    }

    /// The next datagram relayed from a peer, or `None` after `wait`.
    pub async fn recv_from_peer(&mut self, wait: Duration) -> Option<Incoming> {
        loop {
            let p = if self.pending.is_empty() {
                self.recv_raw(wait).await?
            } else {
                self.pending.remove(0)
            };
            if let Some((ch, d)) = stun::parse_channel_data(&p) {
                return Some(Incoming::Channel(ch, d.to_vec()));
            }
            let Ok(m) = Message::parse(&p) else { continue };
            if m.method == method::DATA && m.class == Class::Indication {
                let peer = m.xor_address(m.get(attr::XOR_PEER_ADDRESS)?)?;
                return Some(Incoming::Data(peer, m.get(attr::DATA)?.to_vec()));
            }
        }
    }
}

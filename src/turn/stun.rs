//! STUN messages (RFC 8489) and TURN ChannelData (RFC 8656 §12.4) on the
//! wire: a zero-copy reader that checks the framing, FINGERPRINT and
//! MESSAGE-INTEGRITY, and a writer for the answers. Knows no sockets and no
//! allocations.

use hmac::{digest::KeyInit, Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Methods (RFC 8489 §18.2, RFC 8656 §17).
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types (RFC 8489 §18.3, RFC 8656 §18).
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;

    /// Comprehension-required attributes (0x0000-0x7FFF) this server reads.
    /// Any other one in a request is answered with 420 (RFC 8489 §6.3.1).
    pub const UNDERSTOOD: &[u16] = &[
        MAPPED_ADDRESS,
        USERNAME,
        MESSAGE_INTEGRITY,
        ERROR_CODE,
        UNKNOWN_ATTRIBUTES,
        CHANNEL_NUMBER,
        LIFETIME,
        XOR_PEER_ADDRESS,
        DATA,
        REALM,
        NONCE,
        XOR_RELAYED_ADDRESS,
        REQUESTED_ADDRESS_FAMILY,
        EVEN_PORT,
        REQUESTED_TRANSPORT,
        MESSAGE_INTEGRITY_SHA256,
        RESERVATION_TOKEN,
        XOR_MAPPED_ADDRESS,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }
}

/// The 16-bit message type from method and class (RFC 8489 §5: the class
/// bits sit at positions 4 and 8, between the method bits).
pub fn message_type(method: u16, class: Class) -> u16 {
    let c = class.bits();
    (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

fn split_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let class = match ((t >> 4) & 1) | ((t >> 7) & 2) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

/// What the first bytes of a packet say it is. STUN messages start with
/// two zero bits; ChannelData with a channel number 0x4000-0x7FFF. RFC 8656
/// narrowed channels to 0x4000-0x4FFF, but RFC 5766 clients (coturn's own
/// among them) still pick from the old range, so it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stun,
    ChannelData,
    Other,
}

pub fn kind(first: u8) -> Kind {
    match first >> 6 {
        0 => Kind::Stun,
        1 => Kind::ChannelData,
        _ => Kind::Other,
    }
}

/// On a stream: the length of the frame that starts `buf`, once its first
/// four bytes are there (ChannelData is padded to four bytes over TCP).
pub fn frame_len(buf: &[u8]) -> Option<Result<usize, ()>> {
    if buf.len() < 4 {
        return None;
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    Some(match kind(buf[0]) {
        Kind::Stun => Ok(HEADER_LEN + len),
        Kind::ChannelData => Ok(4 + len.div_ceil(4) * 4),
        Kind::Other => Err(()),
    })
}

/// Method, class and transaction of a packet whose header is STUN's.
pub fn header(buf: &[u8]) -> Option<(u16, Class, [u8; 12])> {
    if buf.len() < HEADER_LEN || kind(buf[0]) != Kind::Stun || buf[4..8] != MAGIC_COOKIE.to_be_bytes() {
        return None;
    }
    let (m, c) = split_type(u16::from_be_bytes([buf[0], buf[1]]));
    Some((m, c, buf[8..20].try_into().ok()?))
}

/// A ChannelData message: the channel and its application data.
pub fn parse_channel_data(buf: &[u8]) -> Option<(u16, &[u8])> {
    if buf.len() < 4 || kind(buf[0]) != Kind::ChannelData {
        return None;
    }
    let channel = u16::from_be_bytes([buf[0], buf[1]]);
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    // Padding after the data is allowed (and required over TCP).
    buf.get(4..4 + len).map(|d| (channel, d))
}

/// Write a ChannelData message into `out`; `pad` for stream transports.
pub fn channel_data(channel: u16, data: &[u8], pad: bool, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    if pad {
        out.resize(out.len().div_ceil(4) * 4, 0);
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Attr<'a> {
    pub typ: u16,
    pub value: &'a [u8],
    /// Where the attribute's header starts in the message.
    offset: usize,
}

/// A parsed STUN message, borrowing the packet.
#[derive(Debug)]
pub struct Message<'a> {
    pub method: u16,
    pub class: Class,
    pub tid: [u8; 12],
    raw: &'a [u8],
    attrs: Vec<Attr<'a>>,
    /// Whether the sender added a FINGERPRINT (then answers carry one too).
    pub fingerprint: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not a STUN message at all (wrong cookie, bad length, bad FINGERPRINT): drop it.
    NotStun,
    /// A STUN message whose attributes are malformed: answer 400 if a request.
    BadAttributes,
}

/// Integrity algorithms a request can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    Sha1,
    Sha256,
}

impl<'a> Message<'a> {
    /// Parse one whole message; `buf` must be exactly the message.
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, ParseError> {
        if buf.len() < HEADER_LEN || kind(buf[0]) != Kind::Stun {
            return Err(ParseError::NotStun);
        }
        let t = u16::from_be_bytes([buf[0], buf[1]]);
        let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        let cookie = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        // RFC 3489 messages (no cookie) are not supported; neither is a length
        // that is not the rest of the packet.
        if cookie != MAGIC_COOKIE || !len.is_multiple_of(4) || HEADER_LEN + len != buf.len() {
            return Err(ParseError::NotStun);
        }
        let (method, class) = split_type(t);
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&buf[8..20]);
        let mut attrs = Vec::with_capacity(8);
        let mut at = HEADER_LEN;
        let mut fingerprint = false;
        let mut integrity_seen = false;
        while at < buf.len() {
            if at + 4 > buf.len() {
                return Err(ParseError::BadAttributes);
            }
            let typ = u16::from_be_bytes([buf[at], buf[at + 1]]);
            let alen = u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize;
            let end = at + 4 + alen;
            let padded = at + 4 + alen.div_ceil(4) * 4;
            if padded > buf.len() {
                return Err(ParseError::BadAttributes);
            }
            if typ == attr::FINGERPRINT {
                // Must be last, and must match; a wrong one means "not STUN".
                if padded != buf.len() || alen != 4 {
                    return Err(ParseError::NotStun);
                }
                let got = u32::from_be_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
                if got != fingerprint_of(buf, at) {
                    return Err(ParseError::NotStun);
                }
                fingerprint = true;
            } else if !integrity_seen || typ == attr::MESSAGE_INTEGRITY_SHA256 {
                // Attributes after MESSAGE-INTEGRITY other than the SHA-256
                // variant and FINGERPRINT are ignored (RFC 8489 §14.5).
                attrs.push(Attr {
                    typ,
                    value: &buf[at + 4..end],
                    offset: at,
                });
            }
            if typ == attr::MESSAGE_INTEGRITY || typ == attr::MESSAGE_INTEGRITY_SHA256 {
                integrity_seen = true;
            }
            at = padded;
        }
        Ok(Message {
            method,
            class,
            tid,
            raw: buf,
            attrs,
            fingerprint,
        })
    }

    pub fn get(&self, typ: u16) -> Option<&'a [u8]> {
        self.attrs.iter().find(|a| a.typ == typ).map(|a| a.value)
    }

    pub fn all(&self, typ: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.attrs.iter().filter(move |a| a.typ == typ).map(|a| a.value)
    }

    pub fn has(&self, typ: u16) -> bool {
        self.attrs.iter().any(|a| a.typ == typ)
    }

    /// Comprehension-required attributes this server does not know.
    pub fn unknown_required(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .attrs
            .iter()
            .map(|a| a.typ)
            .filter(|t| *t < 0x8000 && !attr::UNDERSTOOD.contains(t))
            .collect();
        v.dedup();
        v
    }

    pub fn text(&self, typ: u16) -> Option<&'a str> {
        self.get(typ).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn u32(&self, typ: u16) -> Option<u32> {
        self.get(typ)
            .and_then(|v| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?)))
    }

    /// Decode an XOR-…-ADDRESS value; `None` if malformed.
    pub fn xor_address(&self, value: &[u8]) -> Option<SocketAddr> {
        decode_xor_address(value, &self.tid)
    }

    /// The integrity attribute the sender used (the strongest present).
    pub fn integrity(&self) -> Option<Integrity> {
        if self.has(attr::MESSAGE_INTEGRITY_SHA256) {
            Some(Integrity::Sha256)
        } else if self.has(attr::MESSAGE_INTEGRITY) {
            Some(Integrity::Sha1)
        } else {
            None
        }
    }

    /// Check MESSAGE-INTEGRITY(-SHA256) with `key`, in constant time.
    pub fn verify(&self, key: &[u8]) -> bool {
        let (typ, int) = match self.integrity() {
            Some(Integrity::Sha256) => (attr::MESSAGE_INTEGRITY_SHA256, Integrity::Sha256),
            Some(Integrity::Sha1) => (attr::MESSAGE_INTEGRITY, Integrity::Sha1),
            None => return false,
        };
        let Some(a) = self.attrs.iter().find(|a| a.typ == typ) else {
            return false;
        };
        let covered = &self.raw[..a.offset];
        let length = (a.offset + 4 + a.value.len() - HEADER_LEN) as u16;
        match int {
            Integrity::Sha1 => {
                if a.value.len() != 20 {
                    return false;
                }
                let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key).expect("any key length");
                feed(&mut mac, covered, length);
                mac.verify_slice(a.value).is_ok()
            }
            Integrity::Sha256 => {
                // RFC 8489 §14.6: 16 to 32 bytes, a multiple of four.
                if a.value.len() < 16 || a.value.len() % 4 != 0 {
                    return false;
                }
                let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
                feed(&mut mac, covered, length);
                mac.verify_truncated_left(a.value).is_ok()
            }
        }
    }
}

/// Feed the header with its length field replaced, then the rest.
fn feed<M: Mac>(mac: &mut M, covered: &[u8], length: u16) {
    mac.update(&covered[..2]);
    mac.update(&length.to_be_bytes());
    mac.update(&covered[4..]);
}

/// CRC-32 of the message up to the FINGERPRINT attribute at `at`, with the
/// length field counting the FINGERPRINT, XORed with "STUN".
fn fingerprint_of(buf: &[u8], at: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[..2]);
    h.update(&((at + 8 - HEADER_LEN) as u16).to_be_bytes());
    h.update(&buf[4..at]);
    h.finalize() ^ FINGERPRINT_XOR
}

pub fn decode_xor_address(v: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let c = MAGIC_COOKIE.to_be_bytes();
    match v[1] {
        0x01 if v.len() == 8 => {
            let ip = Ipv4Addr::new(v[4] ^ c[0], v[5] ^ c[1], v[6] ^ c[2], v[7] ^ c[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        0x02 if v.len() == 20 => {
            let mut o = [0u8; 16];
            for (i, b) in o.iter_mut().enumerate() {
                let k = if i < 4 { c[i] } else { tid[i - 4] };
                *b = v[4 + i] ^ k;
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        _ => None,
    }
}

/// The XOR-…-ADDRESS value of `a` in `out`; returns its length (8 or 20).
fn encode_xor_address(a: SocketAddr, tid: &[u8; 12], out: &mut [u8; 20]) -> usize {
    // The address is XORed with the cookie and then the transaction id.
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    key[4..].copy_from_slice(tid);
    out[0] = 0;
    out[1] = if a.is_ipv4() { 0x01 } else { 0x02 };
    out[2..4].copy_from_slice(&(a.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
    let octets = match a.ip() {
        IpAddr::V4(ip) => &ip.octets()[..],
        IpAddr::V6(ip) => &ip.octets()[..],
    };
    for (i, b) in octets.iter().enumerate() {
        out[4 + i] = b ^ key[i];
    }
    4 + octets.len()
}

/// Writes one STUN message.
pub struct Builder {
    buf: Vec<u8>,
    tid: [u8; 12],
}

impl Builder {
    pub fn new(method: u16, class: Class, tid: [u8; 12]) -> Builder {
        Builder::reuse(Vec::with_capacity(128), method, class, tid)
    }

    /// Start writing into `buf` (reused between packets on the relay path).
    pub fn reuse(mut buf: Vec<u8>, method: u16, class: Class, tid: [u8; 12]) -> Builder {
        buf.clear();
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid);
        Builder { buf, tid }
    }

    pub fn attr(&mut self, typ: u16, value: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf.extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(self.buf.len().div_ceil(4) * 4, 0);
        self
    }

    pub fn u32(&mut self, typ: u16, v: u32) -> &mut Self {
        self.attr(typ, &v.to_be_bytes())
    }

    pub fn xor_address(&mut self, typ: u16, a: SocketAddr) -> &mut Self {
        // On the stack: Data indications carry one for every relayed datagram.
        let mut v = [0u8; 20];
        let n = encode_xor_address(a, &self.tid, &mut v);
        self.attr(typ, &v[..n])
    }

    /// ERROR-CODE with the RFC's reason phrase.
    pub fn error(&mut self, code: u16) -> &mut Self {
        let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason(code).as_bytes());
        self.attr(attr::ERROR_CODE, &v)
    }

    fn set_len(&mut self, extra: usize) {
        let len = (self.buf.len() + extra - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    /// Finish: MESSAGE-INTEGRITY(-SHA256) with `key` if given, then a
    /// FINGERPRINT if asked for.
    pub fn finish(mut self, key: Option<(&[u8], Integrity)>, fingerprint: bool) -> Vec<u8> {
        match key {
            Some((key, Integrity::Sha1)) => {
                self.set_len(24);
                let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key).expect("any key length");
                mac.update(&self.buf);
                let tag = mac.finalize().into_bytes();
                self.attr(attr::MESSAGE_INTEGRITY, &tag);
            }
            Some((key, Integrity::Sha256)) => {
                self.set_len(36);
                let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
                mac.update(&self.buf);
                let tag = mac.finalize().into_bytes();
                self.attr(attr::MESSAGE_INTEGRITY_SHA256, &tag);
            }
            None => {}
        }
        if fingerprint {
            let at = self.buf.len();
            self.set_len(8);
            let crc = fingerprint_of(&self.buf, at);
            self.attr(attr::FINGERPRINT, &crc.to_be_bytes());
        }
        self.set_len(0);
        self.buf
    }
}

/// Reason phrases of the error codes this server sends.
pub fn reason(code: u16) -> &'static str {
    match code {
        300 => "Try Alternate",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        500 => "Server Error",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5769 §2.1: sample request, short-term credentials, with
    /// SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME, MESSAGE-INTEGRITY and FINGERPRINT.
    const RFC5769_REQUEST: &[u8] = &[
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87,
        0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c,
        0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f,
        0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76,
        0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
    ];

    /// RFC 5769 §2.2: sample IPv4 response.
    const RFC5769_IPV4_RESPONSE: &[u8] = &[
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87,
        0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20,
        0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91,
        0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7,
        0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    /// RFC 5769 §2.3: sample IPv6 response.
    const RFC5769_IPV6_RESPONSE: &[u8] = &[
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87,
        0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20,
        0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
        0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9, 0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1,
        0x17, 0x84, 0xc9, 0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];

    const PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

    #[test]
    fn rfc5769_request_parses_and_verifies() {
        let m = Message::parse(RFC5769_REQUEST).unwrap();
        assert_eq!((m.method, m.class), (method::BINDING, Class::Request));
        assert!(m.fingerprint);
        assert_eq!(m.text(attr::USERNAME), Some("evtj:h6vY"));
        assert!(m.verify(PASSWORD));
        assert!(!m.verify(b"wrong"));
        // PRIORITY (0x0024) is comprehension-required and unknown here.
        assert_eq!(m.unknown_required(), vec![0x0024]);
    }

    #[test]
    fn rfc5769_response_reads_the_mapped_address() {
        let m = Message::parse(RFC5769_IPV4_RESPONSE).unwrap();
        assert_eq!(m.class, Class::Success);
        assert!(m.verify(PASSWORD));
        let a = m.xor_address(m.get(attr::XOR_MAPPED_ADDRESS).unwrap()).unwrap();
        assert_eq!(a, "192.0.2.1:32853".parse().unwrap());
    }

    #[test]
    fn builder_reproduces_the_rfc5769_responses() {
        for (vector, mapped) in [
            (RFC5769_IPV4_RESPONSE, "192.0.2.1:32853"),
            (RFC5769_IPV6_RESPONSE, "[2001:db8:1234:5678:11:2233:4455:6677]:32853"),
        ] {
            let m = Message::parse(vector).unwrap();
            let mut b = Builder::new(method::BINDING, Class::Success, m.tid);
            b.attr(attr::SOFTWARE, b"test vector");
            // The vectors pad SOFTWARE with a space where we pad with zero.
            *b.buf.last_mut().unwrap() = b' ';
            b.xor_address(attr::XOR_MAPPED_ADDRESS, mapped.parse().unwrap());
            let out = b.finish(Some((PASSWORD, Integrity::Sha1)), true);
            assert_eq!(out, vector, "{mapped}");
        }
    }

    #[test]
    fn corrupt_fingerprint_or_length_is_not_stun() {
        let mut bad = RFC5769_REQUEST.to_vec();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::NotStun);
        assert_eq!(Message::parse(&RFC5769_REQUEST[..60]).unwrap_err(), ParseError::NotStun);
        let mut trunc = RFC5769_REQUEST[..24].to_vec();
        trunc[3] = 4;
        trunc[20..24].copy_from_slice(&[0x00, 0x06, 0x00, 0x09]);
        assert_eq!(Message::parse(&trunc).unwrap_err(), ParseError::BadAttributes);
    }

    #[test]
    fn xor_addresses_round_trip_v4_and_v6() {
        let tid = [7u8; 12];
        for a in ["203.0.113.9:50000", "[2001:db8::1]:3478"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut v = [0u8; 20];
            let n = encode_xor_address(a, &tid, &mut v);
            assert_eq!(decode_xor_address(&v[..n], &tid), Some(a));
        }
    }

    #[test]
    fn sha256_integrity_round_trips() {
        let mut b = Builder::new(method::REFRESH, Class::Request, [1; 12]);
        b.u32(attr::LIFETIME, 600);
        let out = b.finish(Some((b"k", Integrity::Sha256)), false);
        let m = Message::parse(&out).unwrap();
        assert_eq!(m.integrity(), Some(Integrity::Sha256));
        assert!(m.verify(b"k"));
        assert!(!m.verify(b"x"));
        assert_eq!(m.u32(attr::LIFETIME), Some(600));
    }

    #[test]
    fn framing_on_streams() {
        assert_eq!(frame_len(&[0x00, 0x01, 0x00, 0x08]), Some(Ok(28)));
        assert_eq!(frame_len(&[0x40, 0x00, 0x00, 0x05]), Some(Ok(12)));
        assert_eq!(frame_len(&[0x7f, 0x00, 0x00, 0x05]), Some(Ok(12)));
        assert_eq!(frame_len(&[0x80, 0x00, 0x00, 0x05]), Some(Err(())));
        assert_eq!(frame_len(&[0x00, 0x01]), None);
        let mut out = vec![];
        channel_data(0x4001, b"hello", true, &mut out);
        assert_eq!(out.len(), 12);
        assert_eq!(parse_channel_data(&out), Some((0x4001, &b"hello"[..])));
    }
}

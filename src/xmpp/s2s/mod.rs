//! Server-to-server federation (RFC 6120 over `jabber:server`): the
//! outgoing stream registry the router hands remote stanzas to, Server
//! Dialback keys (XEP-0220 / XEP-0185), and the namespace edge.
//!
//! Invariant: inside the server every stanza is in `jabber:client`; streams
//! to and from other servers carry `jabber:server`. [`to_server_ns`] and
//! [`to_client_ns`] are the only places that convert, at the s2s edge.
//!
//! - [`incoming`]: the `listen.s2s` / `listen.s2s_direct_tls` side: TLS,
//!   dialback (answering `db:result` by verifying, `db:verify` from our key),
//!   and the per-stream check that every stanza comes from a domain
//!   authenticated on that stream.
//! - [`outgoing`]: one stream per (local domain, remote domain), queued
//!   while it connects, bounced on failure, closed when idle.
//! - [`resolve`]: `[federation.hosts]`, then SRV, then A/AAAA on 5269.
//! - [`tls`]: the client side of TLS towards peers and certificate checks.

pub mod incoming;
pub mod outgoing;
pub mod resolve;
pub mod tls;

use super::{
    router,
    stanza::{self, Condition, StanzaError},
    xml::{ParserLimits, NS_CLIENT, NS_SERVER},
};
use crate::xmpp::Server;
use hmac::{digest::KeyInit, Hmac, Mac};
use minidom::{Element, Node};
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use subtle::ConstantTimeEq;

/// Namespace of dialback elements (`db:result`, `db:verify`).
pub const NS_DIALBACK: &str = "jabber:server:dialback";
/// Stream feature announcing dialback support (XEP-0220 §2.4).
pub const NS_DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";

/// The federation state shared by every s2s task.
pub struct S2s {
    /// XEP-0185: dialback keys are HMACs keyed with a per-process secret.
    secret: [u8; 32],
    /// Outgoing streams by (local domain, remote domain).
    // std Mutex: held for map operations only, never across an await.
    outgoing: Mutex<HashMap<(String, String), outgoing::Handle>>,
    /// Incoming authenticated streams per remote domain (for the limit).
    incoming: Mutex<HashMap<String, u32>>,
    resolver: resolve::Resolver,
    tls: tls::Client,
}

impl S2s {
    pub fn new(config: &crate::config::Config) -> anyhow::Result<S2s> {
        Ok(S2s {
            secret: rand::random(),
            outgoing: Mutex::new(HashMap::new()),
            incoming: Mutex::new(HashMap::new()),
            resolver: resolve::Resolver::new(&config.federation)?,
            tls: tls::Client::new(config)?,
        })
    }

    /// XEP-0185 dialback key: hex HMAC-SHA256 keyed with SHA-256 of the
    /// secret, over "receiving originating stream-id".
    pub fn dialback_key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        let key = Sha256::digest(self.secret);
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("any key length");
        m.update(format!("{receiving} {originating} {stream_id}").as_bytes());
        m.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `key` is the key we would have generated (constant time).
    pub fn check_key(&self, receiving: &str, originating: &str, stream_id: &str, key: &str) -> bool {
        let want = self.dialback_key(receiving, originating, stream_id);
        want.as_bytes().ct_eq(key.trim().as_bytes()).into()
    }

    /// Count an incoming stream authenticated for `domain`; false when the
    /// domain already holds `max` streams.
    fn enter(&self, domain: &str, max: u32) -> bool {
        let mut m = self.incoming.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(domain.to_ascii_lowercase()).or_default();
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, domain: &str) {
        let mut m = self.incoming.lock().unwrap_or_else(|p| p.into_inner());
        let d = domain.to_ascii_lowercase();
        if let Some(n) = m.get_mut(&d) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&d);
            }
        }
    }

    /// Number of outgoing streams (connected or connecting).
    pub fn outgoing_count(&self) -> usize {
        self.outgoing.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Parser limits for server streams.
pub fn limits(server: &Server) -> ParserLimits {
    let l = &server.config.limits;
    ParserLimits {
        max_stanza_size: server.config.federation.max_stanza_size,
        max_depth: l.max_depth,
        max_attributes: l.max_attributes,
        max_token_size: crate::xmpp::xml::MAX_TOKEN_SIZE,
    }
}

/// Hand a stanza addressed to a remote domain to its outgoing stream (the
/// router's only hook into federation). Bounces at once when federation is
/// off or the domain is one of our own names.
pub async fn send(server: &Arc<Server>, stanza: Element) {
    let Some(to) = stanza::to(&stanza).ok().flatten() else {
        return;
    };
    let Some(from) = stanza::from(&stanza) else {
        return;
    };
    let remote = to.domain().as_str().to_ascii_lowercase();
    if !server.config.federation.enabled {
        let e = StanzaError::new(
            Condition::RemoteServerNotFound,
            "federation is not enabled on this server",
        );
        return router::reply(server, stanza::bounce(&stanza, e, server.domain())).await;
    }
    if server.certs.names().iter().any(|n| n.eq_ignore_ascii_case(&remote)) {
        // A service of ours that nothing serves yet: never loop back over s2s.
        return router::reply(
            server,
            stanza::bounce(&stanza, Condition::ServiceUnavailable, server.domain()),
        )
        .await;
    }
    let local = from.domain().as_str().to_ascii_lowercase();
    outgoing::enqueue(server, local, remote, stanza);
}

/// Bounce a stanza that could not be delivered to a remote server.
pub(crate) async fn bounce(server: &Arc<Server>, stanza: &Element, condition: Condition, why: &str) {
    let e = StanzaError::new(condition, why);
    router::reply(server, stanza::bounce(stanza, e, server.domain())).await
}

/// Copy `el` with every element in namespace `from` moved to `to` (also
/// the component edge, [`crate::xmpp::component`]).
pub(crate) fn rename_ns(el: &Element, from: &str, to: &str) -> Element {
    let ns = el.ns();
    let mut out = Element::bare(el.name(), if ns == from { to.to_string() } else { ns });
    *out.attrs_mut() = el.attrs().clone();
    for n in el.nodes() {
        match n {
            Node::Element(c) => out.append_node(Node::Element(rename_ns(c, from, to))),
            Node::Text(t) => out.append_node(Node::Text(t.clone())),
        }
    }
    out
}

/// A stanza as it goes on a server stream (`jabber:server`).
pub fn to_server_ns(el: &Element) -> Element {
    rename_ns(el, NS_CLIENT, NS_SERVER)
}

/// A stanza from a server stream as the rest of the server sees it (`jabber:client`).
pub fn to_client_ns(el: &Element) -> Element {
    rename_ns(el, NS_SERVER, NS_CLIENT)
}

/// A dialback element (`result`, `verify`) written as `<db:NAME>`.
/// ejabberd (fast_xml) matches dialback elements by the literal name
/// `db:result` / `db:verify` and ignores `<result xmlns='jabber:server:dialback'>`,
/// which is the same element to a namespace-aware parser; so the prefix is
/// declared on the element and always used.
pub(crate) fn db(name: &str) -> Element {
    Element::builder(name, NS_DIALBACK)
        .prefix(Some("db".to_string()), NS_DIALBACK)
        .expect("a fresh element has no prefixes")
        .build()
}

/// Our header for a server stream, declaring the dialback prefix.
pub(crate) fn header(from: &str, to: Option<&str>, id: Option<&str>) -> String {
    use super::stream::escape;
    let to = to.map(|t| format!(" to='{}'", escape(t))).unwrap_or_default();
    let id = id.map(|i| format!(" id='{}'", escape(i))).unwrap_or_default();
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS_SERVER}' xmlns:db='{NS_DIALBACK}' \
         xmlns:stream='http://etherx.jabber.org/streams' from='{}'{to}{id} version='1.0' xml:lang='en'>",
        escape(from)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialback_elements_carry_the_db_prefix() {
        use crate::xmpp::xml::ElementExt;
        let el = db("result")
            .with("from", "a.example")
            .with("to", "b.example")
            .text_child("k3y");
        let xml = el.to_xml();
        assert!(xml.starts_with("<db:result "), "{xml}");
        assert!(xml.ends_with(">k3y</db:result>"), "{xml}");
        assert!(
            xml.contains("xmlns:db='jabber:server:dialback'") || xml.contains("xmlns:db=\"jabber:server:dialback\"")
        );
        // A namespace-aware reader sees the same element as before.
        let back: Element = xml.parse().unwrap();
        assert!(back.is("result", NS_DIALBACK));
    }
    use crate::xmpp::xml::ElementExt;

    #[test]
    fn namespace_edge_round_trips() {
        let m: Element = "<message xmlns='jabber:client' to='a@b' xml:lang='de'><body>hi</body>\
                          <x xmlns='urn:other'><y/></x></message>"
            .parse()
            .unwrap();
        let s = to_server_ns(&m);
        assert_eq!(s.ns(), NS_SERVER);
        assert_eq!(s.get_child("body", NS_SERVER).unwrap().text(), "hi");
        assert!(s
            .get_child("x", "urn:other")
            .unwrap()
            .get_child("y", "urn:other")
            .is_some());
        assert!(s.to_xml().contains("xml:lang"));
        assert_eq!(to_client_ns(&s), m);
    }

    #[test]
    fn dialback_keys_bind_every_part() {
        let c = crate::config::Config::from_toml_str("", None).unwrap();
        let s = S2s::new(&c).unwrap();
        let k = s.dialback_key("b.example", "a.example", "id1");
        assert_eq!(k.len(), 64);
        assert!(s.check_key("b.example", "a.example", "id1", &k));
        assert!(!s.check_key("b.example", "a.example", "id2", &k));
        assert!(!s.check_key("c.example", "a.example", "id1", &k));
        assert!(!s.check_key("b.example", "evil.example", "id1", &k));
        let other = S2s::new(&c).unwrap();
        assert!(!other.check_key("b.example", "a.example", "id1", &k));
    }
}

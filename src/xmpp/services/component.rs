//! An external component's domain (XEP-0114) as a service: stanzas the
//! router hands it go down the component's connection when one is
//! attached, and bounce with `service-unavailable` when none is. The
//! connection itself (handshake, reading, `from` checks) is
//! [`crate::xmpp::component`].

use super::Service;
use crate::xmpp::{
    modules::BoxFuture,
    router,
    stanza::{self, Condition, StanzaError},
    Server,
};
use minidom::Element;
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};
use tokio::sync::mpsc::UnboundedSender;

/// A connected component: its connection number and its task's channel.
struct Link {
    id: u64,
    tx: UnboundedSender<Element>,
}

/// One configured component domain.
pub struct Component {
    domain: String,
    secret: String,
    // std Mutex: map-like operations only, never held across an await.
    link: Mutex<Option<Link>>,
    next_id: AtomicU64,
}

impl Component {
    pub fn new(domain: &str, secret: &str) -> Component {
        Component {
            domain: domain.to_ascii_lowercase(),
            secret: secret.to_string(),
            link: Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The shared secret, for the handshake check only.
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// Attach a freshly authenticated connection; `None` when another
    /// connection of this component is still attached (XEP-0114 allows one).
    pub fn attach(&self, tx: UnboundedSender<Element>) -> Option<u64> {
        let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        if link.as_ref().is_some_and(|l| !l.tx.is_closed()) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        *link = Some(Link { id, tx });
        Some(id)
    }

    /// Detach connection `id` (a newer one stays).
    pub fn detach(&self, id: u64) {
        let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        if link.as_ref().is_some_and(|l| l.id == id) {
            *link = None;
        }
    }

    /// Whether a connection is attached.
    pub fn connected(&self) -> bool {
        let link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        link.as_ref().is_some_and(|l| !l.tx.is_closed())
    }

    /// Hand a stanza to the connection; gives it back when none is attached.
    fn send(&self, stanza: Element) -> Result<(), Element> {
        let link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        match link.as_ref() {
            Some(l) => l.tx.send(stanza).map_err(|e| e.0),
            None => Err(stanza),
        }
    }
}

impl Service for Component {
    fn name(&self) -> &'static str {
        "component"
    }
    fn handle<'a>(&'a self, server: &'a Arc<Server>, stanza: Element) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(stanza) = self.send(stanza) {
                if stanza.name() == "presence" {
                    return; // presence to an absent component goes nowhere
                }
                let e = StanzaError::new(
                    Condition::ServiceUnavailable,
                    format!("the component {} is not connected", self.domain),
                );
                router::reply(server, stanza::bounce(&stanza, e, server.domain())).await;
            }
        })
    }
}

//! The shared state of a running daemon: a cheap-clone handle that every
//! connection task holds.

use crate::{
    certs::CertStore, config::Config, net::Limiter, store::Store, xmpp::modules::Modules, xmpp::sessions::Sessions,
};
use std::sync::Arc;
use tokio::sync::watch;

pub struct Server {
    pub config: Arc<Config>,
    pub store: Store,
    pub certs: Arc<CertStore>,
    pub sessions: Sessions,
    pub modules: Modules,
    /// Answers to IQs the server sent itself.
    pub iq_tracker: crate::xmpp::iq_tracker::IqTracker,
    /// XEP-0357 event counts per sleeping account.
    pub push_state: crate::xmpp::modules::push::PushState,
    /// The XEP-0313 archive writer.
    pub archive: crate::xmpp::modules::mam::Archive,
    /// Federation: outgoing streams, dialback keys, resolver.
    pub s2s: crate::xmpp::s2s::S2s,
    pub limiter: Limiter,
    /// The push core: the relay API and the XEP-0357 app server submit through it.
    pub relay: crate::push::Relay,
    /// Keys the fake SCRAM salts of unknown users, so probes cannot tell
    /// unknown users from wrong passwords.
    pub fake_salt_secret: [u8; 32],
    /// Becomes `true` when the daemon shuts down.
    pub shutdown: watch::Receiver<bool>,
    pub started: std::time::Instant,
}

impl Server {
    pub fn domain(&self) -> &str {
        &self.config.domain
    }

    /// Whether `domain` is this server's domain.
    pub fn is_local(&self, domain: &str) -> bool {
        domain.eq_ignore_ascii_case(&self.config.domain)
    }

    /// Whether this daemon answers for `domain`: its own domain or one of
    /// the services it runs (`push.<domain>`, `upload.<domain>`).
    pub fn serves(&self, domain: &str) -> bool {
        self.is_local(domain) || crate::xmpp::services::for_domain(self, domain).is_some()
    }
}

pub type SharedServer = Arc<Server>;

/// Resolves once the daemon is shutting down (at once if it already is).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

//! The shared core of a running daemon: configuration, storage, the
//! certificate store, per-IP limits, the push relay and the stop signal.
//! HTTP, certificates and the metrics endpoint hold this handle; the XMPP
//! server wraps it (`xmpp::Server`) with its own state.

use crate::{certs::CertStore, config::Config, net::Limiter, push::Relay, shutdown::Shutdown, store::Store};
use std::sync::Arc;

pub struct Core {
    pub config: Arc<Config>,
    pub store: Store,
    pub certs: Arc<CertStore>,
    pub limiter: Limiter,
    /// The push core: the relay API and the XEP-0357 app server submit through it.
    pub relay: Relay,
    /// Becomes `true` when the daemon shuts down.
    pub shutdown: Shutdown,
}

impl Core {
    pub fn domain(&self) -> &str {
        &self.config.domain
    }

    /// Whether `domain` is this server's domain.
    pub fn is_local(&self, domain: &str) -> bool {
        domain.eq_ignore_ascii_case(&self.config.domain)
    }
}

//! The XMPP server's state: the shared [`Core`] plus what only XMPP needs
//! (who is online, the feature modules and services, IQs in flight,
//! federation). Every c2s and s2s task and every module holds an
//! `Arc<Server>`; code outside `xmpp/` sees only the core.

use super::{
    iq_tracker::IqTracker, modules::Modules, offline::InFlight, s2s::S2s, services::Services, sessions::Sessions,
};
use crate::core::Core;
use std::{ops::Deref, sync::Arc};

pub struct Server {
    pub core: Arc<Core>,
    pub sessions: Sessions,
    pub modules: Modules,
    pub services: Services,
    /// Answers to IQs the server sent itself.
    pub iq_tracker: IqTracker,
    /// Federation: outgoing streams, dialback keys, resolver.
    pub s2s: S2s,
    /// Offline messages handed to a session and not yet proven delivered.
    pub offline: InFlight,
    /// Keys the fake SCRAM salts of unknown users, so probes cannot tell
    /// unknown users from wrong passwords.
    pub fake_salt_secret: [u8; 32],
    /// The client listeners' TLS acceptors (STARTTLS, direct TLS), made
    /// once: `Acceptor::new` copies its configuration (see `c2s::acceptor`).
    pub c2s_acceptors: std::sync::OnceLock<[crate::net::tls::Acceptor; 2]>,
}

/// The XMPP server extends the core: `server.config`, `server.store` and
/// the rest of the core read as fields of the server.
impl Deref for Server {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Server {
    pub fn new(core: Arc<Core>) -> anyhow::Result<Server> {
        let config = &core.config;
        Ok(Server {
            s2s: S2s::new(config)?,
            modules: Modules::for_config(config),
            services: Services::for_config(config),
            sessions: Sessions::default(),
            iq_tracker: IqTracker::default(),
            offline: InFlight::default(),
            fake_salt_secret: rand::random(),
            c2s_acceptors: std::sync::OnceLock::new(),
            core,
        })
    }

    /// Whether this daemon answers for `domain`: its own domain or one of
    /// the services it runs (`push.<domain>`, `upload.<domain>`).
    pub fn serves(&self, domain: &str) -> bool {
        self.is_local(domain) || self.services.find(domain).is_some()
    }
}

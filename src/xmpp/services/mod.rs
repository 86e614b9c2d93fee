//! Services on subdomains of the server's domain: `push.<domain>` (the
//! relay's XMPP face, an XEP-0357 app server) and `upload.<domain>`
//! (XEP-0363). The router hands them every
//! stanza addressed to their domain.

pub mod app_server;
pub mod upload;

use crate::server::Server;
use minidom::Element;
use std::sync::Arc;

/// The services pushbox runs on subdomains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Push,
    Upload,
}

impl Service {
    pub fn prefix(self) -> &'static str {
        match self {
            Service::Push => "push",
            Service::Upload => "upload",
        }
    }
}

/// Which service, if any, `domain` names.
pub fn for_domain(server: &Server, domain: &str) -> Option<Service> {
    let (prefix, rest) = domain.split_once('.')?;
    if !server.is_local(rest) {
        return None;
    }
    match prefix.to_ascii_lowercase().as_str() {
        "push" if server.config.relay.enabled => Some(Service::Push),
        "upload" if server.config.upload.enabled => Some(Service::Upload),
        _ => None,
    }
}

/// Handle a stanza addressed to a service (its `from` is trusted).
pub async fn handle(server: &Arc<Server>, service: Service, stanza: Element) {
    match service {
        Service::Push => app_server::handle(server, stanza).await,
        Service::Upload => upload::handle(server, stanza).await,
    }
}

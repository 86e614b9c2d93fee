//! Services on their own domains, beside the server's: `push.<domain>` (the
//! relay's XMPP face, an XEP-0357 app server), `upload.<domain>` (XEP-0363),
//! `groups.<domain>` (XEP-0045 group chat) and each external component's
//! domain (XEP-0114). The router hands a service every stanza addressed to its
//! domain or to any JID on it. Adding one is a new file with a
//! [`Service`] implementation plus one line in [`Services::for_config`].

pub mod app_server;
pub mod component;
pub mod muc;
pub mod upload;

use super::{modules::BoxFuture, Server};
use crate::config::Config;
use minidom::Element;
use std::{any::Any, sync::Arc};

/// A service on a domain of its own.
pub trait Service: Any + Send + Sync + 'static {
    /// Its name in logs.
    fn name(&self) -> &'static str;
    /// Handle a stanza addressed to the service's domain (its `from` is
    /// trusted: authenticated by the stream it came on).
    fn handle<'a>(&'a self, server: &'a Arc<Server>, stanza: Element) -> BoxFuture<'a, ()>;
}

/// The services this daemon runs, by domain (lower case).
#[derive(Default)]
pub struct Services {
    list: Vec<(String, Arc<dyn Service>)>,
}

impl Services {
    /// The services `config` turns on.
    pub fn for_config(config: &Config) -> Services {
        let mut s = Services::default();
        if config.relay.enabled {
            s.add(format!("push.{}", config.domain), Arc::new(app_server::AppServer));
        }
        if let Some(domain) = config.muc_domain() {
            s.add(domain.clone(), Arc::new(muc::Muc::new(domain)));
        }
        if config.upload.enabled {
            s.add(format!("upload.{}", config.domain), Arc::new(upload::Upload));
        }
        for (domain, c) in &config.components {
            s.add(domain.clone(), Arc::new(component::Component::new(domain, c.secret())));
        }
        s
    }

    pub fn add(&mut self, domain: String, service: Arc<dyn Service>) {
        self.list.push((domain.to_ascii_lowercase(), service));
    }

    /// The service on `domain`, if any.
    pub fn find(&self, domain: &str) -> Option<&Arc<dyn Service>> {
        self.list
            .iter()
            .find(|(d, _)| d.eq_ignore_ascii_case(domain))
            .map(|(_, s)| s)
    }

    /// The service of type `T` on `domain`, if that is what runs there.
    pub fn get<T: Service>(&self, domain: &str) -> Option<&T> {
        let s = self.find(domain)?;
        (s.as_ref() as &dyn Any).downcast_ref::<T>()
    }

    /// Every service domain, in registration order (for disco#items).
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|(d, _)| d.as_str())
    }
}

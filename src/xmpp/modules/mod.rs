//! Feature modules: one file per XEP, each declaring its disco features,
//! stream features and the IQ payloads it answers. Adding one is a new file
//! plus one line in [`Modules::new`]; the router never changes.

pub mod blocking;
pub mod bookmarks;
pub mod caps;
pub mod carbons;
pub mod disco;
pub mod extdisco;
pub mod mam;
pub mod pep;
pub mod pep_subscribe;
pub mod ping;
pub mod private;
pub mod push;
pub mod push_direct;
pub mod push_tigase;
pub mod register;
pub mod roster;
pub mod vcard;
pub mod version;

use super::stanza::{Condition, StanzaError};
use crate::server::Server;
use jid::{BareJid, Jid};
use minidom::Element;
use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who an IQ is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The server's domain (or no `to`, for IQs that are not about an account).
    Server,
    /// The sender's own account (no `to`, or the sender's bare JID).
    OwnAccount,
    /// Any local account's bare JID (including the sender's own).
    Account,
}

/// An IQ payload a module answers.
#[derive(Debug, Clone, Copy)]
pub struct IqRoute {
    pub name: &'static str,
    pub ns: &'static str,
    pub target: Target,
}

/// Everything a handler needs about one request.
pub struct IqCtx<'a> {
    pub server: &'a Arc<Server>,
    /// The sender, authenticated by its stream.
    pub from: &'a Jid,
    /// The entity addressed (domain or an account's bare JID).
    pub to: &'a Jid,
    /// `get` or `set`.
    pub set: bool,
    /// The whole IQ, for handlers that need its attributes.
    pub iq: &'a Element,
    /// The payload child.
    pub payload: &'a Element,
}

impl IqCtx<'_> {
    /// The account addressed, when `to` is a local bare JID.
    pub fn account(&self) -> Option<BareJid> {
        self.to.node().map(|_| self.to.to_bare())
    }
}

/// What a handler answers: a result (with optional payload) or an error.
pub type IqReply = Result<Option<Element>, StanzaError>;

pub trait Module: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Features in disco#info of the domain.
    fn server_features(&self) -> &'static [&'static str] {
        &[]
    }
    /// Features in disco#info of an account's bare JID.
    fn account_features(&self) -> &'static [&'static str] {
        &[]
    }
    /// Stream features offered after authentication.
    fn stream_features(&self, _server: &Server) -> Vec<Element> {
        vec![]
    }
    fn iqs(&self) -> &'static [IqRoute] {
        &[]
    }
    fn handle_iq<'a>(&'a self, _ctx: IqCtx<'a>) -> BoxFuture<'a, IqReply> {
        Box::pin(async { Err(Condition::ServiceUnavailable.into()) })
    }
}

/// The registered modules and an index of their IQ routes.
pub struct Modules {
    list: Vec<Arc<dyn Module>>,
    routes: HashMap<(&'static str, &'static str), Vec<(Target, usize)>>,
    /// State of the PEP service (who is online with which caps).
    pub pep: pep::Pep,
    /// Blocklists loaded so far.
    pub blocking: blocking::Blocking,
}

impl Modules {
    /// The modules every server has, plus those `config` turns on.
    pub fn for_config(config: &crate::config::Config) -> Modules {
        let mut m = Self::new();
        if let Some(turn) = &config.turn {
            m.add(Arc::new(extdisco::ExtDisco { turn: turn.clone() }));
        }
        m
    }

    fn add(&mut self, module: Arc<dyn Module>) {
        let i = self.list.len();
        for r in module.iqs() {
            self.routes.entry((r.name, r.ns)).or_default().push((r.target, i));
        }
        self.list.push(module);
    }

    pub fn new() -> Modules {
        let list: Vec<Arc<dyn Module>> = vec![
            Arc::new(disco::Disco),
            Arc::new(ping::Ping),
            Arc::new(version::Version),
            Arc::new(roster::Roster),
            Arc::new(register::Register),
            Arc::new(carbons::Carbons),
            Arc::new(mam::Mam),
            Arc::new(push::Push),
            Arc::new(pep::PepModule),
            Arc::new(vcard::VcardModule),
            Arc::new(private::PrivateModule),
            Arc::new(blocking::BlockingModule),
        ];
        let mut routes: HashMap<_, Vec<_>> = HashMap::new();
        for (i, m) in list.iter().enumerate() {
            for r in m.iqs() {
                routes.entry((r.name, r.ns)).or_default().push((r.target, i));
            }
        }
        Modules {
            list,
            routes,
            pep: Default::default(),
            blocking: Default::default(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Module>> {
        self.list.iter()
    }

    /// The module answering `payload` sent to `target`.
    pub fn find(&self, payload: &Element, target: Target) -> Option<&Arc<dyn Module>> {
        let ns = payload.ns();
        let entries = self.routes.get(&(payload.name(), ns.as_str()))?;
        entries.iter().find(|(t, _)| *t == target).map(|(_, i)| &self.list[*i])
    }

    pub fn server_features(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self
            .list
            .iter()
            .flat_map(|m| m.server_features().iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    pub fn account_features(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self
            .list
            .iter()
            .flat_map(|m| m.account_features().iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

impl Default for Modules {
    fn default() -> Self {
        Self::new()
    }
}

//! Feature modules: one file per XEP. A module declares its disco features,
//! stream features and the IQ payloads it answers, and hooks the stanza
//! flow the way Prosody's modules do: the router, the session and presence
//! handling call every module that declared a [`Hook`], in registration
//! order, and name no module themselves. Adding a feature is a new file
//! plus one line in [`Modules::new`].

pub mod adhoc;
pub mod blocking;
pub mod bookmarks;
pub mod caps;
pub mod carbons;
pub mod disco;
pub mod extdisco;
pub mod invites;
pub mod mam;
pub mod pep;
pub mod ping;
pub mod private;
pub mod push;
pub mod push_direct;
pub mod push_tigase;
pub mod register;
pub mod roster;
pub mod vcard;
pub mod version;

use super::{
    sessions::SessionHandle,
    stanza::{Condition, Stanza, StanzaError},
    Server,
};
use crate::store;
use jid::{BareJid, Jid};
use minidom::Element;
use std::{any::Any, collections::HashMap, future::Future, pin::Pin, sync::Arc};

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

/// The points in the stanza flow a module can hook. A module lists the
/// hooks it implements in [`Module::hooks`]; only those are called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// [`Module::intercept`]: every stanza the router is about to route.
    Intercept,
    /// [`Module::message_in`]: a message for a local account, before delivery.
    MessageIn,
    /// [`Module::delivered`]: a message for a local account, after delivery.
    Delivered,
    /// [`Module::message_out`]: a message a local client sent, before routing.
    MessageOut,
    /// [`Module::presence`]: presence that reached a local account.
    Presence,
    /// [`Module::available`]: a session sent its initial presence.
    Available,
    /// [`Module::subscription_request`]: a subscription request waits for an account.
    SubscriptionRequest,
    /// [`Module::iq_response`]: an IQ result or error nobody waited for.
    IqResponse,
}

const HOOKS: usize = 8;

impl Hook {
    fn index(self) -> usize {
        self as usize
    }
}

pub trait Module: Any + Send + Sync + 'static {
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
    /// XEP-0050 commands this module offers on the domain (listed and
    /// dispatched by [`adhoc`]).
    fn commands(&self, _server: &Server) -> Vec<adhoc::Command> {
        vec![]
    }
    /// Run the command `node` (one of [`Module::commands`]) for a local
    /// user allowed to; answers the `<command/>` payload.
    fn run_command<'a>(&'a self, _ctx: IqCtx<'a>, _node: &'a str) -> BoxFuture<'a, IqReply> {
        Box::pin(async { Err(Condition::ItemNotFound.into()) })
    }
    /// Background work, started once when the daemon runs.
    fn start(&self, _server: &Arc<Server>) {}
    /// The hooks this module implements.
    fn hooks(&self) -> &'static [Hook] {
        &[]
    }
    /// A stanza (from `stanza.from` to `stanza.to`) is about to be routed.
    /// Returns true when the module consumed it (dropped, or answered with
    /// an error).
    fn intercept<'a>(&'a self, _server: &'a Arc<Server>, _stanza: &'a Stanza) -> BoxFuture<'a, bool> {
        Box::pin(async { false })
    }
    /// A message for the local account `to` is about to be delivered (or
    /// stored offline); the module may change its children (a stanza-id,
    /// say) through [`Stanza::el_mut`].
    fn message_in(&self, _server: &Arc<Server>, _to: &BareJid, _msg: &mut Stanza) {}
    /// A message for the local account `to` goes to `sessions` (none: it is
    /// stored offline).
    fn delivered(&self, _server: &Arc<Server>, _msg: &Stanza, _to: &BareJid, _sessions: &[Arc<SessionHandle>]) {}
    /// The local session `from` sent a message; the module may change its
    /// children before it is routed.
    fn message_out(&self, _server: &Arc<Server>, _from: &Arc<SessionHandle>, _msg: &mut Stanza) {}
    /// Presence from `from` reached the local account `owner` (a contact's,
    /// or one of the owner's own resources' broadcast).
    fn presence<'a>(
        &'a self,
        _server: &'a Arc<Server>,
        _p: &'a Element,
        _from: &'a Jid,
        _owner: &'a BareJid,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    /// A session sent its initial presence: the account is online.
    fn available(&self, _server: &Arc<Server>, _session: &Arc<SessionHandle>) {}
    /// A subscription request from `from` waits for `owner`'s answer and no
    /// client of `owner` is awake to see it.
    fn subscription_request(&self, _server: &Arc<Server>, _owner: &BareJid, _from: &BareJid) {}
    /// An IQ result or error addressed to the server or a bare JID that no
    /// waiting task claimed. Returns whether the module consumed it.
    fn iq_response<'a>(&'a self, _server: &'a Arc<Server>, _iq: &'a Element) -> BoxFuture<'a, bool> {
        Box::pin(async { false })
    }
}

/// The registered modules, an index of their IQ routes, and per hook the
/// modules that implement it.
pub struct Modules {
    list: Vec<Arc<dyn Module>>,
    routes: HashMap<(&'static str, &'static str), Vec<(Target, usize)>>,
    hooked: [Vec<Arc<dyn Module>>; HOOKS],
    /// Every module's stream features, serialised once (they depend only
    /// on the configuration; every login writes them).
    features_xml: std::sync::OnceLock<String>,
}

impl Modules {
    /// What every module adds to the features of an authenticated client
    /// stream ([`Module::stream_features`]), serialised, in module order.
    pub fn stream_features_xml(&self, server: &Server) -> &str {
        self.features_xml.get_or_init(|| {
            let mut out = String::new();
            for m in &self.list {
                for f in m.stream_features(server) {
                    out.push_str(&crate::xmpp::xml_write::to_string(&f));
                }
            }
            out
        })
    }

    /// The modules every server has, plus those `config` turns on.
    pub fn for_config(config: &crate::config::Config) -> Modules {
        let mut m = Self::new();
        if let Some(turn) = &config.turn {
            m.add(Arc::new(extdisco::ExtDisco {
                turn: turn.clone(),
                domain: config.domain.clone(),
            }));
        }
        m
    }

    /// The modules every server has. Hooks run in this order: the archive
    /// stamps a message before carbons copy it.
    pub fn new() -> Modules {
        let mut m = Modules {
            list: vec![],
            routes: HashMap::new(),
            hooked: Default::default(),
            features_xml: Default::default(),
        };
        m.add(Arc::new(blocking::BlockingModule::default()));
        m.add(Arc::new(disco::Disco::default()));
        m.add(Arc::new(ping::Ping));
        m.add(Arc::new(version::Version));
        m.add(Arc::new(roster::Roster));
        m.add(Arc::new(register::Register));
        m.add(Arc::new(adhoc::Adhoc));
        m.add(Arc::new(invites::Invites));
        m.add(Arc::new(mam::Mam::default()));
        m.add(Arc::new(carbons::Carbons));
        m.add(Arc::new(push::Push::default()));
        m.add(Arc::new(pep::PepModule::default()));
        m.add(Arc::new(vcard::VcardModule));
        m.add(Arc::new(private::PrivateModule));
        m
    }

    fn add(&mut self, module: Arc<dyn Module>) {
        let i = self.list.len();
        for r in module.iqs() {
            self.routes.entry((r.name, r.ns)).or_default().push((r.target, i));
        }
        for h in module.hooks() {
            self.hooked[h.index()].push(module.clone());
        }
        self.list.push(module);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Module>> {
        self.list.iter()
    }

    /// The registered module of type `T` (its state lives in the module object).
    pub fn get<T: Module>(&self) -> Option<&T> {
        self.list
            .iter()
            .find_map(|m| (m.as_ref() as &dyn Any).downcast_ref::<T>())
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

    fn hooked(&self, h: Hook) -> &[Arc<dyn Module>] {
        &self.hooked[h.index()]
    }

    /// Start every module's background work.
    pub fn start(&self, server: &Arc<Server>) {
        for m in &self.list {
            m.start(server);
        }
    }

    /// Run [`Hook::Intercept`]: true when a module consumed the stanza.
    pub async fn intercept(&self, server: &Arc<Server>, stanza: &Stanza) -> bool {
        for m in self.hooked(Hook::Intercept) {
            if m.intercept(server, stanza).await {
                return true;
            }
        }
        false
    }

    /// Run [`Hook::MessageIn`].
    pub fn message_in(&self, server: &Arc<Server>, to: &BareJid, msg: &mut Stanza) {
        for m in self.hooked(Hook::MessageIn) {
            m.message_in(server, to, msg);
        }
    }

    /// Run [`Hook::Delivered`].
    pub fn delivered(&self, server: &Arc<Server>, msg: &Stanza, to: &BareJid, sessions: &[Arc<SessionHandle>]) {
        for m in self.hooked(Hook::Delivered) {
            m.delivered(server, msg, to, sessions);
        }
    }

    /// Run [`Hook::MessageOut`].
    pub fn message_out(&self, server: &Arc<Server>, from: &Arc<SessionHandle>, msg: &mut Stanza) {
        for m in self.hooked(Hook::MessageOut) {
            m.message_out(server, from, msg);
        }
    }

    /// Run [`Hook::Presence`].
    pub async fn presence(&self, server: &Arc<Server>, p: &Element, from: &Jid, owner: &BareJid) {
        for m in self.hooked(Hook::Presence) {
            m.presence(server, p, from, owner).await;
        }
    }

    /// Run [`Hook::Available`].
    pub fn available(&self, server: &Arc<Server>, session: &Arc<SessionHandle>) {
        for m in self.hooked(Hook::Available) {
            m.available(server, session);
        }
    }

    /// Run [`Hook::SubscriptionRequest`].
    pub fn subscription_request(&self, server: &Arc<Server>, owner: &BareJid, from: &BareJid) {
        for m in self.hooked(Hook::SubscriptionRequest) {
            m.subscription_request(server, owner, from);
        }
    }

    /// Run [`Hook::IqResponse`]: true when a module consumed the answer.
    pub async fn iq_response(&self, server: &Arc<Server>, iq: &Element) -> bool {
        for m in self.hooked(Hook::IqResponse) {
            if m.iq_response(server, iq).await {
                return true;
            }
        }
        false
    }
}

impl Default for Modules {
    fn default() -> Self {
        Self::new()
    }
}

/// The database id of a local account (`None`: no such account).
pub async fn account_id(server: &Server, bare: &BareJid) -> Result<Option<i64>, StanzaError> {
    let Some(user) = bare.node().map(|n| n.to_string()) else {
        return Ok(None);
    };
    server
        .store
        .call(move |c| store::accounts::id_of(c, &user))
        .await
        .map_err(internal)
}

/// A storage failure, logged, as the stanza error a client gets.
pub fn internal(e: store::StoreError) -> StanzaError {
    tracing::error!(error = %e, "storage error");
    Condition::InternalServerError.into()
}

//! Personal Eventing Protocol (XEP-0163) on a subset of XEP-0060: publish
//! with publish-options, retract, items, create, node configuration,
//! delete and purge, and notifications filtered by the recipients'
//! entity-capabilities `+notify` features (learnt through [`super::caps`])
//! plus explicit subscribers ([`subscribe`]).
//!
//! Layout: this file (constants, state, the module and its hooks),
//! [`handler`] (the IQ requests), [`config`] (node configuration forms),
//! [`access`] (who may read a node), [`publish`] (publish, retract,
//! delete), [`notify`] (events, last items, caps-driven presence),
//! [`subscribe`] (explicit XEP-0060 subscriptions).

mod access;
mod config;
mod handler;
mod notify;
mod publish;
pub mod subscribe;

pub use access::{access_denied, disco_items};
pub use config::config_form;
pub use publish::{publish, retract_items};
use {config::*, handler::*, notify::*, publish::*};

use super::{account_id, caps, internal, BoxFuture, Hook, IqCtx, IqReply, IqRoute, Module, Target};
use crate::{
    store::{
        self,
        pep::{Access, Item, NodeConfig, SendLast},
        roster::Item as RosterItem,
    },
    xmpp::forms::Form,
    xmpp::Server,
    xmpp::{
        router::route,
        stanza::{Condition, StanzaError},
        xml::{elem, ElementExt, NS_CLIENT},
    },
};
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

pub use crate::xmpp::ns::PUBSUB as NS_PUBSUB;
pub const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
pub const NS_NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
pub const NS_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
pub use crate::xmpp::ns::DATA as NS_DATA;

/// Items kept per node when a node asks for `max` (and the ceiling for any number).
pub const MAX_ITEMS: u32 = 1000;
/// Nodes per account.
pub const MAX_NODES: usize = 500;

/// The PEP service and its in-memory state: who is online with which caps.
#[derive(Default)]
pub struct Pep {
    // std Mutex: never held across an await.
    recipients: Mutex<HashMap<BareJid, HashMap<FullJid, Recipient>>>,
    pub caps: caps::Caps,
}

#[derive(Debug, Clone, Default)]
struct Recipient {
    ver: Option<String>,
    features: Option<Arc<HashSet<String>>>,
}

const FEATURES: &[&str] = &[
    NS_PUBSUB,
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#multi-items",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#presence-notifications",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#subscribe",
];

#[derive(Default)]
pub struct PepModule {
    state: Pep,
}

/// The PEP service's in-memory state.
fn state(server: &Server) -> &Pep {
    &server
        .modules
        .get::<PepModule>()
        .expect("the pep module is always registered")
        .state
}

impl Module for PepModule {
    fn name(&self) -> &'static str {
        "pep"
    }
    fn hooks(&self) -> &'static [Hook] {
        &[Hook::Presence, Hook::IqResponse]
    }
    fn presence<'a>(
        &'a self,
        server: &'a Arc<Server>,
        p: &'a Element,
        from: &'a Jid,
        owner: &'a BareJid,
    ) -> BoxFuture<'a, ()> {
        Box::pin(on_presence(server, p, from, owner))
    }
    fn iq_response<'a>(&'a self, server: &'a Arc<Server>, iq: &'a Element) -> BoxFuture<'a, bool> {
        Box::pin(on_iq_response(server, iq))
    }
    fn account_features(&self) -> &'static [&'static str] {
        FEATURES
    }
    /// What clients look for on the server's own disco#info to know that
    /// their account has PEP (poezio's bookmark storage check, older
    /// Conversations); Prosody's mod_pep answers the same.
    fn server_features(&self) -> &'static [&'static str] {
        &["http://jabber.org/protocol/pubsub#publish"]
    }
    fn iqs(&self) -> &'static [IqRoute] {
        &[
            IqRoute {
                name: "pubsub",
                ns: NS_PUBSUB,
                target: Target::Account,
            },
            IqRoute {
                name: "pubsub",
                ns: NS_OWNER,
                target: Target::Account,
            },
        ]
    }
    fn handle_iq<'a>(&'a self, ctx: IqCtx<'a>) -> BoxFuture<'a, IqReply> {
        Box::pin(handle(ctx))
    }
}

/// A pubsub error: a stanza condition plus an optional `pubsub#errors` child.
pub fn perr(condition: Condition, app: Option<&str>) -> StanzaError {
    StanzaError {
        condition,
        text: None,
        extra: app.map(|a| Box::new(elem(a, NS_ERRORS))),
    }
}

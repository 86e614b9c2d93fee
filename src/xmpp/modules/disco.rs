//! Service discovery (XEP-0030) for the domain and for accounts, contact
//! addresses (XEP-0157) and the entity-capabilities hash (XEP-0115) that
//! goes into stream features.

use super::{BoxFuture, IqCtx, IqReply, IqRoute, Module, Target};
use crate::{
    xmpp::xml::{elem, ElementExt},
    xmpp::Server,
};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use minidom::Element;
use xmpp_parsers::{
    caps,
    data_forms::{DataForm, DataFormType, Field, FieldType},
    disco::{DiscoInfoResult, Identity},
    hashes::Algo,
};

pub use crate::xmpp::ns::{DISCO_INFO as NS_INFO, DISCO_ITEMS as NS_ITEMS};
pub const NS_CAPS: &str = "http://jabber.org/protocol/caps";
pub const CAPS_NODE: &str = "https://pushbox.example/caps";

/// The module; it keeps the domain's entity-capabilities hash, which every
/// login's stream features carry and which depends only on the
/// configuration (computing it builds the whole disco#info, sorts and
/// hashes it: about a hundred allocations per login otherwise).
#[derive(Default)]
pub struct Disco {
    ver: std::sync::OnceLock<String>,
}

impl Module for Disco {
    fn name(&self) -> &'static str {
        "disco"
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS_INFO, NS_ITEMS, "msgoffline"]
    }
    fn account_features(&self) -> &'static [&'static str] {
        &[NS_INFO, NS_ITEMS]
    }
    fn stream_features(&self, server: &Server) -> Vec<Element> {
        let ver = self.ver.get_or_init(|| caps_ver(server)).as_str();
        vec![elem("c", NS_CAPS)
            .with("hash", "sha-1")
            .with("node", CAPS_NODE)
            .with("ver", ver)]
    }
    fn iqs(&self) -> &'static [IqRoute] {
        &[
            IqRoute {
                name: "query",
                ns: NS_INFO,
                target: Target::Server,
            },
            IqRoute {
                name: "query",
                ns: NS_ITEMS,
                target: Target::Server,
            },
            IqRoute {
                name: "query",
                ns: NS_INFO,
                target: Target::Account,
            },
            IqRoute {
                name: "query",
                ns: NS_ITEMS,
                target: Target::Account,
            },
        ]
    }
    fn handle_iq<'a>(&'a self, ctx: IqCtx<'a>) -> BoxFuture<'a, IqReply> {
        Box::pin(async move {
            if ctx.set {
                return Err(crate::xmpp::stanza::Condition::BadRequest.into());
            }
            let node = ctx.payload.attr("node").map(str::to_string);
            let items = ctx.payload.has_ns(NS_ITEMS);
            let account = ctx.to.node().is_some();
            let out = match (items, account) {
                (false, false) => {
                    if let Some(info) = node.as_deref().and_then(|n| super::adhoc::info(ctx.server, n)) {
                        return Ok(Some(info));
                    }
                    if node.as_deref().is_some_and(|n| !n.starts_with(CAPS_NODE)) {
                        return Err(crate::xmpp::stanza::Condition::ItemNotFound.into());
                    }
                    let mut info = server_info(ctx.server);
                    info.node = node;
                    Element::from(info)
                }
                (false, true) => {
                    let mut info = account_info(ctx.server);
                    info.node = node;
                    Element::from(info)
                }
                (true, false) if node.is_none() => {
                    let mut q = elem("query", NS_ITEMS);
                    for domain in ctx.server.services.domains() {
                        q.append_child(elem("item", NS_ITEMS).with("jid", domain));
                    }
                    q
                }
                (true, false) if node.as_deref() == Some(crate::xmpp::ns::COMMANDS) => {
                    super::adhoc::items(ctx.server, ctx.from).await?
                }
                (true, true) if node.is_none() => {
                    let mut q = elem("query", NS_ITEMS);
                    for i in super::pep::disco_items(ctx.server, ctx.from, &ctx.to.to_bare()).await {
                        q.append_child(i);
                    }
                    q
                }
                (true, _) => elem("query", NS_ITEMS).with_opt("node", node),
            };
            Ok(Some(out))
        })
    }
}

/// disco#info of the server's domain.
pub fn server_info(server: &Server) -> DiscoInfoResult {
    let mut extensions = vec![];
    let c = &server.config.contact;
    let pairs = [
        ("abuse-addresses", &c.abuse),
        ("admin-addresses", &c.admin),
        ("feedback-addresses", &c.feedback),
        ("security-addresses", &c.security),
        ("support-addresses", &c.support),
    ];
    if pairs.iter().any(|(_, v)| !v.is_empty()) {
        let mut fields = vec![];
        for (var, values) in pairs {
            if !values.is_empty() {
                let mut f = Field::new(var, FieldType::ListMulti);
                f.values = values.clone();
                fields.push(f);
            }
        }
        extensions.push(DataForm::new(
            DataFormType::Result_,
            "http://jabber.org/network/serverinfo",
            fields,
        ));
    }
    DiscoInfoResult {
        node: None,
        identities: vec![
            Identity::new("server", "im", "en", "pushbox"),
            // Every account has PEP; Prosody names it on the domain too.
            Identity::new("pubsub", "pep", "en", "pushbox"),
        ],
        features: server.modules.server_features().into_iter().map(String::from).collect(),
        extensions,
    }
}

/// disco#info of an account's bare JID.
pub fn account_info(server: &Server) -> DiscoInfoResult {
    DiscoInfoResult {
        node: None,
        identities: vec![
            Identity::new_anonymous::<_, _, String, String>("account", "registered"),
            Identity::new_anonymous::<_, _, String, String>("pubsub", "pep"),
        ],
        features: server
            .modules
            .account_features()
            .into_iter()
            .map(String::from)
            .collect(),
        extensions: vec![],
    }
}

/// XEP-0115 `ver` of the server's disco#info.
pub fn caps_ver(server: &Server) -> String {
    let data = caps::compute_disco(&server_info(server));
    caps::hash_caps(&data, Algo::Sha_1)
        .map(|h| B64.encode(h.hash))
        .unwrap_or_default()
}

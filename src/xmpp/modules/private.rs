//! Private XML storage (XEP-0049): one element per namespace per account,
//! readable and writable only by the account itself.

use super::{account_id, internal, BoxFuture, IqCtx, IqReply, IqRoute, Module, Target};
use crate::{
    store,
    xmpp::{
        stanza::{Condition, StanzaError},
        xml::{elem, ElementExt},
    },
};
use minidom::Element;

pub const NS: &str = "jabber:iq:private";
/// Total private XML per account, in bytes.
pub const QUOTA: i64 = 1024 * 1024;

pub struct PrivateModule;

impl Module for PrivateModule {
    fn name(&self) -> &'static str {
        "private"
    }
    fn account_features(&self) -> &'static [&'static str] {
        super::bookmarks::FEATURES
    }
    /// Clients (poezio) look for private XML storage on the server's
    /// disco#info, where Prosody's mod_private announces it.
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn iqs(&self) -> &'static [IqRoute] {
        &[
            IqRoute {
                name: "query",
                ns: NS,
                target: Target::OwnAccount,
            },
            IqRoute {
                name: "query",
                ns: NS,
                target: Target::Account,
            },
        ]
    }
    fn handle_iq<'a>(&'a self, ctx: IqCtx<'a>) -> BoxFuture<'a, IqReply> {
        Box::pin(handle(ctx))
    }
}

async fn handle(ctx: IqCtx<'_>) -> IqReply {
    let owner = ctx.from.to_bare();
    if ctx.to.to_bare() != owner {
        return Err(Condition::Forbidden.into());
    }
    let Some(account) = account_id(ctx.server, &owner).await? else {
        return Err(Condition::ItemNotFound.into());
    };
    let mut children = ctx.payload.children();
    let (Some(el), None) = (children.next(), children.next()) else {
        return Err(StanzaError::new(
            Condition::NotAcceptable,
            "exactly one child element is needed",
        ));
    };
    let ns = el.ns();
    if matches!(ns.as_str(), "" | NS | "jabber:client" | "jabber:server") {
        // XEP-0049 §2: protocol namespaces cannot be stored.
        return Err(StanzaError::new(
            Condition::NotAcceptable,
            "this namespace cannot be stored",
        ));
    }
    if !ctx.set {
        let n = ns.clone();
        let stored = ctx
            .server
            .store
            .call(move |c| store::account_data::private(c, account, &n))
            .await
            .map_err(internal)?;
        let out = stored
            .and_then(|s| s.parse::<Element>().ok())
            .unwrap_or_else(|| elem(el.name(), &ns));
        return Ok(Some(elem("query", NS).child(out)));
    }
    let is_bookmarks = ns == super::bookmarks::NS_0048;
    let xml = el.to_xml();
    let stored = ctx
        .server
        .store
        .call(move |c| {
            let used = store::account_data::private_size(c, account)?;
            let old = store::account_data::private(c, account, &ns)?.map_or(0, |s| s.len() as i64);
            if used - old + xml.len() as i64 > QUOTA {
                return Ok(false);
            }
            store::account_data::set_private(c, account, &ns, &xml)?;
            Ok(true)
        })
        .await
        .map_err(internal)?;
    if !stored {
        return Err(StanzaError::new(
            Condition::ResourceConstraint,
            "private storage quota exceeded",
        ));
    }
    if is_bookmarks {
        super::bookmarks::sync(ctx.server, &owner, super::bookmarks::Source::Private).await;
    }
    Ok(None)
}

//! XMPP Ping (XEP-0199), answered for the domain and for accounts.

use super::{BoxFuture, IqCtx, IqReply, IqRoute, Module, Target};

pub const NS: &str = "urn:xmpp:ping";

pub struct Ping;

impl Module for Ping {
    fn name(&self) -> &'static str {
        "ping"
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn iqs(&self) -> &'static [IqRoute] {
        &[
            IqRoute {
                name: "ping",
                ns: NS,
                target: Target::Server,
            },
            IqRoute {
                name: "ping",
                ns: NS,
                target: Target::Account,
            },
        ]
    }
    fn handle_iq<'a>(&'a self, ctx: IqCtx<'a>) -> BoxFuture<'a, IqReply> {
        Box::pin(async move {
            if ctx.set {
                Err(crate::xmpp::stanza::Condition::BadRequest.into())
            } else {
                Ok(None)
            }
        })
    }
}

//! Software Version (XEP-0092) of the server.

use super::{BoxFuture, IqCtx, IqReply, IqRoute, Module, Target};
use crate::xmpp::xml::{elem, ElementExt};

pub const NS: &str = "jabber:iq:version";

pub struct Version;

impl Module for Version {
    fn name(&self) -> &'static str {
        "version"
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn iqs(&self) -> &'static [IqRoute] {
        &[IqRoute {
            name: "query",
            ns: NS,
            target: Target::Server,
        }]
    }
    fn handle_iq<'a>(&'a self, ctx: IqCtx<'a>) -> BoxFuture<'a, IqReply> {
        Box::pin(async move {
            if ctx.set {
                return Err(crate::xmpp::stanza::Condition::BadRequest.into());
            }
            Ok(Some(
                elem("query", NS)
                    .child(elem("name", NS).text_child("pushbox"))
                    .child(elem("version", NS).text_child(env!("CARGO_PKG_VERSION"))),
            ))
        })
    }
}

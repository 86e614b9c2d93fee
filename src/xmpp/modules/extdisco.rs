//! External Service Discovery (XEP-0215, `urn:xmpp:extdisco:2`): the STUN
//! and TURN servers of `[turn]` (the built-in one, or an external one such
//! as coturn), with short-lived TURN credentials in the "TURN REST API"
//! scheme (`turn::auth`), made from the secret the TURN server checks them
//! with.

use super::{BoxFuture, IqCtx, IqReply, IqRoute, Module, Target};
use crate::turn::auth::credentials;
use crate::{
    config::Turn,
    xmpp::{
        stanza::Condition,
        xml::{elem, ElementExt},
    },
};
use minidom::Element;
use std::time::SystemTime;

pub const NS: &str = "urn:xmpp:extdisco:2";

pub struct ExtDisco {
    /// `[turn]` with its secret resolved (the built-in server's may be generated).
    pub turn: Turn,
    /// The host announced when `turn.host` is unset: the domain.
    pub domain: String,
}

impl ExtDisco {
    fn services(&self, user: &str, only: Option<&str>) -> Element {
        let t = &self.turn;
        let (username, password, expires) = credentials(&t.secret, user, t.ttl.get(), SystemTime::now());
        let expires = humantime::format_rfc3339_seconds(expires).to_string();
        let mut out = elem("services", NS);
        let mut add = |typ: &str, port: u16, transport: &str, restricted: bool| {
            if only.is_some_and(|o| o != typ) {
                return;
            }
            let mut s = elem("service", NS)
                .with("type", typ)
                .with("host", t.host_or(&self.domain))
                .with("port", port.to_string())
                .with("transport", transport);
            if restricted {
                s = s
                    .with("restricted", "1")
                    .with("username", username.clone())
                    .with("password", password.clone())
                    .with("expires", expires.clone());
            }
            out.append_child(s);
        };
        add("stun", t.port, "udp", false);
        for tr in &t.transports {
            add("turn", t.port, tr, true);
        }
        if let Some(p) = t.tls_port() {
            add("turns", p, "tcp", true);
        }
        out
    }
}

impl Module for ExtDisco {
    fn name(&self) -> &'static str {
        "extdisco"
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn iqs(&self) -> &'static [IqRoute] {
        &[
            IqRoute {
                name: "services",
                ns: NS,
                target: Target::Server,
            },
            IqRoute {
                name: "credentials",
                ns: NS,
                target: Target::Server,
            },
        ]
    }
    fn handle_iq<'a>(&'a self, ctx: IqCtx<'a>) -> BoxFuture<'a, IqReply> {
        Box::pin(async move {
            if ctx.set {
                return Err(Condition::BadRequest.into());
            }
            // Only the server's own users get TURN credentials.
            if !ctx.server.is_local(ctx.from.domain().as_str()) || ctx.from.node().is_none() {
                return Err(Condition::Forbidden.into());
            }
            let user = ctx.from.to_bare().to_string();
            match ctx.payload.name() {
                "services" => Ok(Some(self.services(&user, ctx.payload.attr("type")))),
                _ => {
                    let all = self.services(&user, None);
                    let host = ctx.payload.get_child("service", NS).and_then(|s| s.attr("host"));
                    let mut c = elem("credentials", NS);
                    for s in all
                        .children()
                        .filter(|s| s.attr("restricted").is_some() && host.is_none_or(|h| s.attr("host") == Some(h)))
                    {
                        c.append_child(s.clone());
                    }
                    Ok(Some(c))
                }
            }
        })
    }
}

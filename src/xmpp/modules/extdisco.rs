//! External Service Discovery (XEP-0215, `urn:xmpp:extdisco:2`): STUN and
//! TURN servers from `[turn]`, with short-lived TURN credentials made from
//! the secret shared with the TURN server (coturn's `static-auth-secret`,
//! the "TURN REST API" scheme).

use super::{BoxFuture, IqCtx, IqReply, IqRoute, Module, Target};
use crate::{
    config::Turn,
    xmpp::{
        stanza::Condition,
        xml::{elem, ElementExt},
    },
};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use hmac::{digest::KeyInit, Hmac, Mac};
use minidom::Element;
use sha1::Sha1;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const NS: &str = "urn:xmpp:extdisco:2";

pub struct ExtDisco {
    pub turn: Turn,
}

/// TURN REST credentials: username `expiry:user`, password
/// base64(HMAC-SHA1(secret, username)).
pub fn credentials(secret: &str, user: &str, ttl: Duration, now: SystemTime) -> (String, String, SystemTime) {
    let expires = now + ttl;
    let exp = expires.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let username = format!("{exp}:{user}");
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    (username, B64.encode(mac.finalize().into_bytes()), expires)
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
                .with("host", t.host.clone())
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
        if let Some(p) = t.tls_port {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_rest_credentials_match_coturn_scheme() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (u, p, _) = credentials("s3cret", "alice@example.org", Duration::from_secs(3600), now);
        assert_eq!(u, "1700003600:alice@example.org");
        // HMAC-SHA1 over the username with the shared secret, base64.
        let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(b"s3cret").unwrap();
        mac.update(u.as_bytes());
        assert_eq!(p, B64.encode(mac.finalize().into_bytes()));
        assert_eq!(p.len(), 28);
    }
}

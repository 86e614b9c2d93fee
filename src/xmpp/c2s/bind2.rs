//! Bind 2 (XEP-0386): resource binding inside the SASL2 request, with the
//! session's features switched on in the same round trip (stream
//! management, carbons, CSI). The session it makes is the same kind of
//! session legacy binding makes.

use super::session::{Session, NS_CSI, NS_SM};
use crate::xmpp::{ns, xml::elem, Server};
use minidom::Element;
use sha2::{Digest, Sha256};
use std::sync::{atomic::Ordering, Arc};

/// `urn:xmpp:bind:0`.
pub const NS: &str = "urn:xmpp:bind:0";

/// The `<bind/>` inline feature, naming what can be enabled inside it.
#[cfg(test)]
pub fn feature() -> Element {
    use crate::xmpp::xml::ElementExt;
    let mut inline = elem("inline", NS);
    for var in [ns::CARBONS, NS_CSI, NS_SM] {
        inline.append_child(elem("feature", NS).with("var", var));
    }
    elem("bind", NS).child(inline)
}

/// [`feature`] written out.
pub fn write_feature(out: &mut String) {
    out.push_str("<bind xmlns='");
    out.push_str(NS);
    out.push_str("'><inline>");
    for var in [ns::CARBONS, NS_CSI, NS_SM] {
        out.push_str("<feature var='");
        out.push_str(var);
        out.push_str("'/>");
    }
    out.push_str("</inline></bind>");
}

/// Longest client tag kept in a resource.
const MAX_TAG: usize = 64;

/// The resource for a bind request: `tag/ident`, where `ident` is derived
/// from the account and the client's user-agent id, so that the same
/// installation gets the same resource on every login (and a reconnect
/// replaces its own old session) without the id itself showing. Without a
/// user-agent id, `ident` is random.
pub fn resource(username: &str, agent_id: Option<&str>, tag: Option<&str>) -> String {
    let ident = match agent_id {
        Some(id) => {
            let mut h = Sha256::new();
            h.update(b"pushbox bind2 resource\0");
            h.update(username.as_bytes());
            h.update([0]);
            h.update(id.as_bytes());
            h.finalize()[..6].iter().map(|b| format!("{b:02x}")).collect()
        }
        None => super::new_id()[..12].to_string(),
    };
    let tag: String = tag
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control() && !c.is_whitespace())
        .take(MAX_TAG)
        .collect();
    if tag.is_empty() {
        ident
    } else {
        format!("{tag}/{ident}")
    }
}

/// Bind a resource for `username` as `req` asks, enable what it lists, and
/// return the new session with the `<bound/>` answer.
pub fn bind(server: &Arc<Server>, username: &str, agent_id: Option<&str>, req: &Element) -> (Session, Element) {
    let tag = req.get_child("tag", NS).map(|t| t.text());
    let domain = server.domain();
    let jid = jid::FullJid::new(&format!(
        "{username}@{domain}/{}",
        resource(username, agent_id, tag.as_deref())
    ))
    .or_else(|_| jid::FullJid::new(&format!("{username}@{domain}/{}", resource(username, agent_id, None))))
    .expect("a hex resource is valid");
    let mut session = super::new_session(server, jid);
    let mut bound = elem("bound", NS);
    for child in req.children() {
        match (child.ns().as_str(), child.name()) {
            (NS_SM, "enable") => {
                bound.append_child(session.enable_sm(child));
            }
            (ns::CARBONS, "enable") => session.handle().carbons.store(true, Ordering::Relaxed),
            (NS_CSI, "inactive") => session.set_inactive(true),
            (NS_CSI, "active") => session.set_inactive(false),
            // `<tag/>`, and features this server does not enable inline.
            _ => {}
        }
    }
    (session, bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_stable_per_installation() {
        let a = resource("alice", Some("d4565fa7-4d72-4749-b3d3-740edbf87770"), Some("App"));
        assert_eq!(
            a,
            resource("alice", Some("d4565fa7-4d72-4749-b3d3-740edbf87770"), Some("App"))
        );
        assert!(a.starts_with("App/"), "{a}");
        assert!(!a.contains("d4565fa7"), "{a}");
        // Another installation, another account: another resource.
        assert_ne!(a, resource("alice", Some("other"), Some("App")));
        assert_ne!(
            a,
            resource("bob", Some("d4565fa7-4d72-4749-b3d3-740edbf87770"), Some("App"))
        );
        // No id: random each time.
        assert_ne!(resource("alice", None, None), resource("alice", None, None));
        // Whitespace and control characters are dropped from the tag.
        assert!(resource("alice", Some("x"), Some("My App\n")).starts_with("MyApp/"));
        assert_eq!(resource("alice", Some("x"), Some(" ")).len(), 12);
    }
}

//! Bookmark synchronisation: XEP-0402 (`urn:xmpp:bookmarks:1`, one PEP
//! item per room) kept equal to XEP-0048 bookmarks in private XML storage
//! (XEP-0049, `#compat`) and in the PEP node `storage:bookmarks`
//! (XEP-0223, `#compat-pep`; XEP-0411 conversion). Whichever side a client
//! writes, the server rewrites the other two.

use super::{account_id, pep};
use crate::{
    store,
    xmpp::xml::{elem, ElementExt},
    xmpp::Server,
};
use jid::BareJid;
use minidom::Element;
use std::sync::Arc;

pub const NS_0402: &str = "urn:xmpp:bookmarks:1";
pub const NS_0048: &str = "storage:bookmarks";

pub const FEATURES: &[&str] = &[
    "urn:xmpp:bookmarks:1#compat",
    "urn:xmpp:bookmarks:1#compat-pep",
    "urn:xmpp:bookmarks-conversion:0",
];

/// One room bookmark, the part all three forms share.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Room {
    jid: String,
    name: Option<String>,
    autojoin: bool,
    nick: Option<String>,
    password: Option<String>,
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v, Some("1" | "true"))
}

fn child_text(e: &Element, name: &str, ns: &str) -> Option<String> {
    e.get_child(name, ns).map(|c| c.text()).filter(|t| !t.is_empty())
}

/// Rooms of a XEP-0048 `<storage/>`.
fn from_storage(storage: &Element) -> Vec<Room> {
    storage
        .children()
        .filter(|c| c.is("conference", NS_0048))
        .filter_map(|c| {
            Some(Room {
                jid: c.attr("jid")?.to_string(),
                name: c.attr("name").map(str::to_string),
                autojoin: truthy(c.attr("autojoin")),
                nick: child_text(c, "nick", NS_0048),
                password: child_text(c, "password", NS_0048),
            })
        })
        .collect()
}

/// A XEP-0048 `<storage/>` with `rooms`, keeping the URL bookmarks of `old`.
fn to_storage(rooms: &[Room], old: Option<&Element>) -> Element {
    let mut s = elem("storage", NS_0048);
    for r in rooms {
        let mut c = elem("conference", NS_0048)
            .with("jid", r.jid.clone())
            .with("autojoin", if r.autojoin { "true" } else { "false" })
            .with_opt("name", r.name.clone());
        if let Some(n) = &r.nick {
            c.append_child(elem("nick", NS_0048).text_child(n.clone()));
        }
        if let Some(p) = &r.password {
            c.append_child(elem("password", NS_0048).text_child(p.clone()));
        }
        s.append_child(c);
    }
    if let Some(old) = old {
        for u in old.children().filter(|c| c.is("url", NS_0048)) {
            s.append_child(u.clone());
        }
    }
    s
}

fn room_0402(id: &str, c: &Element) -> Room {
    Room {
        jid: id.to_string(),
        name: c.attr("name").map(str::to_string),
        autojoin: truthy(c.attr("autojoin")),
        nick: child_text(c, "nick", NS_0402),
        password: child_text(c, "password", NS_0402),
    }
}

fn to_0402(r: &Room) -> Element {
    let mut c = elem("conference", NS_0402)
        .with("autojoin", if r.autojoin { "true" } else { "false" })
        .with_opt("name", r.name.clone());
    if let Some(n) = &r.nick {
        c.append_child(elem("nick", NS_0402).text_child(n.clone()));
    }
    if let Some(p) = &r.password {
        c.append_child(elem("password", NS_0402).text_child(p.clone()));
    }
    c
}

fn opts(pairs: &[(&str, &str)]) -> Vec<(String, Vec<String>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
        .collect()
}

/// The XEP-0402 / XEP-0223 node options for private data.
fn private_opts(max: &str) -> Vec<(String, Vec<String>)> {
    opts(&[
        ("pubsub#persist_items", "true"),
        ("pubsub#max_items", max),
        ("pubsub#send_last_published_item", "never"),
        ("pubsub#access_model", "whitelist"),
    ])
}

/// Which form a client just wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// XEP-0402 items (publish or retract on `urn:xmpp:bookmarks:1`).
    Native,
    /// XEP-0048 in private XML storage.
    Private,
    /// XEP-0048 in the PEP node `storage:bookmarks`.
    Pep,
}

/// After a client changed one form of its bookmarks, rewrite the others.
pub async fn sync(server: &Arc<Server>, owner: &BareJid, source: Source) {
    if let Err(e) = sync_inner(server, owner, source).await {
        tracing::warn!(error = %e, "bookmark conversion failed");
    }
}

async fn sync_inner(server: &Arc<Server>, owner: &BareJid, source: Source) -> Result<(), String> {
    let account = account_id(server, owner)
        .await
        .map_err(|e| e.condition.name().to_string())?
        .ok_or("no such account")?;
    let (native, private, pep_storage) = server
        .store
        .call(move |c| {
            let native = match store::pep::node(c, account, NS_0402)? {
                Some(_) => Some(store::pep::items(c, account, NS_0402, None)?),
                None => None,
            };
            let private = store::account_data::private(c, account, NS_0048)?;
            let pep_storage = store::pep::items(c, account, NS_0048, Some(1))?.pop();
            Ok((native, private, pep_storage))
        })
        .await
        .map_err(|e| e.to_string())?;
    let private = private.and_then(|s| s.parse::<Element>().ok());
    let pep_storage = pep_storage.and_then(|i| i.payload.parse::<Element>().ok());
    let native_rooms: Vec<Room> = native
        .iter()
        .flatten()
        .filter_map(|i| Some(room_0402(&i.id, &i.payload.parse::<Element>().ok()?)))
        .collect();
    let rooms = match source {
        Source::Native => native_rooms.clone(),
        Source::Private => private.as_ref().map(from_storage).unwrap_or_default(),
        Source::Pep => pep_storage.as_ref().map(from_storage).unwrap_or_default(),
    };
    if source != Source::Private {
        let xml = to_storage(&rooms, private.as_ref()).to_xml();
        server
            .store
            .call(move |c| store::account_data::set_private(c, account, NS_0048, &xml))
            .await
            .map_err(|e| e.to_string())?;
    }
    if source != Source::Pep {
        let storage = to_storage(&rooms, pep_storage.as_ref().or(private.as_ref()));
        publish_private(server, owner, account, NS_0048, "current", storage, "1").await?;
    }
    if source != Source::Native {
        for r in &rooms {
            if native_rooms.contains(r) {
                continue;
            }
            publish_private(server, owner, account, NS_0402, &r.jid, to_0402(r), "max").await?;
        }
        let gone: Vec<String> = native_rooms
            .iter()
            .filter(|n| !rooms.iter().any(|r| r.jid == n.jid))
            .map(|n| n.jid.clone())
            .collect();
        if !gone.is_empty() {
            pep::retract_items(server, owner, account, NS_0402, &gone)
                .await
                .map_err(|e| e.condition.name().to_string())?;
        }
    }
    Ok(())
}

/// Publish with the private-data options; a node that exists with other
/// options keeps them (the owner configured it).
async fn publish_private(
    server: &Arc<Server>,
    owner: &BareJid,
    account: i64,
    node: &str,
    id: &str,
    payload: Element,
    max: &str,
) -> Result<(), String> {
    let r = pep::publish(
        server,
        owner,
        account,
        node,
        id,
        payload.clone(),
        &private_opts(max),
        false,
    )
    .await;
    let r = match r {
        Err(e) if e.condition == crate::xmpp::stanza::Condition::Conflict => {
            pep::publish(server, owner, account, node, id, payload, &[], false).await
        }
        r => r,
    };
    r.map_err(|e| e.condition.name().to_string())
}

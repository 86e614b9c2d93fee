//! Offline messages (XEP-0160) with nothing lost. A message for an account
//! with no available resource is written to the `offline` table (durably:
//! `synchronous = FULL`) and leaves it only when a client has shown it has
//! the message:
//!
//! - with stream management (XEP-0198), when the client acknowledges it
//!   (`<a h=…/>` covering it);
//! - without, when the client answers a ping the session sends after the
//!   write: the answer comes after the messages on the same in-order
//!   stream, so the client has read them.
//!
//! Until then a row is only *in flight* (in memory, so that two resources
//! logging in at once do not both get it); a crash, a lost connection or a
//! session that ends without proof leaves the row where it is, and the
//! next login delivers it again (a duplicate with the same stanza-id is
//! possible; a loss is not). A hibernating session's unacknowledged
//! messages are written to the table too, so a crash while a phone sleeps
//! loses nothing either.

use super::{
    ns,
    router::reply,
    sessions::{SessionHandle, ToSession},
    stanza::{self, bounce, Condition},
    xml::{elem, ElementExt},
    Server,
};
use crate::store;
use jid::BareJid;
use minidom::Element;
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

/// Row ids handed to a session and not yet proven delivered.
#[derive(Default)]
pub struct InFlight {
    // std Mutex: set operations only, never held across an await.
    ids: Mutex<HashSet<i64>>,
}

impl InFlight {
    /// Claim the ids not claimed yet; returns the ones this caller got.
    fn claim(&self, ids: impl IntoIterator<Item = i64>) -> HashSet<i64> {
        let mut set = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.into_iter().filter(|id| set.insert(*id)).collect()
    }

    fn release(&self, ids: &[i64]) {
        let mut set = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            set.remove(id);
        }
    }
}

/// Only messages a person would want later are stored (RFC 6121 §8.5.2.2.1).
pub fn worth_storing(msg: &Element) -> bool {
    msg.children().any(|c| {
        matches!(c.name(), "body" | "subject" | "encrypted" | "propose")
            || c.has_ns("eu.siacs.conversations.axolotl")
            || c.has_ns("urn:xmpp:omemo:2")
    })
}

/// The stored form of a message: with a XEP-0203 delay stamp by the server.
fn stamped(server: &Server, mut msg: Element) -> Element {
    msg.append_child(elem("delay", ns::DELAY).with("from", server.domain().to_string()).with(
        "stamp",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    ));
    msg
}

/// Keep a message for an account with no available resource; bounce it
/// when the queue is full, the account does not exist or storage fails.
pub async fn store(server: &Arc<Server>, msg: Element, bare: &BareJid) {
    let username = bare.node().map(|n| n.to_string()).unwrap_or_default();
    let worth = worth_storing(&msg);
    let max = server.config.limits.max_offline_messages;
    let msg = stamped(server, msg);
    let xml = msg.to_xml();
    let res = server
        .store
        .call_durable(move |c| {
            let Some(id) = store::accounts::id_of(c, &username)? else {
                return Ok(None);
            };
            if !worth {
                return Ok(Some(true));
            }
            Ok(Some(store::offline::push(c, id, &xml, max)?))
        })
        .await;
    match res {
        Ok(Some(true)) => {}
        Ok(Some(false)) => {
            let e = stanza::StanzaError::new(Condition::ServiceUnavailable, "the recipient's offline storage is full");
            reply(server, bounce(&msg, e, server.domain())).await
        }
        Ok(None) => reply(server, bounce(&msg, Condition::ServiceUnavailable, server.domain())).await,
        Err(e) => {
            tracing::error!(error = %e, "cannot store an offline message");
            let e = if e.is_full() {
                stanza::StanzaError::new(
                    Condition::ResourceConstraint,
                    "the server's storage is full; try again later",
                )
            } else {
                Condition::InternalServerError.into()
            };
            reply(server, bounce(&msg, e, server.domain())).await
        }
    }
}

/// Write messages a hibernating session holds to the table (one durable
/// transaction) and claim their rows for that session. Returns, per
/// message, its row id (`None`: not worth storing, queue full, or an
/// error, logged; the message then stays in memory only).
pub async fn keep_for(server: &Arc<Server>, bare: &BareJid, msgs: Vec<Element>) -> Vec<Option<i64>> {
    let n = msgs.len();
    let Some(username) = bare.node().map(|n| n.to_string()) else {
        return vec![None; n];
    };
    let max = server.config.limits.max_offline_messages;
    let xml: Vec<Option<String>> = msgs
        .into_iter()
        .map(|m| worth_storing(&m).then(|| stamped(server, m).to_xml()))
        .collect();
    if xml.iter().all(Option::is_none) {
        return vec![None; n];
    }
    let res = server
        .store
        .call_durable(move |c| {
            let Some(account) = store::accounts::id_of(c, &username)? else {
                return Ok(vec![None; xml.len()]);
            };
            let tx = c.transaction()?;
            let mut ids = Vec::with_capacity(xml.len());
            for x in &xml {
                ids.push(match x {
                    Some(x) => store::offline::push_id(&tx, account, x, max)?,
                    None => None,
                });
            }
            tx.commit()?;
            Ok(ids)
        })
        .await;
    match res {
        Ok(ids) => {
            server.offline.claim(ids.iter().flatten().copied());
            ids
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot keep a hibernating session's messages");
            vec![None; n]
        }
    }
}

/// Hand the account's stored messages that no other session holds to
/// `session` (on its initial presence, or when another resource left
/// messages unproven). Each goes as [`ToSession::Stored`] with its row id.
pub async fn deliver(server: &Arc<Server>, session: &Arc<SessionHandle>) {
    let Some(username) = session.jid.node().map(|n| n.to_string()) else {
        return;
    };
    let res = server
        .store
        .call(move |c| {
            let Some(id) = store::accounts::id_of(c, &username)? else {
                return Ok(vec![]);
            };
            store::offline::list(c, id)
        })
        .await;
    let rows = match res {
        Ok(rows) => rows,
        Err(e) => return tracing::error!(error = %e, "cannot read offline messages"),
    };
    let mine = server.offline.claim(rows.iter().map(|(id, _)| *id));
    for (id, xml) in rows.into_iter().filter(|(id, _)| mine.contains(id)) {
        match xml.parse::<Element>() {
            Ok(m) => {
                if session.tx.send(ToSession::Stored(Box::new(m), id)).is_err() {
                    server.offline.release(&[id]);
                }
            }
            Err(e) => {
                // Unreadable: it can never be delivered, so it is removed.
                tracing::error!(error = %e, "unreadable offline message removed");
                delivered(server, vec![id]);
            }
        }
    }
}

/// The client has these rows' messages: delete them (in the background).
pub fn delivered(server: &Arc<Server>, ids: Vec<i64>) {
    if ids.is_empty() {
        return;
    }
    let server = server.clone();
    tokio::spawn(async move {
        let del = ids.clone();
        match server
            .store
            .call_durable(move |c| store::offline::delete(c, &del))
            .await
        {
            Ok(_) => {}
            // The rows stay; the next login delivers them again.
            Err(e) => tracing::error!(error = %e, "cannot delete delivered offline messages"),
        }
        server.offline.release(&ids);
    });
}

/// A session ended without proof for these rows: they stay stored and are
/// free for the next session; an awake resource of the account gets them now.
pub async fn unproven(server: &Arc<Server>, bare: &BareJid, ids: Vec<i64>) {
    if ids.is_empty() {
        return;
    }
    server.offline.release(&ids);
    let awake = server
        .sessions
        .of(bare)
        .into_iter()
        .find(|s| s.available() && s.priority() >= 0 && !s.hibernating.load(std::sync::atomic::Ordering::Relaxed));
    if let Some(s) = awake {
        deliver(server, &s).await;
    }
}

//! Entity capabilities of other entities (XEP-0115): the `<c/>` in their
//! presence, one disco#info query per unknown `ver`, and a cache of the
//! features each verified `ver` stands for. PEP uses it to find who wants
//! notifications (`node+notify`).

use super::disco::{NS_CAPS, NS_INFO};
use crate::xmpp::xml::{elem, ElementExt, NS_CLIENT};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use jid::{BareJid, FullJid};
use minidom::Element;
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use xmpp_parsers::{caps, disco::DiscoInfoResult, hashes::Algo};

/// How many verified `ver` values are kept.
const MAX_CACHED: usize = 10_000;
/// A query without an answer after this long may be sent again.
const QUERY_RETRY: Duration = Duration::from_secs(30);

/// The caps announced in one presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ver {
    pub node: String,
    pub ver: String,
    /// `None` for legacy (pre-1.5) caps without a hash.
    pub hash: Option<String>,
}

impl Ver {
    /// The cache key: the `ver` itself when it is a hash, else node#ver.
    pub fn key(&self) -> String {
        match &self.hash {
            Some(h) => format!("{h}:{}", self.ver),
            None => format!("legacy:{}#{}", self.node, self.ver),
        }
    }
}

/// The `<c/>` of a presence, if any.
pub fn ver_of(p: &Element) -> Option<Ver> {
    let c = p.get_child("c", NS_CAPS)?;
    Some(Ver {
        node: c.attr("node")?.to_string(),
        ver: c.attr("ver")?.to_string(),
        hash: c.attr("hash").map(str::to_string),
    })
}

#[derive(Default)]
pub struct Caps {
    // std Mutex: never held across an await.
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    known: HashMap<String, Arc<HashSet<String>>>,
    /// Outstanding queries by key: when sent, and who waits for the answer.
    inflight: HashMap<String, (Instant, Vec<(BareJid, FullJid)>)>,
    /// IQ id → (key, announced ver).
    by_id: HashMap<String, (String, Ver)>,
}

impl Caps {
    /// Features of a known `ver`.
    pub fn lookup(&self, v: &Ver) -> Option<Arc<HashSet<String>>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.known.get(&v.key()).cloned()
    }

    /// Register `jid` (seen by `owner`) as waiting for `v`; returns the
    /// disco#info query to send when none is outstanding.
    pub fn start_query(&self, v: &Ver, owner: &BareJid, jid: &FullJid) -> Option<Element> {
        let key = v.key();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some((sent, waiters)) = inner.inflight.get_mut(&key) {
            waiters.push((owner.clone(), jid.clone()));
            if now.duration_since(*sent) < QUERY_RETRY {
                return None;
            }
            *sent = now;
        } else {
            inner
                .inflight
                .insert(key.clone(), (now, vec![(owner.clone(), jid.clone())]));
        }
        let id = format!("caps-{:x}", rand::random::<u64>());
        inner.by_id.retain(|_, (k, _)| k != &key);
        inner.by_id.insert(id.clone(), (key, v.clone()));
        Some(
            elem("iq", NS_CLIENT)
                .with("type", "get")
                .with("id", id)
                .with("from", owner.to_string())
                .with("to", jid.to_string())
                .child(elem("query", NS_INFO).with("node", format!("{}#{}", v.node, v.ver))),
        )
    }

    /// Consume the answer to one of our queries: returns the key, the
    /// waiters and the features (empty for an error answer).
    pub fn finish_query(&self, iq: &Element) -> Option<(String, Vec<(BareJid, FullJid)>, Arc<HashSet<String>>)> {
        let id = iq.attr("id")?;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (key, ver) = inner.by_id.remove(id)?;
        let waiters = inner.inflight.remove(&key).map(|(_, w)| w).unwrap_or_default();
        let query = iq
            .get_child("query", NS_INFO)
            .filter(|_| iq.attr("type") == Some("result"));
        let features: HashSet<String> = query
            .map(|q| {
                q.children()
                    .filter(|c| c.is("feature", NS_INFO))
                    .filter_map(|c| c.attr("var").map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let features = Arc::new(features);
        // Only a ver whose hash checks out may stand for everyone announcing it.
        if query.is_some_and(|q| verified(&ver, q)) {
            if inner.known.len() >= MAX_CACHED {
                inner.known.clear();
            }
            inner.known.insert(key.clone(), features.clone());
        }
        Some((key, waiters, features))
    }
}

/// Whether a disco#info answer hashes to the announced `ver` (XEP-0115 §5.4).
fn verified(v: &Ver, query: &Element) -> bool {
    let algo = match v.hash.as_deref() {
        Some("sha-1") => Algo::Sha_1,
        Some("sha-256") => Algo::Sha_256,
        _ => return false,
    };
    let mut q = query.clone();
    q.unset("node");
    let Ok(info) = DiscoInfoResult::try_from(q) else {
        return false;
    };
    let data = caps::compute_disco(&info);
    caps::hash_caps(&data, algo).is_ok_and(|h| B64.encode(h.hash) == v.ver)
}

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

/// An answered query: the cache key, who waited for it, and the features.
pub type Answer = (String, Vec<(BareJid, FullJid)>, Arc<HashSet<String>>);

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
    pub fn finish_query(&self, iq: &Element) -> Option<Answer> {
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
    use sha1::Digest;
    let s = verification_string(query);
    let hash = match v.hash.as_deref() {
        Some("sha-1") => sha1::Sha1::digest(s.as_bytes()).to_vec(),
        Some("sha-256") => sha2::Sha256::digest(s.as_bytes()).to_vec(),
        _ => return false,
    };
    B64.encode(hash) == v.ver
}

/// The XEP-0115 §5.1 string S. Written here rather than taken from
/// xmpp-parsers, whose 0.23 sorts `x#y<` before `x<` (it sorts after
/// appending the separator), so real clients' hashes did not verify.
fn verification_string(q: &Element) -> String {
    const NS_DATA: &str = "jabber:x:data";
    let mut ids: Vec<(String, String, String, String)> = q
        .children()
        .filter(|c| c.is("identity", NS_INFO))
        .map(|c| {
            let lang = c
                .attrs()
                .iter()
                .find(|(k, _)| k.1.as_str() == "lang" && k.0.as_str() == "http://www.w3.org/XML/1998/namespace")
                .map(|(_, v)| v.to_string())
                .unwrap_or_default();
            (
                c.attr("category").unwrap_or_default().to_string(),
                c.attr("type").unwrap_or_default().to_string(),
                lang,
                c.attr("name").unwrap_or_default().to_string(),
            )
        })
        .collect();
    ids.sort();
    let mut features: Vec<&str> = q
        .children()
        .filter(|c| c.is("feature", NS_INFO))
        .filter_map(|c| c.attr("var"))
        .collect();
    features.sort_unstable();
    let mut s = String::new();
    for (c, t, l, n) in ids {
        s.push_str(&format!("{c}/{t}/{l}/{n}<"));
    }
    for f in features {
        s.push_str(f);
        s.push('<');
    }
    let values = |f: &Element| -> Vec<String> {
        let mut v: Vec<String> = f
            .children()
            .filter(|c| c.is("value", NS_DATA))
            .map(|c| c.text())
            .collect();
        v.sort();
        v
    };
    type Form = (String, Vec<(String, Vec<String>)>);
    let mut forms: Vec<Form> = q
        .children()
        .filter(|c| c.is("x", NS_DATA))
        .filter_map(|x| {
            let mut form_type = None;
            let mut fields = vec![];
            for f in x.children().filter(|c| c.is("field", NS_DATA)) {
                let var = f.attr("var")?.to_string();
                if var == "FORM_TYPE" {
                    form_type = values(f).into_iter().next();
                } else {
                    fields.push((var, values(f)));
                }
            }
            fields.sort();
            Some((form_type?, fields))
        })
        .collect();
    forms.sort();
    for (ft, fields) in forms {
        s.push_str(&ft);
        s.push('<');
        for (var, vals) in fields {
            s.push_str(&var);
            s.push('<');
            for v in vals {
                s.push_str(&v);
                s.push('<');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_a_real_clients_answer() {
        // slixmpp 1.17 with slixmpp-omemo, as seen on the wire.
        let q: Element = "<query xmlns='http://jabber.org/protocol/disco#info' node='http://slixmpp.com/ver/1.17.0#CsyoCFDyBMfs0ZUGWAA/fKfseAw='>\
            <identity category='client' type='bot'/>\
            <feature var='http://jabber.org/protocol/disco#info'/><feature var='jabber:x:data'/>\
            <feature var='http://jabber.org/protocol/shim'/><feature var='http://jabber.org/protocol/shim#SubID'/>\
            <feature var='http://jabber.org/protocol/caps'/><feature var='urn:xmpp:ping'/>\
            <feature var='urn:xmpp:forward:0'/><feature var='urn:xmpp:carbons:2'/>\
            <feature var='eu.siacs.conversations.axolotl.devicelist+notify'/>\
            <feature var='urn:xmpp:omemo:2:devices+notify'/></query>"
            .parse()
            .unwrap();
        let mut v = Ver {
            node: "http://slixmpp.com/ver/1.17.0".into(),
            ver: "CsyoCFDyBMfs0ZUGWAA/fKfseAw=".into(),
            hash: Some("sha-1".into()),
        };
        assert!(verified(&v, &q), "{}", verification_string(&q));
        v.ver = "AAAACFDyBMfs0ZUGWAA/fKfseAw=".into();
        assert!(!verified(&v, &q), "a wrong ver is not accepted");
    }

    #[test]
    fn xep_0115_complex_example() {
        // XEP-0115 §5.3, the complex generation example.
        let q: Element = "<query xmlns='http://jabber.org/protocol/disco#info'>\
            <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
            <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>\
            <feature var='http://jabber.org/protocol/caps'/><feature var='http://jabber.org/protocol/disco#info'/>\
            <feature var='http://jabber.org/protocol/disco#items'/><feature var='http://jabber.org/protocol/muc'/>\
            <x xmlns='jabber:x:data' type='result'>\
              <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
              <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>\
              <field var='os'><value>Mac</value></field><field var='os_version'><value>10.5.1</value></field>\
              <field var='software'><value>Psi</value></field><field var='software_version'><value>0.11</value></field>\
            </x></query>"
            .parse()
            .unwrap();
        let v = Ver {
            node: "http://psi-im.org".into(),
            ver: "q07IKJEyjvHSyhy//CH0CxmKi8w=".into(),
            hash: Some("sha-1".into()),
        };
        assert!(verified(&v, &q), "{}", verification_string(&q));
    }
}

//! The one SASL exchange behind both profiles. RFC 6120's `<auth/>` and
//! XEP-0388's `<authenticate/>` differ only in their element names, their
//! encoding of empty data and what they wrap around the outcome, so both
//! run [`exchange`]: the same mechanisms, channel bindings, XEP-0474 hash,
//! unknown-user handling and failed-login accounting.

use super::{fast, ClientStream};
use crate::{
    store,
    xmpp::{
        sasl::{self, ChannelBindings, Failure, Mechanism, Refused, ScramServer, TokenMechanism},
        stream::ConnError,
        xml::{elem, ElementExt, Event, StreamError, NS_SASL},
        Server,
    },
};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use jid::BareJid;
use minidom::Element;

/// `urn:xmpp:sasl:2` (XEP-0388).
pub const NS_SASL2: &str = "urn:xmpp:sasl:2";

/// Which SASL profile an exchange runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// RFC 6120 §6.
    Sasl1,
    /// XEP-0388.
    Sasl2,
}

impl Profile {
    pub fn ns(self) -> &'static str {
        match self {
            Profile::Sasl1 => NS_SASL,
            Profile::Sasl2 => NS_SASL2,
        }
    }

    /// Base64 for an element's text. RFC 6120 §6.4.2 writes empty data as
    /// `=`; XEP-0388 as an empty element.
    pub fn encode(self, data: &[u8]) -> String {
        match (self, data.is_empty()) {
            (Profile::Sasl1, true) => "=".into(),
            _ => B64.encode(data),
        }
    }

    /// A `<failure/>` with an RFC 6120 condition (always in the SASL1
    /// namespace, as XEP-0388 §2.6.2 wants) and an optional text.
    pub fn failure(self, f: Failure, text: Option<&str>) -> Element {
        let mut e = elem("failure", self.ns()).child(elem(f.condition(), NS_SASL));
        if let Some(t) = text {
            e.append_child(elem("text", self.ns()).text_child(t));
        }
        e
    }
}

/// Decode SASL data from an element's text (whitespace ignored; `=` and
/// nothing both mean empty).
pub fn decode(el: &Element) -> Result<Vec<u8>, Failure> {
    let t = el.text();
    let t: String = t.split_ascii_whitespace().collect();
    if t.is_empty() || t == "=" {
        return Ok(vec![]);
    }
    B64.decode(t).map_err(|_| Failure::MalformedRequest)
}

/// What one connection offers to SASL, the same to both profiles (so
/// XEP-0474's hash is the same whichever profile the client uses).
pub struct Offer {
    pub cb: ChannelBindings,
    pub mechanisms: &'static [Mechanism],
}

impl Offer {
    pub fn new(cb: ChannelBindings) -> Offer {
        let mechanisms = Mechanism::offered(&cb);
        Offer { cb, mechanisms }
    }

    /// [`Offer::mechanism_list`] written out, open: the caller closes
    /// `</name>` (SASL2 puts more children in it).
    pub fn write_mechanisms_open(&self, name: &str, ns: &str, out: &mut String) {
        out.push('<');
        out.push_str(name);
        out.push_str(" xmlns='");
        out.push_str(ns);
        out.push_str("'>");
        for m in self.mechanisms {
            out.push_str("<mechanism>");
            out.push_str(m.name());
            out.push_str("</mechanism>");
        }
    }

    /// `<mechanisms/>`-style children: one `<mechanism>` per offered name.
    #[cfg(test)]
    pub fn mechanism_list(&self, name: &str, ns: &str) -> Element {
        let mut list = elem(name, ns);
        for m in self.mechanisms {
            list.append_child(elem("mechanism", ns).text_child(m.name()));
        }
        list
    }
}

/// A successful exchange.
#[derive(Debug)]
pub struct Authenticated {
    /// The normalised username.
    pub username: String,
    /// Data for the success element (SCRAM's server-final, HT's answer).
    pub additional: Option<Vec<u8>>,
    /// The FAST token that authenticated, when one did.
    pub token: Option<fast::Used>,
}

/// Run one mechanism exchange. `agent` is the SASL2 user-agent id, which
/// token mechanisms (SASL2 only) need. The outer `Result` is the connection; the inner
/// one the outcome, which the caller reports in its profile.
pub async fn exchange(
    server: &Server,
    xs: &mut ClientStream,
    profile: Profile,
    offer: &Offer,
    mechanism: &str,
    initial: Option<Vec<u8>>,
    agent: Option<&str>,
) -> Result<Result<Authenticated, Refused>, ConnError> {
    if profile == Profile::Sasl2 {
        if let Some(tm) = TokenMechanism::from_name(mechanism) {
            let Some(initial) = initial else {
                // A one-step mechanism has nothing to ask for.
                return Ok(Err(Failure::MalformedRequest.into()));
            };
            return Ok(fast::verify(server, tm, &initial, agent).await);
        }
    }
    let Some(mech) = Mechanism::from_name(mechanism).filter(|m| offer.mechanisms.contains(m)) else {
        return Ok(Err(Failure::InvalidMechanism.into()));
    };
    let initial = match initial {
        Some(i) => i,
        // No initial response: ask for it with an empty challenge.
        None => match challenge(xs, profile, &[]).await? {
            Ok(r) => r,
            Err(r) => return Ok(Err(r)),
        },
    };
    if mech == Mechanism::Plain {
        return Ok(check_plain(server, &initial).await.map(|username| Authenticated {
            username,
            additional: None,
            token: None,
        }));
    }
    let first = match sasl::scram_client_first(mech, &initial, &offer.cb) {
        Ok(f) => f,
        Err(r) => return Ok(Err(r)),
    };
    let (scram, server_first, username) = scram_start(server, mech, first, &offer.cb).await;
    let response = match challenge(xs, profile, &server_first).await? {
        Ok(r) => r,
        Err(r) => return Ok(Err(r)),
    };
    Ok(scram.finish(&response, &offer.cb).map(|server_final| Authenticated {
        username,
        additional: Some(server_final),
        token: None,
    }))
}

/// Send a challenge and read the client's response.
async fn challenge(
    xs: &mut ClientStream,
    profile: Profile,
    data: &[u8],
) -> Result<Result<Vec<u8>, Refused>, ConnError> {
    xs.send(&elem("challenge", profile.ns()).text_child(profile.encode(data)))
        .await?;
    let ns = profile.ns();
    let el = match xs.next_event().await? {
        Event::Stanza(el) => el,
        Event::Close => return Err(ConnError::Eof),
        Event::Header(_) => return Err(ConnError::Stream(StreamError::NotWellFormed)),
    };
    Ok(match (el.ns() == ns, el.name()) {
        (true, "response") => decode(&el).map_err(Refused::from),
        (true, "abort") => Err(Failure::Aborted.into()),
        _ => Err(Failure::MalformedRequest.into()),
    })
}

/// PLAIN: check `authzid NUL authcid NUL password`; returns the username.
async fn check_plain(server: &Server, initial: &[u8]) -> Result<String, Refused> {
    let (authz, authc, pw) = sasl::parse_plain(initial)?;
    let Ok(username) = store::accounts::normalize(&authc) else {
        return Err(Refused::wrong_credentials());
    };
    if let Some(a) = authz {
        if BareJid::new(&a).ok().map(|j| j.to_string()) != Some(format!("{username}@{}", server.domain())) {
            return Err(Failure::InvalidAuthzid.into());
        }
    }
    let u = username.clone();
    let ok = server
        .store
        .call(move |c| Ok(store::accounts::get(c, &u)?.is_some_and(|a| a.keys.verify_password(&pw))))
        .await
        .unwrap_or(false);
    if ok {
        Ok(username)
    } else {
        Err(Refused::wrong_credentials())
    }
}

/// SCRAM's first server step: look the user up and answer with server-first.
async fn scram_start(
    server: &Server,
    mech: Mechanism,
    first: sasl::ClientFirst,
    cb: &ChannelBindings,
) -> (ScramServer, Vec<u8>, String) {
    let username = match store::accounts::normalize(&first.username) {
        Ok(u) => u,
        Err(_) => first.username.clone(),
    };
    let u = username.clone();
    let keys = server
        .store
        .call(move |c| Ok(store::accounts::get(c, &u)?.map(|a| a.keys)))
        .await
        .unwrap_or(None);
    let (scram, server_first) = ScramServer::new(mech, first, keys, &server.fake_salt_secret, cb);
    (scram, server_first, username)
}

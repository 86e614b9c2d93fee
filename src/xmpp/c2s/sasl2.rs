//! SASL2 (XEP-0388): the `<authentication/>` feature with what can be
//! negotiated inline (Bind 2, stream resumption), and `<authenticate/>`
//! read into a [`Request`]. The exchange itself is the shared one in
//! `auth`; what happens after success (resumption, binding) is in `c2s`.

use super::{
    auth::{self, Offer, NS_SASL2},
    bind2, fast,
    session::NS_SM,
};
use crate::xmpp::{
    sasl::Failure,
    xml::{elem, ElementExt},
};
use minidom::Element;

/// The client installation, as `<user-agent/>` describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserAgent {
    /// A UUID, stable for the installation (XEP-0388 §2.3).
    pub id: Option<String>,
    pub software: Option<String>,
    pub device: Option<String>,
}

/// An `<authenticate/>` request.
#[derive(Debug)]
pub struct Request {
    pub mechanism: String,
    /// The initial response; `None` when the element was absent.
    pub initial: Option<Vec<u8>>,
    pub agent: UserAgent,
    /// Bind 2's `<bind/>`, when the client asks for a resource inline.
    pub bind: Option<Element>,
    /// XEP-0198 inline resumption: `previd` and `h`.
    pub resume: Option<(String, u32)>,
    /// Whether `<resume/>` was there but unreadable.
    pub bad_resume: bool,
    /// FAST: the mechanism of `<request-token/>`.
    pub request_token: Option<String>,
    /// FAST: `<fast invalidate='true'/>`, end the token used.
    pub fast_invalidate: bool,
}

/// [`feature`] written out (a login builds no elements for its features).
pub fn write_feature(offer: &Offer, with_fast: bool, out: &mut String) {
    offer.write_mechanisms_open("authentication", NS_SASL2, out);
    out.push_str("<inline><sm xmlns='");
    out.push_str(NS_SM);
    out.push_str("'/>");
    bind2::write_feature(out);
    if with_fast {
        fast::write_feature(out);
    }
    out.push_str("</inline></authentication>");
}

/// The `<authentication/>` stream feature; `with_fast` adds FAST's
/// token mechanisms to what can be inlined.
#[cfg(test)]
pub fn feature(offer: &Offer, with_fast: bool) -> Element {
    let mut f = offer.mechanism_list("authentication", NS_SASL2);
    let mut inline = elem("inline", NS_SASL2)
        .child(elem("sm", NS_SM))
        .child(bind2::feature());
    if with_fast {
        inline.append_child(fast::feature());
    }
    f.append_child(inline);
    f
}

/// Longest `<software/>`, `<device/>` or id kept.
const MAX_TEXT: usize = 200;

/// Read `<authenticate/>`; a refusal is reported as a SASL2 failure.
pub fn parse(el: &Element) -> Result<Request, Failure> {
    let mechanism = el
        .attr("mechanism")
        .filter(|m| !m.is_empty())
        .ok_or(Failure::InvalidMechanism)?;
    let initial = match el.get_child("initial-response", NS_SASL2) {
        Some(i) => Some(auth::decode(i)?),
        None => None,
    };
    let text = |e: &Element, name: &str| {
        e.get_child(name, NS_SASL2)
            .map(|c| c.text().trim().chars().take(MAX_TEXT).collect::<String>())
            .filter(|t| !t.is_empty())
    };
    let agent = match el.get_child("user-agent", NS_SASL2) {
        Some(ua) => UserAgent {
            id: ua
                .attr("id")
                .map(str::trim)
                .filter(|id| !id.is_empty() && id.len() <= MAX_TEXT)
                .map(str::to_string),
            software: text(ua, "software"),
            device: text(ua, "device"),
        },
        None => UserAgent::default(),
    };
    let resume_el = el.get_child("resume", NS_SM);
    let resume = resume_el.and_then(|r| {
        let h = r.attr("h")?.parse::<u32>().ok()?;
        Some((r.attr("previd")?.to_string(), h))
    });
    let truthy = |v: Option<&str>| matches!(v, Some("true" | "1"));
    Ok(Request {
        request_token: el
            .get_child("request-token", fast::NS)
            .and_then(|r| r.attr("mechanism"))
            .map(str::to_string),
        fast_invalidate: el
            .get_child("fast", fast::NS)
            .is_some_and(|f| truthy(f.attr("invalidate"))),
        mechanism: mechanism.to_string(),
        initial,
        agent,
        bind: el.get_child("bind", bind2::NS).cloned(),
        bad_resume: resume_el.is_some() && resume.is_none(),
        resume,
    })
}

/// `<success/>` before the inline results are added.
pub fn success(additional: Option<&[u8]>) -> Element {
    let mut s = elem("success", NS_SASL2);
    if let Some(d) = additional {
        s.append_child(elem("additional-data", NS_SASL2).text_child(auth::Profile::Sasl2.encode(d)));
    }
    s
}

/// `<authorization-identifier/>` for a bare or full JID.
pub fn authorization_identifier(jid: &str) -> Element {
    elem("authorization-identifier", NS_SASL2).text_child(jid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(s: &str) -> Element {
        s.parse().unwrap()
    }

    #[test]
    fn reads_an_authenticate_request() {
        let r = parse(&el("<authenticate xmlns='urn:xmpp:sasl:2' mechanism='SCRAM-SHA-1'>\
             <initial-response>biwsbj1hbGljZSxyPXg=</initial-response>\
             <user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'><software>App</software><device>Phone</device></user-agent>\
             <resume xmlns='urn:xmpp:sm:3' previd='abc' h='3'/>\
             <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>\
             <fast xmlns='urn:xmpp:fast:0' invalidate='true'/>\
             <bind xmlns='urn:xmpp:bind:0'><tag>App</tag></bind></authenticate>"))
        .unwrap();
        assert_eq!(r.mechanism, "SCRAM-SHA-1");
        assert_eq!(r.initial.as_deref(), Some(&b"n,,n=alice,r=x"[..]));
        assert_eq!(r.agent.id.as_deref(), Some("d4565fa7-4d72-4749-b3d3-740edbf87770"));
        assert_eq!(r.agent.software.as_deref(), Some("App"));
        assert_eq!(r.agent.device.as_deref(), Some("Phone"));
        assert_eq!(r.resume, Some(("abc".into(), 3)));
        assert_eq!(r.request_token.as_deref(), Some("HT-SHA-256-NONE"));
        assert!(r.fast_invalidate);
        assert!(r.bind.is_some());
        // Empty initial response, no initial response, bad base64.
        let r = parse(&el(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response/></authenticate>",
        ))
        .unwrap();
        assert_eq!(r.initial, Some(vec![]));
        let r = parse(&el("<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'/>")).unwrap();
        assert_eq!(r.initial, None);
        assert_eq!(
            parse(&el("<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>!!</initial-response></authenticate>"))
                .unwrap_err(),
            Failure::MalformedRequest
        );
        assert_eq!(
            parse(&el("<authenticate xmlns='urn:xmpp:sasl:2'/>")).unwrap_err(),
            Failure::InvalidMechanism
        );
        let r = parse(&el("<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><resume xmlns='urn:xmpp:sm:3' h='x'/></authenticate>"))
            .unwrap();
        assert!(r.bad_resume && r.resume.is_none());
    }
}

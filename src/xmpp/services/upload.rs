//! `upload.<domain>`: HTTP File Upload (XEP-0363) slots. The files travel
//! over the https listener (`src/http/upload.rs`); this side hands out
//! slots, enforcing the size limit and each account's quota.

use crate::{
    store,
    xmpp::{
        modules::{
            disco::{NS_INFO, NS_ITEMS},
            BoxFuture,
        },
        router::route,
        stanza::{self, bounce, iq_payload, iq_result, Condition, StanzaError},
        xml::{elem, ElementExt},
        Server,
    },
};
use minidom::Element;
use rusqlite::params;
use std::sync::Arc;

pub const NS: &str = "urn:xmpp:http:upload:0";
/// AES-GCM tag added by OMEMO media sharing (aesgcm://).
pub const GCM_TAG: u64 = 16;

/// The `upload.<domain>` service.
pub struct Upload;

impl super::Service for Upload {
    fn name(&self) -> &'static str {
        "upload"
    }
    fn handle<'a>(&'a self, server: &'a Arc<Server>, stanza: Element) -> BoxFuture<'a, ()> {
        Box::pin(handle(server, stanza))
    }
}

async fn handle(server: &Arc<Server>, st: Element) {
    if st.name() != "iq" || matches!(stanza::typ(&st), "result" | "error") {
        return;
    }
    let reply = match answer(server, &st).await {
        Ok(p) => iq_result(&st, p),
        Err(e) => match bounce(&st, e, server.domain()) {
            Some(b) => b,
            None => return,
        },
    };
    route(server, reply).await;
}

async fn answer(server: &Arc<Server>, iq: &Element) -> Result<Option<Element>, StanzaError> {
    let p = iq_payload(iq)?;
    let from = stanza::from(iq).ok_or(Condition::BadRequest)?;
    let get = stanza::typ(iq) == "get";
    match (p.name(), p.ns().as_str(), get) {
        ("query", NS_INFO, true) => {
            let max = server.config.upload.max_file_size;
            Ok(Some(
                elem("query", NS_INFO)
                    .child(
                        elem("identity", NS_INFO)
                            .with("category", "store")
                            .with("type", "file")
                            .with("name", "HTTP File Upload"),
                    )
                    .child(elem("feature", NS_INFO).with("var", NS))
                    .child(elem("feature", NS_INFO).with("var", NS_INFO))
                    .child(
                        elem("x", "jabber:x:data")
                            .with("type", "result")
                            .child(
                                elem("field", "jabber:x:data")
                                    .with("var", "FORM_TYPE")
                                    .with("type", "hidden")
                                    .child(elem("value", "jabber:x:data").text_child(NS)),
                            )
                            .child(
                                elem("field", "jabber:x:data")
                                    .with("var", "max-file-size")
                                    .child(elem("value", "jabber:x:data").text_child(max.to_string())),
                            ),
                    ),
            ))
        }
        ("query", NS_ITEMS, true) => Ok(Some(elem("query", NS_ITEMS))),
        ("request", NS, true) => {
            // Only this server's own users upload here.
            if !server.is_local(from.domain().as_str()) || from.node().is_none() {
                return Err(StanzaError::new(
                    Condition::Forbidden,
                    "uploads are for this server's accounts",
                ));
            }
            slot(server, &from.to_bare().to_string(), p).await.map(Some)
        }
        _ => Err(Condition::ServiceUnavailable.into()),
    }
}

/// A file name safe to put in a URL path segment (and never used as a file path).
fn clean_name(name: &str) -> String {
    let n: String = name
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| {
            if matches!(c, '/' | '\\' | '?' | '#' | '%' | '"' | '<' | '>' | ' ') {
                '_'
            } else {
                c
            }
        })
        .take(128)
        .collect();
    if n.is_empty() || n == "." || n == ".." {
        "file".into()
    } else {
        n
    }
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn slot(server: &Arc<Server>, owner: &str, req: &Element) -> Result<Element, StanzaError> {
    let cfg = &server.config.upload;
    let size: u64 = req
        .attr("size")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StanzaError::new(Condition::BadRequest, "size is required"))?;
    let filename = clean_name(req.attr("filename").unwrap_or("file"));
    let content_type = req.attr("content-type").map(str::to_string);
    if size == 0 {
        return Err(StanzaError::new(Condition::BadRequest, "empty files are not accepted"));
    }
    if size > cfg.max_file_size + GCM_TAG {
        let mut e = StanzaError::new(Condition::NotAcceptable, "file too large");
        e.extra = Some(Box::new(
            elem("file-too-large", NS).child(elem("max-file-size", NS).text_child(cfg.max_file_size.to_string())),
        ));
        return Err(e);
    }
    let id: String = rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect();
    let (o, i, f, ct, quota) = (
        owner.to_string(),
        id.clone(),
        filename.clone(),
        content_type.clone(),
        cfg.quota,
    );
    let ok = server
        .store
        .call(move |c| {
            let used: i64 = c.query_row("SELECT COALESCE(SUM(size), 0) FROM uploads WHERE owner=?1", params![o], |r| r.get(0))?;
            if used as u64 + size > quota {
                return Ok(false);
            }
            c.execute(
                "INSERT INTO uploads (id, owner, filename, size, content_type, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![i, o, f, size as i64, ct, store::now()],
            )?;
            Ok(true)
        })
        .await
        .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
    if !ok {
        return Err(StanzaError::new(Condition::ResourceConstraint, "upload quota exceeded"));
    }
    let url = format!("{}/upload/{id}/{}", server.config.public_url(), pct(&filename));
    Ok(elem("slot", NS)
        .child(elem("put", NS).with("url", url.clone()))
        .child(elem("get", NS).with("url", url)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_escape_their_segment() {
        assert_eq!(clean_name("../../etc/passwd"), ".._.._etc_passwd");
        assert_eq!(clean_name(".."), "file");
        assert_eq!(pct("a b/ü.png"), "a%20b%2F%C3%BC.png");
    }
}

//! Account data against the real daemon, one module per job: PEP
//! (XEP-0163 on XEP-0060, incl. the OMEMO compliance sequence and
//! caps-filtered notifications), vCard with XEP-0398 conversion, private
//! XML storage, blocking (XEP-0191) and bookmarks (XEP-0048/0402). One test
//! binary, so the harness is built and linked once.

#[path = "../common/mod.rs"]
mod common;
use common::*;
use std::collections::BTreeSet;
use tokio_xmpp::parsers::{
    caps,
    disco::{DiscoInfoResult, Identity},
    hashes::Algo,
    minidom::Element,
};

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const CAPS_NODE: &str = "https://client.example/test";

mod blocking;
mod bookmarks;
mod pep;
mod private;
mod vcard;

fn is_result(iq: &Element) -> bool {
    iq.attr("type") == Some("result")
}

/// The defined condition of an error reply, and its application-specific child.
fn error_of(st: &Element) -> (String, Option<String>) {
    let e = st
        .get_child("error", "jabber:client")
        .unwrap_or_else(|| panic!("not an error: {}", to_s(st)));
    let cond = e
        .children()
        .find(|c| c.ns() == STANZAS && c.name() != "text")
        .map(|c| c.name().to_string())
        .unwrap_or_default();
    let app = e
        .children()
        .find(|c| c.ns() != STANZAS)
        .map(|c| format!("{}#{}", c.ns(), c.name()));
    (cond, app)
}

fn to_s(e: &Element) -> String {
    String::from(e)
}

fn publish_options(fields: &[(&str, &str)]) -> String {
    if fields.is_empty() {
        return String::new();
    }
    let f: String = fields
        .iter()
        .map(|(k, v)| format!("<field var='{k}'><value>{v}</value></field>"))
        .collect();
    format!(
        "<publish-options><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         {f}</x></publish-options>"
    )
}

async fn publish(c: &mut TestClient, node: &str, id: &str, payload: &str, opts: &[(&str, &str)]) -> Element {
    c.iq(xml(&format!(
        "<iq xmlns='jabber:client' type='set'><pubsub xmlns='{PUBSUB}'><publish node='{node}'>\
         <item id='{id}'>{payload}</item></publish>{}</pubsub></iq>",
        publish_options(opts)
    )))
    .await
}

async fn items(c: &mut TestClient, owner: &str, node: &str, extra: &str) -> Element {
    c.iq(xml(&format!(
        "<iq xmlns='jabber:client' type='get' to='{owner}'><pubsub xmlns='{PUBSUB}'><items node='{node}' {extra}/></pubsub></iq>"
    )))
    .await
}

fn item_ids(reply: &Element) -> Vec<String> {
    reply
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .map(|i| i.children().filter_map(|c| c.attr("id").map(str::to_string)).collect())
        .unwrap_or_default()
}

async fn config_value(c: &mut TestClient, node: &str, var: &str) -> Option<String> {
    let r = c
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='get'><pubsub xmlns='{OWNER}'><configure node='{node}'/></pubsub></iq>"
        )))
        .await;
    assert!(is_result(&r), "{}", to_s(&r));
    let x = r
        .get_child("pubsub", OWNER)?
        .get_child("configure", OWNER)?
        .get_child("x", "jabber:x:data")?;
    x.children()
        .find(|f| f.attr("var") == Some(var))
        .and_then(|f| f.get_child("value", "jabber:x:data"))
        .map(|v| v.text())
}

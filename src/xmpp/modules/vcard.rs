//! vcard-temp (XEP-0054) for accounts, and the XEP-0398 conversion both
//! ways: a PHOTO set in the vCard is published as a XEP-0084 avatar, and
//! a XEP-0084 avatar published over PEP becomes the vCard's PHOTO.

use super::{account_id, internal, pep, BoxFuture, IqCtx, IqReply, IqRoute, Module, Target};
use crate::{
    store,
    xmpp::Server,
    xmpp::{
        stanza::Condition,
        xml::{elem, ElementExt},
    },
};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use jid::BareJid;
use minidom::Element;
use sha1::{Digest, Sha1};
use std::sync::Arc;

pub const NS: &str = "vcard-temp";
pub const NS_CONVERSION: &str = "urn:xmpp:pep-vcard-conversion:0";
pub const NS_AVATAR_DATA: &str = "urn:xmpp:avatar:data";
pub const NS_AVATAR_META: &str = "urn:xmpp:avatar:metadata";

pub struct VcardModule;

impl Module for VcardModule {
    fn name(&self) -> &'static str {
        "vcard"
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn account_features(&self) -> &'static [&'static str] {
        &[NS, NS_CONVERSION]
    }
    fn iqs(&self) -> &'static [IqRoute] {
        &[IqRoute {
            name: "vCard",
            ns: NS,
            target: Target::Account,
        }]
    }
    fn handle_iq<'a>(&'a self, ctx: IqCtx<'a>) -> BoxFuture<'a, IqReply> {
        Box::pin(handle(ctx))
    }
}

async fn handle(ctx: IqCtx<'_>) -> IqReply {
    let owner = ctx.to.to_bare();
    let Some(account) = account_id(ctx.server, &owner).await? else {
        return Err(Condition::ItemNotFound.into());
    };
    if !ctx.set {
        let stored = ctx
            .server
            .store
            .call(move |c| store::account_data::vcard(c, account))
            .await
            .map_err(internal)?;
        let card = stored
            .and_then(|s| s.parse::<Element>().ok())
            .unwrap_or_else(|| elem("vCard", NS));
        return Ok(Some(card));
    }
    if ctx.from.to_bare() != owner {
        return Err(Condition::Forbidden.into());
    }
    let card = ctx.payload.clone();
    let xml = card.to_xml();
    ctx.server
        .store
        .call(move |c| store::account_data::set_vcard(c, account, &xml))
        .await
        .map_err(internal)?;
    photo_to_avatar(ctx.server, &owner, account, &card).await;
    Ok(None)
}

/// The PHOTO of a vCard as (type, bytes).
fn photo(card: &Element) -> Option<(String, Vec<u8>)> {
    let p = card.get_child("PHOTO", NS)?;
    let bin = p.get_child("BINVAL", NS)?.text();
    let clean: String = bin.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = B64.decode(clean).ok()?;
    if bytes.is_empty() {
        return None;
    }
    let typ = p
        .get_child("TYPE", NS)
        .map(|t| t.text().trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "image/png".into());
    Some((typ, bytes))
}

/// XEP-0398 §4.2: a vCard PHOTO is published as XEP-0084 data + metadata.
async fn photo_to_avatar(server: &Arc<Server>, owner: &BareJid, account: i64, card: &Element) {
    let Some((typ, bytes)) = photo(card) else {
        return;
    };
    let id: String = Sha1::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let data = elem("data", NS_AVATAR_DATA).text_child(B64.encode(&bytes));
    let meta = elem("metadata", NS_AVATAR_META).child(
        elem("info", NS_AVATAR_META)
            .with("id", id.clone())
            .with("bytes", bytes.len().to_string())
            .with("type", typ),
    );
    for (node, payload) in [(NS_AVATAR_DATA, data), (NS_AVATAR_META, meta)] {
        // A vCard is public, so a new avatar node is too; an existing node keeps its access model.
        let open = vec![("pubsub#access_model".to_string(), vec!["open".to_string()])];
        let r = pep::publish(server, owner, account, node, &id, payload.clone(), &open, false).await;
        let r = match r {
            Err(e) if e.condition == Condition::Conflict => {
                pep::publish(server, owner, account, node, &id, payload, &[], false).await
            }
            r => r,
        };
        if let Err(e) = r {
            tracing::warn!(
                condition = e.condition.name(),
                node,
                "cannot publish the vCard photo as an avatar"
            );
            return;
        }
    }
}

/// Called after every PEP publish: XEP-0398 §4.1, an avatar's metadata
/// (with its data already published) becomes the vCard's PHOTO.
pub async fn after_pep_publish(server: &Arc<Server>, _owner: &BareJid, account: i64, node: &str, payload: &Element) {
    if node != NS_AVATAR_META {
        return;
    }
    let info = payload.get_child("info", NS_AVATAR_META).and_then(|i| {
        Some((
            i.attr("id")?.to_string(),
            i.attr("type").unwrap_or("image/png").to_string(),
        ))
    });
    let res = server
        .store
        .call(move |c| {
            let mut card = store::account_data::vcard(c, account)?
                .and_then(|s| s.parse::<Element>().ok())
                .unwrap_or_else(|| elem("vCard", NS));
            let photo = match &info {
                Some((id, typ)) => {
                    let items = store::pep::items_by_id(c, account, NS_AVATAR_DATA, std::slice::from_ref(id))?;
                    let Some(item) = items.first() else {
                        return Ok(false);
                    };
                    let Ok(data) = item.payload.parse::<Element>() else {
                        return Ok(false);
                    };
                    Some(
                        elem("PHOTO", NS)
                            .child(elem("TYPE", NS).text_child(typ.clone()))
                            .child(elem("BINVAL", NS).text_child(data.text().trim().to_string())),
                    )
                }
                None => None,
            };
            card.remove_child("PHOTO", NS);
            if let Some(p) = photo {
                card.append_child(p);
            }
            store::account_data::set_vcard(c, account, &card.to_xml())?;
            Ok(true)
        })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "cannot copy an avatar into the vCard");
    }
}

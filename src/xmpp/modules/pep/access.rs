//! Who may see a node: the access models (open, presence, roster,
//! whitelist) against the requester's roster row, and disco#items.

use super::*;

/// Why a contact (with roster row `roster`, seen from the owner) may not
/// read a node; `None` when it may.
pub fn access_denied(cfg: &NodeConfig, roster: Option<&RosterItem>) -> Option<StanzaError> {
    match cfg.access_model {
        Access::Open => None,
        Access::Presence if roster.is_some_and(|r| r.sub.from()) => None,
        Access::Presence => Some(perr(Condition::NotAuthorized, Some("presence-subscription-required"))),
        Access::Roster
            if roster
                .is_some_and(|r| r.in_roster && r.groups.iter().any(|g| cfg.roster_groups_allowed.contains(g))) =>
        {
            None
        }
        Access::Roster => Some(perr(Condition::NotAuthorized, Some("not-in-roster-group"))),
        Access::Whitelist => Some(perr(Condition::NotAllowed, Some("closed-node"))),
    }
}

/// disco#items of an account: the nodes the requester may see.
pub async fn disco_items(server: &Arc<Server>, from: &Jid, owner: &BareJid) -> Vec<Element> {
    let Ok(Some(account)) = account_id(server, owner).await else {
        return vec![];
    };
    let requester = from.to_bare();
    let self_ = requester == *owner;
    let res = server
        .store
        .call(move |c| {
            let roster = store::roster::get(c, account, &requester.to_string())?;
            Ok(store::pep::nodes(c, account)?
                .into_iter()
                .filter(|(_, cfg)| self_ || access_denied(cfg, roster.as_ref()).is_none())
                .map(|(n, _)| n)
                .collect::<Vec<_>>())
        })
        .await
        .unwrap_or_default();
    res.into_iter()
        .map(|n| {
            elem("item", crate::xmpp::modules::disco::NS_ITEMS)
                .with("jid", owner.to_string())
                .with("node", n)
        })
        .collect()
}

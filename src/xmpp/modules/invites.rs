//! XEP-0401 easy user onboarding, as Prosody's mod_invites does it: the
//! ad-hoc commands `urn:xmpp:invite#invite` (any local user: an invitation
//! to become their contact, which can also create an account when
//! `registration.user_invites` allows) and `urn:xmpp:invite#create-account`
//! (administrators, or everyone with `registration.user_account_invites`),
//! each answering with the landing page URL, the `xmpp:` URI and the expiry;
//! a per-user quota of unused invitations; XEP-0379 pre-authenticated
//! subscriptions (a `<preauth/>` in a subscription request to the inviter
//! approves it and asks back, for a mutual subscription); and the roster
//! push that tells the inviter's clients about an account made with their
//! invitation. The accounts and their roster rows are made together by
//! `store::invites::sign_up` (in-band registration in [`super::register`],
//! or the invitation page).

use super::{
    adhoc::{self, Command},
    BoxFuture, Hook, IqCtx, IqReply, Module,
};
use crate::{
    config::RegistrationMode,
    store::{
        self,
        invites::NewInvite,
        roster::{Item, Sub},
    },
    xmpp::{
        modules::register::NS_PARS,
        router::route,
        sessions::SessionHandle,
        stanza::{self, Condition, Stanza, StanzaError},
        xml::{elem, ElementExt, NS_CLIENT},
        Server,
    },
};
use jid::{BareJid, Jid};
use minidom::Element;
use std::sync::Arc;

/// XEP-0401: an invitation to become the requester's contact.
pub const NODE_INVITE: &str = "urn:xmpp:invite#invite";
/// XEP-0401: an invitation to create an account.
pub const NODE_CREATE_ACCOUNT: &str = "urn:xmpp:invite#create-account";

pub struct Invites;

impl Module for Invites {
    fn name(&self) -> &'static str {
        "invites"
    }
    fn commands(&self, server: &Server) -> Vec<Command> {
        vec![
            Command {
                node: NODE_INVITE,
                name: "Invite someone to be your contact",
                admin_only: false,
            },
            Command {
                node: NODE_CREATE_ACCOUNT,
                name: "Create an account invitation",
                admin_only: !server.config.registration.user_account_invites,
            },
        ]
    }
    fn run_command<'a>(&'a self, ctx: IqCtx<'a>, node: &'a str) -> BoxFuture<'a, IqReply> {
        Box::pin(async move { create(&ctx, node).await.map(Some) })
    }
    fn hooks(&self) -> &'static [Hook] {
        &[Hook::Intercept, Hook::Available]
    }
    fn intercept<'a>(&'a self, server: &'a Arc<Server>, stanza: &'a Stanza) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            preauth_subscription(server, stanza.el(), &stanza.from, &stanza.to).await;
            // Never consumed: a pre-approved request is answered by the
            // subscription state machine; an invalid token leaves a plain request.
            false
        })
    }
    fn available(&self, server: &Arc<Server>, session: &Arc<SessionHandle>) {
        let Some(user) = session.jid.node().map(|n| n.to_string()) else {
            return;
        };
        let server = server.clone();
        tokio::spawn(async move { tell_inviters(&server, &user).await });
    }
}

/// Run one of the two commands for the local user `ctx.from`.
async fn create(ctx: &IqCtx<'_>, node: &str) -> Result<Element, StanzaError> {
    let server = ctx.server;
    let reg = &server.config.registration;
    let user = ctx.from.node().map(|n| n.to_string()).ok_or(Condition::Forbidden)?;
    let creator = ctx.from.to_bare().to_string();
    let contact_invite = node == NODE_INVITE;
    let registration_open = reg.mode != RegistrationMode::Closed;
    let allow_registration = !contact_invite || reg.user_invites;
    let (ttl, quota) = (reg.invite_expiry.get().as_secs() as i64, reg.invites_per_user);
    let (u, c) = (user.clone(), creator.clone());
    let made = server
        .store
        .call(move |db| {
            let tx = db.transaction()?;
            let admin = store::accounts::get(&tx, &u)?.is_some_and(|a| a.is_admin);
            let open = store::invites::outstanding_by(&tx, &c)?;
            if !admin && open >= quota {
                return Ok(Err(open));
            }
            let token = store::invites::create_with(
                &tx,
                &NewInvite {
                    ttl_secs: ttl,
                    uses: 1,
                    is_admin: false,
                    creator: Some(&c),
                    contact: contact_invite.then_some(u.as_str()),
                    allow_registration,
                },
            )?;
            let invite = store::invites::lookup(&tx, &token)?;
            tx.commit()?;
            Ok(Ok((token, invite)))
        })
        .await
        .map_err(super::internal)?;
    let (token, invite) = match made {
        Ok((t, Some(i))) => (t, i),
        Ok((_, None)) => return Err(Condition::InternalServerError.into()),
        Err(open) => {
            tracing::info!(%creator, open, "invitation refused: quota reached");
            return Err(StanzaError::new(
                Condition::ResourceConstraint,
                format!(
                    "you have {open} unused invitations, the most allowed; \
                     make another when one is used or has expired"
                ),
            ));
        }
    };
    tracing::info!(%creator, invite = %invite.token_prefix, node, "invitation created");
    let expire = time::OffsetDateTime::from_unix_timestamp(invite.expires_at)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    let mut fields = vec![];
    // The page is served on an HTTPS listener, or behind a proxy that
    // `relay.public_url` names.
    if !server.config.listen.https.is_empty() || server.config.relay.public_url.is_some() {
        fields.push((
            "landing-url",
            "Invitation page (share this link)",
            format!("{}/invite/{token}", server.config.public_url()),
        ));
    }
    fields.push((
        "uri",
        "Invitation link for XMPP apps",
        invite.uri(server.domain(), &token),
    ));
    fields.push(("expire", "Valid until", expire));
    let mut notes = vec![];
    if !registration_open && allow_registration {
        notes.push((
            "warn",
            "Registration is closed on this server, so the invitation cannot create an account \
             until the operator opens it; it still works for people who already have one."
                .to_string(),
        ));
    } else if !allow_registration {
        notes.push((
            "info",
            "This invitation adds you as a contact of someone who already has an XMPP account; \
             it cannot create an account here."
                .to_string(),
        ));
    }
    Ok(adhoc::completed(
        node,
        ctx.payload.attr("sessionid"),
        "Your invitation",
        &fields,
        &notes,
    ))
}

/// XEP-0379: a subscription request carrying a token of one of `to`'s
/// contact invitations is pre-approved on `to`'s behalf (the token is used),
/// and `to` asks back, so the two end with a mutual subscription. Anything
/// else is left alone.
async fn preauth_subscription(server: &Arc<Server>, p: &Element, from: &Jid, to: &Jid) {
    if p.name() != "presence" || stanza::typ(p) != "subscribe" {
        return;
    }
    let Some(token) = p.get_child("preauth", NS_PARS).and_then(|e| e.attr("token")) else {
        return;
    };
    if to.domain().as_str() != server.domain() {
        return;
    }
    let (Some(owner), contact) = (to.node().map(|n| n.to_string()), from.to_bare()) else {
        return;
    };
    let owner_jid = to.to_bare();
    if contact == owner_jid {
        return;
    }
    let (token, o, c) = (token.to_string(), owner.clone(), contact.to_string());
    let done = server
        .store
        .call(move |db| {
            let tx = db.transaction()?;
            let Some(id) = store::accounts::id_of(&tx, &o)? else {
                return Ok(None);
            };
            if !store::invites::redeem_contact(&tx, &token, &o)? {
                return Ok(None);
            }
            let mut item = store::roster::get(&tx, id, &c)?.unwrap_or_else(|| Item::new(&c));
            item.in_roster = true;
            if !item.sub.from() {
                item.preapproved = true;
            }
            if !item.sub.to() {
                item.ask_out = true;
            }
            let ver = store::roster::put(&tx, id, &item)?;
            tx.commit()?;
            Ok(Some((item, ver)))
        })
        .await;
    match done {
        Ok(Some((item, ver))) => {
            tracing::info!(owner = %owner_jid, %contact, "subscription pre-authorised by an invitation");
            super::roster::push(server, &owner_jid, &item, ver);
            if item.ask_out && item.sub != Sub::Both {
                let ask = elem("presence", NS_CLIENT)
                    .with("type", "subscribe")
                    .with("from", owner_jid.to_string())
                    .with("to", contact.to_string());
                route(server, ask).await;
            }
        }
        Ok(None) => tracing::debug!(owner = %owner_jid, %contact, "subscription with an unusable invitation token"),
        Err(e) => tracing::error!(error = %e, "cannot use a subscription invitation"),
    }
}

/// Tell the inviters of `user` (an account made with their contact
/// invitation) about their new contact with a roster push, once: right
/// after in-band registration, or on the account's first login when it was
/// made on the invitation page.
pub async fn tell_inviters(server: &Arc<Server>, user: &str) {
    let (u, domain) = (user.to_string(), server.domain().to_string());
    let pushes = server
        .store
        .call(move |c| {
            let mut out = vec![];
            for inviter in store::invites::take_links(c, &u)? {
                let Some(id) = store::accounts::id_of(c, &inviter)? else {
                    continue;
                };
                if let Some(item) = store::roster::get(c, id, &format!("{u}@{domain}"))? {
                    out.push((inviter, item, store::roster::version(c, id)?));
                }
            }
            Ok(out)
        })
        .await;
    match pushes {
        Ok(pushes) => {
            for (inviter, item, ver) in pushes {
                if let Ok(owner) = BareJid::new(&format!("{inviter}@{}", server.domain())) {
                    super::roster::push(server, &owner, &item, ver);
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read an invitation's roster link"),
    }
}

//! In-band registration (XEP-0077) and pre-authenticated registration with
//! invitation tokens (XEP-0445, announced as `urn:xmpp:ibr-token:0` and the
//! older `urn:xmpp:invite`). Before authentication the c2s layer calls
//! [`pre_auth`]; afterwards this module handles password changes and
//! account removal. Invitations themselves are [`super::invites`].

use super::{BoxFuture, IqCtx, IqReply, IqRoute, Module, Target};
use crate::{
    config::RegistrationMode,
    store::{self, invites::SignUp},
    xmpp::Server,
    xmpp::{
        stanza::{iq_payload, Condition, StanzaError},
        xml::{elem, ElementExt},
    },
};
use minidom::Element;
use std::sync::Arc;

pub const NS: &str = "jabber:iq:register";
pub const NS_FEATURE: &str = "http://jabber.org/features/iq-register";
pub const NS_PARS: &str = "urn:xmpp:pars:0";
pub const NS_INVITE_FEATURE: &str = "urn:xmpp:invite";
/// XEP-0445's stream feature: registration takes a `<preauth/>` token
/// (Monal sends its token only when this is offered).
pub const NS_IBR_TOKEN: &str = "urn:xmpp:ibr-token:0";

pub struct Register;

impl Module for Register {
    fn name(&self) -> &'static str {
        "register"
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn iqs(&self) -> &'static [IqRoute] {
        &[
            IqRoute {
                name: "query",
                ns: NS,
                target: Target::Server,
            },
            IqRoute {
                name: "query",
                ns: NS,
                target: Target::OwnAccount,
            },
        ]
    }
    fn handle_iq<'a>(&'a self, ctx: IqCtx<'a>) -> BoxFuture<'a, IqReply> {
        Box::pin(async move {
            let user = ctx.from.node().map(|n| n.to_string()).unwrap_or_default();
            if !ctx.set {
                return Ok(Some(
                    elem("query", NS)
                        .child(elem("registered", NS))
                        .child(elem("username", NS).text_child(user)),
                ));
            }
            if ctx.payload.get_child("remove", NS).is_some() {
                let u = user.clone();
                ctx.server
                    .store
                    .call(move |c| store::accounts::delete(c, &u))
                    .await
                    .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
                tracing::info!(account = %user, "account removed by its owner");
                // Sessions end when they next touch the account; close them now.
                for s in ctx.server.sessions.of(&ctx.from.to_bare()) {
                    let _ = s.tx.send(crate::xmpp::sessions::ToSession::Replaced);
                }
                return Ok(None);
            }
            let given_user = ctx.payload.get_child("username", NS).map(|e| e.text());
            let password = ctx.payload.get_child("password", NS).map(|e| e.text());
            let Some(password) = password.filter(|p| !p.is_empty()) else {
                return Err(StanzaError::new(Condition::BadRequest, "a password is required"));
            };
            if given_user
                .as_deref()
                .is_some_and(|g| store::accounts::normalize(g).ok().as_deref() != Some(user.as_str()))
            {
                return Err(StanzaError::new(
                    Condition::NotAuthorized,
                    "you can change only your own password",
                ));
            }
            let u = user.clone();
            let ok = ctx
                .server
                .store
                .call(move |c| store::accounts::set_password(c, &u, &password))
                .await
                .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
            if ok {
                tracing::info!(account = %user, "password changed");
                Ok(None)
            } else {
                Err(Condition::ItemNotFound.into())
            }
        })
    }
}

/// Stream features offered before authentication: in-band registration,
/// and (as Prosody's mod_invites_register does) both invitation features
/// wherever registration is possible: in "open" mode a token still makes
/// the new account the inviter's contact.
#[cfg(test)]
pub fn pre_auth_features(mode: RegistrationMode) -> Vec<Element> {
    match mode {
        RegistrationMode::Closed => vec![],
        RegistrationMode::Open | RegistrationMode::Invite => vec![
            elem("register", NS_FEATURE),
            elem("register", NS_IBR_TOKEN),
            elem("register", NS_INVITE_FEATURE),
        ],
    }
}

/// [`pre_auth_features`] written out.
pub fn write_pre_auth_features(mode: RegistrationMode, out: &mut String) {
    match mode {
        RegistrationMode::Closed => {}
        RegistrationMode::Open | RegistrationMode::Invite => {
            for ns in [NS_FEATURE, NS_IBR_TOKEN, NS_INVITE_FEATURE] {
                out.push_str("<register xmlns='");
                out.push_str(ns);
                out.push_str("'/>");
            }
        }
    }
}

/// Per-connection registration state before authentication.
#[derive(Default)]
pub struct PreAuthState {
    /// A token accepted with `<preauth/>`, used when the account is created
    /// (its expiry was checked then, XEP-0445 §4).
    pub token: Option<String>,
}

/// Answer an IQ on an unauthenticated stream: XEP-0077 registration and
/// XEP-0445 `<preauth/>`. Returns the reply payload or an error.
pub async fn pre_auth(server: &Arc<Server>, iq: &Element, state: &mut PreAuthState) -> IqReply {
    let mode = server.config.registration.mode;
    let payload = iq_payload(iq)?;
    let set = iq.attr("type") == Some("set");
    match (payload.name(), payload.ns().as_str()) {
        ("preauth", NS_PARS) if mode != RegistrationMode::Closed && set => {
            let token = payload.attr("token").unwrap_or_default().to_string();
            let t = token.clone();
            let valid = server
                .store
                .call(move |c| store::invites::is_valid(c, &t))
                .await
                .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
            if valid {
                state.token = Some(token);
                Ok(None)
            } else {
                Err(StanzaError::new(
                    Condition::ItemNotFound,
                    "the invitation is unknown, used up or expired",
                ))
            }
        }
        ("query", NS) if mode != RegistrationMode::Closed => {
            if !set {
                return Ok(Some(
                    elem("query", NS)
                        .child(elem("instructions", NS).text_child("Choose a username and password."))
                        .child(elem("username", NS))
                        .child(elem("password", NS)),
                ));
            }
            if mode == RegistrationMode::Invite && state.token.is_none() {
                return Err(StanzaError::new(
                    Condition::NotAllowed,
                    "registration on this server needs an invitation",
                ));
            }
            let username = payload.get_child("username", NS).map(|e| e.text()).unwrap_or_default();
            let password = payload.get_child("password", NS).map(|e| e.text()).unwrap_or_default();
            if username.is_empty() || password.is_empty() {
                return Err(StanzaError::new(
                    Condition::NotAcceptable,
                    "username and password are required",
                ));
            }
            if store::accounts::normalize(&username).is_err() || username.len() > 64 {
                return Err(StanzaError::new(
                    Condition::JidMalformed,
                    "that username is not allowed",
                ));
            }
            let token = state.token.clone();
            let domain = server.domain().to_string();
            let res = server
                .store
                .call(move |c| match token {
                    Some(t) => store::invites::sign_up_preauthorized(c, &domain, &username, &password, &t),
                    None => store::invites::sign_up(c, &domain, &username, &password, None),
                })
                .await
                .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
            match res {
                SignUp::Created(u) => {
                    tracing::info!(account = %u, invited = state.token.is_some(), "account registered in-band");
                    state.token = None;
                    super::invites::tell_inviters(server, &u).await;
                    Ok(None)
                }
                SignUp::UsernameTaken => Err(StanzaError::new(Condition::Conflict, "that username is taken")),
                SignUp::InvitationInvalid => Err(StanzaError::new(
                    Condition::NotAllowed,
                    "the invitation is no longer valid",
                )),
            }
        }
        _ => Err(Condition::ServiceUnavailable.into()),
    }
}

//! FAST (XEP-0484): login tokens issued inside a SASL2 success, used with
//! the one-round-trip `HT-SHA-256-NONE` mechanism, rotated and revoked.
//! A token is bound to the account, the mechanism and the client's
//! user-agent id, expires after `limits.fast_token_lifetime`, and rests
//! only as verifier data (`sasl::TokenVerifier`). Each client has two slots
//! (XEP-0484 §6.1): the token it last used and one issued but not used yet.

use super::{auth::Authenticated, sasl2};
use crate::{
    store::{self, devices::Slot},
    xmpp::{
        sasl::{self, Failure, Refused, TokenMechanism, TokenVerifier},
        xml::{elem, ElementExt},
        Server,
    },
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use minidom::Element;

/// `urn:xmpp:fast:0`.
pub const NS: &str = "urn:xmpp:fast:0";

/// Whether FAST is offered (a zero lifetime turns it off).
pub fn enabled(server: &Server) -> bool {
    !server.config.limits.fast_token_lifetime.get().is_zero()
}

/// The `<fast/>` inline feature.
#[cfg(test)]
pub fn feature() -> Element {
    let mut f = elem("fast", NS);
    for m in TokenMechanism::ALL {
        f.append_child(elem("mechanism", NS).text_child(m.name()));
    }
    f
}

/// [`feature`] written out.
pub fn write_feature(out: &mut String) {
    out.push_str("<fast xmlns='");
    out.push_str(NS);
    out.push_str("'>");
    for m in TokenMechanism::ALL {
        out.push_str("<mechanism>");
        out.push_str(m.name());
        out.push_str("</mechanism>");
    }
    out.push_str("</fast>");
}

/// The token a login used, for what follows the success.
#[derive(Debug, Clone)]
pub struct Used {
    account_id: i64,
    agent_id: String,
    slot: Slot,
    expires_at: i64,
    /// When the client's last login was recorded.
    last_seen: Option<i64>,
}

/// A client's last login is recorded at most this often (seconds) when it
/// logs in with a token that needs no change, so that such a login writes
/// nothing to the database.
const SEEN_EVERY: i64 = 3600;

/// Check an HT initial response against the client's tokens. A proof that
/// matches no token, or one that matches an expired token, is a wrong
/// credential (counted like a wrong password).
pub async fn verify(
    server: &Server,
    mechanism: TokenMechanism,
    initial: &[u8],
    agent: Option<&str>,
) -> Result<Authenticated, Refused> {
    if !enabled(server) {
        return Err(Failure::InvalidMechanism.into());
    }
    let (authcid, proof) = sasl::parse_ht(initial)?;
    // Clients send the username; accept `user@domain` of this domain too.
    let local = match authcid.rsplit_once('@') {
        Some((l, d)) if server.is_local(d) => l.to_string(),
        Some(_) => return Err(Refused::wrong_credentials()),
        None => authcid,
    };
    let Ok(username) = store::accounts::normalize(&local) else {
        return Err(Refused::wrong_credentials());
    };
    // Tokens are found through the installation they were issued to;
    // without its id no token can be checked, so nothing was guessed.
    let Some(agent) = agent.map(str::to_string) else {
        return Err(Failure::NotAuthorized.into());
    };
    let u = username.clone();
    let found = server
        .store
        .call(move |c| {
            let Some(id) = store::accounts::id_of(c, &u)? else {
                return Ok(None);
            };
            let tokens = store::devices::tokens(c, id, &agent)?;
            let seen = store::devices::last_seen(c, id, &agent)?;
            Ok(Some((id, tokens, agent, seen)))
        })
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "FAST token lookup failed");
            Refused::from(Failure::Aborted)
        })?;
    let Some((account_id, tokens, agent_id, last_seen)) = found else {
        return Err(Refused::wrong_credentials());
    };
    // Every stored token is compared, in constant time each, so the time
    // taken does not tell which slot matched.
    let matching = tokens
        .into_iter()
        .filter(|t| t.mechanism == mechanism.name())
        .filter(|t| {
            TokenVerifier {
                verifier: t.verifier.clone(),
                responder: t.responder.clone(),
            }
            .matches(&proof)
        })
        .collect::<Vec<_>>();
    let Some(t) = matching.into_iter().next() else {
        return Err(Refused::wrong_credentials());
    };
    if t.expires_at <= store::now() {
        return Err(Refused {
            condition: Failure::CredentialsExpired,
            ..Refused::wrong_credentials()
        });
    }
    Ok(Authenticated {
        username,
        additional: Some(t.responder),
        token: Some(Used {
            account_id,
            agent_id,
            slot: t.slot,
            expires_at: t.expires_at,
            last_seen,
        }),
    })
}

/// After a SASL2 success: remember the client, move a used `new` token to
/// `current`, honour `<fast invalidate/>`, and issue a token when the client
/// asked for one or the one it used is in the second half of its life.
/// Returns the `<token/>` for the success element. One store call.
pub async fn settle(server: &Server, username: &str, req: &sasl2::Request, used: Option<Used>) -> Option<Element> {
    let agent = req.agent.clone();
    let agent_id = agent.id.clone()?;
    let lifetime = server.config.limits.fast_token_lifetime.get().as_secs() as i64;
    let wanted = req
        .request_token
        .as_deref()
        .and_then(TokenMechanism::from_name)
        .filter(|_| enabled(server));
    let invalidate = req.fast_invalidate;
    // The usual reconnect of a phone: its current token, not due for
    // rotation, its last login recorded recently. Nothing to write.
    let now = store::now();
    let unchanged = used.as_ref().is_some_and(|u| {
        !invalidate
            && wanted.is_none()
            && u.slot == Slot::Current
            && u.expires_at - now >= lifetime / 2
            && u.last_seen.is_some_and(|t| now - t < SEEN_EVERY)
    });
    if unchanged {
        return None;
    }
    let username = username.to_string();
    let r = server
        .store
        .call(move |c| {
            let Some(account_id) = store::accounts::id_of(c, &username)? else {
                return Ok(None);
            };
            store::devices::seen(
                c,
                account_id,
                &agent_id,
                agent.software.as_deref(),
                agent.device.as_deref(),
            )?;
            let mut issue = wanted;
            if let Some(u) = &used {
                debug_assert_eq!((u.account_id, u.agent_id.as_str()), (account_id, agent_id.as_str()));
                if invalidate {
                    store::devices::delete_tokens(c, account_id, &agent_id)?;
                } else {
                    if u.slot == Slot::New {
                        store::devices::promote(c, account_id, &agent_id)?;
                    }
                    // Due for rotation: less than half a lifetime left.
                    if issue.is_none() && u.expires_at - store::now() < lifetime / 2 {
                        issue = Some(TokenMechanism::HtSha256None);
                    }
                }
            }
            let Some(m) = issue else { return Ok(None) };
            let token = new_token();
            let v = TokenVerifier::of(m, &token);
            let expires = store::now() + lifetime;
            store::devices::put_new(c, account_id, &agent_id, m.name(), &v.verifier, &v.responder, expires)?;
            Ok(Some((token, expires)))
        })
        .await;
    match r {
        Ok(Some((token, expires))) => Some(elem("token", NS).with("expiry", xep0082(expires)).with("token", token)),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "could not record the client or its FAST token");
            None
        }
    }
}

/// 256 random bits, URL-safe base64.
fn new_token() -> String {
    let raw: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(raw)
}

/// A Unix time as an XEP-0082 DateTime.
fn xep0082(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_dates() {
        let a = new_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, new_token());
        assert_eq!(xep0082(0), "1970-01-01T00:00:00Z");
    }
}

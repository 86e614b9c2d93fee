//! The `invites` table: registration tokens (XEP-0401 / XEP-0445). Only a
//! SHA-256 of each token is stored.

use super::{now, Result};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct Invite {
    pub token_prefix: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub uses_left: i64,
    pub is_admin: bool,
    /// Bare JID of the account that made it; `None`: the command line.
    pub creator: Option<String>,
    /// A contact invitation: the username whose contact the invitee becomes.
    pub contact: Option<String>,
    /// Whether the token can create an account.
    pub allow_registration: bool,
}

impl Invite {
    /// The `xmpp:` URI of XEP-0401/0445 for this invitation and its token:
    /// `xmpp:user@domain?roster;preauth=…[;ibr=y]` for a contact invitation,
    /// `xmpp:domain?register;preauth=…;ibr=y` for an account invitation.
    pub fn uri(&self, domain: &str, token: &str) -> String {
        match &self.contact {
            Some(user) => format!(
                "xmpp:{user}@{domain}?roster;preauth={token}{}",
                if self.allow_registration { ";ibr=y" } else { "" }
            ),
            None => format!("xmpp:{domain}?register;preauth={token};ibr=y"),
        }
    }
}

const COLS: &str = "note, created_at, expires_at, uses_left, is_admin, creator, contact, allow_registration";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Invite> {
    Ok(Invite {
        token_prefix: r.get(0)?,
        created_at: r.get(1)?,
        expires_at: r.get(2)?,
        uses_left: r.get(3)?,
        is_admin: r.get(4)?,
        creator: r.get(5)?,
        contact: r.get(6)?,
        allow_registration: r.get(7)?,
    })
}

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// What a new invitation allows.
#[derive(Debug, Clone, Default)]
pub struct NewInvite<'a> {
    pub ttl_secs: i64,
    pub uses: u32,
    /// The account it creates is an administrator.
    pub is_admin: bool,
    /// Bare JID of the account making it (`None`: the command line).
    pub creator: Option<&'a str>,
    /// Username whose contact the invitee becomes (a contact invitation).
    pub contact: Option<&'a str>,
    pub allow_registration: bool,
}

/// A new account invitation from the command line: 160 bits of randomness, URL-safe.
pub fn create(c: &Connection, ttl_secs: i64, uses: u32, is_admin: bool) -> Result<String> {
    create_with(
        c,
        &NewInvite {
            ttl_secs,
            uses,
            is_admin,
            allow_registration: true,
            ..NewInvite::default()
        },
    )
}

/// A new invitation; returns its token (only its hash is stored).
pub fn create_with(c: &Connection, new: &NewInvite<'_>) -> Result<String> {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    let raw: [u8; 20] = rand::random();
    let token = URL_SAFE_NO_PAD.encode(raw);
    let t = now();
    c.execute(
        "INSERT INTO invites (token_hash, created_at, expires_at, uses_left, is_admin, note, creator, contact, allow_registration)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            hash(&token),
            t,
            t + new.ttl_secs,
            new.uses,
            new.is_admin,
            &token[..6],
            new.creator,
            new.contact,
            new.allow_registration
        ],
    )?;
    Ok(token)
}

/// How many of `creator`'s invitations can still be used (the quota counts these).
pub fn outstanding_by(c: &Connection, creator: &str) -> Result<u32> {
    Ok(c.query_row(
        "SELECT COUNT(*) FROM invites WHERE creator=?1 AND uses_left > 0 AND expires_at > ?2",
        params![creator, now()],
        |r| r.get(0),
    )?)
}

/// What using a token for registration gave.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Redeemed {
    is_admin: bool,
    /// The inviter of a contact invitation.
    contact: Option<String>,
}

/// Use a token once for registration. `check_expiry` is false when the
/// token was checked earlier in the same stream (XEP-0445: expiry is checked
/// at `<preauth/>` only).
fn redeem(c: &Connection, token: &str, check_expiry: bool) -> Result<Option<Redeemed>> {
    let not_before = if check_expiry { now() } else { i64::MIN };
    Ok(c.query_row(
        "UPDATE invites SET uses_left = uses_left - 1
         WHERE token_hash=?1 AND uses_left > 0 AND expires_at > ?2 AND allow_registration = 1
         RETURNING is_admin, contact",
        params![hash(token), not_before],
        |r| {
            Ok(Redeemed {
                is_admin: r.get(0)?,
                contact: r.get(1)?,
            })
        },
    )
    .optional()?)
}

/// Whether a token would be accepted for registration, without using it.
pub fn is_valid(c: &Connection, token: &str) -> Result<bool> {
    Ok(lookup(c, token)?.is_some_and(|i| i.allow_registration))
}

/// The invitation behind a token, if it can still be used.
pub fn lookup(c: &Connection, token: &str) -> Result<Option<Invite>> {
    Ok(c.query_row(
        &format!("SELECT {COLS} FROM invites WHERE token_hash=?1 AND uses_left > 0 AND expires_at > ?2"),
        params![hash(token), now()],
        row,
    )
    .optional()?)
}

/// Use a contact invitation of `owner` for a subscription request
/// (XEP-0379): true when the token was `owner`'s, valid, and is now used.
pub fn redeem_contact(c: &Connection, token: &str, owner: &str) -> Result<bool> {
    Ok(c.query_row(
        "UPDATE invites SET uses_left = uses_left - 1
         WHERE token_hash=?1 AND contact=?2 AND uses_left > 0 AND expires_at > ?3 RETURNING 1",
        params![hash(token), owner, now()],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

/// How an attempt to create an account ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignUp {
    /// The account exists now, under this normalised username.
    Created(String),
    UsernameTaken,
    /// The token is unknown, used up or expired.
    InvitationInvalid,
}

/// Create an account on `domain`, using one use of `token` when given, in one
/// transaction: a taken username does not use up the invitation, and an
/// invitation is never used without an account to show for it. A contact
/// invitation also makes the new account and the inviter contacts (roster
/// items with subscription `both` on each side) and records the link for
/// the inviter's roster push. Shared by in-band registration and the
/// invitation web page.
pub fn sign_up(
    c: &mut Connection,
    domain: &str,
    username: &str,
    password: &str,
    token: Option<&str>,
) -> Result<SignUp> {
    sign_up_inner(c, domain, username, password, token, true)
}

/// [`sign_up`] with a token the stream already checked with `<preauth/>`:
/// it must still be unused, but may have expired since (XEP-0445 §4).
pub fn sign_up_preauthorized(
    c: &mut Connection,
    domain: &str,
    username: &str,
    password: &str,
    token: &str,
) -> Result<SignUp> {
    sign_up_inner(c, domain, username, password, Some(token), false)
}

fn sign_up_inner(
    c: &mut Connection,
    domain: &str,
    username: &str,
    password: &str,
    token: Option<&str>,
    check_expiry: bool,
) -> Result<SignUp> {
    let tx = c.transaction()?;
    if super::accounts::get(&tx, username)?.is_some() {
        return Ok(SignUp::UsernameTaken);
    }
    let redeemed = match token {
        Some(t) => match redeem(&tx, t, check_expiry)? {
            Some(r) => Some(r),
            None => return Ok(SignUp::InvitationInvalid),
        },
        None => None,
    };
    let admin = redeemed.as_ref().is_some_and(|r| r.is_admin);
    let id = super::accounts::create(&tx, username, password, admin)?;
    let name = super::accounts::normalize(username)?;
    if let Some(inviter) = redeemed.and_then(|r| r.contact) {
        link(&tx, domain, id, &name, &inviter)?;
    }
    tx.commit()?;
    Ok(SignUp::Created(name))
}

/// Make the new account `name` (id `id`) and `inviter` mutual contacts on
/// `domain`, and remember to tell the inviter's clients. An inviter whose
/// account is gone makes no link.
fn link(c: &Connection, domain: &str, id: i64, name: &str, inviter: &str) -> Result<()> {
    use super::roster::{self, Item, Sub};
    let Some(inviter_id) = super::accounts::id_of(c, inviter)? else {
        return Ok(());
    };
    if inviter_id == id {
        return Ok(());
    }
    let both = |user: &str| Item {
        sub: Sub::Both,
        ..Item::new(&format!("{user}@{domain}"))
    };
    roster::put(c, id, &both(inviter))?;
    roster::put(c, inviter_id, &both(name))?;
    c.execute(
        "INSERT OR IGNORE INTO invite_links (account_id, inviter) VALUES (?1, ?2)",
        params![id, inviter],
    )?;
    Ok(())
}

/// The inviters whose clients have not yet been told about `username` (see
/// [`sign_up`]); taking them clears the record. Called on every login, so
/// the common case (nothing recorded) is a read only.
pub fn take_links(c: &Connection, username: &str) -> Result<Vec<String>> {
    let Some(id) = super::accounts::id_of(c, username)? else {
        return Ok(vec![]);
    };
    let mut st = c.prepare_cached("SELECT inviter FROM invite_links WHERE account_id=?1")?;
    let inviters: Vec<String> = st
        .query_map(params![id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if !inviters.is_empty() {
        c.execute("DELETE FROM invite_links WHERE account_id=?1", params![id])?;
    }
    Ok(inviters)
}

pub fn list(c: &Connection) -> Result<Vec<Invite>> {
    let mut st = c.prepare(&format!("SELECT {COLS} FROM invites ORDER BY created_at"))?;
    let rows = st.query_map([], row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Revoke every invite whose token starts with `prefix` (at least 6 characters).
pub fn revoke(c: &Connection, prefix: &str) -> Result<usize> {
    Ok(c.execute(
        "DELETE FROM invites WHERE note = ?1",
        params![&prefix[..prefix.len().min(6)]],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn single_use_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_in(dir.path()).unwrap();
        s.blocking(|c| {
            let t = create(c, 3600, 1, false)?;
            assert!(t.len() >= 27, "160 bits base64url");
            assert!(is_valid(c, &t)?);
            assert!(redeem(c, &t, true)?.is_some_and(|r| !r.is_admin && r.contact.is_none()));
            assert_eq!(redeem(c, &t, true)?, None, "single use");
            let e = create(c, -1, 5, false)?;
            assert_eq!(redeem(c, &e, true)?, None, "expired");
            assert!(redeem(c, &e, false)?.is_some(), "checked earlier in the stream");
            assert_eq!(redeem(c, "bogus", false)?, None);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn sign_up_uses_the_invitation_only_when_the_account_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_in(dir.path()).unwrap();
        s.blocking(|c| {
            crate::store::accounts::create(c, "taken", "secret-pw", false)?;
            let t = create(c, 3600, 1, true)?;
            assert_eq!(lookup(c, &t)?.map(|i| i.uses_left), Some(1));
            assert_eq!(sign_up(c, "d", "Taken", "pw-12345", Some(&t))?, SignUp::UsernameTaken);
            assert!(is_valid(c, &t)?, "a taken username does not use up the invitation");
            assert_eq!(
                sign_up(c, "d", "Newbie", "pw-12345", Some(&t))?,
                SignUp::Created("newbie".into())
            );
            assert!(crate::store::accounts::get(c, "newbie")?.unwrap().is_admin);
            assert_eq!(
                sign_up(c, "d", "other", "pw-12345", Some(&t))?,
                SignUp::InvitationInvalid
            );
            assert!(crate::store::accounts::get(c, "other")?.is_none());
            assert!(lookup(c, &t)?.is_none());
            assert_eq!(
                sign_up(c, "d", "open", "pw-12345", None)?,
                SignUp::Created("open".into())
            );
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn a_contact_invitation_makes_mutual_contacts_with_the_account() {
        use crate::store::roster::{self, Sub};
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_in(dir.path()).unwrap();
        s.blocking(|c| {
            let alice = crate::store::accounts::create(c, "alice", "pw-alice", false)?;
            let new = |allow_registration| NewInvite {
                ttl_secs: 3600,
                uses: 1,
                creator: Some("alice@d"),
                contact: Some("alice"),
                allow_registration,
                ..NewInvite::default()
            };
            let t = create_with(c, &new(true))?;
            let i = lookup(c, &t)?.unwrap();
            assert_eq!(i.uri("d", &t), format!("xmpp:alice@d?roster;preauth={t};ibr=y"));
            assert_eq!(
                (i.creator.as_deref(), i.contact.as_deref()),
                (Some("alice@d"), Some("alice"))
            );
            assert_eq!(outstanding_by(c, "alice@d")?, 1);
            assert_eq!(
                sign_up_preauthorized(c, "d", "bob", "pw-bob-1", &t)?,
                SignUp::Created("bob".into())
            );
            assert_eq!(outstanding_by(c, "alice@d")?, 0);
            let bob = crate::store::accounts::id_of(c, "bob")?.unwrap();
            assert_eq!(roster::get(c, bob, "alice@d")?.map(|i| i.sub), Some(Sub::Both));
            assert_eq!(roster::get(c, alice, "bob@d")?.map(|i| i.sub), Some(Sub::Both));
            assert_eq!(take_links(c, "bob")?, vec!["alice".to_string()]);
            assert!(take_links(c, "bob")?.is_empty(), "told once");

            // Without registration: only a subscription (XEP-0379) can use it.
            let t = create_with(c, &new(false))?;
            assert!(!is_valid(c, &t)?);
            assert_eq!(
                sign_up(c, "d", "carol", "pw-carol", Some(&t))?,
                SignUp::InvitationInvalid
            );
            assert!(!redeem_contact(c, &t, "bob")?, "only for alice");
            assert!(redeem_contact(c, &t, "alice")?);
            assert!(!redeem_contact(c, &t, "alice")?, "single use");
            Ok(())
        })
        .unwrap();
    }
}

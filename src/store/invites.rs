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
}

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A new token: 160 bits of randomness, URL-safe.
pub fn create(c: &Connection, ttl_secs: i64, uses: u32, is_admin: bool) -> Result<String> {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    let raw: [u8; 20] = rand::random();
    let token = URL_SAFE_NO_PAD.encode(raw);
    let t = now();
    c.execute(
        "INSERT INTO invites (token_hash, created_at, expires_at, uses_left, is_admin, note) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![hash(&token), t, t + ttl_secs, uses, is_admin, &token[..6]],
    )?;
    Ok(token)
}

/// Use a token once. Returns `Some(is_admin)` when it was valid.
pub fn redeem(c: &Connection, token: &str) -> Result<Option<bool>> {
    let h = hash(token);
    let admin: Option<bool> = c
        .query_row(
            "UPDATE invites SET uses_left = uses_left - 1 WHERE token_hash=?1 AND uses_left > 0 AND expires_at > ?2 RETURNING is_admin",
            params![h, now()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(admin)
}

/// Whether a token would be accepted, without using it.
pub fn is_valid(c: &Connection, token: &str) -> Result<bool> {
    Ok(c.query_row(
        "SELECT 1 FROM invites WHERE token_hash=?1 AND uses_left > 0 AND expires_at > ?2",
        params![hash(token), now()],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

/// The invitation behind a token, if it can still be used.
pub fn lookup(c: &Connection, token: &str) -> Result<Option<Invite>> {
    Ok(c.query_row(
        "SELECT note, created_at, expires_at, uses_left, is_admin FROM invites
         WHERE token_hash=?1 AND uses_left > 0 AND expires_at > ?2",
        params![hash(token), now()],
        |r| {
            Ok(Invite {
                token_prefix: r.get(0)?,
                created_at: r.get(1)?,
                expires_at: r.get(2)?,
                uses_left: r.get(3)?,
                is_admin: r.get(4)?,
            })
        },
    )
    .optional()?)
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

/// Create an account, using one use of `token` when given, in one
/// transaction: a taken username does not use up the invitation, and an
/// invitation is never used without an account to show for it. Shared by
/// in-band registration and the invitation web page.
pub fn sign_up(c: &mut Connection, username: &str, password: &str, token: Option<&str>) -> Result<SignUp> {
    let tx = c.transaction()?;
    if super::accounts::get(&tx, username)?.is_some() {
        return Ok(SignUp::UsernameTaken);
    }
    let admin = match token {
        Some(t) => match redeem(&tx, t)? {
            Some(a) => a,
            None => return Ok(SignUp::InvitationInvalid),
        },
        None => false,
    };
    super::accounts::create(&tx, username, password, admin)?;
    tx.commit()?;
    Ok(SignUp::Created(super::accounts::normalize(username)?))
}

pub fn list(c: &Connection) -> Result<Vec<Invite>> {
    let mut st =
        c.prepare("SELECT note, created_at, expires_at, uses_left, is_admin FROM invites ORDER BY created_at")?;
    let rows = st.query_map([], |r| {
        Ok(Invite {
            token_prefix: r.get(0)?,
            created_at: r.get(1)?,
            expires_at: r.get(2)?,
            uses_left: r.get(3)?,
            is_admin: r.get(4)?,
        })
    })?;
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
            assert_eq!(redeem(c, &t)?, Some(false));
            assert_eq!(redeem(c, &t)?, None, "single use");
            let e = create(c, -1, 5, false)?;
            assert_eq!(redeem(c, &e)?, None, "expired");
            assert_eq!(redeem(c, "bogus")?, None);
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
            assert_eq!(sign_up(c, "Taken", "pw-12345", Some(&t))?, SignUp::UsernameTaken);
            assert!(is_valid(c, &t)?, "a taken username does not use up the invitation");
            assert_eq!(
                sign_up(c, "Newbie", "pw-12345", Some(&t))?,
                SignUp::Created("newbie".into())
            );
            assert!(crate::store::accounts::get(c, "newbie")?.unwrap().is_admin);
            assert_eq!(sign_up(c, "other", "pw-12345", Some(&t))?, SignUp::InvitationInvalid);
            assert!(crate::store::accounts::get(c, "other")?.is_none());
            assert!(lookup(c, &t)?.is_none());
            assert_eq!(sign_up(c, "open", "pw-12345", None)?, SignUp::Created("open".into()));
            Ok(())
        })
        .unwrap();
    }
}

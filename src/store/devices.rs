//! The `user_agents` and `fast_tokens` tables: the clients an account logs
//! in from (XEP-0388 `<user-agent id=…>`) and the FAST tokens (XEP-0484)
//! issued to them. A token rests only as verifier data derived from it
//! (`xmpp::sasl::TokenVerifier`); this file never sees a token.

use super::{now, Result};
use rusqlite::{params, Connection, OptionalExtension};

/// One client installation of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub agent_id: String,
    pub software: Option<String>,
    pub device: Option<String>,
    pub first_seen: i64,
    pub last_seen: i64,
    /// The latest expiry among its FAST tokens, if it has any.
    pub token_expires: Option<i64>,
}

/// The two token slots of XEP-0484 §6.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The token the client last logged in with.
    Current,
    /// Issued, not used yet.
    New,
}

impl Slot {
    fn as_str(self) -> &'static str {
        match self {
            Slot::Current => "current",
            Slot::New => "new",
        }
    }
}

/// A stored token: what it is bound to and what verifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub slot: Slot,
    pub mechanism: String,
    pub verifier: Vec<u8>,
    pub responder: Vec<u8>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// Texts a client may send about itself are kept short.
const MAX_TEXT: usize = 200;

fn short(s: Option<&str>) -> Option<String> {
    s.map(|s| s.chars().take(MAX_TEXT).collect())
}

/// Remember that `agent_id` logged in to the account now.
pub fn seen(
    c: &Connection,
    account_id: i64,
    agent_id: &str,
    software: Option<&str>,
    device: Option<&str>,
) -> Result<()> {
    let t = now();
    c.execute(
        "INSERT INTO user_agents (account_id, agent_id, software, device, first_seen, last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT (account_id, agent_id) DO UPDATE SET
           software = COALESCE(excluded.software, software),
           device = COALESCE(excluded.device, device),
           last_seen = excluded.last_seen",
        params![account_id, agent_id, short(software), short(device), t],
    )?;
    Ok(())
}

/// When the client last logged in (as [`seen`] recorded it).
pub fn last_seen(c: &Connection, account_id: i64, agent_id: &str) -> Result<Option<i64>> {
    Ok(
        c.prepare_cached("SELECT last_seen FROM user_agents WHERE account_id=?1 AND agent_id=?2")?
            .query_row(params![account_id, agent_id], |r| r.get(0))
            .optional()?,
    )
}

/// The tokens of one client, the new slot first (XEP-0484 checks it first).
pub fn tokens(c: &Connection, account_id: i64, agent_id: &str) -> Result<Vec<Token>> {
    let mut st = c.prepare_cached(
        "SELECT slot, mechanism, verifier, responder, created_at, expires_at FROM fast_tokens
         WHERE account_id=?1 AND agent_id=?2 ORDER BY slot DESC",
    )?;
    let rows = st.query_map(params![account_id, agent_id], |r| {
        let slot: String = r.get(0)?;
        Ok(Token {
            slot: if slot == "new" { Slot::New } else { Slot::Current },
            mechanism: r.get(1)?,
            verifier: r.get(2)?,
            responder: r.get(3)?,
            created_at: r.get(4)?,
            expires_at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Put a freshly issued token in the client's `new` slot, replacing one
/// that was issued and never used. The client must have been [`seen`].
pub fn put_new(
    c: &Connection,
    account_id: i64,
    agent_id: &str,
    mechanism: &str,
    verifier: &[u8],
    responder: &[u8],
    expires_at: i64,
) -> Result<()> {
    c.execute(
        "INSERT OR REPLACE INTO fast_tokens (account_id, agent_id, slot, mechanism, verifier, responder, created_at, expires_at)
         VALUES (?1, ?2, 'new', ?3, ?4, ?5, ?6, ?7)",
        params![account_id, agent_id, mechanism, verifier, responder, now(), expires_at],
    )?;
    Ok(())
}

/// The client logged in with its `new` token: it becomes `current`, and
/// the older one is invalidated (XEP-0484 §4.4).
pub fn promote(c: &Connection, account_id: i64, agent_id: &str) -> Result<()> {
    let tx = c.unchecked_transaction()?;
    tx.execute(
        "DELETE FROM fast_tokens WHERE account_id=?1 AND agent_id=?2 AND slot='current'",
        params![account_id, agent_id],
    )?;
    tx.execute(
        "UPDATE fast_tokens SET slot='current' WHERE account_id=?1 AND agent_id=?2 AND slot='new'",
        params![account_id, agent_id],
    )?;
    tx.commit()?;
    Ok(())
}

/// Delete one slot's token (an expired one, or on the client's request).
pub fn delete_slot(c: &Connection, account_id: i64, agent_id: &str, slot: Slot) -> Result<()> {
    c.execute(
        "DELETE FROM fast_tokens WHERE account_id=?1 AND agent_id=?2 AND slot=?3",
        params![account_id, agent_id, slot.as_str()],
    )?;
    Ok(())
}

/// Invalidate every token of one client.
pub fn delete_tokens(c: &Connection, account_id: i64, agent_id: &str) -> Result<usize> {
    Ok(c.execute(
        "DELETE FROM fast_tokens WHERE account_id=?1 AND agent_id=?2",
        params![account_id, agent_id],
    )?)
}

/// Invalidate every token of an account (its password changed).
pub fn revoke_all(c: &Connection, account_id: i64) -> Result<usize> {
    Ok(c.execute("DELETE FROM fast_tokens WHERE account_id=?1", params![account_id])?)
}

/// The clients of an account, most recently seen first; `None` for an
/// unknown account.
pub fn list(c: &Connection, username: &str) -> Result<Option<Vec<Agent>>> {
    let Some(id) = super::accounts::get(c, username)?.map(|a| a.id) else {
        return Ok(None);
    };
    let mut st = c.prepare(
        "SELECT a.agent_id, a.software, a.device, a.first_seen, a.last_seen,
                (SELECT MAX(expires_at) FROM fast_tokens t WHERE t.account_id=a.account_id AND t.agent_id=a.agent_id)
         FROM user_agents a WHERE a.account_id=?1 ORDER BY a.last_seen DESC, a.agent_id",
    )?;
    let rows = st.query_map(params![id], |r| {
        Ok(Agent {
            agent_id: r.get(0)?,
            software: r.get(1)?,
            device: r.get(2)?,
            first_seen: r.get(3)?,
            last_seen: r.get(4)?,
            token_expires: r.get(5)?,
        })
    })?;
    Ok(Some(rows.collect::<rusqlite::Result<_>>()?))
}

/// What [`revoke`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Revoked {
    NoAccount,
    /// No client matches.
    NoDevice,
    /// More than one client starts with the given prefix.
    Ambiguous,
    /// The client (its full id) is forgotten, with this many tokens.
    Done(String, usize),
}

/// Forget one client of an account and its tokens. `device` is its id or a
/// prefix of it that names only one client.
pub fn revoke(c: &Connection, username: &str, device: &str) -> Result<Revoked> {
    let Some(id) = super::accounts::get(c, username)?.map(|a| a.id) else {
        return Ok(Revoked::NoAccount);
    };
    if device.is_empty() {
        return Ok(Revoked::NoDevice);
    }
    let mut st = c.prepare("SELECT agent_id FROM user_agents WHERE account_id=?1 AND substr(agent_id, 1, ?3)=?2")?;
    let matches: Vec<String> = st
        .query_map(params![id, device, device.chars().count() as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let agent = match matches.as_slice() {
        [] => return Ok(Revoked::NoDevice),
        [one] => one.clone(),
        many => match many.iter().find(|a| *a == device) {
            Some(exact) => exact.clone(),
            None => return Ok(Revoked::Ambiguous),
        },
    };
    let tx = c.unchecked_transaction()?;
    let n = delete_tokens(&tx, id, &agent)?;
    tx.execute(
        "DELETE FROM user_agents WHERE account_id=?1 AND agent_id=?2",
        params![id, agent],
    )?;
    tx.commit()?;
    Ok(Revoked::Done(agent, n))
}

/// The expiry of one client's token in one slot (for tests and `check`).
pub fn expiry(c: &Connection, account_id: i64, agent_id: &str, slot: Slot) -> Result<Option<i64>> {
    Ok(c.query_row(
        "SELECT expires_at FROM fast_tokens WHERE account_id=?1 AND agent_id=?2 AND slot=?3",
        params![account_id, agent_id, slot.as_str()],
        |r| r.get(0),
    )
    .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{accounts, Store};

    #[test]
    fn slots_rotate_and_a_password_change_revokes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_in(dir.path()).unwrap();
        s.blocking(|c| {
            let id = accounts::create(c, "alice", "pw", false)?;
            seen(c, id, "ua-1", Some("App"), Some("Phone"))?;
            seen(c, id, "ua-1", None, None)?;
            put_new(c, id, "ua-1", "HT-SHA-256-NONE", b"v1", b"r1", now() + 100)?;
            assert_eq!(tokens(c, id, "ua-1")?.len(), 1);
            promote(c, id, "ua-1")?;
            put_new(c, id, "ua-1", "HT-SHA-256-NONE", b"v2", b"r2", now() + 200)?;
            let t = tokens(c, id, "ua-1")?;
            assert_eq!(
                t.iter().map(|t| t.slot).collect::<Vec<_>>(),
                vec![Slot::New, Slot::Current]
            );
            assert_eq!(t[0].verifier, b"v2");
            promote(c, id, "ua-1")?;
            let t = tokens(c, id, "ua-1")?;
            assert_eq!(
                (t.len(), t[0].slot, t[0].verifier.as_slice()),
                (1, Slot::Current, &b"v2"[..])
            );
            let l = list(c, "alice")?.unwrap();
            assert_eq!(l[0].software.as_deref(), Some("App"));
            assert_eq!(l[0].device.as_deref(), Some("Phone"));
            assert!(l[0].token_expires.is_some());
            assert!(accounts::set_password(c, "alice", "new")?);
            assert!(tokens(c, id, "ua-1")?.is_empty());
            assert_eq!(list(c, "alice")?.unwrap()[0].token_expires, None);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn revoke_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_in(dir.path()).unwrap();
        s.blocking(|c| {
            let id = accounts::create(c, "bob", "pw", false)?;
            seen(c, id, "abc-1", None, None)?;
            seen(c, id, "abc-2", None, None)?;
            put_new(c, id, "abc-1", "HT-SHA-256-NONE", b"v", b"r", now() + 100)?;
            assert_eq!(revoke(c, "bob", "abc")?, Revoked::Ambiguous);
            assert_eq!(revoke(c, "bob", "zzz")?, Revoked::NoDevice);
            assert_eq!(revoke(c, "nobody", "abc")?, Revoked::NoAccount);
            assert_eq!(revoke(c, "bob", "abc-1")?, Revoked::Done("abc-1".into(), 1));
            assert_eq!(list(c, "bob")?.unwrap().len(), 1);
            // Deleting the account deletes its clients.
            accounts::delete(c, "bob")?;
            let n: i64 = c.query_row("SELECT COUNT(*) FROM user_agents", [], |r| r.get(0))?;
            assert_eq!(n, 0);
            Ok(())
        })
        .unwrap();
    }
}

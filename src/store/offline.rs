//! The `offline` table: XEP-0160 messages waiting for an account to come online.

use super::{now, Result};
use rusqlite::{params, Connection};

/// Store a message; returns false when the account's queue is full.
pub fn push(c: &Connection, account: i64, stanza: &str, max: u32) -> Result<bool> {
    let count: i64 = c.query_row(
        "SELECT COUNT(*) FROM offline WHERE account_id=?1",
        params![account],
        |r| r.get(0),
    )?;
    if count >= i64::from(max) {
        return Ok(false);
    }
    c.execute(
        "INSERT INTO offline (account_id, created_at, stanza) VALUES (?1, ?2, ?3)",
        params![account, now(), stanza],
    )?;
    Ok(true)
}

/// Store a message and return its row id (`None`: the account's queue is full).
pub fn push_id(c: &Connection, account: i64, stanza: &str, max: u32) -> Result<Option<i64>> {
    if !push(c, account, stanza, max)? {
        return Ok(None);
    }
    Ok(Some(c.last_insert_rowid()))
}

/// Every stored message of an account, oldest first, as `(id, stanza)`.
/// Nothing is deleted: a message leaves the table only when the client has
/// shown it has it ([`delete`]).
pub fn list(c: &Connection, account: i64) -> Result<Vec<(i64, String)>> {
    let mut st = c.prepare_cached("SELECT id, stanza FROM offline WHERE account_id=?1 ORDER BY id")?;
    let rows = st.query_map(params![account], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Delete delivered messages by row id, in one transaction.
pub fn delete(c: &mut Connection, ids: &[i64]) -> Result<usize> {
    let tx = c.transaction()?;
    let mut n = 0;
    {
        let mut st = tx.prepare_cached("DELETE FROM offline WHERE id=?1")?;
        for id in ids {
            n += st.execute(params![id])?;
        }
    }
    tx.commit()?;
    Ok(n)
}

pub fn count(c: &Connection, account: i64) -> Result<i64> {
    Ok(c.query_row(
        "SELECT COUNT(*) FROM offline WHERE account_id=?1",
        params![account],
        |r| r.get(0),
    )?)
}

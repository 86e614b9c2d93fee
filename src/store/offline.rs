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

/// Take every stored message (oldest first) and delete them, atomically.
pub fn take_all(c: &mut Connection, account: i64) -> Result<Vec<(i64, String)>> {
    let tx = c.transaction()?;
    let out = {
        let mut st = tx.prepare("SELECT created_at, stanza FROM offline WHERE account_id=?1 ORDER BY id")?;
        let rows = st.query_map(params![account], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    tx.execute("DELETE FROM offline WHERE account_id=?1", params![account])?;
    tx.commit()?;
    Ok(out)
}

pub fn count(c: &Connection, account: i64) -> Result<i64> {
    Ok(c.query_row(
        "SELECT COUNT(*) FROM offline WHERE account_id=?1",
        params![account],
        |r| r.get(0),
    )?)
}

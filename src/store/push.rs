//! The `push_registrations` table (XEP-0357, server side).

use super::{now, Result};
use rusqlite::{params, Connection};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub service: String,
    pub node: String,
    pub options: Option<String>,
    pub failures: i64,
    /// The `tigase:push:encrypt:0` AES-128-GCM key, when the client gave one.
    pub encrypt_key: Option<Vec<u8>>,
}

/// Add or refresh a registration; false when the account already has `max`.
pub fn enable(
    c: &Connection,
    account: i64,
    service: &str,
    node: &str,
    options: Option<&str>,
    max: u32,
) -> Result<bool> {
    let exists: i64 = c.query_row(
        "SELECT COUNT(*) FROM push_registrations WHERE account_id=?1 AND service=?2 AND node=?3",
        params![account, service, node],
        |r| r.get(0),
    )?;
    if exists == 0 {
        let n: i64 = c.query_row(
            "SELECT COUNT(*) FROM push_registrations WHERE account_id=?1",
            params![account],
            |r| r.get(0),
        )?;
        if n >= i64::from(max) {
            return Ok(false);
        }
    }
    c.execute(
        "INSERT INTO push_registrations (account_id, service, node, options, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(account_id, service, node) DO UPDATE SET options=excluded.options, failures=0",
        params![account, service, node, options, now()],
    )?;
    Ok(true)
}

/// Set (or clear) the key that seals a registration's notifications.
pub fn set_encrypt_key(c: &Connection, account: i64, service: &str, node: &str, key: Option<&[u8]>) -> Result<()> {
    c.execute(
        "UPDATE push_registrations SET encrypt_key=?4 WHERE account_id=?1 AND service=?2 AND node=?3",
        params![account, service, node, key],
    )?;
    Ok(())
}

/// Remove registrations for `service` (all nodes when `node` is None).
pub fn disable(c: &Connection, account: i64, service: &str, node: Option<&str>) -> Result<usize> {
    Ok(match node {
        Some(n) => c.execute(
            "DELETE FROM push_registrations WHERE account_id=?1 AND service=?2 AND node=?3",
            params![account, service, n],
        )?,
        None => c.execute(
            "DELETE FROM push_registrations WHERE account_id=?1 AND service=?2",
            params![account, service],
        )?,
    })
}

pub fn list(c: &Connection, account: i64) -> Result<Vec<Registration>> {
    let mut st = c.prepare_cached(
        "SELECT service, node, options, failures, encrypt_key FROM push_registrations WHERE account_id=?1 ORDER BY created_at",
    )?;
    let rows = st.query_map(params![account], |r| {
        Ok(Registration {
            service: r.get(0)?,
            node: r.get(1)?,
            options: r.get(2)?,
            failures: r.get(3)?,
            encrypt_key: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Record a failed publish; returns the new failure count.
pub fn failed(c: &Connection, account: i64, service: &str, node: &str) -> Result<i64> {
    Ok(c.query_row(
        "UPDATE push_registrations SET failures = failures + 1 WHERE account_id=?1 AND service=?2 AND node=?3 RETURNING failures",
        params![account, service, node],
        |r| r.get(0),
    )
    .unwrap_or(0))
}

pub fn succeeded(c: &Connection, account: i64, service: &str, node: &str) -> Result<()> {
    c.execute(
        "UPDATE push_registrations SET failures = 0 WHERE account_id=?1 AND service=?2 AND node=?3 AND failures > 0",
        params![account, service, node],
    )?;
    Ok(())
}

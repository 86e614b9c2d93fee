//! The `pep_subscriptions` table: explicit XEP-0060 subscriptions to PEP nodes.

use super::{now, Result};
use rusqlite::{params, Connection, OptionalExtension};

/// Subscribe `jid`; returns its subscription id (the existing one when it was already subscribed).
pub fn subscribe(c: &Connection, account: i64, node: &str, jid: &str, subid: &str) -> Result<String> {
    let existing: Option<String> = c
        .query_row(
            "SELECT subid FROM pep_subscriptions WHERE account_id=?1 AND node=?2 AND jid=?3",
            params![account, node, jid],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(s) = existing {
        return Ok(s);
    }
    c.execute(
        "INSERT INTO pep_subscriptions (account_id, node, jid, subid, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![account, node, jid, subid, now()],
    )?;
    Ok(subid.to_string())
}

/// Remove a subscription; false when `jid` had none.
pub fn unsubscribe(c: &Connection, account: i64, node: &str, jid: &str) -> Result<bool> {
    Ok(c.execute(
        "DELETE FROM pep_subscriptions WHERE account_id=?1 AND node=?2 AND jid=?3",
        params![account, node, jid],
    )? == 1)
}

/// The JIDs subscribed to a node.
pub fn subscribers(c: &Connection, account: i64, node: &str) -> Result<Vec<String>> {
    let mut st = c.prepare_cached("SELECT jid FROM pep_subscriptions WHERE account_id=?1 AND node=?2 ORDER BY jid")?;
    let rows = st.query_map(params![account, node], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

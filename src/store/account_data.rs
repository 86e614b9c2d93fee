//! Small per-account tables: vCards (XEP-0054), private XML storage
//! (XEP-0049) and blocklists (XEP-0191).

use super::{now, Result};
use rusqlite::{params, Connection, OptionalExtension};

pub fn vcard(c: &Connection, account: i64) -> Result<Option<String>> {
    Ok(
        c.query_row("SELECT vcard FROM vcards WHERE account_id=?1", params![account], |r| {
            r.get(0)
        })
        .optional()?,
    )
}

pub fn set_vcard(c: &Connection, account: i64, xml: &str) -> Result<()> {
    c.execute(
        "INSERT INTO vcards (account_id, vcard, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT(account_id) DO UPDATE SET vcard=excluded.vcard, updated_at=excluded.updated_at",
        params![account, xml, now()],
    )?;
    Ok(())
}

pub fn private(c: &Connection, account: i64, ns: &str) -> Result<Option<String>> {
    Ok(c.query_row(
        "SELECT xml FROM private_xml WHERE account_id=?1 AND ns=?2",
        params![account, ns],
        |r| r.get(0),
    )
    .optional()?)
}

pub fn set_private(c: &Connection, account: i64, ns: &str, xml: &str) -> Result<()> {
    c.execute(
        "INSERT INTO private_xml (account_id, ns, xml) VALUES (?1, ?2, ?3)
         ON CONFLICT(account_id, ns) DO UPDATE SET xml=excluded.xml",
        params![account, ns, xml],
    )?;
    Ok(())
}

/// Total size of an account's private XML, for the quota.
pub fn private_size(c: &Connection, account: i64) -> Result<i64> {
    Ok(c.query_row(
        "SELECT COALESCE(SUM(LENGTH(xml)), 0) FROM private_xml WHERE account_id=?1",
        params![account],
        |r| r.get(0),
    )?)
}

pub fn blocklist(c: &Connection, account: i64) -> Result<Vec<String>> {
    let mut st = c.prepare_cached("SELECT jid FROM blocklist WHERE account_id=?1 ORDER BY jid")?;
    let rows = st.query_map(params![account], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn block(c: &mut Connection, account: i64, jids: &[String]) -> Result<()> {
    let tx = c.transaction()?;
    for j in jids {
        tx.execute(
            "INSERT OR IGNORE INTO blocklist (account_id, jid) VALUES (?1, ?2)",
            params![account, j],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Unblock the given JIDs, or every JID when `jids` is empty.
pub fn unblock(c: &mut Connection, account: i64, jids: &[String]) -> Result<()> {
    let tx = c.transaction()?;
    if jids.is_empty() {
        tx.execute("DELETE FROM blocklist WHERE account_id=?1", params![account])?;
    } else {
        for j in jids {
            tx.execute(
                "DELETE FROM blocklist WHERE account_id=?1 AND jid=?2",
                params![account, j],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

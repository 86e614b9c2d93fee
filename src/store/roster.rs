//! The `roster` table: items and RFC 6121 subscription state.

use super::Result;
use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    None,
    To,
    From,
    Both,
}

impl Sub {
    pub fn as_str(self) -> &'static str {
        match self {
            Sub::None => "none",
            Sub::To => "to",
            Sub::From => "from",
            Sub::Both => "both",
        }
    }
    fn parse(s: &str) -> Sub {
        match s {
            "to" => Sub::To,
            "from" => Sub::From,
            "both" => Sub::Both,
            _ => Sub::None,
        }
    }
    /// We receive the contact's presence.
    pub fn to(self) -> bool {
        matches!(self, Sub::To | Sub::Both)
    }
    /// The contact receives our presence.
    pub fn from(self) -> bool {
        matches!(self, Sub::From | Sub::Both)
    }
    pub fn with(to: bool, from: bool) -> Sub {
        match (to, from) {
            (true, true) => Sub::Both,
            (true, false) => Sub::To,
            (false, true) => Sub::From,
            (false, false) => Sub::None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub contact: String,
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub sub: Sub,
    pub ask_out: bool,
    pub pending_in: bool,
    pub pending_in_stanza: Option<String>,
    pub preapproved: bool,
    pub in_roster: bool,
}

impl Item {
    pub fn new(contact: &str) -> Item {
        Item {
            contact: contact.to_string(),
            name: None,
            groups: vec![],
            sub: Sub::None,
            ask_out: false,
            pending_in: false,
            pending_in_stanza: None,
            preapproved: false,
            in_roster: true,
        }
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    let groups: String = r.get(2)?;
    let sub: String = r.get(3)?;
    Ok(Item {
        contact: r.get(0)?,
        name: r.get(1)?,
        groups: serde_json::from_str(&groups).unwrap_or_default(),
        sub: Sub::parse(&sub),
        ask_out: r.get(4)?,
        pending_in: r.get(5)?,
        pending_in_stanza: r.get(6)?,
        preapproved: r.get(7)?,
        in_roster: r.get(8)?,
    })
}

const COLS: &str =
    "contact, name, groups, subscription, ask_out, pending_in, pending_in_stanza, preapproved, in_roster";

pub fn get(c: &Connection, account: i64, contact: &str) -> Result<Option<Item>> {
    Ok(c.query_row(
        &format!("SELECT {COLS} FROM roster WHERE account_id=?1 AND contact=?2"),
        params![account, contact],
        row,
    )
    .optional()?)
}

/// Every row, including state-only rows (`in_roster = false`).
pub fn all(c: &Connection, account: i64) -> Result<Vec<Item>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLS} FROM roster WHERE account_id=?1 ORDER BY contact"
    ))?;
    let rows = st.query_map(params![account], row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Insert or replace an item and bump the roster version; returns the new version.
pub fn put(c: &Connection, account: i64, item: &Item) -> Result<i64> {
    let ver = bump(c, account)?;
    c.execute(
        "INSERT INTO roster (account_id, contact, name, groups, subscription, ask_out, pending_in, pending_in_stanza, preapproved, in_roster, version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT(account_id, contact) DO UPDATE SET name=excluded.name, groups=excluded.groups,
           subscription=excluded.subscription, ask_out=excluded.ask_out, pending_in=excluded.pending_in,
           pending_in_stanza=excluded.pending_in_stanza, preapproved=excluded.preapproved,
           in_roster=excluded.in_roster, version=excluded.version",
        params![
            account,
            item.contact,
            item.name,
            serde_json::to_string(&item.groups).unwrap_or_else(|_| "[]".into()),
            item.sub.as_str(),
            item.ask_out,
            item.pending_in,
            item.pending_in_stanza,
            item.preapproved,
            item.in_roster,
            ver
        ],
    )?;
    Ok(ver)
}

/// Remove an item; returns the new roster version.
pub fn remove(c: &Connection, account: i64, contact: &str) -> Result<i64> {
    let ver = bump(c, account)?;
    c.execute(
        "DELETE FROM roster WHERE account_id=?1 AND contact=?2",
        params![account, contact],
    )?;
    Ok(ver)
}

pub fn version(c: &Connection, account: i64) -> Result<i64> {
    Ok(c.query_row(
        "SELECT roster_version FROM accounts WHERE id=?1",
        params![account],
        |r| r.get(0),
    )?)
}

fn bump(c: &Connection, account: i64) -> Result<i64> {
    Ok(c.query_row(
        "UPDATE accounts SET roster_version = roster_version + 1 WHERE id=?1 RETURNING roster_version",
        params![account],
        |r| r.get(0),
    )?)
}

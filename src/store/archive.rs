//! The `archive` and `archive_prefs` tables (XEP-0313).

use super::Result;
use rusqlite::{params, params_from_iter, types::Value, Connection, OptionalExtension};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultMode {
    Always,
    Never,
    Roster,
}

impl DefaultMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultMode::Always => "always",
            DefaultMode::Never => "never",
            DefaultMode::Roster => "roster",
        }
    }
    pub fn parse(s: &str) -> Option<DefaultMode> {
        Some(match s {
            "always" => DefaultMode::Always,
            "never" => DefaultMode::Never,
            "roster" => DefaultMode::Roster,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefs {
    pub default: DefaultMode,
    pub always: Vec<String>,
    pub never: Vec<String>,
}

impl Default for Prefs {
    fn default() -> Self {
        Prefs {
            default: DefaultMode::Always,
            always: vec![],
            never: vec![],
        }
    }
}

pub fn prefs(c: &Connection, account: i64) -> Result<Prefs> {
    let row: Option<(String, String, String)> = c
        .prepare_cached("SELECT default_mode, always, never FROM archive_prefs WHERE account_id=?1")?
        .query_row(params![account], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    Ok(match row {
        None => Prefs::default(),
        Some((d, a, n)) => Prefs {
            default: DefaultMode::parse(&d).unwrap_or(DefaultMode::Always),
            always: serde_json::from_str(&a).unwrap_or_default(),
            never: serde_json::from_str(&n).unwrap_or_default(),
        },
    })
}

pub fn set_prefs(c: &Connection, account: i64, p: &Prefs) -> Result<()> {
    c.execute(
        "INSERT INTO archive_prefs (account_id, default_mode, always, never) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(account_id) DO UPDATE SET default_mode=excluded.default_mode, always=excluded.always, never=excluded.never",
        params![
            account,
            p.default.as_str(),
            serde_json::to_string(&p.always).unwrap_or_default(),
            serde_json::to_string(&p.never).unwrap_or_default()
        ],
    )?;
    Ok(())
}

/// Whether a message with `with` goes into `account`'s archive under its prefs.
pub fn wanted(c: &Connection, account: i64, with: &str) -> Result<bool> {
    wanted_by(c, account, &prefs(c, account)?, with)
}

/// [`wanted`] with the account's preferences already read.
pub fn wanted_by(c: &Connection, account: i64, p: &Prefs, with: &str) -> Result<bool> {
    if p.never.iter().any(|j| j == with) {
        return Ok(false);
    }
    if p.always.iter().any(|j| j == with) {
        return Ok(true);
    }
    Ok(match p.default {
        DefaultMode::Always => true,
        DefaultMode::Never => false,
        DefaultMode::Roster => super::roster::get(c, account, with)?.is_some_and(|i| i.in_roster),
    })
}

/// Add a message under a stanza-id of its own (rows written before
/// migration 14 have one; new rows use [`insert_reserved`]).
pub fn insert(c: &Connection, account: i64, stanza_id: &str, ts: i64, with: &str, stanza: &str) -> Result<()> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO archive (account_id, stanza_id, ts, with_jid, stanza) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![account, stanza_id, ts, with, stanza])?;
    Ok(())
}

/// Add a message under the row id the daemon reserved for it; clients know
/// the id in decimal (see [`stanza_id_of`]).
pub fn insert_reserved(c: &Connection, row: i64, account: i64, ts: i64, with: &str, stanza: &str) -> Result<()> {
    ReservedInserts::new(c)?.insert(row, account, ts, with, stanza)
}

/// [`insert_reserved`] for the rows of a batch, with the statement looked
/// up in the connection's cache once instead of once per row (the look-up
/// hashes the SQL text).
pub struct ReservedInserts<'c> {
    conn: &'c Connection,
    stmt: rusqlite::CachedStatement<'c>,
}

impl<'c> ReservedInserts<'c> {
    pub fn new(conn: &'c Connection) -> Result<Self> {
        let stmt = conn.prepare_cached(
            "INSERT OR IGNORE INTO archive (id, account_id, stanza_id, ts, with_jid, stanza) VALUES (?1, ?2, NULL, ?3, ?4, ?5)",
        )?;
        Ok(ReservedInserts { conn, stmt })
    }

    pub fn insert(&mut self, row: i64, account: i64, ts: i64, with: &str, stanza: &str) -> Result<()> {
        let n = self.stmt.execute(params![row, account, ts, with, stanza])?;
        if n == 0 {
            // The id is taken (only a database copied in from elsewhere while
            // the daemon ran could do that): the message is kept under a row id
            // of SQLite's choosing, with the id its recipient saw as stanza-id.
            tracing::warn!(row, "archive row id taken; stored under a new one");
            insert(self.conn, account, &row.to_string(), ts, with, stanza)?;
        }
        Ok(())
    }
}

/// The highest row id of the account archives (0 when empty): reserved ids
/// continue above it.
pub fn max_id(c: &Connection) -> Result<i64> {
    Ok(c.query_row("SELECT COALESCE(MAX(id), 0) FROM archive", [], |r| r.get(0))?)
}

/// The row id an account archive id names when it is one (decimal digits).
fn reserved_row(stanza_id: &str) -> Option<i64> {
    if stanza_id.is_empty() || !stanza_id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stanza_id.parse().ok()
}

/// The id clients know a row by: its own stanza-id, or its row id.
fn stanza_id_of(stanza_id: Option<String>, row: i64) -> String {
    stanza_id.unwrap_or_else(|| row.to_string())
}

/// A query over one account's archive.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub with: Option<String>,
    pub start: Option<i64>,
    pub end: Option<i64>,
    /// Results after this archive id (exclusive), oldest first.
    pub after: Option<String>,
    /// Results before this archive id (exclusive), newest page; `Some("")` = the last page.
    pub before: Option<String>,
    pub ids: Vec<String>,
    pub max: usize,
}

#[derive(Debug)]
pub struct Row {
    pub stanza_id: String,
    pub ts: i64,
    pub stanza: String,
}

/// A page of results and whether it reaches the end in its direction.
#[derive(Debug)]
pub struct Page {
    pub rows: Vec<Row>,
    pub complete: bool,
    pub count: i64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum QueryError {
    /// An `after`/`before` id that is not in the archive.
    UnknownId,
}

/// Which archive a query reads: an account's or a room's.
#[derive(Debug, Clone, Copy)]
pub enum Owner {
    Account(i64),
    Room(i64),
}

impl Owner {
    fn table(self) -> (&'static str, &'static str, i64) {
        match self {
            Owner::Account(id) => ("archive", "account_id", id),
            Owner::Room(id) => ("muc_archive", "room_id", id),
        }
    }
}

fn row_id(c: &Connection, owner: Owner, stanza_id: &str) -> Result<Option<i64>> {
    let (table, col, id) = owner.table();
    if let (Owner::Account(account), Some(row)) = (owner, reserved_row(stanza_id)) {
        let found = c
            .prepare_cached("SELECT id FROM archive WHERE id=?1 AND account_id=?2 AND stanza_id IS NULL")?
            .query_row(params![row, account], |r| r.get(0))
            .optional()?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(c.query_row(
        &format!("SELECT id FROM {table} WHERE {col}=?1 AND stanza_id=?2"),
        params![id, stanza_id],
        |r| r.get(0),
    )
    .optional()?)
}

pub fn query(c: &Connection, account: i64, q: &Query) -> Result<std::result::Result<Page, QueryError>> {
    query_of(c, Owner::Account(account), q)
}

/// A query over an account's or a room's archive.
pub fn query_of(c: &Connection, owner: Owner, q: &Query) -> Result<std::result::Result<Page, QueryError>> {
    let (table, col, owner_id) = owner.table();
    let mut filter = format!("{col} = ?");
    let mut args: Vec<Value> = vec![Value::Integer(owner_id)];
    if let Some(w) = &q.with {
        filter.push_str(" AND with_jid = ?");
        args.push(Value::Text(w.clone()));
    }
    if let Some(s) = q.start {
        filter.push_str(" AND ts >= ?");
        args.push(Value::Integer(s));
    }
    if let Some(e) = q.end {
        filter.push_str(" AND ts <= ?");
        args.push(Value::Integer(e));
    }
    if !q.ids.is_empty() {
        let named = format!("stanza_id IN ({})", vec!["?"; q.ids.len()].join(","));
        args.extend(q.ids.iter().map(|i| Value::Text(i.clone())));
        let rows: Vec<i64> = match owner {
            Owner::Account(_) => q.ids.iter().filter_map(|i| reserved_row(i)).collect(),
            Owner::Room(_) => vec![],
        };
        if rows.is_empty() {
            filter.push_str(&format!(" AND {named}"));
        } else {
            filter.push_str(&format!(
                " AND ({named} OR (stanza_id IS NULL AND id IN ({})))",
                vec!["?"; rows.len()].join(",")
            ));
            args.extend(rows.into_iter().map(Value::Integer));
        }
    }
    let count: i64 = c.query_row(
        &format!("SELECT COUNT(*) FROM {table} WHERE {filter}"),
        params_from_iter(args.iter()),
        |r| r.get(0),
    )?;
    let mut page_filter = filter.clone();
    let mut page_args = args.clone();
    let backwards = q.before.is_some();
    if let Some(a) = q.after.as_deref().filter(|a| !a.is_empty()) {
        let Some(id) = row_id(c, owner, a)? else {
            return Ok(Err(QueryError::UnknownId));
        };
        page_filter.push_str(" AND id > ?");
        page_args.push(Value::Integer(id));
    }
    if let Some(b) = q.before.as_deref().filter(|b| !b.is_empty()) {
        let Some(id) = row_id(c, owner, b)? else {
            return Ok(Err(QueryError::UnknownId));
        };
        page_filter.push_str(" AND id < ?");
        page_args.push(Value::Integer(id));
    }
    let order = if backwards { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT stanza_id, id, ts, stanza FROM {table} WHERE {page_filter} ORDER BY id {order} LIMIT {}",
        q.max + 1
    );
    let mut st = c.prepare(&sql)?;
    let mut rows: Vec<Row> = st
        .query_map(params_from_iter(page_args.iter()), |r| {
            Ok(Row {
                stanza_id: stanza_id_of(r.get(0)?, r.get(1)?),
                ts: r.get(2)?,
                stanza: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let complete = rows.len() <= q.max;
    rows.truncate(q.max);
    if backwards {
        rows.reverse();
    }
    Ok(Ok(Page { rows, complete, count }))
}

/// Delete entries older than `before_ts` (microseconds), in account and
/// room archives; returns how many.
pub fn expire(c: &Connection, before_ts: i64) -> Result<usize> {
    // Account archive ids increase with time (row ids before migration 14,
    // reserved timestamps after): everything before the oldest row still
    // wanted goes. Finding that row reads the rows about to be deleted, in
    // id order, and no index on `ts` is kept up for it. A row written
    // while the clock had gone back stays until the rows before it expire.
    let n = c.execute(
        "DELETE FROM archive WHERE id < COALESCE((SELECT id FROM archive WHERE ts >= ?1 ORDER BY id LIMIT 1), ?2)",
        params![before_ts, i64::MAX],
    )?;
    Ok(n + c.execute("DELETE FROM muc_archive WHERE ts < ?1", params![before_ts])?)
}

/// Add a message to a room's archive.
pub fn insert_room(c: &Connection, room: i64, stanza_id: &str, ts: i64, with: &str, stanza: &str) -> Result<()> {
    c.prepare_cached(
        // A room destroyed meanwhile (`pushbox room destroy` while the
        // daemon has it loaded) must not fail the writer's whole batch.
        "INSERT OR IGNORE INTO muc_archive (room_id, stanza_id, ts, with_jid, stanza) \
         SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM muc_rooms WHERE id=?1)",
    )?
    .execute(params![room, stanza_id, ts, with, stanza])?;
    Ok(())
}

/// Replace an archived room message (moderation leaves a tombstone).
pub fn replace_room(c: &Connection, room: i64, stanza_id: &str, stanza: &str) -> Result<bool> {
    Ok(c.execute(
        "UPDATE muc_archive SET stanza=?3 WHERE room_id=?1 AND stanza_id=?2",
        params![room, stanza_id, stanza],
    )? > 0)
}

/// Whether a room's archive has a message with this stanza-id.
pub fn room_has(c: &Connection, room: i64, stanza_id: &str) -> Result<bool> {
    Ok(row_id(c, Owner::Room(room), stanza_id)?.is_some())
}

/// The newest `max` messages of a room archive, oldest first, with their
/// timestamps (for history on join).
pub fn room_tail(c: &Connection, room: i64, max: usize) -> Result<Vec<Row>> {
    let mut st =
        c.prepare_cached("SELECT stanza_id, ts, stanza FROM muc_archive WHERE room_id=?1 ORDER BY id DESC LIMIT ?2")?;
    let mut rows: Vec<Row> = st
        .query_map(params![room, max as i64], |r| {
            Ok(Row {
                stanza_id: r.get(0)?,
                ts: r.get(1)?,
                stanza: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    rows.reverse();
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{accounts, Store};

    #[test]
    fn paging_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_in(dir.path()).unwrap();
        s.blocking(|c| {
            let a = accounts::create(c, "alice", "pw", false)?;
            for i in 0..10 {
                insert(
                    c,
                    a,
                    &format!("id{i}"),
                    1000 + i,
                    if i % 2 == 0 { "bob@x" } else { "carol@x" },
                    "<message/>",
                )?;
            }
            let q = |q: Query| query(c, a, &q).map(|r| r.unwrap());
            let p = q(Query {
                max: 4,
                ..Default::default()
            })?;
            assert_eq!(
                p.rows.iter().map(|r| r.stanza_id.as_str()).collect::<Vec<_>>(),
                ["id0", "id1", "id2", "id3"]
            );
            assert!(!p.complete);
            assert_eq!(p.count, 10);
            let p = q(Query {
                max: 4,
                after: Some("id7".into()),
                ..Default::default()
            })?;
            assert_eq!(p.rows.len(), 2);
            assert!(p.complete);
            let p = q(Query {
                max: 3,
                before: Some(String::new()),
                ..Default::default()
            })?;
            assert_eq!(
                p.rows.iter().map(|r| r.stanza_id.as_str()).collect::<Vec<_>>(),
                ["id7", "id8", "id9"]
            );
            assert!(!p.complete);
            let p = q(Query {
                max: 3,
                before: Some("id2".into()),
                ..Default::default()
            })?;
            assert_eq!(
                p.rows.iter().map(|r| r.stanza_id.as_str()).collect::<Vec<_>>(),
                ["id0", "id1"]
            );
            assert!(p.complete);
            let p = q(Query {
                max: 50,
                with: Some("bob@x".into()),
                ..Default::default()
            })?;
            assert_eq!(p.rows.len(), 5);
            let p = q(Query {
                max: 50,
                start: Some(1005),
                end: Some(1006),
                ..Default::default()
            })?;
            assert_eq!(p.rows.len(), 2);
            let p = q(Query {
                max: 50,
                ids: vec!["id3".into(), "id9".into()],
                ..Default::default()
            })?;
            assert_eq!(p.rows.len(), 2);
            assert_eq!(
                query(
                    c,
                    a,
                    &Query {
                        max: 5,
                        after: Some("nope".into()),
                        ..Default::default()
                    }
                )?
                .unwrap_err(),
                QueryError::UnknownId
            );
            assert_eq!(expire(c, 1005)?, 5);
            Ok(())
        })
        .unwrap();
    }

    /// A database at schema 13 (before row-id archive ids) with rows whose
    /// ids clients already hold, upgraded: old and new ids page together.
    #[test]
    fn upgrade_keeps_old_ids_and_pages_with_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pushbox.sqlite3");
        let legacy = [
            "018f0000-0000-7000-8000-000000000001",
            "018f0000-0000-7000-8000-000000000002",
        ];
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "foreign_keys", true).unwrap();
            for (_, sql) in &crate::store::MIGRATIONS[..13] {
                c.execute_batch(sql).unwrap();
            }
            c.pragma_update(None, "user_version", 13).unwrap();
            let a = accounts::create(&c, "alice", "pw", false).unwrap();
            for (i, id) in legacy.iter().enumerate() {
                c.execute(
                    "INSERT INTO archive (account_id, stanza_id, ts, with_jid, stanza) VALUES (?1, ?2, ?3, 'bob@x', ?4)",
                    params![a, id, 1000 + i as i64, format!("<message>old{i}</message>")],
                )
                .unwrap();
            }
        }
        let s = Store::open(&path).unwrap();
        s.blocking(|c| {
            let a = accounts::id_of(c, "alice")?.unwrap();
            let b = accounts::create(c, "bob", "pw", false)?;
            let max = max_id(c)?;
            assert_eq!(max, 2);
            // Reserved ids are timestamps, far above the old row ids.
            insert_reserved(c, 1_700_000_000_000_000, a, 2000, "bob@x", "<message>new0</message>")?;
            insert_reserved(c, 1_700_000_000_000_001, a, 2001, "carol@x", "<message>new1</message>")?;
            insert_reserved(c, 1_700_000_000_000_002, b, 2002, "alice@x", "<message>bob's</message>")?;
            let q = |q: Query| query(c, a, &q).map(|r| r.unwrap());
            let ids = |p: &Page| p.rows.iter().map(|r| r.stanza_id.clone()).collect::<Vec<_>>();
            let all = q(Query {
                max: 10,
                ..Default::default()
            })?;
            assert_eq!(
                ids(&all),
                [legacy[0], legacy[1], "1700000000000000", "1700000000000001"],
                "bob's row is not alice's"
            );
            assert_eq!(all.count, 4);
            // RSM after / before an old id and a new one.
            let p = q(Query {
                max: 10,
                after: Some(legacy[1].into()),
                ..Default::default()
            })?;
            assert_eq!(ids(&p), ["1700000000000000", "1700000000000001"]);
            let p = q(Query {
                max: 10,
                before: Some("1700000000000001".into()),
                ..Default::default()
            })?;
            assert_eq!(ids(&p), [legacy[0], legacy[1], "1700000000000000"]);
            let p = q(Query {
                max: 1,
                before: Some("1700000000000000".into()),
                ..Default::default()
            })?;
            assert_eq!(ids(&p), [legacy[1]]);
            assert!(!p.complete);
            // `with`, `ids` of both kinds.
            let p = q(Query {
                max: 10,
                with: Some("bob@x".into()),
                ..Default::default()
            })?;
            assert_eq!(ids(&p), [legacy[0], legacy[1], "1700000000000000"]);
            let p = q(Query {
                max: 10,
                ids: vec![legacy[0].into(), "1700000000000001".into(), "1700000000000002".into()],
                ..Default::default()
            })?;
            assert_eq!(
                ids(&p),
                [legacy[0], "1700000000000001"],
                "another account's id is not found"
            );
            // Another account's id, or a number that is no row, is unknown.
            for unknown in ["1700000000000002", "3", "+1700000000000001", ""] {
                let r = query(
                    c,
                    a,
                    &Query {
                        max: 5,
                        after: Some(unknown.into()),
                        ..Default::default()
                    },
                )?;
                if unknown.is_empty() {
                    assert_eq!(r.unwrap().rows.len(), 4, "an empty after is the first page");
                } else {
                    assert_eq!(r.unwrap_err(), QueryError::UnknownId, "{unknown}");
                }
            }
            // A reserved id that is taken keeps the id its recipient saw.
            insert_reserved(c, 1_700_000_000_000_002, a, 2003, "bob@x", "<message>clash</message>")?;
            let p = q(Query {
                max: 10,
                after: Some("1700000000000001".into()),
                ..Default::default()
            })?;
            assert_eq!(ids(&p), ["1700000000000002"]);
            assert!(p.rows[0].stanza.contains("clash"));
            let p = q(Query {
                max: 10,
                ids: vec!["1700000000000002".into()],
                ..Default::default()
            })?;
            assert_eq!(p.rows.len(), 1);
            assert!(p.rows[0].stanza.contains("clash"));
            // Expiry by id: old rows and the first new one.
            assert_eq!(expire(c, 2001)?, 3);
            let left = q(Query {
                max: 10,
                ..Default::default()
            })?;
            assert_eq!(ids(&left), ["1700000000000001", "1700000000000002"]);
            // Everything older than the cutoff: the table is emptied.
            assert_eq!(expire(c, i64::MAX)?, 3);
            assert_eq!(max_id(c)?, 0);
            // Account deletion takes its rows (the index on account_id serves the cascade).
            insert_reserved(c, 5, a, 1, "bob@x", "<message/>")?;
            c.execute("DELETE FROM accounts WHERE id=?1", params![a])?;
            assert_eq!(max_id(c)?, 0);
            let plan: String = c.query_row(
                "EXPLAIN QUERY PLAN SELECT id FROM archive WHERE account_id=?1 AND stanza_id=?2",
                params![a, "x"],
                |r| r.get(3),
            )?;
            assert!(
                plan.contains("archive_stanza_id"),
                "old ids are looked up by index: {plan}"
            );
            Ok(())
        })
        .unwrap();
    }
}

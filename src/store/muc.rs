//! The group chat tables (XEP-0045): rooms with their configuration,
//! subject, vCard and occupant-id secret, and affiliations by bare JID. The
//! room archive is `muc_archive` (`store::archive`).

use super::{now, Result};
use rusqlite::{params, Connection, OptionalExtension};

/// A room as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    pub id: i64,
    /// The local part of the room JID.
    pub name: String,
    /// The configuration, as JSON (the XMPP layer owns its shape).
    pub config: String,
    pub subject: String,
    pub subject_by: String,
    pub vcard: Option<String>,
    pub secret: Vec<u8>,
    pub created_at: i64,
}

fn room_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Room> {
    Ok(Room {
        id: r.get(0)?,
        name: r.get(1)?,
        config: r.get(2)?,
        subject: r.get(3)?,
        subject_by: r.get(4)?,
        vcard: r.get(5)?,
        secret: r.get(6)?,
        created_at: r.get(7)?,
    })
}

const COLUMNS: &str = "id, name, config, subject, subject_by, vcard, secret, created_at";

pub fn room(c: &Connection, name: &str) -> Result<Option<Room>> {
    Ok(
        c.prepare_cached(&format!("SELECT {COLUMNS} FROM muc_rooms WHERE name=?1"))?
            .query_row(params![name], room_of)
            .optional()?,
    )
}

pub fn rooms(c: &Connection) -> Result<Vec<Room>> {
    let mut st = c.prepare(&format!("SELECT {COLUMNS} FROM muc_rooms ORDER BY name"))?;
    let rows = st.query_map([], room_of)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Create a room with its first owner; returns its id (`None`: the name is taken).
pub fn create(c: &mut Connection, name: &str, config: &str, secret: &[u8], owner: &str) -> Result<Option<i64>> {
    let tx = c.transaction()?;
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO muc_rooms (name, config, secret, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![name, config, secret, now()],
    )?;
    if inserted == 0 {
        return Ok(None);
    }
    let id = tx.last_insert_rowid();
    tx.execute(
        "INSERT INTO muc_affiliations (room_id, jid, affiliation) VALUES (?1, ?2, 'owner')",
        params![id, owner],
    )?;
    tx.commit()?;
    Ok(Some(id))
}

pub fn set_config(c: &Connection, id: i64, config: &str) -> Result<()> {
    c.execute("UPDATE muc_rooms SET config=?2 WHERE id=?1", params![id, config])?;
    Ok(())
}

pub fn set_subject(c: &Connection, id: i64, subject: &str, by: &str) -> Result<()> {
    c.execute(
        "UPDATE muc_rooms SET subject=?2, subject_by=?3 WHERE id=?1",
        params![id, subject, by],
    )?;
    Ok(())
}

pub fn set_vcard(c: &Connection, id: i64, vcard: Option<&str>) -> Result<()> {
    c.execute("UPDATE muc_rooms SET vcard=?2 WHERE id=?1", params![id, vcard])?;
    Ok(())
}

/// Delete a room with its affiliations and archive.
pub fn destroy(c: &Connection, id: i64) -> Result<bool> {
    Ok(c.execute("DELETE FROM muc_rooms WHERE id=?1", params![id])? > 0)
}

/// Every affiliation of a room: `(bare JID, affiliation, reason)`.
pub fn affiliations(c: &Connection, id: i64) -> Result<Vec<(String, String, String)>> {
    let mut st =
        c.prepare_cached("SELECT jid, affiliation, reason FROM muc_affiliations WHERE room_id=?1 ORDER BY jid")?;
    let rows = st.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Set (or, with `None`, remove) one affiliation.
pub fn set_affiliation(c: &Connection, id: i64, jid: &str, affiliation: Option<&str>, reason: &str) -> Result<()> {
    match affiliation {
        Some(a) => c.execute(
            "INSERT INTO muc_affiliations (room_id, jid, affiliation, reason) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(room_id, jid) DO UPDATE SET affiliation=excluded.affiliation, reason=excluded.reason",
            params![id, jid, a, reason],
        )?,
        None => c.execute(
            "DELETE FROM muc_affiliations WHERE room_id=?1 AND jid=?2",
            params![id, jid],
        )?,
    };
    Ok(())
}

/// How many rooms `jid` owns (for the per-user limit).
pub fn owned_by(c: &Connection, jid: &str) -> Result<i64> {
    Ok(c.query_row(
        "SELECT COUNT(*) FROM muc_affiliations WHERE jid=?1 AND affiliation='owner'",
        params![jid],
        |r| r.get(0),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn rooms_and_affiliations() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_in(dir.path()).unwrap();
        s.blocking(|c| {
            let id = create(c, "family", "{}", b"k", "alice@localhost")?.unwrap();
            assert!(
                create(c, "family", "{}", b"k", "bob@localhost")?.is_none(),
                "names are unique"
            );
            set_affiliation(c, id, "bob@localhost", Some("member"), "")?;
            set_affiliation(c, id, "eve@localhost", Some("outcast"), "spam")?;
            set_affiliation(c, id, "bob@localhost", Some("admin"), "")?;
            let a = affiliations(c, id)?;
            assert_eq!(a.len(), 3);
            assert!(a.contains(&("bob@localhost".into(), "admin".into(), String::new())));
            assert_eq!(owned_by(c, "alice@localhost")?, 1);
            set_subject(c, id, "Dinner", "mum")?;
            let r = room(c, "family")?.unwrap();
            assert_eq!((r.subject.as_str(), r.subject_by.as_str()), ("Dinner", "mum"));
            crate::store::archive::insert_room(c, id, "s1", 1, "family@groups/mum", "<message/>")?;
            assert!(destroy(c, id)?);
            assert!(room(c, "family")?.is_none());
            assert!(affiliations(c, id)?.is_empty(), "affiliations go with the room");
            let left: i64 = c.query_row("SELECT COUNT(*) FROM muc_archive", [], |r| r.get(0))?;
            assert_eq!(left, 0, "the archive goes with the room");
            Ok(())
        })
        .unwrap();
    }
}

//! The `accounts` table: usernames and SCRAM keys.

pub use super::scram::{ScramKeys, ITERATIONS};
use super::{now, Result, StoreError};
use rusqlite::{params, Connection, OptionalExtension};

/// PBKDF2 iterations for new passwords (RFC 7677 asks for at least 4096).

#[derive(Debug, Clone)]
pub struct Account {
    pub id: i64,
    pub username: String,
    pub is_admin: bool,
    pub keys: ScramKeys,
}

/// Normalise a username (XMPP localpart, PRECIS UsernameCaseMapped via the jid crate).
pub fn normalize(username: &str) -> Result<String> {
    let once = normalize_once(username)?;
    // The jid crate's nodeprep is not always idempotent (`ax\u{1d34}` →
    // `axH` → `axh`, found by fuzzing): such a name would be stored under one
    // form and looked up under another. Only names that settle in one round
    // are accepted.
    if normalize_once(&once)? != once {
        return Err(StoreError::Other(format!(
            "`{username}` is not a valid username: it does not normalise to a stable form"
        )));
    }
    Ok(once)
}

fn normalize_once(username: &str) -> Result<String> {
    let j = jid::BareJid::new(&format!("{username}@localhost"))
        .map_err(|e| StoreError::Other(format!("`{username}` is not a valid username: {e}")))?;
    j.node()
        .map(|n| n.as_str().to_string())
        .ok_or_else(|| StoreError::Other("empty username".into()))
}

pub fn create(c: &Connection, username: &str, password: &str, is_admin: bool) -> Result<i64> {
    let username = normalize(username)?;
    if password.is_empty() {
        return Err(StoreError::Other("the password is empty".into()));
    }
    let keys = ScramKeys::derive(password, ITERATIONS);
    let r = c.execute(
        "INSERT INTO accounts (username, created_at, is_admin, salt, iterations, sha1_stored, sha1_server, sha256_stored, sha256_server)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            username,
            now(),
            is_admin,
            keys.salt,
            keys.iterations,
            keys.sha1_stored,
            keys.sha1_server,
            keys.sha256_stored,
            keys.sha256_server
        ],
    );
    match r {
        Ok(_) => Ok(c.last_insert_rowid()),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
            Err(StoreError::Other(format!("the account `{username}` already exists")))
        }
        Err(e) => Err(e.into()),
    }
}

pub fn set_password(c: &Connection, username: &str, password: &str) -> Result<bool> {
    if password.is_empty() {
        return Err(StoreError::Other("the password is empty".into()));
    }
    let keys = ScramKeys::derive(password, ITERATIONS);
    let username = normalize(username)?;
    // A new password ends every FAST token (XEP-0484): one transaction, so
    // that no token outlives the password it was obtained with.
    let tx = c.unchecked_transaction()?;
    let n = tx.execute(
        "UPDATE accounts SET salt=?2, iterations=?3, sha1_stored=?4, sha1_server=?5, sha256_stored=?6, sha256_server=?7 WHERE username=?1",
        params![
            username,
            keys.salt,
            keys.iterations,
            keys.sha1_stored,
            keys.sha1_server,
            keys.sha256_stored,
            keys.sha256_server
        ],
    )?;
    if let Some(id) = id_of(&tx, &username)? {
        super::devices::revoke_all(&tx, id)?;
    }
    tx.commit()?;
    Ok(n == 1)
}

pub fn delete(c: &Connection, username: &str) -> Result<bool> {
    Ok(c.execute("DELETE FROM accounts WHERE username=?1", params![normalize(username)?])? == 1)
}

pub fn get(c: &Connection, username: &str) -> Result<Option<Account>> {
    let Ok(username) = normalize(username) else {
        return Ok(None);
    };
    Ok(c.query_row(
        "SELECT id, username, is_admin, salt, iterations, sha1_stored, sha1_server, sha256_stored, sha256_server
         FROM accounts WHERE username=?1",
        params![username],
        |r| {
            Ok(Account {
                id: r.get(0)?,
                username: r.get(1)?,
                is_admin: r.get(2)?,
                keys: ScramKeys {
                    salt: r.get(3)?,
                    iterations: r.get(4)?,
                    sha1_stored: r.get(5)?,
                    sha1_server: r.get(6)?,
                    sha256_stored: r.get(7)?,
                    sha256_server: r.get(8)?,
                },
            })
        },
    )
    .optional()?)
}

pub fn id_of(c: &Connection, username: &str) -> Result<Option<i64>> {
    Ok(c.prepare_cached("SELECT id FROM accounts WHERE username=?1")?
        .query_row(params![username], |r| r.get(0))
        .optional()?)
}

pub fn list(c: &Connection) -> Result<Vec<(String, bool, i64)>> {
    let mut st = c.prepare("SELECT username, is_admin, created_at FROM accounts ORDER BY username")?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn normalisation_is_a_fixed_point_or_an_error() {
        assert_eq!(normalize("Alice").unwrap(), "alice");
        // MODIFIER LETTER CAPITAL H: one round gives `axH`, a second `axh`.
        assert!(normalize("ax\u{1d34}").is_err());
        for name in ["alice", "Zoë", "a.b-c_d"] {
            let n = normalize(name).unwrap();
            assert_eq!(normalize(&n).unwrap(), n);
        }
    }

    #[test]
    fn create_get_passwd_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_in(dir.path()).unwrap();
        s.blocking(|c| {
            create(c, "Alice", "pw", false)?;
            assert!(create(c, "alice", "x", false).is_err(), "case-folded duplicate");
            let a = get(c, "ALICE")?.unwrap();
            assert_eq!(a.username, "alice");
            assert!(a.keys.iterations >= 4096);
            // Nothing stored equals the password or contains it.
            let raw: Vec<u8> = c.query_row("SELECT sha256_stored FROM accounts", [], |r| r.get(0))?;
            assert_ne!(raw, b"pw");
            let old = a.keys.sha256_stored.clone();
            assert!(set_password(c, "alice", "new")?);
            assert_ne!(get(c, "alice")?.unwrap().keys.sha256_stored, old);
            assert!(delete(c, "alice")?);
            assert!(get(c, "alice")?.is_none());
            Ok(())
        })
        .unwrap();
    }
}

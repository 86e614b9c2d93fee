//! SQLite storage: one file under `data_dir`, WAL, foreign keys, versioned
//! migrations applied at start-up. Queries are plain functions over a
//! `rusqlite::Connection`, grouped per table; async code reaches them only
//! through [`Store::call`], which runs them on tokio's blocking pool so that
//! no SQLite work ever runs on an executor thread.

pub mod account_data;
pub mod accounts;
pub mod archive;
pub mod backup;
pub mod devices;
pub mod invites;
pub mod muc;
pub mod offline;
pub mod pep;
pub mod pep_subscriptions;
pub mod push;
pub mod relay;
pub mod roster;
pub mod scram;

use rusqlite::Connection;
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

/// Migrations, in order. `PRAGMA user_version` records how many ran.
/// Append only; never edit a migration that has shipped.
#[rustfmt::skip]
const MIGRATIONS: &[(&str, &str)] = &[
    ("core", include_str!("migrations/0001_core.sql")),
    ("archive", include_str!("migrations/0002_archive.sql")),
    ("push", include_str!("migrations/0003_push.sql")),
    ("relay", include_str!("migrations/0004_relay.sql")),
    ("app_server", include_str!("migrations/0005_app_server.sql")),
    ("upload", include_str!("migrations/0006_upload.sql")),
    ("pep", include_str!("migrations/0007_pep.sql")),
    ("push_encrypt", include_str!("migrations/0008_push_encrypt.sql")),
    ("pep_subscriptions", include_str!("migrations/0009_pep_subscriptions.sql")),
    ("muc", include_str!("migrations/0010_muc.sql")),
    ("invites", include_str!("migrations/0011_invites.sql")),
    ("devices", include_str!("migrations/0012_devices.sql")),
    ("relay_deliveries_device", include_str!("migrations/0013_relay_deliveries_device.sql")),
    ("archive_row_ids", include_str!("migrations/0014_archive_row_ids.sql")),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the storage worker stopped: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The database cannot be reached now (a lost connection, a server
    /// shutting down, a read-only standby after failover): worth a "try
    /// later" answer, never a crash.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// The disk holding the database is full (`SQLITE_FULL`): a condition
    /// that clears by itself once space returns, worth a "try later" answer.
    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DiskFull)
    }

    /// A condition that clears by itself (disk full, database unreachable):
    /// answer 503 with `Retry-After`; nothing was accepted.
    pub fn is_transient(&self) -> bool {
        self.is_full() || matches!(self, StoreError::Unavailable(_))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Cheap-clone handle to the database.
#[derive(Clone)]
pub struct Store {
    // A std Mutex: it is only ever taken inside `spawn_blocking` (or by the
    // CLI, which has no executor), never across an `.await`.
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl Store {
    /// Open (creating if needed) `data_dir/pushbox.sqlite3` and migrate it.
    pub fn open_in(data_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Other(format!("cannot create data_dir {}: {e}", data_dir.display())))?;
        Self::open(&data_dir.join("pushbox.sqlite3"))
    }

    pub fn open(path: &Path) -> Result<Store> {
        let mut conn = open_connection(path)?;
        migrate(&mut conn)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another connection to the same (migrated) file, with the same
    /// settings, for a writer that runs on a thread of its own (the
    /// archive's); WAL lets it write while this store's connection reads.
    pub fn connection(&self) -> Result<Connection> {
        open_connection(&self.path)
    }

    /// Run `f` on the blocking pool with the connection.
    pub async fn call<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await?
    }

    /// Like [`Store::call`], with `synchronous = FULL` for the duration:
    /// the commit is on disk (the WAL fsynced) when this returns, so it
    /// survives a power cut, not only a crash. For writes whose loss a user
    /// would notice: offline messages and the relay's outbox.
    pub async fn call_durable<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.call(move |c| {
            c.pragma_update(None, "synchronous", "FULL")?;
            let r = f(c);
            c.pragma_update(None, "synchronous", "NORMAL")?;
            r
        })
        .await
    }

    /// Run `f` on the current thread: for the CLI and start-up, never from async code.
    pub fn blocking<R>(&self, f: impl FnOnce(&mut Connection) -> Result<R>) -> Result<R> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

/// A connection with the settings every pushbox connection uses.
fn open_connection(path: &Path) -> Result<Connection> {
    let mut conn = Connection::open(path)?;
    // Transactions take the write lock at BEGIN: one that read first and
    // wrote later failed at once (SQLITE_BUSY, no waiting) when another
    // connection to the file (the archive's or the relay's writer) had
    // committed meanwhile; waiting for the lock is what the busy timeout
    // is for.
    conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
    // First: the pragmas below take locks too, and without a busy timeout a
    // second process opening the file (a CLI command while the daemon
    // migrates it) failed at once with "database is locked".
    conn.busy_timeout(BUSY_TIMEOUT)?;
    when_not_busy(|| Ok(conn.pragma_update(None, "journal_mode", "WAL")?))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

/// How long a connection waits for another's lock before "database is locked".
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `f` again while it fails with SQLITE_BUSY, up to [`BUSY_TIMEOUT`].
/// Switching a new file's journal to WAL needs its exclusive lock, and
/// SQLite answers BUSY at once, without the busy handler, when another
/// connection is switching it at the same moment (two relay nodes, or the
/// daemon and a CLI command, opening one new file together): one start in
/// ten of the test that opens two stores at once failed so.
fn when_not_busy<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match f() {
            Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            r => return r,
        }
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    loop {
        // The version is read inside a write transaction, so a second
        // process opening the file at the same moment waits, then sees the
        // migration done rather than applying it again.
        let tx = conn.transaction()?;
        let current: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let current = usize::try_from(current).unwrap_or(0);
        if current > MIGRATIONS.len() {
            return Err(StoreError::Other(format!(
                "the database is at schema version {current}, newer than this pushbox knows ({}); \
                 refusing to run an older pushbox on it",
                MIGRATIONS.len()
            )));
        }
        let Some((name, sql)) = MIGRATIONS.get(current) else {
            return Ok(());
        };
        tx.execute_batch(sql)
            .map_err(|e| StoreError::Other(format!("migration {} ({name}) failed: {e}", current + 1)))?;
        tx.pragma_update(None, "user_version", (current + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = current + 1, name, "applied database migration");
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_in(dir.path()).unwrap();
        let v: i64 = s
            .blocking(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
        drop(s);
        let s = Store::open_in(dir.path()).unwrap();
        let fk: i64 = s
            .blocking(|c| Ok(c.pragma_query_value(None, "foreign_keys", |r| r.get(0))?))
            .unwrap();
        assert_eq!(fk, 1);
        let mode: String = s
            .blocking(|c| Ok(c.pragma_query_value(None, "journal_mode", |r| r.get(0))?))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db");
        {
            let c = Connection::open(&p).unwrap();
            c.pragma_update(None, "user_version", 999).unwrap();
        }
        let e = Store::open(&p).err().unwrap();
        assert!(e.to_string().contains("newer"), "{e}");
    }
}

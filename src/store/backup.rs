//! Online backup: a consistent copy of the live database through SQLite's
//! backup API, safe while the daemon runs and writes.

use super::{Result, StoreError};
use rusqlite::{
    backup::{Backup, StepResult},
    Connection, OpenFlags,
};
use std::path::Path;

/// Copy the database at `db` to `dest` (which must not exist) and check the
/// copy. Returns the size of the copy in bytes. The copy is written beside
/// `dest` under a temporary name, with mode 0600, and renamed when complete.
pub fn backup(db: &Path, dest: &Path) -> Result<u64> {
    let other = |m: String| StoreError::Other(m);
    if !db.is_file() {
        return Err(other(format!("no database at {}", db.display())));
    }
    if dest.exists() {
        return Err(other(format!(
            "{} already exists; refusing to overwrite it",
            dest.display()
        )));
    }
    let src = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    src.busy_timeout(std::time::Duration::from_secs(10))?;
    let name = dest
        .file_name()
        .ok_or_else(|| other(format!("{} is not a file name", dest.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".partial");
    let tmp = dest.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    create_private(&tmp)?;
    let result = (|| {
        let mut dst = Connection::open(&tmp)?;
        {
            // One step of all pages: one read transaction, so the copy is a
            // single consistent snapshot; in WAL mode writers are not blocked.
            let b = Backup::new(&src, &mut dst)?;
            let mut waits = 0;
            loop {
                match b.step(-1)? {
                    StepResult::Done => break,
                    StepResult::More => {}
                    // A writer holds a lock for a moment: wait, up to ~10 s in all.
                    _ if waits < 100 => {
                        waits += 1;
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    _ => return Err(other("the database stayed locked; try again".into())),
                }
            }
        }
        // The copy is a standalone file: no WAL beside it.
        dst.pragma_update(None, "journal_mode", "DELETE")?;
        let check: String = dst.pragma_query_value(None, "quick_check", |r| r.get(0))?;
        if check != "ok" {
            return Err(other(format!("the copy failed its integrity check: {check}")));
        }
        drop(dst);
        std::fs::rename(&tmp, dest).map_err(|e| other(format!("cannot rename the copy to {}: {e}", dest.display())))?;
        Ok(std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn create_private(path: &Path) -> Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
        .map(drop)
        .map_err(|e| StoreError::Other(format!("cannot create {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_a_live_database_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open_in(dir.path()).unwrap();
        store
            .blocking(|c| crate::store::accounts::create(c, "alice", "secret-pw", false))
            .unwrap();
        let dest = dir.path().join("copy.sqlite3");
        let size = backup(store.path(), &dest).unwrap();
        assert!(size > 0);
        let copy = crate::store::Store::open(&dest).unwrap();
        let names: Vec<String> = copy
            .blocking(|c| crate::store::accounts::list(c))
            .unwrap()
            .into_iter()
            .map(|a| a.0)
            .collect();
        assert_eq!(names, vec!["alice".to_string()]);
        let e = backup(store.path(), &dest).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn missing_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = backup(&dir.path().join("none.sqlite3"), &dir.path().join("x")).unwrap_err();
        assert!(e.to_string().contains("no database"), "{e}");
    }
}

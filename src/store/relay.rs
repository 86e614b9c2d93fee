//! Tables of the push relay: accounts, API keys, devices, whitelist tokens
//! and the outbox. Plain functions over a connection; callers reach them
//! through [`super::Store::call`]. Secrets arrive here already hashed.

use super::{now, Result, StoreError};
use rusqlite::{params, Connection, OptionalExtension, Row};

#[derive(Debug, Clone)]
pub struct Account {
    pub id: i64,
    pub username: String,
    pub email: String,
}

#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub account_id: i64,
    pub kind: String,
    pub name: Option<String>,
    pub active: bool,
    pub registration_id: String,
    pub device_id: Option<String>,
    pub p256dh: Option<String>,
    pub auth: Option<String>,
    pub upstream_token: Option<String>,
    pub created: i64,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub hash: Vec<u8>,
    pub prefix: String,
    pub account_id: i64,
    pub device_id: String,
    pub device_kind: String,
    pub name: Option<String>,
    pub created: i64,
    pub expires: i64,
    pub rate: Option<u32>,
}

/// One pending delivery of one push to one device.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub push_id: i64,
    pub device: Device,
    pub token: String,
    pub collapse: String,
    pub data: Option<String>,
    pub priority: String,
    pub created: i64,
    pub expires: i64,
    pub attempts: u32,
}

/// Account creation refused because the name or the email is taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    Username,
    Email,
}

/// An account from columns 0–2 and the secret (hash) stored with it from column 3.
fn account_and_secret<T: rusqlite::types::FromSql>(r: &Row<'_>) -> rusqlite::Result<(Account, T)> {
    Ok((
        Account {
            id: r.get(0)?,
            username: r.get(1)?,
            email: r.get(2)?,
        },
        r.get(3)?,
    ))
}

pub fn account_by_username(c: &Connection, username: &str) -> Result<Option<(Account, String)>> {
    Ok(c.query_row(
        "SELECT id, username, email, password_hash FROM relay_accounts WHERE username = ?1",
        [username],
        account_and_secret,
    )
    .optional()?)
}

pub fn create_account(
    c: &mut Connection,
    username: &str,
    email: &str,
    password_hash: &str,
) -> Result<Result<Account, Taken>> {
    let tx = c.transaction()?;
    let exists = |sql: &str, v: &str| -> Result<bool> { Ok(tx.query_row(sql, [v], |_| Ok(())).optional()?.is_some()) };
    if exists("SELECT 1 FROM relay_accounts WHERE username = ?1", username)? {
        return Ok(Err(Taken::Username));
    }
    if !email.is_empty() && exists("SELECT 1 FROM relay_accounts WHERE email = ?1", email)? {
        return Ok(Err(Taken::Email));
    }
    tx.execute(
        "INSERT INTO relay_accounts (username, email, password_hash, created) VALUES (?1, ?2, ?3, ?4)",
        params![username, email, password_hash, now()],
    )?;
    let id = tx.last_insert_rowid();
    tx.commit()?;
    Ok(Ok(Account {
        id,
        username: username.into(),
        email: email.into(),
    }))
}

pub fn delete_account(c: &Connection, id: i64) -> Result<()> {
    c.execute("DELETE FROM relay_accounts WHERE id = ?1", [id])?;
    Ok(())
}

pub fn insert_api_key(c: &Connection, hash: &[u8], account_id: i64) -> Result<()> {
    c.execute(
        "INSERT INTO relay_api_keys (hash, account_id, created) VALUES (?1, ?2, ?3)",
        params![hash, account_id, now()],
    )?;
    Ok(())
}

/// The account owning an API key, with the stored hash for a constant-time check.
pub fn account_by_api_key(c: &Connection, hash: &[u8]) -> Result<Option<(Account, Vec<u8>)>> {
    Ok(c.query_row(
        "SELECT a.id, a.username, a.email, k.hash FROM relay_api_keys k JOIN relay_accounts a ON a.id = k.account_id
         WHERE k.hash = ?1",
        [hash],
        account_and_secret,
    )
    .optional()?)
}

const DEVICE_COLS: &str =
    "d.id, d.account_id, d.kind, d.name, d.active, d.registration_id, d.device_id, d.p256dh, d.auth, d.upstream_token, d.created";

fn device_row(r: &Row<'_>, at: usize) -> rusqlite::Result<Device> {
    Ok(Device {
        id: r.get(at)?,
        account_id: r.get(at + 1)?,
        kind: r.get(at + 2)?,
        name: r.get(at + 3)?,
        active: r.get(at + 4)?,
        registration_id: r.get(at + 5)?,
        device_id: r.get(at + 6)?,
        p256dh: r.get(at + 7)?,
        auth: r.get(at + 8)?,
        upstream_token: r.get(at + 9)?,
        created: r.get(at + 10)?,
    })
}

pub fn list_devices(c: &Connection, account_id: i64, kind: &str) -> Result<Vec<Device>> {
    let mut st = c.prepare(&format!(
        "SELECT {DEVICE_COLS} FROM relay_devices d WHERE d.account_id = ?1 AND d.kind = ?2 ORDER BY d.created, d.rowid"
    ))?;
    let v = st
        .query_map(params![account_id, kind], |r| device_row(r, 0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(v)
}

pub fn get_device(c: &Connection, account_id: i64, id: &str) -> Result<Option<Device>> {
    Ok(c.query_row(
        &format!("SELECT {DEVICE_COLS} FROM relay_devices d WHERE d.account_id = ?1 AND d.id = ?2"),
        params![account_id, id],
        |r| device_row(r, 0),
    )
    .optional()?)
}

/// Insert or replace (by id) a device.
pub fn put_device(c: &Connection, d: &Device) -> Result<()> {
    c.execute(
        "INSERT INTO relay_devices (id, account_id, kind, name, active, registration_id, device_id, p256dh, auth, upstream_token, created)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT(id) DO UPDATE SET name = excluded.name, active = excluded.active,
           registration_id = excluded.registration_id, device_id = excluded.device_id, p256dh = excluded.p256dh,
           auth = excluded.auth, upstream_token = excluded.upstream_token",
        params![
            d.id,
            d.account_id,
            d.kind,
            d.name,
            d.active,
            d.registration_id,
            d.device_id,
            d.p256dh,
            d.auth,
            d.upstream_token,
            d.created
        ],
    )?;
    Ok(())
}

pub fn delete_device(c: &Connection, account_id: i64, id: &str) -> Result<bool> {
    Ok(c.execute(
        "DELETE FROM relay_devices WHERE account_id = ?1 AND id = ?2",
        params![account_id, id],
    )? > 0)
}

/// Mark a device dead: it gets no further pushes, and its pending deliveries end.
pub fn deactivate_device(c: &mut Connection, id: &str) -> Result<()> {
    let tx = c.transaction()?;
    tx.execute("UPDATE relay_devices SET active = 0 WHERE id = ?1", [id])?;
    tx.execute(
        "UPDATE relay_deliveries SET state = 'failed' WHERE device_id = ?1 AND state IN ('pending', 'sending')",
        [id],
    )?;
    tx.commit()?;
    Ok(())
}

const TOKEN_COLS: &str = "t.hash, t.prefix, t.account_id, t.device_id, d.kind, t.name, t.created, t.expires, t.rate";

fn token_row(r: &Row<'_>) -> rusqlite::Result<Token> {
    Ok(Token {
        hash: r.get(0)?,
        prefix: r.get(1)?,
        account_id: r.get(2)?,
        device_id: r.get(3)?,
        device_kind: r.get(4)?,
        name: r.get(5)?,
        created: r.get(6)?,
        expires: r.get(7)?,
        rate: r.get(8)?,
    })
}

pub fn insert_token(c: &Connection, t: &Token) -> Result<()> {
    c.execute(
        "INSERT INTO relay_tokens (hash, prefix, account_id, device_id, name, created, expires, rate)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            t.hash,
            t.prefix,
            t.account_id,
            t.device_id,
            t.name,
            t.created,
            t.expires,
            t.rate
        ],
    )?;
    Ok(())
}

pub fn list_tokens(c: &Connection, account_id: i64) -> Result<Vec<Token>> {
    let mut st = c.prepare(&format!(
        "SELECT {TOKEN_COLS} FROM relay_tokens t JOIN relay_devices d ON d.id = t.device_id
         WHERE t.account_id = ?1 ORDER BY t.created, t.rowid"
    ))?;
    let v = st
        .query_map([account_id], token_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(v)
}

pub fn token_by_hash(c: &Connection, hash: &[u8]) -> Result<Option<Token>> {
    Ok(c.prepare_cached(&format!(
        "SELECT {TOKEN_COLS} FROM relay_tokens t JOIN relay_devices d ON d.id = t.device_id WHERE t.hash = ?1"
    ))?
    .query_row([hash], token_row)
    .optional()?)
}

pub fn update_token_name(c: &Connection, hash: &[u8], name: Option<&str>) -> Result<()> {
    c.execute("UPDATE relay_tokens SET name = ?2 WHERE hash = ?1", params![hash, name])?;
    Ok(())
}

pub fn delete_token(c: &Connection, hash: &[u8]) -> Result<bool> {
    Ok(c.execute("DELETE FROM relay_tokens WHERE hash = ?1", [hash])? > 0)
}

/// A push to commit: one outbox row and one delivery per active device of
/// `account_id`, in one transaction. Returns the push id and the device count.
pub struct NewPush<'a> {
    pub account_id: i64,
    pub token: &'a str,
    pub collapse: &'a str,
    pub data: Option<&'a str>,
    pub priority: &'a str,
    pub expires: i64,
}

/// Enqueue a push for every active device of its account, inside a
/// transaction the caller holds (the relay's group-commit writer), with
/// cached statements. With `claimed` the
/// deliveries go in as `sending` and come back whole, for the dispatcher to
/// send without claiming them; else they are `pending` and none come back.
/// `None`: the token no longer exists, nothing was enqueued.
pub fn enqueue_in(
    c: &Connection,
    token_hash: &[u8],
    p: &NewPush<'_>,
    now_ms: i64,
    claimed: bool,
) -> Result<Option<(i64, usize, Vec<Delivery>)>> {
    let live = c
        .prepare_cached("SELECT 1 FROM relay_tokens WHERE hash = ?1")?
        .exists([token_hash])?;
    if !live {
        return Ok(None);
    }
    let devices: Vec<Device> = c
        .prepare_cached(&format!(
            "SELECT {DEVICE_COLS} FROM relay_devices d WHERE d.account_id = ?1 AND d.active = 1"
        ))?
        .query_map([p.account_id], |r| device_row(r, 0))?
        .collect::<rusqlite::Result<_>>()?;
    if devices.is_empty() {
        return Ok(Some((0, 0, Vec::new())));
    }
    let created = now();
    c.prepare_cached(
        "INSERT INTO relay_outbox (account_id, token, collapse, data, priority, created, expires)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        p.account_id,
        p.token,
        p.collapse,
        p.data,
        p.priority,
        created,
        p.expires
    ])?;
    let id = c.last_insert_rowid();
    let state = if claimed { "sending" } else { "pending" };
    let mut insert =
        c.prepare_cached("INSERT INTO relay_deliveries (push_id, device_id, next_at, state) VALUES (?1, ?2, ?3, ?4)")?;
    for d in &devices {
        insert.execute(params![id, d.id, now_ms, state])?;
    }
    let n = devices.len();
    let handed = if claimed {
        devices
            .into_iter()
            .map(|device| Delivery {
                push_id: id,
                device,
                token: p.token.to_string(),
                collapse: p.collapse.to_string(),
                data: p.data.map(str::to_string),
                priority: p.priority.to_string(),
                created,
                expires: p.expires,
                attempts: 0,
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Some((id, n, handed)))
}

/// Claim the deliveries due at `now_ms`, oldest first: they move from
/// `pending` to `sending`, so no other look at the outbox picks them again.
pub fn claim(c: &mut Connection, now_ms: i64, limit: usize) -> Result<Vec<Delivery>> {
    let tx = c.transaction()?;
    let v: Vec<Delivery> = {
        let mut st = tx.prepare(&format!(
            "SELECT o.id, o.token, o.collapse, o.data, o.priority, o.created, o.expires, x.attempts, {DEVICE_COLS}
             FROM relay_deliveries x JOIN relay_outbox o ON o.id = x.push_id JOIN relay_devices d ON d.id = x.device_id
             WHERE x.state = 'pending' AND x.next_at <= ?1 ORDER BY x.next_at LIMIT ?2"
        ))?;
        let rows = st.query_map(params![now_ms, limit as i64], |r| {
            Ok(Delivery {
                push_id: r.get(0)?,
                token: r.get(1)?,
                collapse: r.get(2)?,
                data: r.get(3)?,
                priority: r.get(4)?,
                created: r.get(5)?,
                expires: r.get(6)?,
                attempts: r.get(7)?,
                device: device_row(r, 8)?,
            })
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    {
        let mut up =
            tx.prepare("UPDATE relay_deliveries SET state = 'sending' WHERE push_id = ?1 AND device_id = ?2")?;
        for d in &v {
            up.execute(params![d.push_id, d.device.id])?;
        }
    }
    tx.commit()?;
    Ok(v)
}

/// After a crash, deliveries that were being sent are pending again (the
/// provider may or may not have them; sending again is the safe side).
pub fn release_claims(c: &Connection) -> Result<usize> {
    Ok(c.execute(
        "UPDATE relay_deliveries SET state = 'pending' WHERE state = 'sending'",
        [],
    )?)
}

/// The earliest `next_at` of a pending delivery.
pub fn next_due(c: &Connection) -> Result<Option<i64>> {
    Ok(c.query_row(
        "SELECT MIN(next_at) FROM relay_deliveries WHERE state = 'pending'",
        [],
        |r| r.get(0),
    )?)
}

/// End a delivery (`done` or `failed`) and drop its push once nothing is pending.
pub fn finish(c: &mut Connection, push_id: i64, device_id: &str, state: &str) -> Result<()> {
    if state != "done" && state != "failed" {
        return Err(StoreError::Other(format!("bad delivery state {state}")));
    }
    let tx = c.transaction()?;
    finish_in(&tx, push_id, device_id, state)?;
    tx.commit()?;
    Ok(())
}

/// [`finish`] inside a transaction the caller holds, with cached statements.
pub fn finish_in(c: &Connection, push_id: i64, device_id: &str, state: &str) -> Result<()> {
    c.prepare_cached(
        "UPDATE relay_deliveries SET state = ?3, attempts = attempts + 1 WHERE push_id = ?1 AND device_id = ?2",
    )?
    .execute(params![push_id, device_id, state])?;
    c.prepare_cached(
        "DELETE FROM relay_outbox WHERE id = ?1
         AND NOT EXISTS (SELECT 1 FROM relay_deliveries WHERE push_id = ?1 AND state IN ('pending', 'sending'))",
    )?
    .execute([push_id])?;
    Ok(())
}

pub fn reschedule(c: &Connection, push_id: i64, device_id: &str, next_at_ms: i64) -> Result<()> {
    c.prepare_cached(
        "UPDATE relay_deliveries SET state = 'pending', attempts = attempts + 1, next_at = ?3
         WHERE push_id = ?1 AND device_id = ?2 AND state = 'sending'",
    )?
    .execute(params![push_id, device_id, next_at_ms])?;
    Ok(())
}

/// Drop pushes whose deliveries all ended (e.g. after a device was deactivated).
pub fn sweep(c: &Connection) -> Result<usize> {
    Ok(c.execute(
        "DELETE FROM relay_outbox WHERE NOT EXISTS
           (SELECT 1 FROM relay_deliveries x WHERE x.push_id = relay_outbox.id AND x.state IN ('pending', 'sending'))",
        [],
    )?)
}

/// Count of deliveries still pending (for tests and diagnostics).
pub fn pending_count(c: &Connection) -> Result<i64> {
    Ok(c.query_row(
        "SELECT COUNT(*) FROM relay_deliveries WHERE state IN ('pending', 'sending')",
        [],
        |r| r.get(0),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One push in a transaction of its own: `(push id, deliveries)`.
    fn enqueue(c: &mut Connection, token_hash: &[u8], p: &NewPush<'_>, now_ms: i64) -> Result<Option<(i64, usize)>> {
        let tx = c.transaction()?;
        let r = enqueue_in(&tx, token_hash, p, now_ms, false)?;
        tx.commit()?;
        Ok(r.map(|(id, n, _)| (id, n)))
    }

    fn setup() -> (tempfile::TempDir, crate::store::Store, i64) {
        // A token "t" of the account, for `enqueue`.
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::Store::open_in(dir.path()).unwrap();
        let id = s
            .blocking(|c| {
                let a = create_account(c, "u", "", "!")?.unwrap();
                for dev in ["d1", "d2"] {
                    put_device(
                        c,
                        &Device {
                            id: dev.into(),
                            account_id: a.id,
                            kind: "apns".into(),
                            name: None,
                            active: true,
                            registration_id: "ab".into(),
                            device_id: None,
                            p256dh: None,
                            auth: None,
                            upstream_token: None,
                            created: 0,
                        },
                    )?;
                }
                insert_token(
                    c,
                    &Token {
                        hash: b"t".to_vec(),
                        prefix: "t".into(),
                        account_id: a.id,
                        device_id: "d1".into(),
                        device_kind: String::new(),
                        name: None,
                        created: 0,
                        expires: i64::MAX,
                        rate: None,
                    },
                )?;
                Ok(a.id)
            })
            .unwrap();
        (dir, s, id)
    }

    #[test]
    fn a_claimed_delivery_is_not_claimed_again_until_released() {
        let (_dir, s, account_id) = setup();
        s.blocking(|c| {
            let p = NewPush {
                account_id,
                token: "t",
                collapse: "c",
                data: None,
                priority: "high",
                expires: i64::MAX,
            };
            let (push, n) = enqueue(c, b"t", &p, 0)?.unwrap();
            assert_eq!(n, 2);
            assert_eq!(claim(c, 1, 10)?.len(), 2);
            assert!(claim(c, 1, 10)?.is_empty(), "claimed rows are not handed out twice");
            assert_eq!(pending_count(c)?, 2);
            assert_eq!(release_claims(c)?, 2);
            let again = claim(c, 1, 10)?;
            assert_eq!(again.len(), 2);
            finish(c, push, "d1", "done")?;
            reschedule(c, push, "d2", 5_000)?;
            assert!(claim(c, 4_999, 10)?.is_empty(), "not due yet");
            assert_eq!(claim(c, 5_000, 10)?.len(), 1);
            finish(c, push, "d2", "failed")?;
            assert_eq!(pending_count(c)?, 0);
            let left: i64 = c.query_row("SELECT COUNT(*) FROM relay_outbox", [], |r| r.get(0))?;
            assert_eq!(left, 0, "a finished push leaves the outbox");
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn deactivating_a_device_ends_its_deliveries() {
        let (_dir, s, account_id) = setup();
        s.blocking(|c| {
            let p = NewPush {
                account_id,
                token: "t",
                collapse: "c",
                data: None,
                priority: "low",
                expires: i64::MAX,
            };
            enqueue(c, b"t", &p, 0)?;
            deactivate_device(c, "d1")?;
            let due = claim(c, 1, 10)?;
            assert_eq!(due.iter().map(|d| d.device.id.as_str()).collect::<Vec<_>>(), vec!["d2"]);
            let (_, n) = enqueue(c, b"t", &p, 0)?.unwrap();
            assert!(enqueue(c, b"gone", &p, 0)?.is_none(), "no push for a revoked token");
            assert_eq!(n, 1, "an inactive device gets no new deliveries");
            Ok(())
        })
        .unwrap();
    }
}

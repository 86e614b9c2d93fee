//! The relay's state in PostgreSQL, shared by every node that names the
//! same `[relay] database`: tokio-postgres over rustls, a deadpool pool,
//! statements prepared once per connection. Migrations run at start-up
//! under an advisory lock, so nodes starting together apply each once.
//!
//! How the nodes share the work, without talking to each other:
//! - pushes are accepted in batches (whatever arrived while the previous
//!   batch was being written), each by one statement that moves the tokens'
//!   GCRA timestamps forward (the per-token rate limit, exact across nodes),
//!   inserts the pushes and their deliveries and `NOTIFY`s every node's
//!   dispatcher: one commit for many 202s;
//! - a dispatcher claims due deliveries with `FOR UPDATE SKIP LOCKED`,
//!   marking them `sending` with a lease (`next_at` = end of the lease): a
//!   node killed while sending loses them to the others when it runs out;
//! - the APNs provider token and the VAPID key live in `relay_shared`, made
//!   by one node under a row lock and read by the others.
//!
//! Errors that a retry can clear (connection lost, server shutting down, a
//! read-only standby after failover, the pool exhausted) become
//! [`StoreError::Unavailable`]: the API answers 503 with `Retry-After`.

use super::{Enqueued, Finished, RelayStore, Shared, TokenLimit};
use crate::{
    config::RelayConfig,
    store::{
        now,
        relay::{Account, Delivery, Device, NewPush, Taken, Token},
        Result, StoreError,
    },
};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use std::{sync::Arc, time::Duration};
use tokio::sync::{watch, Notify};
use tokio_postgres::{error::SqlState, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Migrations, in order; `relay_schema.version` records how many ran.
/// Append only; never edit one that has shipped.
const MIGRATIONS: &[(&str, &str)] = &[("relay", include_str!("pg_migrations/0001_relay.sql"))];
/// The advisory lock held while migrating ("pushbox" in ASCII).
const MIGRATION_LOCK: i64 = 0x0070_7573_6862_6f78;
/// The channel a committed push is announced on.
const CHANNEL: &str = "pushbox_relay";
/// How long a request waits for a pooled connection, or to open one.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// Of the pushes `$1` (locked by the caller), remove those with no delivery
/// left to make: the last delivery of a push to end removes it.
const DROP_ENDED: &str = "DELETE FROM relay_outbox o WHERE o.id = ANY($1) AND NOT EXISTS
   (SELECT 1 FROM relay_deliveries x WHERE x.push_id = o.id AND x.state IN ('pending', 'sending'))";

/// One delivery's end, waiting for the finisher's next batch.
type FinishJob = (i64, String, Finished, tokio::sync::oneshot::Sender<Result<()>>);
/// Most outcomes the finisher writes in one transaction.
const FINISH_BATCH: usize = 512;
/// Most pushes accepted by one statement.
const ACCEPT_BATCH: usize = 256;
/// Accept batches written at once (each on its own connection): while one
/// commits, the next is already being written.
const ACCEPTERS: usize = 2;

/// One push waiting for the accepters' next batch.
struct AcceptJob {
    hash: Vec<u8>,
    /// GCRA emission interval and burst tolerance, in microseconds.
    step: i64,
    tau: i64,
    token: String,
    collapse: String,
    data: Option<String>,
    priority: String,
    expires: i64,
    next_at: i64,
    reply: tokio::sync::oneshot::Sender<Result<Enqueued>>,
}

pub struct Postgres {
    pool: Pool,
    /// Outcomes are written in batches by one task (a few statements per
    /// batch rather than per delivery).
    finisher: tokio::sync::mpsc::UnboundedSender<FinishJob>,
    /// Pushes are accepted in batches by [`ACCEPTERS`] tasks.
    accepter: tokio::sync::mpsc::UnboundedSender<AcceptJob>,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// This process's name in `claimed_by`.
    node: String,
    lease: Duration,
}

/// The schema version this pushbox knows.
pub fn schema_version() -> i32 {
    MIGRATIONS.len() as i32
}

impl Postgres {
    /// Connect to `url` and bring the schema up to date.
    pub async fn connect(url: &str, relay: &RelayConfig, node: &str) -> anyhow::Result<Postgres> {
        let (config, tls) = settings(url, relay)?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(relay.database_pool)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .build()?;
        let (finisher, jobs) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(finish_loop(pool.clone(), jobs));
        let (accepter, pushes) = tokio::sync::mpsc::unbounded_channel();
        let pushes = Arc::new(tokio::sync::Mutex::new(pushes));
        for _ in 0..ACCEPTERS {
            tokio::spawn(accept_loop(pool.clone(), pushes.clone()));
        }
        let pg = Postgres {
            pool,
            finisher,
            accepter,
            config,
            tls,
            node: node.to_string(),
            lease: relay.claim_lease.get(),
        };
        let (from, to) = pg.migrate().await.map_err(|e| anyhow::anyhow!("relay.database: {e}"))?;
        if from != to {
            tracing::info!(from, to, "relay database migrated");
        }
        Ok(pg)
    }

    async fn migrate(&self) -> Result<(i32, i32)> {
        let mut c = self.pool.get().await.map_err(pool)?;
        let tx = c.transaction().await.map_err(pg)?;
        // Held until commit: a node starting at the same moment waits here,
        // then finds the schema current.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS relay_schema (version INTEGER NOT NULL)")
            .await
            .map_err(pg)?;
        let current: i32 = match tx
            .query_opt("SELECT version FROM relay_schema", &[])
            .await
            .map_err(pg)?
        {
            Some(r) => r.get(0),
            None => {
                tx.execute("INSERT INTO relay_schema (version) VALUES (0)", &[])
                    .await
                    .map_err(pg)?;
                0
            }
        };
        if current > schema_version() {
            return Err(StoreError::Other(format!(
                "the relay database is at schema version {current}, newer than this pushbox knows ({}); \
                 refusing to run an older pushbox on it",
                schema_version()
            )));
        }
        for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.batch_execute(sql)
                .await
                .map_err(|e| StoreError::Other(format!("migration {} ({name}) failed: {e}", i + 1)))?;
            tx.execute("UPDATE relay_schema SET version = $1", &[&(i as i32 + 1)])
                .await
                .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        Ok((current, schema_version()))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool)
    }

    /// Run one prepared statement and return its rows.
    async fn rows(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<Vec<Row>> {
        let c = self.client().await?;
        let st = c.prepare_cached(sql).await.map_err(pg)?;
        c.query(&st, params).await.map_err(pg)
    }

    async fn exec(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<u64> {
        let c = self.client().await?;
        let st = c.prepare_cached(sql).await.map_err(pg)?;
        c.execute(&st, params).await.map_err(pg)
    }
}

/// The connection settings and TLS of a `[relay] database` URL. Without an
/// `sslmode` in the URL, TLS is required unless the host is on loopback or
/// a Unix socket.
pub fn settings(url: &str, relay: &RelayConfig) -> anyhow::Result<(tokio_postgres::Config, MakeRustlsConnect)> {
    let mut config = crate::config::relay::database_url(url).map_err(|e| anyhow::anyhow!("relay.database: {e}"))?;
    if !url.contains("sslmode=") && !config.get_hosts().iter().all(local_host) {
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
    config.connect_timeout(POOL_WAIT);
    config.application_name("pushbox");
    let mut tls = (*crate::push::client::tls_config(relay.ca_roots.as_deref())?).clone();
    // PostgreSQL speaks its own protocol inside TLS, not HTTP.
    tls.alpn_protocols.clear();
    Ok((config, MakeRustlsConnect::new(tls)))
}

fn local_host(h: &tokio_postgres::config::Host) -> bool {
    match h {
        tokio_postgres::config::Host::Tcp(name) => {
            name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => true,
    }
}

/// Connect once and read the schema version (`pushbox check`): (found, expected).
pub async fn check(url: &str, relay: &RelayConfig) -> anyhow::Result<(i32, i32)> {
    let (config, tls) = settings(url, relay)?;
    let (client, conn) = config.connect(tls).await?;
    let task = tokio::spawn(conn);
    let found = match client.query_opt("SELECT version FROM relay_schema", &[]).await {
        Ok(r) => r.map(|r| r.get(0)).unwrap_or(0),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => 0,
        Err(e) => return Err(e.into()),
    };
    drop(client);
    let _ = task.await;
    Ok((found, schema_version()))
}

/// A PostgreSQL error as a store error: transient ones become `Unavailable`.
fn pg(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let transient = [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::READ_ONLY_SQL_TRANSACTION,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::CONNECTION_FAILURE,
        ];
        return if transient.contains(db.code()) {
            StoreError::Unavailable(format!("PostgreSQL: {db}"))
        } else {
            StoreError::Other(format!("PostgreSQL: {db}"))
        };
    }
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io || e.to_string().contains("connect") || e.to_string().contains("timed out") {
        StoreError::Unavailable(format!("PostgreSQL: {e}"))
    } else {
        StoreError::Other(format!("PostgreSQL: {e}"))
    }
}

/// Not getting a connection (none free in time, or opening one failed for
/// whatever reason the server gave) is always "try later".
fn pool(e: PoolError) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL: no connection: {e}"))
}

const DEVICE_COLS: &str =
    "d.id, d.account_id, d.kind, d.name, d.active, d.registration_id, d.device_id, d.p256dh, d.auth, d.upstream_token, d.created";

fn device_row(r: &Row, at: usize) -> Device {
    Device {
        id: r.get(at),
        account_id: r.get(at + 1),
        kind: r.get(at + 2),
        name: r.get(at + 3),
        active: r.get(at + 4),
        registration_id: r.get(at + 5),
        device_id: r.get(at + 6),
        p256dh: r.get(at + 7),
        auth: r.get(at + 8),
        upstream_token: r.get(at + 9),
        created: r.get(at + 10),
    }
}

const TOKEN_COLS: &str = "t.hash, t.prefix, t.account_id, t.device_id, d.kind, t.name, t.created, t.expires, t.rate";

fn token_row(r: &Row) -> Token {
    Token {
        hash: r.get(0),
        prefix: r.get(1),
        account_id: r.get(2),
        device_id: r.get(3),
        device_kind: r.get(4),
        name: r.get(5),
        created: r.get(6),
        expires: r.get(7),
        rate: r.get::<_, Option<i32>>(8).map(|v| v.max(0) as u32),
    }
}

fn account_row(r: &Row) -> Account {
    Account {
        id: r.get(0),
        username: r.get(1),
        email: r.get(2),
    }
}

#[async_trait]
impl RelayStore for Postgres {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn account_by_username(&self, username: &str) -> Result<Option<(Account, String)>> {
        let rows = self
            .rows(
                "SELECT id, username, email, password_hash FROM relay_accounts WHERE username = $1",
                &[&username],
            )
            .await?;
        Ok(rows.first().map(|r| (account_row(r), r.get(3))))
    }

    async fn create_account(&self, username: &str, email: &str, password_hash: &str) -> Result<Result<Account, Taken>> {
        if self.account_by_username(username).await?.is_some() {
            return Ok(Err(Taken::Username));
        }
        let c = self.client().await?;
        let st = c
            .prepare_cached(
                "INSERT INTO relay_accounts (username, email, password_hash, created) VALUES ($1, $2, $3, $4)
                 RETURNING id",
            )
            .await
            .map_err(pg)?;
        match c.query_one(&st, &[&username, &email, &password_hash, &now()]).await {
            Ok(r) => Ok(Ok(Account {
                id: r.get(0),
                username: username.into(),
                email: email.into(),
            })),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                let email_taken = e
                    .as_db_error()
                    .and_then(|d| d.constraint())
                    .is_some_and(|c| c == "relay_accounts_email");
                Ok(Err(if email_taken { Taken::Email } else { Taken::Username }))
            }
            Err(e) => Err(pg(e)),
        }
    }

    async fn delete_account(&self, id: i64) -> Result<()> {
        self.exec("DELETE FROM relay_accounts WHERE id = $1", &[&id]).await?;
        Ok(())
    }

    async fn insert_api_key(&self, hash: &[u8], account_id: i64) -> Result<()> {
        self.exec(
            "INSERT INTO relay_api_keys (hash, account_id, created) VALUES ($1, $2, $3)",
            &[&hash, &account_id, &now()],
        )
        .await?;
        Ok(())
    }

    async fn account_by_api_key(&self, hash: &[u8]) -> Result<Option<(Account, Vec<u8>)>> {
        let rows = self
            .rows(
                "SELECT a.id, a.username, a.email, k.hash FROM relay_api_keys k
                 JOIN relay_accounts a ON a.id = k.account_id WHERE k.hash = $1",
                &[&hash],
            )
            .await?;
        Ok(rows.first().map(|r| (account_row(r), r.get(3))))
    }

    async fn list_devices(&self, account_id: i64, kind: &str) -> Result<Vec<Device>> {
        let rows = self
            .rows(
                &format!(
                    "SELECT {DEVICE_COLS} FROM relay_devices d WHERE d.account_id = $1 AND d.kind = $2
                     ORDER BY d.created, d.seq"
                ),
                &[&account_id, &kind],
            )
            .await?;
        Ok(rows.iter().map(|r| device_row(r, 0)).collect())
    }

    async fn get_device(&self, account_id: i64, id: &str) -> Result<Option<Device>> {
        let rows = self
            .rows(
                &format!("SELECT {DEVICE_COLS} FROM relay_devices d WHERE d.account_id = $1 AND d.id = $2"),
                &[&account_id, &id],
            )
            .await?;
        Ok(rows.first().map(|r| device_row(r, 0)))
    }

    async fn put_device(&self, d: &Device) -> Result<()> {
        self.exec(
            "INSERT INTO relay_devices (id, account_id, kind, name, active, registration_id, device_id, p256dh, auth,
               upstream_token, created)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, active = excluded.active,
               registration_id = excluded.registration_id, device_id = excluded.device_id,
               p256dh = excluded.p256dh, auth = excluded.auth, upstream_token = excluded.upstream_token",
            &[
                &d.id,
                &d.account_id,
                &d.kind,
                &d.name,
                &d.active,
                &d.registration_id,
                &d.device_id,
                &d.p256dh,
                &d.auth,
                &d.upstream_token,
                &d.created,
            ],
        )
        .await?;
        Ok(())
    }

    async fn delete_device(&self, account_id: i64, id: &str) -> Result<bool> {
        Ok(self
            .exec(
                "DELETE FROM relay_devices WHERE account_id = $1 AND id = $2",
                &[&account_id, &id],
            )
            .await?
            > 0)
    }

    async fn deactivate_device(&self, id: &str) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // The pushes it had are locked first, as `finish` locks them, so
        // that the last delivery of a push to end removes it.
        let pushes: Vec<i64> = tx
            .query(
                "SELECT o.id FROM relay_outbox o WHERE o.id IN
                   (SELECT push_id FROM relay_deliveries WHERE device_id = $1 AND state IN ('pending', 'sending'))
                 ORDER BY o.id FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.execute("UPDATE relay_devices SET active = FALSE WHERE id = $1", &[&id])
            .await
            .map_err(pg)?;
        tx.execute(
            "UPDATE relay_deliveries SET state = 'failed' WHERE device_id = $1 AND state IN ('pending', 'sending')",
            &[&id],
        )
        .await
        .map_err(pg)?;
        tx.execute(DROP_ENDED, &[&pushes]).await.map_err(pg)?;
        tx.commit().await.map_err(pg)
    }

    async fn insert_token(&self, t: &Token) -> Result<Token> {
        let rate = t.rate.map(|r| r.min(i32::MAX as u32) as i32);
        self.exec(
            "INSERT INTO relay_tokens (hash, prefix, account_id, device_id, name, created, expires, rate)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &t.hash,
                &t.prefix,
                &t.account_id,
                &t.device_id,
                &t.name,
                &t.created,
                &t.expires,
                &rate,
            ],
        )
        .await?;
        self.token_by_hash(&t.hash)
            .await?
            .ok_or_else(|| StoreError::Other("token vanished".into()))
    }

    async fn list_tokens(&self, account_id: i64) -> Result<Vec<Token>> {
        let rows = self
            .rows(
                &format!(
                    "SELECT {TOKEN_COLS} FROM relay_tokens t JOIN relay_devices d ON d.id = t.device_id
                     WHERE t.account_id = $1 ORDER BY t.created, t.seq"
                ),
                &[&account_id],
            )
            .await?;
        Ok(rows.iter().map(token_row).collect())
    }

    async fn token_by_hash(&self, hash: &[u8]) -> Result<Option<Token>> {
        let rows = self
            .rows(
                &format!(
                    "SELECT {TOKEN_COLS} FROM relay_tokens t JOIN relay_devices d ON d.id = t.device_id WHERE t.hash = $1"
                ),
                &[&hash],
            )
            .await?;
        Ok(rows.first().map(token_row))
    }

    async fn rename_token(&self, hash: &[u8], name: Option<&str>) -> Result<()> {
        self.exec("UPDATE relay_tokens SET name = $2 WHERE hash = $1", &[&hash, &name])
            .await?;
        Ok(())
    }

    async fn delete_token(&self, hash: &[u8]) -> Result<bool> {
        Ok(self.exec("DELETE FROM relay_tokens WHERE hash = $1", &[&hash]).await? > 0)
    }

    async fn enqueue(&self, p: &NewPush<'_>, limit: TokenLimit<'_>, now_ms: i64) -> Result<Enqueued> {
        // GCRA: one push per `step`, bursts of `per_minute`.
        let per_minute = i64::from(limit.per_minute.max(1));
        let step = (60_000_000 / per_minute).max(1);
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.accepter
            .send(AcceptJob {
                hash: limit.hash.to_vec(),
                step,
                tau: 60_000_000 - step,
                token: p.token.to_string(),
                collapse: p.collapse.to_string(),
                data: p.data.map(str::to_string),
                priority: p.priority.to_string(),
                expires: p.expires,
                next_at: now_ms,
                reply,
            })
            .map_err(|_| StoreError::Other("the relay's accepters stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Other("the relay's accepters stopped".into()))?
    }

    async fn recover(&self) -> Result<usize> {
        // This node's claims from before a crash come back at once; other
        // nodes' may be in flight right now and end with their lease.
        Ok(self
            .exec(
                "UPDATE relay_deliveries SET state = 'pending', claimed_by = NULL, next_at = $2
                 WHERE state = 'sending' AND claimed_by = $1",
                &[&self.node, &crate::push::now_ms()],
            )
            .await? as usize)
    }

    async fn claim(&self, now_ms: i64, limit: usize) -> Result<Vec<Delivery>> {
        let until = now_ms + self.lease.as_millis() as i64;
        let rows = self
            .rows(
                &format!(
                    "WITH c AS (
                       SELECT push_id, device_id FROM relay_deliveries
                       WHERE state IN ('pending', 'sending') AND next_at <= $1
                       ORDER BY next_at LIMIT $2 FOR UPDATE SKIP LOCKED),
                     u AS (
                       UPDATE relay_deliveries x SET state = 'sending', next_at = $3, claimed_by = $4
                       FROM c WHERE x.push_id = c.push_id AND x.device_id = c.device_id
                       RETURNING x.push_id, x.device_id, x.attempts)
                     SELECT o.id, o.token, o.collapse, o.data, o.priority, o.created, o.expires, u.attempts, {DEVICE_COLS}
                     FROM u JOIN relay_outbox o ON o.id = u.push_id JOIN relay_devices d ON d.id = u.device_id"
                ),
                &[&now_ms, &(limit as i64), &until, &self.node],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Delivery {
                push_id: r.get(0),
                token: r.get(1),
                collapse: r.get(2),
                data: r.get(3),
                priority: r.get(4),
                created: r.get(5),
                expires: r.get(6),
                attempts: r.get::<_, i32>(7).max(0) as u32,
                device: device_row(r, 8),
            })
            .collect())
    }

    async fn next_due(&self) -> Result<Option<i64>> {
        let rows = self
            .rows(
                "SELECT MIN(next_at) FROM relay_deliveries WHERE state IN ('pending', 'sending')",
                &[],
            )
            .await?;
        Ok(rows.first().and_then(|r| r.get(0)))
    }

    async fn finish(&self, push_id: i64, device_id: &str, how: Finished) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.finisher
            .send((push_id, device_id.to_string(), how, tx))
            .map_err(|_| StoreError::Other("the relay's finisher stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Other("the relay's finisher stopped".into()))?
    }

    async fn reschedule(&self, push_id: i64, device_id: &str, next_at_ms: i64) -> Result<()> {
        // Only while this node still holds the claim: after its lease ran
        // out another node may have it.
        self.exec(
            "UPDATE relay_deliveries SET state = 'pending', attempts = attempts + 1, next_at = $3, claimed_by = NULL
             WHERE push_id = $1 AND device_id = $2 AND state = 'sending' AND claimed_by = $4",
            &[&push_id, &device_id, &next_at_ms, &self.node],
        )
        .await?;
        Ok(())
    }

    async fn pending_count(&self) -> Result<i64> {
        let rows = self
            .rows(
                "SELECT COUNT(*) FROM relay_deliveries WHERE state IN ('pending', 'sending')",
                &[],
            )
            .await?;
        Ok(rows.first().map(|r| r.get(0)).unwrap_or(0))
    }

    async fn shared_value(&self, name: &str, candidate: &str) -> Result<String> {
        self.exec(
            "INSERT INTO relay_shared (name, value, made) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            &[&name, &candidate, &now()],
        )
        .await?;
        let rows = self
            .rows("SELECT value FROM relay_shared WHERE name = $1", &[&name])
            .await?;
        rows.first()
            .map(|r| r.get(0))
            .ok_or_else(|| StoreError::Other(format!("shared value {name} vanished")))
    }

    async fn fresh_value(
        &self,
        name: &str,
        max_age: Duration,
        make: &(dyn Fn() -> anyhow::Result<String> + Send + Sync),
    ) -> Result<Shared> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        tx.execute(
            "INSERT INTO relay_shared (name, value, made) VALUES ($1, '', 0) ON CONFLICT (name) DO NOTHING",
            &[&name],
        )
        .await
        .map_err(pg)?;
        // The row lock makes the other nodes wait for the one making it.
        let r = tx
            .query_one(
                "SELECT value, made FROM relay_shared WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await
            .map_err(pg)?;
        let (value, made): (String, i64) = (r.get(0), r.get(1));
        let t = now();
        if !value.is_empty() && t - made < max_age.as_secs() as i64 {
            tx.commit().await.map_err(pg)?;
            return Ok(Shared { value, made });
        }
        let value = make().map_err(|e| StoreError::Other(e.to_string()))?;
        tx.execute(
            "UPDATE relay_shared SET value = $2, made = $3 WHERE name = $1",
            &[&name, &value, &t],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(Shared { value, made: t })
    }

    async fn forget_value(&self, name: &str, value: &str) -> Result<()> {
        self.exec(
            "UPDATE relay_shared SET made = 0 WHERE name = $1 AND value = $2",
            &[&name, &value],
        )
        .await?;
        Ok(())
    }

    fn watch_commits(&self, wake: Arc<Notify>, stop: watch::Receiver<bool>) {
        tokio::spawn(listen(self.config.clone(), self.tls.clone(), wake, stop));
    }
}

/// Accept pushes in batches: take whatever is queued (up to
/// [`ACCEPT_BATCH`]), write it with one statement, answer every caller.
async fn accept_loop(pool: Pool, jobs: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<AcceptJob>>>) {
    let mut batch = Vec::with_capacity(ACCEPT_BATCH);
    // Waits for one push, then takes whatever else is queued.
    while jobs.lock().await.recv_many(&mut batch, ACCEPT_BATCH).await > 0 {
        match accept_batch(&pool, &batch).await {
            Ok(answers) => {
                for (job, answer) in batch.drain(..).zip(answers) {
                    let _ = job.reply.send(Ok(answer));
                }
            }
            Err(e) => {
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(super::copy_for_caller(&e)));
                }
            }
        }
    }
}

/// One statement for a batch of pushes, answers in the batch's order.
///
/// The per-token rate limit stays exact: the batch's tokens are locked in
/// one order (so two batches, on this node or another, cannot deadlock),
/// and a token with `k` pushes in the batch admits the first
/// `min(k, (tau - ahead) / step + 1)` of them, where `ahead` is how far its
/// GCRA timestamp is ahead of the database's clock: what `k` pushes
/// accepted one by one would admit. The token's timestamp moves forward by
/// one step per push admitted. Time is the database's clock, one for every
/// node. A token gone since it was looked up refuses its pushes (`Gone`).
async fn accept_batch(pool: &Pool, batch: &[AcceptJob]) -> Result<Vec<Enqueued>> {
    let hashes: Vec<&[u8]> = batch.iter().map(|j| j.hash.as_slice()).collect();
    let steps: Vec<i64> = batch.iter().map(|j| j.step).collect();
    let taus: Vec<i64> = batch.iter().map(|j| j.tau).collect();
    let tokens: Vec<&str> = batch.iter().map(|j| j.token.as_str()).collect();
    let collapses: Vec<&str> = batch.iter().map(|j| j.collapse.as_str()).collect();
    let data: Vec<Option<&str>> = batch.iter().map(|j| j.data.as_deref()).collect();
    let priorities: Vec<&str> = batch.iter().map(|j| j.priority.as_str()).collect();
    let expires: Vec<i64> = batch.iter().map(|j| j.expires).collect();
    let next_at: Vec<i64> = batch.iter().map(|j| j.next_at).collect();
    let c = pool.get().await.map_err(self::pool)?;
    let st = c
        .prepare_cached(
            "WITH clock AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS now_us),
             j AS (SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                                        $6::text[], $7::text[], $8::bigint[], $9::bigint[])
                   WITH ORDINALITY AS j(hash, step, tau, token, collapse, data, priority, expires, next_at, ord)),
             r AS (SELECT j.*, row_number() OVER (PARTITION BY j.hash ORDER BY j.ord) AS rk FROM j),
             g AS (SELECT hash, min(step) AS step, min(tau) AS tau, count(*) AS k FROM j GROUP BY hash),
             l AS (SELECT x.hash, x.account_id, GREATEST(x.tat, clock.now_us) - clock.now_us AS ahead
                   FROM relay_tokens x, clock WHERE x.hash IN (SELECT hash FROM g)
                   ORDER BY x.hash FOR UPDATE OF x),
             m AS (SELECT l.hash, l.account_id, l.ahead, g.step, g.tau,
                          CASE WHEN l.ahead <= g.tau THEN LEAST(g.k, (g.tau - l.ahead) / g.step + 1) ELSE 0 END AS admit
                   FROM l JOIN g ON g.hash = l.hash),
             t AS (UPDATE relay_tokens x SET tat = clock.now_us + m.ahead + m.admit * m.step FROM m, clock
                   WHERE x.hash = m.hash AND m.admit > 0 RETURNING 1),
             p AS MATERIALIZED (
                   SELECT r.ord, m.account_id, r.token, r.collapse, r.data, r.priority, r.expires, r.next_at,
                          nextval('relay_outbox_id_seq') AS id,
                          (SELECT count(*) FROM relay_devices v WHERE v.account_id = m.account_id AND v.active) AS devices
                   FROM r JOIN m ON m.hash = r.hash WHERE r.rk <= m.admit),
             o AS (INSERT INTO relay_outbox (id, account_id, token, collapse, data, priority, created, expires)
                   SELECT id, account_id, token, collapse, data, priority, $10, expires FROM p WHERE devices > 0
                   RETURNING 1),
             d AS (INSERT INTO relay_deliveries (push_id, device_id, next_at)
                   SELECT p.id, v.id, p.next_at FROM p JOIN relay_devices v ON v.account_id = p.account_id AND v.active
                   WHERE p.devices > 0
                   RETURNING 1),
             n AS (SELECT pg_notify('pushbox_relay', '') WHERE EXISTS (SELECT 1 FROM o))
             SELECT j.ord, p.id, p.devices, m.hash IS NOT NULL, m.ahead + m.admit * m.step - m.tau,
                    (SELECT count(*) FROM n)
             FROM j LEFT JOIN p ON p.ord = j.ord LEFT JOIN m ON m.hash = j.hash
             ORDER BY j.ord",
        )
        .await
        .map_err(pg)?;
    let rows = c
        .query(
            &st,
            &[
                &hashes,
                &steps,
                &taus,
                &tokens,
                &collapses,
                &data,
                &priorities,
                &expires,
                &next_at,
                &now(),
            ],
        )
        .await
        .map_err(pg)?;
    if rows.len() != batch.len() {
        return Err(StoreError::Other(format!(
            "accepting {} pushes gave {} answers",
            batch.len(),
            rows.len()
        )));
    }
    Ok(rows
        .iter()
        .map(|r| {
            let (push_id, devices, found, over): (Option<i64>, Option<i64>, bool, Option<i64>) =
                (r.get(1), r.get(2), r.get(3), r.get(4));
            match (push_id, found) {
                (Some(push_id), _) => Enqueued::Accepted {
                    push_id,
                    devices: devices.unwrap_or(0) as usize,
                },
                (None, false) => Enqueued::Gone,
                (None, true) => Enqueued::Limited(Duration::from_micros(over.unwrap_or(1).max(1) as u64)),
            }
        })
        .collect())
}

/// Write delivery outcomes in batches: whatever is queued, in one
/// transaction that locks the pushes' outbox rows (so the last delivery of
/// a push to end, on whichever node, sees the others and removes it), then
/// answer every caller.
async fn finish_loop(pool: Pool, mut jobs: tokio::sync::mpsc::UnboundedReceiver<FinishJob>) {
    let mut batch = Vec::with_capacity(FINISH_BATCH);
    while jobs.recv_many(&mut batch, FINISH_BATCH).await > 0 {
        let r = finish_batch(&pool, &batch).await;
        for (.., reply) in batch.drain(..) {
            let _ = reply.send(r.as_ref().map(|_| ()).map_err(super::copy_for_caller));
        }
    }
}

async fn finish_batch(pool: &Pool, batch: &[FinishJob]) -> Result<()> {
    let ids: Vec<i64> = batch.iter().map(|j| j.0).collect();
    let devices: Vec<&str> = batch.iter().map(|j| j.1.as_str()).collect();
    let states: Vec<&str> = batch.iter().map(|j| j.2.as_str()).collect();
    let mut pushes = ids.clone();
    pushes.sort_unstable();
    pushes.dedup();
    let mut c = pool.get().await.map_err(self::pool)?;
    let tx = c.transaction().await.map_err(pg)?;
    let lock = tx
        .prepare_cached("SELECT 1 FROM relay_outbox WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .await
        .map_err(pg)?;
    tx.execute(&lock, &[&pushes]).await.map_err(pg)?;
    let end = tx
        .prepare_cached(
            "UPDATE relay_deliveries x SET state = u.state, attempts = x.attempts + 1
             FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(push_id, device_id, state)
             WHERE x.push_id = u.push_id AND x.device_id = u.device_id",
        )
        .await
        .map_err(pg)?;
    tx.execute(&end, &[&ids, &devices, &states]).await.map_err(pg)?;
    let drop = tx.prepare_cached(DROP_ENDED).await.map_err(pg)?;
    tx.execute(&drop, &[&pushes]).await.map_err(pg)?;
    tx.commit().await.map_err(pg)
}

/// One connection outside the pool, `LISTEN`ing for committed pushes;
/// reconnects with backoff when it is lost. After each (re)connection the
/// dispatcher is woken once, for anything committed while it was away.
async fn listen(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    use futures_util::StreamExt;
    let mut backoff = Duration::from_millis(500);
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut conn)) => {
                let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                let sql = format!("LISTEN {CHANNEL}");
                let listening = client.batch_execute(&sql);
                tokio::pin!(listening);
                let mut subscribed = false;
                loop {
                    tokio::select! {
                        r = &mut listening, if !subscribed => match r {
                            Ok(()) => {
                                subscribed = true;
                                backoff = Duration::from_millis(500);
                                wake.notify_one();
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "relay database: LISTEN failed");
                                break;
                            }
                        },
                        m = messages.next() => match m {
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => wake.notify_one(),
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "relay database: the LISTEN connection was lost");
                                break;
                            }
                            None => break,
                        },
                        _ = crate::shutdown::stopped(&mut stop) => return,
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "relay database: cannot open the LISTEN connection"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = crate::shutdown::stopped(&mut stop) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

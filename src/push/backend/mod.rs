//! Where the relay keeps its state: one trait, [`RelayStore`], with two
//! implementations. [`sqlite::Sqlite`] (the default) keeps it in the node's
//! own SQLite file beside the XMPP data; [`postgres::Postgres`] keeps it in
//! a PostgreSQL database that any number of nodes share (`[relay]
//! database`). The push core ([`super::Relay`], the dispatcher, the APNs
//! provider token and the VAPID key) reaches its state only through here.

pub mod postgres;
pub mod sqlite;

use crate::{
    config::RelayConfig,
    store::{
        relay::{Account, Delivery, Device, NewPush, Taken, Token},
        Result, Store, StoreError,
    },
};
use async_trait::async_trait;
use std::{path::Path, sync::Arc, time::Duration};
use tokio::sync::{watch, Notify};

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The provider accepted it.
    Done,
    /// Given up: expired, refused for good, or its device is dead.
    Failed,
}

impl Finished {
    pub fn as_str(self) -> &'static str {
        match self {
            Finished::Done => "done",
            Finished::Failed => "failed",
        }
    }
}

/// The per-token limit a push must pass to be accepted: `per_minute`
/// pushes a minute, in bursts of up to `per_minute`.
#[derive(Debug, Clone, Copy)]
pub struct TokenLimit<'a> {
    pub hash: &'a [u8],
    pub per_minute: u32,
}

/// What became of an attempt to enqueue a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Committed: the push id and how many deliveries (active devices) it has.
    Accepted { push_id: i64, devices: usize },
    /// The token's rate limit refused it; try again after this long.
    Limited(Duration),
    /// The token was revoked between its lookup and the commit.
    Gone,
}

/// A value every node shares, with the Unix second it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared {
    pub value: String,
    pub made: i64,
}

/// The relay's state. Every method is one unit of work (one transaction or
/// one statement); secrets arrive already hashed.
#[async_trait]
pub trait RelayStore: Send + Sync {
    /// `sqlite` or `postgres`, for logs and `pushbox check`.
    fn kind(&self) -> &'static str;

    // ---- accounts and API keys ----
    async fn account_by_username(&self, username: &str) -> Result<Option<(Account, String)>>;
    async fn create_account(&self, username: &str, email: &str, password_hash: &str) -> Result<Result<Account, Taken>>;
    async fn delete_account(&self, id: i64) -> Result<()>;
    async fn insert_api_key(&self, hash: &[u8], account_id: i64) -> Result<()>;
    /// The account owning an API key, with the stored hash for a constant-time check.
    async fn account_by_api_key(&self, hash: &[u8]) -> Result<Option<(Account, Vec<u8>)>>;

    // ---- devices ----
    async fn list_devices(&self, account_id: i64, kind: &str) -> Result<Vec<Device>>;
    async fn get_device(&self, account_id: i64, id: &str) -> Result<Option<Device>>;
    /// Insert or replace (by id) a device.
    async fn put_device(&self, d: &Device) -> Result<()>;
    async fn delete_device(&self, account_id: i64, id: &str) -> Result<bool>;
    /// Mark a device dead: it gets no further pushes, its pending deliveries
    /// end, and pushes left with nothing to deliver leave the outbox.
    async fn deactivate_device(&self, id: &str) -> Result<()>;

    // ---- whitelist tokens ----
    /// Store a new token; returns it as read back (with its device's kind).
    async fn insert_token(&self, t: &Token) -> Result<Token>;
    async fn list_tokens(&self, account_id: i64) -> Result<Vec<Token>>;
    async fn token_by_hash(&self, hash: &[u8]) -> Result<Option<Token>>;
    async fn rename_token(&self, hash: &[u8], name: Option<&str>) -> Result<()>;
    async fn delete_token(&self, hash: &[u8]) -> Result<bool>;

    // ---- the outbox ----
    /// Pass the token's rate limit and commit the push with one delivery
    /// per active device of its account, durably, before returning.
    async fn enqueue(&self, p: &NewPush<'_>, limit: TokenLimit<'_>, now_ms: i64) -> Result<Enqueued>;
    /// At start-up: make deliveries that this store knows were interrupted
    /// claimable again. Returns how many.
    async fn recover(&self) -> Result<usize>;
    /// Claim up to `limit` deliveries due at `now_ms`, oldest first; no other
    /// claim gets them while they are being sent.
    async fn claim(&self, now_ms: i64, limit: usize) -> Result<Vec<Delivery>>;
    /// When the next delivery falls due (milliseconds), if any is waiting.
    async fn next_due(&self) -> Result<Option<i64>>;
    /// End a delivery; its push leaves the outbox once nothing of it is left.
    async fn finish(&self, push_id: i64, device_id: &str, how: Finished) -> Result<()>;
    /// Put a claimed delivery back, due at `next_at_ms`.
    async fn reschedule(&self, push_id: i64, device_id: &str, next_at_ms: i64) -> Result<()>;
    /// Deliveries not yet finished (tests, diagnostics).
    async fn pending_count(&self) -> Result<i64>;

    // ---- state every node shares ----
    /// The value stored under `name`, storing `candidate` first if there is
    /// none: the first node to start decides (the VAPID key).
    async fn shared_value(&self, name: &str, candidate: &str) -> Result<String>;
    /// The value under `name` if it was made less than `max_age` ago, else a
    /// new one from `make`, stored for every node; while one node makes it
    /// the others wait for it rather than each making their own (the APNs
    /// provider token).
    async fn fresh_value(
        &self,
        name: &str,
        max_age: Duration,
        make: &(dyn Fn() -> anyhow::Result<String> + Send + Sync),
    ) -> Result<Shared>;
    /// Forget `value` under `name` (the provider refused it), unless another
    /// node already replaced it.
    async fn forget_value(&self, name: &str, value: &str) -> Result<()>;

    /// Wake `wake` whenever another node commits a push, until `stop`.
    /// Nothing to do for a store only this node uses.
    fn watch_commits(&self, _wake: Arc<Notify>, _stop: watch::Receiver<bool>) {}

    /// Deliveries this store claimed itself as it committed their push, to
    /// be sent without a claim (the dispatcher takes the receiver once).
    /// `None`: every delivery is claimed from the store (`claim`).
    fn take_ready(&self) -> Option<tokio::sync::mpsc::Receiver<Delivery>> {
        None
    }
}

/// The error of a failed batch, for each of its callers: what it means
/// (the disk is full, the database is unreachable: answer "try later")
/// survives the copy.
fn copy_for_caller(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        e if e.is_full() => StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some(e.to_string()),
        )),
        e => StoreError::Other(e.to_string()),
    }
}

/// The relay's store as `[relay] database` says: PostgreSQL (connected,
/// migrated) when set, else the SQLite `store`. `data_dir` holds the node's
/// name among the nodes sharing a database.
pub async fn open(config: &RelayConfig, store: Store, data_dir: &Path) -> anyhow::Result<Arc<dyn RelayStore>> {
    Ok(match &config.database {
        Some(url) => Arc::new(postgres::Postgres::connect(url, config, &node_id(data_dir)?).await?),
        None => Arc::new(
            sqlite::Sqlite::try_new(store)
                .map_err(|e| anyhow::anyhow!("opening the relay's SQLite connections: {e}"))?,
        ),
    })
}

/// This node's name in claims: made on first start and kept in
/// `data_dir/relay/node-id`, so that a node restarted after a crash takes
/// back its own claims at once instead of waiting for their lease.
pub fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    let dir = data_dir.join("relay");
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("reading {}: {e}", path.display()),
    }
    std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    let id = uuid::Uuid::new_v4().to_string();
    std::fs::write(&path, format!("{id}\n")).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(id)
}

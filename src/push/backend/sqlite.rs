//! The relay's state in the node's own SQLite file (the default): the
//! queries of `store::relay`, per-token rate limits in this node's memory
//! (exact, since this node is the whole relay), and the shared values kept
//! in memory, made once per node.
//!
//! The hot path has its own connections to the file, so it neither waits
//! for the XMPP side's connection nor for each other:
//! - one **writer** thread takes whatever accepts and outcomes are queued,
//!   applies them in one transaction (a savepoint each) and commits once,
//!   fsynced (`synchronous = FULL`), before any of their callers hear back:
//!   group commit, so a 202 survives a power cut at the price of one fsync
//!   per batch rather than per push;
//! - an accepted push's deliveries are written as already claimed and
//!   handed to the dispatcher in memory, with no claim transaction (up to
//!   [`HANDOFF`] waiting; beyond that they are written `pending` and claimed
//!   from the table as before);
//! - token look-ups use a reader connection of their own.
//!
//! After a crash, `recover` puts every `sending` row back to `pending`, so
//! deliveries handed over in memory are not lost with the process.

use super::{Enqueued, Finished, RelayStore, Shared, TokenLimit};
use crate::{
    push::limits::Buckets,
    store::{
        now,
        relay::{self as db, Account, Delivery, Device, NewPush, Taken, Token},
        Result, Store, StoreError,
    },
};
use async_trait::async_trait;
use rusqlite::Connection;
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::{mpsc, oneshot};

/// Deliveries handed to the dispatcher in memory and not yet taken.
pub const HANDOFF: usize = 4096;
/// Most jobs the writer puts in one transaction.
const MAX_BATCH: usize = 1024;

pub struct Sqlite {
    store: Store,
    token_buckets: Buckets<Vec<u8>>,
    writer: mpsc::UnboundedSender<Job>,
    reader: Arc<Mutex<Connection>>,
    ready: Mutex<Option<mpsc::Receiver<Delivery>>>,
}

/// A push as the writer takes it (owned: it crosses to another thread).
struct OwnedPush {
    token_hash: Vec<u8>,
    account_id: i64,
    token: String,
    collapse: String,
    data: Option<String>,
    priority: String,
    expires: i64,
    now_ms: i64,
}

type Reply<T> = oneshot::Sender<Result<T>>;

enum Job {
    Enqueue(OwnedPush, Reply<Option<(i64, usize)>>),
    Finish(i64, String, Finished, Reply<()>),
    Reschedule(i64, String, i64, Reply<()>),
}

impl Sqlite {
    pub fn new(store: Store) -> Sqlite {
        Self::try_new(store).unwrap_or_else(|e| panic!("opening the relay's SQLite connections: {e}"))
    }

    /// The relay's store on `store`'s file, with its own writer thread and reader.
    pub fn try_new(store: Store) -> Result<Sqlite> {
        // The store's own connection settings (WAL, busy timeout, foreign
        // keys, transactions IMMEDIATE); the writer's commits are fsynced.
        let writer_conn = store.connection()?;
        writer_conn.pragma_update(None, "synchronous", "FULL")?;
        let reader = store.connection()?;
        let (writer, jobs) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = mpsc::channel(HANDOFF);
        std::thread::Builder::new()
            .name("relay-writer".into())
            .spawn(move || write_loop(writer_conn, jobs, ready_tx))
            .map_err(|e| StoreError::Other(format!("starting the relay writer: {e}")))?;
        Ok(Sqlite {
            store,
            token_buckets: Buckets::default(),
            writer,
            reader: Arc::new(Mutex::new(reader)),
            ready: Mutex::new(Some(ready_rx)),
        })
    }

    async fn write<T: Send + 'static>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(job(tx))
            .map_err(|_| StoreError::Other("the relay writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Other("the relay writer stopped".into()))?
    }

    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> Result<T> + Send + 'static) -> Result<T> {
        let conn = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&c)
        })
        .await?
    }
}

/// The writer: a batch of queued jobs per transaction, one commit, then the
/// answers (and the claimed deliveries, to the dispatcher).
fn write_loop(mut conn: Connection, mut jobs: mpsc::UnboundedReceiver<Job>, ready: mpsc::Sender<Delivery>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Waits for one job, then takes whatever else is queued.
    while jobs.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        // Room for the whole batch's deliveries? Only this thread sends, so
        // the room counted now is still there after the commit.
        let mut room = ready.capacity();
        let mut handed = Vec::new();
        let outcomes: Result<Vec<Result<Done>>> = (|| {
            // IMMEDIATE (the store's connections begin so): the write lock
            // is taken at BEGIN, waiting (busy timeout) for the daemon's
            // other connection. A deferred one reads first (enqueue looks
            // the token up) and, if that connection committed meanwhile,
            // fails to upgrade at once with SQLITE_BUSY, which no busy
            // timeout covers: a 500 under load.
            let mut tx = conn.transaction()?;
            let mut outcomes = Vec::with_capacity(batch.len());
            for job in &batch {
                // A job that fails is undone alone; the others commit.
                let sp = tx.savepoint()?;
                let r = apply(&sp, job, &mut room, &mut handed);
                if r.is_ok() {
                    sp.commit()?;
                }
                outcomes.push(r);
            }
            tx.commit()?;
            Ok(outcomes)
        })();
        match outcomes {
            Ok(outcomes) => {
                for d in handed {
                    let _ = ready.try_send(d);
                }
                for (job, r) in batch.drain(..).zip(outcomes) {
                    answer(job, r);
                }
            }
            Err(e) => {
                for job in batch.drain(..) {
                    answer(job, Err(super::copy_for_caller(&e)));
                }
            }
        }
    }
}

/// What a job produced, answered once its batch committed.
enum Done {
    Enqueued(Option<(i64, usize)>),
    Nothing,
}

fn apply(c: &Connection, job: &Job, room: &mut usize, handed: &mut Vec<Delivery>) -> Result<Done> {
    match job {
        Job::Enqueue(p, _) => {
            let push = NewPush {
                account_id: p.account_id,
                token: &p.token,
                collapse: &p.collapse,
                data: p.data.as_deref(),
                priority: &p.priority,
                expires: p.expires,
            };
            // Claimed in memory only while the dispatcher's queue has room
            // (with a margin: the device count is known only after the query).
            let claim = *room >= 64;
            let r = db::enqueue_in(c, &p.token_hash, &push, p.now_ms, claim)?;
            Ok(Done::Enqueued(r.map(|(id, n, d)| {
                *room = room.saturating_sub(d.len());
                handed.extend(d);
                (id, n)
            })))
        }
        Job::Finish(push_id, device, how, _) => {
            db::finish_in(c, *push_id, device, how.as_str()).map(|()| Done::Nothing)
        }
        Job::Reschedule(push_id, device, at, _) => db::reschedule(c, *push_id, device, *at).map(|()| Done::Nothing),
    }
}

fn answer(job: Job, r: Result<Done>) {
    match job {
        Job::Enqueue(_, reply) => {
            let _ = reply.send(r.map(|d| match d {
                Done::Enqueued(v) => v,
                Done::Nothing => None,
            }));
        }
        Job::Finish(.., reply) | Job::Reschedule(.., reply) => {
            let _ = reply.send(r.map(|_| ()));
        }
    }
}

#[async_trait]
impl RelayStore for Sqlite {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn account_by_username(&self, username: &str) -> Result<Option<(Account, String)>> {
        let u = username.to_string();
        self.store.call(move |c| db::account_by_username(c, &u)).await
    }

    async fn create_account(&self, username: &str, email: &str, password_hash: &str) -> Result<Result<Account, Taken>> {
        let (u, e, h) = (username.to_string(), email.to_string(), password_hash.to_string());
        self.store.call(move |c| db::create_account(c, &u, &e, &h)).await
    }

    async fn delete_account(&self, id: i64) -> Result<()> {
        self.store.call(move |c| db::delete_account(c, id)).await
    }

    async fn insert_api_key(&self, hash: &[u8], account_id: i64) -> Result<()> {
        let h = hash.to_vec();
        self.store.call(move |c| db::insert_api_key(c, &h, account_id)).await
    }

    async fn account_by_api_key(&self, hash: &[u8]) -> Result<Option<(Account, Vec<u8>)>> {
        let h = hash.to_vec();
        self.store.call(move |c| db::account_by_api_key(c, &h)).await
    }

    async fn list_devices(&self, account_id: i64, kind: &str) -> Result<Vec<Device>> {
        let k = kind.to_string();
        self.store.call(move |c| db::list_devices(c, account_id, &k)).await
    }

    async fn get_device(&self, account_id: i64, id: &str) -> Result<Option<Device>> {
        let id = id.to_string();
        self.store.call(move |c| db::get_device(c, account_id, &id)).await
    }

    async fn put_device(&self, d: &Device) -> Result<()> {
        let d = d.clone();
        self.store.call(move |c| db::put_device(c, &d)).await
    }

    async fn delete_device(&self, account_id: i64, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.store.call(move |c| db::delete_device(c, account_id, &id)).await
    }

    async fn deactivate_device(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.store
            .call(move |c| {
                db::deactivate_device(c, &id)?;
                db::sweep(c).map(|_| ())
            })
            .await
    }

    async fn insert_token(&self, t: &Token) -> Result<Token> {
        let t = t.clone();
        self.store
            .call(move |c| {
                db::insert_token(c, &t)?;
                db::token_by_hash(c, &t.hash)?.ok_or_else(|| StoreError::Other("token vanished".into()))
            })
            .await
    }

    async fn list_tokens(&self, account_id: i64) -> Result<Vec<Token>> {
        self.store.call(move |c| db::list_tokens(c, account_id)).await
    }

    async fn token_by_hash(&self, hash: &[u8]) -> Result<Option<Token>> {
        let h = hash.to_vec();
        self.read(move |c| db::token_by_hash(c, &h)).await
    }

    async fn rename_token(&self, hash: &[u8], name: Option<&str>) -> Result<()> {
        let (h, n) = (hash.to_vec(), name.map(str::to_string));
        self.store
            .call(move |c| db::update_token_name(c, &h, n.as_deref()))
            .await
    }

    async fn delete_token(&self, hash: &[u8]) -> Result<bool> {
        let h = hash.to_vec();
        self.store.call(move |c| db::delete_token(c, &h)).await
    }

    async fn enqueue(&self, p: &NewPush<'_>, limit: TokenLimit<'_>, now_ms: i64) -> Result<Enqueued> {
        if let Err(wait) = self.token_buckets.take(&limit.hash.to_vec(), limit.per_minute) {
            return Ok(Enqueued::Limited(wait));
        }
        let push = OwnedPush {
            token_hash: limit.hash.to_vec(),
            account_id: p.account_id,
            token: p.token.to_string(),
            collapse: p.collapse.to_string(),
            data: p.data.map(str::to_string),
            priority: p.priority.to_string(),
            expires: p.expires,
            now_ms,
        };
        // Committed and fsynced (with its batch) before the 202.
        Ok(match self.write(|reply| Job::Enqueue(push, reply)).await? {
            Some((push_id, devices)) => Enqueued::Accepted { push_id, devices },
            None => Enqueued::Gone,
        })
    }

    async fn recover(&self) -> Result<usize> {
        // This node is the only sender: whatever was `sending` died with it.
        self.store.call(|c| db::release_claims(c)).await
    }

    async fn claim(&self, now_ms: i64, limit: usize) -> Result<Vec<Delivery>> {
        self.store.call(move |c| db::claim(c, now_ms, limit)).await
    }

    async fn next_due(&self) -> Result<Option<i64>> {
        self.store.call(|c| db::next_due(c)).await
    }

    async fn finish(&self, push_id: i64, device_id: &str, how: Finished) -> Result<()> {
        let d = device_id.to_string();
        self.write(|reply| Job::Finish(push_id, d, how, reply)).await
    }

    async fn reschedule(&self, push_id: i64, device_id: &str, next_at_ms: i64) -> Result<()> {
        let d = device_id.to_string();
        self.write(|reply| Job::Reschedule(push_id, d, next_at_ms, reply)).await
    }

    async fn pending_count(&self) -> Result<i64> {
        self.store.call(|c| db::pending_count(c)).await
    }

    async fn shared_value(&self, _name: &str, candidate: &str) -> Result<String> {
        // One node: its own choice stands (the VAPID key lives in a file).
        Ok(candidate.to_string())
    }

    async fn fresh_value(
        &self,
        _name: &str,
        _max_age: Duration,
        make: &(dyn Fn() -> anyhow::Result<String> + Send + Sync),
    ) -> Result<Shared> {
        // One node: the caller caches the value; nothing to share it with.
        let value = make().map_err(|e| StoreError::Other(e.to_string()))?;
        Ok(Shared { value, made: now() })
    }

    async fn forget_value(&self, _name: &str, _value: &str) -> Result<()> {
        Ok(())
    }

    fn take_ready(&self) -> Option<mpsc::Receiver<Delivery>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

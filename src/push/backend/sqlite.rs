//! The relay's state in the node's own SQLite file (the default): the
//! queries of `store::relay` on the blocking pool, per-token rate limits in
//! this node's memory (exact, since this node is the whole relay), and the
//! shared values kept in memory, made once per node.

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
use std::time::Duration;

pub struct Sqlite {
    store: Store,
    token_buckets: Buckets<Vec<u8>>,
}

impl Sqlite {
    pub fn new(store: Store) -> Sqlite {
        Sqlite {
            store,
            token_buckets: Buckets::default(),
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
        self.store.call(move |c| db::token_by_hash(c, &h)).await
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
        let (account_id, token, collapse) = (p.account_id, p.token.to_string(), p.collapse.to_string());
        let (data, priority, expires) = (p.data.map(str::to_string), p.priority.to_string(), p.expires);
        let hash = limit.hash.to_vec();
        // Durable (fsynced) before the 202: a push accepted survives a power cut.
        let done = self
            .store
            .call_durable(move |c| {
                let p = NewPush {
                    account_id,
                    token: &token,
                    collapse: &collapse,
                    data: data.as_deref(),
                    priority: &priority,
                    expires,
                };
                db::enqueue(c, &hash, &p, now_ms)
            })
            .await?;
        Ok(match done {
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
        self.store.call(move |c| db::finish(c, push_id, &d, how.as_str())).await
    }

    async fn reschedule(&self, push_id: i64, device_id: &str, next_at_ms: i64) -> Result<()> {
        let d = device_id.to_string();
        self.store
            .call(move |c| db::reschedule(c, push_id, &d, next_at_ms))
            .await
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
}

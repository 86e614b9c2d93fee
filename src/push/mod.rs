//! The push core: relay accounts, devices, whitelist tokens, rate limits,
//! the durable outbox and its dispatcher, and the providers (APNs, FCM, Web
//! Push, upstream relays). It knows neither XMPP nor the relay's HTTP API:
//! both faces call [`Relay`], a cheap-clone handle.

pub mod backend;
pub mod client;
pub mod dispatch;
pub mod jwt;
pub mod limits;
pub mod providers;
pub mod secret;

use crate::{
    config::RelayConfig,
    store::{self, relay as db, StoreError},
};
use backend::{Enqueued, RelayStore, TokenLimit};
use std::{
    net::IpAddr,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::sync::Notify;

/// The longest a push may be kept, whatever the sender asks.
pub const MAX_TTL: Duration = Duration::from_secs(28 * 86400);
/// Longest relay username (ChatSecure's limit).
pub const MAX_USERNAME: usize = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Shown to the user: an APNs alert at priority 10, FCM priority HIGH.
    #[default]
    High,
    /// Wakes the app silently: an APNs background push at priority 5, FCM NORMAL.
    Low,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Low => "low",
        }
    }
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "high" => Some(Priority::High),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }
}

/// Where a device's pushes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Apns,
    /// FCM HTTP v1; legacy GCM registrations are FCM tokens too.
    Fcm,
    WebPush,
    /// Another relay's `/api/v1/messages/`, with a whitelist token from it.
    Relay,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Apns, Kind::Fcm, Kind::WebPush, Kind::Relay];
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Apns => "apns",
            Kind::Fcm => "fcm",
            Kind::WebPush => "webpush",
            Kind::Relay => "relay",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// A push accepted into the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub push_id: i64,
    /// How many devices it will be delivered to.
    pub devices: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Unknown, revoked or expired token: the same answer for all three.
    #[error("unknown token")]
    UnknownToken,
    #[error("rate limit exceeded")]
    RateLimited { retry_after: Duration },
    #[error("data is {size} bytes, more than the {limit} allowed")]
    TooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counters of one provider. Plain atomics; export comes with metrics.
#[derive(Debug, Default)]
pub struct ProviderCounters {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub pruned: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    by_kind: [ProviderCounters; 4],
}

impl Counters {
    pub fn provider(&self, k: Kind) -> &ProviderCounters {
        &self.by_kind[k.index()]
    }
}

/// A snapshot of [`Counters`] (for tests, logs and later metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub delivered: u64,
    pub retried: u64,
    pub failed: u64,
    pub pruned: u64,
}

/// The outcome of logging in to (or creating) a relay account.
#[derive(Debug, Clone)]
pub struct Login {
    pub account: db::Account,
    /// A new API key, shown only now.
    pub api_key: String,
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("wrong username or password")]
    BadCredentials,
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("sign-up is closed on this relay")]
    SignupClosed,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// A device as a face submits it.
#[derive(Debug, Clone, Default)]
pub struct NewDevice {
    pub name: Option<String>,
    pub active: bool,
    pub registration_id: String,
    pub device_id: Option<String>,
    pub p256dh: Option<String>,
    pub auth: Option<String>,
    pub upstream_token: Option<String>,
}

/// A whitelist token just issued; `secret` is shown only now.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub secret: String,
    pub token: db::Token,
}

/// What [`Relay::register`] gives the XMPP side.
#[derive(Debug, Clone)]
pub struct Registration {
    pub device: db::Device,
    pub token: IssuedToken,
}

/// The push core's handle.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn RelayStore>,
    config: RelayConfig,
    counters: Counters,
    /// Per node, also with a shared database (documented as approximate).
    ip_buckets: limits::Buckets<IpAddr>,
    /// Wakes the dispatcher when a push is committed (here, or on another
    /// node through the store) or a delivery ends.
    wake: Arc<Notify>,
    /// The store hands committed deliveries to the dispatcher in memory:
    /// a commit needs no wake-up.
    handoff: std::sync::atomic::AtomicBool,
    providers: providers::Providers,
}

impl Relay {
    /// Build the relay on its store: load provider credentials and the VAPID
    /// key (made on first start, shared through the store). Reads files:
    /// call at start-up.
    pub async fn new(
        store: Arc<dyn RelayStore>,
        config: &RelayConfig,
        data_dir: &Path,
        public_url: &str,
    ) -> anyhow::Result<Relay> {
        let providers = providers::Providers::new(config, data_dir, public_url, store.clone()).await?;
        Ok(Relay {
            inner: Arc::new(Inner {
                store,
                config: config.clone(),
                counters: Counters::default(),
                ip_buckets: Default::default(),
                wake: Arc::new(Notify::new()),
                handoff: Default::default(),
                providers,
            }),
        })
    }

    /// The relay's state (SQLite or PostgreSQL).
    pub fn store(&self) -> &Arc<dyn RelayStore> {
        &self.inner.store
    }

    pub fn config(&self) -> &RelayConfig {
        &self.inner.config
    }

    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    pub fn totals(&self, k: Kind) -> Totals {
        let c = self.inner.counters.provider(k);
        Totals {
            delivered: c.delivered.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            pruned: c.pruned.load(Ordering::Relaxed),
        }
    }

    /// The VAPID public key (uncompressed P-256 point, base64url), for Web Push subscriptions.
    pub fn vapid_public_key(&self) -> String {
        self.inner.providers.webpush.public_key_b64()
    }

    /// POST one push to another relay's `/api/v1/messages/` with a token it
    /// issued, through the relay's own upstream client, and say what its
    /// answer means (`Delivered`, `Dead` for 404, `Retry`, `Drop`).
    pub async fn forward(&self, endpoint: &str, token: &str, priority: Priority) -> providers::Outcome {
        self.inner
            .providers
            .upstream
            .post(endpoint, token, priority, None)
            .await
    }

    /// Start the dispatcher; it stops when `stop` becomes true.
    pub fn start(&self, stop: tokio::sync::watch::Receiver<bool>) {
        self.inner.store.watch_commits(self.inner.wake.clone(), stop.clone());
        tokio::spawn(dispatch::run(self.clone(), stop));
    }

    /// Per-address limit for every request of the relay API.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        self.inner.ip_buckets.take(&ip, self.inner.config.ip_rate)
    }

    // ---- accounts ----

    /// ChatSecure's `POST /accounts/`: log in if `username` exists and the
    /// password matches, else create the account (if sign-up is open).
    pub async fn login_or_signup(&self, username: &str, password: &str, email: &str) -> Result<Login, AccountError> {
        let p = password.to_string();
        let existing = self.inner.store.account_by_username(username).await?;
        let account = match existing {
            Some((account, stored)) => {
                let ok = blocking(move || verify_password(&p, &stored)).await?;
                if !ok {
                    return Err(AccountError::BadCredentials);
                }
                account
            }
            None => {
                if self.inner.config.signup == crate::config::relay::Signup::Closed {
                    return Err(AccountError::SignupClosed);
                }
                let hash = blocking(move || hash_password(&p)).await??;
                match self.inner.store.create_account(username, email, &hash).await? {
                    Ok(a) => {
                        let api_key = self.new_api_key(a.id).await?;
                        return Ok(Login {
                            account: a,
                            api_key,
                            created: true,
                        });
                    }
                    Err(db::Taken::Email) => return Err(AccountError::EmailTaken),
                    // Created concurrently: the caller may retry and log in.
                    Err(db::Taken::Username) => return Err(AccountError::BadCredentials),
                }
            }
        };
        let api_key = self.new_api_key(account.id).await?;
        Ok(Login {
            account,
            api_key,
            created: false,
        })
    }

    async fn new_api_key(&self, account_id: i64) -> Result<String, StoreError> {
        let key = secret::generate();
        let h = secret::hash(&key);
        self.inner.store.insert_api_key(&h, account_id).await?;
        Ok(key)
    }

    /// The account an API key belongs to.
    pub async fn authenticate(&self, api_key: &str) -> Result<Option<db::Account>, StoreError> {
        let h = secret::hash(api_key);
        let found = self.inner.store.account_by_api_key(&h).await?;
        // The lookup is by hash; the constant-time comparison is the check.
        Ok(found
            .filter(|(_, stored)| secret::matches(stored, api_key))
            .map(|(a, _)| a))
    }

    pub async fn delete_account(&self, account_id: i64) -> Result<(), StoreError> {
        self.inner.store.delete_account(account_id).await
    }

    /// The id of the relay account named `username`, if there is one.
    pub async fn account_id(&self, username: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.inner.store.account_by_username(username).await?.map(|(a, _)| a.id))
    }

    // ---- devices ----

    pub async fn devices(&self, account_id: i64, kind: Kind) -> Result<Vec<db::Device>, StoreError> {
        self.inner.store.list_devices(account_id, kind.as_str()).await
    }

    pub async fn device(&self, account_id: i64, id: &str) -> Result<Option<db::Device>, StoreError> {
        self.inner.store.get_device(account_id, id).await
    }

    pub async fn create_device(&self, account_id: i64, kind: Kind, d: NewDevice) -> Result<db::Device, StoreError> {
        let dev = db::Device {
            id: uuid::Uuid::new_v4().to_string(),
            account_id,
            kind: kind.as_str().into(),
            name: d.name,
            active: d.active,
            registration_id: d.registration_id,
            device_id: d.device_id,
            p256dh: d.p256dh,
            auth: d.auth,
            upstream_token: d.upstream_token,
            created: store::now(),
        };
        self.inner.store.put_device(&dev).await?;
        Ok(dev)
    }

    pub async fn update_device(&self, dev: db::Device) -> Result<(), StoreError> {
        self.inner.store.put_device(&dev).await
    }

    pub async fn delete_device(&self, account_id: i64, id: &str) -> Result<bool, StoreError> {
        self.inner.store.delete_device(account_id, id).await
    }

    // ---- whitelist tokens ----

    /// Issue a token bound to `device_id` (which must belong to the account).
    /// `expires`: Unix seconds, at most the configured lifetime from now.
    pub async fn create_token(
        &self,
        account_id: i64,
        device_id: &str,
        name: Option<String>,
        expires: Option<i64>,
        rate: Option<u32>,
    ) -> Result<IssuedToken, StoreError> {
        let now = store::now();
        let max = now + self.inner.config.token_lifetime.get().as_secs() as i64;
        let secret = secret::generate();
        let token = db::Token {
            hash: secret::hash(&secret),
            prefix: secret::prefix(&secret).to_string(),
            account_id,
            device_id: device_id.to_string(),
            device_kind: String::new(),
            name,
            created: now,
            expires: expires.map_or(max, |e| e.min(max)),
            rate,
        };
        let token = self.inner.store.insert_token(&token).await?;
        Ok(IssuedToken { secret, token })
    }

    pub async fn tokens(&self, account_id: i64) -> Result<Vec<db::Token>, StoreError> {
        self.inner.store.list_tokens(account_id).await
    }

    /// The account's token with this secret (expired ones included, so the owner can delete them).
    pub async fn token(&self, account_id: i64, secret: &str) -> Result<Option<db::Token>, StoreError> {
        let t = self.lookup_token(secret).await?;
        Ok(t.filter(|t| t.account_id == account_id))
    }

    async fn lookup_token(&self, secret: &str) -> Result<Option<db::Token>, StoreError> {
        let h = secret::hash(secret);
        let t = self.inner.store.token_by_hash(&h).await?;
        Ok(t.filter(|t| secret::matches(&t.hash, secret)))
    }

    pub async fn rename_token(&self, hash: Vec<u8>, name: Option<String>) -> Result<(), StoreError> {
        self.inner.store.rename_token(&hash, name.as_deref()).await
    }

    pub async fn delete_token(&self, hash: Vec<u8>) -> Result<bool, StoreError> {
        self.inner.store.delete_token(&hash).await
    }

    /// Register a device for `owner` and issue a whitelist token for it,
    /// without HTTP (e.g. an XMPP ad-hoc command). The relay account `owner`
    /// is created if missing; it has no usable password.
    pub async fn register(&self, owner: &str, kind: Kind, device: NewDevice) -> Result<Registration, StoreError> {
        let store = &self.inner.store;
        let account = match store.account_by_username(owner).await? {
            Some((a, _)) => a,
            // "!" never parses as a PHC string, so no password can match it.
            None => match store.create_account(owner, "", "!").await? {
                Ok(a) => a,
                Err(_) => {
                    store
                        .account_by_username(owner)
                        .await?
                        .ok_or_else(|| StoreError::Other("account vanished".into()))?
                        .0
                }
            },
        };
        let dev = self.create_device(account.id, kind, device).await?;
        let token = self.create_token(account.id, &dev.id, None, None, None).await?;
        Ok(Registration { device: dev, token })
    }

    // ---- pushes ----

    /// Accept a push for every active device of `token`'s owner: validate,
    /// rate-limit, and commit it to the outbox before returning.
    pub async fn submit(
        &self,
        token: &str,
        data: Option<serde_json::Value>,
        priority: Priority,
        ttl: Option<Duration>,
    ) -> Result<Accepted, SubmitError> {
        let data = data.filter(|d| !d.is_null()).map(|d| d.to_string());
        let limit = self.inner.config.max_data_bytes;
        if let Some(d) = &data {
            if d.len() > limit {
                return Err(SubmitError::TooLarge { size: d.len(), limit });
            }
        }
        let t = self.lookup_token(token).await?.ok_or(SubmitError::UnknownToken)?;
        let now = store::now();
        if t.expires <= now {
            tracing::debug!(token = secret::prefix(token), "push refused: token expired");
            return Err(SubmitError::UnknownToken);
        }
        let limit = TokenLimit {
            hash: &t.hash,
            per_minute: t.rate.unwrap_or(u32::MAX).min(self.inner.config.token_rate),
        };
        let ttl = ttl.unwrap_or(self.inner.config.push_ttl.get()).min(MAX_TTL);
        let collapse = secret::hex(&t.hash[..8]);
        let prio = priority.as_str();
        let p = db::NewPush {
            account_id: t.account_id,
            token,
            collapse: &collapse,
            data: data.as_deref(),
            priority: prio,
            expires: now + ttl.as_secs() as i64,
        };
        // Committed (durably) before the 202: a push accepted survives a crash.
        let (push_id, devices) = match self.inner.store.enqueue(&p, limit, now_ms()).await? {
            Enqueued::Accepted { push_id, devices } => (push_id, devices),
            Enqueued::Limited(retry_after) => return Err(SubmitError::RateLimited { retry_after }),
            Enqueued::Gone => return Err(SubmitError::UnknownToken),
        };
        self.inner.counters.accepted.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            token = secret::prefix(token),
            push_id,
            devices,
            priority = prio,
            "push accepted"
        );
        if !self.inner.handoff.load(Ordering::Relaxed) {
            self.inner.wake.notify_one();
        }
        Ok(Accepted { push_id, devices })
    }

    /// Deliveries not yet finished (tests, diagnostics).
    pub async fn pending(&self) -> Result<i64, StoreError> {
        self.inner.store.pending_count().await
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, StoreError> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

fn hash_password(pw: &str) -> Result<String, AccountError> {
    use argon2::{password_hash::SaltString, Argon2, PasswordHasher};
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| AccountError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

fn verify_password(pw: &str, stored: &str) -> bool {
    use argon2::{Argon2, PasswordHash, PasswordVerifier};
    PasswordHash::new(stored).is_ok_and(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id() {
        let h = hash_password("hunter2").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("hunter2", &h));
        assert!(!verify_password("hunter3", &h));
        assert!(!verify_password("x", "!"));
    }
}

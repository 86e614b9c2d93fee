//! The relay's storage trait, played against its implementation: SQLite
//! always, and PostgreSQL too when `PUSHBOX_TEST_POSTGRES` is set. With
//! PostgreSQL two store handles with different node names stand for two
//! nodes on one database: claims are exclusive, leases run out, the rate
//! limit of a token holds across them, shared values are made once, and
//! migrations started at the same moment apply once.

mod support;

use pushbox::{
    config::RelayConfig,
    push::backend::{postgres::Postgres, sqlite::Sqlite, Enqueued, Finished, RelayStore, TokenLimit},
    store::relay::{Device, NewPush, Token},
};
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use support::*;

/// One relay database and a way to open more handles ("nodes") on it.
struct Db {
    _dir: tempfile::TempDir,
    url: Option<String>,
    sqlite: Option<Arc<dyn RelayStore>>,
    /// What the SQLite store hands to its dispatcher in memory as it commits.
    ready: Option<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<pushbox::store::relay::Delivery>>>,
}

impl Db {
    async fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = match test_postgres() {
            Some(base) => Some(fresh_database(&base).await),
            None => None,
        };
        let sqlite = match url {
            Some(_) => None,
            None => {
                Some(Arc::new(Sqlite::new(pushbox::store::Store::open_in(dir.path()).unwrap())) as Arc<dyn RelayStore>)
            }
        };
        let ready = sqlite
            .as_ref()
            .and_then(|s| s.take_ready())
            .map(tokio::sync::Mutex::new);
        Db {
            _dir: dir,
            url,
            sqlite,
            ready,
        }
    }

    /// Deliveries due at `now_ms` for node `s`: those handed over in memory
    /// first (SQLite), then those claimed from the store.
    async fn claim(&self, s: &Arc<dyn RelayStore>, now_ms: i64, limit: usize) -> Vec<pushbox::store::relay::Delivery> {
        let mut v = vec![];
        if let Some(r) = &self.ready {
            let mut r = r.lock().await;
            while v.len() < limit {
                match r.try_recv() {
                    Ok(d) => v.push(d),
                    Err(_) => break,
                }
            }
        }
        if v.len() < limit {
            v.extend(s.claim(now_ms, limit - v.len()).await.unwrap());
        }
        v
    }

    /// A node named `name` with claim leases of `lease`.
    async fn node(&self, name: &str, lease: Duration) -> Arc<dyn RelayStore> {
        match &self.url {
            Some(url) => {
                let config = RelayConfig {
                    claim_lease: pushbox::config::Duration(lease),
                    ..Default::default()
                };
                Arc::new(Postgres::connect(url, &config, name).await.unwrap())
            }
            None => self.sqlite.clone().unwrap(),
        }
    }

    fn shared(&self) -> bool {
        self.url.is_some()
    }
}

/// An account with `devices` active APNs devices and a token for the first.
async fn account(s: &dyn RelayStore, name: &str, devices: usize) -> Token {
    let a = s.create_account(name, "", "!").await.unwrap().unwrap();
    let mut first = None;
    for i in 0..devices {
        let id = format!("{name}-dev{i}");
        s.put_device(&Device {
            id: id.clone(),
            account_id: a.id,
            kind: "apns".into(),
            name: None,
            active: true,
            registration_id: "ab".into(),
            device_id: None,
            p256dh: None,
            auth: None,
            upstream_token: None,
            created: pushbox::store::now(),
        })
        .await
        .unwrap();
        first.get_or_insert(id);
    }
    s.insert_token(&Token {
        hash: pushbox::push::secret::hash(name),
        prefix: name.chars().take(8).collect(),
        account_id: a.id,
        device_id: first.unwrap(),
        device_kind: String::new(),
        name: None,
        created: pushbox::store::now(),
        expires: i64::MAX,
        rate: None,
    })
    .await
    .unwrap()
}

async fn push(s: &dyn RelayStore, t: &Token, per_minute: u32) -> Enqueued {
    let p = NewPush {
        account_id: t.account_id,
        token: "secret",
        collapse: "c",
        data: Some("{\"n\":1}"),
        priority: "high",
        expires: pushbox::store::now() + 3600,
    };
    let limit = TokenLimit {
        hash: &t.hash,
        per_minute,
    };
    s.enqueue(&p, limit, pushbox::push::now_ms()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_devices_and_tokens_round_trip() {
    let db = Db::new().await;
    let (a, b) = (
        db.node("a", Duration::from_secs(60)).await,
        db.node("b", Duration::from_secs(60)).await,
    );
    let t = account(a.as_ref(), "alice", 2).await;
    assert_eq!(t.device_kind, "apns");
    // What one node wrote, the other reads.
    let (acc, hash) = b.account_by_username("alice").await.unwrap().unwrap();
    assert_eq!((acc.id, hash.as_str()), (t.account_id, "!"));
    assert!(matches!(
        b.create_account("alice", "", "!").await.unwrap(),
        Err(pushbox::store::relay::Taken::Username)
    ));
    a.create_account("carol", "c@example.org", "!").await.unwrap().unwrap();
    assert!(matches!(
        b.create_account("dave", "c@example.org", "!").await.unwrap(),
        Err(pushbox::store::relay::Taken::Email)
    ));
    let devices = b.list_devices(t.account_id, "apns").await.unwrap();
    assert_eq!(
        devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["alice-dev0", "alice-dev1"],
        "creation order"
    );
    assert_eq!(
        b.token_by_hash(&t.hash).await.unwrap().unwrap().account_id,
        t.account_id
    );
    b.rename_token(&t.hash, Some("for bob")).await.unwrap();
    assert_eq!(
        a.list_tokens(t.account_id).await.unwrap()[0].name.as_deref(),
        Some("for bob")
    );
    a.insert_api_key(b"key-hash", t.account_id).await.unwrap();
    assert_eq!(
        b.account_by_api_key(b"key-hash").await.unwrap().unwrap().0.id,
        t.account_id
    );
    // A revocation on one node holds on the other at once.
    assert!(a.delete_token(&t.hash).await.unwrap());
    assert!(b.token_by_hash(&t.hash).await.unwrap().is_none());
    assert_eq!(
        push(b.as_ref(), &t, 60).await,
        Enqueued::Gone,
        "a revoked token enqueues nothing"
    );
    assert!(b.delete_device(t.account_id, "alice-dev1").await.unwrap());
    b.delete_account(t.account_id).await.unwrap();
    assert!(a.account_by_username("alice").await.unwrap().is_none());
    assert!(a.account_by_api_key(b"key-hash").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_rate_limit_holds_across_nodes() {
    let db = Db::new().await;
    let nodes = [
        db.node("a", Duration::from_secs(60)).await,
        db.node("b", Duration::from_secs(60)).await,
    ];
    let t = account(nodes[0].as_ref(), "rita", 1).await;
    // 20 concurrent pushes, alternating between the nodes, against a limit of 5 a minute.
    let tries = (0..20).map(|i| {
        let (s, t) = (nodes[i % 2].clone(), t.clone());
        async move { push(s.as_ref(), &t, 5).await }
    });
    let results = futures_util::future::join_all(tries).await;
    let accepted = results
        .iter()
        .filter(|r| matches!(r, Enqueued::Accepted { .. }))
        .count();
    let limited: Vec<Duration> = results
        .iter()
        .filter_map(|r| match r {
            Enqueued::Limited(d) => Some(*d),
            _ => None,
        })
        .collect();
    assert_eq!(accepted, 5, "exactly the burst is accepted: {results:?}");
    assert_eq!(limited.len(), 15);
    assert!(
        limited
            .iter()
            .all(|d| *d > Duration::ZERO && *d <= Duration::from_secs(12)),
        "{limited:?}"
    );
    assert_eq!(nodes[1].pending_count().await.unwrap(), 5);
}

/// Pushes for several tokens at once (on PostgreSQL they share accept
/// batches): each token's limit holds by itself, a revoked token's pushes
/// are refused, and an account without an active device accepts its push
/// with no delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_many_tokens_keeps_each_tokens_limit() {
    let db = Db::new().await;
    let s = db.node("a", Duration::from_secs(60)).await;
    let mut live = vec![];
    for i in 0..4 {
        live.push(account(s.as_ref(), &format!("many{i}"), 2).await);
    }
    let revoked = account(s.as_ref(), "revoked", 1).await;
    assert!(s.delete_token(&revoked.hash).await.unwrap());
    let idle = account(s.as_ref(), "idle", 1).await;
    s.deactivate_device("idle-dev0").await.unwrap();
    // Three pushes per live token against a limit of 2 a minute, two for the
    // revoked one, one for the idle one: all at once, interleaved.
    let mut order: Vec<(usize, Token)> = vec![];
    for round in 0..3 {
        for (i, t) in live.iter().enumerate() {
            order.push((i, t.clone()));
        }
        if round < 2 {
            order.push((10, revoked.clone()));
        }
    }
    order.push((20, idle.clone()));
    let tries = order.into_iter().map(|(who, t)| {
        let s = s.clone();
        async move { (who, push(s.as_ref(), &t, 2).await) }
    });
    let results = futures_util::future::join_all(tries).await;
    for i in 0..4 {
        let mine: Vec<&Enqueued> = results.iter().filter(|(w, _)| *w == i).map(|(_, r)| r).collect();
        let accepted = mine
            .iter()
            .filter(|r| matches!(r, Enqueued::Accepted { devices: 2, .. }))
            .count();
        let limited = mine.iter().filter(|r| matches!(r, Enqueued::Limited(_))).count();
        assert_eq!((accepted, limited), (2, 1), "token {i}: {mine:?}");
    }
    let gone: Vec<&Enqueued> = results.iter().filter(|(w, _)| *w == 10).map(|(_, r)| r).collect();
    assert_eq!(gone, [&Enqueued::Gone, &Enqueued::Gone]);
    let idle_result = &results.iter().find(|(w, _)| *w == 20).unwrap().1;
    assert!(
        matches!(idle_result, Enqueued::Accepted { devices: 0, .. }),
        "{idle_result:?}"
    );
    // 4 tokens x 2 pushes x 2 devices; the idle push left nothing behind.
    assert_eq!(s.pending_count().await.unwrap(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_exclusive_and_outcomes_clear_the_outbox() {
    let db = Db::new().await;
    let (a, b) = (
        db.node("a", Duration::from_secs(60)).await,
        db.node("b", Duration::from_secs(60)).await,
    );
    let t = account(a.as_ref(), "sam", 3).await;
    for _ in 0..10 {
        assert!(matches!(
            push(b.as_ref(), &t, 1000).await,
            Enqueued::Accepted { devices: 3, .. }
        ));
    }
    let now = pushbox::push::now_ms();
    let (ca, cb) = tokio::join!(db.claim(&a, now + 1, 20), db.claim(&b, now + 1, 20));
    assert_eq!(ca.len() + cb.len(), 30, "every delivery claimed once");
    let mut keys: Vec<(i64, String)> = ca.iter().chain(&cb).map(|d| (d.push_id, d.device.id.clone())).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 30, "no delivery claimed by both");
    assert!(db.claim(&a, now + 1, 20).await.is_empty());
    assert!(db.claim(&b, now + 1, 20).await.is_empty());
    // Outcomes: done, failed, and one back for later.
    let mut it = ca.iter().chain(&cb);
    let later = it.next().unwrap();
    a.reschedule(later.push_id, &later.device.id, now + 60_000)
        .await
        .unwrap();
    for (i, d) in it.enumerate() {
        let s = if i % 2 == 0 { &a } else { &b };
        let how = if i % 5 == 0 { Finished::Failed } else { Finished::Done };
        s.finish(d.push_id, &d.device.id, how).await.unwrap();
    }
    assert_eq!(a.pending_count().await.unwrap(), 1);
    assert_eq!(a.next_due().await.unwrap(), Some(now + 60_000));
    let again = db.claim(&b, now + 60_000, 10).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1, "the reschedule counted an attempt");
    a.finish(again[0].push_id, &again[0].device.id, Finished::Done)
        .await
        .unwrap();
    assert_eq!(b.pending_count().await.unwrap(), 0);
    assert_eq!(a.next_due().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_device_ends_its_deliveries() {
    let db = Db::new().await;
    let (a, b) = (
        db.node("a", Duration::from_secs(60)).await,
        db.node("b", Duration::from_secs(60)).await,
    );
    let t = account(a.as_ref(), "tim", 2).await;
    push(a.as_ref(), &t, 100).await;
    assert_eq!(a.pending_count().await.unwrap(), 2);
    b.deactivate_device("tim-dev0").await.unwrap();
    assert_eq!(a.pending_count().await.unwrap(), 1, "the dead device's delivery ended");
    assert!(!a.get_device(t.account_id, "tim-dev0").await.unwrap().unwrap().active);
    assert!(matches!(
        push(b.as_ref(), &t, 100).await,
        Enqueued::Accepted { devices: 1, .. }
    ));
    let due = db.claim(&a, pushbox::push::now_ms() + 1, 10).await;
    for d in &due {
        b.finish(d.push_id, &d.device.id, Finished::Done).await.unwrap();
    }
    assert_eq!(a.pending_count().await.unwrap(), 0, "{due:?}");
    b.deactivate_device("tim-dev1").await.unwrap();
    assert!(
        matches!(push(a.as_ref(), &t, 100).await, Enqueued::Accepted { devices: 0, .. }),
        "nothing to deliver"
    );
    assert_eq!(a.pending_count().await.unwrap(), 0);
}

/// A node that dies holding claims loses them to the others when the lease
/// runs out, and takes its own back at once when it restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_of_a_dead_node_come_back_when_the_lease_ends() {
    let db = Db::new().await;
    if !db.shared() {
        // One SQLite node: whatever was being sent is released at start-up.
        let s = db.node("a", Duration::from_secs(60)).await;
        let t = account(s.as_ref(), "una", 1).await;
        push(s.as_ref(), &t, 100).await;
        let now = pushbox::push::now_ms();
        assert_eq!(db.claim(&s, now + 1, 10).await.len(), 1);
        assert!(db.claim(&s, now + 120_000, 10).await.is_empty(), "no lease on one node");
        assert_eq!(s.recover().await.unwrap(), 1);
        assert_eq!(db.claim(&s, now + 1, 10).await.len(), 1);
        return;
    }
    let dead = db.node("dead", Duration::from_secs(2)).await;
    let other = db.node("other", Duration::from_secs(2)).await;
    let t = account(dead.as_ref(), "una", 2).await;
    push(dead.as_ref(), &t, 100).await;
    let now = pushbox::push::now_ms();
    assert_eq!(db.claim(&dead, now, 10).await.len(), 2);
    assert!(db.claim(&other, now + 1_000, 10).await.is_empty(), "leased");
    let back = db.claim(&other, now + 2_001, 1).await;
    assert_eq!(back.len(), 1, "the lease ran out");
    // The dead node's late reschedule of the claim it lost changes nothing.
    dead.reschedule(back[0].push_id, &back[0].device.id, now + 999_999)
        .await
        .unwrap();
    assert!(
        db.claim(&other, now + 4_000, 10).await.len() == 1,
        "the second delivery"
    );
    // Restarted under its old name, a node takes back its own claims at once.
    let again = db.node("other", Duration::from_secs(2)).await;
    assert_eq!(again.recover().await.unwrap(), 2);
    assert_eq!(db.claim(&dead, pushbox::push::now_ms(), 10).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_values_are_made_once() {
    let db = Db::new().await;
    let (a, b) = (
        db.node("a", Duration::from_secs(60)).await,
        db.node("b", Duration::from_secs(60)).await,
    );
    let first = a.shared_value("vapid", "key-a").await.unwrap();
    let second = b.shared_value("vapid", "key-b").await.unwrap();
    assert_eq!(first, "key-a");
    if !db.shared() {
        assert_eq!(second, "key-b", "one node: each store keeps its own");
        return;
    }
    assert_eq!(second, "key-a", "the first node to start decides");
    // Ten concurrent refreshes on two nodes: one token made.
    let made = Arc::new(AtomicUsize::new(0));
    let gets = (0..10).map(|i| {
        let (s, made) = (if i % 2 == 0 { a.clone() } else { b.clone() }, made.clone());
        async move {
            let make = move || Ok(format!("jwt-{}", made.fetch_add(1, Ordering::SeqCst)));
            s.fresh_value("apns", Duration::from_secs(2400), &make).await.unwrap()
        }
    });
    let got = futures_util::future::join_all(gets).await;
    assert_eq!(made.load(Ordering::SeqCst), 1, "{got:?}");
    assert!(got.iter().all(|g| g.value == "jwt-0"));
    // Refused by the provider: replaced once, by whoever asks next.
    b.forget_value("apns", "jwt-0").await.unwrap();
    b.forget_value("apns", "stale").await.unwrap();
    let make = || Ok("jwt-new".to_string());
    assert_eq!(
        a.fresh_value("apns", Duration::from_secs(2400), &make)
            .await
            .unwrap()
            .value,
        "jwt-new"
    );
    let never = || -> anyhow::Result<String> { panic!("the fresh token is reused") };
    assert_eq!(
        b.fresh_value("apns", Duration::from_secs(2400), &never)
            .await
            .unwrap()
            .value,
        "jwt-new"
    );
}

/// Nodes started at the same moment on an empty database: the migrations
/// run once (under the advisory lock) and every node starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    let db = Db::new().await;
    let Some(url) = &db.url else {
        // One SQLite file opened by two handles at once: migrated once, both usable.
        let dir = tempfile::tempdir().unwrap();
        let (p1, p2) = (dir.path().to_path_buf(), dir.path().to_path_buf());
        let (a, b) = tokio::join!(
            tokio::task::spawn_blocking(move || pushbox::store::Store::open_in(&p1)),
            tokio::task::spawn_blocking(move || pushbox::store::Store::open_in(&p2))
        );
        let (a, b) = (Sqlite::new(a.unwrap().unwrap()), Sqlite::new(b.unwrap().unwrap()));
        let t = account(&a, "vic", 1).await;
        assert!(matches!(push(&b, &t, 10).await, Enqueued::Accepted { devices: 1, .. }));
        return;
    };
    let config = RelayConfig::default();
    let starts = (0..4).map(|i| {
        let (url, config) = (url.clone(), config.clone());
        async move { Postgres::connect(&url, &config, &format!("n{i}")).await.map(|_| ()) }
    });
    for r in futures_util::future::join_all(starts).await {
        r.unwrap();
    }
    let (found, expected) = pushbox::push::backend::postgres::check(url, &config).await.unwrap();
    assert_eq!(found, expected);
}

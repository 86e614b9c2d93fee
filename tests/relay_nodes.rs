//! Two relay nodes on one PostgreSQL database: real `pushbox` binaries,
//! a real PostgreSQL (`PUSHBOX_TEST_POSTGRES`, started by
//! `tests/postgres/run`), the APNs stand-in. A client cannot tell the nodes
//! apart: what one node made works on the other, a revocation holds
//! everywhere at once, a token's rate limit holds for the pair, pushes
//! accepted by either arrive once, a node killed with -9 while sending
//! loses its pushes to the other when its lease runs out, and lost database
//! connections give 503 + Retry-After, never a crash.
//!
//! Not part of a plain `cargo test` (it needs the database):
//! `PUSHBOX_TEST_POSTGRES=postgres://… cargo test --test relay_nodes`.

mod support;

use serde_json::json;
use std::{
    collections::BTreeMap,
    path::Path,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};
use support::*;

/// Start a node with its own data_dir (`dir/<name>`) on `database`.
async fn node(dir: &Path, name: &str, database: &str, apns_cfg: &str, extra: &str) -> (Process, std::path::PathBuf) {
    let port = free_port();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "domain = \"localhost\"\ndata_dir = \"{name}\"\n[listen]\nc2s = []\nc2s_direct_tls = []\n\
             https = [\"127.0.0.1:{port}\"]\n[relay]\ndatabase = {database:?}\nip_rate = 100000\n\
             token_rate = 100000\n{extra}{apns_cfg}"
        ),
    )
    .unwrap();
    (Process::start(&config, port, &dir.join(name)).await, config)
}

fn database_base() -> String {
    test_postgres().expect("the two-node suite needs PUSHBOX_TEST_POSTGRES (tests/postgres/run sets it)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_are_one_relay() {
    let database = fresh_database(&database_base()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let apns = ApnsStandIn::start(&ca, dir.path()).await;
    let cfg = apns.config(&ca);
    let ((a, a_cfg), (b, _)) = tokio::join!(
        node(dir.path(), "a", &database, &cfg, ""),
        node(dir.path(), "b", &database, &cfg, "")
    );
    // `pushbox check database` sees the shared schema.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pushbox"))
        .env_remove("PUSHBOX_TEST_POSTGRES")
        .arg("--config")
        .arg(&a_cfg)
        .args(["check", "database"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("relay schema version"), "{text}");

    // An account, device and token made on A work on B.
    let on_a = a.api().signup("alice").await;
    let reg = apns_token();
    let (device, token) = on_a.apns_device_and_token(&reg).await;
    let on_b = b.api().as_key(on_a.key.as_deref().unwrap());
    let d = on_b.get(&format!("/api/v1/device/apns/{device}/")).await;
    assert_eq!((d.status, &d.body["registration_id"]), (200, &json!(reg)));
    let r = b
        .api()
        .post("/api/v1/messages/", json!({ "token": token, "data": { "n": "first" } }))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    apns.log.wait_for(1, |_| true).await;

    // Pushes accepted by either node arrive once each.
    let n = 40;
    let sends = (0..n).map(|i| {
        let api = if i % 2 == 0 { a.api() } else { b.api() };
        let token = token.clone();
        async move {
            api.post("/api/v1/messages/", json!({ "token": token, "data": { "n": i } }))
                .await
                .status
        }
    });
    let statuses = futures_util::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    let seen = apns.log.wait_for(n + 1, |_| true).await;
    drained(&relay_store_of(&a_cfg).await).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = if apns.log.seen().len() > seen.len() {
        apns.log.seen()
    } else {
        seen
    };
    let mut count: BTreeMap<String, u32> = BTreeMap::new();
    for s in &seen {
        *count.entry(s.body["message"]["data"]["n"].to_string()).or_default() += 1;
    }
    assert_eq!(count.len(), n + 1, "{count:?}");
    assert!(count.values().all(|c| *c == 1), "each push once: {count:?}");
    // One provider token for the relay, not one per node.
    let tokens: std::collections::HashSet<_> = seen.iter().filter_map(|s| s.headers.get("authorization")).collect();
    assert_eq!(tokens.len(), 1, "the nodes share one APNs provider token");
    // One VAPID key for the relay.
    let (va, vb) = (a.api().get("/api/v1/vapid/").await, b.api().get("/api/v1/vapid/").await);
    assert_eq!(va.body["public_key"], vb.body["public_key"]);
    assert!(va.body["public_key"].is_string());

    // A token's rate limit holds for the pair: 4 a minute, 10 tries on both nodes.
    let dev2 = on_a.get("/api/v1/device/apns/").await.body[0]["id"].clone();
    let t = on_b
        .post("/api/v1/tokens/", json!({ "apns_device": dev2, "rate_limit": 4 }))
        .await;
    assert_eq!(t.status, 201, "{:?}", t.body);
    let limited = t.body["token"].as_str().unwrap().to_string();
    let tries = (0..10).map(|i| {
        let api = if i % 2 == 0 { a.api() } else { b.api() };
        let token = limited.clone();
        async move { api.post("/api/v1/messages/", json!({ "token": token })).await }
    });
    let answers = futures_util::future::join_all(tries).await;
    let ok = answers.iter().filter(|r| r.status == 202).count();
    assert_eq!(ok, 4, "{:?}", answers.iter().map(|r| r.status).collect::<Vec<_>>());
    for r in answers.iter().filter(|r| r.status != 202) {
        assert_eq!(r.status, 429);
        assert!(r.headers.contains_key("retry-after"));
    }

    // A revocation on B holds on A at once.
    assert_eq!(
        on_b.call("DELETE", &format!("/api/v1/tokens/{token}/"), None)
            .await
            .status,
        204
    );
    let r = a.api().post("/api/v1/messages/", json!({ "token": token })).await;
    assert_eq!(r.status, 404);
    assert!(apns.log.violations().is_empty(), "{:?}", apns.log.violations());
    a.kill();
    b.kill();
}

/// APNs stalls; node A accepts pushes and sends them all (they hang at
/// APNs, claimed by A); node B joins; A is killed with -9; APNs recovers.
/// B delivers every push once, when A's lease runs out, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_sending_loses_its_pushes_to_the_other() {
    let lease = Duration::from_secs(6);
    let database = fresh_database(&database_base()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let apns = ApnsStandIn::start(&ca, dir.path()).await;
    apns.state.stall.store(true, Ordering::SeqCst);
    let cfg = apns.config(&ca);
    let extra = format!("claim_lease = \"{}s\"\n", lease.as_secs());
    let (a, a_cfg) = node(dir.path(), "a", &database, &cfg, &extra).await;
    let u = a.api().signup("bob").await;
    let (_, token) = u.apns_device_and_token(&apns_token()).await;
    let n = 12;
    // A claims each push after this moment, so its lease on it ends after `posted + lease`.
    let posted = Instant::now();
    for i in 0..n {
        let r = a
            .api()
            .post("/api/v1/messages/", json!({ "token": token, "data": { "n": i } }))
            .await;
        assert_eq!(r.status, 202);
    }
    // Every push is in flight from A, held by APNs.
    eventually(|| async { (apns.state.held.load(Ordering::SeqCst) >= n).then_some(()) }).await;
    let all_held = Instant::now();
    let (b, _) = node(dir.path(), "b", &database, &cfg, &extra).await;
    a.kill();
    let killed = Instant::now();
    assert!(
        killed < posted + lease,
        "A was killed while its lease held (set-up took too long)"
    );
    apns.state.release();
    assert!(apns.log.seen().is_empty(), "nothing was delivered while APNs stalled");

    let seen = apns.log.wait_for(n, |_| true).await;
    drained(&relay_store_of(&a_cfg).await).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = if apns.log.seen().len() > seen.len() {
        apns.log.seen()
    } else {
        seen
    };
    let mut count: BTreeMap<i64, u32> = BTreeMap::new();
    for s in &seen {
        *count
            .entry(s.body["message"]["data"]["n"].as_i64().unwrap())
            .or_default() += 1;
        // Not before A's lease ran out, and soon after (A claimed before `all_held`).
        assert!(
            s.at >= posted + lease,
            "delivered {:?} after the kill, before A's lease ran out",
            s.at.saturating_duration_since(killed)
        );
        assert!(
            s.at <= all_held + lease + Duration::from_secs(10),
            "delivered long after the lease"
        );
    }
    assert_eq!(count.len(), n, "{count:?}");
    assert!(count.values().all(|c| *c == 1), "each push once: {count:?}");
    assert!(apns.log.violations().is_empty(), "{:?}", apns.log.violations());
    b.kill();
}

/// PostgreSQL drops every connection of the relay (as on a failover or a
/// server restart): requests meanwhile answer 202 or 503 with Retry-After,
/// never anything else; the node keeps running, reconnects, and every
/// accepted push is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_database_connections_are_answered_503_and_reopened() {
    let base = database_base();
    let database = fresh_database(&base).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let apns = ApnsStandIn::start(&ca, dir.path()).await;
    let (a, _) = node(dir.path(), "a", &database, &apns.config(&ca), "").await;
    let u = a.api().signup("carl").await;
    let (_, token) = u.apns_device_and_token(&apns_token()).await;
    let name = database.rsplit('/').next().unwrap().to_string();
    let (admin, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let mut accepted = vec![];
    let mut refused = 0;
    for round in 0..3 {
        // The last round: the database also refuses new connections.
        let closed = round == 2;
        if closed {
            admin
                .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
                .await
                .unwrap();
        }
        // Cut every connection the relay has to its database.
        let cut = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&name],
            )
            .await
            .unwrap();
        assert!(!cut.is_empty(), "the relay had connections to cut");
        let refused_before = refused;
        for i in 0..10 {
            let n = round * 10 + i;
            let r = a
                .api()
                .post("/api/v1/messages/", json!({ "token": token, "data": { "n": n } }))
                .await;
            match r.status {
                202 => accepted.push(n),
                503 => {
                    assert!(r.headers.contains_key("retry-after"), "{:?}", r.body);
                    refused += 1;
                }
                s => panic!("answered {s} while the database connections were cut: {:?}", r.body),
            }
        }
        if closed {
            let refused_now = refused - refused_before;
            assert_eq!(
                refused_now, 10,
                "answered while the database refused connections ({refused_now} refusals of 10)"
            );
            admin
                .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
                .await
                .unwrap();
        }
    }
    // Reconnected: pushes are accepted again.
    let r = eventually(|| async {
        let r = a
            .api()
            .post("/api/v1/messages/", json!({ "token": token, "data": { "n": 99 } }))
            .await;
        (r.status == 202).then_some(r)
    })
    .await;
    assert_eq!(r.status, 202);
    accepted.push(99);
    apns.log.wait_for(accepted.len(), |_| true).await;
    // Every chance for a duplicate to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut got: Vec<i64> = apns
        .log
        .seen()
        .iter()
        .map(|s| s.body["message"]["data"]["n"].as_i64().unwrap())
        .collect();
    got.sort();
    accepted.sort();
    assert_eq!(got, accepted, "every accepted push delivered once");
    eprintln!(
        "connections cut 3 times (the last time also refused): {refused} of 30 pushes answered 503, \
         the rest accepted and delivered once"
    );
    a.kill();
}

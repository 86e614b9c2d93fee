//! Provider outage with nothing lost: the real `pushbox` binary accepts
//! pushes (202) while the APNs stand-in answers 503 ServiceUnavailable; when
//! APNs recovers, every accepted push whose expiry has not passed is
//! delivered exactly once, before its expiry, and every push whose expiry
//! passed during the outage is dropped and counted in
//! `pushbox_pushes_total{outcome="failed"}`, never delivered late.
//!
//! `FAULT_OUTAGE_SECS` (default 12) sets the outage, `FAULT_RETRY_MAX_SECS`
//! (default 2) the daemon's `relay.max_retry_delay`. The long variant by
//! hand: `FAULT_OUTAGE_SECS=180 FAULT_RETRY_MAX_SECS=60 cargo test --test faults_relay`.

mod support;

use serde_json::json;
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn metrics_page(addr: SocketAddr) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_string(&mut out))
        .await
        .expect("metrics answer")
        .unwrap();
    out
}

/// `pushbox_pushes_total{provider="apns",outcome=...}`, 0 when absent.
fn pushes(page: &str, outcome: &str) -> u64 {
    page.lines()
        .filter(|l| {
            l.starts_with("pushbox_pushes_total{")
                && l.contains("provider=\"apns\"")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_outage_then_recovery_delivers_each_live_push_once() {
    let env = |k: &str, default: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (outage, retry_max) = (env("FAULT_OUTAGE_SECS", 12), env("FAULT_RETRY_MAX_SECS", 2).max(1));
    // Pushes that outlive the outage by far, and pushes that expire in its middle.
    let (long_ttl, short_ttl) = (outage * 10 + 60, (outage / 3).max(3));
    let (n_long, n_short) = (10, 5);

    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let apns = ApnsStandIn::start(&ca, dir.path()).await;
    apns.state.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let (port, mport) = (free_port(), free_port());
    let config = dir.path().join("pushbox.toml");
    let toml = format!(
        "domain = \"localhost\"\ndata_dir = \"data\"\n[listen]\nc2s = []\nc2s_direct_tls = []\n\
         https = [\"127.0.0.1:{port}\"]\n[metrics]\nlisten = [\"127.0.0.1:{mport}\"]\n\
         [relay]\nip_rate = 100000\ntoken_rate = 100000\nmax_retry_delay = \"{retry_max}s\"\n{}",
        apns.config(&ca)
    );
    std::fs::write(&config, with_relay_line(&toml, &relay_database_line().await)).unwrap();
    let data_dir = dir.path().join("data");
    let p = Process::start(&config, port, &data_dir).await;
    let metrics: SocketAddr = ([127, 0, 0, 1], mport).into();
    let u = p.api().signup("outage").await;
    let (_, token) = u.apns_device_and_token(&apns_token()).await;

    // id -> the Unix second its expiry passes.
    let mut expiry = BTreeMap::new();
    for i in 0..n_long + n_short {
        let (id, ttl) = if i < n_long {
            (format!("L{i}"), long_ttl)
        } else {
            (format!("S{i}"), short_ttl)
        };
        let r = p
            .api()
            .post(
                "/api/v1/messages/",
                json!({ "token": token, "ttl": ttl, "data": { "id": id } }),
            )
            .await;
        assert_eq!(r.status, 202, "{:?}\ndaemon log:\n{}", r.body, p.log_tail());
        expiry.insert(id, pushbox::store::now() + ttl as i64);
    }

    tokio::time::sleep(Duration::from_secs(outage)).await;
    // Still down: on a loaded machine the retries and the expiry sweep may
    // lag the clock, so wait (well within the long pushes' expiry) until
    // every push was tried and the short ones were counted.
    let deadline = Instant::now() + PATIENCE;
    let page = loop {
        let page = metrics_page(metrics).await;
        let tried = apns.log.seen().len();
        if (tried >= n_long + n_short && pushes(&page, "failed") >= n_short as u64) || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let tried = apns.log.seen().len();
    assert!(
        tried >= n_long + n_short,
        "every push was tried during the outage ({tried} requests)"
    );
    assert_eq!(pushes(&page, "delivered"), 0);
    assert_eq!(
        pushes(&page, "failed"),
        n_short as u64,
        "the pushes that expired during the outage are counted as failed"
    );

    let recovered = Instant::now();
    apns.state.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let store = relay_store_of(&config).await;
    // The last attempt before recovery may have been scheduled up to `retry_max` ahead.
    let deadline = Instant::now() + PATIENCE + Duration::from_secs(retry_max);
    while store.pending_count().await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "pushes still pending long after recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered_at = pushbox::store::now();
    // Give a duplicate every chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut got: BTreeMap<String, u32> = BTreeMap::new();
    for s in apns.log.seen().iter().filter(|s| s.at >= recovered) {
        let id = s.body["message"]["data"]["id"].as_str().unwrap_or("?").to_string();
        *got.entry(id).or_default() += 1;
    }
    for (id, exp) in &expiry {
        if id.starts_with('L') {
            assert_eq!(
                got.get(id),
                Some(&1),
                "{id} delivered exactly once after recovery: {got:?}"
            );
            assert!(delivered_at < *exp, "{id} delivered within its expiry");
        } else {
            assert_eq!(
                got.get(id),
                None,
                "{id} expired during the outage and was delivered late"
            );
        }
    }
    assert_eq!(got.values().sum::<u32>(), n_long as u32, "{got:?}");
    assert!(apns.log.violations().is_empty(), "{:?}", apns.log.violations());
    let page = metrics_page(metrics).await;
    assert_eq!(pushes(&page, "delivered"), n_long as u64);
    assert_eq!(pushes(&page, "failed"), n_short as u64);
    eprintln!(
        "outage {outage}s (max_retry_delay {retry_max}s): {} requests refused during it, {} pushes delivered once after \
         recovery, {} expired and counted as failed",
        tried, n_long, n_short
    );
    p.kill();
}

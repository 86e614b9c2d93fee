//! Relay load: posts pushes to a daemon on loopback and counts the requests
//! arriving at the APNs stand-in. Prints pushes per second and the latency
//! from the relay's 202 (and from the POST) to the provider request, then
//! the ceiling: a bare HTTP/2 client posting straight to the stand-in.
//!
//! `cargo bench --bench relay_load -- [pushes] [concurrency]`

#[path = "../tests/support/mod.rs"]
mod support;

use bytes::Bytes;
use http_body_util::Full;
use pushbox::push::{client::HttpsClient, jwt};
use serde_json::json;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use support::*;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(5000);
    let conc: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let apns = ApnsStandIn::start(&ca, dir.path()).await;
    let cfg = format!(
        "[relay]\nip_rate = 100000000\ntoken_rate = 100000000\n{}",
        apns.config(&ca)
    );
    let daemon = Daemon::start(dir.path(), &cfg).await;
    let api = daemon.api();
    let u = api.signup("bench").await;
    let reg = apns_token();
    let (_, token) = u.apns_device_and_token(&reg).await;
    let api = Arc::new(api);

    // Relay: n pushes from `conc` concurrent senders over one HTTP/2 connection.
    let started = Instant::now();
    let mut tasks = vec![];
    for w in 0..conc {
        let (api, token) = (api.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut marks = vec![];
            for i in (w..n).step_by(conc) {
                let sent = Instant::now();
                let r = api
                    .post("/api/v1/messages/", json!({ "token": token, "data": { "i": i } }))
                    .await;
                assert_eq!(r.status, 202);
                marks.push((i, sent, Instant::now()));
            }
            marks
        }));
    }
    let mut sent = vec![(started, started); n];
    for t in tasks {
        for (i, s, a) in t.await.unwrap() {
            sent[i] = (s, a);
        }
    }
    let accepted = started.elapsed();
    let seen = apns.log.wait_for(n, |_| true).await;
    let total = seen.iter().map(|s| s.at).max().unwrap().duration_since(started);
    let mut from_post = vec![];
    let mut from_202 = vec![];
    for s in &seen {
        let i = s.body["message"]["data"]["i"].as_u64().unwrap() as usize;
        from_post.push(s.at.saturating_duration_since(sent[i].0));
        from_202.push(s.at.saturating_duration_since(sent[i].1));
    }
    from_post.sort();
    from_202.sort();
    assert_eq!(seen.len(), n, "every push delivered once");
    println!("relay: {n} pushes, {conc} concurrent senders");
    println!(
        "  accepted (202) in {:.2} s: {:.0} pushes/s",
        accepted.as_secs_f64(),
        n as f64 / accepted.as_secs_f64()
    );
    println!(
        "  delivered to APNs in {:.2} s: {:.0} pushes/s",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64()
    );
    println!(
        "  POST -> provider request: p50 {} p99 {}",
        ms(pct(&from_post, 0.5)),
        ms(pct(&from_post, 0.99))
    );
    println!(
        "  202 -> provider request:  p50 {} p99 {} (0 when the provider saw it before the sender saw 202)",
        ms(pct(&from_202, 0.5)),
        ms(pct(&from_202, 0.99))
    );
    daemon.stop().await;

    // Ceiling: a bare HTTP/2 client posting straight to the stand-in.
    let pem = std::fs::read_to_string(&apns.key_path).unwrap();
    let key = jwt::es256_key(&jwt::pkcs8_from_pem(&pem).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let bearer = jwt::es256(
        &key,
        &json!({ "alg": "ES256", "kid": APNS_KEY_ID }),
        &json!({ "iss": APNS_TEAM_ID, "iat": now }),
    )
    .unwrap();
    let client = Arc::new(HttpsClient::new(Some(&ca.ca_pem)).unwrap());
    let before = apns.log.seen().len();
    let started = Instant::now();
    let mut tasks = vec![];
    for w in 0..conc {
        let (client, url, bearer, reg) = (client.clone(), apns.url.clone(), bearer.clone(), reg.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = vec![];
            for i in (w..n).step_by(conc) {
                let body = json!({ "aps": { "content-available": 1 }, "message": { "data": { "i": i } } }).to_string();
                let req = hyper::Request::post(format!("{url}/3/device/{reg}"))
                    .header("authorization", format!("bearer {bearer}"))
                    .header("apns-topic", APNS_TOPIC)
                    .header("apns-push-type", "background")
                    .header("apns-priority", "5")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let t = Instant::now();
                let r = client.send(req).await.unwrap();
                assert_eq!(r.status(), 200);
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = vec![];
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let took = started.elapsed();
    lat.sort();
    assert_eq!(apns.log.seen().len() - before, n);
    println!("ceiling: bare HTTP/2 client -> APNs stand-in, {n} requests, {conc} concurrent");
    println!(
        "  {:.0} requests/s; request -> response p50 {} p99 {}",
        n as f64 / took.as_secs_f64(),
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99))
    );
}

//! Relay load: posts pushes to a daemon on loopback and counts the requests
//! arriving at the APNs stand-in. Prints pushes per second and the latency
//! from the relay's 202 (and from the POST) to the provider request, then
//! the ceiling: a bare HTTP/2 client posting straight to the stand-in.
//!
//! With `SYGNAL_PYTHON` set to a Python that has Sygnal installed, the
//! same run then puts Sygnal (the Matrix push gateway) beside them: its
//! APNs pushkin is pointed at the same stand-in by configuration alone (see
//! [`sygnal`]), and the same number of pushes is posted with the same
//! concurrency to its `/_matrix/push/v1/notify`.
//!
//! `cargo bench --bench relay_load -- [pushes] [concurrency]`; the relay
//! runs as its own process (the release binary) and its CPU is read from
//! `/proc`. `BENCH_POSTGRES=<url>` keeps the relay's state in a fresh
//! database there, `BENCH_NODES=2` runs two nodes on it (senders split
//! between them), `BENCH_TOKENS=N` spreads the senders over N tokens.
//! (`bench/relay-compare.sh` installs Sygnal and runs this.)

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

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(5000);
    let conc: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let nodes: usize = std::env::var("BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let apns = ApnsStandIn::start(&ca, dir.path()).await;
    // The relay's store: SQLite, or a fresh database on `BENCH_POSTGRES` (shared by the nodes).
    let database = match std::env::var("BENCH_POSTGRES").ok().filter(|v| !v.is_empty()) {
        Some(base) => format!("database = {:?}\n", fresh_database(&base).await),
        None if nodes > 1 => panic!("BENCH_NODES > 1 needs BENCH_POSTGRES (a PostgreSQL URL)"),
        None => String::new(),
    };
    let store = if database.is_empty() { "SQLite" } else { "PostgreSQL" };
    // The relay runs as its own process (the release binary), so that its CPU is its own.
    let mut procs = vec![];
    for i in 0..nodes {
        let port = free_port();
        let config = dir.path().join(format!("node{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "domain = \"localhost\"\ndata_dir = \"node{i}\"\n[listen]\nc2s = []\nc2s_direct_tls = []\n\
                 https = [\"127.0.0.1:{port}\"]\n[log]\nlevel = \"warn\"\n[relay]\n{database}ip_rate = 100000000\n\
                 token_rate = 100000000\n{}",
                apns.config(&ca)
            ),
        )
        .unwrap();
        procs.push(Process::start(&config, port, &dir.path().join(format!("node{i}"))).await);
    }
    let apis: Vec<Arc<Api>> = procs.iter().map(|p| Arc::new(p.api())).collect();
    let u = apis[0].signup("bench").await;
    let reg = apns_token();
    let (device, token) = u.apns_device_and_token(&reg).await;
    // `BENCH_TOKENS`: senders use that many whitelist tokens (of one device)
    // instead of one, so their pushes do not all share one token's state.
    let n_tokens: usize = std::env::var("BENCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut tokens = vec![token.clone()];
    while tokens.len() < n_tokens {
        let t = u.post("/api/v1/tokens/", json!({ "apns_device": device })).await;
        assert_eq!(t.status, 201, "{:?}", t.body);
        tokens.push(t.body["token"].as_str().unwrap().to_string());
    }
    // Warm-up: connections (senders to relay, relay to APNs) and the provider token.
    let warm = 200;
    for i in 0..warm {
        let r = apis[i % nodes]
            .post("/api/v1/messages/", json!({ "token": token, "data": { "warm": i } }))
            .await;
        assert_eq!(r.status, 202);
    }
    apns.log.wait_for(warm, |_| true).await;
    let seen_before = apns.log.seen().len();
    let pids: Vec<u32> = procs.iter().map(|p| p.child.id()).collect();
    let cpu_before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let own_before = cpu_seconds(std::process::id());

    // Relay: n pushes from `conc` concurrent senders over one HTTP/2 connection per node.
    let started = Instant::now();
    let mut tasks = vec![];
    for w in 0..conc {
        let (api, token) = (apis[w % nodes].clone(), tokens[w % n_tokens].clone());
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
    let seen: Vec<Seen> = apns
        .log
        .wait_for(seen_before + n, |_| true)
        .await
        .split_off(seen_before);
    let total = seen.iter().map(|s| s.at).max().unwrap().duration_since(started);
    let relay_cpu: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu_before;
    let own_cpu = cpu_seconds(std::process::id()) - own_before;
    let mut from_post = vec![];
    let mut from_202 = vec![];
    let mut once = std::collections::HashSet::new();
    for s in &seen {
        let i = s.body["message"]["data"]["i"].as_u64().unwrap() as usize;
        assert!(once.insert(i), "push {i} delivered twice");
        from_post.push(s.at.saturating_duration_since(sent[i].0));
        from_202.push(s.at.saturating_duration_since(sent[i].1));
    }
    from_post.sort();
    from_202.sort();
    assert_eq!(once.len(), n, "every push delivered once");
    println!(
        "relay ({store}, {nodes} node(s), separate processes): {n} pushes, {conc} concurrent senders, {n_tokens} token(s)"
    );
    print_rate("accepted (202)", n, accepted);
    print_rate("delivered to APNs", n, total);
    print_spread("POST -> provider request:", &from_post, "");
    print_spread(
        "202 -> provider request: ",
        &from_202,
        " (0 when the provider saw it before the sender saw 202)",
    );
    println!(
        "  relay CPU {:.1} µs per push ({:.2} s over {:.2} s); senders + stand-in CPU {:.1} µs per push",
        relay_cpu * 1e6 / n as f64,
        relay_cpu,
        total.as_secs_f64(),
        own_cpu * 1e6 / n as f64
    );
    for p in procs {
        p.kill();
    }
    if nodes > 1 || !database.is_empty() {
        return;
    }

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

    if let Ok(python) = std::env::var("SYGNAL_PYTHON") {
        sygnal(&python, n, conc).await;
    }
}

/// Sygnal against an APNs stand-in, changing none of its code. Sygnal's
/// APNs client (aioapns) always connects to Apple's host names, but Sygnal
/// has a `proxy` setting (an HTTP CONNECT proxy) and Python's TLS trusts the
/// roots named by `SSL_CERT_FILE`. So: a stand-in whose certificate names
/// Apple's hosts, signed by a test CA given in `SSL_CERT_FILE`, and a CONNECT
/// proxy on loopback that tunnels every connection to that stand-in. The
/// tunnel is one extra loopback hop that pushbox does not have.
async fn sygnal(python: &str, n: usize, conc: usize) {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let hosts = [
        "api.development.push.apple.com",
        "api.sandbox.push.apple.com",
        "api.push.apple.com",
        "localhost",
    ];
    let ca = TestCa::for_hosts(dir.path(), "sygnal bench CA", "ca.pem", &hosts);
    let apns = ApnsStandIn::start(&ca, dir.path()).await;

    // The CONNECT proxy: whatever host is asked for, the tunnel leads to the stand-in.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = proxy.local_addr().unwrap().port();
    let target = apns.addr;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = proxy.accept().await else { return };
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let mut client = tokio::io::BufReader::new(tcp);
                let mut line = String::new();
                let mut first = true;
                loop {
                    line.clear();
                    if client.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if first && !line.starts_with("CONNECT ") {
                        return;
                    }
                    first = false;
                    if line == "\r\n" {
                        break;
                    }
                }
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = upstream.set_nodelay(true);
                let mut client = client.into_inner();
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });

    let port = free_port();
    let config = dir.path().join("sygnal.yaml");
    std::fs::write(
        &config,
        format!(
            "log:\n  setup:\n    version: 1\n    handlers:\n      stderr:\n        class: logging.StreamHandler\n\
             \x20       stream: ext://sys.stderr\n    root:\n      handlers: [stderr]\n      level: WARNING\n\
             \x20   disable_existing_loggers: false\n\
             http:\n  bind_addresses: ['127.0.0.1']\n  port: {port}\n\
             proxy: http://127.0.0.1:{proxy_port}\n\
             apps:\n  {APNS_TOPIC}:\n    type: apns\n    platform: sandbox\n    keyfile: {:?}\n\
             \x20   key_id: {APNS_KEY_ID}\n    team_id: {APNS_TEAM_ID}\n    topic: {APNS_TOPIC}\n    push_type: alert\n\
             \x20   inflight_request_limit: {}\n",
            apns.key_path.display().to_string(),
            conc.max(512),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("sygnal.log")).unwrap();
    let mut child = std::process::Command::new(python)
        .args(["-m", "sygnal.sygnal"])
        .env("SYGNAL_CONF", &config)
        .env("SSL_CERT_FILE", &ca.ca_pem)
        .env_remove("HTTPS_PROXY")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start Sygnal");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        let log = dir.path().join("sygnal.log");
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "Sygnal exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "Sygnal did not listen within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(conc)
        .build_http::<Full<Bytes>>();
    let url = format!("http://127.0.0.1:{port}/_matrix/push/v1/notify");
    // Device i has the APNs token "i" in hex: the stand-in's request path names the push.
    let notify = move |i: usize| {
        use base64::Engine;
        let mut token = [0u8; 32];
        token[24..].copy_from_slice(&(i as u64).to_be_bytes());
        let pushkey = base64::engine::general_purpose::STANDARD.encode(token);
        let body = json!({ "notification": {
            "event_id": format!("$event{i}"), "room_id": "!room:example.org", "type": "m.room.message",
            "sender": "@bob:example.org", "prio": "high", "counts": { "unread": 1 },
            "devices": [{ "app_id": APNS_TOPIC, "pushkey": pushkey, "pushkey_ts": 0 }],
        }});
        hyper::Request::post(url.as_str())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let index = |path: &str| {
        let hex = path.strip_prefix("/3/device/").unwrap();
        usize::from_str_radix(&hex[48..], 16).unwrap()
    };

    // Warm-up: Sygnal opens its APNs connection on the first push.
    let r = client.request(notify(n)).await.unwrap();
    let status = r.status();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        status,
        200,
        "Sygnal: {}\n{}",
        String::from_utf8_lossy(&body),
        std::fs::read_to_string(dir.path().join("sygnal.log")).unwrap_or_default()
    );
    apns.log.wait_for(1, |_| true).await;

    let started = Instant::now();
    let mut tasks = vec![];
    for w in 0..conc {
        let (client, notify) = (client.clone(), notify.clone());
        tasks.push(tokio::spawn(async move {
            let mut marks = vec![];
            for i in (w..n).step_by(conc) {
                let sent = Instant::now();
                let r = client.request(notify(i)).await.unwrap();
                let status = r.status();
                let body = r.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(status, 200, "Sygnal: {}", String::from_utf8_lossy(&body));
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["rejected"], json!([]), "Sygnal rejected the pushkey");
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
    let answered = started.elapsed();
    let seen: Vec<Seen> = apns
        .log
        .wait_for(n + 1, |_| true)
        .await
        .into_iter()
        .filter(|s| index(&s.path) < n)
        .collect();
    assert_eq!(seen.len(), n, "every push delivered once");
    let total = seen.iter().map(|s| s.at).max().unwrap().duration_since(started);
    let mut from_post = vec![];
    let mut round_trip = vec![];
    for s in &seen {
        let i = index(&s.path);
        from_post.push(s.at.saturating_duration_since(sent[i].0));
        round_trip.push(sent[i].1.duration_since(sent[i].0));
    }
    from_post.sort();
    round_trip.sort();
    let version = std::process::Command::new(python)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('matrix-sygnal'))",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("sygnal {version}: {n} pushes, {conc} concurrent senders (plain HTTP/1.1, keep-alive)");
    print_rate("answered (200, after APNs answered)", n, answered);
    print_rate("delivered to APNs", n, total);
    print_spread("POST -> provider request:", &from_post, "");
    print_spread("POST -> 200:             ", &round_trip, "");
    let v = apns.log.violations();
    if !v.is_empty() {
        println!("  stand-in rule violations by Sygnal: {} (first: {})", v.len(), v[0]);
    }
    let _ = child.kill();
    let _ = child.wait();
}

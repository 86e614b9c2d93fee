//! Push wake-up: how long from a message for a sleeping account to the
//! APNs request at the stand-in, through the whole daemon (c2s, offline
//! storage, XEP-0357 publish to `push.localhost`, the relay's outbox, the
//! HTTP/2 connection to APNs). Each of N accounts registers a device with
//! the app server (Conversations' `register-push-apns` command), enables
//! push and disconnects; S senders then send each account one message, as
//! fast as they can or one every I milliseconds each. Prints wake-ups per
//! second and p50/p99/max latency.
//!
//! `cargo bench --bench push_wake -- [accounts] [senders] [interval_ms]`

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{form_field, RawClient, TestServer};
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};
use support::{ms, pct};

/// Log in as `user`, register `device` with push.localhost, enable push, leave.
async fn fall_asleep(c2s: std::net::SocketAddr, user: String, device: String) {
    let mut c = RawClient::login_as(c2s, &user, "pw", Some("phone")).await;
    c.send(&format!(
        "<iq type='set' id='reg' to='push.localhost'><command xmlns='http://jabber.org/protocol/commands' node='register-push-apns' action='execute'>\
         <x xmlns='jabber:x:data' type='submit'><field var='token'><value>{device}</value></field><field var='device-id'><value>phone</value></field></x></command></iq>"
    ))
    .await;
    let r = c.read_until("</iq>").await;
    let (jid, node, secret) = (form_field(&r, "jid"), form_field(&r, "node"), form_field(&r, "secret"));
    c.received.clear();
    c.send(&format!(
        "<iq type='set' id='en'><enable xmlns='urn:xmpp:push:0' jid='{jid}' node='{node}'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var='secret'><value>{secret}</value></field></x></enable></iq>"
    ))
    .await;
    let r = c.read_until("id='en'").await;
    assert!(!r.contains("type='error'"), "{r}");
    c.send("</stream:stream>").await;
    c.read_to_end().await;
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(500);
    let senders: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    let interval = Duration::from_millis(args.get(2).and_then(|a| a.parse().ok()).unwrap_or(0));
    let dir = tempfile::tempdir().unwrap();
    let ca = support::TestCa::new(dir.path());
    let apns = support::ApnsStandIn::start(&ca, dir.path()).await;
    let s = TestServer::start_with(&apns.config(&ca)).await;

    // N sleeping phones, each with its own device token.
    let mut by_path = HashMap::new();
    let mut setup = vec![];
    for i in 0..n {
        let user = format!("sleeper{i}");
        s.add_user(&user, "pw");
        let device = support::apns_token();
        by_path.insert(format!("/3/device/{device}"), i);
        setup.push((user, device));
    }
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = vec![];
    for (user, device) in setup {
        let (gate, c2s) = (gate.clone(), s.c2s);
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire().await.unwrap();
            fall_asleep(c2s, user, device).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // S senders, each sending its share of the N messages back to back.
    let mut clients = vec![];
    for j in 0..senders {
        let user = format!("sender{j}");
        s.add_user(&user, "pw");
        clients.push(RawClient::login(s.c2s, &user, "pw").await);
    }
    let started = Instant::now();
    let mut tasks = vec![];
    for (j, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut sent = vec![];
            for i in (j..n).step_by(senders) {
                if !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                sent.push((i, Instant::now()));
                c.send(&format!(
                    "<message type='chat' to='sleeper{i}@localhost'><body>wake up {i}</body></message>"
                ))
                .await;
            }
            (c, sent)
        }));
    }
    let mut sent_at = vec![started; n];
    let mut keep = vec![];
    for t in tasks {
        let (c, sent) = t.await.unwrap();
        keep.push(c);
        for (i, at) in sent {
            sent_at[i] = at;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while apns.log.seen().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = apns.log.seen();
    assert_eq!(all.len(), n, "pushes at the APNs stand-in for {n} messages");
    let total = all.iter().map(|x| x.at).max().unwrap().duration_since(started);
    let mut lat = vec![];
    let mut hits = vec![0u32; n];
    for x in &all {
        let i = by_path[&x.path];
        hits[i] += 1;
        lat.push(x.at.saturating_duration_since(sent_at[i]));
    }
    lat.sort();
    assert!(hits.iter().all(|h| *h == 1), "every sleeping phone woken exactly once");
    assert!(apns.log.violations().is_empty(), "{:?}", apns.log.violations());
    println!(
        "push wake-up: {n} sleeping accounts, {senders} senders, one message each, {} ms apart per sender",
        interval.as_millis()
    );
    println!(
        "  all {n} pushes at the APNs stand-in in {:.2} s: {:.0} wake-ups/s",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64()
    );
    println!(
        "  message sent -> APNs request: p50 {} p99 {} max {}",
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );
    drop(keep);
    s.stop().await;
}

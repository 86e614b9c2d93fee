//! Faults with nothing lost: the real `pushbox` binary is killed with
//! SIGKILL while a client sends messages to an offline account, then
//! restarted. Every message the server stored (and every one it confirmed
//! by answering a later ping on the same stream) is delivered exactly once.
//! `FAULT_ROUNDS` (default 3) sets how many kill/restart rounds run.

mod common;
use common::*;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
    process::{Child, Command},
    time::Duration,
};

struct Daemon {
    child: Child,
    addr: SocketAddr,
}

fn free_port() -> SocketAddr {
    ([127, 0, 0, 1], daemon::free_port()).into()
}

async fn start(dir: &Path, addr: SocketAddr) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pushbox"))
        .arg("--config")
        .arg(dir.join("pushbox.toml"))
        .arg("serve")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Daemon { child, addr };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    panic!("pushbox did not start listening on {addr}: {log}");
}

/// Message numbers in the order they appear in `text`.
fn in_order(text: &str) -> Vec<u32> {
    text.split("<body>n")
        .skip(1)
        .filter_map(|p| p.split('<').next().and_then(|n| n.parse().ok()))
        .collect()
}

/// Message numbers in `<body>nN</body>` elements, with how often each appears.
fn bodies(text: &str) -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    for part in text.split("<body>n").skip(1) {
        if let Some(n) = part.split('<').next().and_then(|n| n.parse().ok()) {
            *out.entry(n).or_insert(0) += 1;
        }
    }
    out
}

/// The messages in the offline table, read with a plain connection: opening
/// a `Store` migrates, which takes the write lock, and tests poll this while
/// the daemon writes.
fn stored_offline(data: &Path) -> BTreeMap<u32, u32> {
    let c = rusqlite::Connection::open(data.join("pushbox.sqlite3")).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut st = c.prepare("SELECT stanza FROM offline ORDER BY id").unwrap();
    let rows = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<Vec<String>>>()
        .unwrap();
    bodies(&rows.join(""))
}

#[tokio::test]
async fn kill_9_under_load_loses_no_stored_message() {
    let rounds: u32 = std::env::var("FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("data/tls");
    install_test_ca(&tls);
    let addr = free_port();
    let toml = format!(
        "domain = \"localhost\"\n[listen]\nc2s = [\"{addr}\"]\nc2s_direct_tls = []\nhttps = []\n\
                [limits]\nconnections_per_ip_per_minute = 10000\nmax_offline_messages = 100000\n[log]\nlevel = \"warn\"\n"
    );
    std::fs::write(dir.path().join("pushbox.toml"), toml).unwrap();
    let data = dir.path().join("data");
    {
        let s = pushbox::store::Store::open_in(&data).unwrap();
        for u in ["alice", "bob"] {
            s.blocking(move |c| pushbox::store::accounts::create(c, u, "pw", false))
                .unwrap();
        }
    }
    let mut next = 0u32;
    let mut acked_total = 0usize;
    for round in 0..rounds {
        let mut d = start(dir.path(), addr).await;
        let mut a = RawClient::login(d.addr, "alice", "pw").await;
        let mut sent = BTreeSet::new();
        // Batches of messages to offline bob, each followed by a ping; the
        // daemon is killed right after a batch goes out, mid-processing.
        let kill_after = 5 + round * 3;
        for batch in 0..=kill_after {
            let mut out = String::new();
            for _ in 0..20 {
                out.push_str(&format!(
                    "<message to='bob@localhost' type='chat' id='m{next}'><body>n{next}</body></message>\
                     <iq type='get' id='p{next}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
                ));
                sent.insert(next);
                next += 1;
            }
            a.send(&out).await;
            if batch < kill_after {
                a.read_until(&format!("id='p{}'", next - 1)).await;
            }
        }
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        let seen = a.read_to_end().await;
        // Pings answered: every message before an answered ping was stored.
        let acked: BTreeSet<u32> = sent
            .iter()
            .copied()
            .filter(|n| seen.contains(&format!("id='p{n}'")))
            .collect();
        let stored = stored_offline(&data);
        assert!(
            stored.values().all(|c| *c == 1),
            "round {round}: duplicates stored: {stored:?}"
        );
        for n in &acked {
            assert!(
                stored.contains_key(n),
                "round {round}: acknowledged message {n} was lost"
            );
        }
        acked_total += acked.len();
        eprintln!(
            "round {round}: sent {}, acknowledged {}, stored {} (unacknowledged but stored: {})",
            sent.len(),
            acked.len(),
            stored.len(),
            stored.len() - acked.len()
        );

        // Restart; bob comes online and gets exactly what was stored.
        let mut d = start(dir.path(), addr).await;
        let mut b = RawClient::login(d.addr, "bob", "pw").await;
        b.send("<presence/>").await;
        b.send("<iq type='get' id='done' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            .await;
        let got = b.read_until("id='done'").await;
        let delivered = bodies(&got);
        assert_eq!(delivered, stored, "round {round}: delivered differs from stored");
        // Without stream management, the answer to the server's ping proves
        // the client read the messages: only then are they deleted.
        answer_server_pings(&mut b, &got).await;
        b.send("</stream:stream>").await;
        b.read_to_end().await;
        let mut again = RawClient::login(d.addr, "bob", "pw").await;
        again.send("<presence/>").await;
        again
            .send("<iq type='get' id='done2' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            .await;
        let second = again.read_until("id='done2'").await;
        assert!(bodies(&second).is_empty(), "round {round}: delivered twice: {second}");
        assert!(stored_offline(&data).is_empty());
        d.child.kill().unwrap();
        d.child.wait().unwrap();
    }
    assert!(acked_total > 0, "no message was acknowledged before the kills");
}

/// A backlog of offline messages is being delivered to a client that logs
/// in, and the daemon is killed with SIGKILL at many points: before the
/// client's presence, after it read some messages, after it acknowledged
/// some (stream management `<a/>`) or answered the proof ping (without
/// stream management). After every kill, each message is either still in
/// the offline table or was acknowledged by the client; at the end one
/// clean session receives the rest, and every message was received at
/// least once, none lost.
#[tokio::test]
async fn kill_9_during_backlog_delivery_loses_nothing() {
    const N: u32 = 150;
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("data/tls");
    install_test_ca(&tls);
    let addr = free_port();
    let toml = format!(
        "domain = \"localhost\"\n[listen]\nc2s = [\"{addr}\"]\nc2s_direct_tls = []\nhttps = []\n\
         [limits]\nconnections_per_ip_per_minute = 10000\n[log]\nlevel = \"warn\"\n"
    );
    std::fs::write(dir.path().join("pushbox.toml"), toml).unwrap();
    let data = dir.path().join("data");
    {
        let s = pushbox::store::Store::open_in(&data).unwrap();
        s.blocking(|c| {
            pushbox::store::accounts::create(c, "bob", "pw", false)?;
            let id = pushbox::store::accounts::id_of(c, "bob")?.unwrap();
            for n in 0..N {
                let m = format!(
                    "<message xmlns='jabber:client' from='alice@localhost/x' to='bob@localhost' type='chat' id='m{n}'><body>n{n}</body></message>"
                );
                pushbox::store::offline::push(c, id, &m, 100_000)?;
            }
            Ok(())
        })
        .unwrap();
    }
    let all: BTreeSet<u32> = (0..N).collect();
    let mut received: BTreeSet<u32> = BTreeSet::new();
    let mut acked: BTreeSet<u32> = BTreeSet::new();
    // (stream management, messages to read before the kill, how much to
    // acknowledge: 0 nothing, 1 half of what arrived (stream management),
    // 2 everything (the proof ping without stream management)).
    let plan: &[(bool, u32, u8)] = &[
        (true, 0, 0),
        (false, 0, 0),
        (true, 1, 0),
        (true, 20, 1),
        (false, 10, 0),
        (true, 90, 0),
        (true, 120, 1),
        (false, 149, 0),
        (true, 30, 1),
        (false, 40, 2),
    ];
    for (round, &(sm, read, ack)) in plan.iter().enumerate() {
        let remaining = stored_offline(&data);
        if remaining.is_empty() {
            break;
        }
        let mut d = start(dir.path(), addr).await;
        let mut b = RawClient::login(d.addr, "bob", "pw").await;
        if sm {
            b.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await;
            b.read_until("<enabled").await;
        }
        if read > 0 {
            b.send("<presence/>").await;
            // Messages arrive oldest first: wait for the `read`-th still stored.
            let nth = (read as usize).min(remaining.len()) - 1;
            if let Some(&last) = remaining.keys().nth(nth) {
                b.read_until(&format!("<body>n{last}<")).await;
            }
        }
        match ack {
            1 => {
                // h counts every stanza since <enable/>: only messages were sent.
                let order = in_order(&b.received);
                let h = order.len() / 2;
                b.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>")).await;
                acked.extend(&order[..h]);
            }
            2 => {
                let text = b.read_until("id='offline-").await;
                answer_server_pings(&mut b, &text).await;
                // The ping was written after the messages it proves.
                let before = &text[..text.find("id='offline-").unwrap()];
                acked.extend(in_order(before));
            }
            _ => {}
        }
        if ack > 0 {
            // A ping round trip: the acknowledgement was processed; the
            // deletion runs in the background, so give it a moment.
            b.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
                .await;
            b.read_until("id='sync'").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        let got = b.read_to_end().await;
        received.extend(bodies(&got).keys());
        let stored = stored_offline(&data);
        let lost: Vec<u32> = all
            .iter()
            .copied()
            .filter(|n| !stored.contains_key(n) && !acked.contains(n))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round} (sm={sm}, read={read}, ack={ack}): {} messages neither stored nor acknowledged, first {:?}",
            lost.len(),
            lost.iter().take(5).collect::<Vec<_>>()
        );
        assert!(
            stored.values().all(|c| *c == 1),
            "round {round}: a message stored twice"
        );
        eprintln!(
            "round {round} (sm={sm}, read={read}, ack={ack}): received so far {}, acknowledged {}, still stored {}",
            received.len(),
            acked.len(),
            stored.len()
        );
    }
    assert!(!acked.is_empty(), "the plan acknowledged something");
    // A clean session gets what is left and proves it; nothing stays stored.
    let mut d = start(dir.path(), addr).await;
    let mut b = RawClient::login(d.addr, "bob", "pw").await;
    b.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    b.read_until("<enabled").await;
    b.send("<presence/>").await;
    if let Some(&last) = stored_offline(&data).keys().last() {
        b.read_until(&format!("<body>n{last}<")).await;
    }
    b.send("<iq type='get' id='end' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    b.read_until("id='end'").await;
    received.extend(bodies(&b.received).keys());
    let h = b.received.matches("<message ").count() + b.received.matches("<presence").count();
    b.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", h + 1)).await;
    b.send("</stream:stream>").await;
    b.read_to_end().await;
    assert_eq!(received, all, "every message reached the client at least once");
    wait_until("acknowledged messages are deleted", || stored_offline(&data).is_empty()).await;
    d.child.kill().unwrap();
    d.child.wait().unwrap();
}

/// Messages that reach a session while it hibernates (stream management,
/// connection lost, waiting for resumption) are kept in the offline table:
/// a SIGKILL while the phone sleeps loses none of them, and the next login
/// gets every one. A message that was written to the live connection but
/// never acknowledged is kept too.
#[tokio::test]
async fn kill_9_while_a_session_hibernates_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("data/tls");
    install_test_ca(&tls);
    let addr = free_port();
    let toml = format!(
        "domain = \"localhost\"\n[listen]\nc2s = [\"{addr}\"]\nc2s_direct_tls = []\nhttps = []\n\
         [limits]\nconnections_per_ip_per_minute = 10000\n[log]\nlevel = \"warn\"\n"
    );
    std::fs::write(dir.path().join("pushbox.toml"), toml).unwrap();
    let data = dir.path().join("data");
    {
        let s = pushbox::store::Store::open_in(&data).unwrap();
        for u in ["alice", "bob"] {
            s.blocking(move |c| pushbox::store::accounts::create(c, u, "pw", false))
                .unwrap();
        }
    }
    let mut d = start(dir.path(), addr).await;
    let mut b = RawClient::login(d.addr, "bob", "pw").await;
    b.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/><presence/>").await;
    b.read_until("<enabled").await;
    let mut a = RawClient::login(d.addr, "alice", "pw").await;
    // n0 reaches bob's live connection; bob never acknowledges it.
    a.send("<message to='bob@localhost' type='chat' id='m0'><body>n0</body></message>")
        .await;
    b.read_until("<body>n0<").await;
    // Bob's connection drops without a goodbye: the session hibernates.
    drop(b);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut out = String::new();
    for n in 1..=20 {
        out.push_str(&format!(
            "<message to='bob@localhost' type='chat' id='m{n}'><body>n{n}</body></message>"
        ));
    }
    out.push_str("<iq type='get' id='sent' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
    a.send(&out).await;
    a.read_until("id='sent'").await;
    let want: BTreeSet<u32> = (0..=20).collect();
    // The hibernating session stores them after the sender's ping is
    // answered: wait until they are on disk, then kill and check again.
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not stored in time: {:?}",
            want.difference(&seen).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = stored_offline(&data).keys().copied().collect();
    }
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let stored = stored_offline(&data);
    assert_eq!(
        stored.keys().copied().collect::<BTreeSet<_>>(),
        want,
        "every message for the sleeping session is on disk"
    );
    let mut d = start(dir.path(), addr).await;
    let mut b = RawClient::login(d.addr, "bob", "pw").await;
    b.send("<presence/>").await;
    b.send("<iq type='get' id='done' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let got = b.read_until("id='done'").await;
    assert_eq!(bodies(&got).keys().copied().collect::<BTreeSet<_>>(), want);
    d.child.kill().unwrap();
    d.child.wait().unwrap();
}

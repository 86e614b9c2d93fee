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
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
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

fn stored_offline(data: &Path) -> BTreeMap<u32, u32> {
    let store = pushbox::store::Store::open_in(data).unwrap();
    let rows: Vec<String> = store
        .blocking(|c| {
            let mut st = c.prepare("SELECT stanza FROM offline ORDER BY id")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
        })
        .unwrap();
    bodies(&rows.join(""))
}

#[tokio::test]
async fn kill_9_under_load_loses_no_stored_message() {
    let rounds: u32 = std::env::var("FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let ca = test_ca();
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("data/tls");
    std::fs::create_dir_all(&tls).unwrap();
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(ca.join(f), tls.join(f)).unwrap();
    }
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

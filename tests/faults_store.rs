//! Storage faults with nothing lost, against the real `pushbox` binary:
//!
//! - **disk full**: the data directory lives on a small tmpfs that a filler
//!   file fills up while `alice` sends messages to offline `bob`. Every
//!   message is either refused with a `resource-constraint` error or stored;
//!   the relay API answers 503 with a JSON `detail`; the database passes
//!   `PRAGMA integrity_check`; when the filler is removed the same daemon
//!   (no restart) stores again, and `bob` gets exactly the stored messages.
//!   Mounting needs root (CI runs as root; see docs/decisions.md).
//! - **locked by a backup**: while messages flow, `pushbox backup` runs again
//!   and again and a second connection holds `BEGIN IMMEDIATE` for seconds at
//!   a time, as an external sqlite tool would. No message is refused, every
//!   acknowledged one is stored exactly once, every backup passes
//!   `integrity_check`.
//!
//! `FAULT_ROUNDS` (default 1) repeats the lock test's load that many times.

mod common;
mod support;

use common::{answer_server_pings, install_test_ca, RawClient};
use serde_json::json;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    ([127, 0, 0, 1], common::daemon::free_port()).into()
}

/// Write the config (c2s on `c2s`, the relay API on `https`) and the
/// accounts, with the test CA in `data/tls` so that clients trust the daemon.
fn prepare(dir: &Path, data: &Path, c2s: SocketAddr, https: SocketAddr) -> PathBuf {
    let tls = data.join("tls");
    install_test_ca(&tls);
    let config = dir.join("pushbox.toml");
    std::fs::write(
        &config,
        format!(
            "domain = \"localhost\"\ndata_dir = {:?}\n[listen]\nc2s = [\"{c2s}\"]\nc2s_direct_tls = []\n\
             https = [\"{https}\"]\n[limits]\nconnections_per_ip_per_minute = 10000\nmax_offline_messages = 100000\n\
             [relay]\nip_rate = 100000\n[log]\nlevel = \"warn\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let s = pushbox::store::Store::open_in(data).unwrap();
    for u in ["alice", "bob"] {
        s.blocking(move |c| pushbox::store::accounts::create(c, u, "pw", false))
            .unwrap();
    }
    config
}

async fn start(dir: &Path, config: &Path, c2s: SocketAddr) -> Daemon {
    let child = Command::new(env!("CARGO_BIN_EXE_pushbox"))
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon { child };
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(c2s).await.is_ok() {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    panic!("pushbox did not start listening on {c2s}: {log}");
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

fn stored_offline(db: &Path) -> BTreeMap<u32, u32> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c.prepare("SELECT stanza FROM offline ORDER BY id").unwrap();
    let rows: Vec<String> = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    bodies(&rows.join(""))
}

fn integrity(db: &Path) -> String {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap()
}

/// Send messages `from..to` to offline bob, each followed by a ping, and
/// wait for the last ping. Returns (acknowledged, refused): a message is
/// refused when an error with its id came back, acknowledged otherwise.
async fn send_batch(a: &mut RawClient, from: u32, to: u32) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let mut out = String::new();
    for n in from..to {
        out.push_str(&format!(
            "<message to='bob@localhost' type='chat' id='m{n}'><body>n{n}</body></message>\
             <iq type='get' id='p{n}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
        ));
    }
    a.send(&out).await;
    let seen = a.read_until(&format!("id='p{}'", to - 1)).await;
    let (mut acked, mut refused) = (BTreeSet::new(), BTreeSet::new());
    for n in from..to {
        assert!(seen.contains(&format!("id='p{n}'")), "ping {n} unanswered");
        if seen.contains(&format!("id='m{n}'")) {
            refused.insert(n);
        } else {
            acked.insert(n);
        }
    }
    (acked, refused)
}

/// The error stanza that came back for message `n`.
fn error_for(seen: &str, n: u32) -> &str {
    let at = seen.find(&format!("id='m{n}'")).unwrap();
    let start = seen[..at].rfind("<message").unwrap();
    let end = seen[at..].find("</message>").map(|e| at + e).unwrap_or(seen.len());
    &seen[start..end]
}

/// Bob logs in and must receive exactly `expected`, each once; a second login gets nothing.
async fn bob_receives(c2s: SocketAddr, expected: &BTreeSet<u32>) {
    let mut b = RawClient::login(c2s, "bob", "pw").await;
    b.send("<presence/>").await;
    b.send("<iq type='get' id='done' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let text = b.read_until("id='done'").await;
    let got = bodies(&text);
    let want: BTreeMap<u32, u32> = expected.iter().map(|n| (*n, 1)).collect();
    assert_eq!(got, want, "bob's offline messages differ from the acknowledged ones");
    // The answer to the server's ping proves bob read them: only then are they deleted.
    answer_server_pings(&mut b, &text).await;
    b.send("</stream:stream>").await;
    b.read_to_end().await;
    let mut again = RawClient::login(c2s, "bob", "pw").await;
    again.send("<presence/>").await;
    again
        .send("<iq type='get' id='done2' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let second = again.read_until("id='done2'").await;
    assert!(bodies(&second).is_empty(), "delivered twice: {second}");
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("running mount");
        assert!(
            st.success(),
            "mount -t tmpfs failed: the disk-full test needs root (CI runs as root)"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the filesystem of `path` with one file until writes fail.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k as u64,
        }
    }
    // Then byte by byte to the last free block.
    while let Ok(1) = f.write(&[0]) {
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_gives_clear_errors_loses_nothing_and_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = Tmpfs::mount(&dir.path().join("mnt"), "8m");
    let data = mnt.0.join("data");
    let (c2s, https) = (free_addr(), free_addr());
    let config = prepare(dir.path(), &data, c2s, https);
    let db = data.join("pushbox.sqlite3");
    let _d = start(dir.path(), &config, c2s).await;
    let api = support::Api::new(&format!("https://localhost:{}", https.port()), &data.join("tls/ca.pem"));
    let relay = api.signup("diskfull").await;
    let (_, token) = relay.apns_device_and_token(&support::apns_token()).await;

    let mut a = RawClient::login(c2s, "alice", "pw").await;
    let (mut acked, mut refused) = send_batch(&mut a, 0, 20).await;
    assert!(refused.is_empty(), "refused with space left: {refused:?}");

    let filler = mnt.0.join("filler");
    let filled = fill(&filler);
    // Keep sending until the database needs space it cannot get.
    let mut next = 20;
    while refused.is_empty() && next < 20_000 {
        let (ok, no) = send_batch(&mut a, next, next + 50).await;
        acked.extend(ok);
        refused.extend(no);
        next += 50;
    }
    assert!(
        !refused.is_empty(),
        "no message was refused after filling {filled} bytes"
    );
    let seen = a.read_until(&format!("id='p{}'", next - 1)).await;
    for n in &refused {
        let e = error_for(&seen, *n);
        assert!(
            e.contains("type='error'") && e.contains("<resource-constraint"),
            "message {n} refused with an unclear error: {e}"
        );
    }
    // More messages while full: all refused the same way, none stored.
    let (ok, no) = send_batch(&mut a, next, next + 20).await;
    assert!(ok.is_empty(), "stored while the disk is full: {ok:?}");
    refused.extend(no);
    next += 20;
    // The relay API: a clear 503 with a JSON detail and Retry-After.
    let r = api.post("/api/v1/messages/", json!({ "token": token })).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(
        r.body["detail"].as_str().is_some_and(|d| d.contains("storage")),
        "{:?}",
        r.body
    );
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(integrity(&db), "ok");

    // Space returns: the same daemon stores again.
    std::fs::remove_file(&filler).unwrap();
    let (ok, no) = send_batch(&mut a, next, next + 20).await;
    assert!(no.is_empty(), "refused after space returned: {no:?}");
    acked.extend(ok);
    next += 20;
    let r = api.post("/api/v1/messages/", json!({ "token": token })).await;
    assert_eq!(r.status, 202, "{:?}", r.body);

    let stored = stored_offline(&db);
    assert!(stored.values().all(|c| *c == 1), "duplicates stored");
    let stored_set: BTreeSet<u32> = stored.keys().copied().collect();
    assert_eq!(stored_set, acked, "stored differs from acknowledged");
    assert!(refused.iter().all(|n| !stored.contains_key(n)));
    assert_eq!(integrity(&db), "ok");
    bob_receives(c2s, &acked).await;
    eprintln!(
        "disk full: {next} messages sent, {} stored, {} refused with resource-constraint, 0 lost",
        acked.len(),
        refused.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_and_an_external_write_lock_lose_no_write() {
    let rounds: u32 = std::env::var("FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (c2s, https) = (free_addr(), free_addr());
    let config = prepare(dir.path(), &data, c2s, https);
    let db = data.join("pushbox.sqlite3");
    let _d = start(dir.path(), &config, c2s).await;

    let stop = Arc::new(AtomicBool::new(false));
    // An external tool holding the write lock for 3 s out of every 4.
    let locker = {
        let (stop, db) = (stop.clone(), db.clone());
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut held = 0;
            while !stop.load(Ordering::SeqCst) {
                c.execute_batch("BEGIN IMMEDIATE").unwrap();
                held += 1;
                std::thread::sleep(Duration::from_secs(3));
                c.execute_batch("COMMIT").unwrap();
                std::thread::sleep(Duration::from_secs(1));
            }
            held
        })
    };
    // `pushbox backup` again and again, each copy checked.
    let backups = {
        let (stop, dir, config) = (stop.clone(), dir.path().to_path_buf(), config.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let file = dir.join(format!("backup-{n}.sqlite3"));
                let out = Command::new(env!("CARGO_BIN_EXE_pushbox"))
                    .arg("--config")
                    .arg(&config)
                    .arg("backup")
                    .arg(&file)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "backup {n} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(integrity(&file), "ok", "backup {n}");
                std::fs::remove_file(&file).unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            n
        })
    };

    let mut a = RawClient::login(c2s, "alice", "pw").await;
    let (mut acked, mut refused) = (BTreeSet::new(), BTreeSet::new());
    let mut next = 0;
    // Enough batches to span several lock periods.
    for _ in 0..rounds * 20 {
        let (ok, no) = send_batch(&mut a, next, next + 20).await;
        acked.extend(ok);
        refused.extend(no);
        next += 20;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let held = locker.join().unwrap();
    let made = backups.join().expect("backups");
    assert!(held >= 2, "the write lock was taken {held} times");
    assert!(made >= 2, "{made} backups");
    assert!(refused.is_empty(), "messages refused under the lock: {refused:?}");

    let stored = stored_offline(&db);
    assert!(stored.values().all(|c| *c == 1), "duplicates stored");
    let stored_set: BTreeSet<u32> = stored.keys().copied().collect();
    assert_eq!(stored_set, acked, "stored differs from acknowledged");
    assert_eq!(integrity(&db), "ok");
    bob_receives(c2s, &acked).await;
    eprintln!(
        "locked: {next} messages, {} stored once, write lock held {held} times, {made} backups checked, 0 lost",
        acked.len()
    );
}

//! Operations: systemd notifications (READY=1 only once every listener
//! answers, WATCHDOG=1, STOPPING=1) and the Prometheus endpoint, against the
//! real daemon on loopback. One test per process: it sets NOTIFY_SOCKET.

mod common;

use common::{install_test_ca, RawClient, WAIT};
use pushbox::config::Config;
use std::net::SocketAddr;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UnixDatagram},
    sync::{mpsc, oneshot},
};

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut out))
        .await
        .expect("metrics answer")
        .unwrap();
    out
}

/// The value of one sample line `name{labels} value`, 0 when absent.
fn sample(text: &str, key: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0.0)
}

/// Read notifications as they come, like systemd does (a full socket queue would block the sender).
fn drain(sock: UnixDatagram) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf).await {
            if tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                return;
            }
        }
    });
    rx
}

async fn next_notification(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a systemd notification")
        .expect("the notification socket is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_systemd_and_serves_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let mut notify = drain(UnixDatagram::bind(&notify_path).unwrap());
    // SAFETY: this test binary has this one test; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var("NOTIFY_SOCKET", &notify_path);
        std::env::set_var("WATCHDOG_USEC", "200000");
    }

    let tls = dir.path().join("data/tls");
    install_test_ca(&tls);
    let toml = "domain = \"localhost\"\n\
        [listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = [\"127.0.0.1:0\"]\nhttps = []\n\
        [metrics]\nlisten = [\"127.0.0.1:0\"]\n";
    let config = Config::from_toml_str(toml, Some(dir.path())).unwrap_or_else(|e| panic!("{e}"));
    let store = pushbox::store::Store::open_in(&config.data_dir).unwrap();
    store
        .blocking(|c| pushbox::store::accounts::create(c, "alice", "pw-alice", false))
        .unwrap();
    drop(store);

    let listeners = pushbox::Listeners::bind(&config).await.unwrap();
    let c2s = listeners.c2s[0].local_addr().unwrap();
    let metrics = listeners.metrics[0].local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(pushbox::run(
        config,
        listeners,
        async {
            let _ = stopped.await;
            pushbox::systemd::stopping();
        },
        pushbox::systemd::ready,
    ));

    // READY=1 comes first, and by then every listener answers.
    let first = next_notification(&mut notify).await;
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    let page = http_get(metrics, "/metrics").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("text/plain; version=0.0.4"), "{page}");
    let logins_before = sample(&page, "pushbox_logins_total{result=\"ok\"}");
    let failed_before = sample(&page, "pushbox_logins_total{result=\"failed\"}");

    // Traffic: one login that works (with a message), one that fails.
    let mut alice = RawClient::login(c2s, "alice", "pw-alice").await;
    alice.send("<presence/>").await;
    alice
        .send("<message to='alice@localhost' id='m1' type='chat'><body>note to self</body></message>")
        .await;
    alice.read_until("note to self").await;
    // And into a room: the group chat gauges.
    alice
        .send("<presence to='ops@groups.localhost/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        .await;
    alice.read_until("<subject").await;
    {
        use base64::Engine;
        let mut bad = RawClient::connect_tls(c2s).await;
        bad.send(common::HEADER).await;
        bad.read_until("</stream:features>").await;
        let cred = base64::engine::general_purpose::STANDARD.encode("\0alice\0wrong");
        bad.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>"
        ))
        .await;
        bad.read_until("not-authorized").await;
    }

    let page = http_get(metrics, "/metrics").await;
    assert!(
        sample(&page, "pushbox_logins_total{result=\"ok\"}") >= logins_before + 1.0,
        "{page}"
    );
    assert!(
        sample(&page, "pushbox_logins_total{result=\"failed\"}") >= failed_before + 1.0,
        "{page}"
    );
    assert!(
        sample(&page, "pushbox_connections_total{kind=\"c2s_starttls\"}") >= 2.0,
        "{page}"
    );
    assert!(
        sample(&page, "pushbox_stanzas_routed_total{kind=\"message\"}") >= 1.0,
        "{page}"
    );
    assert_eq!(sample(&page, "pushbox_sessions_online"), 1.0, "{page}");
    assert_eq!(sample(&page, "pushbox_muc_rooms_active"), 1.0, "{page}");
    assert_eq!(sample(&page, "pushbox_muc_occupants"), 1.0, "{page}");
    assert!(sample(&page, "pushbox_database_size_bytes") > 0.0, "{page}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!(
        sample(
            &page,
            "pushbox_certificate_expiry_timestamp_seconds{name=\"localhost\"}"
        ) > now,
        "{page}"
    );
    assert!(http_get(metrics, "/other").await.starts_with("HTTP/1.1 404"));

    // The watchdog pings while the daemon runs.
    loop {
        let n = next_notification(&mut notify).await;
        if n.lines().any(|l| l == "WATCHDOG=1") {
            break;
        }
    }

    stop.send(()).unwrap();
    loop {
        let n = next_notification(&mut notify).await;
        if n.lines().any(|l| l == "STOPPING=1") {
            break;
        }
        assert!(n.lines().any(|l| l == "WATCHDOG=1"), "unexpected notification {n:?}");
    }
    // Shutting down closes alice's stream with the condition that says so.
    let end = alice.read_until("</stream:stream>").await;
    assert!(end.contains("<system-shutdown"), "{end}");
    tokio::time::timeout(WAIT, task)
        .await
        .expect("daemon stops")
        .unwrap()
        .unwrap();
}

//! The relay under test: a daemon booted in-process or the real binary
//! started on a config file, and a client of its JSON API. With
//! `PUSHBOX_TEST_POSTGRES` set (the URL of a PostgreSQL database whose user
//! may create databases), every relay gets a fresh database there instead
//! of its SQLite file: the same tests then run against PostgreSQL.

use super::*;
use pushbox::push::backend::RelayStore;

/// The test PostgreSQL, when the relay tests run against one.
pub fn test_postgres() -> Option<String> {
    std::env::var("PUSHBOX_TEST_POSTGRES").ok().filter(|s| !s.is_empty())
}

/// A new, empty database on the test PostgreSQL at `base`: its URL.
pub async fn fresh_database(base: &str) -> String {
    let (client, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PUSHBOX_TEST_POSTGRES unreachable: {e}"));
    let task = tokio::spawn(conn);
    let name = format!("pushbox_test_{}", uuid::Uuid::new_v4().simple());
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    drop(client);
    let _ = task.await;
    let (head, _) = base
        .rsplit_once('/')
        .expect("PUSHBOX_TEST_POSTGRES ends with /<database>");
    format!("{head}/{name}")
}

/// The `database = …` line for a new relay's `[relay]` table: a fresh
/// PostgreSQL database when the tests run against one, else nothing.
pub async fn relay_database_line() -> String {
    match test_postgres() {
        Some(base) => format!("database = {:?}\n", fresh_database(&base).await),
        None => String::new(),
    }
}

/// `toml` with `line` in its `[relay]` table (added when missing).
pub fn with_relay_line(toml: &str, line: &str) -> String {
    if line.is_empty() {
        return toml.to_string();
    }
    match toml.find("[relay]\n") {
        Some(i) => format!("{}[relay]\n{line}{}", &toml[..i], &toml[i + 8..]),
        None => format!("{toml}\n[relay]\n{line}"),
    }
}

/// The relay store a daemon with this configuration uses (SQLite beside it,
/// or its PostgreSQL database), opened from the test.
pub async fn relay_store(config: &pushbox::config::Config) -> Arc<dyn RelayStore> {
    let store = pushbox::store::Store::open_in(&config.data_dir).unwrap();
    pushbox::push::backend::open(&config.relay, store, &config.data_dir)
        .await
        .unwrap()
}

/// The same, for a daemon started on the config file at `path`.
pub async fn relay_store_of(path: &Path) -> Arc<dyn RelayStore> {
    let toml = std::fs::read_to_string(path).unwrap();
    let config = pushbox::config::Config::from_toml_str(&toml, path.parent()).unwrap_or_else(|p| panic!("{p}"));
    relay_store(&config).await
}

/// A daemon booted in-process with `pushbox::run` on 127.0.0.1:0.
pub struct Daemon {
    daemon: daemon::InProcess,
    pub url: String,
    pub ca: PathBuf,
    pub data_dir: PathBuf,
    pub config: pushbox::config::Config,
}

impl Daemon {
    /// Boot with `extra` TOML appended to a base test config in `dir`.
    pub async fn start(dir: &Path, extra: &str) -> Daemon {
        let toml = format!(
            "domain = \"localhost\"\ndata_dir = \"data\"\n[listen]\nc2s = []\nc2s_direct_tls = []\nhttps = []\n{extra}"
        );
        let toml = if toml.contains("[relay]") {
            toml
        } else {
            format!("{toml}\n[relay]\nip_rate = 100000\n")
        };
        let toml = with_relay_line(&toml, &relay_database_line().await);
        let config = pushbox::config::Config::from_toml_str(&toml, Some(dir)).unwrap_or_else(|p| panic!("{p}"));
        let data_dir = config.data_dir.clone();
        let kept = config.clone();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let listeners = pushbox::Listeners {
            https: vec![l],
            ..Default::default()
        };
        let daemon = daemon::InProcess::start(config, listeners, PATIENCE).await;
        Daemon {
            url: format!("https://localhost:{port}"),
            ca: data_dir.join("tls/ca.pem"),
            data_dir,
            daemon,
            config: kept,
        }
    }

    pub fn api(&self) -> Api {
        Api::new(&self.url, &self.ca)
    }

    pub async fn stop(mut self) {
        let _ = self.daemon.stop(PATIENCE).await;
    }

    /// Open the daemon's relay store beside it (for checks the API cannot show).
    pub async fn relay_store(&self) -> Arc<dyn RelayStore> {
        relay_store(&self.config).await
    }
}

/// An HTTPS JSON client of the relay API.
pub struct Api {
    client: HttpsClient,
    base: String,
    pub key: Option<String>,
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Api {
    pub fn new(base: &str, ca: &Path) -> Api {
        Api {
            client: HttpsClient::new(Some(ca)).unwrap(),
            base: base.to_string(),
            key: None,
        }
    }

    pub fn with_key(mut self, key: &str) -> Api {
        self.key = Some(key.to_string());
        self
    }

    /// Send raw bytes with a content type.
    pub async fn raw(&self, method: &str, path: &str, content_type: &str, body: Vec<u8>) -> Answer {
        let mut b = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if !body.is_empty() {
            b = b.header("content-type", content_type);
        }
        if let Some(k) = &self.key {
            b = b.header("authorization", format!("Token {k}"));
        }
        let resp = self
            .client
            .send(b.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .expect("relay API reachable");
        let status = resp.status().as_u16();
        let body = if resp.body().is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(resp.body())
                .unwrap_or_else(|e| panic!("non-JSON answer {status}: {e}: {:?}", resp.body()))
        };
        Answer {
            status,
            body,
            headers: resp.headers().clone(),
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw(method, path, "application/json", bytes).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.call("POST", path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None).await
    }

    /// Create an account and return a client logged in as it.
    pub async fn signup(&self, username: &str) -> Api {
        let a = self
            .post(
                "/api/v1/accounts/",
                json!({ "username": username, "password": "correct horse" }),
            )
            .await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        self.as_key(a.body["token"].as_str().unwrap())
    }

    /// Another client of the same relay using `key`.
    pub fn as_key(&self, key: &str) -> Api {
        Api {
            client: HttpsClient::with_tls(self.client.tls()),
            base: self.base.clone(),
            key: Some(key.to_string()),
        }
    }

    /// Register an APNs device and issue a whitelist token for it.
    pub async fn apns_device_and_token(&self, registration_id: &str) -> (String, String) {
        let d = self
            .post(
                "/api/v1/device/apns/",
                json!({ "registration_id": registration_id, "name": "phone" }),
            )
            .await;
        assert_eq!(d.status, 201, "{:?}", d.body);
        let id = d.body["id"].as_str().unwrap().to_string();
        let t = self
            .post("/api/v1/tokens/", json!({ "apns_device": id, "name": "for a friend" }))
            .await;
        assert_eq!(t.status, 201, "{:?}", t.body);
        (id, t.body["token"].as_str().unwrap().to_string())
    }
}

/// The real `pushbox` binary, started with `serve` on a config file.
pub struct Process {
    pub child: std::process::Child,
    pub url: String,
    pub ca: PathBuf,
    pub data_dir: PathBuf,
}

impl Process {
    pub async fn start(config_path: &Path, port: u16, data_dir: &Path) -> Process {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pushbox"))
            .arg("--config")
            .arg(config_path)
            .arg("serve")
            // Read by the tests, not a setting of the daemon's (`PUSHBOX_*`).
            .env_remove("PUSHBOX_TEST_POSTGRES")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
                panic!("pushbox exited ({status}) before listening:\n{log}");
            }
            assert!(Instant::now() < deadline, "pushbox did not listen in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ready = data_dir.join("tls/cert.pem");
        eventually(|| {
            let ready = ready.clone();
            async move { ready.exists().then_some(()) }
        })
        .await;
        Process {
            child,
            url: format!("https://localhost:{port}"),
            ca: data_dir.join("tls/ca.pem"),
            data_dir: data_dir.into(),
        }
    }

    pub fn api(&self) -> Api {
        Api::new(&self.url, &self.ca)
    }

    /// The end of the daemon's log, for a failing assertion's message.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Wait until the relay's outbox is empty (every accepted push delivered or given up).
pub async fn settled(d: &Daemon) {
    drained(&d.relay_store().await).await;
}

/// Wait until `store`'s outbox is empty.
pub async fn drained(store: &Arc<dyn RelayStore>) {
    eventually(|| async { (store.pending_count().await.unwrap() == 0).then_some(()) }).await;
}

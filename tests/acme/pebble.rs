//! ACME against a real CA: Pebble (with pebble-challtestsrv as its DNS,
//! answering 127.0.0.1 for every name) validates TLS-ALPN-01 and HTTP-01
//! challenges by connecting to pushbox's listeners. Run by `tests/acme/run`,
//! which installs Pebble; without Pebble every test here fails.

#[path = "../common/daemon.rs"]
mod daemon;

use pushbox::config::Config;
use rustls::{pki_types::ServerName, RootCertStore};
use rustls_pki_types::CertificateDer;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const DOMAIN: &str = "a.example";
/// Long enough for Pebble to validate three names on a busy machine.
const WAIT: Duration = Duration::from_secs(120);

use daemon::free_port;

fn require(bin: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{bin} is not installed: run tests/acme/run, which installs Pebble"
    );
}

/// A Pebble CA and its DNS server, killed on drop.
struct Pebble {
    procs: Vec<Child>,
    dir: PathBuf,
    pub directory: String,
    pub management: u16,
    /// The CA that signed Pebble's own HTTPS certificate (for `tls.acme.ca_roots`).
    pub https_ca: PathBuf,
    https_ca_der: CertificateDer<'static>,
    pub tls_port: u16,
    pub http_port: u16,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Pebble {
    /// Start Pebble issuing certificates valid for `validity` seconds.
    async fn start(dir: &Path, validity: u64) -> Pebble {
        require("pebble");
        require("pebble-challtestsrv");
        let dir = dir.join("pebble");
        std::fs::create_dir_all(&dir).unwrap();
        // Pebble's own HTTPS certificate, from a CA made for this test.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "test CA for Pebble's API");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf.subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();

        let (wfe, management, dns, dns_mgmt) = (free_port(), free_port(), free_port(), free_port());
        let (tls_port, http_port) = (free_port(), free_port());
        let cfg = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{wfe}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.join("cert.pem"),
            "privateKey": dir.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity,
        }});
        std::fs::write(dir.join("pebble.json"), cfg.to_string()).unwrap();
        let log = |name: &str| Stdio::from(std::fs::File::create(dir.join(name)).unwrap());
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", "", "-defaultIPv6", ""])
            .args(["-defaultIPv4", "127.0.0.1"])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("start pebble-challtestsrv");
        let ca_proc = Command::new("pebble")
            .args(["-config", dir.join("pebble.json").to_str().unwrap()])
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("start pebble");
        let p = Pebble {
            procs: vec![dns_server, ca_proc],
            dir: dir.clone(),
            directory: format!("https://127.0.0.1:{wfe}/dir"),
            management,
            https_ca: dir.join("ca.pem"),
            https_ca_der: ca_cert.der().clone(),
            tls_port,
            http_port,
        };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", wfe)).await.is_err()
            || TcpStream::connect(("127.0.0.1", management)).await.is_err()
        {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "Pebble did not start:\n{}",
                p.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    fn logs(&self) -> String {
        ["pebble.log", "pebble.err", "challtestsrv.err"]
            .iter()
            .map(|f| {
                format!(
                    "--- {f}\n{}",
                    std::fs::read_to_string(self.dir.join(f)).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Pebble's issuing root (it changes on every start).
    async fn root(&self) -> CertificateDer<'static> {
        let mut roots = RootCertStore::empty();
        roots.add(self.https_ca_der.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(("127.0.0.1", self.management)).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        tls.write_all(b"GET /roots/0 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut body = vec![];
        let _ = tls.read_to_end(&mut body).await;
        let text = String::from_utf8_lossy(&body);
        let pem = &text[text.find("-----BEGIN").expect("a PEM root")..];
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }
}

/// pushbox, in-process, with a fixed data directory (so a restart sees the cache).
struct Daemon {
    daemon: daemon::InProcess,
    c2s: SocketAddr,
    c2s_tls: SocketAddr,
    config: Config,
}

impl Daemon {
    async fn start(dir: &Path, toml: &str) -> Daemon {
        let config = Config::from_toml_str(toml, Some(dir)).unwrap_or_else(|e| panic!("{e}"));
        let listeners = pushbox::Listeners::bind(&config).await.unwrap();
        let c2s = listeners.c2s[0].local_addr().unwrap();
        let c2s_tls = listeners.c2s_direct_tls[0].local_addr().unwrap();
        let daemon = daemon::InProcess::start(config.clone(), listeners, WAIT).await;
        Daemon {
            c2s,
            c2s_tls,
            config,
            daemon,
        }
    }

    async fn stop(mut self) {
        self.daemon.stop(WAIT).await.expect("daemon stops").unwrap();
    }

    fn status(&self) -> pushbox::certs::acme::Status {
        pushbox::certs::acme::Status::load(&self.config).expect("status.json written")
    }

    /// Wait until `pred` holds for the ACME status.
    async fn wait_status(&self, what: &str, pebble: &Pebble, pred: impl Fn(&pushbox::certs::acme::Status) -> bool) {
        let t = Instant::now();
        loop {
            if let Some(s) = pushbox::certs::acme::Status::load(&self.config) {
                if pred(&s) {
                    return;
                }
                assert!(
                    t.elapsed() < WAIT,
                    "{what}: timed out; status {s:#?}\n{}",
                    pebble.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn acme_toml(pebble: &Pebble, challenge: &str, https: &str, http: &str) -> String {
    format!(
        "domain = \"{DOMAIN}\"\n\
         [listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = [\"127.0.0.1:0\"]\nhttps = [{https}]\nhttp = [{http}]\n\
         [tls]\nmode = \"acme\"\n\
         [tls.acme]\ncontact = \"mailto:admin@{DOMAIN}\"\ndirectory = \"{}\"\nca_roots = \"{}\"\nchallenge = \"{challenge}\"\n",
        pebble.directory,
        pebble.https_ca.display()
    )
}

/// The TLS configuration of a client trusting only Pebble's root.
fn client(root: &CertificateDer<'static>, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// Handshake with SNI `name` over `tcp`; the chain must verify to `root`. Returns the leaf.
async fn handshake(tcp: TcpStream, root: &CertificateDer<'static>, name: &str, alpn: &[&str]) -> Vec<u8> {
    let tls = tokio_rustls::TlsConnector::from(client(root, alpn))
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS with SNI {name} verifying to Pebble's root: {e}"));
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn direct_tls(addr: SocketAddr, root: &CertificateDer<'static>, name: &str) -> Vec<u8> {
    handshake(TcpStream::connect(addr).await.unwrap(), root, name, &["xmpp-client"]).await
}

/// Read until `needle` appears.
async fn read_until(tcp: &mut TcpStream, needle: &str) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("server answers")
            .unwrap();
        assert!(n > 0, "closed before {needle}: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

async fn starttls(addr: SocketAddr, root: &CertificateDer<'static>) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!(
            "<?xml version='1.0'?><stream:stream to='{DOMAIN}' version='1.0' xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams'>"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    read_until(&mut tcp, "</stream:features>").await;
    tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await
        .unwrap();
    read_until(&mut tcp, "<proceed").await;
    handshake(tcp, root, DOMAIN, &[]).await
}

fn serial(der: &[u8]) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    c.raw_serial_as_string()
}

#[cfg(unix)]
fn assert_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    let mut files = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
        files += 1;
    }
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("account-")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("cert-")), "{names:?}");
    assert!(files >= 3, "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_certificate_on_every_listener_then_reused_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(tmp.path(), 3600 * 24 * 90).await;
    let toml = acme_toml(
        &pebble,
        "tls-alpn-01",
        &format!("\"127.0.0.1:{}\"", pebble.tls_port),
        "",
    );
    let started = Instant::now();
    let d = Daemon::start(tmp.path(), &toml).await;
    d.wait_status("first certificate", &pebble, |s| s.state == "valid")
        .await;
    println!(
        "TLS-ALPN-01: first certificate after {:.2} s (worker: {:.2} s)",
        started.elapsed().as_secs_f64(),
        d.status().first_certificate_secs.unwrap()
    );
    let st = d.status();
    assert_eq!(st.certificate_from.as_deref(), Some("ca"));
    assert_eq!(st.certificates_obtained, 1);
    let root = pebble.root().await;

    let tls_leaf = direct_tls(d.c2s_tls, &root, DOMAIN).await;
    assert_eq!(
        starttls(d.c2s, &root).await,
        tls_leaf,
        "STARTTLS serves the same certificate"
    );
    for sub in ["push.a.example", "upload.a.example"] {
        assert_eq!(direct_tls(d.c2s_tls, &root, sub).await, tls_leaf, "{sub}");
    }
    let https: SocketAddr = format!("127.0.0.1:{}", pebble.tls_port).parse().unwrap();
    let tcp = TcpStream::connect(https).await.unwrap();
    assert_eq!(handshake(tcp, &root, DOMAIN, &["http/1.1"]).await, tls_leaf, "HTTPS");
    #[cfg(unix)]
    assert_private(&tmp.path().join("data/acme"));

    // `pushbox check certs` reads the cache.
    let cfg_path = tmp.path().join("pushbox.toml");
    std::fs::write(&cfg_path, &toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pushbox"))
        .args(["--config", cfg_path.to_str().unwrap(), "check", "certs", "--json"])
        .env_remove("PUSHBOX_CONFIG")
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chain = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["subject"] == "chain")
        .unwrap();
    // Pebble's issuing root is not its API's CA (ca_roots): with a private CA, `check` only warns.
    assert_eq!(chain["level"], "warning", "{report:#}");
    let names = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["subject"] == "names")
        .unwrap();
    assert_eq!(names["level"], "ok", "{report:#}");

    // Restart: the cached certificate is served, no new order.
    let cache = tmp.path().join("data/acme");
    let cert_file = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("cert-"))
        .unwrap();
    let before = std::fs::read(&cert_file).unwrap();
    d.stop().await;
    let d = Daemon::start(tmp.path(), &toml).await;
    d.wait_status("cached certificate", &pebble, |s| s.state == "valid")
        .await;
    assert_eq!(direct_tls(d.c2s_tls, &root, DOMAIN).await, tls_leaf);
    let st = d.status();
    assert_eq!(st.certificate_from.as_deref(), Some("cache"), "{st:#?}");
    assert_eq!(st.certificates_obtained, 0, "{st:#?}");
    assert_eq!(
        std::fs::read(&cert_file).unwrap(),
        before,
        "the cache was not rewritten"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_certificate_and_redirects() {
    let tmp = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(tmp.path(), 3600 * 24 * 90).await;
    let toml = acme_toml(&pebble, "http-01", "", &format!("\"127.0.0.1:{}\"", pebble.http_port));
    let started = Instant::now();
    let d = Daemon::start(tmp.path(), &toml).await;
    d.wait_status("first certificate", &pebble, |s| s.state == "valid")
        .await;
    println!(
        "HTTP-01: first certificate after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let root = pebble.root().await;
    let leaf = direct_tls(d.c2s_tls, &root, DOMAIN).await;
    assert_eq!(starttls(d.c2s, &root).await, leaf);
    #[cfg(unix)]
    assert_private(&tmp.path().join("data/acme"));

    // Outside challenges, plain HTTP redirects to HTTPS; unknown tokens are 404.
    let mut tcp = TcpStream::connect(("127.0.0.1", pebble.http_port)).await.unwrap();
    tcp.write_all(b"GET /invite/x HTTP/1.1\r\nHost: push.a.example\r\n\r\n")
        .await
        .unwrap();
    let mut resp = vec![];
    let _ = tcp.read_to_end(&mut resp).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 301"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("location: https://push.a.example/invite/x"),
        "{resp}"
    );
    let mut tcp = TcpStream::connect(("127.0.0.1", pebble.http_port)).await.unwrap();
    tcp.write_all(b"GET /.well-known/acme-challenge/nope HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    let mut resp = vec![];
    let _ = tcp.read_to_end(&mut resp).await;
    assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 404"));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificate_is_renewed_and_served_without_restart() {
    let tmp = tempfile::tempdir().unwrap();
    // Certificates valid 30 s: renewal is due when a third of that is left.
    let pebble = Pebble::start(tmp.path(), 30).await;
    let toml = acme_toml(
        &pebble,
        "tls-alpn-01",
        &format!("\"127.0.0.1:{}\"", pebble.tls_port),
        "",
    );
    let d = Daemon::start(tmp.path(), &toml).await;
    d.wait_status("first certificate", &pebble, |s| s.state == "valid")
        .await;
    let root = pebble.root().await;
    let first = direct_tls(d.c2s_tls, &root, DOMAIN).await;
    d.wait_status("renewal", &pebble, |s| s.certificates_obtained >= 2)
        .await;
    let second = direct_tls(d.c2s_tls, &root, DOMAIN).await;
    assert_ne!(serial(&first), serial(&second), "a new certificate is served");
    assert_eq!(starttls(d.c2s, &root).await, second, "on every listener");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_directory_keeps_the_daemon_up_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(tmp.path(), 3600).await;
    // A directory URL where nothing listens.
    let dead = format!("https://127.0.0.1:{}/dir", free_port());
    let toml = acme_toml(
        &pebble,
        "tls-alpn-01",
        &format!("\"127.0.0.1:{}\"", pebble.tls_port),
        "",
    )
    .replace(&pebble.directory, &dead);
    let d = Daemon::start(tmp.path(), &toml).await;
    d.wait_status("failure recorded", &pebble, |s| s.failures >= 2).await;
    let st = d.status();
    assert_eq!(st.state, "failing");
    assert!(
        st.advice
            .as_deref()
            .unwrap()
            .contains("cannot talk to the ACME directory"),
        "{st:#?}"
    );
    assert!(st.next_attempt_at.is_some());

    // The daemon is up; TLS handshakes are refused until a certificate arrives.
    let mut tcp = TcpStream::connect(d.c2s_tls).await.unwrap();
    let root = pebble.root().await;
    let r = tokio_rustls::TlsConnector::from(client(&root, &["xmpp-client"]))
        .connect(
            ServerName::try_from(DOMAIN).unwrap(),
            TcpStream::connect(d.c2s_tls).await.unwrap(),
        )
        .await;
    assert!(r.is_err(), "no certificate, no handshake");
    let _ = tcp.shutdown().await;

    // `pushbox check certs` reports the failure and what to do; exit status 1.
    let cfg_path = tmp.path().join("pushbox.toml");
    std::fs::write(&cfg_path, &toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pushbox"))
        .args(["--config", cfg_path.to_str().unwrap(), "check", "certs"])
        .env_remove("PUSHBOX_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("ERROR") && text.contains("acme") && text.contains("fix:"),
        "{text}"
    );
    assert!(text.contains("no certificate yet"), "{text}");
    d.stop().await;
}

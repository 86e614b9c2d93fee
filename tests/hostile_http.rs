//! Hostile input on the HTTPS listener (relay API, upload, invitation
//! pages), sent as raw bytes over TLS so that nothing in a client library
//! tidies it up. Each case names the answer it expects. After every case a
//! normal API request on a new connection is answered and an XMPP session
//! opened before the table still answers a ping.

mod common;
use common::*;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn tls_config() -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(test_ca().join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// Send `req` over a new TLS connection and read until the server closes
/// (or goes quiet for two seconds); returns what came back.
async fn exchange(addr: SocketAddr, req: &[u8]) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(tls_config())
        .connect(name, tcp)
        .await
        .unwrap();
    // The server may answer and close before reading everything: ignore write errors.
    let _ = tls.write_all(req).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
        assert!(out.len() < 1 << 20, "answer too long");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Status codes of every response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").into_bytes()
}

fn post(path: &str, ctype: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Expected: the statuses of the responses (in order), and text the answer must not contain.
struct Case {
    name: &'static str,
    req: Vec<u8>,
    want: &'static [u16],
    must_contain: &'static str,
}

fn cases() -> Vec<Case> {
    let big_header = format!(
        "GET /api/v1/tokens/ HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let mut many_headers = String::from("GET /api/v1/tokens/ HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..200 {
        many_headers.push_str(&format!("X-H{i}: v\r\n"));
    }
    many_headers.push_str("Connection: close\r\n\r\n");
    let c = |name, req: Vec<u8>, want, must_contain| Case {
        name,
        req,
        want,
        must_contain,
    };
    vec![
        // Bodies.
        c(
            "truncated JSON",
            post("/api/v1/accounts/", "application/json", b"{\"username\": \"al"),
            &[400],
            "JSON parse error",
        ),
        c(
            "JSON array instead of an object",
            post("/api/v1/accounts/", "application/json", b"[\"username\", \"al\"]"),
            &[400],
            "Expected a dictionary",
        ),
        c(
            "JSON nested 10,000 deep",
            post("/api/v1/accounts/", "application/json", &[b'['; 10_000]),
            &[400],
            "JSON parse error",
        ),
        c(
            "invalid UTF-8 in JSON",
            post("/api/v1/accounts/", "application/json", b"{\"username\": \"\xff\xfe\"}"),
            &[400],
            "JSON parse error",
        ),
        c(
            "XML sent as application/xml",
            post("/api/v1/accounts/", "application/xml", b"<account><username>al</username></account>"),
            &[400],
            "JSON parse error",
        ),
        c(
            "form body with broken percent-escapes",
            post("/api/v1/accounts/", "application/x-www-form-urlencoded", b"username=%zz%&password"),
            &[400],
            "username",
        ),
        c(
            "declared body of 100 MB",
            b"POST /api/v1/accounts/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 100000000\r\nConnection: close\r\n\r\n{"
                .to_vec(),
            &[413],
            "too large",
        ),
        c(
            "chunked body beyond the limit",
            {
                let mut r = b"POST /api/v1/accounts/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                    .to_vec();
                for _ in 0..20 {
                    r.extend_from_slice(format!("{:x}\r\n{}\r\n", 8192, " ".repeat(8192)).as_bytes());
                }
                r.extend_from_slice(b"0\r\n\r\n");
                r
            },
            &[413],
            "too large",
        ),
        // Headers and framing.
        c("a 1 MB header", big_header.into_bytes(), &[431], ""),
        c("200 headers", many_headers.into_bytes(), &[431], ""),
        c("request line of garbage", b"\x00\x01GARBAGE\r\n\r\n".to_vec(), &[400], ""),
        c(
            "header without a colon",
            b"GET /api/v1/tokens/ HTTP/1.1\r\nHost: localhost\r\nNoColonHere\r\n\r\n".to_vec(),
            &[400],
            "",
        ),
        c(
            "two different Content-Length headers",
            b"POST /api/v1/accounts/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}"
                .to_vec(),
            &[400],
            "",
        ),
        c(
            // Smuggling: Content-Length and Transfer-Encoding together. The
            // chunked framing must not let `GET /smuggled` through as a second request.
            "Content-Length with Transfer-Encoding: chunked (CL.TE)",
            b"POST /api/v1/accounts/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"
                .to_vec(),
            &[400],
            "",
        ),
        c(
            "Transfer-Encoding: chunked then Content-Length (TE.CL)",
            b"POST /api/v1/accounts/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n2c\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n\r\n0\r\n\r\n"
                .to_vec(),
            &[400],
            "",
        ),
        c(
            "obfuscated Transfer-Encoding (xchunked)",
            b"POST /api/v1/accounts/ HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n".to_vec(),
            &[400],
            "",
        ),
        c(
            "invalid chunk size",
            b"POST /api/v1/accounts/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
                .to_vec(),
            &[400],
            "",
        ),
        // Paths.
        c("upload: ../../etc/passwd", get("/upload/../../etc/passwd"), &[404], ""),
        c("upload: percent-encoded ../", get("/upload/%2e%2e/%2e%2e/etc/passwd"), &[404], ""),
        c("upload: encoded slashes", get("/upload/..%2f..%2fpushbox.sqlite3"), &[404], ""),
        c("upload: double-encoded", get("/upload/%252e%252e/%252e%252e/etc/passwd"), &[404], ""),
        c("upload: backslashes", get("/upload/..\\..\\pushbox.sqlite3"), &[404], ""),
        c("upload: NUL in the path", get("/upload/x%00/y"), &[404], ""),
        c("invite: ../../etc/passwd", get("/invite/../../etc/passwd"), &[404], ""),
        c("invite: percent-encoded ../", get("/invite/%2e%2e%2f%2e%2e%2fetc%2fpasswd"), &[404], ""),
        c("invite: overlong token", get(&format!("/invite/{}", "a".repeat(4000))), &[404], ""),
        c("absolute-form URI for another host", get("https://evil.example/api/v1/tokens/"), &[401], ""),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_input_gets_the_named_answers() {
    let s = TestServer::start_with_https("[registration]\nmode = \"invite\"\n[upload]\nmax_file_size = 1000\n").await;
    s.add_user("sentinel", "pw");
    let https = s.https.unwrap();
    let mut sentinel = RawClient::login(s.c2s, "sentinel", "pw").await;
    let mut failures = Vec::new();
    let all = cases();
    let n = all.len();
    for (i, case) in all.into_iter().enumerate() {
        let answer = exchange(https, &case.req).await;
        let got = statuses(&answer);
        let head = answer.lines().next().unwrap_or("").to_string();
        if got != case.want {
            failures.push(format!("{}: want {:?}, got {got:?} ({head})", case.name, case.want));
        } else if !answer.contains(case.must_contain) {
            failures.push(format!(
                "{}: answer lacks {:?}: {answer:.300}",
                case.name, case.must_contain
            ));
        }
        if answer.contains("root:") || answer.contains("SQLite format") {
            failures.push(format!("{}: a file leaked: {answer:.300}", case.name));
        }
        // Still serving: a normal request on a new connection, and the XMPP session.
        let normal = exchange(https, &get("/api/v1/tokens/")).await;
        assert_eq!(statuses(&normal), vec![401], "after {}: {normal}", case.name);
        sentinel
            .send(&format!(
                "<iq type='get' id='alive{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
            ))
            .await;
        sentinel.read_until(&format!("id='alive{i}'")).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{n} hostile HTTP cases, all answered as expected; the daemon kept serving");
    s.stop().await;
}

/// Slowloris on HTTPS: a request head trickled one byte every 200 ms is cut
/// off once `limits.auth_timeout` (2 s here) has passed, with a 408 or a
/// plain close; a normal request is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_head_is_cut_off() {
    let s = TestServer::start_with_https(
        "[limits]\nauth_timeout = \"2s\"\nconnections_per_ip_per_minute = 10000\nmax_auth_failures_per_ip = 1000\n",
    )
    .await;
    let https = s.https.unwrap();
    let tcp = TcpStream::connect(https).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(tls_config())
        .connect(name, tcp)
        .await
        .unwrap();
    let head = b"GET /api/v1/tokens/ HTTP/1.1\r\nHost: localhost\r\n"
        .iter()
        .chain(b"X-Slow: ".iter().cycle());
    let mut closed = false;
    // Up to 30 s of trickling (five times the timeout) before giving up.
    for b in head.take(150) {
        if tls.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(200), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                let got = String::from_utf8_lossy(&buf[..n]);
                assert!(got.starts_with("HTTP/1.1 408"), "{got}");
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(closed, "a trickled request head held the connection open");
    let normal = exchange(https, &get("/api/v1/tokens/")).await;
    assert_eq!(statuses(&normal), vec![401], "{normal}");
    s.stop().await;
}

/// The HTTPS listener applies the same per-IP limits as the XMPP ones:
/// beyond `max_connections_per_ip` open connections, and beyond
/// `connections_per_ip_per_minute` new ones, a connection from that address
/// is closed before the TLS handshake; another address is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_applies_the_per_ip_connection_limits() {
    let s = TestServer::start_with_https(
        "[limits]\nmax_connections_per_ip = 3\nconnections_per_ip_per_minute = 5\nmax_auth_failures_per_ip = 1000\n",
    )
    .await;
    let https = s.https.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls_config());
    let from = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        async move {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(std::net::SocketAddr::new(ip, 0)).unwrap();
            sock.connect(https).await.unwrap()
        }
    };
    // Three open connections from one address complete their handshakes.
    let mut open = vec![];
    for _ in 0..3 {
        let tcp = from("127.0.0.3").await;
        open.push(connector.connect(name.clone(), tcp).await.expect("within the limit"));
    }
    // The fourth is one too many open at once: closed before TLS.
    let tcp = from("127.0.0.3").await;
    assert!(
        connector.connect(name.clone(), tcp).await.is_err(),
        "a fourth open connection from one address was served"
    );
    // Closing one frees a slot (the refused one did not count against the
    // minute). The daemon sees the close in its own time: try until it has;
    // a connection refused for too many open ones does not count either.
    let until_served = |what: &'static str| {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            let deadline = tokio::time::Instant::now() + common::WAIT;
            loop {
                let tcp = from("127.0.0.3").await;
                match connector.connect(name.clone(), tcp).await {
                    Ok(tls) => return tls,
                    Err(e) if tokio::time::Instant::now() > deadline => panic!("{what}: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    };
    drop(open.pop());
    open.push(until_served("a freed slot").await);
    // Now the rate: with every slot free, the fifth connection of the minute
    // is served and a sixth is refused.
    open.clear();
    open.push(until_served("the fifth in the minute").await);
    let tcp = from("127.0.0.3").await;
    assert!(
        connector.connect(name.clone(), tcp).await.is_err(),
        "a sixth connection in one minute from one address was served"
    );
    // Another address is unaffected and gets real answers.
    let tcp = from("127.0.0.4").await;
    let mut tls = connector.connect(name.clone(), tcp).await.expect("another address");
    tls.write_all(b"GET /api/v1/tokens/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    s.stop().await;
}

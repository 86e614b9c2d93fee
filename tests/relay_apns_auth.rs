//! APNs certificate authentication over mutual TLS, and `Retry-After` sent
//! as an HTTP-date, against the APNs stand-in (which asks every connection
//! for an optional client certificate, as APNs does).

mod support;

use bytes::Bytes;
use http_body_util::Full;
use pushbox::push::client::{tls_config_with_client_cert, HttpsClient};
use serde_json::json;
use std::time::Duration;
use support::*;

/// account → device → token → message → exactly one request at APNs,
/// authenticated by the client certificate alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_auth_push_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let apns = ApnsStandIn::start(&ca, dir.path()).await;
    let daemon = Daemon::start(dir.path(), &apns.cert_config(&ca, dir.path(), APNS_TOPIC)).await;
    let api = daemon.api();
    let u = api.signup("alice").await;
    let reg = apns_token();
    let (dev, token) = u.apns_device_and_token(&reg).await;
    let m = api
        .post(
            "/api/v1/messages/",
            json!({ "token": token, "data": { "from": "bob@example.org" } }),
        )
        .await;
    assert_eq!(m.status, 202, "{:?}", m.body);
    let s = apns.log.wait_for(1, |_| true).await.remove(0);
    settled(&daemon).await;
    assert_eq!(apns.log.seen().len(), 1, "exactly one provider request");
    assert_eq!(s.version, hyper::Version::HTTP_2);
    assert_eq!(s.path, format!("/3/device/{reg}"));
    assert_eq!(
        s.client_cert.as_deref(),
        Some(format!("{APNS_CERT_CN_PREFIX}{APNS_TOPIC}").as_str()),
        "the connection presented the app's certificate"
    );
    assert!(
        s.headers.get("authorization").is_none(),
        "no provider token with certificate authentication"
    );
    assert_eq!(s.headers["apns-topic"], APNS_TOPIC);
    assert_eq!(s.headers["apns-push-type"], "alert");
    assert_eq!(s.headers["apns-priority"], "10");
    assert_eq!(s.body["message"]["token"], token.as_str());
    assert_eq!(s.body["message"]["data"], json!({ "from": "bob@example.org" }));
    assert!(apns.log.violations().is_empty(), "{:?}", apns.log.violations());
    let d = u.get(&format!("/api/v1/device/apns/{dev}/")).await;
    assert_eq!(d.body["active"], true);
    daemon.stop().await;
}

/// A certificate for another app: APNs answers 400 TopicDisallowed, which
/// retrying cannot fix: the push is dropped once and the device stays active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_for_another_topic_is_refused_once() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let apns = ApnsStandIn::start(&ca, dir.path()).await;
    let daemon = Daemon::start(dir.path(), &apns.cert_config(&ca, dir.path(), "org.example.other")).await;
    let api = daemon.api();
    let u = api.signup("bob").await;
    let (dev, token) = u.apns_device_and_token(&apns_token()).await;
    assert_eq!(
        api.post("/api/v1/messages/", json!({ "token": token })).await.status,
        202
    );
    apns.log.wait_for(1, |_| true).await;
    settled(&daemon).await;
    assert_eq!(apns.log.seen().len(), 1, "not retried");
    let d = u.get(&format!("/api/v1/device/apns/{dev}/")).await;
    assert_eq!(d.body["active"], true, "the device is not to blame");
    daemon.stop().await;
}

/// The stand-in as APNs: no certificate and no provider token → 403
/// MissingProviderToken; a certificate from a CA it does not trust fails
/// the TLS handshake; a trusted certificate for the topic is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stand_in_refuses_unauthenticated_and_foreign_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let apns = ApnsStandIn::start(&ca, dir.path()).await;
    let reg = apns_token();
    let request = || {
        hyper::Request::post(format!("{}/3/device/{reg}", apns.url))
            .header("apns-topic", APNS_TOPIC)
            .header("apns-push-type", "background")
            .header("apns-priority", "5")
            .body(Full::new(Bytes::from(r#"{"aps":{"content-available":1}}"#)))
            .unwrap()
    };

    let bare = HttpsClient::new(Some(&ca.ca_pem)).unwrap();
    let r = bare.send(request()).await.unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(body["reason"], "MissingProviderToken");

    let other = TestCa::named(dir.path(), "some other CA", "other-ca.pem");
    let (c, k) = other.client_cert(dir.path(), "Apple Push Services: org.example.chat (foreign)");
    let foreign = HttpsClient::with_tls(tls_config_with_client_cert(Some(&ca.ca_pem), &c, &k).unwrap());
    assert!(foreign.send(request()).await.is_err(), "handshake refused");

    let (c, k) = ca.client_cert(dir.path(), &format!("{APNS_CERT_CN_PREFIX}{APNS_TOPIC}"));
    let good = HttpsClient::with_tls(tls_config_with_client_cert(Some(&ca.ca_pem), &c, &k).unwrap());
    let r = good.send(request()).await.unwrap();
    assert_eq!(r.status(), 200);
}

/// A certificate and a key that do not belong together are refused when
/// the credential is loaded, naming both files.
#[test]
fn mismatched_certificate_and_key_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (cert, _) = ca.client_cert(dir.path(), "Apple Push Services: a");
    let (_, key) = ca.client_cert(dir.path(), "Apple Push Services: b");
    let e = tls_config_with_client_cert(None, &cert, &key).unwrap_err().to_string();
    assert!(
        e.contains(&cert.display().to_string()) && e.contains(&key.display().to_string()),
        "{e}"
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = tls_config_with_client_cert(None, &cert, &empty)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no PEM private key") && e.contains("empty.pem"), "{e}");
    let e = tls_config_with_client_cert(None, &empty, &key).unwrap_err().to_string();
    assert!(e.contains("no PEM certificate") && e.contains("empty.pem"), "{e}");
}

/// APNs answers 429 with `Retry-After` as an HTTP-date three seconds ahead:
/// the retry waits for that date (the normal first backoff is at most 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_as_an_http_date_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let apns = ApnsStandIn::start(&ca, dir.path()).await;
    let daemon = Daemon::start(dir.path(), &apns.config(&ca)).await;
    let api = daemon.api();
    let u = api.signup("grace").await;
    let reg = apns_token();
    apns.state
        .retry_after_as_date
        .store(true, std::sync::atomic::Ordering::Relaxed);
    apns.state.throttle.lock().unwrap().insert(reg.clone(), (1, 3));
    let (_, token) = u.apns_device_and_token(&reg).await;
    assert_eq!(
        api.post("/api/v1/messages/", json!({ "token": token })).await.status,
        202
    );
    let seen = apns.log.wait_for(2, |_| true).await;
    settled(&daemon).await;
    assert_eq!(apns.log.seen().len(), 2, "one 429, then one delivery");
    // The date has a resolution of one second: "now + 3 s" is at least 2 s ahead.
    let gap = seen[1].at.duration_since(seen[0].at);
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}, before the date");
    assert_eq!(seen[0].body, seen[1].body);
    daemon.stop().await;
}

/// `pushbox serve` with both and with neither APNs authentication exits 2,
/// naming the configuration file, the key and the files.
#[test]
fn serve_refuses_both_or_neither_apns_authentication() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["AuthKey.p8", "apns.pem"] {
        std::fs::write(dir.path().join(f), "placeholder").unwrap();
    }
    let run = |apns: &str| {
        let cfg = dir.path().join("pushbox.toml");
        std::fs::write(&cfg, format!("[relay.apns]\ntopic = \"org.example.chat\"\n{apns}")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pushbox"))
            .env_remove("PUSHBOX_CONFIG")
            .env_remove("PUSHBOX_TEST_POSTGRES")
            .arg("--config")
            .arg(&cfg)
            .arg("serve")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "refused as a configuration error");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(err.contains(&cfg.display().to_string()), "names the file: {err}");
        err
    };
    let both = run("key = \"AuthKey.p8\"\nkey_id = \"K\"\nteam_id = \"T\"\ncertificate = \"apns.pem\"\n");
    assert!(both.contains("`relay.apns`") && both.contains("not both"), "{both}");
    let neither = run("");
    assert!(
        neither.contains("`relay.apns`") && neither.contains("no credential"),
        "{neither}"
    );
    let missing = run("certificate = \"apns.pem\"\ncertificate_key = \"nope.pem\"\n");
    assert!(
        missing.contains("`relay.apns.certificate_key`") && missing.contains("nope.pem"),
        "{missing}"
    );
    assert!(!dir.path().join("data").exists(), "nothing was started or created");
}

/// The one-file form `openssl pkcs12 -nodes` writes (text attributes, the
/// certificate, then the key) loads with `certificate` alone: the key is
/// read from the same file.
#[test]
fn one_pem_file_with_certificate_and_key_loads() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (c, k) = ca.client_cert(dir.path(), "Apple Push Services: org.example.chat");
    let both = dir.path().join("apns.pem");
    std::fs::write(
        &both,
        format!(
            "Bag Attributes\n    localKeyID: 01 02 03\nsubject=CN = Apple Push Services: org.example.chat\n{}\
             Bag Attributes\n    localKeyID: 01 02 03\nKey Attributes: <No Attributes>\n{}",
            std::fs::read_to_string(&c).unwrap(),
            std::fs::read_to_string(&k).unwrap()
        ),
    )
    .unwrap();
    let cfg = pushbox::config::Config::from_toml_str(
        &format!(
            "[relay.apns]\ntopic = \"org.example.chat\"\ncertificate = {:?}\n",
            both.display().to_string()
        ),
        None,
    )
    .unwrap();
    let apns = cfg.relay.apns.as_ref().unwrap();
    let Ok(pushbox::config::relay::ApnsAuth::Certificate { certificate, key }) = apns.auth() else {
        panic!("certificate authentication expected");
    };
    assert_eq!((certificate, key), (both.as_path(), both.as_path()));
    tls_config_with_client_cert(None, certificate, key).expect("certificate and key from one file");
    let store = pushbox::store::Store::open_in(&dir.path().join("data")).unwrap();
    let store = std::sync::Arc::new(pushbox::push::backend::sqlite::Sqlite::new(store));
    pushbox::push::providers::apns::Apns::new(apns, store, 4).expect("the APNs provider loads it");
}

//! The push relay end to end: the daemon on loopback, its HTTPS API, and
//! stand-ins for APNs, FCM and a Web Push service that check every request.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;

struct World {
    _dir: tempfile::TempDir,
    ca: TestCa,
    apns: ApnsStandIn,
    daemon: Daemon,
    api: Api,
}

async fn world(extra: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let apns = ApnsStandIn::start(&ca, dir.path()).await;
    let cfg = format!("{extra}\n{}", apns.config(&ca));
    let daemon = Daemon::start(dir.path(), &cfg).await;
    let api = daemon.api();
    World {
        _dir: dir,
        ca,
        apns,
        daemon,
        api,
    }
}

fn is_hex40(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `2016-05-03T18:24:41.000000Z`, as Django REST framework renders dates.
fn is_drf_date(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    s.len() == 27 && s.ends_with('Z') && &s[10..11] == "T" && &s[19..20] == "."
}

/// The request shapes a ChatSecure client sends, with the answers checked field by field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatsecure_client_session_field_by_field() {
    let w = world("").await;
    // Account creation, as JSON.
    let a = w
        .api
        .post(
            "/api/v1/accounts/",
            json!({ "username": "alice", "password": "s3cret!", "email": "alice@example.org" }),
        )
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.body["username"], "alice");
    assert_eq!(a.body["email"], "alice@example.org");
    assert!(a.body["id"].is_i64());
    assert!(is_hex40(&a.body["token"]), "{:?}", a.body);
    assert_eq!(a.body.as_object().unwrap().len(), 4);
    // Logging in again with the same request gives a (new) key; a wrong password is 401.
    let again = w
        .api
        .post(
            "/api/v1/accounts/",
            json!({ "username": "alice", "password": "s3cret!" }),
        )
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["id"], a.body["id"]);
    assert!(is_hex40(&again.body["token"]));
    let wrong = w
        .api
        .post("/api/v1/accounts/", json!({ "username": "alice", "password": "nope" }))
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body["detail"].is_string());
    // The same email for another username: 400 naming the field.
    let dup = w
        .api
        .post(
            "/api/v1/accounts/",
            json!({ "username": "mallory", "password": "x", "email": "alice@example.org" }),
        )
        .await;
    assert_eq!(dup.status, 400);
    assert!(dup.body["email"][0].is_string(), "{:?}", dup.body);
    // Form-encoded works too (Django REST framework accepted both).
    let form = w
        .api
        .raw(
            "POST",
            "/api/v1/accounts/",
            "application/x-www-form-urlencoded",
            b"username=bob&password=p%40ss".to_vec(),
        )
        .await;
    assert_eq!(form.status, 201, "{:?}", form.body);
    assert_eq!(form.body["email"], "");

    let alice = w.api.as_key(a.body["token"].as_str().unwrap());
    let me = alice.get("/api/v1/accounts/alice/").await;
    assert_eq!((me.status, &me.body["username"]), (200, &json!("alice")));
    assert_eq!(alice.get("/api/v1/accounts/bob/").await.status, 403);

    // Device registration.
    let reg = apns_token();
    let d = alice
        .post(
            "/api/v1/device/apns/",
            json!({ "name": "iPhone", "registration_id": reg, "device_id": "dev-1" }),
        )
        .await;
    assert_eq!(d.status, 201, "{:?}", d.body);
    assert_eq!(d.body["name"], "iPhone");
    assert_eq!(d.body["registration_id"], reg.as_str());
    assert_eq!(d.body["device_id"], "dev-1");
    assert_eq!(d.body["active"], true);
    assert!(uuid::Uuid::parse_str(d.body["id"].as_str().unwrap()).is_ok());
    assert!(is_drf_date(&d.body["date_created"]), "{:?}", d.body);
    let dev_id = d.body["id"].as_str().unwrap().to_string();
    let list = alice.get("/api/v1/device/apns/").await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    assert_eq!(list.body[0]["id"], dev_id.as_str());
    let one = alice.get(&format!("/api/v1/device/apns/{dev_id}/")).await;
    assert_eq!(one.body, d.body);
    let renamed = alice
        .call(
            "PATCH",
            &format!("/api/v1/device/apns/{dev_id}/"),
            Some(json!({ "name": "work"})),
        )
        .await;
    assert_eq!((renamed.status, &renamed.body["name"]), (200, &json!("work")));
    assert_eq!(renamed.body["registration_id"], reg.as_str());
    // Another account cannot see it.
    let bob = w.api.as_key(form.body["token"].as_str().unwrap());
    assert_eq!(bob.get(&format!("/api/v1/device/apns/{dev_id}/")).await.status, 404);
    assert_eq!(bob.get("/api/v1/device/apns/").await.body, json!([]));

    // Whitelist token.
    let t = alice
        .post("/api/v1/tokens/", json!({ "name": "for bob", "apns_device": dev_id }))
        .await;
    assert_eq!(t.status, 201, "{:?}", t.body);
    assert!(is_hex40(&t.body["token"]));
    assert_eq!(t.body["name"], "for bob");
    assert_eq!(t.body["apns_device"], dev_id.as_str());
    assert_eq!(t.body["gcm_device"], Value::Null);
    assert!(is_drf_date(&t.body["date_expires"]));
    let token = t.body["token"].as_str().unwrap().to_string();
    let shown = alice.get(&format!("/api/v1/tokens/{token}/")).await;
    assert_eq!((shown.status, &shown.body["token"]), (200, &json!(token)));
    // Listings never show the secret again.
    let tl = alice.get("/api/v1/tokens/").await;
    assert_eq!(tl.body.as_array().unwrap().len(), 1);
    assert_ne!(tl.body[0]["token"], token.as_str());
    assert!(tl.body[0]["token"].as_str().unwrap().starts_with(&token[..8]));

    // The push, without authentication, as a contact's client sends it.
    let data = json!({ "from": "bob", "kind": "message" });
    let m = w
        .api
        .post("/api/v1/messages/", json!({ "token": token, "data": data }))
        .await;
    assert_eq!(m.status, 202, "{:?}", m.body);
    assert_eq!(m.body, json!({ "token": token, "data": data }));
    let seen = w.apns.log.wait_for(1, |_| true).await;
    let s = &seen[0];
    assert_eq!(s.path, format!("/3/device/{reg}"));
    assert_eq!(s.version, hyper::Version::HTTP_2);
    let h = |k: &str| s.headers.get(k).unwrap().to_str().unwrap().to_string();
    assert_eq!(h("apns-push-type"), "alert");
    assert_eq!(h("apns-priority"), "10");
    assert_eq!(h("apns-topic"), APNS_TOPIC);
    let exp: i64 = h("apns-expiration").parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        exp > now + 3600 && exp <= now + 86400 + 60,
        "expiration {exp} vs now {now}"
    );
    assert!(!h("apns-collapse-id").is_empty() && h("apns-collapse-id").len() <= 64);
    assert_eq!(s.body["aps"]["mutable-content"], 1);
    assert!(s.body["aps"]["alert"].is_object());
    assert_eq!(s.body["message"], json!({ "token": token, "data": data }));
    assert!(w.apns.log.violations().is_empty(), "{:?}", w.apns.log.violations());

    // pubsub names the XEP-0357 app server.
    let p = w.api.get("/api/v1/pubsub/").await;
    assert_eq!((p.status, p.body.clone()), (200, json!({ "jid": "push.localhost" })));

    // Revocation takes effect on the next request.
    assert_eq!(
        alice
            .call("DELETE", &format!("/api/v1/tokens/{token}/"), None)
            .await
            .status,
        204
    );
    let gone = w.api.post("/api/v1/messages/", json!({ "token": token })).await;
    assert_eq!(gone.status, 404);
    // Deleting the account removes its devices, tokens and keys.
    assert_eq!(alice.call("DELETE", "/api/v1/accounts/alice/", None).await.status, 204);
    assert_eq!(alice.get("/api/v1/device/apns/").await.status, 401);
    settled(&w.daemon).await;
    assert_eq!(w.apns.log.seen().len(), 1, "exactly one provider request for one push");
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_priority_is_one_background_push_at_priority_5() {
    let w = world("").await;
    let u = w.api.signup("carol").await;
    let reg = apns_token();
    let (_, token) = u.apns_device_and_token(&reg).await;
    let m = w
        .api
        .post("/api/v1/messages/", json!({ "token": token, "priority": "low" }))
        .await;
    assert_eq!(m.status, 202);
    let s = &w.apns.log.wait_for(1, |_| true).await[0];
    assert_eq!(s.headers["apns-push-type"], "background");
    assert_eq!(s.headers["apns-priority"], "5");
    assert_eq!(s.body["aps"], json!({ "content-available": 1 }));
    settled(&w.daemon).await;
    assert_eq!(w.apns.log.seen().len(), 1);
    assert!(w.apns.log.violations().is_empty(), "{:?}", w.apns.log.violations());
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_active_device_of_the_owner_gets_exactly_one_push() {
    let w = world("").await;
    let u = w.api.signup("dave").await;
    let (a, b, off) = (apns_token(), apns_token(), apns_token());
    let (_, token) = u.apns_device_and_token(&a).await;
    assert_eq!(
        u.post("/api/v1/device/apns/", json!({ "registration_id": b }))
            .await
            .status,
        201
    );
    let d = u
        .post(
            "/api/v1/device/apns/",
            json!({ "registration_id": off, "active": false }),
        )
        .await;
    assert_eq!((d.status, &d.body["active"]), (201, &json!(false)));
    // 30 pushes sent concurrently: every (device, push) pair exactly once.
    let sends = (0..30).map(|i| {
        let (api, token) = (&w.api, &token);
        async move {
            api.post("/api/v1/messages/", json!({ "token": token, "data": { "n": i } }))
                .await
                .status
        }
    });
    let statuses = futures_util::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    w.apns.log.wait_for(60, |_| true).await;
    settled(&w.daemon).await;
    let seen = w.apns.log.seen();
    assert_eq!(seen.len(), 60, "30 pushes x 2 active devices");
    for reg in [&a, &b] {
        let mut ns: Vec<i64> = seen
            .iter()
            .filter(|s| s.path.ends_with(reg.as_str()))
            .map(|s| s.body["message"]["data"]["n"].as_i64().unwrap())
            .collect();
        ns.sort();
        assert_eq!(ns, (0..30).collect::<Vec<i64>>(), "device {reg}");
    }
    assert!(
        !seen.iter().any(|s| s.path.ends_with(off.as_str())),
        "inactive device got a push"
    );
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_revoked_and_unknown_tokens_all_answer_404() {
    let w = world("").await;
    let u = w.api.signup("erin").await;
    let d = u
        .post("/api/v1/device/apns/", json!({ "registration_id": apns_token() }))
        .await;
    let id = d.body["id"].as_str().unwrap();
    // Long enough for the two requests below to come first on a loaded machine.
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(5);
    let soon = expires.format(&time::format_description::well_known::Rfc3339).unwrap();
    let t = u
        .post("/api/v1/tokens/", json!({ "apns_device": id, "date_expires": soon }))
        .await;
    assert_eq!(t.status, 201, "{:?}", t.body);
    let short = t.body["token"].as_str().unwrap().to_string();
    let t2 = u.post("/api/v1/tokens/", json!({ "apns_device": id })).await;
    let revoked = t2.body["token"].as_str().unwrap().to_string();
    assert_eq!(
        w.api.post("/api/v1/messages/", json!({ "token": short })).await.status,
        202
    );
    assert_eq!(
        w.api
            .post("/api/v1/messages/", json!({ "token": revoked }))
            .await
            .status,
        202
    );
    assert_eq!(
        u.call("DELETE", &format!("/api/v1/tokens/{revoked}/"), None)
            .await
            .status,
        204
    );
    // Wait out the expiry (a wait, not a timing assertion): until the clock
    // is a second past it, whatever the requests above took.
    let left = expires + time::Duration::seconds(1) - time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::try_from(left).unwrap_or_default()).await;
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let answers = [
        w.api.post("/api/v1/messages/", json!({ "token": short })).await,
        w.api.post("/api/v1/messages/", json!({ "token": revoked })).await,
        w.api.post("/api/v1/messages/", json!({ "token": unknown })).await,
    ];
    for a in &answers {
        assert_eq!(a.status, 404);
        assert_eq!(a.body, answers[2].body, "expired, revoked and unknown look alike");
    }
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_device_tokens_deactivate_the_device_at_once() {
    let w = world("").await;
    let u = w.api.signup("frank").await;
    let (gone, bad, ok) = (apns_token(), apns_token(), apns_token());
    w.apns.state.unregistered.lock().unwrap().insert(gone.clone());
    w.apns.state.bad.lock().unwrap().insert(bad.clone());
    let (gone_id, token) = u.apns_device_and_token(&gone).await;
    let bad_dev = u.post("/api/v1/device/apns/", json!({ "registration_id": bad })).await;
    let bad_id = bad_dev.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        u.post("/api/v1/device/apns/", json!({ "registration_id": ok }))
            .await
            .status,
        201
    );

    assert_eq!(
        w.api.post("/api/v1/messages/", json!({ "token": token })).await.status,
        202
    );
    w.apns.log.wait_for(3, |_| true).await;
    settled(&w.daemon).await;
    for id in [&gone_id, &bad_id] {
        let d = u.get(&format!("/api/v1/device/apns/{id}/")).await;
        assert_eq!(d.body["active"], false, "{id} should be inactive: {:?}", d.body);
    }
    // The next push reaches only the live device.
    assert_eq!(
        w.api.post("/api/v1/messages/", json!({ "token": token })).await.status,
        202
    );
    w.apns.log.wait_for(4, |_| true).await;
    settled(&w.daemon).await;
    let seen = w.apns.log.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen.iter().filter(|s| s.path.ends_with(gone.as_str())).count(), 1);
    assert_eq!(seen.iter().filter(|s| s.path.ends_with(bad.as_str())).count(), 1);
    assert_eq!(seen.iter().filter(|s| s.path.ends_with(ok.as_str())).count(), 2);
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_push_is_retried_after_retry_after() {
    let w = world("").await;
    let u = w.api.signup("grace").await;
    let reg = apns_token();
    w.apns.state.throttle.lock().unwrap().insert(reg.clone(), (1, 1));
    let (dev, token) = u.apns_device_and_token(&reg).await;
    assert_eq!(
        w.api.post("/api/v1/messages/", json!({ "token": token })).await.status,
        202
    );
    let seen = w.apns.log.wait_for(2, |_| true).await;
    settled(&w.daemon).await;
    assert_eq!(w.apns.log.seen().len(), 2, "one 429, then one delivery");
    let gap = seen[1].at.duration_since(seen[0].at);
    assert!(
        gap >= Duration::from_secs(1),
        "retried after {gap:?}, before Retry-After"
    );
    assert_eq!(seen[0].body, seen[1].body);
    let d = u.get(&format!("/api/v1/device/apns/{dev}/")).await;
    assert_eq!(d.body["active"], true);
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_field_errors() {
    let w = world("[relay]\nip_rate = 100000\nmax_data_bytes = 100\n").await;
    let api = &w.api;
    let r = api
        .raw(
            "POST",
            "/api/v1/accounts/",
            "application/json",
            b"{\"username\": ".to_vec(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body["detail"].as_str().unwrap().contains("JSON parse error"));
    let r = api.post("/api/v1/accounts/", json!({})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["username"], json!(["This field is required."]));
    assert_eq!(r.body["password"], json!(["This field is required."]));
    let r = api
        .post(
            "/api/v1/accounts/",
            json!({ "username": "x".repeat(31), "password": "p" }),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body["username"][0].as_str().unwrap().contains("30"));
    assert!(r.body.get("password").is_none());
    let r = api
        .post(
            "/api/v1/accounts/",
            json!({ "username": "a b", "password": "p", "email": "nope" }),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["username"].is_array() && r.body["email"].is_array(),
        "{:?}",
        r.body
    );
    // Authentication.
    assert_eq!(api.get("/api/v1/tokens/").await.status, 401);
    let bad = api.as_key("0000000000000000000000000000000000000000");
    let r = bad.get("/api/v1/tokens/").await;
    assert_eq!((r.status, &r.body["detail"]), (401, &json!("Invalid token.")));
    assert_eq!(r.headers["www-authenticate"], "Token");
    // Devices and tokens.
    let u = api.signup("heidi").await;
    let r = u
        .post("/api/v1/device/apns/", json!({ "registration_id": "not hex!" }))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body["registration_id"].is_array());
    let r = u
        .post(
            "/api/v1/device/webpush/",
            json!({ "endpoint": "http://insecure", "p256dh": "AAAA" }),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["endpoint"].is_array() && r.body["p256dh"].is_array() && r.body["auth"].is_array(),
        "{:?}",
        r.body
    );
    let r = u.post("/api/v1/tokens/", json!({ "name": "none" })).await;
    assert_eq!(r.status, 400);
    assert!(r.body["non_field_errors"].is_array());
    let r = u
        .post(
            "/api/v1/tokens/",
            json!({ "apns_device": uuid::Uuid::new_v4().to_string() }),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body["apns_device"].is_array());
    let (_, token) = u.apns_device_and_token(&apns_token()).await;
    // Messages.
    let r = api.post("/api/v1/messages/", json!({ "data": {} })).await;
    assert_eq!(
        (r.status, r.body["token"].clone()),
        (400, json!(["This field is required."]))
    );
    let r = api
        .post("/api/v1/messages/", json!({ "token": token, "priority": "urgent" }))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body["priority"].is_array());
    let r = api
        .post("/api/v1/messages/", json!({ "token": token, "data": "x".repeat(200) }))
        .await;
    assert_eq!(r.status, 413);
    assert!(r.body["data"][0].as_str().unwrap().contains("100"));
    let huge = vec![b' '; 70 * 1024];
    let r = api.raw("POST", "/api/v1/messages/", "application/json", huge).await;
    assert_eq!(r.status, 413);
    let r = api.call("GET", "/api/v1/messages/", None).await;
    assert_eq!(r.status, 405);
    assert_eq!(api.get("/api/v1/nothing/").await.status, 404);
    settled(&w.daemon).await;
    assert!(w.apns.log.seen().is_empty(), "no refused push reached the provider");
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let w = world("").await;
    let u = w.api.signup("ivan").await;
    let d = u
        .post("/api/v1/device/apns/", json!({ "registration_id": apns_token() }))
        .await;
    let t = u
        .post(
            "/api/v1/tokens/",
            json!({ "apns_device": d.body["id"], "rate_limit": 2 }),
        )
        .await;
    assert_eq!((t.status, &t.body["rate_limit"]), (201, &json!(2)));
    let token = t.body["token"].as_str().unwrap();
    for _ in 0..2 {
        assert_eq!(
            w.api.post("/api/v1/messages/", json!({ "token": token })).await.status,
            202
        );
    }
    let r = w.api.post("/api/v1/messages/", json!({ "token": token })).await;
    assert_eq!(r.status, 429);
    let after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&after), "Retry-After {after}");
    assert!(r.body["detail"].as_str().unwrap().contains("throttled"));
    w.daemon.stop().await;

    // Per client address.
    let w = world("[relay]\nip_rate = 5\n").await;
    let mut statuses = vec![];
    for _ in 0..6 {
        statuses.push(w.api.get("/api/v1/pubsub/").await.status);
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429]);
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_signup_refuses_new_accounts() {
    let w = world("[relay]\nip_rate = 100000\nsignup = \"closed\"\n").await;
    let r = w
        .api
        .post("/api/v1/accounts/", json!({ "username": "judy", "password": "p" }))
        .await;
    assert_eq!(r.status, 403);
    assert!(r.body["detail"].is_string());
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_gets_a_data_message_with_an_oauth_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let fcm = FcmStandIn::start(&ca, dir.path()).await;
    let daemon = Daemon::start(dir.path(), &fcm.config(&ca)).await;
    let api = daemon.api();
    let u = api.signup("kim").await;
    // Legacy `gcm` and the `fcm` alias are one collection.
    let d = u
        .post(
            "/api/v1/device/gcm/",
            json!({ "registration_id": "fcm-token:live_1", "name": "pixel" }),
        )
        .await;
    assert_eq!(d.status, 201, "{:?}", d.body);
    let dead = u
        .post("/api/v1/device/fcm/", json!({ "registration_id": "fcm-token:dead_1" }))
        .await;
    fcm.state.unregistered.lock().unwrap().insert("fcm-token:dead_1".into());
    assert_eq!(u.get("/api/v1/device/gcm/").await.body.as_array().unwrap().len(), 2);
    let t = u.post("/api/v1/tokens/", json!({ "gcm_device": d.body["id"] })).await;
    assert_eq!(t.status, 201, "{:?}", t.body);
    assert_eq!(t.body["gcm_device"], d.body["id"]);
    let token = t.body["token"].as_str().unwrap();
    let r = api
        .post(
            "/api/v1/messages/",
            json!({ "token": token, "data": { "from": "x", "n": 1 } }),
        )
        .await;
    assert_eq!(r.status, 202);
    let sends = fcm.log.wait_for(2, |s| s.path.ends_with(":send")).await;
    let live = sends
        .iter()
        .find(|s| s.body["message"]["token"] == "fcm-token:live_1")
        .unwrap();
    let m = &live.body["message"];
    assert_eq!(m["android"]["priority"], "HIGH");
    assert_eq!(m["data"]["from"], "x");
    assert_eq!(m["data"]["n"], "1");
    let inner: Value = serde_json::from_str(m["data"]["message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["token"], token);
    settled(&daemon).await;
    let dd = u
        .get(&format!("/api/v1/device/fcm/{}/", dead.body["id"].as_str().unwrap()))
        .await;
    assert_eq!(dd.body["active"], false, "UNREGISTERED deactivates");
    // A low push: NORMAL priority, and the cached access token is reused.
    let r = api
        .post("/api/v1/messages/", json!({ "token": token, "priority": "low" }))
        .await;
    assert_eq!(r.status, 202);
    let sends = fcm.log.wait_for(3, |s| s.path.ends_with(":send")).await;
    assert_eq!(sends[2].body["message"]["android"]["priority"], "NORMAL");
    assert_eq!(sends[2].body["message"]["token"], "fcm-token:live_1");
    settled(&daemon).await;
    assert_eq!(fcm.log.seen().iter().filter(|s| s.path == "/token").count(), 1);
    assert!(fcm.log.violations().is_empty(), "{:?}", fcm.log.violations());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_push_payload_decrypts_and_vapid_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let wp = WebPushStandIn::start(&ca).await;
    let cfg = format!(
        "[relay]\nip_rate = 100000\nca_roots = {:?}\n",
        ca.ca_pem.display().to_string()
    );
    let daemon = Daemon::start(dir.path(), &cfg).await;
    let api = daemon.api();
    let vapid = api.get("/api/v1/vapid/").await;
    assert_eq!(
        pushbox::push::jwt::b64_decode(vapid.body["public_key"].as_str().unwrap())
            .unwrap()
            .len(),
        65
    );
    let u = api.signup("leo").await;
    let (_, endpoint, p256dh, auth) = wp.subscribe();
    let (gone_id, gone_endpoint, gp, ga) = wp.subscribe();
    wp.state.gone.lock().unwrap().insert(gone_id);
    let d = u
        .post(
            "/api/v1/device/webpush/",
            json!({ "endpoint": endpoint, "p256dh": p256dh, "auth": auth }),
        )
        .await;
    assert_eq!(d.status, 201, "{:?}", d.body);
    assert_eq!(d.body["endpoint"], endpoint.as_str());
    let g = u
        .post(
            "/api/v1/device/webpush/",
            json!({ "endpoint": gone_endpoint, "p256dh": gp, "auth": ga }),
        )
        .await;
    let t = u
        .post("/api/v1/tokens/", json!({ "webpush_device": d.body["id"] }))
        .await;
    assert_eq!(t.status, 201, "{:?}", t.body);
    let token = t.body["token"].as_str().unwrap();
    let data = json!({ "hello": "world" });
    assert_eq!(
        api.post("/api/v1/messages/", json!({ "token": token, "data": data }))
            .await
            .status,
        202
    );
    wp.log.wait_for(2, |_| true).await;
    settled(&daemon).await;
    let seen = wp.log.seen();
    let ok = seen.iter().find(|s| endpoint.ends_with(&s.path)).unwrap();
    assert_eq!(
        ok.body["message"],
        json!({ "token": token, "data": data }),
        "decrypted payload"
    );
    assert_eq!(ok.headers["urgency"], "high");
    let gd = u
        .get(&format!("/api/v1/device/webpush/{}/", g.body["id"].as_str().unwrap()))
        .await;
    assert_eq!(gd.body["active"], false, "410 deactivates");
    assert!(wp.log.violations().is_empty(), "{:?}", wp.log.violations());
    daemon.stop().await;
}

/// Relay federation: relay B has no APNs key; its `relay` device forwards
/// to relay A, which holds the key and the APNs device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_device_forwards_to_the_upstream_relay() {
    let w = world("").await;
    let up = w.api.signup("app").await;
    let reg = apns_token();
    let (_, upstream_token) = up.apns_device_and_token(&reg).await;

    let dir_b = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[relay]\nip_rate = 100000\nca_roots = {:?}\n",
        w.daemon.ca.display().to_string()
    );
    let b = Daemon::start(dir_b.path(), &cfg).await;
    let b_api = b.api();
    let user = b_api.signup("mia").await;
    let d = user
        .post(
            "/api/v1/device/relay/",
            json!({ "endpoint": format!("{}/api/v1/messages/", w.daemon.url), "token": upstream_token }),
        )
        .await;
    assert_eq!(d.status, 201, "{:?}", d.body);
    assert!(d.body.get("token").is_none(), "the upstream token is not shown back");
    let t = user
        .post("/api/v1/tokens/", json!({ "relay_device": d.body["id"] }))
        .await;
    let token = t.body["token"].as_str().unwrap();
    let r = b_api
        .post(
            "/api/v1/messages/",
            json!({ "token": token, "data": { "via": "b" }, "priority": "low" }),
        )
        .await;
    assert_eq!(r.status, 202);
    let s = &w.apns.log.wait_for(1, |_| true).await[0];
    assert_eq!(s.path, format!("/3/device/{reg}"));
    assert_eq!(s.headers["apns-push-type"], "background");
    assert_eq!(s.body["message"]["data"], json!({ "via": "b" }));
    assert_eq!(s.body["message"]["token"], upstream_token.as_str());
    settled(&b).await;
    settled(&w.daemon).await;
    assert_eq!(w.apns.log.seen().len(), 1);
    b.stop().await;
    w.daemon.stop().await;
}

/// The push core's handle without HTTP, as the XMPP side uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_submit_through_the_push_core() {
    let w = world("").await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "domain = \"localhost\"\n[listen]\nc2s = []\nc2s_direct_tls = []\nhttps = []\n{}",
        w.apns.config(&w.ca)
    );
    let toml = with_relay_line(&toml, &relay_database_line().await);
    let config = pushbox::config::Config::from_toml_str(&toml, Some(dir.path())).unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let server =
        tokio::task::spawn_blocking(move || pushbox::build_server(config, stop_rx.clone()).map(|s| (s, stop_rx)))
            .await
            .unwrap()
            .unwrap();
    let (server, stop_rx) = server;
    let relay = server.relay.clone();
    relay.start(stop_rx);
    let reg = apns_token();
    let device = pushbox::push::NewDevice {
        registration_id: reg.clone(),
        active: true,
        ..Default::default()
    };
    let r = relay
        .register("xmpp:nina@localhost", pushbox::push::Kind::Apns, device)
        .await
        .unwrap();
    assert_eq!(r.token.secret.len(), 40);
    let accepted = relay
        .submit(
            &r.token.secret,
            Some(json!({ "n": 1 })),
            pushbox::push::Priority::Low,
            Some(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    assert_eq!(accepted.devices, 1);
    let s = &w.apns.log.wait_for(1, |_| true).await[0];
    assert_eq!(s.path, format!("/3/device/{reg}"));
    let exp: i64 = s.headers["apns-expiration"].to_str().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(exp <= now + 600 && exp > now, "TTL of the push, not a default");
    let unknown = relay.submit("nope", None, pushbox::push::Priority::High, None).await;
    assert!(matches!(unknown, Err(pushbox::push::SubmitError::UnknownToken)));
    eventually(|| async { (relay.totals(pushbox::push::Kind::Apns).delivered == 1).then_some(()) }).await;
    w.daemon.stop().await;
}

/// A push accepted (202) while APNs is down survives `kill -9` and is
/// delivered exactly once by the restarted daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_accepted_before_sigkill_is_delivered_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    // Start APNs once to make its key and learn its config, then take it down.
    let apns = ApnsStandIn::start(&ca, dir.path()).await;
    let (apns_addr, apns_cfg) = (apns.addr, apns.config(&ca));
    apns.stop();
    let port = free_port();
    let config = dir.path().join("pushbox.toml");
    let toml = format!(
        "domain = \"localhost\"\ndata_dir = \"data\"\n[listen]\nc2s = []\nc2s_direct_tls = []\n\
         https = [\"127.0.0.1:{port}\"]\n[relay]\nip_rate = 100000\n{apns_cfg}"
    );
    std::fs::write(&config, with_relay_line(&toml, &relay_database_line().await)).unwrap();
    let data_dir = dir.path().join("data");
    let p = Process::start(&config, port, &data_dir).await;
    let u = p.api().signup("olga").await;
    let reg = apns_token();
    let (_, token) = u.apns_device_and_token(&reg).await;
    let r = p
        .api()
        .post("/api/v1/messages/", json!({ "token": token, "data": { "id": "m1" } }))
        .await;
    assert_eq!(r.status, 202);
    p.kill();

    let store = relay_store_of(&config).await;
    assert_eq!(
        store.pending_count().await.unwrap(),
        1,
        "the accepted push is in the outbox"
    );

    let apns = ApnsStandIn::start_on(&ca, dir.path(), tokio::net::TcpListener::bind(apns_addr).await.unwrap()).await;
    let p = Process::start(&config, port, &data_dir).await;
    let seen = apns.log.wait_for(1, |_| true).await;
    assert_eq!(seen[0].path, format!("/3/device/{reg}"));
    assert_eq!(seen[0].body["message"]["data"], json!({ "id": "m1" }));
    drained(&store).await;
    // Give a duplicate every chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(apns.log.seen().len(), 1, "delivered once");
    p.kill();
}

/// APNs allows `streams` concurrent streams per connection (announced in
/// SETTINGS_MAX_CONCURRENT_STREAMS) and holds its answers; 10 pushes are
/// sent. Returns how many reached APNs while it held them, and on how many
/// connections; then lets APNs answer and checks that every push arrived
/// once.
async fn in_flight_while_apns_holds(streams: u32, connections: usize) -> (usize, usize) {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let apns = ApnsStandIn::start_limited(&ca, dir.path(), streams).await;
    apns.state.hold.store(true, SeqCst);
    let cfg = format!(
        "[relay]\nip_rate = 100000\nprovider_connections = {connections}\n{}",
        apns.config(&ca)
    );
    let daemon = Daemon::start(dir.path(), &cfg).await;
    let u = daemon.api().signup("pat").await;
    let (_, token) = u.apns_device_and_token(&apns_token()).await;
    for n in 0..10 {
        let r = daemon
            .api()
            .post("/api/v1/messages/", json!({ "token": token, "data": { "n": n } }))
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
    let limit = (streams as usize * connections).min(10);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while apns.state.held.load(SeqCst) < limit {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} pushes reached APNs, {limit} expected",
            apns.state.held.load(SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The rest wait for a stream: none more arrives while APNs holds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = apns.state.held.load(SeqCst);
    let conns = apns.state.connections.lock().unwrap().len();
    apns.state.release();
    let seen = apns.log.wait_for(10, |_| true).await;
    settled(&daemon).await;
    let mut ns: Vec<i64> = apns
        .log
        .seen()
        .iter()
        .map(|s| s.body["message"]["data"]["n"].as_i64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, (0..10).collect::<Vec<i64>>(), "each push once: {seen:?}");
    assert!(apns.log.violations().is_empty(), "{:?}", apns.log.violations());
    drop(u);
    daemon.stop().await;
    (held, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_do_not_queue_behind_one_apns_connection() {
    // Two streams per connection, up to three connections: six pushes in
    // flight on three connections, the other four waiting for a stream.
    assert_eq!(in_flight_while_apns_holds(2, 3).await, (6, 3));
    // Capped at one connection: two in flight, eight queued behind them.
    assert_eq!(in_flight_while_apns_holds(2, 1).await, (2, 1));
}

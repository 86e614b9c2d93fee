//! The invitation web page over real HTTPS: the page, its form, the account
//! it creates logging in over XMPP, and the token rules. (The page in a real
//! browser is covered by tests/invite/run with headless Chromium.)

mod common;
use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::{Request, Response};
use pushbox::push::client::HttpsClient;

fn invite(s: &TestServer, uses: u32) -> String {
    let st = pushbox::store::Store::open_in(&s.config.data_dir).unwrap();
    st.blocking(|c| pushbox::store::invites::create(c, 3600, uses, false))
        .unwrap()
}

fn url(s: &TestServer, token: &str) -> String {
    format!("https://localhost:{}/invite/{token}", s.https.unwrap().port())
}

async fn get(http: &HttpsClient, url: &str) -> Response<Bytes> {
    let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    http.send(req).await.unwrap()
}

async fn post(http: &HttpsClient, url: &str, ctype: &str, body: &str) -> Response<Bytes> {
    let req = Request::post(url)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    http.send(req).await.unwrap()
}

fn text(r: &Response<Bytes>) -> String {
    String::from_utf8(r.body().to_vec()).unwrap()
}

const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test]
async fn the_page_creates_an_account_once() {
    let s = TestServer::start_with_https("[registration]\nmode = \"invite\"\n").await;
    s.add_user("taken", "pw-taken-1");
    let http = HttpsClient::new(Some(&test_ca().join("ca.pem"))).unwrap();
    let token = invite(&s, 1);
    let u = url(&s, &token);

    let page = get(&http, &u).await;
    assert_eq!(page.status(), 200);
    let h = page.headers();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(
        h["referrer-policy"], "no-referrer",
        "the token must not leak in a Referer"
    );
    assert_eq!(h["cache-control"], "no-store");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    let html = text(&page);
    assert!(
        html.contains(&format!("href=\"xmpp:localhost?register;preauth={token};ibr=y\"")),
        "{html}"
    );
    assert!(html.contains("<svg") && html.contains("</svg>"), "a QR code is inline");
    assert!(!html.contains("<script"), "the page works without JavaScript");
    assert!(html.contains("<form method=\"post\">") && html.contains("name=\"confirm\""));
    assert!(
        html.contains("Conversations") && html.contains("Monal"),
        "apps per platform"
    );

    // Refusals re-render the form, keep the username (escaped) and use nothing up.
    let r = post(
        &http,
        &u,
        FORM,
        "username=newbie&password=long-enough-1&confirm=long-enough-2",
    )
    .await;
    assert_eq!(r.status(), 400);
    let html = text(&r);
    assert!(
        html.contains("The two passwords differ.") && html.contains("value=\"newbie\""),
        "{html}"
    );
    let r = post(&http, &u, FORM, "username=newbie&password=short&confirm=short").await;
    assert_eq!(r.status(), 400);
    assert!(text(&r).contains("at least 8 characters"));
    let r = post(
        &http,
        &u,
        FORM,
        "username=a%3Cb%3E%40x&password=long-enough-1&confirm=long-enough-1",
    )
    .await;
    assert_eq!(r.status(), 400);
    let html = text(&r);
    assert!(
        html.contains("value=\"a&lt;b&gt;@x\"") && !html.contains("a<b>"),
        "{html}"
    );
    let r = post(
        &http,
        &u,
        FORM,
        "username=Taken&password=long-enough-1&confirm=long-enough-1",
    )
    .await;
    assert_eq!(r.status(), 409);
    assert!(text(&r).contains("That username is taken"));
    let r = post(&http, &u, "application/json", "{}").await;
    assert_eq!(r.status(), 415);
    let big = format!("username=x&password={}", "p".repeat(10_000));
    let r = post(&http, &u, FORM, &big).await;
    assert_eq!(r.status(), 413);

    // The real thing: the account is made and logs in over XMPP.
    let r = post(
        &http,
        &u,
        FORM,
        "username=NewBie&password=long+enough+1&confirm=long+enough+1",
    )
    .await;
    assert_eq!(r.status(), 200);
    let html = text(&r);
    assert!(html.contains("newbie@localhost"), "{html}");
    // tokio-xmpp logs in with SCRAM and goes online, or the harness panics.
    let c = s.client("newbie", "long enough 1", false).await;
    assert!(c.full_jid().starts_with("newbie@localhost/"), "{}", c.full_jid());
    c.close().await;

    // A used single-use token is refused, on the page and by the form.
    let again = get(&http, &u).await;
    assert_eq!(again.status(), 404);
    assert!(text(&again).contains("This invitation is not valid"));
    let r = post(
        &http,
        &u,
        FORM,
        "username=second&password=long-enough-1&confirm=long-enough-1",
    )
    .await;
    assert_eq!(r.status(), 404);
    let st = pushbox::store::Store::open_in(&s.config.data_dir).unwrap();
    assert!(st
        .blocking(|c| pushbox::store::accounts::get(c, "second"))
        .unwrap()
        .is_none());

    // Unknown and malformed tokens look the same as used ones.
    assert_eq!(get(&http, &url(&s, "AAAAAAAAAAAAAAAAAAAAAAAAAAA")).await.status(), 404);
    assert_eq!(get(&http, &url(&s, "..%2F..%2Fetc")).await.status(), 404);
    s.stop().await;
}

#[tokio::test]
async fn multi_use_invitations_and_closed_registration() {
    let s = TestServer::start_with_https("[registration]\nmode = \"invite\"\n").await;
    let http = HttpsClient::new(Some(&test_ca().join("ca.pem"))).unwrap();
    let token = invite(&s, 2);
    let u = url(&s, &token);
    assert!(text(&get(&http, &u).await).contains("It can be used 2 more times."));
    for name in ["first", "second"] {
        let body = format!("username={name}&password=long-enough-1&confirm=long-enough-1");
        assert_eq!(post(&http, &u, FORM, &body).await.status(), 200, "{name}");
    }
    assert_eq!(get(&http, &u).await.status(), 404, "both uses are gone");
    s.stop().await;

    let closed = TestServer::start_with_https("[registration]\nmode = \"closed\"\n").await;
    let token = invite(&closed, 1);
    let r = get(&http, &url(&closed, &token)).await;
    assert_eq!(r.status(), 403);
    assert!(text(&r).contains("does not accept new accounts"));
    closed.stop().await;
}

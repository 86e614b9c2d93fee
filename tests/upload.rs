//! HTTP File Upload (XEP-0363): slot over XMPP, PUT and GET over HTTPS.

mod common;
use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::Request;
use pushbox::push::client::HttpsClient;

fn url_of(xml: &str, tag: &str) -> String {
    let i = xml
        .find(&format!("<{tag} "))
        .unwrap_or_else(|| panic!("no {tag} in {xml}"));
    let rest = &xml[i..];
    let u = rest.find("url='").unwrap() + 5;
    rest[u..u + rest[u..].find('\'').unwrap()].replace("&amp;", "&")
}

async fn slot(c: &mut RawClient, id: &str, name: &str, size: usize) -> String {
    c.received.clear();
    c.send(&format!(
        "<iq type='get' id='{id}' to='upload.localhost'><request xmlns='urn:xmpp:http:upload:0' filename='{name}' size='{size}' content-type='image/png'/></iq>"
    ))
    .await;
    c.read_until("</iq>").await
}

fn req(method: &str, url: &str, body: Vec<u8>) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(url);
    if method == "PUT" {
        b = b
            .header("content-type", "image/png")
            .header("content-length", body.len());
    }
    b.body(Full::new(Bytes::from(body))).unwrap()
}

#[tokio::test]
async fn put_then_get_round_trips_and_limits_hold() {
    let s = TestServer::start_with_https("[upload]\nmax_file_size = 1000\nquota = 2500\n").await;
    s.add_user("alice", "pw");
    let http = HttpsClient::new(Some(&test_ca().join("ca.pem"))).unwrap();
    let mut a = RawClient::login(s.c2s, "alice", "pw").await;
    // Discoverable from the domain.
    a.send("<iq type='get' id='items' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await;
    assert!(a.read_until("</iq>").await.contains("upload.localhost"));
    a.received.clear();
    a.send(
        "<iq type='get' id='info' to='upload.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .await;
    let info = a.read_until("</iq>").await;
    assert!(
        info.contains("urn:xmpp:http:upload:0") && info.contains("max-file-size"),
        "{info}"
    );

    // An encrypted file may be 16 bytes over the limit (AES-GCM tag).
    let data: Vec<u8> = (0..1016u32).map(|i| (i % 251) as u8).collect();
    let r = slot(&mut a, "s1", "cat pic.png", data.len()).await;
    let put = url_of(&r, "put");
    let get = url_of(&r, "get");
    assert!(put.contains("/upload/") && put.ends_with("cat_pic.png"), "{put}");
    let pre = http.send(req("OPTIONS", &put, vec![])).await.unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(pre.headers()["access-control-allow-origin"], "*");
    assert!(pre.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("PUT"));
    let resp = http.send(req("PUT", &put, data.clone())).await.unwrap();
    assert_eq!(resp.status(), 201);
    let again = http.send(req("PUT", &put, data.clone())).await.unwrap();
    assert_eq!(again.status(), 409, "a slot is used once");
    let got = http.send(req("GET", &get, vec![])).await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.body().as_ref(), &data[..]);
    assert_eq!(got.headers()["content-type"], "image/png");
    let mut ranged = req("GET", &get, vec![]);
    ranged.headers_mut().insert("range", "bytes=10-19".parse().unwrap());
    let part = http.send(ranged).await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.body().as_ref(), &data[10..20]);

    // Too large for one file.
    let r = slot(&mut a, "s2", "big.bin", 1017).await;
    assert!(r.contains("file-too-large") && r.contains("not-acceptable"), "{r}");
    // Over quota: 1016 used, 2500 allowed.
    let r = slot(&mut a, "s3", "b.png", 1000).await;
    assert!(r.contains("<slot"), "{r}");
    let r = slot(&mut a, "s4", "c.png", 1000).await;
    assert!(r.contains("resource-constraint"), "over quota: {r}");
    // A PUT with a different size than the slot's is refused.
    let r = slot(&mut a, "s5", "d.png", 10).await;
    let wrong = http.send(req("PUT", &url_of(&r, "put"), vec![0u8; 20])).await.unwrap();
    assert_eq!(wrong.status(), 413);
    // Traversal and unknown ids are plain 404s.
    let base = format!("https://localhost:{}", s.https.unwrap().port());
    for p in [
        "/upload/../../pushbox.sqlite3",
        "/upload/%2e%2e/x",
        "/upload/00000000000000000000000000000000/x",
    ] {
        let r = http.send(req("GET", &format!("{base}{p}"), vec![])).await.unwrap();
        assert_eq!(r.status(), 404, "{p}");
    }
    s.stop().await;
}

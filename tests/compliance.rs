//! The compliance walk: every row of "what a compliance tester checks" in
//! the XMPP server design notes, checked on the wire against the real
//! daemon the way the Conversations compliance tester and Monal look. Each
//! check has an expected outcome; rows pushbox does not support yet are
//! listed as expected-missing with a FIXME, so this test fails both when a
//! supported check breaks and when a missing one starts to pass (then move
//! it, and update docs/xeps.md).

mod common;
use bytes::Bytes;
use common::*;
use http_body_util::Full;
use minidom::Element;
use pushbox::push::client::HttpsClient;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Pass,
    /// Not supported yet; the reason is the FIXME.
    Missing(&'static str),
}

/// The walk's rows, in the order of the design table, with what pushbox does today.
const ROWS: &[(&str, Expect)] = &[
    ("stream features: caps <c/>", Expect::Pass),
    ("stream features: urn:xmpp:features:rosterver", Expect::Pass),
    ("stream features: urn:xmpp:sm:3", Expect::Pass),
    ("stream features: urn:xmpp:csi:0", Expect::Pass),
    ("domain disco#info: urn:xmpp:carbons:2", Expect::Pass),
    ("domain disco#info: urn:xmpp:blocking", Expect::Pass),
    ("domain disco#info: msgoffline", Expect::Pass),
    ("account disco#info: urn:xmpp:mam:2", Expect::Pass),
    ("account disco#info: urn:xmpp:push:0", Expect::Pass),
    ("account disco#info: urn:xmpp:pep-vcard-conversion:0", Expect::Pass),
    ("account disco#info: urn:xmpp:bookmarks-conversion:0", Expect::Pass),
    ("account identity pubsub/pep", Expect::Pass),
    (
        "OMEMO node: publish open + persist_items + max_items=max, config reads open, delete",
        Expect::Pass,
    ),
    (
        "disco#items: HTTP upload service (urn:xmpp:http:upload:0)",
        Expect::Pass,
    ),
    (
        "disco#items: MUC service (http://jabber.org/protocol/muc)",
        Expect::Pass,
    ),
    (
        "disco#items: SOCKS5 proxy (http://jabber.org/protocol/bytestreams)",
        Expect::Missing("FIXME: no XEP-0065 proxy yet"),
    ),
    ("MUC MAM: room config or feature urn:xmpp:mam:2", Expect::Pass),
    (
        "direct TLS: SNI = domain, ALPN xmpp-client, certificate verified, reply starts with <?xml",
        Expect::Pass,
    ),
    ("TURN: extdisco:2 services with username and password", Expect::Pass),
    ("XEP-0157 abuse address in domain disco#info", Expect::Pass),
    ("XEP-0077 feature absent before auth by default", Expect::Pass),
    ("/.well-known/host-meta (XEP-0156)", Expect::Pass),
    ("upload PUT answers the CORS preflight", Expect::Pass),
];

/// The complete `<iq/>` with `id` in `raw`, parsed (None while incomplete).
fn find_iq(raw: &str, id: &str) -> Option<Element> {
    let at = raw.find(&format!("id='{id}'"))?;
    let start = raw[..at].rfind("<iq")?;
    let open_end = start + raw[start..].find('>')?;
    let end = if raw[..open_end].ends_with('/') {
        open_end + 1
    } else {
        start + raw[start..].find("</iq>")? + 5
    };
    let text = &raw[start..end];
    let open = &text[..text.find('>').unwrap_or(text.len())];
    if open.contains("xmlns=") {
        text.parse().ok()
    } else {
        text.replacen("<iq", "<iq xmlns='jabber:client'", 1).parse().ok()
    }
}

/// Send `body` (an IQ with `id`) and return the answer.
async fn iq(c: &mut RawClient, id: &str, body: &str) -> Element {
    c.received.clear();
    c.send(body).await;
    c.read_until(&format!("id='{id}'")).await;
    for _ in 0..200 {
        if let Some(e) = find_iq(&c.received, id) {
            return e;
        }
        c.read_for(Duration::from_millis(100)).await;
    }
    panic!("no complete answer to {id}: {}", c.received)
}

fn disco_info(to: &str, id: &str) -> String {
    format!("<iq type='get' id='{id}' to='{to}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
}

fn features(q: &Element) -> Vec<String> {
    q.children()
        .flat_map(|c| c.children().filter(|f| f.name() == "feature"))
        .filter_map(|f| f.attr("var").map(str::to_string))
        .collect()
}

fn result_ok(e: &Element) -> bool {
    e.attr("type") == Some("result")
}

/// The data form field `var` anywhere below `e`.
fn form_value(e: &Element, var: &str) -> Option<String> {
    if e.name() == "field" && e.attr("var") == Some(var) {
        return e.children().find(|v| v.name() == "value").map(|v| v.text());
    }
    e.children().find_map(|c| form_value(c, var))
}

async fn omemo_round_trip(c: &mut RawClient) -> bool {
    let node = format!("eu.siacs.conversations.axolotl.{}", uuid::Uuid::new_v4());
    let publish = iq(
        c,
        "om1",
        &format!(
            "<iq type='set' id='om1'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{node}'>\
             <item id='current'><list xmlns='eu.siacs.conversations.axolotl'><device id='1'/></list></item></publish>\
             <publish-options><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='pubsub#access_model'><value>open</value></field>\
             <field var='pubsub#persist_items'><value>true</value></field>\
             <field var='pubsub#max_items'><value>max</value></field></x></publish-options></pubsub></iq>"
        ),
    )
    .await;
    if !result_ok(&publish) {
        return false;
    }
    let config = iq(
        c,
        "om2",
        &format!("<iq type='get' id='om2'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='{node}'/></pubsub></iq>"),
    )
    .await;
    if form_value(&config, "pubsub#access_model").as_deref() != Some("open") {
        return false;
    }
    let delete = iq(
        c,
        "om3",
        &format!("<iq type='set' id='om3'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><delete node='{node}'/></pubsub></iq>"),
    )
    .await;
    let items = iq(
        c,
        "om4",
        &format!("<iq type='get' id='om4'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='{node}'/></pubsub></iq>"),
    )
    .await;
    result_ok(&delete) && items.attr("type") == Some("error")
}

/// Direct TLS as the tester does it: SNI = domain, ALPN `xmpp-client`.
async fn direct_tls(addr: std::net::SocketAddr) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    for c in CertificateDer::pem_file_iter(test_ca().join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    cfg.alpn_protocols = vec![b"xmpp-client".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let Ok(mut tls) = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
    else {
        return false;
    };
    if tls.get_ref().1.alpn_protocol() != Some(b"xmpp-client") {
        return false;
    }
    tls.write_all(HEADER.as_bytes()).await.unwrap();
    let mut buf = [0u8; 5];
    let read = tokio::time::timeout(WAIT, tls.read_exact(&mut buf)).await;
    matches!(read, Ok(Ok(_))) && &buf == b"<?xml"
}

#[tokio::test]
async fn compliance_tester_table_on_the_wire() {
    let s = TestServer::start_with_https(
        "[turn]\nhost = \"turn.localhost\"\nsecret = \"0123456789abcdef0123\"\n\
         [contact]\nabuse = [\"mailto:abuse@localhost\"]\n",
    )
    .await;
    s.add_user("tester", "pw");
    let mut got: Vec<(&str, bool)> = Vec::new();

    // Pre-auth features, then the features after authentication.
    let mut c = RawClient::connect_tls(s.c2s).await;
    c.send(HEADER).await;
    let pre = c.read_until("</stream:features>").await;
    c.received.clear();
    drop(c);
    let mut c = RawClient::connect_tls(s.c2s).await;
    c.auth_plain("tester", "pw").await;
    let post = c.received.clone();
    c.received.clear();
    c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        .await;
    c.read_until("</iq>").await;
    got.push((ROWS[0].0, post.contains("http://jabber.org/protocol/caps")));
    got.push((ROWS[1].0, post.contains("urn:xmpp:features:rosterver")));
    got.push((ROWS[2].0, post.contains("urn:xmpp:sm:3")));
    got.push((ROWS[3].0, post.contains("urn:xmpp:csi:0")));

    let domain = iq(&mut c, "d1", &disco_info("localhost", "d1")).await;
    let df = features(&domain);
    for (row, f) in [(4, "urn:xmpp:carbons:2"), (5, "urn:xmpp:blocking"), (6, "msgoffline")] {
        got.push((ROWS[row].0, df.iter().any(|x| x == f)));
    }
    let account = iq(&mut c, "d2", &disco_info("tester@localhost", "d2")).await;
    let af = features(&account);
    for (row, f) in [
        (7, "urn:xmpp:mam:2"),
        (8, "urn:xmpp:push:0"),
        (9, "urn:xmpp:pep-vcard-conversion:0"),
        (10, "urn:xmpp:bookmarks-conversion:0"),
    ] {
        got.push((ROWS[row].0, af.iter().any(|x| x == f)));
    }
    let pep = account
        .children()
        .flat_map(|q| q.children())
        .any(|i| i.name() == "identity" && i.attr("category") == Some("pubsub") && i.attr("type") == Some("pep"));
    got.push((ROWS[11].0, pep));
    got.push((ROWS[12].0, omemo_round_trip(&mut c).await));

    // Services: disco#items of the domain, then disco#info on each item.
    let items = iq(
        &mut c,
        "i1",
        "<iq type='get' id='i1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
    )
    .await;
    let jids: Vec<String> = items
        .children()
        .flat_map(|q| q.children())
        .filter_map(|i| i.attr("jid").map(str::to_string))
        .collect();
    let mut service_features = Vec::new();
    for (n, j) in jids.iter().enumerate() {
        let id = format!("si{n}");
        let info = iq(&mut c, &id, &disco_info(j, &id)).await;
        service_features.push((j.clone(), features(&info)));
    }
    let offers = |f: &str| service_features.iter().any(|(_, fs)| fs.iter().any(|x| x == f));
    got.push((ROWS[13].0, offers("urn:xmpp:http:upload:0")));
    got.push((ROWS[14].0, offers("http://jabber.org/protocol/muc")));
    got.push((ROWS[15].0, offers("http://jabber.org/protocol/bytestreams")));
    // MUC MAM: a MUC service whose disco#info shows urn:xmpp:mam:2.
    let muc_mam = service_features.iter().any(|(_, fs)| {
        fs.iter().any(|x| x == "http://jabber.org/protocol/muc") && fs.iter().any(|x| x == "urn:xmpp:mam:2")
    });
    got.push((ROWS[16].0, muc_mam));

    got.push((ROWS[17].0, direct_tls(s.c2s_tls).await));

    let ext = iq(
        &mut c,
        "x1",
        "<iq type='get' id='x1' to='localhost'><services xmlns='urn:xmpp:extdisco:2'/></iq>",
    )
    .await;
    let turn = ext
        .children()
        .flat_map(|q| q.children())
        .filter(|sv| sv.attr("type").is_some_and(|t| t.starts_with("turn")))
        .collect::<Vec<_>>();
    got.push((
        ROWS[18].0,
        !turn.is_empty()
            && turn
                .iter()
                .all(|t| t.attr("username").is_some() && t.attr("password").is_some()),
    ));
    got.push((
        ROWS[19].0,
        form_value(&domain, "abuse-addresses").as_deref() == Some("mailto:abuse@localhost"),
    ));
    got.push((ROWS[20].0, !pre.contains("http://jabber.org/features/iq-register")));

    let https = s.https.unwrap();
    let http = HttpsClient::new(Some(&test_ca().join("ca.pem"))).unwrap();
    let host_meta = http
        .send(
            hyper::Request::get(format!("https://localhost:{}/.well-known/host-meta", https.port()))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    got.push((
        ROWS[21].0,
        host_meta.status() == 200 && String::from_utf8_lossy(host_meta.body()).contains("urn:xmpp:alt-connections"),
    ));

    let slot = iq(
        &mut c,
        "up",
        "<iq type='get' id='up' to='upload.localhost'><request xmlns='urn:xmpp:http:upload:0' filename='a.png' size='10' content-type='image/png'/></iq>",
    )
    .await;
    let put = slot
        .children()
        .flat_map(|s| s.children())
        .find(|p| p.name() == "put")
        .and_then(|p| p.attr("url").map(str::to_string));
    let cors = match put {
        Some(url) => {
            let pre = http
                .send(
                    hyper::Request::builder()
                        .method("OPTIONS")
                        .uri(url)
                        .header("origin", "https://web.example")
                        .header("access-control-request-method", "PUT")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
                .unwrap();
            pre.status().is_success()
                && pre.headers().contains_key("access-control-allow-origin")
                && pre
                    .headers()
                    .get("access-control-allow-methods")
                    .is_some_and(|m| m.to_str().unwrap_or_default().contains("PUT"))
        }
        None => false,
    };
    got.push((ROWS[22].0, cors));

    // The report, then the verdict.
    assert_eq!(got.len(), ROWS.len(), "every row is walked");
    let mut wrong = Vec::new();
    for ((name, expect), (walked, passed)) in ROWS.iter().zip(&got) {
        assert_eq!(name, walked);
        let mark = if *passed { "pass" } else { "MISSING" };
        match expect {
            Expect::Pass if !passed => wrong.push(format!("{name}: expected to pass, fails")),
            Expect::Missing(why) if *passed => wrong.push(format!("{name}: now passes; was listed missing ({why})")),
            _ => {}
        }
        eprintln!("{mark:8} {name}");
    }
    assert!(wrong.is_empty(), "compliance changed:\n{}", wrong.join("\n"));
    s.stop().await;
}

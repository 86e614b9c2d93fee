//! Invitations over XMPP (issue 15): the XEP-0401 ad-hoc commands on the
//! domain, registration with the token through XEP-0445's `ibr-token:0`
//! flow, the mutual subscription it makes, XEP-0379 pre-authenticated
//! subscriptions, quotas, and used or expired tokens refused.

mod common;
use common::*;
use tokio_xmpp::parsers::minidom::Element;

const COMMANDS: &str = "http://jabber.org/protocol/commands";
const ROSTER: &str = "jabber:iq:roster";

fn text(e: &Element) -> String {
    String::from(e)
}

/// The value of result-form field `var` in a `<command/>` answer.
fn field(iq: &Element, var: &str) -> Option<String> {
    let x = iq.get_child("command", COMMANDS)?.get_child("x", "jabber:x:data")?;
    x.children()
        .find(|f| f.name() == "field" && f.attr("var") == Some(var))
        .and_then(|f| f.get_child("value", "jabber:x:data"))
        .map(|v| v.text())
}

async fn run_command(c: &mut TestClient, node: &str) -> Element {
    c.iq(xml(&format!(
        "<iq xmlns='jabber:client' type='set' to='localhost'>\
         <command xmlns='{COMMANDS}' node='{node}' action='execute'/></iq>"
    )))
    .await
}

/// The token of an `xmpp:` invitation URI.
fn token_of(uri: &str) -> String {
    let t = uri.split("preauth=").nth(1).expect("a preauth token");
    t.split(';').next().unwrap().to_string()
}

/// Ask for the roster (so that roster pushes come) and return it.
async fn roster(c: &mut TestClient) -> Element {
    c.iq(xml(&format!(
        "<iq xmlns='jabber:client' type='get'><query xmlns='{ROSTER}'/></iq>"
    )))
    .await
}

fn subscription(roster: &Element, jid: &str) -> Option<String> {
    roster
        .get_child("query", ROSTER)?
        .children()
        .find(|i| i.attr("jid") == Some(jid))
        .and_then(|i| i.attr("subscription").map(str::to_string))
}

/// A fresh stream before authentication, as Monal opens it: its features.
async fn unauthenticated(s: &TestServer) -> (RawClient, String) {
    let mut c = RawClient::connect_tls(s.c2s).await;
    c.send(HEADER).await;
    let f = c.read_until("</stream:features>").await;
    c.received.clear();
    (c, f)
}

/// Read the answer to the IQ `id` (self-closing or not); returns it and clears the buffer.
async fn answer(c: &mut RawClient, id: &str) -> String {
    let all = c.read_until(&format!("id='{id}'")).await;
    let start = all.rfind("<iq").unwrap_or(0);
    let head_end = all[start..].find('>').map(|i| start + i);
    let closed = head_end.is_some_and(|i| all[..i].ends_with('/'));
    let all = if closed { all } else { c.read_until("</iq>").await };
    c.received.clear();
    all[start..].to_string()
}

/// XEP-0445: `<preauth/>` then XEP-0077 registration; returns both answers.
async fn register_with(c: &mut RawClient, token: &str, user: &str, pw: &str) -> (String, String) {
    c.send(&format!(
        "<iq type='set' id='pa' to='localhost'><preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>"
    ))
    .await;
    let pre = answer(c, "pa").await;
    if !is_result(&pre) {
        return (pre, String::new());
    }
    c.send(&format!(
        "<iq type='set' id='rg'><query xmlns='jabber:iq:register'><username>{user}</username>\
         <password>{pw}</password></query></iq>"
    ))
    .await;
    let reg = answer(c, "rg").await;
    (pre, reg)
}

fn is_result(iq_text: &str) -> bool {
    iq_text.contains("type='result'") || iq_text.contains("type=\"result\"")
}

#[tokio::test]
async fn an_invitation_from_the_app_makes_an_account_and_a_mutual_subscription() {
    let s = TestServer::start_with_https("[registration]\nmode = \"invite\"\n").await;
    s.add_user("alice", "pw");
    let mut alice = online(&s, "alice").await;
    roster(&mut alice).await;

    // The commands are listed for a local user; create-account is for admins.
    let items = alice
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='get' to='localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#items' node='{COMMANDS}'/></iq>"
        )))
        .await;
    let listed = text(&items);
    assert!(listed.contains("urn:xmpp:invite#invite"), "{listed}");
    assert!(!listed.contains("urn:xmpp:invite#create-account"), "{listed}");
    let info = alice
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#info' node='urn:xmpp:invite#invite'/></iq>",
        ))
        .await;
    assert!(text(&info).contains("command-node"), "{}", text(&info));

    let r = run_command(&mut alice, "urn:xmpp:invite#invite").await;
    assert_eq!(r.attr("type"), Some("result"), "{}", text(&r));
    assert_eq!(
        r.get_child("command", COMMANDS).unwrap().attr("status"),
        Some("completed")
    );
    let uri = field(&r, "uri").unwrap();
    let token = token_of(&uri);
    assert_eq!(uri, format!("xmpp:alice@localhost?roster;preauth={token};ibr=y"));
    let landing = field(&r, "landing-url").unwrap();
    assert_eq!(
        landing,
        format!("https://localhost:{}/invite/{token}", s.https.unwrap().port())
    );
    let expire = time::OffsetDateTime::parse(
        &field(&r, "expire").unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("XEP-0082 date-time");
    let days = (expire - time::OffsetDateTime::now_utc()).whole_hours();
    assert!((7 * 24 - 1..=7 * 24).contains(&days), "expires in 7 days: {expire}");

    // Monal's flow: ibr-token:0 offered, then <preauth/>, then registration.
    let (mut bob_raw, features) = unauthenticated(&s).await;
    assert!(features.contains("urn:xmpp:ibr-token:0"), "{features}");
    assert!(
        features.contains("urn:xmpp:invite"),
        "the legacy feature too: {features}"
    );
    let (pre, reg) = register_with(&mut bob_raw, &token, "bob", "pw-bob").await;
    assert!(is_result(&pre), "{pre}");
    assert!(is_result(&reg), "{reg}");

    // The inviter's client is told at once.
    let push = alice
        .expect("roster push for bob", |e| {
            e.name() == "iq" && e.attr("type") == Some("set") && text(e).contains("bob@localhost")
        })
        .await;
    assert!(text(&push).contains("subscription=\"both\"") || text(&push).contains("subscription='both'"));

    // bob's first login: alice is there, presence flows both ways.
    let mut bob = s.client("bob", "pw-bob", false).await;
    let r = roster(&mut bob).await;
    assert_eq!(
        subscription(&r, "alice@localhost").as_deref(),
        Some("both"),
        "{}",
        text(&r)
    );
    bob.send_el(xml("<presence xmlns='jabber:client'/>")).await;
    bob.expect("alice's presence", |e| {
        e.name() == "presence" && e.attr("from").is_some_and(|f| f.starts_with("alice@localhost/"))
    })
    .await;
    alice
        .expect("bob's presence", |e| {
            e.name() == "presence" && e.attr("from").is_some_and(|f| f.starts_with("bob@localhost/"))
        })
        .await;
    let r = roster(&mut alice).await;
    assert_eq!(subscription(&r, "bob@localhost").as_deref(), Some("both"));

    // The token is used up.
    let (mut again, _) = unauthenticated(&s).await;
    let (pre, _) = register_with(&mut again, &token, "mallory", "pw-m").await;
    assert!(pre.contains("item-not-found"), "{pre}");
    s.stop().await;
}

#[tokio::test]
async fn expired_and_used_tokens_are_refused_and_expiry_is_checked_at_preauth_only() {
    let s = TestServer::start_with("[registration]\nmode = \"invite\"\n").await;
    let store = pushbox::store::Store::open_in(&s.config.data_dir).unwrap();
    let token = |ttl: i64| {
        store
            .blocking(move |c| pushbox::store::invites::create(c, ttl, 1, false))
            .unwrap()
    };
    let expired = token(-60);

    let (mut c, _) = unauthenticated(&s).await;
    let (pre, _) = register_with(&mut c, &expired, "x1", "pw").await;
    assert!(pre.contains("item-not-found"), "expired: {pre}");
    // Without a token there is no account in invite mode.
    c.send("<iq type='set' id='r0'><query xmlns='jabber:iq:register'><username>x1</username><password>pw</password></query></iq>")
        .await;
    assert!(answer(&mut c, "r0").await.contains("not-allowed"));

    // Checked when presented, then good for this stream even after it expires.
    let (mut slow, _) = unauthenticated(&s).await;
    // Made just before use, so that `soon` is still good when presented
    // however slow the machine; `later` expires at the same second.
    let (soon, later) = (token(4), token(4));
    slow.send(&format!(
        "<iq type='set' id='pa' to='localhost'><preauth xmlns='urn:xmpp:pars:0' token='{soon}'/></iq>"
    ))
    .await;
    assert!(is_result(&answer(&mut slow, "pa").await));
    // `soon` was made first, so it has expired once `later` has.
    wait_until("the short invitations expire", || {
        !store
            .blocking(|c| pushbox::store::invites::is_valid(c, &later))
            .unwrap()
    })
    .await;
    let (mut late, _) = unauthenticated(&s).await;
    let (pre, _) = register_with(&mut late, &later, "x2", "pw").await;
    assert!(pre.contains("item-not-found"), "expired meanwhile: {pre}");
    slow.send("<iq type='set' id='rg'><query xmlns='jabber:iq:register'><username>slow</username><password>pw-slow</password></query></iq>")
        .await;
    assert!(is_result(&answer(&mut slow, "rg").await));
    s.client("slow", "pw-slow", false).await;

    // Used: a second stream with the same token is refused at <preauth/>,
    // and one that presented it before the first registration at registration.
    let shared = token(3600);
    let (mut a, _) = unauthenticated(&s).await;
    let (mut b, _) = unauthenticated(&s).await;
    a.send(&format!(
        "<iq type='set' id='pa'><preauth xmlns='urn:xmpp:pars:0' token='{shared}'/></iq>"
    ))
    .await;
    assert!(is_result(&answer(&mut a, "pa").await));
    let (pre, reg) = register_with(&mut b, &shared, "first", "pw-1").await;
    assert!(is_result(&pre) && is_result(&reg), "{pre} {reg}");
    a.send("<iq type='set' id='rg'><query xmlns='jabber:iq:register'><username>second</username><password>pw-2</password></query></iq>")
        .await;
    assert!(answer(&mut a, "rg").await.contains("not-allowed"), "used by the first");
    s.stop().await;
}

#[tokio::test]
async fn quotas_admin_commands_and_the_invite_list() {
    let s = TestServer::start_with("[registration]\nmode = \"invite\"\ninvites_per_user = 2\n").await;
    s.add_user("alice", "pw");
    let store = pushbox::store::Store::open_in(&s.config.data_dir).unwrap();
    store
        .blocking(|c| pushbox::store::accounts::create(c, "root", "pw", true).map(|_| ()))
        .unwrap();
    let mut alice = online(&s, "alice").await;
    for _ in 0..2 {
        let r = run_command(&mut alice, "urn:xmpp:invite#invite").await;
        assert_eq!(r.attr("type"), Some("result"), "{}", text(&r));
        assert!(field(&r, "landing-url").is_none(), "no https listener, no page");
    }
    let r = run_command(&mut alice, "urn:xmpp:invite#invite").await;
    assert_eq!(r.attr("type"), Some("error"));
    assert!(text(&r).contains("resource-constraint"), "{}", text(&r));
    let r = run_command(&mut alice, "urn:xmpp:invite#create-account").await;
    assert!(text(&r).contains("forbidden"), "{}", text(&r));

    let mut root = online(&s, "root").await;
    let items = root
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='get' to='localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#items' node='{COMMANDS}'/></iq>"
        )))
        .await;
    assert!(text(&items).contains("urn:xmpp:invite#create-account"));
    // Administrators have no quota.
    for _ in 0..3 {
        let r = run_command(&mut root, "urn:xmpp:invite#create-account").await;
        let uri = field(&r, "uri").unwrap_or_else(|| panic!("{}", text(&r)));
        assert!(uri.starts_with("xmpp:localhost?register;preauth="), "{uri}");
    }

    // `pushbox invite list` names who made each invitation.
    let cfg = s.dir.path().join("cli.toml");
    std::fs::write(
        &cfg,
        format!(
            "domain = \"localhost\"\ndata_dir = \"{}\"\n[registration]\nmode = \"invite\"\n",
            s.config.data_dir.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pushbox"))
        .args(["--config", cfg.to_str().unwrap(), "invite", "list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{list} {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 5, "{list}");
    assert_eq!(
        lines.iter().filter(|l| l.contains("made by alice@localhost")).count(),
        2,
        "{list}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("made by root@localhost")).count(),
        3,
        "{list}"
    );
    assert!(lines.iter().any(|l| l.contains("contact of alice@localhost")), "{list}");
    s.stop().await;
}

/// XEP-0379: an existing account uses alice's contact invitation in its
/// subscription request; alice's server approves it and asks back.
#[tokio::test]
async fn a_preauthenticated_subscription_becomes_mutual() {
    let s = TestServer::start().await;
    for u in ["alice", "dave", "erin"] {
        s.add_user(u, "pw");
    }
    let mut alice = online(&s, "alice").await;
    let r = run_command(&mut alice, "urn:xmpp:invite#invite").await;
    let uri = field(&r, "uri").unwrap();
    // Registration is closed here: the invitation still makes contacts.
    let note = text(&r);
    assert!(note.contains("<note"), "{note}");
    let token = token_of(&uri);

    let mut dave = online(&s, "dave").await;
    roster(&mut dave).await;
    dave.send_el(xml(&format!(
        "<presence xmlns='jabber:client' type='subscribe' to='alice@localhost'>\
         <preauth xmlns='urn:xmpp:pars:0' token='{token}'/></presence>"
    )))
    .await;
    dave.expect("approval", |e| {
        e.name() == "presence" && e.attr("type") == Some("subscribed")
    })
    .await;
    dave.expect("alice asks back", |e| {
        e.name() == "presence" && e.attr("type") == Some("subscribe") && e.attr("from") == Some("alice@localhost")
    })
    .await;
    dave.send_el(xml(
        "<presence xmlns='jabber:client' type='subscribed' to='alice@localhost'/>",
    ))
    .await;
    ping(&mut dave).await;
    let r = roster(&mut alice).await;
    assert_eq!(
        subscription(&r, "dave@localhost").as_deref(),
        Some("both"),
        "{}",
        text(&r)
    );
    let r = roster(&mut dave).await;
    assert_eq!(
        subscription(&r, "alice@localhost").as_deref(),
        Some("both"),
        "{}",
        text(&r)
    );

    // The token is used: erin's request with it waits for alice like any other.
    let mut erin = online(&s, "erin").await;
    erin.send_el(xml(&format!(
        "<presence xmlns='jabber:client' type='subscribe' to='alice@localhost'>\
         <preauth xmlns='urn:xmpp:pars:0' token='{token}'/></presence>"
    )))
    .await;
    alice
        .expect("erin's request", |e| {
            e.name() == "presence" && e.attr("type") == Some("subscribe") && e.attr("from") == Some("erin@localhost")
        })
        .await;
    ping(&mut erin).await;
    assert!(
        !erin.backlog.iter().any(|e| e.attr("type") == Some("subscribed")),
        "not approved"
    );
    s.stop().await;
}

/// An account made on the invitation page from alice's contact invitation:
/// the roster rows exist at once, alice's client hears of it at the new
/// account's first login.
#[tokio::test]
async fn an_account_from_the_page_tells_the_inviter_on_first_login() {
    let s = TestServer::start_with_https("[registration]\nmode = \"invite\"\n").await;
    s.add_user("alice", "pw");
    let mut alice = online(&s, "alice").await;
    roster(&mut alice).await;
    let r = run_command(&mut alice, "urn:xmpp:invite#invite").await;
    let landing = field(&r, "landing-url").unwrap();
    let http = pushbox::push::client::HttpsClient::new(Some(&test_ca().join("ca.pem"))).unwrap();
    let page = http
        .send(
            hyper::Request::get(&landing)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let html = String::from_utf8_lossy(page.body()).to_string();
    assert!(html.contains("alice@localhost</strong> invited you"), "{html}");
    assert!(html.contains("?roster;preauth="), "{html}");
    let made = http
        .send(
            hyper::Request::post(&landing)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    "username=frank&password=pw-frank-1&confirm=pw-frank-1",
                )))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(made.status(), 200, "{}", String::from_utf8_lossy(made.body()));
    let mut frank = s.client("frank", "pw-frank-1", false).await;
    let r = roster(&mut frank).await;
    assert_eq!(subscription(&r, "alice@localhost").as_deref(), Some("both"));
    frank.send_el(xml("<presence xmlns='jabber:client'/>")).await;
    alice
        .expect("roster push for frank", |e| {
            e.name() == "iq" && e.attr("type") == Some("set") && text(e).contains("frank@localhost")
        })
        .await;
    alice
        .expect("frank's presence", |e| {
            e.name() == "presence" && e.attr("from").is_some_and(|f| f.starts_with("frank@localhost/"))
        })
        .await;
    s.stop().await;
}

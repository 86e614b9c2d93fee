//! FAST (XEP-0484) against the real daemon: a token requested inside a
//! password login, a login with only the token (HT-SHA-256-NONE, one round
//! trip, mutual proof), rotation in the token's second half with the old
//! token kept until the new one is used, explicit invalidation, revocation
//! by a password change and by `pushbox user revoke`, and wrong, expired or
//! misplaced tokens refused and counted as failed logins.

mod common;
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use common::*;
use hmac::{digest::KeyInit, Hmac, Mac};
use sha2::Sha256;
use std::process::Command;

const PHONE: &str = "6f1c1f8a-4a59-4c36-9d61-1b0c7f5e2a10";
const LAPTOP: &str = "0a3e9a4e-7c1b-4d7e-8a52-5b9d6f3c2e41";

fn agent(id: &str) -> String {
    user_agent(id, "CI phone")
}

const FAST: &str = "HT-SHA-256-NONE";

/// HT-SHA-256-NONE's initial response: the user, NUL, and the token's
/// HMAC over "Initiator" (no channel binding data).
fn fast_initial(user: &str, token: &str) -> Vec<u8> {
    let mut initial = format!("{user}\0").into_bytes();
    initial.extend(hmac(token.as_bytes(), b"Initiator"));
    initial
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// A fresh TLS stream with its features read.
async fn fresh(s: &TestServer) -> (RawClient, String) {
    RawClient::features(s.c2s).await
}

/// Password login asking for a token; returns the token.
async fn token_by_password(s: &TestServer, ua: &str) -> String {
    let mut c = RawClient::connect_tls(s.c2s).await;
    let out = c
        .sasl2_plain(
            "alice",
            "pw",
            &format!(
                "{}<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/><bind xmlns='urn:xmpp:bind:0'/>",
                agent(ua)
            ),
        )
        .await;
    attr_after(&out, "<token xmlns='urn:xmpp:fast:0'", "token")
}

/// A FAST login: `Ok(everything up to the features)` or `Err(the failure)`.
async fn fast_login(c: &mut RawClient, user: &str, token: &str, ua: &str, extra: &str) -> Result<String, String> {
    c.send(&sasl2_authenticate(
        FAST,
        fast_initial(user, token),
        &format!("{}<fast xmlns='urn:xmpp:fast:0'/>{extra}", agent(ua)),
    ))
    .await;
    let r = c.read_until("</").await;
    if r.contains("<failure") {
        return Err(c.read_until("</failure>").await);
    }
    let out = c.read_until("</stream:features>").await;
    // The server proves it knew the token too.
    let additional = &out[out.find("<additional-data>").expect(&out) + 17..out.find("</additional-data>").unwrap()];
    assert_eq!(
        B64.decode(additional).unwrap(),
        hmac(token.as_bytes(), b"Responder"),
        "responder proof: {out}"
    );
    Ok(out)
}

async fn fast_ok(s: &TestServer, token: &str, ua: &str, extra: &str) -> String {
    let (mut c, _) = fresh(s).await;
    fast_login(&mut c, "alice", token, ua, extra)
        .await
        .unwrap_or_else(|f| panic!("FAST login refused: {f}"))
}

async fn fast_refused(s: &TestServer, token: &str, ua: &str) -> String {
    let (mut c, _) = fresh(s).await;
    match fast_login(&mut c, "alice", token, ua, "").await {
        Ok(out) => panic!("FAST login accepted: {out}"),
        Err(f) => f,
    }
}

fn tokens_table(s: &TestServer, sql: &str) {
    let store = pushbox::store::Store::open_in(&s.config.data_dir).unwrap();
    store.blocking(|c| Ok(c.execute_batch(sql)?)).unwrap();
}

#[tokio::test]
async fn a_token_is_issued_then_logs_in_alone() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let (_c, f) = fresh(&s).await;
    assert!(
        f.contains("<fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-NONE</mechanism></fast>"),
        "{f}"
    );
    let mut c = RawClient::connect_tls(s.c2s).await;
    let out = c
        .sasl2_plain(
            "alice",
            "pw",
            &format!(
                "{}<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/><bind xmlns='urn:xmpp:bind:0'><tag>Phone</tag></bind>",
                agent(PHONE)
            ),
        )
        .await;
    let success = &out[..out.find("</success>").unwrap()];
    let token = attr_after(success, "<token xmlns='urn:xmpp:fast:0'", "token");
    let expiry = attr_after(success, "<token xmlns='urn:xmpp:fast:0'", "expiry");
    let expiry = time::OffsetDateTime::parse(&expiry, &time::format_description::well_known::Rfc3339).unwrap();
    let left = expiry - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::days(20) && left <= time::Duration::days(21),
        "{left}"
    );
    let jid = authorization_identifier(&out);
    drop(c);

    // Only the token now: one request, one answer, a bound session.
    let out = fast_ok(
        &s,
        &token,
        PHONE,
        "<bind xmlns='urn:xmpp:bind:0'><tag>Phone</tag></bind>",
    )
    .await;
    assert_eq!(
        authorization_identifier(&out),
        jid,
        "the same installation, the same resource"
    );
    assert!(!out.contains("<token"), "a fresh token is not rotated: {out}");
    assert!(!out.contains("<challenge"), "one round trip: {out}");
    // The token rests only as verifier data.
    let store = pushbox::store::Store::open_in(&s.config.data_dir).unwrap();
    let hex_token_found: i64 = store
        .blocking(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM fast_tokens WHERE instr(verifier, ?1) OR instr(responder, ?1)",
                [token.as_bytes()],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert_eq!(hex_token_found, 0);
    s.stop().await;
}

#[tokio::test]
async fn rotation_keeps_the_old_token_until_the_new_one_is_used() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    let t1 = token_by_password(&s, PHONE).await;
    // Early in its life: used as is, no rotation (it moves to 'current').
    assert!(!fast_ok(&s, &t1, PHONE, "").await.contains("<token"));
    // Make it old: with less than half its life left, the server hands out a new one.
    tokens_table(&s, "UPDATE fast_tokens SET expires_at = strftime('%s','now') + 5*86400");
    let out = fast_ok(&s, &t1, PHONE, "").await;
    let t2 = attr_after(&out, "<token xmlns='urn:xmpp:fast:0'", "token");
    assert_ne!(t1, t2);
    // The client may not have received t2: t1 still works (and a newer t3 replaces t2).
    let out = fast_ok(&s, &t1, PHONE, "").await;
    let t3 = attr_after(&out, "<token xmlns='urn:xmpp:fast:0'", "token");
    let r = fast_refused(&s, &t2, PHONE).await;
    assert!(
        r.contains("<not-authorized"),
        "an unused token is replaced by the next: {r}"
    );
    // Using t3 ends t1.
    assert!(!fast_ok(&s, &t3, PHONE, "").await.contains("<token"));
    let r = fast_refused(&s, &t1, PHONE).await;
    assert!(r.contains("<not-authorized"), "{r}");
    // Asking explicitly always gets a new token.
    let out = fast_ok(
        &s,
        &t3,
        PHONE,
        "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>",
    )
    .await;
    assert!(out.contains("<token xmlns='urn:xmpp:fast:0'"), "{out}");
    s.stop().await;
}

#[tokio::test]
async fn tokens_are_bound_to_their_installation_and_end_on_request() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let t = token_by_password(&s, PHONE).await;
    // Another installation, another account, the token as a password: refused.
    assert!(fast_refused(&s, &t, LAPTOP).await.contains("<not-authorized"));
    let (mut c, _) = fresh(&s).await;
    assert!(fast_login(&mut c, "bob", &t, PHONE, "")
        .await
        .unwrap_err()
        .contains("<not-authorized"));
    let (mut c, _) = fresh(&s).await;
    c.send(&sasl2_authenticate("PLAIN", format!("\0alice\0{t}"), "")).await;
    assert!(c.read_until("</failure>").await.contains("<not-authorized"));
    // "Log out": a login with invalidate ends the token and issues none.
    let out = fast_ok(&s, &t, PHONE, "").await;
    assert!(!out.contains("<token"));
    let (mut c, _) = fresh(&s).await;
    c.send(&sasl2_authenticate(
        FAST,
        fast_initial("alice", &t),
        &format!("{}<fast xmlns='urn:xmpp:fast:0' invalidate='true'/>", agent(PHONE)),
    ))
    .await;
    let out = c.read_until("</stream:features>").await;
    assert!(out.contains("<success") && !out.contains("<token"), "{out}");
    assert!(fast_refused(&s, &t, PHONE).await.contains("<not-authorized"));
    s.stop().await;
}

#[tokio::test]
async fn wrong_and_expired_tokens_count_as_failed_logins() {
    let s = TestServer::start_with("[limits]\nconnections_per_ip_per_minute = 1000\nmax_auth_failures = 3\n").await;
    s.add_user("alice", "pw");
    let t = token_by_password(&s, PHONE).await;
    tokens_table(&s, "UPDATE fast_tokens SET expires_at = strftime('%s','now') - 1");
    let (mut c, _) = fresh(&s).await;
    let r = fast_login(&mut c, "alice", &t, PHONE, "").await.unwrap_err();
    assert!(r.contains("<credentials-expired"), "{r}");
    c.received.clear();
    let r = fast_login(&mut c, "alice", "not-the-token", PHONE, "")
        .await
        .unwrap_err();
    assert!(r.contains("<not-authorized"), "{r}");
    c.received.clear();
    // The third wrong credential on this stream ends it.
    c.send(&sasl2_authenticate(FAST, fast_initial("alice", "guess"), &agent(PHONE)))
        .await;
    let end = c.read_to_end().await;
    assert!(
        end.contains("<not-authorized") && end.contains("<policy-violation"),
        "{end}"
    );
    // Malformed: not counted, and answered as such.
    let (mut c, _) = fresh(&s).await;
    c.send(&sasl2_authenticate(FAST, "alice-without-proof", &agent(PHONE)))
        .await;
    assert!(c.read_until("</failure>").await.contains("<malformed-request"));
    s.stop().await;
}

#[tokio::test]
async fn a_password_change_and_the_cli_revoke_tokens() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    // In-band password change (XEP-0077) ends every token of the account.
    let t = token_by_password(&s, PHONE).await;
    let (mut c, _) = RawClient::login_with(s.c2s, "alice", "pw", None, Login::Bind2).await;
    c.send("<iq type='set' id='pw'><query xmlns='jabber:iq:register'><username>alice</username><password>pw2</password></query></iq>")
        .await;
    let r = c.read_until("id='pw'").await;
    assert!(!r.contains("type='error'"), "{r}");
    assert!(fast_refused(&s, &t, PHONE).await.contains("<not-authorized"));

    // `pushbox user devices` and `pushbox user revoke`.
    let cfg = s.dir.path().join("cli.toml");
    std::fs::write(
        &cfg,
        format!(
            "domain = \"localhost\"\ndata_dir = {:?}\n",
            s.config.data_dir.display().to_string()
        ),
    )
    .unwrap();
    let mut c = RawClient::connect_tls(s.c2s).await;
    let out = c
        .sasl2_plain(
            "alice",
            "pw2",
            &format!(
                "{}<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>",
                agent(LAPTOP)
            ),
        )
        .await;
    let t2 = attr_after(&out, "<token xmlns='urn:xmpp:fast:0'", "token");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pushbox"))
            .env_remove("PUSHBOX_CONFIG")
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, list) = run(&["user", "devices", "alice"]);
    assert_eq!(code, Some(0), "{list}");
    let laptop_line = list.lines().find(|l| l.starts_with(LAPTOP)).expect(&list);
    assert!(
        laptop_line.contains("pushbox tests") && laptop_line.contains("CI phone"),
        "{laptop_line}"
    );
    assert!(!laptop_line.ends_with("\t-"), "it has a token: {laptop_line}");
    let phone_line = list.lines().find(|l| l.starts_with(PHONE)).expect(&list);
    assert!(
        phone_line.ends_with("\t-"),
        "its token ended with the password: {phone_line}"
    );
    let (code, out) = run(&["user", "revoke", "alice", &LAPTOP[..8]]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(LAPTOP) && out.contains("1 token"), "{out}");
    assert!(fast_refused(&s, &t2, LAPTOP).await.contains("<not-authorized"));
    let (code, out) = run(&["user", "revoke", "alice", "nope"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no device"), "{out}");
    let (code, out) = run(&["user", "devices", "nobody"]);
    assert_ne!(code, Some(0), "{out}");
    s.stop().await;
}

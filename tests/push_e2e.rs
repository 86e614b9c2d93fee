//! The seed's whole loop in one daemon: a phone registers its device with
//! the app server `push.localhost` through the ad-hoc command, enables
//! XEP-0357 push, falls asleep; a message arrives; the APNs stand-in gets
//! exactly one correct push.

mod common;
mod support;
use common::*;

#[tokio::test]
async fn sleeping_phone_gets_exactly_one_apns_push() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::TestCa::new(dir.path());
    let apns = support::ApnsStandIn::start(&ca, dir.path()).await;
    let s = TestServer::start_with(&apns.config(&ca)).await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let device = support::apns_token();
    let mut a = RawClient::login_as(s.c2s, "alice", "pw", Some("phone")).await;

    // The app server is discoverable as pubsub/push with ad-hoc commands.
    a.send("<iq type='get' id='d1' to='push.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let d = a.read_until("</iq>").await;
    assert!(d.contains("category='pubsub'") && d.contains("type='push'"), "{d}");
    a.received.clear();

    // Register like Conversations' p2 does.
    a.send(&format!(
        "<iq type='set' id='reg' to='push.localhost'><command xmlns='http://jabber.org/protocol/commands' node='register-push-apns' action='execute'>\
         <x xmlns='jabber:x:data' type='submit'><field var='token'><value>{device}</value></field><field var='device-id'><value>phone-1</value></field></x></command></iq>"
    ))
    .await;
    let r = a.read_until("</iq>").await;
    assert!(r.contains("status='completed'"), "{r}");
    let (jid, node, secret) = (form_field(&r, "jid"), form_field(&r, "node"), form_field(&r, "secret"));
    assert_eq!(jid, "push.localhost");
    assert!(node.len() >= 32 && secret.len() >= 32, "{r}");
    a.received.clear();

    a.send(&format!(
        "<iq type='set' id='en'><enable xmlns='urn:xmpp:push:0' jid='{jid}' node='{node}'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var='secret'><value>{secret}</value></field></x></enable></iq>"
    ))
    .await;
    let r = a.read_until("id='en'").await;
    assert!(!r.contains("type='error'"), "{r}");
    a.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await;
    a.read_until("<enabled").await;
    a.send("<presence/>").await;
    a.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    a.read_until("id='p'").await;
    drop(a); // asleep: the connection is gone, the session hibernates

    let mut b = RawClient::login(s.c2s, "bob", "pw").await;
    b.send("<message type='chat' to='alice@localhost'><body>wake up</body></message>")
        .await;
    let path = format!("/3/device/{device}");
    let seen = apns.log.wait_for(1, |x| x.path == path).await;
    let push = &seen[0];
    assert_eq!(
        push.headers.get("apns-push-type").unwrap(),
        "alert",
        "a message with a body is an alert"
    );
    assert_eq!(push.headers.get("apns-priority").unwrap(), "10");
    assert_eq!(push.headers.get("apns-topic").unwrap(), support::APNS_TOPIC);
    assert!(
        !push.body.to_string().contains("wake up"),
        "the relay never sees message text: {}",
        push.body
    );
    assert!(apns.log.violations().is_empty(), "{:?}", apns.log.violations());

    // A wrong secret is refused, and nothing more reached APNs.
    b.send(&format!(
        "<iq type='set' id='forged' to='push.localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{node}'><item><notification xmlns='urn:xmpp:push:0'/></item></publish>\
         <publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>wrong</value></field></x></publish-options></pubsub></iq>"
    ))
    .await;
    let r = b.read_until("id='forged'").await;
    let r = if r.contains("</iq>") {
        r
    } else {
        b.read_until("</iq>").await
    };
    assert!(r.contains("<forbidden"), "{r}");
    b.received.clear();
    b.send("<iq type='set' id='nonode' to='push.localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='unknown'><item/></publish></pubsub></iq>").await;
    let r = b.read_until("</iq>").await;
    assert!(r.contains("item-not-found"), "{r}");
    assert_eq!(
        apns.log.seen().iter().filter(|x| x.path == path).count(),
        1,
        "exactly one push"
    );
    s.stop().await;
}

//! Group chat (XEP-0045) on `groups.localhost`, driven by tokio-xmpp
//! clients against the real daemon: creation and configuration, a private
//! group (members-only, non-anonymous), affiliations and roles, history,
//! the room archive, moderation, self-ping, occupant-id, private messages,
//! invitations, persistence across a restart and pushes for members who
//! sleep or are not joined.

mod common;
mod support;
use common::*;
use minidom::Element;

const ROOM: &str = "club@groups.localhost";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";

fn codes(p: &Element) -> Vec<String> {
    p.get_child("x", MUC_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.name() == "status")
                .filter_map(|c| c.attr("code").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn item(p: &Element) -> Element {
    p.get_child("x", MUC_USER)
        .and_then(|x| x.get_child("item", MUC_USER))
        .cloned()
        .unwrap_or_else(|| panic!("no muc#user item in {}", String::from(p)))
}

fn s(e: &Element) -> String {
    String::from(e)
}

fn is_error(e: &Element, condition: &str) -> bool {
    e.attr("type") == Some("error") && s(e).contains(&format!("<{condition} "))
}

/// Send a join and wait for the own presence (110) or an error.
async fn join_raw(c: &mut TestClient, room: &str, nick: &str, extra: &str) -> Element {
    // Earlier presences from the room are not the answer to this join.
    c.backlog
        .retain(|e| !(e.name() == "presence" && e.attr("from").is_some_and(|f| f.starts_with(room))));
    c.send_el(xml(&format!(
        "<presence xmlns='jabber:client' to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'>{extra}</x></presence>"
    )))
    .await;
    let room = room.to_string();
    c.expect("own presence or error", |e| {
        e.name() == "presence"
            && e.attr("from").is_some_and(|f| f.starts_with(&room))
            && (e.attr("type") == Some("error") || codes(e).iter().any(|x| x == "110"))
    })
    .await
}

/// Join and wait for the subject, which ends the join sequence.
async fn join(c: &mut TestClient, room: &str, nick: &str) -> Element {
    let own = join_raw(c, room, nick, "").await;
    assert_ne!(own.attr("type"), Some("error"), "{}", s(&own));
    subject(c, room).await;
    own
}

async fn subject(c: &mut TestClient, room: &str) -> Element {
    let room = room.to_string();
    c.expect("subject", |e| {
        e.name() == "message"
            && e.attr("from").is_some_and(|f| f.starts_with(&room))
            && e.get_child("subject", "jabber:client").is_some()
    })
    .await
}

async fn iq_ok(c: &mut TestClient, x: &str) -> Element {
    let r = c.iq(xml(x)).await;
    assert_eq!(r.attr("type"), Some("result"), "{x} => {}", s(&r));
    r
}

/// Create `room` as `c` (nick `nick`) and configure it as Conversations
/// configures a private group: members-only, non-anonymous, persistent.
async fn private_group(c: &mut TestClient, room: &str, nick: &str) {
    let own = join(c, room, nick).await;
    let cs = codes(&own);
    assert!(cs.contains(&"201".into()) && cs.contains(&"110".into()), "{}", s(&own));
    assert_eq!(item(&own).attr("affiliation"), Some("owner"));
    let form = iq_ok(
        c,
        &format!("<iq xmlns='jabber:client' type='get' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>"),
    )
    .await;
    assert!(s(&form).contains("muc#roomconfig_membersonly"), "{}", s(&form));
    iq_ok(
        c,
        &format!(
            "<iq xmlns='jabber:client' type='set' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
             <x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
             <field var='muc#roomconfig_roomname'><value>The club</value></field>\
             <field var='muc#roomconfig_persistentroom'><value>1</value></field>\
             <field var='muc#roomconfig_membersonly'><value>1</value></field>\
             <field var='muc#roomconfig_whois'><value>anyone</value></field>\
             </x></query></iq>"
        ),
    )
    .await;
}

async fn set_affiliation(c: &mut TestClient, room: &str, jid: &str, aff: &str) -> Element {
    c.iq(xml(&format!(
        "<iq xmlns='jabber:client' type='set' to='{room}'><query xmlns='http://jabber.org/protocol/muc#admin'>\
         <item jid='{jid}' affiliation='{aff}'><reason>because</reason></item></query></iq>"
    )))
    .await
}

async fn say(c: &mut TestClient, room: &str, body: &str) -> Element {
    let id = format!("m{}", rand_id());
    c.send_el(xml(&format!(
        "<message xmlns='jabber:client' type='groupchat' to='{room}' id='{id}'><body>{body}</body></message>"
    )))
    .await;
    // The room reflects it to the sender with the same id.
    c.expect("reflection", |e| {
        e.name() == "message" && e.attr("id") == Some(id.as_str())
    })
    .await
}

async fn hear(c: &mut TestClient, body: &str) -> Element {
    let body = body.to_string();
    c.expect("group message", |e| {
        e.name() == "message"
            && e.attr("type") == Some("groupchat")
            && e.get_child("body", "jabber:client").is_some_and(|b| b.text() == body)
    })
    .await
}

fn stanza_id(m: &Element) -> String {
    m.get_child("stanza-id", "urn:xmpp:sid:0")
        .filter(|x| x.attr("by") == Some(ROOM))
        .and_then(|x| x.attr("id"))
        .unwrap_or_else(|| panic!("no stanza-id by the room in {}", s(m)))
        .to_string()
}

fn occupant_id(e: &Element) -> String {
    e.get_child("occupant-id", "urn:xmpp:occupant-id:0")
        .and_then(|x| x.attr("id"))
        .unwrap_or_else(|| panic!("no occupant-id in {}", s(e)))
        .to_string()
}

fn users(s: &TestServer, names: &[&str]) {
    for n in names {
        s.add_user(n, "pw");
    }
}

#[tokio::test]
async fn a_private_group_from_creation_to_history() {
    let srv = TestServer::start().await;
    users(&srv, &["alice", "bob", "carol"]);
    let mut a = online(&srv, "alice").await;
    let mut b = online(&srv, "bob").await;

    // The service is discoverable from the domain.
    let items = iq_ok(
        &mut a,
        "<iq xmlns='jabber:client' type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
    )
    .await;
    assert!(s(&items).contains("groups.localhost"), "{}", s(&items));
    let info = iq_ok(
        &mut a,
        "<iq xmlns='jabber:client' type='get' to='groups.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .await;
    assert!(s(&info).contains("category='conference'") && s(&info).contains("http://jabber.org/protocol/muc"));

    // A new room is locked until its owner configures it.
    a.send_el(xml(&format!(
        "<presence xmlns='jabber:client' to='{ROOM}/Alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    )))
    .await;
    let own = a
        .expect("own presence", |e| {
            e.name() == "presence" && codes(e).contains(&"110".into())
        })
        .await;
    assert!(codes(&own).contains(&"201".into()));
    subject(&mut a, ROOM).await;
    let r = join_raw(&mut b, ROOM, "Bob", "").await;
    assert!(is_error(&r, "item-not-found"), "{}", s(&r));
    iq_ok(
        &mut a,
        &format!(
            "<iq xmlns='jabber:client' type='set' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
             <x xmlns='jabber:x:data' type='submit'>\
             <field var='muc#roomconfig_persistentroom'><value>1</value></field>\
             <field var='muc#roomconfig_membersonly'><value>1</value></field>\
             <field var='muc#roomconfig_whois'><value>anyone</value></field>\
             <field var='muc#roomconfig_historylength'><value>5</value></field></x></query></iq>"
        ),
    )
    .await;

    // Members only: Bob needs to be made a member first.
    let r = join_raw(&mut b, ROOM, "Bob", "").await;
    assert!(is_error(&r, "registration-required"), "{}", s(&r));
    let r = set_affiliation(&mut b, ROOM, "bob@localhost", "member").await;
    assert!(is_error(&r, "forbidden"), "a non-member cannot make members: {}", s(&r));
    let r = set_affiliation(&mut a, ROOM, "bob@localhost", "member").await;
    assert_eq!(r.attr("type"), Some("result"), "{}", s(&r));

    // Bob enters: Alice's presence first, then his own with 110 and 100
    // (non-anonymous), then the subject.
    b.send_el(xml(&format!(
        "<presence xmlns='jabber:client' to='{ROOM}/Bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    )))
    .await;
    let alice_seen = b
        .expect("alice's presence", |e| {
            e.name() == "presence" && e.attr("from") == Some(&format!("{ROOM}/Alice"))
        })
        .await;
    assert_eq!(item(&alice_seen).attr("role"), Some("moderator"));
    assert!(
        item(&alice_seen)
            .attr("jid")
            .is_some_and(|j| j.starts_with("alice@localhost/")),
        "non-anonymous"
    );
    let own = b
        .expect("own presence", |e| {
            e.name() == "presence" && codes(e).contains(&"110".into())
        })
        .await;
    assert!(codes(&own).contains(&"100".into()), "{}", s(&own));
    assert_eq!(item(&own).attr("affiliation"), Some("member"));
    assert_eq!(item(&own).attr("role"), Some("participant"));
    subject(&mut b, ROOM).await;
    let bob_seen = a
        .expect("bob's presence", |e| {
            e.name() == "presence" && e.attr("from") == Some(&format!("{ROOM}/Bob"))
        })
        .await;
    assert_eq!(
        occupant_id(&bob_seen),
        occupant_id(&own),
        "one occupant-id for everyone"
    );

    // Messages: reflected with the same id, a stanza-id by the room and the
    // sender's occupant-id; forged ones are replaced.
    b.send_el(xml(&format!(
        "<message xmlns='jabber:client' type='groupchat' to='{ROOM}' id='forge'><body>hello</body>\
         <stanza-id xmlns='urn:xmpp:sid:0' by='{ROOM}' id='forged'/><occupant-id xmlns='urn:xmpp:occupant-id:0' id='forged'/></message>"
    )))
    .await;
    let reflected = b.expect("reflection", |e| e.attr("id") == Some("forge")).await;
    let heard = hear(&mut a, "hello").await;
    assert_eq!(heard.attr("from"), Some(&format!("{ROOM}/Bob")[..]));
    assert_eq!(stanza_id(&heard), stanza_id(&reflected));
    assert_ne!(stanza_id(&heard), "forged");
    assert_eq!(occupant_id(&heard), occupant_id(&own));
    assert_eq!(s(&heard).matches("<occupant-id").count(), 1, "{}", s(&heard));
    for i in 0..3 {
        say(&mut a, ROOM, &format!("news {i}")).await;
    }

    // Carol, made a member by an invitation from the owner, joins and gets
    // the last two messages of history, stamped by the room.
    let mut c = online(&srv, "carol").await;
    a.send_el(xml(&format!(
        "<message xmlns='jabber:client' to='{ROOM}'><x xmlns='{MUC_USER}'><invite to='carol@localhost'><reason>join us</reason></invite></x></message>"
    )))
    .await;
    let inv = c
        .expect("invitation", |e| {
            e.name() == "message" && e.get_child("x", MUC_USER).is_some()
        })
        .await;
    assert!(
        s(&inv).contains("from='alice@localhost'") && s(&inv).contains("join us"),
        "{}",
        s(&inv)
    );
    join_raw(&mut c, ROOM, "Carol", "<history maxstanzas='2'/>").await;
    let h1 = c
        .expect("history", |e| e.get_child("delay", "urn:xmpp:delay").is_some())
        .await;
    let h2 = c
        .expect("history", |e| e.get_child("delay", "urn:xmpp:delay").is_some())
        .await;
    assert_eq!(h1.get_child("body", "jabber:client").unwrap().text(), "news 1");
    assert_eq!(h2.get_child("body", "jabber:client").unwrap().text(), "news 2");
    assert_eq!(
        h1.get_child("delay", "urn:xmpp:delay").unwrap().attr("from"),
        Some(ROOM)
    );
    subject(&mut c, ROOM).await;

    // The member list is readable by members (how clients find OMEMO devices).
    let list = iq_ok(
        &mut c,
        &format!("<iq xmlns='jabber:client' type='get' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='member'/></query></iq>"),
    )
    .await;
    assert!(
        s(&list).contains("bob@localhost") && s(&list).contains("carol@localhost"),
        "{}",
        s(&list)
    );

    // Room disco#info says what the room is.
    let info = iq_ok(
        &mut c,
        &format!("<iq xmlns='jabber:client' type='get' to='{ROOM}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
    )
    .await;
    for f in [
        "muc_membersonly",
        "muc_nonanonymous",
        "muc_persistent",
        "urn:xmpp:mam:2",
        "urn:xmpp:occupant-id:0",
        "muc#roominfo",
    ] {
        assert!(s(&info).contains(f), "{f} in {}", s(&info));
    }
    srv.stop().await;
}

#[tokio::test]
async fn roles_affiliations_kick_ban_and_nick_changes() {
    let srv = TestServer::start().await;
    users(&srv, &["alice", "bob", "eve"]);
    let mut a = online(&srv, "alice").await;
    let mut b = online(&srv, "bob").await;
    let mut e = online(&srv, "eve").await;
    let room = "open@groups.localhost";
    join(&mut a, room, "Alice").await;
    iq_ok(
        &mut a,
        &format!("<iq xmlns='jabber:client' type='set' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"),
    )
    .await;
    join(&mut b, room, "Bob").await;

    // Nicknames: taken, empty-looking and spoofing ones are refused.
    let r = join_raw(&mut e, room, "Bob", "").await;
    assert!(is_error(&r, "conflict"), "{}", s(&r));
    let r = join_raw(&mut e, room, " Eve", "").await;
    assert_eq!(r.attr("type"), Some("error"), "{}", s(&r));
    join(&mut e, room, "Eve").await;

    // Semi-anonymous by default: Bob does not see Eve's address, Alice
    // (a moderator) does.
    let seen_by_b = b
        .expect("eve", |x| x.attr("from") == Some("open@groups.localhost/Eve"))
        .await;
    assert!(item(&seen_by_b).attr("jid").is_none(), "{}", s(&seen_by_b));
    let seen_by_a = a
        .expect("eve", |x| x.attr("from") == Some("open@groups.localhost/Eve"))
        .await;
    assert!(item(&seen_by_a).attr("jid").is_some());

    // Nick change: 303 with the new nick, then the new presence.
    e.send_el(xml(&format!("<presence xmlns='jabber:client' to='{room}/Evelyn'/>")))
        .await;
    let gone = b
        .expect("303", |x| {
            x.attr("from") == Some("open@groups.localhost/Eve") && codes(x).contains(&"303".into())
        })
        .await;
    assert_eq!(item(&gone).attr("nick"), Some("Evelyn"));
    b.expect("new nick", |x| {
        x.attr("from") == Some("open@groups.localhost/Evelyn") && x.attr("type").is_none()
    })
    .await;

    // Bob (a participant) may not kick; Alice may (307).
    let r = b
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='set' to='{room}'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='Evelyn' role='none'/></query></iq>"
        )))
        .await;
    assert!(is_error(&r, "forbidden"), "{}", s(&r));
    iq_ok(
        &mut a,
        &format!("<iq xmlns='jabber:client' type='set' to='{room}'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='Evelyn' role='none'><reason>spam</reason></item></query></iq>"),
    )
    .await;
    let kicked = e
        .expect("kicked", |x| x.name() == "presence" && codes(x).contains(&"307".into()))
        .await;
    assert!(
        codes(&kicked).contains(&"110".into()) && s(&kicked).contains("spam"),
        "{}",
        s(&kicked)
    );
    b.expect("kick seen", |x| {
        x.attr("from") == Some("open@groups.localhost/Evelyn") && codes(x).contains(&"307".into())
    })
    .await;

    // Eve comes back; a ban (301) removes her and keeps her out.
    join(&mut e, room, "Eve").await;
    let r = set_affiliation(&mut a, room, "eve@localhost", "outcast").await;
    assert_eq!(r.attr("type"), Some("result"), "{}", s(&r));
    e.expect("banned", |x| x.name() == "presence" && codes(x).contains(&"301".into()))
        .await;
    let r = join_raw(&mut e, room, "Eve", "").await;
    assert!(is_error(&r, "forbidden"), "{}", s(&r));
    let r = e
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='set' to='{room}'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='alice@localhost' affiliation='none'/></query></iq>"
        )))
        .await;
    assert!(is_error(&r, "forbidden"), "{}", s(&r));

    // The last owner cannot leave the room ownerless.
    let r = set_affiliation(&mut a, room, "alice@localhost", "member").await;
    assert!(is_error(&r, "conflict"), "{}", s(&r));

    // Voice: in a moderated room a visitor may not speak until given voice.
    iq_ok(
        &mut a,
        &format!(
            "<iq xmlns='jabber:client' type='set' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>\
             <field var='muc#roomconfig_moderatedroom'><value>1</value></field></x></query></iq>"
        ),
    )
    .await;
    iq_ok(
        &mut a,
        &format!("<iq xmlns='jabber:client' type='set' to='{room}'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='Bob' role='visitor'/></query></iq>"),
    )
    .await;
    b.send_el(xml(&format!(
        "<message xmlns='jabber:client' type='groupchat' to='{room}' id='muted'><body>hm</body></message>"
    )))
    .await;
    let r = b.expect("refused", |x| x.attr("id") == Some("muted")).await;
    assert!(is_error(&r, "forbidden"), "{}", s(&r));
    iq_ok(
        &mut a,
        &format!("<iq xmlns='jabber:client' type='set' to='{room}'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='Bob' role='participant'/></query></iq>"),
    )
    .await;
    say(&mut b, room, "thanks").await;

    // Subject: moderators may set it, everyone hears it.
    a.send_el(xml(&format!(
        "<message xmlns='jabber:client' type='groupchat' to='{room}'><subject>Rules</subject></message>"
    )))
    .await;
    let subj = subject(&mut b, room).await;
    assert_eq!(subj.get_child("subject", "jabber:client").unwrap().text(), "Rules");
    b.send_el(xml(&format!(
        "<message xmlns='jabber:client' type='groupchat' to='{room}' id='subj'><subject>Mine</subject></message>"
    )))
    .await;
    let r = b.expect("refused", |x| x.attr("id") == Some("subj")).await;
    assert!(is_error(&r, "forbidden"), "{}", s(&r));

    // Destroy with an alternate venue: everyone leaves with <destroy/>.
    iq_ok(
        &mut a,
        &format!(
            "<iq xmlns='jabber:client' type='set' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
             <destroy jid='new@groups.localhost'><reason>moved</reason></destroy></query></iq>"
        ),
    )
    .await;
    let d = b
        .expect("destroyed", |x| x.name() == "presence" && s(x).contains("<destroy"))
        .await;
    assert!(
        s(&d).contains("new@groups.localhost") && s(&d).contains("moved"),
        "{}",
        s(&d)
    );
    let r = b
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='get' to='{room}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
        )))
        .await;
    assert!(is_error(&r, "item-not-found"), "{}", s(&r));
    srv.stop().await;
}

#[tokio::test]
async fn archive_moderation_self_ping_private_messages_and_restart() {
    let mut srv = TestServer::start().await;
    users(&srv, &["alice", "bob"]);
    let mut a = online(&srv, "alice").await;
    let mut b = online(&srv, "bob").await;
    private_group(&mut a, ROOM, "Alice").await;
    set_affiliation(&mut a, ROOM, "bob@localhost", "member").await;
    let own_b = join(&mut b, ROOM, "Bob").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let m = say(&mut b, ROOM, &format!("archived {i}")).await;
        ids.push(stanza_id(&m));
    }

    // The room archive, paged with RSM.
    let fin = iq_ok(
        &mut b,
        &format!(
            "<iq xmlns='jabber:client' type='set' to='{ROOM}'><query xmlns='urn:xmpp:mam:2' queryid='q1'>\
             <set xmlns='http://jabber.org/protocol/rsm'><max>3</max></set></query></iq>"
        ),
    )
    .await;
    assert!(
        s(&fin).contains("<fin") && !s(&fin).contains("complete='true'"),
        "{}",
        s(&fin)
    );
    let mut got = Vec::new();
    while let Some(i) = b.backlog.iter().position(|e| e.has_child("result", "urn:xmpp:mam:2")) {
        got.push(b.backlog.remove(i).unwrap());
    }
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].attr("from"), Some(ROOM));
    assert!(s(&got[0]).contains("archived 0"));
    assert_eq!(
        got[2].get_child("result", "urn:xmpp:mam:2").unwrap().attr("id"),
        Some(ids[2].as_str())
    );

    // Moderation: Bob may not retract; Alice (a moderator) may, for everyone
    // and in the archive.
    let r = b
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='set' to='{ROOM}'><moderate xmlns='urn:xmpp:message-moderate:1' id='{}'><retract xmlns='urn:xmpp:message-retract:1'/></moderate></iq>",
            ids[1]
        )))
        .await;
    assert!(is_error(&r, "forbidden"), "{}", s(&r));
    iq_ok(
        &mut a,
        &format!(
            "<iq xmlns='jabber:client' type='set' to='{ROOM}'><moderate xmlns='urn:xmpp:message-moderate:1' id='{}'><retract xmlns='urn:xmpp:message-retract:1'/><reason>off topic</reason></moderate></iq>",
            ids[1]
        ),
    )
    .await;
    let ret = b
        .expect("retraction", |e| {
            e.get_child("retract", "urn:xmpp:message-retract:1").is_some()
        })
        .await;
    assert_eq!(
        ret.get_child("retract", "urn:xmpp:message-retract:1")
            .unwrap()
            .attr("id"),
        Some(ids[1].as_str())
    );
    b.backlog.clear();
    iq_ok(
        &mut b,
        &format!("<iq xmlns='jabber:client' type='set' to='{ROOM}'><query xmlns='urn:xmpp:mam:2'/></iq>"),
    )
    .await;
    let all: String = b.backlog.iter().map(s).collect();
    assert!(
        !all.contains("archived 1") && all.contains("archived 2") && all.contains("retracted"),
        "{all}"
    );
    b.backlog.clear();

    // Self-ping answers while joined; a stranger's ping is refused.
    iq_ok(
        &mut b,
        &format!("<iq xmlns='jabber:client' type='get' to='{ROOM}/Bob'><ping xmlns='urn:xmpp:ping'/></iq>"),
    )
    .await;
    // An IQ to another occupant is forwarded and answered through the room.
    b.send_el(xml(&format!(
        "<iq xmlns='jabber:client' type='get' id='fw' to='{ROOM}/Alice'><query xmlns='jabber:iq:version'/></iq>"
    )))
    .await;
    let asked = a
        .expect("forwarded iq", |e| {
            e.name() == "iq" && e.attr("from") == Some(&format!("{ROOM}/Bob")[..])
        })
        .await;
    assert_ne!(asked.attr("id"), Some("fw"), "the room uses its own id");
    a.send_el(xml(&format!(
        "<iq xmlns='jabber:client' type='result' id='{}' to='{ROOM}/Bob'><query xmlns='jabber:iq:version'><name>test</name></query></iq>",
        asked.attr("id").unwrap()
    )))
    .await;
    let answer = b.expect("answer", |e| e.attr("id") == Some("fw")).await;
    assert_eq!(answer.attr("type"), Some("result"), "{}", s(&answer));
    assert_eq!(
        answer.attr("from"),
        Some(&format!("{ROOM}/Alice")[..]),
        "{}",
        s(&answer)
    );

    // Private messages carry the sender's room JID and muc#user.
    b.send_el(xml(&format!(
        "<message xmlns='jabber:client' type='chat' to='{ROOM}/Alice'><body>psst</body></message>"
    )))
    .await;
    let pm = a
        .expect("pm", |e| {
            e.get_child("body", "jabber:client").is_some_and(|x| x.text() == "psst")
        })
        .await;
    assert_eq!(pm.attr("from"), Some(&format!("{ROOM}/Bob")[..]));
    assert!(pm.get_child("x", MUC_USER).is_some());

    // The room survives a restart: configuration, members, archive, and the
    // same occupant-id for Bob.
    srv.restart().await;
    let mut a = srv.client("alice", "pw", false).await;
    let mut b = srv.client("bob", "pw", false).await;
    let mut stranger = {
        srv.add_user("zed", "pw");
        srv.client("zed", "pw", false).await
    };
    let r = stranger
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='get' to='{ROOM}/Bob'><ping xmlns='urn:xmpp:ping'/></iq>"
        )))
        .await;
    assert!(is_error(&r, "not-acceptable"), "{}", s(&r));
    let r = join_raw(&mut stranger, ROOM, "Zed", "").await;
    assert!(
        is_error(&r, "registration-required"),
        "members-only after a restart: {}",
        s(&r)
    );
    join(&mut a, ROOM, "Alice").await;
    let again = join(&mut b, ROOM, "Bobby").await;
    assert_eq!(
        occupant_id(&again),
        occupant_id(&own_b),
        "occupant-id is stable per real JID"
    );
    iq_ok(
        &mut b,
        &format!("<iq xmlns='jabber:client' type='set' to='{ROOM}'><query xmlns='urn:xmpp:mam:2'/></iq>"),
    )
    .await;
    let all: String = b.backlog.iter().map(s).collect();
    assert!(all.contains("archived 4"), "{all}");
    srv.stop().await;
}

#[tokio::test]
async fn limits_and_bad_input() {
    let srv = TestServer::start_with("[muc]\nmax_occupants = 2\nmax_rooms_per_user = 1\n").await;
    users(&srv, &["alice", "bob", "carol"]);
    let mut a = online(&srv, "alice").await;
    let mut b = online(&srv, "bob").await;
    let mut c = online(&srv, "carol").await;
    join(&mut a, "one@groups.localhost", "A").await;
    iq_ok(
        &mut a,
        "<iq xmlns='jabber:client' type='set' to='one@groups.localhost'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>",
    )
    .await;
    // Rooms per user.
    let r = join_raw(&mut a, "two@groups.localhost", "A", "").await;
    assert!(is_error(&r, "not-allowed"), "{}", s(&r));
    // Occupants per room.
    join(&mut b, "one@groups.localhost", "B").await;
    let r = join_raw(&mut c, "one@groups.localhost", "C", "").await;
    assert!(is_error(&r, "service-unavailable"), "{}", s(&r));
    // A message from someone not in the room.
    c.send_el(xml(
        "<message xmlns='jabber:client' type='groupchat' to='one@groups.localhost' id='out'><body>x</body></message>",
    ))
    .await;
    let r = c.expect("refused", |e| e.attr("id") == Some("out")).await;
    assert!(is_error(&r, "not-acceptable"), "{}", s(&r));
    // A subject that is too long; a private message to nobody; a
    // groupchat to an occupant; unknown IQs. The room carries on.
    let long = "x".repeat(2000);
    a.send_el(xml(&format!(
        "<message xmlns='jabber:client' type='groupchat' to='one@groups.localhost' id='long'><subject>{long}</subject></message>"
    )))
    .await;
    let r = a.expect("refused", |e| e.attr("id") == Some("long")).await;
    assert!(is_error(&r, "not-acceptable"), "{}", s(&r));
    a.send_el(xml(
        "<message xmlns='jabber:client' type='chat' to='one@groups.localhost/Nobody' id='pm'><body>x</body></message>",
    ))
    .await;
    let r = a.expect("refused", |e| e.attr("id") == Some("pm")).await;
    assert!(is_error(&r, "item-not-found"), "{}", s(&r));
    a.send_el(xml(
        "<message xmlns='jabber:client' type='groupchat' to='one@groups.localhost/B' id='gc'><body>x</body></message>",
    ))
    .await;
    let r = a.expect("refused", |e| e.attr("id") == Some("gc")).await;
    assert!(is_error(&r, "bad-request"), "{}", s(&r));
    let r = a
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='one@groups.localhost'><query xmlns='urn:example:nothing'/></iq>",
        ))
        .await;
    assert!(is_error(&r, "service-unavailable"), "{}", s(&r));
    let r = b
        .iq(xml("<iq xmlns='jabber:client' type='get' to='one@groups.localhost'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>"))
        .await;
    assert!(is_error(&r, "forbidden"), "{}", s(&r));
    // Presence floods are cut off.
    let mut refused = 0;
    for i in 0..15 {
        b.send_el(xml(&format!(
            "<presence xmlns='jabber:client' to='one@groups.localhost/B' id='f{i}'><status>{i}</status></presence>"
        )))
        .await;
    }
    for _ in 0..15 {
        let r = b
            .expect("own presence or error", |e| {
                e.name() == "presence"
                    && e.attr("from") == Some("one@groups.localhost/B")
                    && (e.attr("type") == Some("error") || codes(e).contains(&"110".into()))
            })
            .await;
        if r.attr("type") == Some("error") {
            refused += 1;
        }
    }
    assert!(refused >= 5, "refused {refused}");
    say(&mut a, "one@groups.localhost", "still here").await;
    hear(&mut b, "still here").await;
    srv.stop().await;
}

#[tokio::test]
async fn sleeping_and_absent_members_get_exactly_one_push() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::TestCa::new(dir.path());
    let apns = support::ApnsStandIn::start(&ca, dir.path()).await;
    let srv = TestServer::start_with(&apns.config(&ca)).await;
    users(&srv, &["alice", "bob", "carol"]);
    let mut b = online(&srv, "bob").await;
    private_group(&mut b, ROOM, "Bob").await;
    set_affiliation(&mut b, ROOM, "alice@localhost", "member").await;
    set_affiliation(&mut b, ROOM, "carol@localhost", "member").await;

    // Alice joins from a phone with push and stream management, then its
    // connection drops (the session hibernates). Carol registers push and
    // logs out without joining.
    let alice_device = register_push(&srv, "alice", true).await;
    let carol_device = register_push(&srv, "carol", false).await;
    b.send_el(xml(&format!(
        "<message xmlns='jabber:client' type='groupchat' to='{ROOM}'><body>wake up, both</body></message>"
    )))
    .await;
    hear(&mut b, "wake up, both").await;
    for d in [&alice_device, &carol_device] {
        let path = format!("/3/device/{d}");
        apns.log.wait_for(1, |x| x.path == path).await;
    }
    // A quiet moment, then count again: one push each, none for Bob.
    ping(&mut b).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for d in [&alice_device, &carol_device] {
        let path = format!("/3/device/{d}");
        assert_eq!(
            apns.log.seen().iter().filter(|x| x.path == path).count(),
            1,
            "exactly one push for {d}"
        );
    }
    assert!(apns.log.violations().is_empty(), "{:?}", apns.log.violations());
    srv.stop().await;
}

/// Register an APNs device for `user` through `push.localhost` and enable
/// XEP-0357. With `join_and_sleep`, join the room and let the connection
/// drop with stream management on; otherwise log out.
async fn register_push(srv: &TestServer, user: &str, join_and_sleep: bool) -> String {
    let device = support::apns_token();
    let mut c = RawClient::login_as(srv.c2s, user, "pw", Some("phone")).await;
    c.send(&format!(
        "<iq type='set' id='reg' to='push.localhost'><command xmlns='http://jabber.org/protocol/commands' node='register-push-apns' action='execute'>\
         <x xmlns='jabber:x:data' type='submit'><field var='token'><value>{device}</value></field><field var='device-id'><value>phone-{user}</value></field></x></command></iq>"
    ))
    .await;
    let r = c.read_until("</iq>").await;
    let (jid, node, secret) = (form_field(&r, "jid"), form_field(&r, "node"), form_field(&r, "secret"));
    c.received.clear();
    c.send(&format!(
        "<iq type='set' id='en'><enable xmlns='urn:xmpp:push:0' jid='{jid}' node='{node}'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var='secret'><value>{secret}</value></field></x></enable></iq>"
    ))
    .await;
    let r = c.read_until("id='en'").await;
    assert!(!r.contains("type='error'"), "{r}");
    if join_and_sleep {
        c.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await;
        c.read_until("<enabled").await;
        c.send("<presence/>").await;
        c.send(&format!(
            "<presence to='{ROOM}/{user}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>"
        ))
        .await;
        c.read_until("<subject").await;
        c.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            .await;
        c.read_until("id='p'").await;
        drop(c); // hibernates
    } else {
        c.send("</stream:stream>").await;
        let _ = c.read_to_end().await;
    }
    device
}

#[tokio::test]
async fn public_listing_and_room_avatar() {
    let srv = TestServer::start().await;
    users(&srv, &["alice", "bob"]);
    let mut a = online(&srv, "alice").await;
    let mut b = online(&srv, "bob").await;
    let room = "lobby@groups.localhost";
    join(&mut a, room, "Alice").await;
    iq_ok(
        &mut a,
        &format!(
            "<iq xmlns='jabber:client' type='set' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>\
             <field var='muc#roomconfig_publicroom'><value>1</value></field>\
             <field var='muc#roomconfig_roomname'><value>The lobby</value></field></x></query></iq>"
        ),
    )
    .await;
    // Listed on the service, with its name; a hidden room is not.
    join(&mut a, "hidden@groups.localhost", "Alice").await;
    iq_ok(
        &mut a,
        "<iq xmlns='jabber:client' type='set' to='hidden@groups.localhost'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>",
    )
    .await;
    let items = iq_ok(
        &mut b,
        "<iq xmlns='jabber:client' type='get' to='groups.localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
    )
    .await;
    assert!(
        s(&items).contains("jid='lobby@groups.localhost'") && s(&items).contains("The lobby"),
        "{}",
        s(&items)
    );
    assert!(!s(&items).contains("hidden@"), "{}", s(&items));

    // The owner sets an avatar: occupants hear of it, disco#info carries its hash.
    join(&mut b, room, "Bob").await;
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    let r = b
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='set' to='{room}'><vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>{png}</BINVAL></PHOTO></vCard></iq>"
        )))
        .await;
    assert!(is_error(&r, "forbidden"), "only owners: {}", s(&r));
    iq_ok(
        &mut a,
        &format!(
            "<iq xmlns='jabber:client' type='set' to='{room}'><vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>{png}</BINVAL></PHOTO></vCard></iq>"
        ),
    )
    .await;
    let update = b
        .expect("avatar update", |e| {
            e.name() == "presence" && e.attr("from") == Some(room) && e.has_child("x", "vcard-temp:x:update")
        })
        .await;
    let hash = update
        .get_child("x", "vcard-temp:x:update")
        .and_then(|x| x.get_child("photo", "vcard-temp:x:update"))
        .map(|p| p.text())
        .unwrap();
    use base64::Engine;
    use sha1::Digest;
    let bytes = base64::engine::general_purpose::STANDARD.decode(png).unwrap();
    let want: String = sha1::Sha1::digest(&bytes).iter().map(|x| format!("{x:02x}")).collect();
    assert_eq!(hash, want);
    let info = iq_ok(
        &mut b,
        &format!("<iq xmlns='jabber:client' type='get' to='{room}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
    )
    .await;
    assert!(
        s(&info).contains("muc#roominfo_avatarhash") && s(&info).contains(&want),
        "{}",
        s(&info)
    );
    let v = iq_ok(
        &mut b,
        &format!("<iq xmlns='jabber:client' type='get' to='{room}'><vCard xmlns='vcard-temp'/></iq>"),
    )
    .await;
    assert!(s(&v).contains(png), "{}", s(&v));

    // Leaving: the leaver gets 110, then self-ping says not-acceptable.
    b.send_el(xml(&format!(
        "<presence xmlns='jabber:client' type='unavailable' to='{room}/Bob'/>"
    )))
    .await;
    let left = b
        .expect("left", |e| {
            e.name() == "presence" && e.attr("type") == Some("unavailable") && codes(e).contains(&"110".into())
        })
        .await;
    assert_eq!(item(&left).attr("role"), Some("none"));
    let r = b
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='get' to='{room}/Bob'><ping xmlns='urn:xmpp:ping'/></iq>"
        )))
        .await;
    assert!(is_error(&r, "not-acceptable"), "{}", s(&r));
    srv.stop().await;
}

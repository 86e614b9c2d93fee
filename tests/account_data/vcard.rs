//! vcard-temp and the XEP-0398 conversion both ways.

use super::*;

#[tokio::test]
async fn vcard_and_avatar_conversion() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let s = TestServer::start().await;
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = s.client("alice", "pw", false).await;
    let mut b = s.client("bob", "pw", false).await;
    // No vCard yet: an empty one.
    let r = b
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
        ))
        .await;
    assert!(is_result(&r));
    assert_eq!(r.get_child("vCard", "vcard-temp").unwrap().children().count(), 0);
    // Set with a PHOTO: readable by others, and published as a XEP-0084 avatar.
    let png = b"\x89PNG\r\n\x1a\nnot really a picture".to_vec();
    let r = a
        .iq(xml(&format!(
            "<iq xmlns='jabber:client' type='set'><vCard xmlns='vcard-temp'><FN>Alice</FN>\
             <PHOTO><TYPE>image/png</TYPE><BINVAL>{}</BINVAL></PHOTO></vCard></iq>",
            b64.encode(&png)
        )))
        .await;
    assert!(is_result(&r), "{}", to_s(&r));
    let r = b
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
        ))
        .await;
    assert_eq!(
        r.get_child("vCard", "vcard-temp")
            .unwrap()
            .get_child("FN", "vcard-temp")
            .unwrap()
            .text(),
        "Alice"
    );
    use sha1::Digest;
    let id: String = sha1::Sha1::digest(&png).iter().map(|b| format!("{b:02x}")).collect();
    let meta = items(&mut b, "alice@localhost", "urn:xmpp:avatar:metadata", "").await;
    assert!(is_result(&meta), "{}", to_s(&meta));
    assert_eq!(item_ids(&meta), std::slice::from_ref(&id));
    let info = meta
        .get_child("pubsub", PUBSUB)
        .unwrap()
        .get_child("items", PUBSUB)
        .unwrap()
        .children()
        .next()
        .unwrap()
        .get_child("metadata", "urn:xmpp:avatar:metadata")
        .unwrap()
        .get_child("info", "urn:xmpp:avatar:metadata")
        .unwrap()
        .clone();
    assert_eq!(info.attr("bytes"), Some(png.len().to_string().as_str()));
    assert_eq!(info.attr("type"), Some("image/png"));
    let data = items(&mut b, "alice@localhost", "urn:xmpp:avatar:data", "").await;
    let d = data
        .get_child("pubsub", PUBSUB)
        .unwrap()
        .get_child("items", PUBSUB)
        .unwrap()
        .children()
        .next()
        .unwrap()
        .get_child("data", "urn:xmpp:avatar:data")
        .unwrap()
        .text();
    assert_eq!(b64.decode(d.trim()).unwrap(), png);

    // The other way: an avatar published over PEP becomes the vCard PHOTO.
    let jpeg = b"\xff\xd8\xff\xe0 a second picture".to_vec();
    let id2: String = sha1::Sha1::digest(&jpeg).iter().map(|b| format!("{b:02x}")).collect();
    let r = publish(
        &mut a,
        "urn:xmpp:avatar:data",
        &id2,
        &format!("<data xmlns='urn:xmpp:avatar:data'>{}</data>", b64.encode(&jpeg)),
        &[],
    )
    .await;
    assert!(is_result(&r), "{}", to_s(&r));
    let r = publish(
        &mut a,
        "urn:xmpp:avatar:metadata",
        &id2,
        &format!(
            "<metadata xmlns='urn:xmpp:avatar:metadata'><info id='{id2}' bytes='{}' type='image/jpeg'/></metadata>",
            jpeg.len()
        ),
        &[],
    )
    .await;
    assert!(is_result(&r), "{}", to_s(&r));
    let r = b
        .iq(xml(
            "<iq xmlns='jabber:client' type='get' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
        ))
        .await;
    let card = r.get_child("vCard", "vcard-temp").unwrap();
    assert_eq!(
        card.get_child("FN", "vcard-temp").unwrap().text(),
        "Alice",
        "other fields kept"
    );
    let photo = card.get_child("PHOTO", "vcard-temp").unwrap();
    assert_eq!(photo.get_child("TYPE", "vcard-temp").unwrap().text(), "image/jpeg");
    assert_eq!(
        b64.decode(photo.get_child("BINVAL", "vcard-temp").unwrap().text().trim())
            .unwrap(),
        jpeg
    );
    // Nobody else sets alice's vCard.
    let r = b
        .iq(xml("<iq xmlns='jabber:client' type='set' to='alice@localhost'><vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard></iq>"))
        .await;
    assert_eq!(error_of(&r).0, "forbidden");
    s.stop().await;
}

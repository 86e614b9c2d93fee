//! XML namespaces that more than one part of the server names. A feature's
//! own namespaces stay in its module; these are shared so that core code
//! (router, sessions) never imports a feature module for a constant.

/// XEP-0004 data forms.
pub const DATA: &str = "jabber:x:data";
/// XEP-0280 message carbons.
pub const CARBONS: &str = "urn:xmpp:carbons:2";
/// XEP-0313 message archive management.
pub const MAM: &str = "urn:xmpp:mam:2";
/// XEP-0297 stanza forwarding.
pub const FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0334 message processing hints.
pub const HINTS: &str = "urn:xmpp:hints";
/// XEP-0359 unique and stable stanza ids.
pub const SID: &str = "urn:xmpp:sid:0";
/// XEP-0060 publish-subscribe.
pub const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
/// XEP-0030 service discovery.
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// XEP-0050 ad-hoc commands.
pub const COMMANDS: &str = "http://jabber.org/protocol/commands";
/// XEP-0203 delayed delivery.
pub const DELAY: &str = "urn:xmpp:delay";

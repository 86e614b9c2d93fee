//! A room's configuration: what is stored (as JSON in `muc_rooms.config`)
//! and the owner's `muc#roomconfig` form (XEP-0045 §10.2) that edits it.

use crate::xmpp::{
    forms::Form,
    ns::DATA,
    stanza::{Condition, StanzaError},
    xml::{elem, ElementExt},
};
use minidom::Element;
use serde::{Deserialize, Serialize};

pub const FORM_TYPE: &str = "http://jabber.org/protocol/muc#roomconfig";

/// Who sees occupants' real JIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Whois {
    /// Everyone: a non-anonymous room (what OMEMO in groups needs).
    Anyone,
    /// Moderators only: a semi-anonymous room.
    Moderators,
}

/// Who may send private messages to occupants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowPm {
    Anyone,
    Participants,
    Moderators,
    None,
}

impl AllowPm {
    fn as_str(self) -> &'static str {
        match self {
            AllowPm::Anyone => "anyone",
            AllowPm::Participants => "participants",
            AllowPm::Moderators => "moderators",
            AllowPm::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    /// Kept when the last occupant leaves.
    pub persistent: bool,
    /// Listed in the service's disco#items.
    pub public: bool,
    pub members_only: bool,
    /// Only participants (not visitors) may speak.
    pub moderated: bool,
    /// Entry password; empty: none.
    pub password: String,
    pub whois: Whois,
    /// Most occupants (capped by `[muc] max_occupants`).
    pub max_users: u32,
    /// Messages of history sent on join (capped by `[muc] max_history`).
    pub history_length: u32,
    /// Occupants (not only admins) may invite.
    pub allow_invites: bool,
    /// Occupants (not only moderators) may change the subject.
    pub change_subject: bool,
    pub allow_pm: AllowPm,
    /// Messages go to the room archive (XEP-0313).
    pub archiving: bool,
}

impl Default for RoomConfig {
    /// A new room: persistent and unlisted (as Snikket sets Prosody), open,
    /// semi-anonymous, archived.
    fn default() -> Self {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: true,
            public: false,
            members_only: false,
            moderated: false,
            password: String::new(),
            whois: Whois::Moderators,
            max_users: 200,
            history_length: 20,
            allow_invites: false,
            change_subject: false,
            allow_pm: AllowPm::Anyone,
            archiving: true,
        }
    }
}

/// Longest room name, description or password.
const MAX_TEXT: usize = 1024;

impl RoomConfig {
    pub fn from_json(s: &str) -> RoomConfig {
        serde_json::from_str(s).unwrap_or_default()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a room config serialises")
    }

    /// The owner's form, filled with the current values.
    pub fn form(&self, max_users: u32, max_history: u32) -> Element {
        let boolean =
            |var: &str, label: &str, v: bool| field(var, "boolean", label).child(value(if v { "1" } else { "0" }));
        let text = |var: &str, label: &str, v: &str| field(var, "text-single", label).child(value(v));
        let list = |var: &str, label: &str, v: &str, options: &[(&str, &str)]| {
            let mut f = field(var, "list-single", label).child(value(v));
            for (val, label) in options {
                f.append_child(elem("option", DATA).with("label", *label).child(value(val)));
            }
            f
        };
        elem("x", DATA)
            .with("type", "form")
            .child(elem("title", DATA).text_child("Room configuration"))
            .child(field("FORM_TYPE", "hidden", "").child(value(FORM_TYPE)))
            .child(text("muc#roomconfig_roomname", "Name", &self.name))
            .child(text("muc#roomconfig_roomdesc", "Description", &self.description))
            .child(boolean(
                "muc#roomconfig_persistentroom",
                "Keep the room when it is empty",
                self.persistent,
            ))
            .child(boolean(
                "muc#roomconfig_publicroom",
                "List the room publicly",
                self.public,
            ))
            .child(boolean(
                "muc#roomconfig_membersonly",
                "Only members may join",
                self.members_only,
            ))
            .child(boolean(
                "muc#roomconfig_moderatedroom",
                "Only participants may speak",
                self.moderated,
            ))
            .child(boolean(
                "muc#roomconfig_passwordprotectedroom",
                "Password required to join",
                !self.password.is_empty(),
            ))
            .child(field("muc#roomconfig_roomsecret", "text-private", "Password").child(value(&self.password)))
            .child(list(
                "muc#roomconfig_whois",
                "Who may see real addresses",
                match self.whois {
                    Whois::Anyone => "anyone",
                    Whois::Moderators => "moderators",
                },
                &[("moderators", "Moderators"), ("anyone", "Anyone")],
            ))
            .child(text(
                "muc#roomconfig_maxusers",
                &format!("Most occupants (up to {max_users})"),
                &self.max_users.to_string(),
            ))
            .child(text(
                "muc#roomconfig_historylength",
                &format!("Messages of history on join (up to {max_history})"),
                &self.history_length.to_string(),
            ))
            .child(boolean(
                "muc#roomconfig_allowinvites",
                "Occupants may invite",
                self.allow_invites,
            ))
            .child(boolean(
                "muc#roomconfig_changesubject",
                "Occupants may change the subject",
                self.change_subject,
            ))
            .child(list(
                "muc#roomconfig_allowpm",
                "Who may send private messages",
                self.allow_pm.as_str(),
                &[
                    ("anyone", "Anyone"),
                    ("participants", "Participants"),
                    ("moderators", "Moderators"),
                    ("none", "Nobody"),
                ],
            ))
            .child(boolean(
                "muc#roomconfig_enablearchiving",
                "Archive messages",
                self.archiving,
            ))
    }

    /// Apply a submitted form. Unknown fields are ignored (clients send
    /// back fields of other servers' forms); malformed values are refused.
    pub fn apply(&mut self, form: &Form, max_users: u32, max_history: u32) -> Result<(), StanzaError> {
        if form.form_type.as_deref().is_some_and(|t| t != FORM_TYPE) {
            return Err(StanzaError::new(Condition::BadRequest, "not a muc#roomconfig form"));
        }
        let mut next = self.clone();
        let mut password_protected = None;
        for f in &form.fields {
            let v = f.values.first().map(String::as_str).unwrap_or("");
            let boolean = || match v {
                "1" | "true" => Ok(true),
                "0" | "false" | "" => Ok(false),
                _ => Err(StanzaError::new(
                    Condition::BadRequest,
                    format!("`{}` must be a boolean", f.var),
                )),
            };
            let number = |cap: u32| {
                v.trim()
                    .parse::<u32>()
                    .map(|n| n.min(cap))
                    .map_err(|_| StanzaError::new(Condition::BadRequest, format!("`{}` must be a number", f.var)))
            };
            let text = || {
                if v.chars().count() > MAX_TEXT {
                    Err(StanzaError::new(
                        Condition::NotAcceptable,
                        format!("`{}` is too long", f.var),
                    ))
                } else {
                    Ok(v.to_string())
                }
            };
            match f.var.as_str() {
                "muc#roomconfig_roomname" => next.name = text()?,
                "muc#roomconfig_roomdesc" => next.description = text()?,
                "muc#roomconfig_persistentroom" => next.persistent = boolean()?,
                "muc#roomconfig_publicroom" => next.public = boolean()?,
                "muc#roomconfig_membersonly" => next.members_only = boolean()?,
                "muc#roomconfig_moderatedroom" => next.moderated = boolean()?,
                "muc#roomconfig_passwordprotectedroom" => password_protected = Some(boolean()?),
                "muc#roomconfig_roomsecret" => next.password = text()?,
                "muc#roomconfig_whois" => {
                    next.whois = match v {
                        "anyone" => Whois::Anyone,
                        "moderators" => Whois::Moderators,
                        _ => return Err(StanzaError::new(Condition::BadRequest, "whois is anyone or moderators")),
                    }
                }
                "muc#roomconfig_maxusers" => {
                    next.max_users = if v.is_empty() || v == "none" {
                        max_users
                    } else {
                        number(max_users)?
                    }
                    .max(1)
                }
                "muc#roomconfig_historylength" => next.history_length = number(max_history)?,
                "muc#roomconfig_allowinvites" => next.allow_invites = boolean()?,
                "muc#roomconfig_changesubject" => next.change_subject = boolean()?,
                "muc#roomconfig_allowpm" => {
                    next.allow_pm = match v {
                        "anyone" => AllowPm::Anyone,
                        "participants" => AllowPm::Participants,
                        "moderators" => AllowPm::Moderators,
                        "none" => AllowPm::None,
                        _ => return Err(StanzaError::new(Condition::BadRequest, "unknown allowpm value")),
                    }
                }
                "muc#roomconfig_enablearchiving" | "mam" => next.archiving = boolean()?,
                _ => {}
            }
        }
        if password_protected == Some(false) {
            next.password.clear();
        }
        if password_protected == Some(true) && next.password.is_empty() {
            return Err(StanzaError::new(
                Condition::NotAcceptable,
                "a password-protected room needs a password",
            ));
        }
        *self = next;
        Ok(())
    }
}

fn field(var: &str, t: &str, label: &str) -> Element {
    let f = elem("field", DATA).with("var", var).with("type", t);
    if label.is_empty() {
        f
    } else {
        f.with("label", label)
    }
}

fn value(v: &str) -> Element {
    elem("value", DATA).text_child(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_group_as_conversations_configures_it() {
        let mut c = RoomConfig::default();
        let form: Element = format!(
            "<x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>{FORM_TYPE}</value></field>\
             <field var='muc#roomconfig_persistentroom'><value>1</value></field>\
             <field var='muc#roomconfig_membersonly'><value>1</value></field>\
             <field var='muc#roomconfig_whois'><value>anyone</value></field>\
             <field var='muc#roomconfig_maxusers'><value>100000</value></field>\
             <field var='muc#roomconfig_unknown_to_us'><value>x</value></field>\
             </x>"
        )
        .parse()
        .unwrap();
        c.apply(&Form::read(&form), 200, 50).unwrap();
        assert!(c.members_only && c.persistent);
        assert_eq!(c.whois, Whois::Anyone);
        assert_eq!(c.max_users, 200, "capped by the service");
        let back = RoomConfig::from_json(&c.to_json());
        assert_eq!(back, c);
    }

    #[test]
    fn bad_values_change_nothing() {
        let mut c = RoomConfig::default();
        let form: Element = "<x xmlns='jabber:x:data' type='submit'>\
             <field var='muc#roomconfig_membersonly'><value>1</value></field>\
             <field var='muc#roomconfig_whois'><value>everybody</value></field></x>"
            .parse()
            .unwrap();
        assert!(c.apply(&Form::read(&form), 200, 50).is_err());
        assert_eq!(c, RoomConfig::default());
        let form: Element = "<x xmlns='jabber:x:data' type='submit'>\
             <field var='muc#roomconfig_passwordprotectedroom'><value>1</value></field></x>"
            .parse()
            .unwrap();
        assert!(c.apply(&Form::read(&form), 200, 50).is_err());
    }
}

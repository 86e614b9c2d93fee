//! Node configuration (`pubsub#node_config`) and publish-options as
//! XEP-0004 forms: reading submitted fields and rendering the current ones.

use super::*;

/// The fields of a data form of type `form_type` (FORM_TYPE left out).
pub(super) fn form_fields(x: &Element, form_type: &str) -> Result<Vec<(String, Vec<String>)>, ()> {
    let form = Form::read(x);
    if !form.is_type_or_untyped(form_type) {
        return Err(());
    }
    Ok(form.fields.into_iter().map(|f| (f.var, f.values)).collect())
}

pub(super) fn parse_bool(v: &str) -> Result<bool, ()> {
    match v {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(()),
    }
}

/// Apply one configuration field. Fields this server supports only with one
/// value accept that value and nothing else; unknown fields are refused.
pub(super) fn apply_field(cfg: &mut NodeConfig, var: &str, values: &[String]) -> Result<(), ()> {
    let one = || values.first().map(|s| s.trim()).ok_or(());
    match var {
        "pubsub#access_model" => cfg.access_model = Access::parse(one()?).ok_or(())?,
        "pubsub#persist_items" => cfg.persist_items = parse_bool(one()?)?,
        "pubsub#max_items" => {
            let v = one()?;
            cfg.max_items = if v == "max" {
                None
            } else {
                Some(v.parse::<u32>().map_err(|_| ())?)
            };
        }
        "pubsub#send_last_published_item" => cfg.send_last_published_item = SendLast::parse(one()?).ok_or(())?,
        "pubsub#notify_retract" => cfg.notify_retract = parse_bool(one()?)?,
        "pubsub#notify_delete" => cfg.notify_delete = parse_bool(one()?)?,
        "pubsub#deliver_payloads" => cfg.deliver_payloads = parse_bool(one()?)?,
        "pubsub#roster_groups_allowed" => cfg.roster_groups_allowed = values.to_vec(),
        "pubsub#title" => cfg.title = values.first().cloned(),
        "pubsub#description" => cfg.description = values.first().cloned(),
        "pubsub#type" => cfg.payload_type = values.first().cloned(),
        // Fixed behaviour of this service.
        "pubsub#deliver_notifications" if parse_bool(one()?)? => {}
        "pubsub#notify_config" if !parse_bool(one()?)? => {}
        "pubsub#publish_model" if one()? == "publishers" => {}
        "pubsub#notification_type" if one()? == "headline" => {}
        "pubsub#purge_offline" if !parse_bool(one()?)? => {}
        "pubsub#presence_based_delivery" if parse_bool(one()?)? => {}
        _ => return Err(()),
    }
    Ok(())
}

pub(super) fn field(var: &str, typ: &str, values: &[&str]) -> Element {
    let mut f = elem("field", NS_DATA).with("var", var).with("type", typ);
    for v in values {
        f.append_child(elem("value", NS_DATA).text_child(*v));
    }
    f
}

pub(super) fn list_field(var: &str, value: &str, options: &[&str]) -> Element {
    let mut f = field(var, "list-single", &[value]);
    for o in options {
        f.append_child(elem("option", NS_DATA).child(elem("value", NS_DATA).text_child(*o)));
    }
    f
}

pub(super) fn b(v: bool) -> &'static str {
    if v {
        "1"
    } else {
        "0"
    }
}

/// The node configuration as a XEP-0004 form.
pub fn config_form(cfg: &NodeConfig) -> Element {
    let max = cfg.max_items.map(|m| m.to_string()).unwrap_or_else(|| "max".into());
    let mut groups = field("pubsub#roster_groups_allowed", "list-multi", &[]);
    for g in &cfg.roster_groups_allowed {
        groups.append_child(elem("value", NS_DATA).text_child(g.clone()));
    }
    elem("x", NS_DATA)
        .with("type", "form")
        .child(field("FORM_TYPE", "hidden", &[NS_NODE_CONFIG]))
        .child(list_field(
            "pubsub#access_model",
            cfg.access_model.as_str(),
            &["open", "presence", "roster", "whitelist"],
        ))
        .child(field("pubsub#persist_items", "boolean", &[b(cfg.persist_items)]))
        .child(field("pubsub#max_items", "text-single", &[&max]))
        .child(list_field(
            "pubsub#send_last_published_item",
            cfg.send_last_published_item.as_str(),
            &["never", "on_sub", "on_sub_and_presence"],
        ))
        .child(field("pubsub#notify_retract", "boolean", &[b(cfg.notify_retract)]))
        .child(field("pubsub#notify_delete", "boolean", &[b(cfg.notify_delete)]))
        .child(field("pubsub#deliver_payloads", "boolean", &[b(cfg.deliver_payloads)]))
        .child(field("pubsub#deliver_notifications", "boolean", &["1"]))
        .child(list_field("pubsub#publish_model", "publishers", &["publishers"]))
        .child(groups)
        .child(field(
            "pubsub#title",
            "text-single",
            &[cfg.title.as_deref().unwrap_or_default()],
        ))
        .child(field(
            "pubsub#description",
            "text-single",
            &[cfg.description.as_deref().unwrap_or_default()],
        ))
        .child(field(
            "pubsub#type",
            "text-single",
            &[cfg.payload_type.as_deref().unwrap_or_default()],
        ))
}

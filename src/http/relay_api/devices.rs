//! `device/<kind>/` and `device/<kind>/<id>/`: APNs, FCM (and legacy GCM),
//! Web Push and upstream-relay devices.

use super::wire::{boolean, date, not_found, required, string, Errors, Fields, R};
use crate::{
    http::json,
    push::{self, Kind, NewDevice, Relay},
    store::relay::{Account, Device},
};
use hyper::StatusCode;
use serde_json::{json, Value};

/// Collection names of the device endpoints and the kind each stores.
pub fn kind(collection: &str) -> Option<Kind> {
    match collection {
        "apns" => Some(Kind::Apns),
        // Legacy GCM registration ids are FCM tokens; both go out over FCM HTTP v1.
        "gcm" | "fcm" => Some(Kind::Fcm),
        "webpush" => Some(Kind::WebPush),
        "relay" => Some(Kind::Relay),
        _ => None,
    }
}

pub fn device_json(d: &Device) -> Value {
    let mut v = json!({
        "name": d.name,
        "id": d.id,
        "active": d.active,
        "date_created": date(d.created),
    });
    match Kind::parse(&d.kind) {
        Some(Kind::WebPush) => {
            v["endpoint"] = d.registration_id.clone().into();
            v["p256dh"] = d.p256dh.clone().into();
            v["auth"] = d.auth.clone().into();
        }
        Some(Kind::Relay) => {
            v["endpoint"] = d.registration_id.clone().into();
        }
        _ => {
            v["registration_id"] = d.registration_id.clone().into();
            v["device_id"] = d.device_id.clone().into();
        }
    }
    v
}

fn https_url(f: &Fields, key: &str, errs: &mut Errors, required_field: bool) -> Option<String> {
    let v = if required_field {
        required(f, key, 2048, errs)
    } else {
        string(f, key, 2048, errs)
    }?;
    match v.parse::<hyper::Uri>() {
        Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => Some(v),
        _ => {
            errs.add(key, "Enter a valid https URL.");
            None
        }
    }
}

/// Check the fields of a device of `kind`; `partial` for updates.
pub fn device_fields(kind: Kind, f: &Fields, partial: bool, errs: &mut Errors) -> NewDevice {
    let mut d = NewDevice {
        name: string(f, "name", 255, errs),
        active: boolean(f, "active", errs).unwrap_or(true),
        ..Default::default()
    };
    let req = |key: &str, max: usize, errs: &mut Errors| {
        if partial {
            string(f, key, max, errs)
        } else {
            required(f, key, max, errs)
        }
    };
    match kind {
        Kind::Apns => {
            d.registration_id = req("registration_id", 200, errs).unwrap_or_default();
            if !d.registration_id.bytes().all(|b| b.is_ascii_hexdigit()) {
                errs.add("registration_id", "An APNs device token is hexadecimal.");
            }
            d.device_id = string(f, "device_id", 255, errs);
        }
        Kind::Fcm => {
            d.registration_id = req("registration_id", 4096, errs).unwrap_or_default();
            if d.registration_id.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
                errs.add("registration_id", "Not a valid FCM registration token.");
            }
            d.device_id = string(f, "device_id", 255, errs);
        }
        Kind::WebPush => {
            d.registration_id = https_url(f, "endpoint", errs, !partial).unwrap_or_default();
            d.p256dh = req("p256dh", 200, errs);
            if let Some(k) = &d.p256dh {
                if push::jwt::b64_decode(k).is_none_or(|b| b.len() != 65 || b[0] != 4) {
                    errs.add("p256dh", "Not an uncompressed P-256 public key in base64url.");
                }
            }
            d.auth = req("auth", 100, errs);
            if let Some(a) = &d.auth {
                if push::jwt::b64_decode(a).is_none_or(|b| b.len() != 16) {
                    errs.add("auth", "Not a 16-byte secret in base64url.");
                }
            }
        }
        Kind::Relay => {
            d.registration_id = https_url(f, "endpoint", errs, !partial).unwrap_or_default();
            d.upstream_token = req("token", 200, errs);
        }
    }
    d
}

pub async fn create(relay: &Relay, a: &Account, kind: Kind, f: Fields) -> R {
    let mut errs = Errors::default();
    let d = device_fields(kind, &f, false, &mut errs);
    errs.check()?;
    let dev = relay.create_device(a.id, kind, d).await?;
    Ok(json(StatusCode::CREATED, device_json(&dev)))
}

pub async fn update(relay: &Relay, mut dev: Device, f: Fields) -> R {
    let kind = Kind::parse(&dev.kind).ok_or_else(not_found)?;
    let mut errs = Errors::default();
    let d = device_fields(kind, &f, true, &mut errs);
    errs.check()?;
    if f.contains_key("name") {
        dev.name = d.name;
    }
    if f.contains_key("active") {
        dev.active = d.active;
    }
    let set = |key: &str, v: Option<String>, slot: &mut Option<String>| {
        if f.contains_key(key) {
            *slot = v;
        }
    };
    set("device_id", d.device_id, &mut dev.device_id);
    set("p256dh", d.p256dh, &mut dev.p256dh);
    set("auth", d.auth, &mut dev.auth);
    set("token", d.upstream_token, &mut dev.upstream_token);
    if !d.registration_id.is_empty() {
        dev.registration_id = d.registration_id;
    }
    relay.update_device(dev.clone()).await?;
    Ok(json(StatusCode::OK, device_json(&dev)))
}

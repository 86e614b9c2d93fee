//! `messages/`: a push to every device of a whitelist token's owner.

use super::wire::{not_found, required, throttled, Answer, Errors, Fields, R};
use crate::{
    http::json,
    push::{Priority, Relay, SubmitError},
};
use hyper::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// Check the fields of `POST messages/`: token, priority, ttl.
pub fn message_request(f: &Fields) -> Result<(String, Priority, Option<Duration>), Answer> {
    let mut errs = Errors::default();
    let token = required(f, "token", 200, &mut errs);
    let priority = match f.get("priority") {
        None | Some(Value::Null) => Priority::default(),
        Some(Value::String(s)) => Priority::parse(s).unwrap_or_else(|| {
            errs.add("priority", format!("\"{s}\" is not a valid choice."));
            Priority::default()
        }),
        Some(_) => {
            errs.add("priority", "\"high\" or \"low\".");
            Priority::default()
        }
    };
    let ttl = match f.get("ttl") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) => Some(Duration::from_secs(n)),
            None => {
                errs.add("ttl", "A valid integer is required.");
                None
            }
        },
    };
    errs.check()?;
    Ok((token.unwrap_or_default(), priority, ttl))
}

pub async fn post(relay: &Relay, f: Fields) -> R {
    let (token, priority, ttl) = message_request(&f)?;
    let data = f.get("data").cloned();
    match relay.submit(&token, data, priority, ttl).await {
        Ok(_) => Ok(json(StatusCode::ACCEPTED, Value::Object(f))),
        Err(SubmitError::UnknownToken) => Err(not_found()),
        Err(SubmitError::RateLimited { retry_after }) => Err(Answer::new(throttled(retry_after))),
        Err(SubmitError::TooLarge { size, limit }) => Err(Answer::new(json(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({ "data": [format!("Ensure this field has no more than {limit} bytes of JSON (it has {size}).")] }),
        ))),
        Err(SubmitError::Store(e)) => Err(e.into()),
    }
}

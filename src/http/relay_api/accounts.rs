//! `accounts/`: sign-up or log-in with username and password (the API key
//! comes back), the account itself, and deleting it.

use super::wire::{detail, required, string, Answer, Errors, Fields, R};
use crate::{
    http::json,
    push::{self, AccountError, Relay},
    store::relay::Account,
};
use hyper::StatusCode;
use serde_json::{json, Value};

pub fn account_json(a: &Account, token: Option<&str>) -> Value {
    let mut v = json!({ "username": a.username, "email": a.email, "id": a.id });
    if let Some(t) = token {
        v["token"] = t.into();
    }
    v
}

pub fn valid_username(u: &str) -> bool {
    u.chars().all(|c| c.is_alphanumeric() || "@.+-_".contains(c))
}

/// Check the fields of `POST accounts/`: username, password, email.
pub fn account_request(f: &Fields) -> Result<(String, String, String), Answer> {
    let mut errs = Errors::default();
    let username = required(f, "username", push::MAX_USERNAME, &mut errs);
    if let Some(u) = &username {
        if !valid_username(u) {
            errs.add(
                "username",
                "Enter a valid username. This value may contain only letters, numbers and @/./+/-/_ characters.",
            );
        }
    }
    let password = required(f, "password", 1024, &mut errs);
    let email = string(f, "email", 254, &mut errs).unwrap_or_default();
    if !email.is_empty() && !email.contains('@') {
        errs.add("email", "Enter a valid email address.");
    }
    errs.check()?;
    Ok((username.unwrap_or_default(), password.unwrap_or_default(), email))
}

pub async fn create(relay: &Relay, f: Fields) -> R {
    let (username, password, email) = account_request(&f)?;
    match relay.login_or_signup(&username, &password, &email).await {
        Ok(l) => {
            let status = if l.created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(json(status, account_json(&l.account, Some(&l.api_key))))
        }
        Err(AccountError::BadCredentials) => Err(Answer::new(detail(
            StatusCode::UNAUTHORIZED,
            "Invalid username or password.",
        ))),
        Err(AccountError::EmailTaken) => {
            let mut e = Errors::default();
            e.add("email", "An account with this email already exists.");
            e.check().map(|_| unreachable!())
        }
        Err(AccountError::SignupClosed) => Err(Answer::new(detail(
            StatusCode::FORBIDDEN,
            "Sign-up is closed on this relay.",
        ))),
        Err(e) => {
            tracing::error!(error = %e, "relay account creation failed");
            Err(Answer::new(detail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal server error.",
            )))
        }
    }
}

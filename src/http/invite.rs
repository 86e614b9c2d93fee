//! The invitation page. `GET /invite/<token>` renders a small server-side
//! HTML page (no JavaScript, readable on a phone): which app to install per
//! platform, the `xmpp:` link and its QR code (XEP-0401), and a plain form;
//! `POST /invite/<token>` takes that form and creates the account, for
//! clients that cannot register with an invitation themselves.

use super::Resp;
use crate::{
    config::RegistrationMode,
    core::Core,
    escape::escape as esc,
    store::{self, invites::SignUp},
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use std::{net::SocketAddr, sync::Arc, time::Duration};

/// Largest form body accepted.
const MAX_FORM: usize = 8 * 1024;
/// Shortest password the form accepts.
const MIN_PASSWORD: usize = 8;
/// Longest password the form accepts (PBKDF2 cost does not grow with it, but
/// there is no reason to take megabytes).
const MAX_PASSWORD: usize = 1024;

pub async fn handle(core: &Arc<Core>, peer: SocketAddr, req: Request<Incoming>) -> Resp {
    let token = req
        .uri()
        .path()
        .trim_start_matches("/invite/")
        .trim_end_matches('/')
        .to_string();
    let domain = core.config.domain.clone();
    if core.limiter.login_blocked(peer.ip()) {
        let mut r = page(
            StatusCode::TOO_MANY_REQUESTS,
            &domain,
            "Too many attempts",
            "<p>Too many attempts from your address. Wait a minute and try again.</p>",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
        return r;
    }
    if core.config.registration.mode == RegistrationMode::Closed {
        return page(
            StatusCode::FORBIDDEN,
            &domain,
            "Registration is closed",
            "<p>This server does not accept new accounts at the moment. Ask the person who invited you.</p>",
        );
    }
    let method = req.method().clone();
    if method != Method::GET && method != Method::HEAD && method != Method::POST {
        let mut r = page(StatusCode::METHOD_NOT_ALLOWED, &domain, "Not allowed", "");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD, POST"));
        return r;
    }
    let invite = if plausible_token(&token) {
        let t = token.clone();
        match core.store.call(move |c| store::invites::lookup(c, &t)).await {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "invitation look-up failed");
                return page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &domain,
                    "Something went wrong",
                    "<p>The server could not read the invitation. Try again later.</p>",
                );
            }
        }
    } else {
        None
    };
    let Some(invite) = invite else {
        // Unknown tokens count like failed logins: guessing is rate limited.
        core.limiter.login_failed(peer.ip());
        return invalid(&domain);
    };
    if method != Method::POST {
        return invitation(&domain, &token, &invite, None, "", StatusCode::OK);
    }
    if !invite.allow_registration {
        // A contact invitation for existing accounts only: nothing to post.
        return invitation(
            &domain,
            &token,
            &invite,
            Some("This invitation adds a contact to an existing account; it cannot create one."),
            "",
            StatusCode::FORBIDDEN,
        );
    }

    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return page(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &domain,
            "Unsupported form",
            "<p>Send the form as <code>application/x-www-form-urlencoded</code>.</p>",
        );
    }
    let body = match tokio::time::timeout(
        Duration::from_secs(30),
        Limited::new(req.into_body(), MAX_FORM).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            return page(
                StatusCode::PAYLOAD_TOO_LARGE,
                &domain,
                "Form too large",
                "<p>The form was larger than this page accepts.</p>",
            )
        }
        Err(_) => return page(StatusCode::REQUEST_TIMEOUT, &domain, "Too slow", ""),
    };
    let mut username = String::new();
    let mut password = String::new();
    let mut confirm = String::new();
    for (k, v) in form_urlencoded::parse(&body) {
        match k.as_ref() {
            "username" => username = v.trim().to_string(),
            "password" => password = v.into_owned(),
            "confirm" => confirm = v.into_owned(),
            _ => {}
        }
    }
    let refuse = |msg: &str, status| invitation(&domain, &token, &invite, Some(msg), &username, status);
    if username.is_empty() || username.len() > 64 || store::accounts::normalize(&username).is_err() {
        return refuse(
            "Choose a username of letters, digits and simple punctuation (no spaces, @ or /), at most 64 characters.",
            StatusCode::BAD_REQUEST,
        );
    }
    if password.chars().count() < MIN_PASSWORD || password.len() > MAX_PASSWORD {
        return refuse(
            &format!("Choose a password of at least {MIN_PASSWORD} characters."),
            StatusCode::BAD_REQUEST,
        );
    }
    if password != confirm {
        return refuse("The two passwords differ.", StatusCode::BAD_REQUEST);
    }
    let (u, t, d) = (username.clone(), token.clone(), domain.clone());
    let outcome = core
        .store
        .call(move |c| store::invites::sign_up(c, &d, &u, &password, Some(&t)))
        .await;
    match outcome {
        Ok(SignUp::Created(account)) => {
            tracing::info!(%account, invite = %invite.token_prefix, "account created from the invitation page");
            let jid = format!("{account}@{domain}");
            let body = format!(
                "<p>Your address is <strong>{jid}</strong>.</p>\
                 <p>Open your chat app, choose to log in with an existing account, and enter this address and \
                 the password you chose.</p>\
                 <p><a class=\"button\" href=\"xmpp:{jid}?login\">Open in your app</a></p>",
                jid = esc(&jid)
            );
            page(StatusCode::OK, &domain, "Your account is ready", &body)
        }
        Ok(SignUp::UsernameTaken) => refuse("That username is taken; choose another.", StatusCode::CONFLICT),
        Ok(SignUp::InvitationInvalid) => invalid(&domain),
        Err(e) => {
            tracing::error!(error = %e, "account creation from the invitation page failed");
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                &domain,
                "Something went wrong",
                "<p>The account could not be created. Try again later.</p>",
            )
        }
    }
}

/// Tokens are base64url of 160 bits; anything else is not looked up.
fn plausible_token(t: &str) -> bool {
    (16..=64).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn invalid(domain: &str) -> Resp {
    page(
        StatusCode::NOT_FOUND,
        domain,
        "This invitation is not valid",
        "<p>The invitation is unknown, has been used already, or has expired. \
         Ask the person who invited you for a new one.</p>",
    )
}

/// The invitation itself: apps, the `xmpp:` link with its QR code, the form.
fn invitation(
    domain: &str,
    token: &str,
    invite: &store::invites::Invite,
    error: Option<&str>,
    username: &str,
    status: StatusCode,
) -> Resp {
    let uri = invite.uri(domain, token);
    let qr = qrcode::QrCode::new(uri.as_bytes())
        .map(|code| {
            let svg = code
                .render::<qrcode::render::svg::Color>()
                .min_dimensions(220, 220)
                .quiet_zone(true)
                .build();
            // Inline in the page: drop the XML declaration.
            match svg.find("<svg") {
                Some(i) => svg[i..].to_string(),
                None => svg,
            }
        })
        .unwrap_or_default();
    let expires = time::OffsetDateTime::from_unix_timestamp(invite.expires_at)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc2822).ok())
        .unwrap_or_default();
    let uses = if invite.uses_left > 1 {
        format!(" It can be used {} more times.", invite.uses_left)
    } else {
        String::new()
    };
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    let intro = match &invite.contact {
        Some(user) => format!(
            "<p><strong>{user}@{domain}</strong> invited you to chat. {domain} is a server for XMPP: open, \
             federated, end-to-end encrypted messaging. The invitation expires {expires}.{uses}</p>\n\
             <p>Already have an XMPP account? Open the link below in your app to add {user} as a contact.</p>",
            user = esc(user),
            domain = esc(domain),
        ),
        None => format!(
            "<p>You have been invited to chat on <strong>{domain}</strong>, a server for XMPP: open, federated, \
             end-to-end encrypted messaging. The invitation expires {expires}.{uses}</p>",
            domain = esc(domain),
        ),
    };
    let form = if invite.allow_registration {
        format!(
            r#"<h2>Or create your account here</h2>
<p>If your app cannot use invitations, choose a username and password here, then log in with them in the app.</p>
{error}<form method="post">
<label for="username">Username</label>
<input id="username" name="username" autocomplete="username" autocapitalize="none" spellcheck="false" maxlength="64" required value="{username}"> <span class="domain">@{domain}</span>
<label for="password">Password (at least {MIN_PASSWORD} characters)</label>
<input id="password" name="password" type="password" autocomplete="new-password" minlength="{MIN_PASSWORD}" required>
<label for="confirm">Password again</label>
<input id="confirm" name="confirm" type="password" autocomplete="new-password" minlength="{MIN_PASSWORD}" required>
<button type="submit">Create account</button>
</form>"#,
            domain = esc(domain),
            username = esc(username),
        )
    } else {
        error
    };
    let body = format!(
        r#"{intro}
<h2>1. Install an app</h2>
<ul class="apps">
<li><strong>Android:</strong> <a href="https://conversations.im/">Conversations</a></li>
<li><strong>iPhone and iPad:</strong> <a href="https://monal-im.org/">Monal</a> or <a href="https://siskin.im/">Siskin IM</a></li>
<li><strong>Mac:</strong> <a href="https://monal-im.org/">Monal</a></li>
<li><strong>Windows and Linux:</strong> <a href="https://gajim.org/">Gajim</a>, or on Linux <a href="https://dino.im/">Dino</a></li>
</ul>
<h2>2. Open the invitation in the app</h2>
<p><a class="button" href="{uri}">Open in your app</a></p>
<p>On another device? Scan this code with the app:</p>
<div class="qr">{qr}</div>
{form}"#,
        uri = esc(&uri),
    );
    page(status, domain, &format!("Join {domain}"), &body)
}

/// A whole HTML page with the headers every page here carries.
fn page(status: StatusCode, domain: &str, title: &str, body: &str) -> Resp {
    let html = format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title} · {domain}</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 34em; margin: 0 auto; padding: 1em; color: #222; background: #fafafa; }}
h1 {{ font-size: 1.5em; margin-top: 0.5em; }}
h2 {{ font-size: 1.15em; margin-top: 1.5em; }}
a {{ color: #0b57d0; }}
.button, button {{ display: inline-block; background: #0b57d0; color: #fff; border: 0; border-radius: 6px; padding: 0.6em 1.2em; font-size: 1em; text-decoration: none; }}
.qr svg {{ width: 220px; height: 220px; }}
label {{ display: block; margin-top: 0.8em; }}
input {{ font-size: 1em; padding: 0.4em; width: 60%; max-width: 20em; }}
button {{ margin-top: 1em; }}
.error {{ background: #fde8e8; border-left: 4px solid #c00; padding: 0.5em; }}
.domain {{ color: #555; }}
</style>
</head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"#,
        title = esc(title),
        domain = esc(domain),
    );
    let mut r = Response::new(Full::new(Bytes::from(html)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    let v = header::HeaderValue::from_static;
    h.insert(header::CONTENT_TYPE, v("text/html; charset=utf-8"));
    // The token is in the URL: never leak it in a Referer, never cache it.
    h.insert(header::REFERRER_POLICY, v("no-referrer"));
    h.insert(header::CACHE_CONTROL, v("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, v("nosniff"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        v("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_token_shape() {
        // The page escapes with the XML escaper the streams use; `&apos;` is
        // an HTML5 entity too.
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&apos;&amp;&apos;&lt;/a&gt;"
        );
        assert!(plausible_token("AbCdEf0123456789-_xyzABCDEFG"));
        assert!(!plausible_token("short"));
        assert!(!plausible_token("../../../../etc/passwd-xxxxxx"));
        assert!(!plausible_token(&"a".repeat(65)));
    }
}

//! HTTP side of XEP-0363: `PUT` and `GET /upload/<id>/<name>`, with CORS,
//! `OPTIONS` preflight and single-range `GET`. Files live in
//! `data_dir/upload/<id>`; the name in the URL is never used as a path.

use super::Resp;
use crate::{core::Core, store};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use rusqlite::{params, OptionalExtension};
use std::{path::PathBuf, sync::Arc, time::Duration};
use tokio::io::AsyncWriteExt;

/// How long after the slot was handed out the PUT may come.
const PUT_WINDOW: i64 = 300;

fn cors(mut r: Resp) -> Resp {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        header::HeaderValue::from_static("GET, HEAD, PUT, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        header::HeaderValue::from_static("Content-Type, Content-Length, Range"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        header::HeaderValue::from_static("86400"),
    );
    r
}

fn status(s: StatusCode, msg: &str) -> Resp {
    cors(super::json(s, serde_json::json!({ "detail": msg })))
}

fn dir(core: &Core) -> PathBuf {
    core.config.data_dir.join("upload")
}

struct Slot {
    size: i64,
    content_type: Option<String>,
    created: i64,
    uploaded: bool,
}

pub async fn handle(core: &Arc<Core>, req: Request<Incoming>) -> Resp {
    if !core.config.upload.enabled {
        return status(StatusCode::NOT_FOUND, "Not found.");
    }
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches("/upload/").splitn(2, '/');
    let id = parts.next().unwrap_or_default().to_string();
    // Ids are 32 hex characters; anything else (traversal included) is unknown.
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return status(StatusCode::NOT_FOUND, "Not found.");
    }
    if req.method() == Method::OPTIONS {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        return cors(r);
    }
    let i = id.clone();
    let slot = core
        .store
        .call(move |c| {
            Ok(c.query_row(
                "SELECT size, content_type, created_at, uploaded FROM uploads WHERE id=?1",
                params![i],
                |r| {
                    Ok(Slot {
                        size: r.get(0)?,
                        content_type: r.get(1)?,
                        created: r.get(2)?,
                        uploaded: r.get(3)?,
                    })
                },
            )
            .optional()?)
        })
        .await;
    let Ok(Some(slot)) = slot else {
        return status(StatusCode::NOT_FOUND, "Not found.");
    };
    match *req.method() {
        Method::PUT => put(core, &id, slot, req).await,
        Method::GET | Method::HEAD => get(core, &id, slot, &req).await,
        _ => status(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed."),
    }
}

async fn put(core: &Arc<Core>, id: &str, slot: Slot, req: Request<Incoming>) -> Resp {
    if slot.uploaded {
        return status(StatusCode::CONFLICT, "This slot was already used.");
    }
    if store::now() - slot.created > PUT_WINDOW {
        return status(StatusCode::GONE, "This slot expired; request a new one.");
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    if declared.is_some_and(|d| d != slot.size) {
        return status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Content-Length differs from the slot's size.",
        );
    }
    if let (Some(want), Some(got)) = (
        &slot.content_type,
        req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
    ) {
        if !got.eq_ignore_ascii_case(want) {
            return status(StatusCode::BAD_REQUEST, "Content-Type differs from the slot's.");
        }
    }
    let d = dir(core);
    if let Err(e) = tokio::fs::create_dir_all(&d).await {
        tracing::error!(error = %e, "cannot create the upload directory");
        return status(StatusCode::INTERNAL_SERVER_ERROR, "Storage unavailable.");
    }
    let tmp = d.join(format!("{id}.part"));
    let mut file = match tokio::fs::File::create(&tmp).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot create an upload file");
            return status(StatusCode::INTERNAL_SERVER_ERROR, "Storage unavailable.");
        }
    };
    let mut body = req.into_body();
    let mut written: i64 = 0;
    loop {
        let frame = match tokio::time::timeout(Duration::from_secs(60), body.frame()).await {
            Ok(Some(Ok(f))) => f,
            Ok(None) => break,
            Ok(Some(Err(_))) | Err(_) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return status(StatusCode::BAD_REQUEST, "The upload was interrupted.");
            }
        };
        if let Ok(data) = frame.into_data() {
            written += data.len() as i64;
            if written > slot.size {
                let _ = tokio::fs::remove_file(&tmp).await;
                return status(StatusCode::PAYLOAD_TOO_LARGE, "More data than the slot's size.");
            }
            if file.write_all(&data).await.is_err() {
                let _ = tokio::fs::remove_file(&tmp).await;
                return status(StatusCode::INSUFFICIENT_STORAGE, "Cannot store the file.");
            }
        }
    }
    if written != slot.size || file.sync_all().await.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
        return status(
            StatusCode::BAD_REQUEST,
            "The body's length differs from the slot's size.",
        );
    }
    drop(file);
    if tokio::fs::rename(&tmp, d.join(id)).await.is_err() {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "Storage unavailable.");
    }
    let i = id.to_string();
    let _ = core
        .store
        .call(move |c| Ok(c.execute("UPDATE uploads SET uploaded=1 WHERE id=?1", params![i])?))
        .await;
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::CREATED;
    cors(r)
}

/// Parse `bytes=a-b` (one range) against `len`.
fn range(h: &str, len: u64) -> Option<(u64, u64)> {
    let spec = h.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            (len.saturating_sub(n), len.checked_sub(1)?)
        }
        (s, "") => (s.parse().ok()?, len.checked_sub(1)?),
        (s, e) => (s.parse().ok()?, e.parse::<u64>().ok()?.min(len.checked_sub(1)?)),
    };
    (start <= end && end < len).then_some((start, end))
}

async fn get(core: &Arc<Core>, id: &str, slot: Slot, req: &Request<Incoming>) -> Resp {
    if !slot.uploaded {
        return status(StatusCode::NOT_FOUND, "Not found.");
    }
    let data = match tokio::fs::read(dir(core).join(id)).await {
        Ok(d) => d,
        Err(_) => return status(StatusCode::NOT_FOUND, "Not found."),
    };
    let len = data.len() as u64;
    let ct = slot.content_type.unwrap_or_else(|| "application/octet-stream".into());
    let mut r = Response::new(Full::new(Bytes::new()));
    let mut body = Bytes::from(data);
    if let Some(h) = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()) {
        match range(h, len) {
            Some((s, e)) => {
                body = body.slice(s as usize..=e as usize);
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                r.headers_mut().insert(
                    header::CONTENT_RANGE,
                    format!("bytes {s}-{e}/{len}").parse().expect("ascii"),
                );
            }
            None => {
                let mut r = status(StatusCode::RANGE_NOT_SATISFIABLE, "Range not satisfiable.");
                r.headers_mut()
                    .insert(header::CONTENT_RANGE, format!("bytes */{len}").parse().expect("ascii"));
                return r;
            }
        }
    }
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        ct.parse()
            .unwrap_or(header::HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::ACCEPT_RANGES, header::HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, body.len().into());
    // Uploaded content is never rendered as a page of this origin.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    if req.method() != Method::HEAD {
        *r.body_mut() = Full::new(body);
    }
    cors(r)
}

/// Delete files older than `[upload] expire_after` (hourly, in the background).
pub fn spawn_expiry(core: &Arc<Core>) {
    let core = core.clone();
    let mut stop = core.shutdown.clone();
    tokio::spawn(async move {
        loop {
            let cutoff = store::now() - core.config.upload.expire_after.get().as_secs() as i64;
            let stale = store::now() - PUT_WINDOW * 2;
            let ids = core
                .store
                .call(move |c| {
                    let mut st = c.prepare(
                        "SELECT id FROM uploads WHERE created_at < ?1 OR (uploaded = 0 AND created_at < ?2)",
                    )?;
                    let ids: Vec<String> = st
                        .query_map(params![cutoff, stale], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    c.execute(
                        "DELETE FROM uploads WHERE created_at < ?1 OR (uploaded = 0 AND created_at < ?2)",
                        params![cutoff, stale],
                    )?;
                    Ok(ids)
                })
                .await
                .unwrap_or_default();
            for id in ids {
                let _ = tokio::fs::remove_file(dir(&core).join(&id)).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {},
                _ = crate::shutdown::stopped(&mut stop) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::range;

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(range("bytes=100-", 100), None);
        assert_eq!(range("bytes=0-1,5-6", 100), None);
    }
}

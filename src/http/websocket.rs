//! The HTTP side of XMPP over WebSocket (RFC 7395) and its discovery
//! (XEP-0156): the opening handshake at `/xmpp-websocket` (RFC 6455 §4.2,
//! the `xmpp` subprotocol required), and `/.well-known/host-meta` in its
//! XRD and JSON forms naming the `wss://` endpoint. The upgraded connection
//! is framed by tungstenite and handed to the XMPP layer through a
//! [`Handler`] it registered; this module knows no XMPP.

use super::{json, Resp};
use crate::{certs::ChannelBindings, core::Core};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{self, HeaderValue},
    upgrade::OnUpgrade,
    Method, Request, Response, StatusCode, Version,
};
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc};
use tokio_tungstenite::{
    tungstenite::protocol::{Role, WebSocketConfig},
    WebSocketStream,
};

pub use crate::config::WEBSOCKET_PATH;

/// RFC 6455's GUID for `Sec-WebSocket-Accept`.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// RFC 7395 §3.1.
const SUBPROTOCOL: &str = "xmpp";
/// The link relation of XEP-0156 for RFC 7395.
const REL_WEBSOCKET: &str = "urn:xmpp:alt-connections:websocket";

/// An upgraded WebSocket connection.
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// What the XMPP layer gets for each connection.
pub struct Connection {
    pub ws: Socket,
    pub peer: SocketAddr,
    pub bindings: ChannelBindings,
}

/// Serves one upgraded connection until it ends.
pub type Handler = Arc<dyn Fn(Connection) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// An accepted upgrade waiting for hyper to hand the connection over. HTTP/1
/// has at most one per connection; the connection's own task runs it, so
/// the accept loop's per-address accounting covers the WebSocket too.
pub struct Pending {
    upgrade: OnUpgrade,
    peer: SocketAddr,
    bindings: ChannelBindings,
}

impl Pending {
    /// Wait for the upgrade and serve the WebSocket with `handler`.
    pub async fn run(self, core: &Core, handler: &Handler) {
        let upgraded = match self.upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let limit = core.config.limits.max_stanza_size + 4096;
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_write_buffer_size(4 << 20)
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit));
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        handler(Connection {
            ws,
            peer: self.peer,
            bindings: self.bindings,
        })
        .await
    }
}

fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455 §4.2.2).
fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(ACCEPT_GUID.as_bytes());
    B64.encode(h.finalize())
}

fn refuse(status: StatusCode, detail: &str) -> Resp {
    json(status, serde_json::json!({ "detail": detail }))
}

/// The opening handshake. On success the answer is `101 Switching
/// Protocols` and `pending` holds the upgrade for the connection's task.
pub fn handshake(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    bindings: ChannelBindings,
    pending: &mut Option<Pending>,
) -> Resp {
    if req.method() != Method::GET {
        let mut r = refuse(StatusCode::METHOD_NOT_ALLOWED, "use GET to open a WebSocket");
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let upgrade = req.version() == Version::HTTP_11
        && header_has_token(&req, header::UPGRADE, "websocket")
        && header_has_token(&req, header::CONNECTION, "upgrade");
    if !upgrade {
        let mut r = refuse(
            StatusCode::UPGRADE_REQUIRED,
            "this is an XMPP WebSocket endpoint (RFC 7395): open it with an HTTP/1.1 WebSocket handshake",
        );
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    if req.headers().get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut r = refuse(StatusCode::UPGRADE_REQUIRED, "only WebSocket version 13 is supported");
        r.headers_mut()
            .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return r;
    }
    let key = match req.headers().get(header::SEC_WEBSOCKET_KEY) {
        Some(k) if B64.decode(k.as_bytes()).is_ok_and(|d| d.len() == 16) => k.as_bytes().to_vec(),
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key is missing or not 16 bytes of base64",
            )
        }
    };
    if !header_has_token(&req, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the `xmpp` WebSocket subprotocol (RFC 7395) is required in Sec-WebSocket-Protocol",
        );
    }
    *pending = Some(Pending {
        upgrade: hyper::upgrade::on(&mut req),
        peer,
        bindings,
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept_key(&key)).expect("base64 is a valid header value"),
    );
    r
}

/// XEP-0156 host-meta, `json` for the JSON form. 404 when WebSocket is off
/// (nothing is announced that is not served).
pub fn host_meta(core: &Core, json_form: bool) -> Resp {
    let Some(url) = core.config.websocket_url() else {
        return refuse(StatusCode::NOT_FOUND, "Not found.");
    };
    let (body, ctype) = if json_form {
        let v = serde_json::json!({ "links": [ { "rel": REL_WEBSOCKET, "href": url } ] });
        (v.to_string(), "application/json")
    } else {
        (
            format!(
                "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n  <Link rel='{REL_WEBSOCKET}' href='{}'/>\n</XRD>\n",
                crate::escape::escape(&url)
            ),
            "application/xrd+xml",
        )
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    // XEP-0156 §4: web clients on other origins read these files.
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_rfc_6455() {
        // RFC 6455 §1.3's example.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}

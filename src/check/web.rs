//! `pushbox check web`: XMPP over WebSocket as a web client finds it
//! (XEP-0156): host-meta in both forms at the public HTTPS URL and at the
//! domain itself, and the announced `wss://` endpoint answering a WebSocket
//! handshake with the `xmpp` subprotocol. Checked over the network, with
//! the certificate verified, like a client would.

use super::{Level, Report, Section};
use crate::{
    config::{Config, TlsMode},
    push::client::{tls_config, HttpsClient},
};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use bytes::Bytes;
use http_body_util::Full;
use std::{path::PathBuf, sync::Arc, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Extra roots a client of this server needs (the local CA in self-signed
/// mode, the test CA of an ACME directory).
fn extra_roots(config: &Config) -> Option<PathBuf> {
    match config.tls.mode {
        TlsMode::SelfSigned => Some(config.data_dir.join("tls/ca.pem")).filter(|p| p.exists()),
        TlsMode::Acme => config.tls.acme.ca_roots.clone(),
        TlsMode::Files => None,
    }
}

pub async fn check(config: &Config, r: &mut Report) {
    let s = Section::Web;
    let Some(ws_url) = config.websocket_url() else {
        r.push(
            s,
            Level::Ok,
            "websocket",
            "off ([websocket] enabled = false): no host-meta is served",
        );
        return;
    };
    let roots = extra_roots(config);
    let client = match HttpsClient::new(roots.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            r.push(s, Level::Error, "TLS roots", e.to_string());
            return;
        }
    };
    let public = config.public_url();
    let at_domain = format!("https://{}", config.domain);
    let mut bases = vec![(public.clone(), Level::Error)];
    if authority(&public) != authority(&at_domain) {
        // Clients look at the domain itself, on port 443.
        bases.push((at_domain, Level::Warning));
    }
    for (base, level) in bases {
        for path in ["/.well-known/host-meta", "/.well-known/host-meta.json"] {
            let url = format!("{base}{path}");
            match fetch(&client, &url).await {
                Ok(body) if body.contains(&ws_url) => {
                    r.push(s, Level::Ok, &url, format!("names {ws_url}"));
                }
                Ok(_) => {
                    r.push(s, level, &url, format!("answers, but does not name {ws_url}"));
                    r.fix("if a web server answers there, let it proxy /.well-known/host-meta* to pushbox");
                }
                Err(e) => {
                    r.push(s, level, &url, e);
                    r.fix(format!(
                        "web clients look for {path} at https://{}/ (XEP-0156): listen on port 443 \
                         (listen.https), or have the web server there proxy it to pushbox",
                        config.domain
                    ));
                }
            }
        }
    }
    match handshake(&ws_url, roots.as_deref()).await {
        Ok(()) => r.push(s, Level::Ok, &ws_url, "accepts a WebSocket with the xmpp subprotocol"),
        Err(e) => {
            r.push(s, Level::Error, &ws_url, e);
            r.fix("set [websocket] public_url to where pushbox's /xmpp-websocket is reachable");
        }
    }
}

/// `host[:port]` of a URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

async fn fetch(client: &HttpsClient, url: &str) -> Result<String, String> {
    let req = hyper::Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(TIMEOUT, client.send(req))
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    Ok(String::from_utf8_lossy(resp.body()).into_owned())
}

/// An RFC 6455 opening handshake asking for the `xmpp` subprotocol.
async fn handshake(ws_url: &str, roots: Option<&std::path::Path>) -> Result<(), String> {
    let Some(rest) = ws_url.strip_prefix("wss://") else {
        return Err("not a wss:// URL: browsers refuse plain WebSocket from secure pages".into());
    };
    let (auth, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let (host, port) = match auth.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.trim_matches(['[', ']']), p.parse().unwrap_or(443)),
        _ => (auth, 443),
    };
    let mut tls = tls_config(roots).map_err(|e| e.to_string())?.as_ref().clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let go = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let key = B64.encode(rand::random::<[u8; 16]>());
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {auth}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        if !head.starts_with("http/1.1 101") {
            return Err(format!(
                "no WebSocket there: {}",
                head.lines().next().unwrap_or("no answer")
            ));
        }
        if !head.contains("sec-websocket-protocol: xmpp") {
            return Err("the WebSocket does not speak the xmpp subprotocol (RFC 7395)".into());
        }
        Ok(())
    };
    tokio::time::timeout(TIMEOUT, go)
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
}

//! The TURN server's listeners: one task per UDP socket, and one per TCP or
//! TLS connection that cuts the byte stream into STUN messages and
//! ChannelData frames (RFC 8656 §12.5 padding) and writes answers and
//! relayed data through a bounded queue. TCP and TLS connections come
//! through `net::Acceptor` like every other listener.

use super::{stun, FiveTuple, Link, Transport, TurnServer};
use crate::shutdown::stopped;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    sync::mpsc,
};

/// A connection without an allocation is closed after this much silence.
const IDLE_WITHOUT_ALLOCATION: Duration = Duration::from_secs(60);
/// Frames waiting for a slow TCP client before newer ones are dropped.
const QUEUE: usize = 512;
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Serve one UDP socket until shutdown.
pub async fn serve_udp(server: Arc<TurnServer>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let Ok(local) = socket.local_addr() else { return };
    let link = Link::Udp(socket.clone());
    let mut stop = server.shutdown.clone();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "TURN UDP receive failed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let tuple = FiveTuple {
            transport: Transport::Udp,
            server: local,
            client: from,
        };
        server.handle(&buf[..n], tuple, &link);
    }
}

/// Serve one TCP connection (STUN/TURN over TCP).
pub async fn serve_tcp(server: Arc<TurnServer>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let Ok(local) = tcp.local_addr() else { return };
    serve_stream(server, tcp, local, peer, Transport::Tcp).await;
}

/// Serve one TLS connection (TURN over TLS, `turns:`).
pub async fn serve_tls(server: Arc<TurnServer>, tls: tokio_rustls::TlsAcceptor, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let Ok(local) = tcp.local_addr() else { return };
    match tokio::time::timeout(TLS_HANDSHAKE, tls.accept(tcp)).await {
        Ok(Ok(s)) => serve_stream(server, s, local, peer, Transport::Tls).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TURN TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TURN TLS handshake timed out"),
    }
}

async fn serve_stream<S>(server: Arc<TurnServer>, stream: S, local: SocketAddr, peer: SocketAddr, transport: Transport)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let link = Link::Stream(tx);
    let tuple = FiveTuple {
        transport,
        server: local,
        client: peer,
    };
    let mut stop = server.shutdown.clone();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16384];
    'conn: loop {
        // Hand over every whole frame in the buffer, then drop them at once.
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            match stun::frame_len(rest) {
                None => break,
                Some(Err(())) => {
                    tracing::debug!(%peer, "TURN stream: not STUN or ChannelData; closing");
                    break 'conn;
                }
                Some(Ok(len)) if rest.len() >= len => {
                    server.handle(&rest[..len], tuple, &link);
                    at += len;
                }
                Some(Ok(_)) => break,
            }
        }
        buf.drain(..at);
        let n = tokio::select! {
            r = tokio::time::timeout(IDLE_WITHOUT_ALLOCATION, rd.read(&mut chunk)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => n,
                // Silence ends only a connection without an allocation
                // (asked here, not on every read of a busy one).
                Err(_) if server.has_allocation(&tuple) => continue,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        buf.extend_from_slice(&chunk[..n]);
    }
    server.connection_closed(&tuple);
    drop(link);
    let _ = writer.await;
}

//! A TCP stream that remembers when the kernel received the bytes of its
//! last read (`SO_TIMESTAMPNS`): the moment a message reached the
//! generator's socket, before the generator's own scheduling and parsing.
//! The latency to that moment is the server's and the network's part
//! alone; the rest is the generator's (its runtime busy with other
//! connections, or its threads waiting for a core).

use std::{
    io,
    os::fd::AsRawFd,
    pin::Pin,
    sync::OnceLock,
    task::{ready, Context, Poll},
    time::{Instant, SystemTime, UNIX_EPOCH},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, Interest, ReadBuf},
    net::TcpStream,
};

/// The wall clock (ns since the epoch) and the monotonic clock at the
/// same moment: kernel timestamps are wall-clock time, the generator's
/// stamps are µs of [`Instant`] since it started.
fn epoch() -> &'static (u128, Instant) {
    static E: OnceLock<(u128, Instant)> = OnceLock::new();
    E.get_or_init(|| {
        let i = Instant::now();
        let w = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        (w.as_nanos(), i)
    })
}

/// `at` (µs since `start` on the monotonic clock) for a kernel timestamp.
fn to_us(start: Instant, ts_ns: u128) -> u64 {
    let (wall0, mono0) = *epoch();
    // ts - start = (ts - wall0) + (mono0 - start), either sign.
    let since_epoch0 = ts_ns as i128 - wall0 as i128;
    let epoch_after_start = match mono0.checked_duration_since(start) {
        Some(d) => d.as_nanos() as i128,
        None => -(start.duration_since(mono0).as_nanos() as i128),
    };
    ((since_epoch0 + epoch_after_start).max(0) / 1000) as u64
}

pub struct RxStamped {
    tcp: TcpStream,
    /// When the kernel received the last bytes read, µs since `start`.
    last_rx_us: Option<u64>,
    start: Instant,
}

impl RxStamped {
    /// Wrap `tcp` and ask the kernel for receive timestamps; `start` is
    /// the generator's clock origin.
    pub fn new(tcp: TcpStream, start: Instant) -> io::Result<RxStamped> {
        epoch();
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and an int option of the right size.
        let r = unsafe {
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RxStamped {
            tcp,
            last_rx_us: None,
            start,
        })
    }

    pub fn last_rx_us(&self) -> Option<u64> {
        self.last_rx_us
    }
}

/// One `recvmsg` into `buf`: bytes read and the kernel's receive time (ns
/// since the epoch) if it sent one.
fn recv_stamped(fd: i32, buf: &mut [u8]) -> io::Result<(usize, Option<u128>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one control message holding a timespec, aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: zeroed msghdr, pointing at live buffers of the sizes given.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: as above; the kernel writes at most the lengths given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ts = None;
    // SAFETY: walking the control messages the kernel filled in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let t: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                ts = Some(t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, ts))
}

impl AsyncRead for RxStamped {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            ready!(me.tcp.poll_read_ready(cx))?;
            let fd = me.tcp.as_raw_fd();
            let dst = buf.initialize_unfilled();
            match me.tcp.try_io(Interest::READABLE, || recv_stamped(fd, dst)) {
                Ok((n, ts)) => {
                    buf.advance(n);
                    if let Some(ts) = ts {
                        me.last_rx_us = Some(to_us(me.start, ts));
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for RxStamped {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn kernel_times_map_onto_the_generators_clock() {
        // The epoch is sampled once per process (another test may have
        // done it already): origins are taken relative to it.
        let (wall0, mono0) = *epoch();
        let start = mono0 - Duration::from_millis(5);
        // A packet received 1.5 ms after the epoch sample, 5 ms after the origin.
        assert_eq!(to_us(start, wall0 + 1_500_000), 6_500);
        // A clock origin after the epoch sample works too.
        let later = mono0 + Duration::from_millis(10);
        assert_eq!(to_us(later, wall0 + 12_000_000), 2_000);
        // Before the origin: 0, not a wrap-around.
        assert_eq!(to_us(later, wall0), 0);
    }

    #[tokio::test]
    async fn a_read_carries_the_kernels_receive_time() {
        let start = Instant::now();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), l.accept());
        let mut rx = RxStamped::new(client.unwrap(), start).unwrap();
        assert_eq!(rx.last_rx_us(), None);
        let (mut peer, _) = server.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = start.elapsed().as_micros() as u64;
        tokio::io::AsyncWriteExt::write_all(&mut peer, b"hello").await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::io::AsyncReadExt::read(&mut rx, &mut buf).await.unwrap();
        let after = start.elapsed().as_micros() as u64;
        assert_eq!(&buf[..n], b"hello");
        let at = rx.last_rx_us().expect("a timestamp");
        // Wall and monotonic clocks may differ by the sampling's few µs.
        assert!(at + 1000 >= before && at <= after + 1000, "{before} <= {at} <= {after}");
    }
}

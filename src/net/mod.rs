//! Below every protocol: per-IP connection and login-failure limits
//! ([`Limiter`]) and the one accept loop ([`Acceptor`]) every listener runs —
//! c2s and s2s (STARTTLS and direct TLS), HTTPS, plain HTTP and metrics —
//! so that each applies the same limits and stops the same way — and the
//! one DNS resolver set-up ([`dns`]); the XMPP streams' TLS ([`tls`]).

mod accept;
pub mod dns;
pub mod tls;

pub use accept::{connection_task, Acceptor, Alive};

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Per-IP connection and login-failure accounting. A cheap-clone handle:
/// every accept loop and every connection's guard share one table.
#[derive(Clone)]
pub struct Limiter {
    // A std Mutex: held for a map look-up only, never across an await.
    inner: Arc<Mutex<HashMap<IpAddr, IpState>>>,
    per_minute: u32,
    max_open: u32,
    max_failures: u32,
}

#[derive(Default)]
struct IpState {
    open: u32,
    window_start: Option<Instant>,
    opened_in_window: u32,
    failures_start: Option<Instant>,
    failures: u32,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooFast,
    TooMany,
}

const WINDOW: Duration = Duration::from_secs(60);

impl Limiter {
    pub fn new(per_minute: u32, max_open: u32, max_failures: u32) -> Limiter {
        Limiter {
            inner: Arc::new(Mutex::new(HashMap::new())),
            per_minute,
            max_open,
            max_failures,
        }
    }

    /// Account for a new connection from `ip`. On success the caller must
    /// hold the returned guard for the connection's lifetime.
    pub fn admit(&self, ip: IpAddr) -> Result<ConnGuard, Refusal> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Keep the map from growing without bound under a flood of sources.
        if map.len() > 100_000 {
            map.retain(|_, s| s.open > 0);
        }
        let s = map.entry(ip).or_default();
        let now = Instant::now();
        match s.window_start {
            Some(t) if now.duration_since(t) < WINDOW => {}
            _ => {
                s.window_start = Some(now);
                s.opened_in_window = 0;
            }
        }
        if s.open >= self.max_open {
            return Err(Refusal::TooMany);
        }
        if s.opened_in_window >= self.per_minute {
            return Err(Refusal::TooFast);
        }
        s.opened_in_window += 1;
        s.open += 1;
        Ok(ConnGuard {
            limiter: self.clone(),
            ip,
        })
    }

    /// Record a failed login from `ip`; returns whether it is now blocked.
    pub fn login_failed(&self, ip: IpAddr) -> bool {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.entry(ip).or_default();
        let now = Instant::now();
        match s.failures_start {
            Some(t) if now.duration_since(t) < WINDOW => {}
            _ => {
                s.failures_start = Some(now);
                s.failures = 0;
            }
        }
        s.failures += 1;
        s.failures > self.max_failures
    }

    /// Whether logins from `ip` are refused for now.
    pub fn login_blocked(&self, ip: IpAddr) -> bool {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip)
            .map(|s| s.failures > self.max_failures && s.failures_start.is_some_and(|t| t.elapsed() < WINDOW))
            .unwrap_or(false)
    }
}

/// Releases the connection slot when dropped.
pub struct ConnGuard {
    limiter: Limiter,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut map = self.limiter.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get_mut(&self.ip) {
            s.open = s.open.saturating_sub(1);
            if s.open == 0 && s.failures == 0 && s.window_start.is_none_or(|t| t.elapsed() >= WINDOW) {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_open_limits() {
        let l = Limiter::new(3, 2, 2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = l.admit(ip).unwrap();
        let _b = l.admit(ip).unwrap();
        assert_eq!(l.admit(ip).err(), Some(Refusal::TooMany));
        drop(a);
        let _c = l.admit(ip).unwrap();
        // Third in the window was used by `c`; the fourth is too fast.
        drop(_c);
        assert_eq!(l.admit(ip).err(), Some(Refusal::TooFast));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.admit(other).is_ok());
    }

    #[test]
    fn login_failures_block_an_ip() {
        let l = Limiter::new(100, 100, 2);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert!(!l.login_failed(ip));
        assert!(!l.login_failed(ip));
        assert!(l.login_failed(ip));
        assert!(l.login_blocked(ip));
        assert!(!l.login_blocked("192.0.2.10".parse().unwrap()));
    }
}

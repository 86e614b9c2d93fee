//! Token buckets keyed by whitelist token or client address. A std Mutex:
//! it is held for a map lookup only, never across an `.await`.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Buckets above this count are pruned of full (idle) ones.
const PRUNE_AT: usize = 50_000;

pub struct Buckets<K> {
    map: Mutex<HashMap<K, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    per_minute: u32,
}

impl<K: Hash + Eq + Clone> Default for Buckets<K> {
    fn default() -> Self {
        Buckets {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// Take one token from `key`'s bucket, which holds `per_minute` tokens and
    /// refills at `per_minute` a minute. Err: how long until one is available.
    pub fn take(&self, key: &K, per_minute: u32) -> Result<(), Duration> {
        let per_minute = per_minute.max(1);
        let rate = f64::from(per_minute) / 60.0;
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= PRUNE_AT {
            map.retain(|_, b| {
                let t = b.tokens + now.duration_since(b.at).as_secs_f64() * f64::from(b.per_minute) / 60.0;
                t < f64::from(b.per_minute)
            });
        }
        let b = map.entry(key.clone()).or_insert(Bucket {
            tokens: f64::from(per_minute),
            at: now,
            per_minute,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(f64::from(per_minute));
        b.at = now;
        b.per_minute = per_minute;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses() {
        let b: Buckets<&str> = Buckets::default();
        for _ in 0..3 {
            assert!(b.take(&"t", 3).is_ok());
        }
        let wait = b.take(&"t", 3).unwrap_err();
        assert!(
            wait > Duration::from_secs(1) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // Another key has its own bucket.
        assert!(b.take(&"u", 3).is_ok());
    }
}

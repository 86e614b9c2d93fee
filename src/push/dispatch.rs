//! The dispatcher: claims due deliveries from the outbox (`pending` →
//! `sending`, in one transaction), sends each through its provider and
//! records the outcome. A claimed row belongs to one task, and it is marked
//! done as soon as the provider accepts it, so one accepted push reaches a
//! device once. Rows survive restarts: what was pending or being sent at a
//! crash is sent after it (the one window for a duplicate is a crash between
//! the provider's answer and that write; `apns-collapse-id` and the Web Push
//! `Topic` then make a duplicate replace the first). With PostgreSQL the
//! claim is a lease: a node that dies while sending loses its claims to the
//! other nodes when the lease ends (at-least-once, the same window).

use super::{backend::Finished, now_ms, providers::Outcome, secret, Kind, Relay};
use crate::store::relay::Delivery;
use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

/// Deliveries in flight at once.
const CONCURRENCY: usize = 512;
/// Deliveries fetched per look at the outbox.
const BATCH: usize = 512;
/// Longest wait between retries, whatever `relay.max_retry_delay` says.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// How often the outbox is looked at when nothing wakes the dispatcher.
const POLL: Duration = Duration::from_secs(1);

pub(crate) async fn run(relay: Relay, mut stop: watch::Receiver<bool>) {
    match relay.inner.store.recover().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(deliveries = n, "resuming deliveries interrupted by a stop"),
        Err(e) => tracing::error!(error = %e, "outbox recovery failed"),
    }
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    // Deliveries the store claimed as it committed them: sent at once.
    if let Some(ready) = relay.inner.store.take_ready() {
        relay.inner.handoff.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(send_ready(relay.clone(), ready, permits.clone(), stop.clone()));
    }
    loop {
        if *stop.borrow() {
            return;
        }
        let store = relay.inner.store.clone();
        let due = match store.claim(now_ms(), BATCH).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "outbox read failed");
                Vec::new()
            }
        };
        let mut started = 0;
        for d in due {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            started += 1;
            spawn_delivery(&relay, d, permit);
        }
        if started == BATCH {
            continue;
        }
        let next = store.next_due().await.ok().flatten();
        let wait = match next {
            Some(t) if t > now_ms() => Duration::from_millis((t - now_ms()) as u64).min(POLL),
            _ => POLL,
        };
        tokio::select! {
            _ = relay.inner.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Send what the store hands over in memory, within the same concurrency limit.
async fn send_ready(
    relay: Relay,
    mut ready: tokio::sync::mpsc::Receiver<Delivery>,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let d = tokio::select! {
            d = ready.recv() => match d {
                Some(d) => d,
                None => return,
            },
            _ = crate::shutdown::stopped(&mut stop) => return,
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        spawn_delivery(&relay, d, permit);
    }
}

/// Deliver `d` on a task of its own, holding one of the concurrency
/// permits until it is done.
fn spawn_delivery(relay: &Relay, d: Delivery, permit: tokio::sync::OwnedSemaphorePermit) {
    let relay = relay.clone();
    let span = tracing::info_span!("push", push_id = d.push_id, device = %d.device.id, kind = %d.device.kind,
        token = secret::prefix(&d.token));
    tokio::spawn(
        async move {
            deliver(&relay, d).await;
            drop(permit);
        }
        .instrument(span),
    );
}

async fn deliver(relay: &Relay, d: Delivery) {
    let store = &relay.inner.store;
    let kind = Kind::parse(&d.device.kind);
    let counters = kind.map(|k| relay.inner.counters.provider(k));
    // The same outcome, exported as `pushbox_pushes_total{provider, outcome}`.
    let export = |outcome: &'static str| {
        if let Some(k) = kind {
            metrics::counter!(crate::metrics::PUSHES, "provider" => k.as_str(), "outcome" => outcome).increment(1);
        }
    };
    let (push_id, dev) = (d.push_id, d.device.id.as_str());
    let finish = |how: Finished| store.finish(push_id, dev, how);
    let expired = d.expires <= crate::store::now();
    let outcome = match kind {
        _ if expired => Outcome::Drop("expired before delivery".into()),
        _ if !d.device.active => Outcome::Drop("device inactive".into()),
        None => Outcome::Drop(format!("unknown device kind {}", d.device.kind)),
        Some(k) => relay.inner.providers.send(k, &d).await,
    };
    let result = match outcome {
        Outcome::Delivered(id) => {
            tracing::info!(provider_id = id.as_deref().unwrap_or(""), "delivered");
            counters.map(|c| c.delivered.fetch_add(1, Ordering::Relaxed));
            export("delivered");
            finish(Finished::Done).await
        }
        Outcome::Retry { after, reason } => {
            let cap = relay.inner.config.max_retry_delay.get();
            // Capped at the longest TTL: a later retry would find the push expired anyway.
            let delay = backoff(d.attempts, cap)
                .max(after.unwrap_or_default())
                .min(super::MAX_TTL);
            let at = now_ms() + delay.as_millis() as i64;
            if at / 1000 >= d.expires {
                tracing::warn!(%reason, "giving up: the push expires before the next attempt");
                counters.map(|c| c.failed.fetch_add(1, Ordering::Relaxed));
                export("failed");
                finish(Finished::Failed).await
            } else {
                tracing::info!(%reason, attempt = d.attempts + 1, retry_in_ms = delay.as_millis() as u64, "will retry");
                counters.map(|c| c.retried.fetch_add(1, Ordering::Relaxed));
                export("retried");
                let r = store.reschedule(push_id, dev, at).await;
                relay.inner.wake.notify_one();
                r
            }
        }
        Outcome::Dead(reason) => {
            tracing::warn!(%reason, "device token is dead; device deactivated");
            counters.map(|c| c.pruned.fetch_add(1, Ordering::Relaxed));
            export("pruned");
            store.deactivate_device(dev).await
        }
        Outcome::Drop(reason) => {
            tracing::warn!(%reason, "push dropped");
            counters.map(|c| c.failed.fetch_add(1, Ordering::Relaxed));
            export("failed");
            finish(Finished::Failed).await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "recording the delivery outcome failed");
    }
}

/// Exponential backoff from one second, capped at `cap` (and at most
/// [`MAX_BACKOFF`]), with full jitter on the upper half.
fn backoff(attempts: u32, cap: Duration) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1u32 << attempts.min(20))
        .min(cap.min(MAX_BACKOFF));
    let jitter: f64 = rand::random::<f64>() * 0.5 + 0.5;
    base.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = |n| backoff(n, MAX_BACKOFF);
        assert!(b(0) <= Duration::from_secs(1) && b(0) >= Duration::from_millis(500));
        assert!(b(3) >= Duration::from_secs(4) && b(3) <= Duration::from_secs(8));
        assert!(b(40) <= MAX_BACKOFF);
        assert!(backoff(40, Duration::from_secs(2)) <= Duration::from_secs(2));
        assert!(backoff(40, Duration::from_secs(3600)) <= MAX_BACKOFF);
    }
}

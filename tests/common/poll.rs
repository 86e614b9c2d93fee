//! Polling for what settles in the background (a deletion, a delivery, a
//! retry), shared by both test harnesses: one loop, so both wait the same way.

use std::{future::Future, time::Duration};

/// Call `f` every 50 ms until it returns `Some`; panics naming `what` once
/// `patience` has passed. Use it instead of a fixed sleep before an assertion.
pub async fn until<T, F: Future<Output = Option<T>>>(what: &str, patience: Duration, mut f: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "not in time: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

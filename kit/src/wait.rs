//! Deadlines: how long a test waits for an event before it fails, and polling a condition
//! until it holds or the deadline passes. Never a fixed sleep for an effect.

use std::future::Future;
use std::time::{Duration, Instant};

/// Long enough for a busy 2-core machine; only reached when a test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `check` every 10 ms until it returns `Some`; panics naming `what` after `deadline`.
pub async fn until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`until`] for a condition that needs no awaiting.
pub async fn until_true(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    until(what, deadline, || std::future::ready(check().then_some(()))).await
}

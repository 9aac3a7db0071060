//! Polling with a deadline, for tests that watch a condition come true.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it gives a value, for at most 15 seconds;
/// then panics naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(what, Duration::from_secs(15), check).await
}

/// [`eventually`] with another deadline.
pub async fn eventually_within<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

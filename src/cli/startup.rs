//! One start-up policy for every service: a service that does not answer yet is retried with
//! a growing, logged delay until `--connect-timeout-s` runs out; then, or at once when the
//! service answered with a refusal (bad credentials, no such database or topic), the command
//! fails with an error naming the service, its address (never a password) and the service's
//! own message. Outages after start-up are the pipeline's business: retried without limit.

use holdfast::adapters::AdapterError;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// The first retry's delay; each next one doubles, up to [`DELAY_MAX`].
const DELAY_FIRST: Duration = Duration::from_millis(250);
const DELAY_MAX: Duration = Duration::from_secs(5);

/// Runs `attempt` until it succeeds, fails for good, or `wait` has passed.
pub async fn connect<T, F, Fut>(
    service: &str,
    address: &str,
    wait: Duration,
    mut attempt: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AdapterError>>,
{
    let deadline = Instant::now() + wait;
    let mut delay = DELAY_FIRST;
    for attempts in 1u32.. {
        let error = match attempt().await {
            Ok(value) => {
                if attempts > 1 {
                    tracing::info!(service, address, attempts, "connected");
                }
                return Ok(value);
            }
            Err(error) => error,
        };
        if !error.is_unavailable() {
            return Err(format!("{service} at {address}: {error}"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "{service} at {address} did not answer within {} s (attempts: {attempts}): {error}",
                wait.as_secs()
            ));
        }
        let pause = delay.min(left);
        tracing::warn!(service, address, attempts, %error, retry_in_ms = pause.as_millis() as u64, "not answering yet");
        tokio::time::sleep(pause).await;
        delay = (delay * 2).min(DELAY_MAX);
    }
    unreachable!("the attempts counter cannot run out")
}

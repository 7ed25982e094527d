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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    fn outage() -> AdapterError {
        AdapterError::Unavailable {
            service: "store",
            detail: "connection refused".into(),
        }
    }

    /// Goal: a service that does not answer is retried on a doubling delay until the wait runs
    /// out, then the error names it, its address and the attempts. Method: paused time, a
    /// service that never answers within 10 s: attempts at 0, 0.25, 0.75, 1.75, 3.75, 7.75 and
    /// 10 s.
    #[tokio::test(start_paused = true)]
    async fn an_absent_service_is_retried_on_a_doubling_delay_until_the_wait_ends() {
        let started = Instant::now();
        let times = RefCell::new(Vec::new());
        let error = connect::<(), _, _>("store", "db:5432", Duration::from_secs(10), || {
            times.borrow_mut().push(started.elapsed().as_millis());
            async { Err(outage()) }
        })
        .await
        .unwrap_err();
        assert_eq!(*times.borrow(), [0, 250, 750, 1750, 3750, 7750, 10000]);
        assert!(
            error.starts_with("store at db:5432 did not answer within 10 s (attempts: 7)"),
            "{error}"
        );
    }

    /// Goal: a refusal ends the wait at once, naming the service; a service that answers
    /// late is connected to. Method: a refusal at the first attempt; an outage twice, then
    /// an answer.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_fails_at_once_and_a_late_answer_connects() {
        let attempts = Cell::new(0);
        let error = connect::<(), _, _>("store", "db:5432", Duration::from_secs(10), || {
            attempts.set(attempts.get() + 1);
            async {
                Err(AdapterError::Connect {
                    service: "store",
                    detail: "password authentication failed".into(),
                })
            }
        })
        .await
        .unwrap_err();
        assert_eq!(attempts.get(), 1);
        assert!(error.starts_with("store at db:5432: "), "{error}");
        attempts.set(0);
        let answered = connect("store", "db:5432", Duration::from_secs(10), || {
            attempts.set(attempts.get() + 1);
            let answer = if attempts.get() < 3 {
                Err(outage())
            } else {
                Ok(7)
            };
            async move { answer }
        })
        .await;
        assert_eq!((answered, attempts.get()), (Ok(7), 3));
    }
}

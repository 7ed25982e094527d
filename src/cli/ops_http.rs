//! The operations endpoint of `holdfast run`, served by axum:
//! - `GET /metrics`: every metric in the Prometheus text format;
//! - `GET /livez`: 200 while the member loop polls and no owned partition is stalled, 503 (with
//!   the reason) when a partition's commit point has not moved for `stall_after` with work in
//!   flight, or when no poll has started for `silence_max`;
//! - `GET /readyz`: 200 once the consumer owns a partition and its uncommitted backlog is
//!   within `backlog_max` records, 503 otherwise.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use holdfast::pipeline::{Health, Metrics};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the probes judge by.
#[derive(Clone, Copy, Debug)]
pub struct ProbeLimits {
    /// Longest time without a new poll before the process counts as not live.
    pub silence_max: Duration,
    /// Largest uncommitted backlog (records) of a partition for the process to be ready.
    pub backlog_max: i64,
}

/// The last poll count seen and when it last changed.
#[derive(Clone, Copy, Debug)]
struct PollWatch {
    polls: u64,
    changed_at: Instant,
}

struct Endpoint {
    metrics: Arc<Metrics>,
    limits: ProbeLimits,
    watch: Mutex<PollWatch>,
}

/// Binds `address` and serves the endpoint until the runtime stops.
pub async fn serve(
    address: &str,
    metrics: Arc<Metrics>,
    limits: ProbeLimits,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| format!("cannot listen for metrics on {address}: {error}"))?;
    let watch = PollWatch {
        polls: metrics.polls.get(),
        changed_at: Instant::now(),
    };
    let endpoint = Arc::new(Endpoint {
        metrics,
        limits,
        watch: Mutex::new(watch),
    });
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(endpoint);
    tracing::info!(address, "operations endpoint up: /metrics /livez /readyz");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "operations endpoint stopped");
        }
    });
    Ok(())
}

async fn render_metrics(State(endpoint): State<Arc<Endpoint>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        endpoint.metrics.render_prometheus(),
    )
}

async fn livez(State(endpoint): State<Arc<Endpoint>>) -> (StatusCode, String) {
    let health = endpoint.metrics.health();
    let verdict = match endpoint.watch.lock() {
        Ok(mut watch) => liveness(&health, &mut watch, Instant::now(), endpoint.limits),
        Err(_) => Err("the probe's state is poisoned".to_string()),
    };
    answer(verdict)
}

async fn readyz(State(endpoint): State<Arc<Endpoint>>) -> (StatusCode, String) {
    answer(readiness(&endpoint.metrics.health(), endpoint.limits))
}

fn answer(verdict: Result<String, String>) -> (StatusCode, String) {
    match verdict {
        Ok(reason) => (StatusCode::OK, reason + "\n"),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason + "\n"),
    }
}

/// Live while polls keep starting and no owned partition is stalled.
fn liveness(
    health: &Health,
    watch: &mut PollWatch,
    now: Instant,
    limits: ProbeLimits,
) -> Result<String, String> {
    if health.polls != watch.polls {
        *watch = PollWatch {
            polls: health.polls,
            changed_at: now,
        };
    }
    if !health.stalled.is_empty() {
        let partitions: Vec<String> = health.stalled.iter().map(|p| format!("p{p}")).collect();
        return Err(format!("stalled partitions: {}", partitions.join(",")));
    }
    let silent = now.saturating_duration_since(watch.changed_at);
    if silent > limits.silence_max {
        return Err(format!("no poll for {} ms", silent.as_millis()));
    }
    Ok(format!("live: {} polls", health.polls))
}

/// Ready while the consumer owns a partition and no partition's backlog exceeds the bound.
fn readiness(health: &Health, limits: ProbeLimits) -> Result<String, String> {
    if health.owned == 0 {
        return Err("no partition assigned".to_string());
    }
    if health.lag_max > limits.backlog_max {
        return Err(format!(
            "backlog of {} records over {}",
            health.lag_max, limits.backlog_max
        ));
    }
    Ok(format!(
        "ready: {} partitions, backlog at most {}",
        health.owned, health.lag_max
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One `GET path` over a fresh connection: the status line and the body.
    async fn get(address: &str, path: &str) -> (String, String) {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head.lines().next().unwrap_or_default().to_owned();
        (status, body.to_owned())
    }

    /// Goal: the endpoint serves each probe's verdict with its status, and the metrics, on the
    /// address given. Method: a fresh consumer's metrics (no poll, nothing assigned) served on
    /// a free port, asked over TCP.
    #[tokio::test]
    async fn the_endpoint_serves_the_probes_and_the_metrics() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = free.local_addr().unwrap().to_string();
        drop(free);
        serve(&address, Arc::new(Metrics::new()), LIMITS)
            .await
            .unwrap();
        let (status, body) = get(&address, "/livez").await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 200 OK", "live: 0 polls\n")
        );
        let (status, body) = get(&address, "/readyz").await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            (
                "HTTP/1.1 503 Service Unavailable",
                "no partition assigned\n"
            )
        );
        let (status, body) = get(&address, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains("holdfast_polls_total 0"), "{body}");
        let taken = serve(&address, Arc::new(Metrics::new()), LIMITS).await;
        assert!(taken.unwrap_err().contains(&address));
    }

    const LIMITS: ProbeLimits = ProbeLimits {
        silence_max: Duration::from_secs(10),
        backlog_max: 100,
    };

    fn health(polls: u64, owned: usize, stalled: Vec<i32>, lag_max: i64) -> Health {
        Health {
            polls,
            owned,
            stalled,
            lag_max,
        }
    }

    #[test]
    fn a_polling_consumer_is_live_until_its_polls_stop_for_silence_max() {
        let start = Instant::now();
        let mut watch = PollWatch {
            polls: 0,
            changed_at: start,
        };
        let at = |seconds| start + Duration::from_secs(seconds);
        assert!(liveness(&health(5, 1, vec![], 0), &mut watch, at(8), LIMITS).is_ok());
        // The count moved at 8 s: silence is measured from there.
        assert!(liveness(&health(5, 1, vec![], 0), &mut watch, at(18), LIMITS).is_ok());
        let silent = liveness(&health(5, 1, vec![], 0), &mut watch, at(19), LIMITS);
        assert_eq!(silent, Err("no poll for 11000 ms".to_string()));
        assert!(liveness(&health(6, 1, vec![], 0), &mut watch, at(19), LIMITS).is_ok());
    }

    #[test]
    fn a_stalled_partition_fails_liveness_by_name() {
        let start = Instant::now();
        let mut watch = PollWatch {
            polls: 0,
            changed_at: start,
        };
        let verdict = liveness(&health(3, 2, vec![1, 4], 0), &mut watch, start, LIMITS);
        assert_eq!(verdict, Err("stalled partitions: p1,p4".to_string()));
    }

    #[test]
    fn readiness_needs_an_assignment_and_a_backlog_within_the_bound() {
        assert_eq!(
            readiness(&health(1, 0, vec![], 0), LIMITS),
            Err("no partition assigned".to_string())
        );
        assert!(readiness(&health(1, 2, vec![], 100), LIMITS).is_ok());
        assert_eq!(
            readiness(&health(1, 2, vec![], 101), LIMITS),
            Err("backlog of 101 records over 100".to_string())
        );
    }
}

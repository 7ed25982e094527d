//! The dedup cache on Redis: one `MGET` per batch to check, one pipelined round trip of `SET
//! ... PX` to remember; keys are [`DeliveryKey::to_bytes`], values carry nothing (presence is
//! the answer).
//!
//! A [`ConnectionManager`] multiplexes every caller over one connection and reconnects in the
//! background after Redis restarts, so a restart costs the calls in flight (they fail as
//! [`PortError::Unavailable`] and the protocol degrades to store-only dedup), not the adapter.

use super::{rejected, unavailable, with_causes, AdapterError, CACHE};
use crate::idempotency::DeliveryKey;
use crate::ports::{DedupCache, PortError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// How long one Redis call may take before it counts as an outage. The cache is advisory:
/// waiting longer than a store round trip for it buys nothing.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A [`DedupCache`] on Redis. Clones share one multiplexed connection.
#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("RedisCache").finish_non_exhaustive()
    }
}

impl RedisCache {
    /// Where `url` points, without its credentials: host and port (or socket path).
    pub fn describe_address(url: &str) -> String {
        match redis::Client::open(url) {
            Ok(client) => client.get_connection_info().addr().to_string(),
            Err(_) => "(an unreadable address)".into(),
        }
    }

    /// Connects to `url` (`redis://host:port/db`). Fails if the URL is invalid or Redis does
    /// not answer now; later outages are reported per call and healed by reconnecting.
    pub async fn connect(url: &str) -> Result<RedisCache, AdapterError> {
        let client = redis::Client::open(url).map_err(|error| AdapterError::Config {
            service: CACHE,
            detail: error.to_string(),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let connection = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|error| {
                let detail = with_causes(&error);
                match port_error(&error) {
                    PortError::Unavailable { .. } => AdapterError::Unavailable {
                        service: CACHE,
                        detail,
                    },
                    _ => AdapterError::Connect {
                        service: CACHE,
                        detail,
                    },
                }
            })?;
        Ok(RedisCache { connection })
    }
}

/// Maps a Redis error: anything about the connection, or a server that is not serving yet
/// (loading its data, busy, no master), is an outage; refused credentials and any other
/// server answer refused this request.
fn port_error(error: &redis::RedisError) -> PortError {
    // Refused credentials are a refusal, though the client counts them unrecoverable: waiting
    // would not change them.
    if error.kind() == redis::ErrorKind::AuthenticationFailed {
        return rejected(CACHE, error);
    }
    // Timeouts, dropped and refused connections are I/O errors; a reply the client could not
    // parse is unrecoverable (the connection is replaced).
    let outage = error.is_io_error()
        || error.is_unrecoverable_error()
        || matches!(
            error.code(),
            Some("LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN")
        );
    if outage {
        unavailable(CACHE, error)
    } else {
        rejected(CACHE, error)
    }
}

impl DedupCache for RedisCache {
    async fn contains_batch(&self, keys: &[DeliveryKey]) -> Result<Vec<bool>, PortError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // One MGET for the batch, not an EXISTS per key: one command for Redis to parse and
        // answer. A value is present exactly when the key is.
        let mut lookup = redis::cmd("MGET");
        for key in keys {
            lookup.arg(key.to_bytes());
        }
        let mut connection = self.connection.clone();
        let values: Vec<Option<Vec<u8>>> = lookup
            .query_async(&mut connection)
            .await
            .map_err(|error| port_error(&error))?;
        let known: Vec<bool> = values.iter().map(Option::is_some).collect();
        if known.len() != keys.len() {
            return Err(rejected(
                CACHE,
                format!("{} answers for {} keys", known.len(), keys.len()),
            ));
        }
        Ok(known)
    }

    async fn remember_batch(&self, keys: &[DeliveryKey], ttl: Duration) -> Result<(), PortError> {
        if keys.is_empty() {
            return Ok(());
        }
        // Milliseconds, like the in-memory cache. A TTL under 1 ms expires at once there; Redis
        // refuses `PX 0`, so the same effect is a delete.
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        // Pipelined `SET`s: measured against one script call that set every key, the script
        // cost Redis about a quarter more CPU and the client no less.
        let mut pipeline = redis::pipe();
        for key in keys {
            if ttl_ms == 0 {
                pipeline.del(key.to_bytes()).ignore();
            } else {
                pipeline
                    .cmd("SET")
                    .arg(key.to_bytes())
                    .arg(1u8)
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore();
            }
        }
        let mut connection = self.connection.clone();
        pipeline
            .query_async::<()>(&mut connection)
            .await
            .map_err(|error| port_error(&error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ErrorKind, RedisError, ServerErrorKind};
    use std::io;

    /// Goal: an address is described by host and port, without its credentials.
    #[test]
    fn addresses_are_described_without_credentials() {
        let described = RedisCache::describe_address("redis://:hunter2@127.0.0.1:16379/0");
        assert_eq!(described, "127.0.0.1:16379");
        let unreadable = RedisCache::describe_address("http//nowhere");
        assert_eq!(unreadable, "(an unreadable address)");
    }

    /// Goal: a Redis that does not answer is an outage at connect, which the command line
    /// waits out, and a bad URL is a configuration error, which it does not.
    #[tokio::test]
    async fn connecting_to_nothing_is_an_outage_and_a_bad_url_is_config() {
        let error = RedisCache::connect("redis://127.0.0.1:1")
            .await
            .unwrap_err();
        assert!(error.is_unavailable(), "{error}");
        let error = RedisCache::connect("http//nowhere").await.unwrap_err();
        assert!(matches!(error, AdapterError::Config { .. }), "{error}");
    }

    /// Goal: every kind of failure is classed as the protocol expects: anything about the
    /// connection, or a server not serving yet, is an outage; refused credentials and other
    /// answers are refusals. Method: one error of each kind, each true for one test only.
    #[test]
    fn errors_are_outages_or_refusals_by_kind() {
        let io_error = |kind| RedisError::from(io::Error::new(kind, "io"));
        let server = |kind| RedisError::from((ErrorKind::Server(kind), "server"));
        let outages = [
            io_error(io::ErrorKind::PermissionDenied),
            io_error(io::ErrorKind::TimedOut),
            io_error(io::ErrorKind::ConnectionRefused),
            RedisError::from((ErrorKind::Parse, "unreadable reply")),
            server(ServerErrorKind::BusyLoading),
            server(ServerErrorKind::MasterDown),
            server(ServerErrorKind::TryAgain),
            server(ServerErrorKind::ClusterDown),
        ];
        for error in &outages {
            assert!(port_error(error).is_outage(), "{error:?}");
        }
        let refusals = [
            RedisError::from((ErrorKind::AuthenticationFailed, "denied")),
            server(ServerErrorKind::ResponseError),
            server(ServerErrorKind::NoPerm),
            RedisError::from((ErrorKind::UnexpectedReturnType, "type")),
        ];
        for error in &refusals {
            let classed = port_error(error);
            assert!(matches!(classed, PortError::Rejected { .. }), "{error:?}");
        }
    }
}

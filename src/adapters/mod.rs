//! The real world's dedup cache and order store (Redis and PostgreSQL) and, with the `kafka`
//! feature, its log (rdkafka), behind the traits of [`crate::ports`]. Compiled out of the simulated (`madsim`) and model-checked (`loom`) builds.
//!
//! The adapters are thin: the dedup and merge rules live in [`crate::idempotency`] and
//! [`crate::widetable`]; the adapters must give exactly the answers of
//! [`crate::idempotency::memory::MemoryCache`] and [`crate::idempotency::memory::MemoryStore`].

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod postgres;
pub mod redis;

#[cfg(feature = "kafka")]
pub use self::kafka::{
    create_topic, probe_brokers, read_topic, KafkaGroupOffsets, KafkaLog, KafkaPublisher,
    KafkaSettings,
};
pub use self::postgres::PostgresStore;
pub use self::redis::RedisCache;

use crate::ports::PortError;

/// Why an adapter could not be set up (a bad URL, the service unreachable at start, a schema
/// that cannot be created). Failures of individual calls later are [`PortError`]s.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("invalid {service} configuration: {detail}")]
    Config {
        service: &'static str,
        detail: String,
    },
    /// The service did not answer (connection refused, a timeout, still starting): trying
    /// again later may succeed.
    #[error("{service} is not answering: {detail}")]
    Unavailable {
        service: &'static str,
        detail: String,
    },
    /// The service answered and refused (bad credentials, no such database).
    #[error("could not connect to {service}: {detail}")]
    Connect {
        service: &'static str,
        detail: String,
    },
    #[error("could not prepare {service}: {detail}")]
    Setup {
        service: &'static str,
        detail: String,
    },
}

impl AdapterError {
    /// True when the service did not answer, so that trying again later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AdapterError::Unavailable { .. })
    }
}

/// An error with its chain of causes, each once: client libraries often print only a summary
/// ("db error", "error connecting to server") and keep the server's own message in a source.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The service name Redis errors are reported under.
pub(crate) const CACHE: &str = "redis";
/// The service name PostgreSQL errors are reported under.
pub(crate) const STORE: &str = "postgres";

/// An outage: pause and retry without limit.
pub(crate) fn unavailable(service: &'static str, detail: impl ToString) -> PortError {
    PortError::Unavailable {
        service,
        detail: detail.to_string(),
    }
}

/// A healthy server refused this one request: retry a bounded number of times.
pub(crate) fn rejected(service: &'static str, detail: impl ToString) -> PortError {
    PortError::Rejected {
        service,
        detail: detail.to_string(),
    }
}

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
    create_topic, read_topic, KafkaGroupOffsets, KafkaLog, KafkaPublisher, KafkaSettings,
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

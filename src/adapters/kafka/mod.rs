//! The log on Kafka: [`EventLog`], [`Publisher`] and [`GroupOffsets`] with rdkafka (bundled
//! librdkafka). Behind the `kafka` cargo feature, compiled out of simulated and model-checked
//! builds. One file per job: client settings and the refusal of unsafe ones (`settings`), the
//! error map (`errors`), the consumer (`log`), the producer (`publisher`, its delivery thread in `producer`), other groups'
//! offsets (`offsets`), topic creation and whole-topic reads (`admin`), the bookkeeping of
//! commit answers (`answers`).
//!
//! The consumer is a `BaseConsumer` polled on tokio's blocking pool: librdkafka runs the
//! rebalance callback on the polling thread, and the callback reads the committed offsets of
//! newly assigned partitions with a blocking call, which must not stall an async worker. The
//! callback queues [`Rebalance`] events; [`EventLog::poll`] returns them before its records,
//! like [`crate::memlog::MemoryLog`]. Records fetched before a rebalance that touched their
//! partition are dropped from the poll that saw the rebalance: they belong to the old
//! assignment, and the new owner (possibly us again) reads them from the committed offset.

mod admin;
mod answers;
mod errors;
mod log;
mod offsets;
mod producer;
mod publisher;
mod settings;

pub use admin::{create_topic, probe_brokers, read_topic};
pub use log::KafkaLog;
pub use offsets::KafkaGroupOffsets;
pub use publisher::KafkaPublisher;
pub use settings::KafkaSettings;

#[cfg(doc)]
use crate::ports::{EventLog, GroupOffsets, Publisher, Rebalance};
use std::time::Duration;

/// The service name Kafka errors are reported under.
pub(crate) const LOG: &str = "kafka";

/// How long reading committed offsets (on assignment, or another group's) may take.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a synchronous call to the broker (commit, metadata) may take before it counts as
/// an outage.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests;

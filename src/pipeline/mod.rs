//! The consumer pipeline, written once and generic over the ports: poll a batch, track every
//! offset, dispatch by order id to workers, run each batch through the idempotency protocol,
//! dead-letter what cannot be applied, ack, and commit only the lowest unfinished offset.
//!
//! The same code runs against rdkafka, Redis and PostgreSQL and inside the simulator.

mod compensator;
mod config;
mod consumer;
pub mod dead_letter;
mod histogram;
mod member;
mod metrics;
mod partition;
mod progress;
mod retry;
mod shutdown;
mod worker;

pub use compensator::{Compensator, CompensatorConfig, CompensatorReport};
pub use config::{ConfigError, ConsumerConfig, ProgressMode};
pub use consumer::{Consumer, RunSummary, RunningConsumer};
pub use histogram::Histogram;
pub use metrics::{Counter, Health, Metrics, PartitionCounters, PartitionGauges};
pub use retry::Backoff;
pub use shutdown::{Shutdown, ShutdownTrigger};
pub use worker::Services;

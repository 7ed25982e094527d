//! The simulated world: Kafka, Redis and PostgreSQL models on madsim nodes.

pub mod kafka;
pub mod rpc;

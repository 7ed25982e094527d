//! The Kafka cluster model: brokers, a controller with the group coordinator, and clients.

pub mod replica;

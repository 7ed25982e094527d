//! The Kafka cluster model: brokers, a controller that also hosts the group coordinator, and
//! the producer and consumer clients that implement holdfast's ports.

pub mod broker;
pub mod consumer;
pub mod controller;
pub mod fetcher;
pub mod group;
pub mod metadata;
pub mod producer;
pub mod replica;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use consumer::{SimGroupOffsets, SimLog};
pub use producer::SimPublisher;

/// The producer's `acks` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Acks {
    /// Fire and forget: the producer never hears from the broker.
    Zero,
    /// The leader appended it (to its page cache).
    One,
    /// Every in-sync replica has it, and there were at least `min.insync.replicas`.
    All,
}

/// When a broker writes its page cache to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlushPolicy {
    /// fsync after every append (`flush.messages=1`).
    EveryAppend,
    /// fsync on a timer (`flush.ms`).
    Interval(Duration),
    /// Never: Kafka's default, durability comes from replication alone.
    Never,
}

/// The cluster's settings (the knobs of [`crate::world::WorldConfig`] that concern Kafka).
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    pub brokers: usize,
    pub partitions: i32,
    pub replication_factor: usize,
    pub min_insync_replicas: usize,
    pub flush: FlushPolicy,
    pub unclean_election: bool,
    /// Consumer-group session timeout (also the rebalance timeout).
    pub session_timeout: Duration,
    /// A follower that has not caught up for this long leaves the ISR (`replica.lag.time.max.ms`).
    pub replica_lag_time: Duration,
    /// A broker whose heartbeats stop for this long is dead to the controller.
    pub broker_session_timeout: Duration,
    /// How long a client waits for any one answer (`request.timeout.ms`).
    pub request_timeout: Duration,
    /// Whether the coordinator keeps commit metadata (see `WorldConfig`).
    pub commit_metadata_kept: bool,
}

impl KafkaConfig {
    /// How long a leader holds a follower's fetch that has nothing new
    /// (`replica.fetch.wait.max.ms`): 250 ms, and as Kafka requires, below the lag time (a
    /// follower idle in a held fetch must still count as caught up when data comes) and below
    /// the follower's request timeout (which would give the fetch up first).
    pub fn replica_fetch_wait(&self) -> Duration {
        Duration::from_millis(250)
            .min(self.replica_lag_time / 2)
            .min(self.request_timeout / 2)
    }

    /// Checks the settings, the way a broker refuses to start with nonsense.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=5).contains(&self.brokers) {
            return Err(format!("brokers must be 1..=5, got {}", self.brokers));
        }
        if !(1..=64).contains(&self.partitions) {
            return Err(format!(
                "partitions must be 1..=64, got {}",
                self.partitions
            ));
        }
        if self.replication_factor == 0 || self.replication_factor > self.brokers {
            return Err("replication factor must be 1..=brokers".to_string());
        }
        if self.min_insync_replicas == 0 || self.min_insync_replicas > self.replication_factor {
            return Err("min.insync.replicas must be 1..=replication factor".to_string());
        }
        Ok(())
    }
}

/// The controller's view of one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLeadership {
    pub partition: i32,
    /// Brokers holding a replica, preferred leader first.
    pub replicas: Vec<usize>,
    pub leader: Option<usize>,
    /// Bumped on every leader change; fences zombie leaders and old followers.
    pub leader_epoch: i32,
    pub isr: Vec<usize>,
    /// Bumped on every ISR change, so a broker never adopts an older ISR.
    pub isr_version: u64,
}

/// The port every broker listens on.
pub const BROKER_PORT: u16 = 9092;
/// The port of the controller (and group coordinator).
pub const CONTROLLER_PORT: u16 = 9093;

/// The address of broker `index`.
pub fn broker_address(index: usize) -> SocketAddr {
    let host = u8::try_from(index + 1).unwrap_or(u8::MAX);
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, host)), BROKER_PORT)
}

/// The address of the controller.
pub fn controller_address() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), CONTROLLER_PORT)
}

/// The service name used in port errors.
pub const SERVICE: &str = "kafka";

/// A `PortError::Unavailable` for Kafka.
pub fn unavailable(detail: impl Into<String>) -> holdfast::ports::PortError {
    holdfast::ports::PortError::Unavailable {
        service: SERVICE,
        detail: detail.into(),
    }
}

//! Ports: the only ways the pipeline reaches the outside world.
//!
//! The pipeline is written once, generic over these traits. The real world implements them with
//! rdkafka, Redis and PostgreSQL (`crate::adapters`, compiled out of simulation builds); the
//! simulator implements them against simulated nodes; [`crate::idempotency::memory`] has
//! in-memory versions with failure switches for tests.
//!
//! Every method is async and returns `Send` futures so that the pipeline can run on a
//! multi-threaded runtime as well as in madsim's single-threaded simulation.

use crate::event::OrderEvent;
use crate::idempotency::DeliveryKey;
use crate::widetable::OrderRow;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// A Kafka partition number within the pipeline's one topic.
pub type PartitionId = i32;

/// Why a port call failed. The split decides what the pipeline does next.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The service is down or unreachable: pause and retry without limit; never dead-letter.
    #[error("{service} is unavailable: {detail}")]
    Unavailable {
        service: &'static str,
        detail: String,
    },
    /// The service is healthy but refused this request: retry a bounded number of times.
    #[error("{service} rejected the request: {detail}")]
    Rejected {
        service: &'static str,
        detail: String,
    },
    /// This process no longer owns what it tried to change (a revoked partition, a zombie
    /// generation): drop the work; the new owner redoes it.
    #[error("{service} fenced this member: {detail}")]
    Fenced {
        service: &'static str,
        detail: String,
    },
}

impl PortError {
    /// True for outages, which are retried without limit.
    pub fn is_outage(&self) -> bool {
        matches!(self, PortError::Unavailable { .. })
    }
}

/// One record as read from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub partition: PartitionId,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// Shared, not copied, from the poll to the store (and to a dead letter).
    pub payload: Bytes,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What the group coordinator had stored for a partition when it was assigned to us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset to read.
    pub offset: i64,
    /// Commit metadata as written by the previous owner (holdfast writes the finished offsets
    /// above `offset`; anything else is ignored).
    pub metadata: Option<String>,
}

/// A change of ownership, reported by [`EventLog::poll`] before the records of the same poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rebalance {
    Assigned {
        partition: PartitionId,
        committed: Option<CommittedOffset>,
        /// The group generation of this assignment: it only grows, and within one generation
        /// a partition has one owner, so it fences a store's progress row (`progress =
        /// store`) against an earlier owner.
        generation: i32,
    },
    Revoked {
        partition: PartitionId,
    },
}

/// The result of one poll: ownership changes first, then records in offset order per partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Polled {
    pub rebalances: Vec<Rebalance>,
    pub records: Vec<Record>,
    /// Asynchronous commits the group coordinator answered as stored since the last poll, as
    /// (partition, next offset): the pipeline needs none of them (a recorded history shows
    /// them as the committed offsets; a synchronous commit's answer is its call's). A client
    /// that cannot tell leaves it empty.
    pub commits_answered: Vec<(PartitionId, i64)>,
}

/// One offset to commit: `offset` is the next offset to read (Kafka's convention).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetCommit {
    pub partition: PartitionId,
    pub offset: i64,
    pub metadata: String,
}

/// The consuming side of the log, one consumer-group member.
pub trait EventLog: Send {
    /// Returns up to `records_max` records, waiting at most `timeout` for the first one.
    fn poll(
        &mut self,
        records_max: usize,
        timeout: Duration,
    ) -> impl Future<Output = Result<Polled, PortError>> + Send;

    /// Commits offsets for partitions this member owns. [`CommitMode::Sync`] waits for the
    /// coordinator's answer (used on revoke and shutdown); [`CommitMode::Async`] may return
    /// before the broker answers.
    fn commit(
        &mut self,
        offsets: &[OffsetCommit],
        mode: CommitMode,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Stops fetching from partitions, for back-pressure. Records already returned are
    /// unaffected. Whether a pause outlives the partition's revoke is the client's choice
    /// (librdkafka keeps it, the simulated client too): callers resume a partition when it is
    /// assigned.
    fn pause(
        &mut self,
        partitions: &[PartitionId],
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Fetches from paused partitions again.
    fn resume(
        &mut self,
        partitions: &[PartitionId],
    ) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// Whether [`EventLog::commit`] waits for the group coordinator's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitMode {
    /// Wait: the call returns the coordinator's verdict.
    Sync,
    /// Send and return; a failure shows in the log and the next commit covers it.
    Async,
}

/// A message to publish (dead letters, compensation re-sends, the workload generator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundMessage {
    pub topic: String,
    /// Every holdfast producer keys by order id so that an order stays on one partition.
    pub key: Vec<u8>,
    pub payload: Bytes,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Where an acknowledged message landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub partition: PartitionId,
    pub offset: i64,
}

/// The producing side of the log. `publish` resolves only when the broker acknowledged the
/// message under the producer's `acks` setting (the seed's "send with a callback").
pub trait Publisher: Send + Sync {
    fn publish(
        &self,
        message: OutboundMessage,
    ) -> impl Future<Output = Result<Delivery, PortError>> + Send;
}

/// Reads another group's committed offsets (the compensator only re-sends what the main
/// group has already committed past).
pub trait GroupOffsets: Send + Sync {
    fn committed(
        &self,
        group: &str,
        partitions: &[PartitionId],
    ) -> impl Future<Output = Result<Vec<Option<i64>>, PortError>> + Send;
}

/// The idempotency pre-filter (Redis in the real world). Advisory only: a wrong answer may cost
/// a database round trip, never a lost or doubled effect.
pub trait DedupCache: Send + Sync {
    /// For each delivery, whether the cache remembers it.
    fn contains_batch(
        &self,
        keys: &[DeliveryKey],
    ) -> impl Future<Output = Result<Vec<bool>, PortError>> + Send;

    /// Remembers deliveries for `ttl`. Called only after the store committed them.
    fn remember_batch(
        &self,
        keys: &[DeliveryKey],
        ttl: Duration,
    ) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// What the store did with one event of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApplyOutcome {
    /// Its key was new: the key row and the wide-table merge committed together.
    Applied,
    /// Its key was already there: not applied again. Its content was still joined into the
    /// row by the conflict rule (a redelivery changes nothing; a different event under the
    /// same key wins its column only if the rule says so). This is success, not an error.
    Duplicate,
}

/// A partition's progress written in a batch's transaction (`progress = store`): the commit
/// point and the finished offsets above it (the tracker's encoding, see
/// [`crate::offsets::metadata`]), under the generation that claimed the partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressWrite {
    pub partition: PartitionId,
    /// The claiming generation ([`OrderStore::claim_progress`]); the write lands only while
    /// the partition's row is still claimed by it.
    pub owner: i32,
    pub progress: CommittedOffset,
}

/// The business database (PostgreSQL in the real world): the idempotency guarantee.
pub trait OrderStore: Send + Sync {
    /// Applies a batch in ONE transaction: for each event, insert its idempotency key (applied
    /// if it was new) and join the event into its order's wide row by the conflict rule; and
    /// write each partition's `progress`. Returns one outcome per event, in input order. On
    /// error nothing of the batch is committed; [`PortError::Fenced`] when a progress row is
    /// no longer claimed by the write's owner (a later generation took the partition).
    /// A write whose point is below the stored one keeps the stored progress (two workers'
    /// transactions of one partition may commit in either order).
    fn apply_batch(
        &self,
        events: &[OrderEvent],
        progress: &[ProgressWrite],
    ) -> impl Future<Output = Result<Vec<ApplyOutcome>, PortError>> + Send;

    /// Claims `partition`'s progress row for generation `owner` and returns the progress
    /// stored there (`None` if none was ever written). [`PortError::Fenced`] when a later
    /// generation has claimed it; claiming again under the same generation succeeds.
    fn claim_progress(
        &self,
        partition: PartitionId,
        owner: i32,
    ) -> impl Future<Output = Result<Option<CommittedOffset>, PortError>> + Send;

    /// The wide rows of `order_ids` that have any applied event, read in one round trip and
    /// one snapshot (the compensator's comparison: is each event reflected in its row?).
    fn load_rows(
        &self,
        order_ids: &[String],
    ) -> impl Future<Output = Result<BTreeMap<String, OrderRow>, PortError>> + Send;
}

/// Named points inside the pipeline and the idempotency protocol where a crash is most
/// interesting (the seed's windows). The simulator crashes a node at one of them through a
/// [`Probe`]; real builds use [`NoProbe`], which costs nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultPoint {
    /// Records polled, nothing processed yet.
    AfterPoll,
    /// The cache answered, the store has not been called.
    AfterCacheCheck,
    /// The store committed the batch, the cache has not been written.
    AfterStoreCommit,
    /// The cache was written, the offsets have not been acked.
    AfterCacheWrite,
    /// The offsets were acked to the tracker, not yet committed to the log.
    BeforeOffsetCommit,
    /// The offsets were committed to the log.
    AfterOffsetCommit,
    /// Part of a batch's events have been handed to the store.
    MidBatch,
}

impl FaultPoint {
    /// Every fault point, in pipeline order.
    pub const ALL: [FaultPoint; 7] = [
        FaultPoint::AfterPoll,
        FaultPoint::AfterCacheCheck,
        FaultPoint::AfterStoreCommit,
        FaultPoint::AfterCacheWrite,
        FaultPoint::BeforeOffsetCommit,
        FaultPoint::AfterOffsetCommit,
        FaultPoint::MidBatch,
    ];
}

/// Observes the pipeline passing a [`FaultPoint`]. The simulator's probe may never return
/// (the node is being killed) or may delay; that is the whole point.
pub trait Probe: Send + Sync {
    fn at(&self, point: FaultPoint) -> impl Future<Output = ()> + Send;
}

/// The probe of real builds: does nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProbe;

impl Probe for NoProbe {
    async fn at(&self, _point: FaultPoint) {}
}

#[cfg(test)]
mod tests {
    use super::PortError;

    /// Goal: only an unavailable service is an outage (retried without limit); a refusal and a
    /// fence are not. Method: one error of each kind.
    #[test]
    fn only_an_unavailable_service_is_an_outage() {
        let detail = String::new;
        let service = "store";
        assert!(PortError::Unavailable {
            service,
            detail: detail()
        }
        .is_outage());
        assert!(!PortError::Rejected {
            service,
            detail: detail()
        }
        .is_outage());
        assert!(!PortError::Fenced {
            service,
            detail: detail()
        }
        .is_outage());
    }
}

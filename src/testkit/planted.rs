//! Deliberate bugs, for proving that the simulator and the tests catch what they claim to.
//!
//! Each bug is a component swapped in for a sound one, as a simulator swaps a whole state
//! machine: a log wrapper that commits too early, a store wrapper that writes the cache
//! first, a schema without a unique key or with an arrival-order merge, a commit policy that
//! commits past unfinished records. The production code they replace has no switch for them.

use crate::event::{EventKind, OrderEvent};
use crate::idempotency::memory::Schema;
use crate::idempotency::DeliveryKey;
use crate::offsets::{CommitPolicy, Watermark};
use crate::ports::{
    ApplyOutcome, CommitMode, CommittedOffset, DedupCache, EventLog, OffsetCommit, OrderStore,
    PartitionId, Polled, PortError, ProgressWrite, Rebalance,
};
use crate::testkit::policies::AckedPlusOne;
use crate::widetable::{OrderRow, Stamp};
use std::collections::BTreeMap;
use std::time::Duration;

/// One deliberate defect of the kind the seed warns about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PlantedBug {
    /// The consumer commits a batch's offsets before processing it ([`PlantedLog`]).
    CommitBeforeProcessing,
    /// The idempotency protocol writes the cache key before the store commits
    /// ([`PlantedStore`]).
    CacheWrittenBeforeStore,
    /// The store has no unique key: a redelivered event is applied again
    /// ([`PlantedBug::schema`]).
    NoUniqueKey,
    /// The consumer commits the highest polled offset, finished or not ([`PlantedLog`]).
    AutoCommit,
    /// The offset tracker commits the highest acked offset plus one
    /// ([`PlantedBug::commit_policy`]).
    CommitAckedPlusOne,
    /// The wide-table merge lets the last-arriving event win a column
    /// ([`PlantedBug::schema`]).
    MergeByArrival,
}

impl PlantedBug {
    /// Every planted bug.
    pub const ALL: [PlantedBug; 6] = [
        PlantedBug::CommitBeforeProcessing,
        PlantedBug::CacheWrittenBeforeStore,
        PlantedBug::NoUniqueKey,
        PlantedBug::AutoCommit,
        PlantedBug::CommitAckedPlusOne,
        PlantedBug::MergeByArrival,
    ];

    /// The store schema under `bug`: holdfast's unless the bug lives in the schema.
    pub fn schema(bug: Option<PlantedBug>) -> Schema {
        match bug {
            Some(PlantedBug::NoUniqueKey) => Schema {
                unique_key: false,
                ..Schema::HOLDFAST
            },
            Some(PlantedBug::MergeByArrival) => Schema {
                merge: merge_by_arrival,
                ..Schema::HOLDFAST
            },
            _ => Schema::HOLDFAST,
        }
    }

    /// The consumer's commit policy under `bug`: the watermark unless the bug is the policy.
    pub fn commit_policy(bug: Option<PlantedBug>) -> Box<dyn CommitPolicy> {
        match bug {
            Some(PlantedBug::CommitAckedPlusOne) => Box::<AckedPlusOne>::default(),
            _ => Box::new(Watermark),
        }
    }
}

/// The merge of [`PlantedBug::MergeByArrival`]: whatever arrives last wins its column, so the
/// row depends on arrival order.
pub fn merge_by_arrival(row: &mut OrderRow, event: &OrderEvent) -> bool {
    let before = row.clone();
    if row.order_id.is_empty() {
        row.order_id.clone_from(&event.order_id);
    }
    if !event.user_id.is_empty() {
        row.user_id.clone_from(&event.user_id);
    }
    let stamp = Stamp::of(event);
    let column = match event.kind {
        EventKind::Billed => {
            row.bills.insert(stamp.event_id.clone(), stamp);
            return *row != before;
        }
        EventKind::Refunded => {
            row.refunds.insert(stamp.event_id.clone(), stamp);
            return *row != before;
        }
        EventKind::Created => &mut row.created,
        EventKind::Paid => &mut row.paid,
        EventKind::Shipped => &mut row.shipped,
        EventKind::Received => &mut row.received,
        EventKind::Completed => &mut row.completed,
        EventKind::Cancelled => &mut row.cancelled,
    };
    *column = Some(stamp);
    *row != before
}

/// An [`EventLog`] that commits wrongly on behalf of the consumer above it: under
/// [`PlantedBug::CommitBeforeProcessing`] it commits every poll's records as soon as they are
/// polled; under [`PlantedBug::AutoCommit`] it turns each of the consumer's commits into a
/// commit of the highest polled offsets, finished or not. Under any other bug it passes
/// everything through.
pub struct PlantedLog<L> {
    inner: L,
    bug: Option<PlantedBug>,
    /// The highest offset polled per assigned partition.
    polled: BTreeMap<PartitionId, i64>,
}

impl<L: EventLog> PlantedLog<L> {
    /// `inner`, with the log's share of `bug`.
    pub fn new(inner: L, bug: Option<PlantedBug>) -> PlantedLog<L> {
        PlantedLog {
            inner,
            bug,
            polled: BTreeMap::new(),
        }
    }

    fn observe(&mut self, polled: &Polled) -> Vec<OffsetCommit> {
        for change in &polled.rebalances {
            match change {
                Rebalance::Assigned { partition, .. } | Rebalance::Revoked { partition } => {
                    self.polled.remove(partition);
                }
            }
        }
        let mut highest: BTreeMap<PartitionId, i64> = BTreeMap::new();
        for record in &polled.records {
            let entry = highest.entry(record.partition).or_insert(record.offset);
            *entry = (*entry).max(record.offset);
            let seen = self.polled.entry(record.partition).or_insert(record.offset);
            *seen = (*seen).max(record.offset);
        }
        highest
            .into_iter()
            .map(|(partition, offset)| OffsetCommit {
                partition,
                offset: offset + 1,
                metadata: String::new(),
            })
            .collect()
    }
}

impl<L: EventLog> EventLog for PlantedLog<L> {
    async fn poll(&mut self, records_max: usize, timeout: Duration) -> Result<Polled, PortError> {
        let polled = self.inner.poll(records_max, timeout).await?;
        let early = self.observe(&polled);
        if self.bug == Some(PlantedBug::CommitBeforeProcessing) && !early.is_empty() {
            // The bug: the records are not processed yet. A failed commit is the next one's.
            let _ = self.inner.commit(&early, CommitMode::Sync).await;
        }
        Ok(polled)
    }

    async fn commit(
        &mut self,
        offsets: &[OffsetCommit],
        mode: CommitMode,
    ) -> Result<(), PortError> {
        if self.bug != Some(PlantedBug::AutoCommit) {
            return self.inner.commit(offsets, mode).await;
        }
        // The bug: commit whatever was polled, finished or not.
        let mut commits: BTreeMap<PartitionId, OffsetCommit> = offsets
            .iter()
            .map(|commit| (commit.partition, commit.clone()))
            .collect();
        for (&partition, &offset) in &self.polled {
            commits.insert(
                partition,
                OffsetCommit {
                    partition,
                    offset: offset + 1,
                    metadata: String::new(),
                },
            );
        }
        let commits: Vec<OffsetCommit> = commits.into_values().collect();
        self.inner.commit(&commits, mode).await
    }

    async fn pause(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        self.inner.pause(partitions).await
    }

    async fn resume(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        self.inner.resume(partitions).await
    }
}

/// An [`OrderStore`] that, under [`PlantedBug::CacheWrittenBeforeStore`], remembers every
/// event of a batch in the cache before the store commits it: a crash or store failure in
/// between leaves keys in the cache for events never applied, and their redelivery is
/// skipped. Under any other bug it passes everything through.
pub struct PlantedStore<S, C> {
    store: S,
    cache: C,
    ttl: Duration,
    bug: Option<PlantedBug>,
}

impl<S: OrderStore, C: DedupCache> PlantedStore<S, C> {
    /// `store`, writing early to `cache` (for `ttl`) if `bug` says so.
    pub fn new(store: S, cache: C, ttl: Duration, bug: Option<PlantedBug>) -> PlantedStore<S, C> {
        PlantedStore {
            store,
            cache,
            ttl,
            bug,
        }
    }
}

impl<S: OrderStore, C: DedupCache> OrderStore for PlantedStore<S, C> {
    async fn apply_batch(
        &self,
        events: &[OrderEvent],
        progress: &[ProgressWrite],
    ) -> Result<Vec<ApplyOutcome>, PortError> {
        if self.bug == Some(PlantedBug::CacheWrittenBeforeStore) {
            let keys: Vec<DeliveryKey> = events.iter().map(DeliveryKey::of).collect();
            // A failed write only degrades the cache, as the protocol's own write does.
            let _ = self.cache.remember_batch(&keys, self.ttl).await;
        }
        self.store.apply_batch(events, progress).await
    }

    async fn claim_progress(
        &self,
        partition: PartitionId,
        owner: i32,
    ) -> Result<Option<CommittedOffset>, PortError> {
        self.store.claim_progress(partition, owner).await
    }

    async fn load_rows(
        &self,
        order_ids: &[String],
    ) -> Result<BTreeMap<String, OrderRow>, PortError> {
        self.store.load_rows(order_ids).await
    }
}

#[cfg(test)]
mod tests;

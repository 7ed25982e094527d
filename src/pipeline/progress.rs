//! `progress = store`: where an assigned partition resumes, and what each transaction writes
//! of its partitions' progress.
//!
//! On assignment the member claims the partition's progress row in the store for the
//! assignment's generation and resumes from the later of the stored progress and the group's
//! commit. Every batch transaction then writes, per partition it touches, the commit point and
//! the finished offsets above it, including its own records, under that generation: a member
//! whose partition has moved on (a zombie) finds the row claimed by a later generation and its
//! whole transaction is refused as fenced.

use super::metrics::Metrics;
use super::retry::Backoff;
use crate::offsets::{SharedTracker, Ticket};
use crate::ports::{CommittedOffset, OrderStore, PartitionId, PortError, ProgressWrite};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Where a newly assigned partition resumes.
pub(super) trait Resume: Send + Sync {
    /// The progress to resume `partition` from, given the group's `committed` offset and the
    /// assignment's `generation`.
    fn resume(
        &self,
        partition: PartitionId,
        generation: i32,
        committed: Option<CommittedOffset>,
    ) -> impl Future<Output = Option<CommittedOffset>> + Send;

    /// `partitions` are being given up (`tracker` still holds them); their records in
    /// flight are abandoned.
    fn released(
        &self,
        _tracker: &SharedTracker,
        _partitions: &[PartitionId],
    ) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// `progress = kafka`: the group's commit.
pub(super) struct FromCommit;

impl Resume for FromCommit {
    async fn resume(
        &self,
        _partition: PartitionId,
        _generation: i32,
        committed: Option<CommittedOffset>,
    ) -> Option<CommittedOffset> {
        committed
    }
}

/// `progress = store`: claims the partition's row and resumes from the later of it and the
/// group's commit; remembers the claiming generation for the workers' writes.
pub(super) struct FromStore<'a, S> {
    pub store: &'a S,
    pub owners: &'a Owners,
    pub metrics: &'a Metrics,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl<S: OrderStore> Resume for FromStore<'_, S> {
    /// Stores the final progress in a transaction of its own (one attempt: if it fails, the
    /// next owner redoes a little more), then forgets the partitions.
    async fn released(&self, tracker: &SharedTracker, partitions: &[PartitionId]) {
        let writes: Vec<ProgressWrite> = partitions
            .iter()
            .filter_map(|&partition| {
                let epoch = tracker.epoch(partition)?;
                Some(ProgressWrite {
                    partition,
                    owner: self.owners.owner(partition)?,
                    progress: tracker.stored_progress(partition, epoch, &[])?,
                })
            })
            .collect();
        if !writes.is_empty() {
            if let Err(error) = self.store.apply_batch(&[], &writes).await {
                tracing::warn!(%error, "final progress not stored; the next owner redoes more");
            }
        }
        for &partition in partitions {
            self.owners.released(partition);
        }
    }

    async fn resume(
        &self,
        partition: PartitionId,
        generation: i32,
        committed: Option<CommittedOffset>,
    ) -> Option<CommittedOffset> {
        let mut backoff = Backoff::new(self.backoff_initial, self.backoff_max, partition as u64);
        loop {
            match self.store.claim_progress(partition, generation).await {
                Ok(stored) => {
                    self.owners.claimed(partition, generation);
                    return later(stored, committed);
                }
                Err(PortError::Fenced { detail, .. }) => {
                    // A later generation owns the partition: this member is a zombie for it.
                    // Its transactions still carry its generation, so each is refused.
                    crate::reach!("progress.claim_fenced");
                    tracing::warn!(partition, generation, detail, "progress claim fenced");
                    self.owners.claimed(partition, generation);
                    return committed;
                }
                Err(error) => {
                    crate::reach!("progress.claim_retry");
                    self.metrics.retries_outage.add(1);
                    tracing::warn!(%error, partition, "progress claim failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

/// The later of the stored progress and the group's commit (the one further along; the
/// store's on a tie, as it carries every finished offset).
fn later(
    stored: Option<CommittedOffset>,
    committed: Option<CommittedOffset>,
) -> Option<CommittedOffset> {
    match (stored, committed) {
        (Some(stored), Some(committed)) if committed.offset > stored.offset => Some(committed),
        (Some(stored), _) => Some(stored),
        (None, committed) => committed,
    }
}

/// The generation under which this member writes each partition it owns (`progress =
/// store`): the one its claim was made for, refused or not.
#[derive(Debug, Default)]
pub(super) struct Owners {
    claimed: Mutex<BTreeMap<PartitionId, i32>>,
}

impl Owners {
    fn claimed(&self, partition: PartitionId, generation: i32) {
        self.lock().insert(partition, generation);
    }

    /// Forgets a partition given up (or not claimed).
    pub fn released(&self, partition: PartitionId) {
        self.lock().remove(&partition);
    }

    fn owner(&self, partition: PartitionId) -> Option<i32> {
        self.lock().get(&partition).copied()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<PartitionId, i32>> {
        // The map is consistent after every statement: a panicked holder leaves it usable.
        self.claimed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The progress writes of a transaction that finishes `tickets`: one per partition and epoch
/// still owned and claimed.
pub(super) fn writes(
    tracker: &SharedTracker,
    owners: &Owners,
    tickets: &[Ticket],
) -> Vec<ProgressWrite> {
    let mut finishing: BTreeMap<(PartitionId, u64), Vec<i64>> = BTreeMap::new();
    for ticket in tickets {
        finishing
            .entry((ticket.partition, ticket.epoch))
            .or_default()
            .push(ticket.offset);
    }
    finishing
        .into_iter()
        .filter_map(|((partition, epoch), offsets)| {
            let owner = owners.owner(partition)?;
            let progress = tracker.stored_progress(partition, epoch, &offsets)?;
            Some(ProgressWrite {
                partition,
                owner,
                progress,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64) -> Option<CommittedOffset> {
        Some(CommittedOffset {
            offset,
            metadata: None,
        })
    }

    /// Goal: a new owner resumes from whichever of the store and the group is further along,
    /// the store on a tie, and from either alone.
    #[test]
    fn resumes_from_the_later_of_store_and_commit() {
        assert_eq!(later(at(5), at(7)), at(7));
        assert_eq!(later(at(7), at(5)), at(7));
        let stored = Some(CommittedOffset {
            offset: 5,
            metadata: Some("hf:x".into()),
        });
        assert_eq!(later(stored.clone(), at(5)), stored);
        assert_eq!(later(None, at(3)), at(3));
        assert_eq!(later(at(3), None), at(3));
        assert_eq!(later(None, None), None);
    }
}

//! Which offset a partition commits: the seam between the tracker's state and the commit.

use super::{CommitSnapshot, PartitionTracker};
use crate::ports::PartitionId;
use std::fmt;

/// Chooses what each partition commits. holdfast commits the watermark ([`Watermark`]); the
/// seam exists so that other rules (the seed's step 6 read literally, the test kit's
/// deliberate defects) run inside the very same tracker, consumer and simulator, and are
/// measured against it.
pub trait CommitPolicy: fmt::Debug + Send {
    /// Whether [`CommitPolicy::acked`] must see every ack. When it need not, the tracker's
    /// batched ack path does not call it.
    fn watches_acks(&self) -> bool {
        false
    }

    /// `partition` was assigned, resuming from `committed` (the group's committed offset).
    fn assigned(&mut self, _partition: PartitionId, _committed: Option<i64>) {}

    /// `offset` of `partition` finished; `was_lowest` says it was the lowest unfinished one.
    /// Called only when [`CommitPolicy::watches_acks`] is true.
    fn acked(&mut self, _partition: PartitionId, _offset: i64, _was_lowest: bool) {}

    /// What `partition`, tracked by `tracker`, commits now; `None` when nothing is known.
    fn snapshot(
        &self,
        partition: PartitionId,
        tracker: &PartitionTracker,
    ) -> Option<CommitSnapshot>;

    /// The offset [`CommitPolicy::snapshot`] would commit, without encoding its metadata.
    fn point(&self, partition: PartitionId, tracker: &PartitionTracker) -> Option<i64> {
        self.snapshot(partition, tracker)
            .map(|snapshot| snapshot.offset)
    }
}

/// The lowest unfinished offset (or the next one when nothing is in flight), with the finished
/// offsets above it as metadata: nothing below is unfinished, nothing above is redone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watermark;

impl CommitPolicy for Watermark {
    fn snapshot(
        &self,
        partition: PartitionId,
        tracker: &PartitionTracker,
    ) -> Option<CommitSnapshot> {
        Some(CommitSnapshot {
            partition,
            offset: tracker.commit_point()?,
            metadata: tracker.encode_metadata(),
        })
    }

    fn point(&self, _partition: PartitionId, tracker: &PartitionTracker) -> Option<i64> {
        tracker.commit_point()
    }
}

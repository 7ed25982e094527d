//! Offset tracking: commit only up to the lowest unfinished record.
//!
//! Kafka commits one number per partition: the next offset to read. Records are polled in
//! offset order but finish in any order, so the only safe number to commit is the *lowest
//! offset not yet finished* (the watermark). Everything here serves that rule:
//!
//! - [`PartitionTracker`]: one partition. A ring of bits above the watermark, one bit per
//!   offset (set = finished or a gap), so `track` and `ack` are O(1) amortized and allocate
//!   nothing. Bounded by count ([`Limits::in_flight_max`]) and by span ([`Limits::span_max`],
//!   lowest unfinished to highest tracked), so one stuck record cannot grow memory without
//!   limit; both report [`TrackError::Full`] for back-pressure.
//! - [`metadata`]: finished offsets above the watermark, encoded into commit metadata (bitset
//!   or run-length, whichever is smaller, versioned, within a byte budget), so that a restart
//!   skips records already done ([`Tracked::AlreadyDone`]). Too large means no metadata, that
//!   is plain at-least-once, never loss.
//! - [`Tracker`]: many partitions, with an epoch per assignment; an ack carrying a revoked
//!   epoch is refused ([`AckError::StaleEpoch`]). [`Tracker::snapshot`] reads the commit point
//!   and the metadata together ([`CommitSnapshot`]).
//! - [`SharedTracker`]: the concurrent form (workers ack, the poll loop snapshots), a
//!   `Mutex<Tracker>` through `crate::sync`, model checked with loom.
//! - [`CommitPolicy`]: which offset a snapshot commits; holdfast's is [`Watermark`].
//!
//! ```
//! use holdfast::offsets::{Limits, PartitionTracker, Tracked};
//!
//! let mut tracker = PartitionTracker::new(Limits::default());
//! assert_eq!(tracker.track(10).unwrap(), Tracked::New);
//! assert_eq!(tracker.track(12).unwrap(), Tracked::New); // 11 is a gap: finished
//! tracker.ack(12).unwrap();
//! assert_eq!(tracker.commit_point(), Some(10)); // 10 is still running
//! tracker.ack(10).unwrap();
//! assert_eq!(tracker.commit_point(), Some(13));
//! ```
//!
//! Design, metadata byte layout and benchmarks: `docs/offsets.md`.

pub mod metadata;
mod partition;
mod policy;
mod shared;
mod tracker;

pub use partition::{PartitionTracker, RestoreReport};
pub use policy::{CommitPolicy, Watermark};
pub use shared::SharedTracker;
pub use tracker::{Assignment, CommitSnapshot, Progress, Ticket, Tracker};

use crate::ports::PartitionId;

/// Bounds on one partition's tracking state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most records tracked and not yet acked.
    pub in_flight_max: usize,
    /// Most offsets from the lowest unfinished to the highest tracked, inclusive. Sizes the
    /// ring (one bit per offset), so it bounds memory even when one record is stuck.
    pub span_max: u64,
    /// Most bytes of commit metadata (Kafka's default `offset.metadata.max.bytes` is 4096).
    pub metadata_budget_bytes: usize,
}

impl Limits {
    /// Largest span accepted; larger values are clamped (the ring would be 32 MiB).
    pub const SPAN_MAX: u64 = 1 << 28;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            in_flight_max: 10_000,
            span_max: 100_000,
            metadata_budget_bytes: 4096,
        }
    }
}

/// What `track` found out about a polled offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracked {
    /// Process it and ack it.
    New,
    /// The previous owner finished it (restored commit metadata): skip it, do not ack it.
    AlreadyDone,
}

/// Why an offset could not be tracked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    /// Offsets must be tracked in increasing order, above everything tracked before
    /// (and below `i64::MAX`, which has no next offset).
    #[error("offset {offset} is not above the highest tracked offset (next expected >= {next})")]
    Backwards { offset: i64, next: i64 },
    /// Back-pressure: too many in flight, or the offset is too far above a stuck record.
    /// Nothing changed; pause the partition and retry after some acks.
    #[error("tracker full at offset {offset}: {in_flight} in flight, span {span} (limits {in_flight_max}, {span_max})")]
    Full {
        offset: i64,
        in_flight: usize,
        span: u64,
        in_flight_max: usize,
        span_max: u64,
    },
    /// The partition is not assigned to this tracker.
    #[error("partition {partition} is not assigned")]
    NotAssigned { partition: PartitionId },
}

/// Why an ack was refused. None of them changes any state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The offset was never tracked (above the highest tracked, or below where tracking began).
    #[error("offset {offset} was never tracked")]
    NotTracked { offset: i64 },
    /// The offset is already finished (acked before, a gap, or done before a restart).
    #[error("offset {offset} is already finished")]
    AlreadyAcked { offset: i64 },
    /// The ticket belongs to an assignment that was revoked: the new owner redoes the record.
    #[error("partition {partition}: ticket of epoch {epoch} is stale (current {current:?})")]
    StaleEpoch {
        partition: PartitionId,
        epoch: u64,
        current: Option<u64>,
    },
    /// The partition was never assigned under this ticket's epoch.
    #[error("partition {partition} was never assigned with epoch {epoch}")]
    NotAssigned { partition: PartitionId, epoch: u64 },
}

impl AckError {
    /// The refused offset, for the refusals that name one (those of a partition's tracker).
    pub fn offset(&self) -> Option<i64> {
        match *self {
            AckError::NotTracked { offset } | AckError::AlreadyAcked { offset } => Some(offset),
            AckError::StaleEpoch { .. } | AckError::NotAssigned { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AckError;

    /// Goal: a tracker's refusal names the refused offset, so that a batch's refusals map back
    /// to their tickets; the other refusals name none. Method: one refusal of each kind.
    #[test]
    fn refusals_of_a_tracker_name_their_offset() {
        assert_eq!(AckError::NotTracked { offset: 7 }.offset(), Some(7));
        assert_eq!(AckError::AlreadyAcked { offset: 12 }.offset(), Some(12));
        let stale = AckError::StaleEpoch {
            partition: 1,
            epoch: 2,
            current: Some(3),
        };
        assert_eq!(stale.offset(), None);
        let unassigned = AckError::NotAssigned {
            partition: 1,
            epoch: 2,
        };
        assert_eq!(unassigned.offset(), None);
    }
}

//! Many partitions, one epoch per assignment.

use super::metadata::{self, FinishedSet};
use super::{AckError, Limits, PartitionTracker, RestoreReport, TrackError, Tracked};
use super::{CommitPolicy, Watermark};
use crate::ports::{CommittedOffset, OffsetCommit, PartitionId};
use std::collections::BTreeMap;

/// Proof that an offset was tracked under one assignment; the worker hands it back to ack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket {
    pub partition: PartitionId,
    pub epoch: u64,
    pub offset: i64,
}

/// A commit point and its metadata, read together (never torn apart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitSnapshot {
    pub partition: PartitionId,
    /// The next offset to read.
    pub offset: i64,
    /// Finished offsets above `offset` (see [`super::metadata`]); may be empty.
    pub metadata: String,
}

impl From<CommitSnapshot> for OffsetCommit {
    /// A tracker snapshot is exactly what to commit: the commit point and its metadata.
    fn from(snapshot: CommitSnapshot) -> OffsetCommit {
        OffsetCommit {
            partition: snapshot.partition,
            offset: snapshot.offset,
            metadata: snapshot.metadata,
        }
    }
}

/// The result of [`Tracker::assign`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub partition: PartitionId,
    pub epoch: u64,
    /// Where the previous owner committed, if anywhere.
    pub start_offset: Option<i64>,
    pub restore: RestoreReport,
}

/// The result of [`Tracker::progress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The lowest unfinished offset (the next one when nothing is in flight).
    pub point: Option<i64>,
    pub in_flight: usize,
}

#[derive(Debug)]
struct Owned {
    epoch: u64,
    tracker: PartitionTracker,
}

/// Tracks every partition assigned to this consumer.
#[derive(Debug)]
pub struct Tracker {
    limits: Limits,
    policy: Box<dyn CommitPolicy>,
    epoch_last: u64,
    owned: BTreeMap<PartitionId, Owned>,
    /// Highest epoch ever given to each partition (kept after revoke, to tell stale tickets).
    epoch_highest: BTreeMap<PartitionId, u64>,
}

impl Tracker {
    /// A tracker with no partitions.
    pub fn new(limits: Limits) -> Self {
        Tracker::with_policy(limits, Box::new(Watermark))
    }

    /// A tracker whose snapshots `policy` chooses (see [`CommitPolicy`]).
    pub fn with_policy(limits: Limits, policy: Box<dyn CommitPolicy>) -> Self {
        Tracker {
            limits,
            policy,
            epoch_last: 0,
            owned: BTreeMap::new(),
            epoch_highest: BTreeMap::new(),
        }
    }

    /// Takes ownership of `partition` under a new epoch, restoring from the committed offset
    /// and its metadata. A partition assigned again (without revoke) starts over.
    pub fn assign(
        &mut self,
        partition: PartitionId,
        committed: Option<&CommittedOffset>,
    ) -> Assignment {
        self.epoch_last += 1;
        let epoch = self.epoch_last;
        let (tracker, restore) = match committed {
            Some(committed) => PartitionTracker::restore(committed, self.limits),
            None => (PartitionTracker::new(self.limits), RestoreReport::default()),
        };
        self.owned.insert(partition, Owned { epoch, tracker });
        self.policy.assigned(partition, committed.map(|c| c.offset));
        self.epoch_highest.insert(partition, epoch);
        Assignment {
            partition,
            epoch,
            start_offset: committed.map(|c| c.offset),
            restore,
        }
    }

    /// Gives up `partition`: returns the final snapshot to commit; later acks of its epoch are
    /// refused with [`AckError::StaleEpoch`].
    pub fn revoke(&mut self, partition: PartitionId) -> Option<CommitSnapshot> {
        let snapshot = self.snapshot(partition);
        self.owned.remove(&partition);
        snapshot
    }

    /// Registers a polled offset of an assigned partition.
    pub fn track(
        &mut self,
        partition: PartitionId,
        offset: i64,
    ) -> Result<(Ticket, Tracked), TrackError> {
        let owned = self.owned_for_tracking(partition)?;
        let tracked = owned.tracker.track(offset)?;
        let ticket = Ticket {
            partition,
            epoch: owned.epoch,
            offset,
        };
        Ok((ticket, tracked))
    }

    /// Tracks the consecutive offsets `first .. first + count` of an assigned partition (its
    /// records in one poll) as far as [`PartitionTracker::track_run`] admits them. Returns the
    /// assignment's epoch and how many it tracked, each as [`Tracked::New`]; the caller tracks
    /// the next offset with [`Tracker::track`].
    pub fn track_run(
        &mut self,
        partition: PartitionId,
        first: i64,
        count: usize,
    ) -> Result<(u64, usize), TrackError> {
        let owned = self.owned_for_tracking(partition)?;
        Ok((owned.epoch, owned.tracker.track_run(first, count)))
    }

    /// The partition's state, or the refusal to track in a partition not assigned.
    fn owned_for_tracking(&mut self, partition: PartitionId) -> Result<&mut Owned, TrackError> {
        self.owned
            .get_mut(&partition)
            .ok_or(TrackError::NotAssigned { partition })
    }

    /// Acks each ticket in order, as [`Tracker::ack`] would one by one, and returns the refused
    /// tickets with their errors, in order (empty, and not allocated, when there are none).
    /// Each run of tickets of one current assignment goes through
    /// [`PartitionTracker::ack_all`].
    pub fn ack_all(&mut self, tickets: &[Ticket]) -> Vec<(Ticket, AckError)> {
        // A policy that watches acks sees them one at a time.
        let plain = !self.policy.watches_acks();
        let mut refused = Vec::new();
        let mut rest = tickets;
        while let Some(first) = rest.first().copied() {
            let run = rest
                .iter()
                .take_while(|t| t.partition == first.partition && t.epoch == first.epoch)
                .count();
            let (run, tail) = rest.split_at(run);
            rest = tail;
            match self.owned.get_mut(&first.partition) {
                Some(owned) if plain && owned.epoch == first.epoch => {
                    let errors = owned.tracker.ack_all(run.iter().map(|t| t.offset));
                    refused.extend(errors.into_iter().map(|error| {
                        // A partition tracker's refusals all name their offset.
                        debug_assert!(error.offset().is_some(), "{error}");
                        let offset = error.offset().unwrap_or(first.offset);
                        (Ticket { offset, ..first }, error)
                    }));
                }
                _ => {
                    for &ticket in run {
                        if let Err(error) = self.ack(ticket) {
                            refused.push((ticket, error));
                        }
                    }
                }
            }
        }
        refused
    }

    /// Marks a ticket's offset finished, if its assignment is still current.
    pub fn ack(&mut self, ticket: Ticket) -> Result<(), AckError> {
        let partition = ticket.partition;
        match self.owned.get_mut(&partition) {
            Some(owned) if owned.epoch == ticket.epoch => {
                let watched = self.policy.watches_acks();
                let was_lowest =
                    watched && owned.tracker.lowest_unfinished() == Some(ticket.offset);
                owned.tracker.ack(ticket.offset)?;
                if watched {
                    self.policy.acked(partition, ticket.offset, was_lowest);
                }
                Ok(())
            }
            current => {
                let current = current.map(|owned| owned.epoch);
                let issued = self.epoch_highest.get(&partition).copied().unwrap_or(0);
                if ticket.epoch != 0 && ticket.epoch <= issued {
                    Err(AckError::StaleEpoch {
                        partition,
                        epoch: ticket.epoch,
                        current,
                    })
                } else {
                    Err(AckError::NotAssigned {
                        partition,
                        epoch: ticket.epoch,
                    })
                }
            }
        }
    }

    /// What to commit for `partition` now: commit point and metadata from one state.
    /// `None` if the partition is not assigned or nothing is known yet.
    pub fn snapshot(&self, partition: PartitionId) -> Option<CommitSnapshot> {
        let owned = self.owned.get(&partition)?;
        self.policy.snapshot(partition, &owned.tracker)
    }

    /// The progress to store in a transaction that finishes `finishing` (offsets of
    /// `partition` tracked under `epoch` and not yet acked): the policy's commit point moved
    /// past the offsets finished once the transaction commits, and every finished offset above
    /// it, encoded
    /// without commit metadata's byte budget (the tracker's span bounds it). `None` when the
    /// partition is no longer assigned under `epoch` or nothing is known of it.
    pub fn stored_progress(
        &self,
        partition: PartitionId,
        epoch: u64,
        finishing: &[i64],
    ) -> Option<CommittedOffset> {
        let owned = self.owned.get(&partition).filter(|o| o.epoch == epoch)?;
        let start = self.policy.point(partition, &owned.tracker)?;
        let above = owned.tracker.finished_above_commit_point();
        let end = finishing
            .iter()
            .map(|offset| offset.saturating_add(1))
            .fold(above.base().saturating_add(above.len() as i64), i64::max);
        let finished = |from: i64| {
            let mut set = FinishedSet::new(from, end.saturating_sub(from).max(0) as u64);
            for offset in above.iter().chain(finishing.iter().copied()) {
                set.insert(offset);
            }
            set
        };
        // The point moves past the records this transaction finishes, as an ack would move it;
        // the set is built again from the new point only if it moved.
        let mut set = finished(start);
        let mut point = start;
        while point < end && set.contains(point) {
            point += 1;
        }
        if point != start {
            set = finished(point);
        }
        Some(CommittedOffset {
            offset: point,
            metadata: Some(metadata::encode(&set, usize::MAX)),
        })
    }

    /// Snapshots of every assigned partition that has something to commit, by partition.
    pub fn snapshots(&self) -> Vec<CommitSnapshot> {
        self.owned
            .keys()
            .filter_map(|&p| self.snapshot(p))
            .collect()
    }

    /// The watermark of `partition` and its records in flight, read together (stall
    /// detection needs the point, not the metadata a snapshot encodes). `None` if not assigned.
    pub fn progress(&self, partition: PartitionId) -> Option<Progress> {
        let owned = self.owned.get(&partition)?;
        Some(Progress {
            point: owned.tracker.commit_point(),
            in_flight: owned.tracker.in_flight(),
        })
    }

    /// Records of `partition` tracked and not yet acked (0 if not assigned).
    pub fn in_flight(&self, partition: PartitionId) -> usize {
        self.owned
            .get(&partition)
            .map_or(0, |owned| owned.tracker.in_flight())
    }

    /// The current epoch of `partition`, if assigned.
    pub fn epoch(&self, partition: PartitionId) -> Option<u64> {
        self.owned.get(&partition).map(|owned| owned.epoch)
    }

    /// Assigned partitions, ascending.
    pub fn assigned(&self) -> Vec<PartitionId> {
        self.owned.keys().copied().collect()
    }

    /// The partition's tracker, for inspection.
    pub fn partition(&self, partition: PartitionId) -> Option<&PartitionTracker> {
        self.owned.get(&partition).map(|owned| &owned.tracker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the stored progress counts the transaction's own records as finished, moves the
    /// point past them when they are the lowest unfinished, keeps the others as finished
    /// offsets above it, and is refused for a stale epoch. Method: 10..20 tracked, 12 acked;
    /// the progress of a transaction finishing 10 and 15, restored into a fresh tracker.
    #[test]
    fn stored_progress_counts_the_transactions_own_records() {
        let mut tracker = Tracker::new(Limits::default());
        let epoch = tracker.assign(0, None).epoch;
        for offset in 10..20 {
            tracker.track(0, offset).unwrap();
        }
        tracker
            .ack(Ticket {
                partition: 0,
                epoch,
                offset: 12,
            })
            .unwrap();
        assert_eq!(tracker.stored_progress(0, epoch + 1, &[10]), None);
        let stored = tracker.stored_progress(0, epoch, &[10, 15]).unwrap();
        assert_eq!(
            stored.offset, 11,
            "10 finishes with the transaction, 11 does not"
        );
        let (mut restored, report) = PartitionTracker::restore(&stored, Limits::default());
        assert_eq!(report.already_done, 2, "12 and 15");
        let done: Vec<i64> = (11..20)
            .filter(|&offset| restored.track(offset) == Ok(Tracked::AlreadyDone))
            .collect();
        assert_eq!(done, vec![12, 15]);
        // Nothing more finishes: the point stays at the lowest unfinished record.
        let unchanged = tracker.stored_progress(0, epoch, &[]).unwrap();
        assert_eq!(unchanged.offset, 10);
    }

    #[test]
    fn epochs_increase_across_partitions_and_reassignments() {
        let mut t = Tracker::new(Limits::default());
        let a = t.assign(0, None).epoch;
        let b = t.assign(1, None).epoch;
        let c = t.assign(0, None).epoch;
        assert!(a < b && b < c);
        assert_eq!(t.assigned(), vec![0, 1]);
    }

    #[test]
    fn track_on_unassigned_partition_is_refused() {
        let mut t = Tracker::new(Limits::default());
        assert_eq!(t.track(3, 0), Err(TrackError::NotAssigned { partition: 3 }));
    }

    #[test]
    fn ack_all_equals_acks_one_by_one() {
        // Tickets of two partitions, interleaved, with a stale epoch, a double ack and an
        // unassigned partition in the batch.
        let batch_for = |t: &mut Tracker| {
            t.assign(0, None);
            t.assign(1, None);
            let mut tickets = Vec::new();
            for o in 0..6 {
                tickets.push(t.track(0, o).unwrap().0);
                tickets.push(t.track(1, o).unwrap().0);
            }
            let stale = tickets[0];
            t.assign(0, None);
            let fresh: Vec<Ticket> = (0..6).map(|o| t.track(0, o).unwrap().0).collect();
            let mut batch = vec![stale];
            batch.extend(fresh.iter().rev().copied());
            batch.extend(tickets.iter().filter(|k| k.partition == 1).copied());
            batch.push(tickets[3]);
            batch.push(Ticket {
                partition: 7,
                epoch: 99,
                offset: 0,
            });
            batch
        };
        let mut single = Tracker::new(Limits::default());
        let mut batched = Tracker::new(Limits::default());
        let tickets = batch_for(&mut single);
        assert_eq!(batch_for(&mut batched), tickets);
        let expected: Vec<(Ticket, AckError)> = tickets
            .iter()
            .filter_map(|&k| single.ack(k).err().map(|e| (k, e)))
            .collect();
        assert_eq!(expected.len(), 3, "{expected:?}");
        assert_eq!(batched.ack_all(&tickets), expected);
        assert_eq!(batched.snapshots(), single.snapshots());
        assert_eq!(batched.snapshot(0).unwrap().offset, 6);
        assert_eq!(batched.track_run(1, 6, 3), Ok((2, 3)));
        assert_eq!(
            batched.track_run(4, 0, 3),
            Err(TrackError::NotAssigned { partition: 4 })
        );
    }

    #[test]
    fn ack_after_revoke_is_stale() {
        let mut t = Tracker::new(Limits::default());
        t.assign(0, None);
        let (ticket, _) = t.track(0, 7).unwrap();
        let last = t.revoke(0).unwrap();
        assert_eq!(
            last,
            CommitSnapshot {
                partition: 0,
                offset: 7,
                metadata: String::new()
            }
        );
        assert!(matches!(
            t.ack(ticket),
            Err(AckError::StaleEpoch { current: None, .. })
        ));
        assert_eq!(t.snapshot(0), None);
    }

    #[test]
    fn stale_ack_after_reassign_leaves_new_owner_untouched() {
        let mut t = Tracker::new(Limits::default());
        t.assign(0, None);
        let (old, _) = t.track(0, 0).unwrap();
        let committed = t.revoke(0).map(|s| CommittedOffset {
            offset: s.offset,
            metadata: Some(s.metadata),
        });
        let assignment = t.assign(0, committed.as_ref());
        assert_eq!(assignment.start_offset, Some(0));
        let (new, tracked) = t.track(0, 0).unwrap();
        assert_eq!(tracked, Tracked::New);
        assert_eq!(
            t.ack(old),
            Err(AckError::StaleEpoch {
                partition: 0,
                epoch: old.epoch,
                current: Some(new.epoch)
            })
        );
        assert_eq!(t.snapshot(0).unwrap().offset, 0);
        assert_eq!(t.in_flight(0), 1);
        t.ack(new).unwrap();
        assert_eq!(t.snapshot(0).unwrap().offset, 1);
    }

    #[test]
    fn forged_ticket_is_not_assigned() {
        let mut t = Tracker::new(Limits::default());
        t.assign(0, None);
        let ticket = Ticket {
            partition: 0,
            epoch: 99,
            offset: 0,
        };
        assert_eq!(
            t.ack(ticket),
            Err(AckError::NotAssigned {
                partition: 0,
                epoch: 99
            })
        );
        let ticket = Ticket {
            partition: 5,
            epoch: 1,
            offset: 0,
        };
        assert_eq!(
            t.ack(ticket),
            Err(AckError::NotAssigned {
                partition: 5,
                epoch: 1
            })
        );
    }

    #[test]
    fn snapshot_carries_metadata_that_restores() {
        let mut t = Tracker::new(Limits::default());
        t.assign(
            2,
            Some(&CommittedOffset {
                offset: 50,
                metadata: None,
            }),
        );
        let tickets: Vec<Ticket> = (50..60).map(|o| t.track(2, o).unwrap().0).collect();
        t.ack(tickets[3]).unwrap();
        t.ack(tickets[9]).unwrap();
        let snap = t.snapshot(2).unwrap();
        assert_eq!(snap.offset, 50);
        assert_eq!(t.snapshots(), vec![snap.clone()]);
        let committed = CommittedOffset {
            offset: snap.offset,
            metadata: Some(snap.metadata),
        };
        let assignment = t.assign(2, Some(&committed));
        assert_eq!(assignment.restore.already_done, 2);
        let done: Vec<i64> = (50..60)
            .filter(|&o| t.track(2, o).unwrap().1 == Tracked::AlreadyDone)
            .collect();
        assert_eq!(done, vec![53, 59]);
    }
}

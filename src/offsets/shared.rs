//! The concurrent form: workers ack, the poll loop tracks and snapshots.

use super::{
    AckError, Assignment, CommitSnapshot, Limits, Progress, Ticket, TrackError, Tracked, Tracker,
};
use crate::ports::{CommittedOffset, PartitionId};
use crate::sync::{Arc, Mutex, MutexGuard};

/// A [`Tracker`] behind one lock, cheap to clone and share. Every method takes the lock for
/// its own duration only, so the commit point and metadata of a snapshot come from one state,
/// and an ack either lands before a revoke (and is in its final snapshot) or is refused as
/// stale. The lock is synchronous: never hold it across an await (no method returns a guard).
#[derive(Clone, Debug)]
pub struct SharedTracker {
    inner: Arc<Mutex<Tracker>>,
}

impl SharedTracker {
    /// A shared tracker with no partitions.
    pub fn new(limits: Limits) -> Self {
        SharedTracker::from(Tracker::new(limits))
    }

    /// See [`Tracker::assign`].
    pub fn assign(
        &self,
        partition: PartitionId,
        committed: Option<&CommittedOffset>,
    ) -> Assignment {
        self.lock().assign(partition, committed)
    }

    /// See [`Tracker::revoke`].
    pub fn revoke(&self, partition: PartitionId) -> Option<CommitSnapshot> {
        self.lock().revoke(partition)
    }

    /// See [`Tracker::track`].
    pub fn track(
        &self,
        partition: PartitionId,
        offset: i64,
    ) -> Result<(Ticket, Tracked), TrackError> {
        self.lock().track(partition, offset)
    }

    /// See [`Tracker::ack`].
    pub fn ack(&self, ticket: Ticket) -> Result<(), AckError> {
        self.lock().ack(ticket)
    }

    /// See [`Tracker::stored_progress`].
    pub fn stored_progress(
        &self,
        partition: PartitionId,
        epoch: u64,
        finishing: &[i64],
    ) -> Option<CommittedOffset> {
        self.lock().stored_progress(partition, epoch, finishing)
    }

    /// See [`Tracker::track_run`].
    pub fn track_run(
        &self,
        partition: PartitionId,
        first: i64,
        count: usize,
    ) -> Result<(u64, usize), TrackError> {
        self.lock().track_run(partition, first, count)
    }

    /// See [`Tracker::ack_all`]: one lock for the whole batch.
    pub fn ack_all(&self, tickets: &[Ticket]) -> Vec<(Ticket, AckError)> {
        self.lock().ack_all(tickets)
    }

    /// See [`Tracker::snapshot`].
    pub fn snapshot(&self, partition: PartitionId) -> Option<CommitSnapshot> {
        self.lock().snapshot(partition)
    }

    /// See [`Tracker::snapshots`].
    pub fn snapshots(&self) -> Vec<CommitSnapshot> {
        self.lock().snapshots()
    }

    /// See [`Tracker::progress`].
    pub fn progress(&self, partition: PartitionId) -> Option<Progress> {
        self.lock().progress(partition)
    }

    /// See [`Tracker::in_flight`].
    pub fn in_flight(&self, partition: PartitionId) -> usize {
        self.lock().in_flight(partition)
    }

    /// See [`Tracker::assigned`].
    pub fn assigned(&self) -> Vec<PartitionId> {
        self.lock().assigned()
    }

    /// See [`Tracker::epoch`].
    pub fn epoch(&self, partition: PartitionId) -> Option<u64> {
        self.lock().epoch(partition)
    }

    fn lock(&self) -> MutexGuard<'_, Tracker> {
        // A panic while holding the lock cannot leave the tracker half-updated in a way that
        // loses records (every method checks before it mutates), so keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl From<Tracker> for SharedTracker {
    fn from(tracker: Tracker) -> Self {
        SharedTracker {
            inner: Arc::new(Mutex::new(tracker)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_from_threads_reach_the_snapshot() {
        let shared = SharedTracker::new(Limits::default());
        shared.assign(0, None);
        let tickets: Vec<Ticket> = (0..1000).map(|o| shared.track(0, o).unwrap().0).collect();
        let handles: Vec<_> = tickets
            .chunks(250)
            .map(|chunk| {
                let shared = shared.clone();
                let chunk = chunk.to_vec();
                std::thread::spawn(move || {
                    chunk.into_iter().rev().for_each(|t| shared.ack(t).unwrap())
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(shared.snapshot(0).unwrap().offset, 1000);
        assert_eq!(shared.in_flight(0), 0);
        assert_eq!(shared.assigned(), vec![0]);
    }

    #[test]
    fn assigned_lists_every_owned_partition() {
        let shared = SharedTracker::new(Limits::default());
        shared.assign(5, None);
        shared.assign(3, None);
        assert_eq!(shared.assigned(), vec![3, 5]);
        let _final_snapshot = shared.revoke(3);
        assert_eq!(shared.assigned(), vec![5]);
    }

    #[test]
    fn shared_tracker_is_send_and_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<SharedTracker>();
    }
}

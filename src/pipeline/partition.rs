//! What a group member knows of one partition it owns, beside the tracker's offsets: the
//! records held back while the tracker is full, whether the client has the partition paused,
//! the offsets last polled and committed, and what stall detection needs.
//!
//! The tracker keeps the offsets apart (workers ack to it concurrently, under its lock); the
//! metrics' gauges are a copy of this state rendered for scraping.

use super::metrics::PartitionGauges;
use crate::ports::Record;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// One owned partition's state in the member loop.
#[derive(Debug, Default)]
pub(super) struct PartitionState {
    /// Records the tracker refused (full); retried before anything newer of the partition.
    pub held: VecDeque<Record>,
    /// True while the client is (or may still be) paused on this partition.
    pub paused: bool,
    polled: Option<i64>,
    committed: Option<i64>,
    /// When this member last committed the partition (`None`: not yet).
    committed_at: Option<Instant>,
    /// Last commit point seen and when it last moved (stall detection).
    point: Option<i64>,
    point_moved_at: Option<Instant>,
    stalled: bool,
    /// (offset, key) of admitted records, pruned below the commit point: names the stuck
    /// record when the partition stalls.
    admitted: VecDeque<(i64, Option<Vec<u8>>)>,
}

impl PartitionState {
    /// A partition just assigned, resuming after `committed`.
    pub fn assigned(committed: Option<i64>) -> PartitionState {
        PartitionState {
            committed,
            // The group's offset counts as just committed: it is refreshed like any other.
            committed_at: committed.map(|_| Instant::now()),
            ..PartitionState::default()
        }
    }

    pub fn note_polled(&mut self, offset: i64) {
        self.polled = Some(self.polled.map_or(offset, |p| p.max(offset)));
    }

    pub fn note_admitted(&mut self, offset: i64, key: Option<Vec<u8>>) {
        self.admitted.push_back((offset, key));
    }

    /// True when `offset` is not the commit point last committed, or when this member has
    /// not committed the partition for `refresh`: the same point is committed again, so that a
    /// late commit by the partition's previous owner (an asynchronous one sent before a
    /// rebalance and stored after it, which the broker accepts from a member of the new
    /// generation) cannot leave the group's offset behind for good.
    pub fn commit_due(&self, offset: i64, now: Instant, refresh: Duration) -> bool {
        self.committed != Some(offset)
            || self
                .committed_at
                .is_none_or(|at| now.duration_since(at) >= refresh)
    }

    /// Records a commit of `offset` at `now`: the commit point never moves backwards within
    /// one assignment.
    pub fn note_committed(&mut self, offset: i64, partition: i32, now: Instant) {
        debug_assert!(
            self.committed.is_none_or(|c| c <= offset),
            "commit point moved backwards on partition {partition}"
        );
        self.committed = Some(offset);
        self.committed_at = Some(now);
        while self.admitted.front().is_some_and(|(o, _)| *o < offset) {
            self.admitted.pop_front();
        }
    }

    /// Follows the commit point: returns true when it has just now stood still for
    /// `stall_after` with work in flight (reported once per stall).
    pub fn observe_point(
        &mut self,
        point: Option<i64>,
        in_flight: usize,
        now: Instant,
        stall_after: Duration,
    ) -> bool {
        if point != self.point || in_flight == 0 {
            self.point = point;
            self.point_moved_at = Some(now);
            self.stalled = false;
            return false;
        }
        let overdue = self
            .point_moved_at
            .is_some_and(|moved_at| now.duration_since(moved_at) >= stall_after);
        if overdue && !self.stalled {
            self.stalled = true;
            return true;
        }
        false
    }

    /// The key of the first admitted record at or above `point`: the one holding it.
    pub fn stuck_key(&self, point: Option<i64>) -> Option<String> {
        let point = point?;
        self.admitted
            .iter()
            .find(|(offset, _)| *offset >= point)
            .and_then(|(_, key)| key.as_ref())
            .map(|key| String::from_utf8_lossy(key).into_owned())
    }

    pub fn gauges(&self, in_flight: usize) -> PartitionGauges {
        PartitionGauges {
            in_flight: in_flight as u64,
            committed: self.committed,
            polled: self.polled,
            stalled: self.stalled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a commit prunes exactly the admitted records below it (so the list stays bounded
    /// by what is in flight) and the stuck record is the first one at or above the point.
    /// Method: ten records admitted, commits at 5 and then 10.
    #[test]
    fn a_commit_prunes_the_admitted_records_below_it() {
        let mut state = PartitionState::assigned(Some(0));
        for offset in 0..10 {
            state.note_polled(offset);
            state.note_admitted(offset, Some(format!("order-{offset}").into_bytes()));
        }
        assert_eq!(state.stuck_key(Some(3)).as_deref(), Some("order-3"));
        let at = Instant::now();
        state.note_committed(5, 0, at);
        let left: Vec<i64> = state.admitted.iter().map(|(offset, _)| *offset).collect();
        assert_eq!(left, (5..10).collect::<Vec<_>>());
        assert_eq!(state.stuck_key(Some(5)).as_deref(), Some("order-5"));
        let refresh = Duration::from_secs(5);
        assert!(!state.commit_due(5, at, refresh) && state.commit_due(6, at, refresh));
        // The same point is due again once `refresh` has passed since its commit.
        assert!(!state.commit_due(5, at + refresh / 2, refresh));
        assert!(state.commit_due(5, at + refresh, refresh));
        let gauges = state.gauges(5);
        assert_eq!(
            (gauges.committed, gauges.polled, gauges.in_flight),
            (Some(5), Some(9), 5)
        );
        state.note_committed(10, 0, at);
        assert!(state.admitted.is_empty());
        assert_eq!(state.stuck_key(Some(10)), None);
    }
}

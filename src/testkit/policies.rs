//! Commit policies other than holdfast's watermark.

use crate::offsets::{CommitPolicy, CommitSnapshot, PartitionTracker};
use crate::ports::PartitionId;
use std::collections::BTreeMap;

/// The seed's step 6 read literally: commit an acked offset only when it was the lowest in
/// flight, and commit the acked record's own offset (so it is read again). It never loses,
/// but commits less and redoes more than the watermark; the simulator's explorer measures how
/// much.
#[derive(Clone, Debug, Default)]
pub struct LiteralStep6 {
    /// Per partition: the offset step 6 would commit now (the committed offset at first).
    points: BTreeMap<PartitionId, Option<i64>>,
}

impl CommitPolicy for LiteralStep6 {
    fn watches_acks(&self) -> bool {
        true
    }

    fn assigned(&mut self, partition: PartitionId, committed: Option<i64>) {
        self.points.insert(partition, committed);
    }

    fn acked(&mut self, partition: PartitionId, offset: i64, was_lowest: bool) {
        if was_lowest {
            self.points.insert(partition, Some(offset));
        }
    }

    fn snapshot(
        &self,
        partition: PartitionId,
        tracker: &PartitionTracker,
    ) -> Option<CommitSnapshot> {
        let watermark = tracker.commit_point()?;
        let point = (*self.points.get(&partition)?)?;
        debug_assert!(point <= watermark, "step 6 never passes the watermark");
        Some(CommitSnapshot {
            partition,
            offset: point,
            metadata: String::new(),
        })
    }
}

/// A defect: commit the highest acked offset + 1, finished below or not. Acks finish in any
/// order, so this commits past unfinished records and loses them on a crash. (It never moves
/// backwards, so the consumer's own assertion that commits only move forward does not catch
/// it: the simulator's checker must.)
#[derive(Clone, Debug, Default)]
pub struct AckedPlusOne {
    acked_highest: BTreeMap<PartitionId, i64>,
}

impl CommitPolicy for AckedPlusOne {
    fn watches_acks(&self) -> bool {
        true
    }

    fn assigned(&mut self, partition: PartitionId, _committed: Option<i64>) {
        self.acked_highest.remove(&partition);
    }

    fn acked(&mut self, partition: PartitionId, offset: i64, _was_lowest: bool) {
        let highest = self.acked_highest.entry(partition).or_insert(offset);
        *highest = (*highest).max(offset);
    }

    fn snapshot(
        &self,
        partition: PartitionId,
        tracker: &PartitionTracker,
    ) -> Option<CommitSnapshot> {
        let watermark = tracker.commit_point()?;
        let offset = self
            .acked_highest
            .get(&partition)
            .map_or(watermark, |acked| watermark.max(acked + 1));
        Some(CommitSnapshot {
            partition,
            offset,
            metadata: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offsets::{Limits, Ticket, Tracker};

    #[test]
    fn literal_step6_commits_only_when_the_lowest_finishes_and_never_past_the_watermark() {
        let mut t = Tracker::with_policy(Limits::default(), Box::<LiteralStep6>::default());
        t.assign(0, None);
        let tickets: Vec<Ticket> = (10..14).map(|o| t.track(0, o).unwrap().0).collect();
        assert_eq!(t.snapshot(0), None);
        t.ack(tickets[1]).unwrap(); // 11: not the lowest, no commit
        assert_eq!(t.snapshot(0), None);
        t.ack(tickets[0]).unwrap(); // 10: the lowest, commits 10 itself
        assert_eq!(t.snapshot(0).map(|s| s.offset), Some(10));
        t.ack(tickets[3]).unwrap(); // 13: the lowest left is 12
        t.ack(tickets[2]).unwrap(); // 12: the lowest, commits 12; the watermark is 14
        assert_eq!(t.snapshot(0).map(|s| s.offset), Some(12));
    }

    #[test]
    fn literal_step6_sees_batched_acks_one_by_one() {
        let mut t = Tracker::with_policy(Limits::default(), Box::<LiteralStep6>::default());
        t.assign(0, None);
        let tickets: Vec<Ticket> = (10..13).map(|o| t.track(0, o).unwrap().0).collect();
        assert!(t.ack_all(&tickets).is_empty());
        assert_eq!(t.snapshot(0).map(|s| s.offset), Some(12));
    }

    #[test]
    fn acked_plus_one_commits_past_an_unfinished_record() {
        let mut t = Tracker::with_policy(Limits::default(), Box::<AckedPlusOne>::default());
        t.assign(0, None);
        let (_slow, _) = t.track(0, 0).unwrap();
        let (fast, _) = t.track(0, 1).unwrap();
        t.ack_all(&[fast]);
        assert_eq!(t.snapshot(0).unwrap().offset, 2); // 0 is unfinished: loss
        let mut honest = Tracker::new(Limits::default());
        honest.assign(0, None);
        honest.track(0, 0).unwrap();
        let (fast, _) = honest.track(0, 1).unwrap();
        honest.ack(fast).unwrap();
        assert_eq!(honest.snapshot(0).unwrap().offset, 0);
    }
}

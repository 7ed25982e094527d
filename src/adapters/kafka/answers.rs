//! The coordinator's answers to this member's asynchronous commits: which were stored, in
//! an order that never moves a partition back, and which belong to an assignment that ended.

use crate::ports::PartitionId;
use std::collections::BTreeMap;

/// The coordinator's answers to this member's commits, for [`crate::ports::Polled::commits_answered`].
#[derive(Debug, Default)]
pub(super) struct Answers {
    /// Stored commits not yet reported.
    stored: Vec<(PartitionId, i64)>,
    /// The highest offset known stored per partition (this assignment's): the coordinator
    /// stores one member's commits in the order sent, so a lower answer served later is an
    /// earlier commit's, already overtaken, not a move back.
    highest: BTreeMap<PartitionId, i64>,
    /// Asynchronous commits sent per partition and not answered yet.
    in_flight: BTreeMap<PartitionId, u32>,
    /// Of those, per partition, how many were sent before its last revoke: their answers are
    /// dropped. When such a commit was stored is unknown (anywhere from its send to the
    /// answer, which librdkafka may serve seconds later, after the member rejoined), so
    /// recording it at the answer could misorder it against the new owner's commits.
    stale: BTreeMap<PartitionId, u32>,
}

impl Answers {
    /// Notes asynchronous commits of `partitions` sent (`sent`) or not sent after all.
    pub(super) fn in_flight(&mut self, partitions: impl Iterator<Item = PartitionId>, sent: bool) {
        for partition in partitions {
            let count = self.in_flight.entry(partition).or_default();
            *count = if sent {
                *count + 1
            } else {
                count.saturating_sub(1)
            };
        }
    }

    /// `partition` assigned anew: what was stored before says nothing about this assignment.
    pub(super) fn assigned(&mut self, partition: PartitionId) {
        self.highest.remove(&partition);
    }

    /// The stored commits not yet reported, oldest first; reported once.
    pub(super) fn take_stored(&mut self) -> Vec<(PartitionId, i64)> {
        std::mem::take(&mut self.stored)
    }

    /// The commits of `partition` in flight now belong to an assignment that ended.
    pub(super) fn revoked(&mut self, partition: PartitionId) {
        let in_flight = self.in_flight.get(&partition).copied().unwrap_or(0);
        self.stale.insert(partition, in_flight);
    }

    /// One asynchronous commit of `partition` answered, `Some(offset)` if stored: reported
    /// unless it was sent before the partition's last revoke.
    pub(super) fn answered(&mut self, partition: PartitionId, stored: Option<i64>) {
        let in_flight = self.in_flight.entry(partition).or_default();
        *in_flight = in_flight.saturating_sub(1);
        if let Some(stale) = self.stale.get_mut(&partition).filter(|stale| **stale > 0) {
            *stale -= 1;
            return;
        }
        if let Some(offset) = stored {
            self.stored(partition, offset, true);
        }
    }

    /// Notes `offset` stored for `partition`; `report` puts it in the next poll's answers.
    pub(super) fn stored(&mut self, partition: PartitionId, offset: i64, report: bool) {
        let highest = self.highest.entry(partition).or_insert(offset);
        if offset >= *highest {
            *highest = offset;
            if report {
                self.stored.push((partition, offset));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(answers: &mut Answers, partitions: &[PartitionId]) {
        answers.in_flight(partitions.iter().copied(), true);
    }

    /// Goal: each stored answer is reported once, in order, and a failed one not at all.
    #[test]
    fn stored_answers_are_reported_once() {
        let mut answers = Answers::default();
        sent(&mut answers, &[0, 1, 0]);
        answers.answered(0, Some(10));
        answers.answered(1, None);
        answers.answered(0, Some(12));
        assert_eq!(answers.take_stored(), [(0, 10), (0, 12)]);
        assert_eq!(answers.take_stored(), []);
    }

    /// Goal: an answer lower than one already known stored is an overtaken commit, not a move
    /// back: it is not reported. Neither is a synchronous commit, whose caller saw its answer,
    /// but it counts as stored. A new assignment forgets what was stored before.
    #[test]
    fn overtaken_answers_are_not_reported() {
        let mut answers = Answers::default();
        sent(&mut answers, &[3, 3]);
        answers.answered(3, Some(20));
        answers.answered(3, Some(15));
        answers.stored(3, 30, false);
        sent(&mut answers, &[3]);
        answers.answered(3, Some(25));
        assert_eq!(answers.take_stored(), [(3, 20)]);
        answers.assigned(3);
        sent(&mut answers, &[3]);
        answers.answered(3, Some(5));
        assert_eq!(answers.take_stored(), [(3, 5)]);
    }

    /// Goal: answers to commits sent before a partition's revoke are dropped, however late
    /// they are served, and later commits' answers are reported again; a commit that was not
    /// sent after all is not waited for. Method: two commits in flight at the revoke, one
    /// withdrawn, then answers across a reassignment.
    #[test]
    fn answers_to_commits_sent_before_a_revoke_are_dropped() {
        let mut answers = Answers::default();
        sent(&mut answers, &[7, 7, 7]);
        answers.in_flight([7].into_iter(), false);
        answers.answered(7, Some(40));
        answers.revoked(7);
        answers.assigned(7);
        sent(&mut answers, &[7]);
        // Served after the reassignment: the commit sent before the revoke first.
        answers.answered(7, Some(41));
        answers.answered(7, Some(50));
        assert_eq!(answers.take_stored(), [(7, 40), (7, 50)]);
        answers.revoked(7);
        sent(&mut answers, &[7]);
        answers.answered(7, Some(60));
        assert_eq!(answers.take_stored(), [(7, 60)]);
    }

    /// Goal: a revoke with nothing in flight drops nothing, and a partition's revoke leaves
    /// the others' answers alone.
    #[test]
    fn a_revoke_drops_only_its_partitions_answers_in_flight() {
        let mut answers = Answers::default();
        sent(&mut answers, &[1, 2]);
        answers.revoked(1);
        answers.revoked(3);
        answers.answered(2, Some(9));
        answers.answered(1, Some(8));
        sent(&mut answers, &[3]);
        answers.answered(3, Some(7));
        assert_eq!(answers.take_stored(), [(2, 9), (3, 7)]);
    }
}

//! The seed's design, literally: a msgId counter, a sorted set of in-flight msgIds and a
//! msgId -> offset map. The baseline for benchmarks and the reference model for property
//! tests; not used by the pipeline.

use std::collections::{BTreeSet, HashMap};

/// Which commit rule a [`SortedSetTracker`] follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitRule {
    /// Commit the offset of the smallest in-flight msgId, or the last tracked offset + 1 when
    /// nothing is in flight: the true watermark.
    Watermark,
    /// The seed's step 6 read literally: on an ack, if the acked msgId is <= the smallest
    /// msgId left (or none is left), commit the acked record's offset. Never loses, but lags
    /// behind the watermark and redoes work (see `docs/offsets.md`).
    Literal,
}

/// The seed's sorted-set offset tracker.
#[derive(Clone, Debug)]
pub struct SortedSetTracker {
    rule: CommitRule,
    msg_id_next: u64,
    in_flight: BTreeSet<u64>,
    offsets: HashMap<u64, i64>,
    /// Last tracked offset + 1 (the watermark when nothing is in flight).
    offset_next: Option<i64>,
    /// The literal rule's last commit.
    committed_literal: Option<i64>,
}

impl SortedSetTracker {
    /// An empty tracker following `rule`.
    pub fn new(rule: CommitRule) -> Self {
        SortedSetTracker {
            rule,
            msg_id_next: 0,
            in_flight: BTreeSet::new(),
            offsets: HashMap::new(),
            offset_next: None,
            committed_literal: None,
        }
    }

    /// A tracker resuming from committed offset `start`.
    pub fn starting_at(start: i64, rule: CommitRule) -> Self {
        let mut tracker = SortedSetTracker::new(rule);
        tracker.offset_next = Some(start);
        if rule == CommitRule::Literal {
            tracker.committed_literal = Some(start);
        }
        tracker
    }

    /// Steps 2-4: gives the polled record the next msgId, adds it to the set and the map.
    pub fn track(&mut self, offset: i64) -> u64 {
        let msg_id = self.msg_id_next;
        self.msg_id_next += 1;
        self.in_flight.insert(msg_id);
        self.offsets.insert(msg_id, offset);
        self.offset_next = Some(offset + 1);
        msg_id
    }

    /// Steps 5-6: removes the msgId; under the literal rule, maybe commits. Returns false if
    /// the msgId was not in flight.
    pub fn ack(&mut self, msg_id: u64) -> bool {
        if !self.in_flight.remove(&msg_id) {
            return false;
        }
        let offset = self.offsets.remove(&msg_id);
        if self.rule == CommitRule::Literal {
            let smallest = self.in_flight.first().copied();
            if smallest.is_none_or(|smallest| msg_id <= smallest) {
                self.committed_literal = offset;
            }
        }
        true
    }

    /// The offset this rule commits (`None` before anything is known or committed).
    pub fn commit_point(&self) -> Option<i64> {
        match self.rule {
            CommitRule::Watermark => match self.in_flight.first() {
                Some(msg_id) => self.offsets.get(msg_id).copied(),
                None => self.offset_next,
            },
            CommitRule::Literal => self.committed_literal,
        }
    }

    /// Records tracked and not yet acked.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_rule_commits_lowest_unfinished() {
        let mut t = SortedSetTracker::new(CommitRule::Watermark);
        assert_eq!(t.commit_point(), None);
        let ids: Vec<u64> = [10, 11, 15].iter().map(|&o| t.track(o)).collect();
        assert!(t.ack(ids[1]));
        assert_eq!(t.commit_point(), Some(10));
        assert!(t.ack(ids[0]));
        assert_eq!(t.commit_point(), Some(15));
        assert!(t.ack(ids[2]));
        assert_eq!(t.commit_point(), Some(16));
        assert!(!t.ack(ids[2]));
    }

    #[test]
    fn literal_rule_lags_and_redoes_the_acked_record() {
        let mut t = SortedSetTracker::new(CommitRule::Literal);
        let a = t.track(0);
        let b = t.track(1);
        t.ack(b); // 1 > smallest (0): no commit
        assert_eq!(t.commit_point(), None);
        t.ack(a); // set empty: commits the acked offset, 0, though 0 and 1 are done
        assert_eq!(t.commit_point(), Some(0));
        assert_eq!(t.in_flight(), 0);
    }
}

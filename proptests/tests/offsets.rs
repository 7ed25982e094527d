//! Property tests of the offset tracker (invariants I1, I2, I4 of `docs/design.md`).
//!
//! Method: a model log of offsets with random gaps is polled, acked in random order, revoked
//! and re-assigned from the last commit (a restart), while three implementations run side by
//! side: `Tracker` (ring of bits), and the seed's `SortedSetTracker` under the watermark rule
//! and under its literal rule. The ground truth is the set of offsets whose processing
//! finished, in any epoch.

use holdfast::offsets::metadata::{self, FinishedSet};
use holdfast::offsets::{AckError, Limits, PartitionTracker, Ticket, TrackError, Tracked, Tracker};
use holdfast::ports::CommittedOffset;
use holdfast::testkit::{CommitRule, SortedSetTracker};
use proptest::prelude::*;
use std::collections::BTreeSet;

const PARTITION: i32 = 3;

#[derive(Clone, Debug)]
enum Op {
    Poll { gap: u8 },
    Ack { pick: usize },
    DoubleAck { pick: usize },
    StaleAck { pick: usize },
    Revoke,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop_oneof![6 => Just(0u8), 1 => 1u8..4, 1 => 4u8..40].prop_map(|gap| Op::Poll { gap }),
        5 => any::<usize>().prop_map(|pick| Op::Ack { pick }),
        1 => any::<usize>().prop_map(|pick| Op::DoubleAck { pick }),
        1 => any::<usize>().prop_map(|pick| Op::StaleAck { pick }),
        1 => Just(Op::Revoke),
    ]
}

struct Pending {
    ticket: Ticket,
    watermark_id: u64,
    literal_id: u64,
}

struct Model {
    limits: Limits,
    log: Vec<i64>,
    read_position: usize,
    /// Ground truth: offsets whose processing finished, in any epoch.
    finished: BTreeSet<i64>,
    tracker: Tracker,
    watermark: SortedSetTracker,
    literal: SortedSetTracker,
    pending: Vec<Pending>,
    acked: Vec<Ticket>,
    stale: Vec<Ticket>,
    /// Finished in the current epoch (acked or restored as done).
    done_epoch: BTreeSet<i64>,
    /// Offsets the current epoch's restored metadata says are done.
    restored: BTreeSet<i64>,
    commit_last: Option<i64>,
}

impl Model {
    fn new(limits: Limits) -> Self {
        let mut tracker = Tracker::new(limits);
        tracker.assign(PARTITION, None);
        Model {
            limits,
            log: Vec::new(),
            read_position: 0,
            finished: BTreeSet::new(),
            tracker,
            watermark: SortedSetTracker::new(CommitRule::Watermark),
            literal: SortedSetTracker::new(CommitRule::Literal),
            pending: Vec::new(),
            acked: Vec::new(),
            stale: Vec::new(),
            done_epoch: BTreeSet::new(),
            restored: BTreeSet::new(),
            commit_last: None,
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Poll { gap } => self.poll(gap),
            Op::Ack { pick } if !self.pending.is_empty() => {
                let p = self.pending.swap_remove(pick % self.pending.len());
                assert_eq!(self.tracker.ack(p.ticket), Ok(()));
                assert!(self.watermark.ack(p.watermark_id));
                assert!(self.literal.ack(p.literal_id));
                self.finished.insert(p.ticket.offset);
                self.done_epoch.insert(p.ticket.offset);
                self.acked.push(p.ticket);
            }
            Op::DoubleAck { pick } if !self.acked.is_empty() => {
                let ticket = self.acked[pick % self.acked.len()];
                let before = self.tracker.snapshot(PARTITION);
                assert_eq!(
                    self.tracker.ack(ticket),
                    Err(AckError::AlreadyAcked {
                        offset: ticket.offset
                    })
                );
                assert_eq!(self.tracker.snapshot(PARTITION), before);
            }
            Op::StaleAck { pick } if !self.stale.is_empty() => {
                let ticket = self.stale[pick % self.stale.len()];
                let before = self.tracker.snapshot(PARTITION);
                assert!(matches!(
                    self.tracker.ack(ticket),
                    Err(AckError::StaleEpoch { .. })
                ));
                assert_eq!(
                    self.tracker.snapshot(PARTITION),
                    before,
                    "I3: stale ack changed the watermark"
                );
            }
            Op::Revoke => self.revoke(),
            _ => {}
        }
        self.check();
    }

    fn poll(&mut self, gap: u8) {
        if self.read_position == self.log.len() {
            let next = self.log.last().map_or(0, |&last| last + 1 + i64::from(gap));
            self.log.push(next);
        }
        let offset = self.log[self.read_position];
        match self.tracker.track(PARTITION, offset) {
            Ok((ticket, Tracked::New)) => {
                self.pending.push(Pending {
                    ticket,
                    watermark_id: self.watermark.track(offset),
                    literal_id: self.literal.track(offset),
                });
            }
            Ok((_, Tracked::AlreadyDone)) => {
                assert!(
                    self.finished.contains(&offset),
                    "I4: metadata claimed unfinished {offset}"
                );
                assert!(self.restored.contains(&offset));
                // The reference trackers see a record that finishes at once.
                let id = self.watermark.track(offset);
                assert!(self.watermark.ack(id));
                let id = self.literal.track(offset);
                assert!(self.literal.ack(id));
                self.done_epoch.insert(offset);
            }
            Err(TrackError::Full {
                in_flight, span, ..
            }) => {
                assert_eq!(in_flight, self.pending.len(), "refusal reports the count");
                assert!(in_flight >= self.limits.in_flight_max || span > self.limits.span_max);
                return; // back-pressure: poll the same offset again later
            }
            Err(other) => panic!("unexpected {other}"),
        }
        self.read_position += 1;
    }

    fn revoke(&mut self) {
        let last = self.tracker.revoke(PARTITION);
        self.stale.extend(self.pending.drain(..).map(|p| p.ticket));
        self.stale.append(&mut self.acked);
        self.done_epoch.clear();
        let committed = last.map(|s| CommittedOffset {
            offset: s.offset,
            metadata: Some(s.metadata),
        });
        let assignment = self.tracker.assign(PARTITION, committed.as_ref());
        assert_eq!(assignment.restore.metadata_ignored, None);
        self.restored.clear();
        match committed {
            Some(c) => {
                if let Some(text) = c.metadata.as_deref().filter(|t| !t.is_empty()) {
                    let set =
                        metadata::decode(text, c.offset, u64::MAX).expect("own metadata decodes");
                    // Gaps count as finished in the metadata; keep the records only.
                    assert_eq!(assignment.restore.already_done, set.count());
                    self.restored
                        .extend(set.iter().filter(|o| self.log.binary_search(o).is_ok()));
                }
                // The log is re-read from the committed offset (a restart).
                self.read_position = self.log.partition_point(|&o| o < c.offset);
                self.watermark = SortedSetTracker::starting_at(c.offset, CommitRule::Watermark);
                self.literal = SortedSetTracker::starting_at(c.offset, CommitRule::Literal);
                self.commit_last = Some(c.offset);
            }
            None => {
                self.read_position = 0;
                self.watermark = SortedSetTracker::new(CommitRule::Watermark);
                self.literal = SortedSetTracker::new(CommitRule::Literal);
                self.commit_last = None;
            }
        }
    }

    fn check(&mut self) {
        let partition = self.tracker.partition(PARTITION).expect("assigned");
        let commit_point = partition.commit_point();
        assert_eq!(
            commit_point,
            self.watermark.commit_point(),
            "differs from the sorted-set watermark"
        );
        let Some(snapshot) = self.tracker.snapshot(PARTITION) else {
            assert_eq!(commit_point, None);
            return;
        };
        let cp = snapshot.offset;
        assert_eq!(Some(cp), commit_point);
        // The count (kept exact while the tracker counts, else counted from the ring).
        assert_eq!(partition.in_flight(), self.pending.len(), "in-flight count");
        assert!(self.pending.len() <= self.limits.in_flight_max);
        // I1: nothing below the commit point is unfinished.
        for &offset in self.log.iter().take_while(|&&o| o < cp) {
            assert!(
                self.finished.contains(&offset),
                "I1: commit {cp} passes unfinished {offset}"
            );
        }
        assert!(self.pending.iter().all(|p| p.ticket.offset >= cp));
        // I2: within an epoch the commit point never moves backwards.
        if let Some(last) = self.commit_last {
            assert!(cp >= last, "I2: commit moved back from {last} to {cp}");
        }
        self.commit_last = Some(cp);
        // I4 and round trip: the metadata says exactly what is finished above the commit point.
        let next = partition.next_offset().unwrap_or(cp);
        let decoded = if snapshot.metadata.is_empty() {
            BTreeSet::new()
        } else {
            let set =
                metadata::decode(&snapshot.metadata, cp, u64::MAX).expect("own metadata decodes");
            set.iter()
                .filter(|o| self.log.binary_search(o).is_ok())
                .collect()
        };
        let expected: BTreeSet<i64> = self
            .done_epoch
            .iter()
            .chain(self.restored.iter().filter(|&&o| o >= next))
            .copied()
            .filter(|&o| o >= cp && self.log.binary_search(&o).is_ok())
            .collect();
        assert_eq!(decoded, expected, "metadata round trip");
        for offset in &decoded {
            assert!(
                self.finished.contains(offset),
                "I4: metadata claims unfinished {offset}"
            );
        }
        // The literal rule never loses, but commits less or equal.
        if let Some(literal) = self.literal.commit_point() {
            assert!(literal <= cp, "literal {literal} ahead of watermark {cp}");
            for &offset in self.log.iter().take_while(|&&o| o < literal) {
                assert!(
                    self.finished.contains(&offset),
                    "literal rule passes unfinished {offset}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Goal: the ring tracker commits exactly the sorted-set watermark and keeps I1, I2, I3,
    /// I4 through random polls, acks, refused acks and revoke/restore cycles.
    #[test]
    fn tracker_matches_sorted_set_and_keeps_invariants(
        ops in prop::collection::vec(op(), 1..300),
        in_flight_max in 1usize..20,
        // Spans past 64 times the room left make the tracker keep an exact count.
        span_max in 1u64..400,
    ) {
        let limits = Limits { in_flight_max, span_max, metadata_budget_bytes: 4096 };
        let mut model = Model::new(limits);
        for op in &ops {
            model.apply(op);
        }
    }

    /// Goal: the batch forms the pipeline uses (`track_run`, `ack_all`) leave the same state
    /// and give the same answers as `track` and `ack` one record at a time, through polls with
    /// gaps, back-pressure, acks in random order with double and untracked acks, and restores.
    #[test]
    fn batch_forms_match_single_calls(
        ops in prop::collection::vec(batch_op(), 1..120),
        in_flight_max in 1usize..40,
        span_max in 1u64..600,
    ) {
        let limits = Limits { in_flight_max, span_max, metadata_budget_bytes: 4096 };
        let mut pair = BatchPair::new(limits);
        for op in &ops {
            pair.apply(op);
        }
    }

    /// Goal: metadata round-trips any finished set exactly (up to trailing unfinished offsets).
    #[test]
    fn metadata_round_trips(
        base in -1_000_000i64..1_000_000_000_000,
        bits in prop::collection::vec(any::<bool>(), 0..2000),
        runs in prop::collection::vec((1u64..500, any::<bool>()), 0..40),
    ) {
        let mut set = FinishedSet::new(base, bits.len() as u64);
        for (i, _) in bits.iter().enumerate().filter(|(_, &b)| b) {
            set.insert(base + i as i64);
        }
        check_round_trip(&set);
        // Long runs exercise the run-length encoding.
        let len: u64 = runs.iter().map(|r| r.0).sum();
        let mut set = FinishedSet::new(base, len);
        let mut offset = base;
        for (run, finished) in runs {
            if finished {
                (offset..offset + run as i64).for_each(|o| set.insert(o));
            }
            offset += run as i64;
        }
        check_round_trip(&set);
    }

    /// Goal: with any budget, the metadata fits, claims only finished offsets, and a restore
    /// from it redoes every record it does not claim (budget overflow = at-least-once).
    #[test]
    fn budget_fallback_never_claims_unfinished(
        budget in 0usize..120,
        acks in prop::collection::vec(any::<bool>(), 1..400),
    ) {
        let limits = Limits { metadata_budget_bytes: budget, ..Limits::default() };
        let mut tracker = PartitionTracker::starting_at(500, limits);
        let mut finished = BTreeSet::new();
        for (i, &ack) in acks.iter().enumerate() {
            let offset = 500 + i as i64;
            tracker.track(offset).unwrap();
            if ack {
                tracker.ack(offset).unwrap();
                finished.insert(offset);
            }
        }
        let cp = tracker.commit_point().unwrap();
        let text = tracker.encode_metadata();
        prop_assert!(text.len() <= budget);
        let committed = CommittedOffset { offset: cp, metadata: Some(text) };
        let (mut restored, report) = PartitionTracker::restore(&committed, Limits::default());
        prop_assert_eq!(report.metadata_ignored, None);
        for offset in cp..500 + acks.len() as i64 {
            match restored.track(offset).unwrap() {
                Tracked::AlreadyDone => prop_assert!(finished.contains(&offset), "claims unfinished {}", offset),
                Tracked::New => {}
            }
        }
    }
}

proptest! {
    /// Goal: metadata decoding refuses or accepts any input without panicking, and restoring
    /// from it never fails the assignment.
    #[test]
    fn metadata_decode_never_panics(
        raw in prop::collection::vec(any::<u8>(), 0..64),
        text in ".{0,40}",
        base in any::<i64>(),
    ) {
        let as_text = format!("hf:{}", String::from_utf8_lossy(&raw));
        for candidate in [as_text.as_str(), text.as_str()] {
            let _ = metadata::decode(candidate, base, 1 << 20);
            let committed = CommittedOffset { offset: base, metadata: Some(candidate.to_string()) };
            let (tracker, _) = PartitionTracker::restore(&committed, Limits::default());
            prop_assert_eq!(tracker.commit_point(), Some(base));
        }
    }
}

fn check_round_trip(set: &FinishedSet) {
    let text = metadata::encode(set, usize::MAX);
    let expected: Vec<i64> = set.iter().collect();
    if expected.is_empty() {
        assert_eq!(text, "");
        return;
    }
    let decoded = metadata::decode(&text, set.base(), u64::MAX).expect("decodes");
    assert_eq!(decoded.iter().collect::<Vec<_>>(), expected);
    // The encoder keeps the smaller of bitset and run-length: never worse than the bitset.
    let bitset_text = 3 + (10 + 10 + set.len().div_ceil(8) as usize).div_ceil(3) * 4;
    assert!(
        text.len() <= bitset_text,
        "{} > {}",
        text.len(),
        bitset_text
    );
}

#[derive(Clone, Debug)]
enum BatchOp {
    /// A poll of `count` consecutive offsets after a gap of `gap`.
    Poll { gap: u8, count: u8 },
    /// One batch of acks: picks among the in-flight offsets (removed), plus `extra` offsets
    /// that must be refused (acked already, below the first, above the highest tracked).
    Acks { picks: Vec<usize>, extra: Vec<i8> },
    /// Restore both from the committed offset and metadata (a restart).
    Restore,
}

fn batch_op() -> impl Strategy<Value = BatchOp> {
    prop_oneof![
        4 => (prop_oneof![6 => Just(0u8), 1 => 1u8..40], 1u8..60)
            .prop_map(|(gap, count)| BatchOp::Poll { gap, count }),
        4 => (
            prop::collection::vec(any::<usize>(), 0..40),
            prop::collection::vec(any::<i8>(), 0..3),
        )
            .prop_map(|(picks, extra)| BatchOp::Acks { picks, extra }),
        1 => Just(BatchOp::Restore),
    ]
}

/// Two trackers fed the same records: one a call per record, one through the batch forms.
struct BatchPair {
    limits: Limits,
    single: PartitionTracker,
    batch: PartitionTracker,
    /// The next offset to poll, and the offsets of a poll the tracker refused (held back).
    next: i64,
    held: Vec<i64>,
    in_flight: Vec<i64>,
    acked: Vec<i64>,
}

impl BatchPair {
    fn new(limits: Limits) -> Self {
        BatchPair {
            limits,
            single: PartitionTracker::starting_at(0, limits),
            batch: PartitionTracker::starting_at(0, limits),
            next: 0,
            held: Vec::new(),
            in_flight: Vec::new(),
            acked: Vec::new(),
        }
    }

    fn apply(&mut self, op: &BatchOp) {
        match op {
            BatchOp::Poll { gap, count } => {
                if self.held.is_empty() {
                    let first = self.next + i64::from(*gap);
                    self.held.extend(first..first + i64::from(*count));
                    self.next = first + i64::from(*count);
                }
                self.poll();
            }
            BatchOp::Acks { picks, extra } => {
                let mut offsets = Vec::new();
                for &pick in picks {
                    if !self.in_flight.is_empty() {
                        offsets.push(self.in_flight.swap_remove(pick % self.in_flight.len()));
                    }
                }
                let picked = offsets.len();
                for &e in extra {
                    offsets.push(match self.acked.len() {
                        n if n > 0 && e >= 0 => self.acked[e as usize % n],
                        _ if e >= 0 => self.next + i64::from(e),
                        _ => i64::from(e), // below the first offset, 0
                    });
                }
                let expected: Vec<AckError> = offsets
                    .iter()
                    .filter_map(|&o| self.single.ack(o).err())
                    .collect();
                let refused = self.batch.ack_all(offsets.iter().copied());
                assert_eq!(refused, expected, "refusals of {offsets:?}");
                assert_eq!(
                    refused.len(),
                    offsets.len() - picked,
                    "only the extras refused"
                );
                self.acked.extend(&offsets[..picked]);
            }
            BatchOp::Restore => {
                let committed = CommittedOffset {
                    offset: self.single.commit_point().unwrap_or(0),
                    metadata: Some(self.single.encode_metadata()),
                };
                self.single = PartitionTracker::restore(&committed, self.limits).0;
                self.batch = PartitionTracker::restore(&committed, self.limits).0;
                // Re-read from the committed offset; redone records are polled again.
                self.next = committed.offset;
                self.held.clear();
                self.in_flight.clear();
            }
        }
        assert_eq!(self.batch.commit_point(), self.single.commit_point());
        assert_eq!(self.batch.next_offset(), self.single.next_offset());
        assert_eq!(self.batch.in_flight(), self.single.in_flight());
        assert_eq!(self.batch.in_flight(), self.in_flight.len());
        assert_eq!(self.batch.encode_metadata(), self.single.encode_metadata());
    }

    /// Tracks the held poll as the pipeline's poll loop does: `track_run` for the run, then
    /// `track` for the record it stopped at; stops at back-pressure.
    fn poll(&mut self) {
        let mut position = 0;
        while position < self.held.len() {
            let offset = self.held[position];
            let run = self.held.len() - position;
            let tracked = self.batch.track_run(offset, run);
            for &offset in &self.held[position..position + tracked] {
                assert_eq!(
                    self.single.track(offset),
                    Ok(Tracked::New),
                    "run at {offset}"
                );
                self.in_flight.push(offset);
            }
            position += tracked;
            let Some(&offset) = self.held.get(position) else {
                break;
            };
            let answer = self.single.track(offset);
            assert_eq!(self.batch.track(offset), answer, "after a run, at {offset}");
            match answer {
                Ok(Tracked::New) => self.in_flight.push(offset),
                Ok(Tracked::AlreadyDone) => {}
                Err(TrackError::Full { .. }) => break,
                Err(other) => panic!("unexpected {other}"),
            }
            position += 1;
        }
        self.held.drain(..position);
    }
}

//! One replica of one partition: the log, its page cache, its high watermark and the
//! idempotent-producer state. Pure: no time, no I/O; the broker drives it.

use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};

/// How many runs of sequences per producer the broker remembers for duplicate detection
/// (Kafka keeps the last five batches; a run is a stretch of consecutive sequences at
/// consecutive offsets, so it covers one batch or several back-to-back ones).
const PRODUCER_RUNS_REMEMBERED: usize = 5;

/// A produced record as sent by a producer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Produced {
    pub key: Option<Vec<u8>>,
    pub payload: Bytes,
    pub headers: Vec<(String, Vec<u8>)>,
    /// `(producer id, sequence)` for idempotent producers.
    pub producer: Option<(u64, i32)>,
}

/// One log entry: the record and the leader epoch that wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub epoch: i32,
    pub record: Produced,
}

/// Why a leader refused a whole batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The first new sequence skips ahead: an earlier record of this producer is missing.
    OutOfOrder,
}

/// Consecutive sequences of one producer at consecutive offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SequenceRun {
    first: i32,
    last: i32,
    base_offset: i64,
}

impl SequenceRun {
    /// The offset of `sequence`, if this run holds it.
    fn offset_of(&self, sequence: i32) -> Option<i64> {
        (self.first..=self.last)
            .contains(&sequence)
            .then(|| self.base_offset + i64::from(sequence - self.first))
    }
}

/// One replica's state. Offsets are indexes into `entries` (the log starts at 0 and is never
/// compacted or deleted in the simulation).
#[derive(Clone, Debug, Default)]
pub struct Replica {
    entries: Vec<Entry>,
    /// Entries below this index are on disk; the rest are only in the page cache.
    flushed: usize,
    high_watermark: i64,
    /// Per producer id: the recent runs of its sequences, oldest first.
    producers: BTreeMap<u64, VecDeque<SequenceRun>>,
}

impl Replica {
    /// The log end offset: the offset the next record will get.
    pub fn log_end(&self) -> i64 {
        self.entries.len() as i64
    }

    /// The high watermark: records below it are committed (replicated to the whole ISR).
    pub fn high_watermark(&self) -> i64 {
        debug_assert!(self.high_watermark <= self.log_end());
        self.high_watermark
    }

    /// Sets the high watermark, never above the log end.
    pub fn set_high_watermark(&mut self, high_watermark: i64) {
        self.high_watermark = high_watermark.clamp(0, self.log_end());
    }

    /// How many entries are on disk.
    pub fn flushed(&self) -> usize {
        self.flushed
    }

    /// The epoch of the last entry, -1 for an empty log.
    pub fn last_epoch(&self) -> i32 {
        self.entries.last().map_or(-1, |entry| entry.epoch)
    }

    /// The epoch of the entry at `offset`, if the log has it.
    pub fn epoch_at(&self, offset: i64) -> Option<i32> {
        usize::try_from(offset)
            .ok()
            .and_then(|index| self.entries.get(index))
            .map(|entry| entry.epoch)
    }

    /// KIP-101's OffsetsForLeaderEpoch: the first offset written by an epoch later than
    /// `epoch` (the end of `epoch` in this log), or the log end if there is none.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> i64 {
        self.entries
            .iter()
            .position(|entry| entry.epoch > epoch)
            .map_or(self.log_end(), |index| index as i64)
    }

    /// Appends a producer's batch as leader, all or nothing, and returns each record's
    /// offset. An idempotent batch (every record carries the same producer id and consecutive
    /// sequences) is checked first: records already in the log are not appended again but
    /// answered with their original offsets (-1 when the sequence is older than anything
    /// remembered, as Kafka's DUPLICATE_SEQUENCE carries no offset); the rest must continue
    /// the producer's sequence exactly, or the whole batch is refused.
    pub fn append_batch_as_leader(
        &mut self,
        epoch: i32,
        records: Vec<Produced>,
    ) -> Result<Vec<i64>, Refused> {
        let mut offsets = Vec::with_capacity(records.len());
        let first_new = match records.first().and_then(|record| record.producer) {
            None => 0, // not idempotent: every record is new
            Some((producer_id, first_sequence)) => {
                debug_assert!(
                    records
                        .iter()
                        .zip(first_sequence..)
                        .all(|(record, sequence)| {
                            record.producer == Some((producer_id, sequence))
                        }),
                    "a batch carries one producer id and consecutive sequences"
                );
                let runs = self.producers.get(&producer_id);
                let last = runs.and_then(|runs| runs.back()).map(|run| run.last);
                let expected = last.map_or(0, |last| last + 1);
                // Sequences up to `last` are retries; the rest must start at `expected`.
                let retried = last.map_or(0, |last| {
                    usize::try_from(i64::from(last) - i64::from(first_sequence) + 1)
                        .unwrap_or(0)
                        .min(records.len())
                });
                if retried < records.len()
                    && i64::from(first_sequence) + retried as i64 != i64::from(expected)
                {
                    return Err(Refused::OutOfOrder);
                }
                for sequence in (first_sequence..).take(retried) {
                    let original =
                        runs.and_then(|runs| runs.iter().find_map(|run| run.offset_of(sequence)));
                    offsets.push(original.unwrap_or(-1));
                }
                retried
            }
        };
        for record in records.into_iter().skip(first_new) {
            offsets.push(self.log_end());
            self.push(Entry { epoch, record });
        }
        Ok(offsets)
    }

    /// Appends entries fetched from the leader, which must continue this log exactly.
    pub fn append_as_follower(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            debug_assert!(
                entry.epoch >= self.last_epoch(),
                "epochs never go backwards"
            );
            self.push(entry);
        }
    }

    fn push(&mut self, entry: Entry) {
        let offset = self.log_end();
        if let Some((producer_id, sequence)) = entry.record.producer {
            let runs = self.producers.entry(producer_id).or_default();
            match runs.back_mut() {
                Some(run)
                    if sequence == run.last + 1
                        && offset == run.base_offset + i64::from(sequence - run.first) =>
                {
                    run.last = sequence;
                }
                _ => runs.push_back(SequenceRun {
                    first: sequence,
                    last: sequence,
                    base_offset: offset,
                }),
            }
            while runs.len() > PRODUCER_RUNS_REMEMBERED {
                runs.pop_front();
            }
        }
        self.entries.push(entry);
    }

    /// Cuts the log to `length` entries (divergence after a leader change, or a crash).
    pub fn truncate(&mut self, length: i64) {
        let length = usize::try_from(length.max(0)).unwrap_or(0);
        if length >= self.entries.len() {
            return;
        }
        self.entries.truncate(length);
        self.flushed = self.flushed.min(length);
        self.high_watermark = self.high_watermark.min(self.log_end());
        self.rebuild_producers();
    }

    fn rebuild_producers(&mut self) {
        let entries = std::mem::take(&mut self.entries);
        self.producers.clear();
        for entry in entries {
            self.push(entry);
        }
    }

    /// Writes the page cache to disk (fsync).
    pub fn flush(&mut self) {
        self.flushed = self.entries.len();
    }

    /// A crash: everything not flushed is gone. The high watermark checkpoint is kept only as
    /// far as the surviving log reaches.
    pub fn crash(&mut self) {
        let flushed = self.flushed as i64;
        self.truncate(flushed);
        debug_assert_eq!(self.entries.len(), self.flushed);
    }

    /// Entries in `[from, until)`, at most `count_max`.
    pub fn read(&self, from: i64, until: i64, count_max: usize) -> Vec<(i64, Entry)> {
        let start = usize::try_from(from.max(0)).unwrap_or(0);
        let end = usize::try_from(until.clamp(0, self.log_end())).unwrap_or(0);
        if start >= end {
            return Vec::new();
        }
        self.entries[start..end]
            .iter()
            .take(count_max)
            .enumerate()
            .map(|(index, entry)| ((start + index) as i64, entry.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produced(producer: Option<(u64, i32)>) -> Produced {
        Produced {
            key: None,
            payload: Bytes::from_static(&[1]),
            headers: Vec::new(),
            producer,
        }
    }

    fn batch(producer_id: u64, sequences: std::ops::Range<i32>) -> Vec<Produced> {
        sequences
            .map(|sequence| produced(Some((producer_id, sequence))))
            .collect()
    }

    #[test]
    fn idempotent_retry_is_recognised_and_gaps_refused() {
        let mut replica = Replica::default();
        assert_eq!(
            replica.append_batch_as_leader(0, batch(7, 0..1)),
            Ok(vec![0])
        );
        assert_eq!(
            replica.append_batch_as_leader(0, batch(7, 0..1)),
            Ok(vec![0])
        );
        assert_eq!(replica.log_end(), 1, "the retry was not appended");
        assert_eq!(
            replica.append_batch_as_leader(0, batch(7, 2..3)),
            Err(Refused::OutOfOrder)
        );
        assert_eq!(
            replica.append_batch_as_leader(0, batch(8, 1..2)),
            Err(Refused::OutOfOrder),
            "an unknown producer starts at sequence 0"
        );
        assert_eq!(
            replica.append_batch_as_leader(0, vec![produced(None), produced(None)]),
            Ok(vec![1, 2])
        );
        assert_eq!(
            replica.append_batch_as_leader(0, vec![produced(None)]),
            Ok(vec![3]),
            "without idempotence every send is appended"
        );
    }

    #[test]
    fn batches_are_all_or_nothing_and_retries_keep_their_offsets() {
        let mut replica = Replica::default();
        assert_eq!(
            replica.append_batch_as_leader(0, batch(7, 0..3)),
            Ok(vec![0, 1, 2])
        );
        replica
            .append_batch_as_leader(0, vec![produced(None)])
            .unwrap();
        assert_eq!(
            replica.append_batch_as_leader(0, batch(7, 3..5)),
            Ok(vec![4, 5])
        );
        // A retry of the first batch: every record at its original offset, nothing appended.
        assert_eq!(
            replica.append_batch_as_leader(0, batch(7, 0..3)),
            Ok(vec![0, 1, 2])
        );
        assert_eq!(replica.log_end(), 6);
        // A batch cut short by a truncation: the retry appends only the missing records.
        replica.truncate(5);
        assert_eq!(
            replica.append_batch_as_leader(1, batch(7, 3..5)),
            Ok(vec![4, 5])
        );
        assert_eq!(replica.epoch_at(5), Some(1));
        assert_eq!(replica.log_end(), 6);
        // A gap refuses the whole batch.
        assert_eq!(
            replica.append_batch_as_leader(1, batch(7, 6..9)),
            Err(Refused::OutOfOrder)
        );
        assert_eq!(replica.log_end(), 6);
    }

    #[test]
    fn followers_rebuild_the_same_producer_state() {
        let mut leader = Replica::default();
        leader.append_batch_as_leader(0, batch(7, 0..4)).unwrap();
        let mut follower = Replica::default();
        follower.append_as_follower(
            leader
                .read(0, 2, usize::MAX)
                .into_iter()
                .map(|(_, e)| e)
                .collect(),
        );
        follower.append_as_follower(
            leader
                .read(2, 4, usize::MAX)
                .into_iter()
                .map(|(_, e)| e)
                .collect(),
        );
        assert_eq!(
            follower.append_batch_as_leader(1, batch(7, 2..6)),
            Ok(vec![2, 3, 4, 5])
        );
    }

    #[test]
    fn crash_keeps_only_flushed_entries() {
        let mut replica = Replica::default();
        replica
            .append_batch_as_leader(0, vec![produced(None)])
            .unwrap();
        replica.flush();
        replica
            .append_batch_as_leader(0, vec![produced(None)])
            .unwrap();
        replica.set_high_watermark(2);
        replica.crash();
        assert_eq!(replica.log_end(), 1);
        assert_eq!(replica.high_watermark(), 1);
    }

    #[test]
    fn end_offset_for_epoch_finds_divergence() {
        let mut replica = Replica::default();
        replica
            .append_batch_as_leader(1, vec![produced(None)])
            .unwrap();
        replica
            .append_batch_as_leader(3, vec![produced(None)])
            .unwrap();
        assert_eq!(replica.end_offset_for_epoch(2), 1);
        assert_eq!(replica.end_offset_for_epoch(3), 2);
    }
}

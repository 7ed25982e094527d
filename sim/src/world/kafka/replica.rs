//! One replica of one partition: the log, its page cache, its high watermark and the
//! idempotent-producer state. Pure: no time, no I/O; the broker drives it.

use std::collections::{BTreeMap, VecDeque};

/// How many recent batches per producer the broker remembers for duplicate detection
/// (Kafka keeps five).
const PRODUCER_BATCHES_REMEMBERED: usize = 5;

/// A produced record as sent by a producer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Produced {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
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

/// What a leader append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Appended at this offset.
    New(i64),
    /// A retry of an already appended record (idempotence): the original offset.
    Duplicate(i64),
    /// The sequence number skips ahead: an earlier record of this producer is missing.
    OutOfOrder,
}

/// One replica's state. Offsets are indexes into `entries` (the log starts at 0 and is never
/// compacted or deleted in the simulation).
#[derive(Clone, Debug, Default)]
pub struct Replica {
    entries: Vec<Entry>,
    /// Entries below this index are on disk; the rest are only in the page cache.
    flushed: usize,
    high_watermark: i64,
    /// Per producer id: the last sequence and the offsets of recent sequences.
    producers: BTreeMap<u64, VecDeque<(i32, i64)>>,
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

    /// Appends as leader, checking idempotent-producer sequences.
    pub fn append_as_leader(&mut self, epoch: i32, record: Produced) -> Appended {
        if let Some((producer_id, sequence)) = record.producer {
            if let Some(recent) = self.producers.get(&producer_id) {
                if let Some(&(_, offset)) = recent.iter().find(|(seen, _)| *seen == sequence) {
                    return Appended::Duplicate(offset);
                }
                let last = recent.back().map_or(-1, |(seen, _)| *seen);
                if sequence > last + 1 {
                    return Appended::OutOfOrder;
                }
                if sequence <= last {
                    // Older than anything remembered: Kafka answers DUPLICATE_SEQUENCE
                    // without an offset; the original is somewhere earlier in the log.
                    return Appended::Duplicate(-1);
                }
            } else if sequence != 0 {
                return Appended::OutOfOrder;
            }
        }
        let offset = self.log_end();
        self.push(Entry { epoch, record });
        Appended::New(offset)
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
            let recent = self.producers.entry(producer_id).or_default();
            recent.push_back((sequence, offset));
            while recent.len() > PRODUCER_BATCHES_REMEMBERED {
                recent.pop_front();
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
            payload: vec![1],
            headers: Vec::new(),
            producer,
        }
    }

    #[test]
    fn idempotent_retry_is_recognised_and_gaps_refused() {
        let mut replica = Replica::default();
        assert_eq!(
            replica.append_as_leader(0, produced(Some((7, 0)))),
            Appended::New(0)
        );
        assert_eq!(
            replica.append_as_leader(0, produced(Some((7, 0)))),
            Appended::Duplicate(0)
        );
        assert_eq!(
            replica.append_as_leader(0, produced(Some((7, 2)))),
            Appended::OutOfOrder
        );
        assert_eq!(
            replica.append_as_leader(0, produced(None)),
            Appended::New(1)
        );
        assert_eq!(
            replica.append_as_leader(0, produced(None)),
            Appended::New(2)
        );
    }

    #[test]
    fn crash_keeps_only_flushed_entries() {
        let mut replica = Replica::default();
        replica.append_as_leader(0, produced(None));
        replica.flush();
        replica.append_as_leader(0, produced(None));
        replica.set_high_watermark(2);
        replica.crash();
        assert_eq!(replica.log_end(), 1);
        assert_eq!(replica.high_watermark(), 1);
    }

    #[test]
    fn end_offset_for_epoch_finds_divergence() {
        let mut replica = Replica::default();
        replica.append_as_leader(1, produced(None));
        replica.append_as_leader(3, produced(None));
        assert_eq!(replica.end_offset_for_epoch(2), 1);
        assert_eq!(replica.end_offset_for_epoch(3), 2);
    }
}

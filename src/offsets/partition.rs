//! One partition's tracker: a ring of bits above the watermark.
//!
//! Offsets `base .. next` live in the ring, one bit each: set = finished (acked, a gap, or
//! done before a restart), clear = in flight. `base` is the watermark: the lowest unfinished
//! offset, or `next` when nothing is in flight. Every bit outside `base .. next` is zero, so a
//! word is reused without clearing and the scan that advances the watermark stops at `next`
//! by itself. The ring holds `span_max + 128` bits or more (a power of two words), so the
//! words of `base` and `next` never alias.
//!
//! Usually no counter is updated per record: the number in flight is `next - base` minus the
//! set bits, counted when asked. A counter that every `track` and `ack` reads and writes back
//! would tie each call to the one before through memory (docs/offsets.md). The in-flight limit is enforced through `track_limit`
//! instead, an offset below which the next offset is known to fit both limits (see
//! [`PartitionTracker::refresh_track_limit`]). Only when that proof would need a count of
//! the ring on nearly every track (a span far wider than the room left below the in-flight
//! limit: records linger while the count sits at the limit) does the tracker count instead,
//! so that `track` stays O(1) there too: `ack` then moves `room_end` and `track_limit` up
//! by one, and `track` takes the same fast path and writes nothing more than `next` (the
//! count is derived from both), so no field is written by both calls.
//!
//! The file is longer than most: it is one state machine whose invariants (above, and checked
//! by `debug_check`) bind every method, so it is read and changed as a whole. Its tests are in
//! `partition/tests.rs`.

use super::metadata::{self, FinishedSet};
use super::{AckError, Limits, TrackError, Tracked};
use crate::ports::CommittedOffset;

/// What [`PartitionTracker::restore`] made of the committed metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Offsets above the committed offset that the metadata records as finished.
    pub already_done: usize,
    /// Why the metadata was ignored, if it was (foreign, damaged, written for another offset).
    pub metadata_ignored: Option<String>,
}

/// Tracks one partition: `track` in poll order, `ack` in any order, commit the watermark.
#[derive(Clone, Debug)]
pub struct PartitionTracker {
    limits: Limits,
    ring: Box<[u64]>,
    word_mask: u64,
    /// Lowest unfinished offset, or `next` if nothing is in flight.
    base: i64,
    /// Highest tracked offset + 1.
    next: i64,
    /// Lowest offset this tracker knows about (acks below it were never tracked here).
    first: i64,
    /// False until the first offset is tracked (for [`PartitionTracker::new`]).
    known: bool,
    /// Tracking `next` without further checks is allowed while `next < track_limit`: then
    /// the span stays within `span_max` and fewer than `in_flight_max` are in flight. It stays
    /// true while acks and tracks go on (acks only lower the count and raise `base`; each
    /// track consumes one offset of the room). `i64::MIN` (never true) before the first track
    /// and while restored metadata is pending.
    track_limit: i64,
    /// While counting (`NOT_COUNTING` otherwise): the offset at which the number in flight
    /// reaches `in_flight_max`, so that it is `next + in_flight_max - room_end`. Set from a
    /// count (`next` then + `in_flight_max` - in flight then); each ack since moved it up by
    /// one. Wrapping: within `in_flight_max` of `i64::MAX` it wraps negative, so that every
    /// track takes the slow path, which checks exactly.
    room_end: i64,
    /// While counting: `base + span_max` (saturating), the span's bound on `track_limit`,
    /// which is then `min(room_end, span_end)`.
    span_end: i64,
    /// Finished offsets from the previous owner's metadata, not yet re-polled.
    restored: Option<FinishedSet>,
}

/// `PartitionTracker::room_end` when the tracker is not counting.
const NOT_COUNTING: i64 = i64::MIN;

/// An offset's word in a ring of `word_mask + 1` words, and its bit in that word. A free
/// function so that a loop holding the ring borrowed can use it.
#[inline]
fn slot_in(word_mask: u64, offset: i64) -> (usize, u64) {
    let offset = offset as u64;
    (((offset >> 6) & word_mask) as usize, 1u64 << (offset & 63))
}

impl PartitionTracker {
    /// A tracker that starts at the first offset tracked.
    pub fn new(limits: Limits) -> Self {
        let limits = Limits {
            in_flight_max: limits.in_flight_max.max(1),
            span_max: limits.span_max.clamp(1, Limits::SPAN_MAX),
            ..limits
        };
        let words = (limits.span_max + 128).div_ceil(64).next_power_of_two();
        PartitionTracker {
            limits,
            ring: vec![0u64; words as usize].into_boxed_slice(),
            word_mask: words - 1,
            base: 0,
            next: 0,
            first: 0,
            known: false,
            track_limit: i64::MIN,
            room_end: NOT_COUNTING,
            span_end: i64::MIN,
            restored: None,
        }
    }

    /// A tracker whose commit point is `start` until something is tracked (a committed offset).
    pub fn starting_at(start: i64, limits: Limits) -> Self {
        let mut tracker = PartitionTracker::new(limits);
        tracker.base = start;
        tracker.next = start;
        tracker.first = start;
        tracker.known = true;
        tracker.refresh_track_limit(Some(0));
        tracker
    }

    /// Resumes from a committed offset, decoding its metadata. Metadata this tracker cannot
    /// use is ignored with a warning: the finished records are then redone (at-least-once).
    pub fn restore(committed: &CommittedOffset, limits: Limits) -> (Self, RestoreReport) {
        let mut tracker = PartitionTracker::starting_at(committed.offset, limits);
        let mut report = RestoreReport::default();
        match committed.metadata.as_deref() {
            None | Some("") => {}
            Some(text) => match metadata::decode(text, committed.offset, tracker.limits.span_max) {
                Ok(set) => {
                    report.already_done = set.count();
                    tracker.restored = (report.already_done > 0).then_some(set);
                    tracker.refresh_track_limit(Some(0));
                }
                Err(error) => {
                    tracing::warn!(
                        offset = committed.offset,
                        %error,
                        "ignoring commit metadata; records above the committed offset will be redone"
                    );
                    report.metadata_ignored = Some(error.to_string());
                }
            },
        }
        (tracker, report)
    }

    /// The limits in force (after clamping).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Registers a polled offset. Offsets must increase; skipped offsets are gaps (finished).
    #[inline]
    pub fn track(&mut self, offset: i64) -> Result<Tracked, TrackError> {
        // Fast path: the next consecutive offset, below `track_limit` (within both limits, no
        // restored metadata). Its bit is already clear (every bit at or above `next` is zero).
        if offset == self.next && offset < self.track_limit {
            self.next = offset + 1;
            self.debug_check();
            return Ok(Tracked::New);
        }
        self.track_slow(offset)
    }

    /// Every other case of [`PartitionTracker::track`].
    fn track_slow(&mut self, offset: i64) -> Result<Tracked, TrackError> {
        // i64::MAX has no next offset to commit; Kafka never reaches it.
        if (self.known && offset < self.next) || offset == i64::MAX {
            return Err(TrackError::Backwards {
                offset,
                next: self.next,
            });
        }
        let done = self.restored.is_some() && self.restored_done(offset);
        let base_before = self.base;
        // The count after this track, when it is known without counting.
        let mut in_flight_after = self
            .counting()
            .then(|| self.in_flight() + usize::from(!done));
        if !self.known || self.base == self.next {
            // Nothing unfinished: the watermark jumps to the new offset; the ring is all zero.
            if !self.known {
                self.first = offset;
                self.known = true;
            }
            self.base = if done { offset + 1 } else { offset };
            in_flight_after = Some(usize::from(!done));
        } else {
            let span = offset.wrapping_sub(self.base) as u64 + 1;
            if span > self.limits.span_max {
                crate::reach!("tracker.span_full");
                return Err(self.full(offset, span));
            }
            // Room is proven without counting if `offset` is below the limit, or if the whole
            // span is smaller than the in-flight limit.
            if !done && offset >= self.track_limit && span > self.limits.in_flight_max as u64 {
                let in_flight = self.in_flight();
                if in_flight >= self.limits.in_flight_max {
                    crate::reach!("tracker.in_flight_full");
                    return Err(self.full(offset, span));
                }
                in_flight_after = Some(in_flight + 1);
            }
            if offset > self.next {
                self.fill_finished(self.next, offset);
            }
            if done {
                let (word, mask) = self.slot(offset);
                self.ring[word] |= mask;
            }
        }
        self.next = offset + 1;
        if done || self.restored.is_some() {
            self.forget_passed_restored();
        }
        self.refresh_track_limit(in_flight_after);
        debug_assert!(self.base >= base_before, "I2: watermark moved backwards");
        self.debug_check();
        Ok(if done {
            Tracked::AlreadyDone
        } else {
            Tracked::New
        })
    }

    /// Tracks the consecutive offsets `first .. first + count` (one partition's records of a
    /// poll) as far as [`PartitionTracker::track`]'s fast path admits them, in O(1). Returns
    /// how many it tracked, each as [`Tracked::New`]; the caller tracks the next offset with
    /// `track`, which says why the run stopped (the tracker is full, the offset is not `next`,
    /// restored metadata is pending).
    #[inline]
    pub fn track_run(&mut self, first: i64, count: usize) -> usize {
        if first != self.next {
            return 0;
        }
        // `track`'s fast path admits `first + i` while it is below `track_limit`, and tracking
        // moves nothing but `next`, so it admits the run's first `track_limit - first`.
        let room = self.track_limit.saturating_sub(first).max(0) as u64;
        let tracked = room.min(count as u64);
        self.next = first + tracked as i64;
        self.debug_check();
        tracked as usize
    }

    /// Acks each of `offsets` in order, as [`PartitionTracker::ack`] would one by one, and
    /// returns the refusals in order (empty, and not allocated, when there are none). The
    /// common ack runs with the tracker's state in registers; the watermark's own record and
    /// refusals go through `ack`.
    pub fn ack_all(&mut self, offsets: impl IntoIterator<Item = i64>) -> Vec<AckError> {
        let mut offsets = offsets.into_iter();
        let mut refused = Vec::new();
        loop {
            let stopped = self.ack_above_watermark(&mut offsets);
            let Some(offset) = stopped else {
                return refused;
            };
            if let Err(error) = self.ack(offset) {
                refused.push(error);
            }
        }
    }

    /// `ack`'s common path over `offsets` until one is not a tracked, unfinished offset above
    /// the watermark; returns that one (not acked) or `None` at the end.
    #[inline]
    fn ack_above_watermark(&mut self, offsets: &mut impl Iterator<Item = i64>) -> Option<i64> {
        let base = self.base;
        let span = (self.next - base) as u64;
        if span == 0 {
            return offsets.next();
        }
        let word_mask = self.word_mask;
        let ring = &mut self.ring[..];
        let mut acked = 0i64;
        let mut stopped = None;
        for offset in offsets.by_ref() {
            // One unsigned compare: `base < offset < next` (index 0 wraps to the top).
            let index = offset.wrapping_sub(base) as u64;
            if index.wrapping_sub(1) >= span - 1 {
                stopped = Some(offset);
                break;
            }
            let (word, mask) = slot_in(word_mask, offset);
            let bits = ring[word];
            if bits & mask != 0 {
                stopped = Some(offset);
                break;
            }
            ring[word] = bits | mask;
            acked += 1;
        }
        if acked > 0 {
            self.raise_limit_by_acks(acked);
        }
        self.debug_check();
        stopped
    }

    /// Marks a tracked offset finished; advances the watermark if it was the lowest.
    #[inline]
    pub fn ack(&mut self, offset: i64) -> Result<(), AckError> {
        // One unsigned compare covers both `offset < base` and `offset >= next`.
        let index = offset.wrapping_sub(self.base) as u64;
        if index < (self.next - self.base) as u64 {
            let (word, mask) = self.slot(offset);
            let bits = self.ring[word];
            if bits & mask == 0 {
                self.ring[word] = bits | mask;
                if self.counting() {
                    self.room_end = self.room_end.wrapping_add(1);
                    self.track_limit = self.counting_limit();
                }
                // Rare: the watermark's own record (about ln(window) times per window in
                // random order). Out of line: inlined, its loop sat in the common ack's path
                // and the common ack jumped over it (docs/offsets.md).
                if index == 0 {
                    std::hint::cold_path();
                    self.advance();
                }
                self.debug_check();
                return Ok(());
            }
        }
        self.ack_refused(offset)
    }

    /// The error for an ack that the fast path did not accept.
    #[cold]
    fn ack_refused(&self, offset: i64) -> Result<(), AckError> {
        if !self.known || offset >= self.next || offset < self.first {
            return Err(AckError::NotTracked { offset });
        }
        // Below the watermark, or a set bit: acked, a gap, or done before a restart.
        Err(AckError::AlreadyAcked { offset })
    }

    /// The offset to commit (the next to read): the lowest unfinished offset, or the highest
    /// tracked + 1 if everything is finished. `None` before anything is known.
    pub fn commit_point(&self) -> Option<i64> {
        self.known.then_some(self.base)
    }

    /// Records tracked and not yet acked: O(1) while the tracker keeps a count, otherwise
    /// counted from the ring, O(span / 64).
    pub fn in_flight(&self) -> usize {
        if self.counting() {
            // Counting only while the room is under span / 64, so the limit fits an i64.
            let max = self.limits.in_flight_max as i64;
            return self.next.wrapping_add(max).wrapping_sub(self.room_end) as usize;
        }
        self.count_in_flight()
    }

    /// The lowest tracked offset not yet acked.
    pub fn lowest_unfinished(&self) -> Option<i64> {
        // Something is in flight exactly when the watermark is below `next`.
        (self.base != self.next).then_some(self.base)
    }

    /// The highest tracked offset + 1 (`None` before anything is known).
    pub fn next_offset(&self) -> Option<i64> {
        self.known.then_some(self.next)
    }

    /// The finished offsets above the commit point, including those restored from metadata
    /// and not yet re-polled.
    pub fn finished_above_commit_point(&self) -> FinishedSet {
        let end = match &self.restored {
            Some(set) => self.next.max(set.base() + set.len() as i64),
            None => self.next,
        };
        let len = end.saturating_sub(self.base).max(0) as u64;
        let ring_len = (self.next - self.base).max(0) as u64;
        let mut words = Vec::with_capacity(len.div_ceil(64) as usize);
        let mut index = 0;
        while index < ring_len {
            let mut word = self.read64(self.base + index as i64);
            let remaining = ring_len - index;
            if remaining < 64 {
                word &= (1u64 << remaining) - 1;
            }
            words.push(word);
            index += 64;
        }
        let mut set = FinishedSet::from_words(self.base, len, words);
        if let Some(restored) = &self.restored {
            for offset in restored.iter().filter(|&o| o >= self.next) {
                set.insert(offset);
            }
        }
        set
    }

    /// Commit metadata for the current commit point (see [`metadata`]); empty if nothing is
    /// finished above it or it would not fit the budget.
    pub fn encode_metadata(&self) -> String {
        if !self.known {
            return String::new();
        }
        metadata::encode(
            &self.finished_above_commit_point(),
            self.limits.metadata_budget_bytes,
        )
    }

    #[inline]
    fn slot(&self, offset: i64) -> (usize, u64) {
        slot_in(self.word_mask, offset)
    }

    /// 64 ring bits starting at `offset`, unaligned.
    fn read64(&self, offset: i64) -> u64 {
        let (word, _) = self.slot(offset);
        let shift = (offset as u64) & 63;
        let low = self.ring[word] >> shift;
        if shift == 0 {
            return low;
        }
        let high = self.ring[(word + 1) & self.word_mask as usize] << (64 - shift);
        low | high
    }

    /// The clear bits in `base .. next`: tracked, not finished.
    fn count_in_flight(&self) -> usize {
        let span = (self.next - self.base) as u64;
        let mut finished = 0u64;
        let mut index = 0;
        while index < span {
            let mut word = self.read64(self.base + index as i64);
            let remaining = span - index;
            if remaining < 64 {
                word &= (1u64 << remaining) - 1;
            }
            finished += u64::from(word.count_ones());
            index += 64;
        }
        (span - finished) as usize
    }

    /// Recomputes `track_limit` (and whether to keep a count) after a slow-path change.
    /// `in_flight` is the current count if the caller knows it.
    ///
    /// Room for the next track is proven, cheapest first: by the span alone (every offset in
    /// flight lies in `base .. next`); by the old limit, which stays valid (it came from a
    /// count, and since then each track used one offset of its room and acks only helped); by
    /// a fresh count of the ring, good for `room = in_flight_max - in_flight` tracks. When
    /// that count would cost more than a word of the ring per track it admits (the span is
    /// over 64 times the room), the tracker counts instead (`room_end`, `span_end`) until the
    /// span alone proves room again.
    fn refresh_track_limit(&mut self, in_flight: Option<usize>) {
        if !self.known || self.restored.is_some() {
            self.track_limit = i64::MIN;
            self.room_end = NOT_COUNTING;
            return;
        }
        if self.raise_limit_by_span() {
            return;
        }
        let in_flight_max = i64::try_from(self.limits.in_flight_max).unwrap_or(i64::MAX);
        let in_flight = in_flight.unwrap_or_else(|| self.in_flight());
        let room = (in_flight_max - in_flight as i64).max(0);
        let span = self.next - self.base;
        if room >= span / 64 {
            // Counting again after `room` tracks costs at most a word per track.
            self.room_end = NOT_COUNTING;
            let by_count = self.next.saturating_add(room).min(self.span_bound());
            self.track_limit = self.limit_by_span().max(by_count);
        } else {
            // Count from here: a fresh start, so that gaps tracked so far are not counted.
            self.room_end = self.next.wrapping_add(room);
            self.span_end = self.span_bound();
            self.track_limit = self.counting_limit();
        }
    }

    /// Moves the watermark over finished bits, zeroing what it leaves behind.
    #[inline(never)]
    fn advance(&mut self) {
        self.advance_watermark();
        // A higher watermark leaves more room below the span limit (not while restored
        // metadata is pending: its offsets must go through the slow path).
        if self.restored.is_none() && !self.raise_limit_by_span() && self.counting() {
            self.span_end = self.span_bound();
            self.track_limit = self.counting_limit();
        }
    }

    /// After `acked` records in flight were acked above the watermark, raises `track_limit`
    /// by as many: each made room for one more track (`debug_check` states the invariant
    /// that makes this sound), and only the span's bound, which acks above the watermark do
    /// not move, still caps it. Once per batch: single acks leave the limit alone unless the
    /// tracker is counting, because a field written by every ack slows every ack.
    fn raise_limit_by_acks(&mut self, acked: i64) {
        if self.counting() {
            self.room_end = self.room_end.wrapping_add(acked);
            self.track_limit = self.counting_limit();
        } else if self.track_limit != i64::MIN && self.track_limit >= self.next {
            let raised = self
                .track_limit
                .saturating_add(acked)
                .min(self.span_bound());
            self.track_limit = self.track_limit.max(raised);
        }
    }

    /// Raises `track_limit` to what the span alone proves ([`Self::limit_by_span`]); while
    /// counting, stops counting once that admits `next`. True if `next` is then admitted
    /// without a count.
    #[inline]
    fn raise_limit_by_span(&mut self) -> bool {
        let by_span = self.limit_by_span();
        if !self.counting() {
            self.track_limit = self.track_limit.max(by_span);
            self.track_limit > self.next
        } else if by_span > self.next {
            self.room_end = NOT_COUNTING;
            self.track_limit = by_span;
            true
        } else {
            false
        }
    }

    /// The offset below which the span alone proves room for `next`: every offset in flight
    /// lies in `base .. next`, so a span within both limits admits it.
    #[inline]
    fn limit_by_span(&self) -> i64 {
        let span_limit = self.limits.span_max.min(self.limits.in_flight_max as u64) as i64;
        self.base.saturating_add(span_limit)
    }

    /// The span's bound: offsets from here on would make the span exceed `span_max`.
    #[inline]
    fn span_bound(&self) -> i64 {
        self.base.saturating_add(self.limits.span_max as i64)
    }

    /// While counting, the offset below which `next` may be tracked without further checks:
    /// the count then stays within `in_flight_max` and the span within `span_max`.
    #[inline]
    fn counting_limit(&self) -> i64 {
        self.room_end.min(self.span_end)
    }

    /// True while the tracker keeps a count (see [`PartitionTracker::room_end`]).
    #[inline]
    fn counting(&self) -> bool {
        self.room_end != NOT_COUNTING
    }

    /// The scan of [`PartitionTracker::advance`].
    #[inline]
    fn advance_watermark(&mut self) {
        loop {
            let (word, _) = self.slot(self.base);
            let bit = (self.base as u64) & 63;
            let finished = (self.ring[word] >> bit).trailing_ones() as u64;
            if finished == 64 - bit {
                self.ring[word] = 0;
                self.base += finished as i64;
            } else {
                self.base += finished as i64;
                self.ring[word] &= !((1u64 << (bit + finished)) - 1);
                return;
            }
        }
    }

    /// Marks the gap `from .. to` finished.
    fn fill_finished(&mut self, from: i64, to: i64) {
        let mut offset = from;
        while offset < to {
            let (word, _) = self.slot(offset);
            let bit = (offset as u64) & 63;
            let width = (64 - bit).min((to - offset) as u64);
            let mask = if width == 64 {
                u64::MAX
            } else {
                ((1u64 << width) - 1) << bit
            };
            self.ring[word] |= mask;
            offset += width as i64;
        }
    }

    /// True if the restored metadata says `offset` is done.
    fn restored_done(&self, offset: i64) -> bool {
        self.restored
            .as_ref()
            .is_some_and(|set| set.contains(offset))
    }

    /// Drops the restored metadata once the poll position has passed all of it.
    fn forget_passed_restored(&mut self) {
        if let Some(set) = &self.restored {
            if self.next >= set.base() + set.len() as i64 {
                self.restored = None;
            }
        }
    }

    #[cold]
    fn full(&self, offset: i64, span: u64) -> TrackError {
        TrackError::Full {
            offset,
            in_flight: self.in_flight(),
            span,
            in_flight_max: self.limits.in_flight_max,
            span_max: self.limits.span_max,
        }
    }

    #[inline]
    fn debug_check(&self) {
        // The count below is O(span / 64): never in release builds.
        if !cfg!(debug_assertions) {
            return;
        }
        debug_assert!(self.base <= self.next);
        debug_assert!((self.next - self.base) as u64 <= self.limits.span_max);
        let in_flight = self.count_in_flight();
        debug_assert!(in_flight <= self.limits.in_flight_max);
        debug_assert!(self.track_limit == i64::MIN || (self.known && self.restored.is_none()));
        if self.counting() {
            debug_assert_eq!(self.in_flight(), in_flight, "the kept count drifted");
            debug_assert_eq!(self.track_limit, self.counting_limit());
            debug_assert_eq!(
                self.span_end,
                self.span_bound(),
                "span_end not moved with the watermark"
            );
            debug_assert!(self.known && self.restored.is_none());
        }
        if self.track_limit >= self.next {
            // Every offset below the limit may be tracked without a check: the count stays
            // within its limit (tracking up to `track_limit` adds `track_limit - next`) and
            // the span within its own. Acks keep this true (fewer in flight, `base` higher).
            let admitted = in_flight as i128 + (self.track_limit as i128 - self.next as i128);
            debug_assert!(
                admitted <= self.limits.in_flight_max as i128,
                "limit admits too many"
            );
            let span_end = self.base as i128 + self.limits.span_max as i128;
            debug_assert!(
                self.track_limit as i128 <= span_end,
                "limit passes the span"
            );
        }
        if self.next < self.track_limit {
            // The fast path may track `next` now: both limits must hold after it.
            debug_assert!(
                in_flight < self.limits.in_flight_max,
                "limit admits too many"
            );
            debug_assert!(((self.next - self.base) as u64) < self.limits.span_max);
        }
        if in_flight == 0 {
            debug_assert_eq!(self.base, self.next, "nothing in flight: watermark = next");
        } else {
            let (word, mask) = self.slot(self.base);
            // I1: the commit point is an unfinished offset, so it passes none.
            debug_assert_eq!(self.ring[word] & mask, 0, "I1: watermark on a finished bit");
        }
    }
}

#[cfg(test)]
mod tests;

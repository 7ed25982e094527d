//! Commit metadata: the finished offsets above the committed offset.
//!
//! The string is `"hf:"` followed by unpadded URL-safe base64 of:
//!
//! | bytes | field |
//! | --- | --- |
//! | 1 | version, [`VERSION`] |
//! | 1 | encoding: 0 = bitset, 1 = run-length |
//! | 8 | base offset, i64 little-endian: must equal the committed offset |
//! | varint | `len`: offsets covered, `base .. base + len` |
//! | rest | bitset: `ceil(len / 8)` bytes, bit `i` (LSB first) = offset `base + i` finished; run-length: varint run lengths, alternating unfinished, finished, ..., starting with unfinished, summing to `len` |
//!
//! Varints are unsigned LEB128. The encoder writes both payloads and keeps the smaller. A
//! decoder refuses (never panics on) anything else; the caller then ignores the metadata.

use super::Limits;
use std::fmt::Write as _;

/// The format version written in the first byte.
pub const VERSION: u8 = 1;
/// The text prefix that marks holdfast metadata.
pub const PREFIX: &str = "hf:";

const ENCODING_BITSET: u8 = 0;
const ENCODING_RUN_LENGTH: u8 = 1;
const HEADER_BYTES: usize = 10;

/// A set of finished offsets `base .. base + len`, one bit per offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FinishedSet {
    base: i64,
    len: u64,
    words: Vec<u64>,
}

impl FinishedSet {
    /// An empty set covering `len` offsets from `base`.
    pub fn new(base: i64, len: u64) -> Self {
        FinishedSet {
            base,
            len,
            words: vec![0; len.div_ceil(64) as usize],
        }
    }

    /// The first offset covered.
    pub fn base(&self) -> i64 {
        self.base
    }

    /// How many offsets are covered.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if no offset is covered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Marks `offset` finished. Offsets outside the covered range are ignored.
    pub fn insert(&mut self, offset: i64) {
        if let Some(index) = self.index(offset) {
            self.words[(index >> 6) as usize] |= 1 << (index & 63);
        }
    }

    /// True if `offset` is covered and finished.
    pub fn contains(&self, offset: i64) -> bool {
        self.index(offset)
            .is_some_and(|index| self.words[(index >> 6) as usize] & (1 << (index & 63)) != 0)
    }

    /// How many offsets are finished.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The finished offsets, ascending.
    pub fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        (0..self.len)
            .filter(|&i| self.words[(i >> 6) as usize] & (1 << (i & 63)) != 0)
            .map(|i| self.base + i as i64)
    }

    /// Builds a set from whole words (bit `i` = offset `base + i`); bits at or above `len`
    /// are cleared.
    pub(crate) fn from_words(base: i64, len: u64, mut words: Vec<u64>) -> Self {
        words.resize(len.div_ceil(64) as usize, 0);
        let mut set = FinishedSet { base, len, words };
        set.clear_above_len();
        set
    }

    fn index(&self, offset: i64) -> Option<u64> {
        let index = offset.checked_sub(self.base)?;
        (index >= 0 && (index as u64) < self.len).then_some(index as u64)
    }

    fn clear_above_len(&mut self) {
        let tail = self.len & 63;
        if tail != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << tail) - 1;
            }
        }
    }

    /// Sets bits `from .. to` (indexes, not offsets).
    fn set_range(&mut self, from: u64, to: u64) {
        let mut index = from;
        while index < to {
            let bit = index & 63;
            let width = (64 - bit).min(to - index);
            let mask = if width == 64 {
                u64::MAX
            } else {
                ((1u64 << width) - 1) << bit
            };
            self.words[(index >> 6) as usize] |= mask;
            index += width;
        }
    }

    /// Drops trailing unfinished offsets: they carry no information.
    fn trim(&mut self) {
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
        self.len = match self.words.last() {
            None => 0,
            Some(last) => (self.words.len() as u64 - 1) * 64 + 64 - u64::from(last.leading_zeros()),
        };
    }

    /// Run lengths, alternating unfinished and finished, starting with unfinished.
    fn runs(&self) -> Vec<u64> {
        let mut runs = Vec::new();
        let mut index = 0;
        let mut finished = false;
        while index < self.len {
            let start = index;
            loop {
                let bit = index & 63;
                let word = self.words[(index >> 6) as usize] >> bit;
                // Bits equal to `finished` become zeros; the shifted-in top is capped below.
                let word = if finished { !word } else { word };
                let same = u64::from(word.trailing_zeros()).min(64 - bit);
                index += same;
                if index >= self.len {
                    index = self.len;
                    break;
                }
                if same < 64 - bit {
                    break;
                }
            }
            runs.push(index - start);
            finished = !finished;
        }
        runs
    }
}

/// Why metadata was not used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("not holdfast metadata (no {PREFIX:?} prefix)")]
    Foreign,
    #[error("invalid base64")]
    Base64,
    #[error("truncated")]
    Truncated,
    #[error("unsupported version {0}")]
    Version(u8),
    #[error("unknown encoding {0}")]
    Encoding(u8),
    #[error("written for base offset {found}, but the committed offset is {expected}")]
    BaseMismatch { found: i64, expected: i64 },
    #[error("run lengths do not add up to the covered length")]
    Runs,
    #[error("trailing bytes")]
    Trailing,
}

/// Encodes `set` (trailing unfinished offsets dropped). Returns the empty string if nothing
/// is finished or the result would exceed `budget_bytes`: the restart then redoes the
/// records above the committed offset (at-least-once), which is safe.
pub fn encode(set: &FinishedSet, budget_bytes: usize) -> String {
    let mut set = set.clone();
    set.trim();
    if set.len == 0 {
        return String::new();
    }
    let mut header = Vec::with_capacity(HEADER_BYTES + 10);
    header.push(VERSION);
    header.push(ENCODING_BITSET);
    header.extend_from_slice(&set.base.to_le_bytes());
    put_varint(&mut header, set.len);

    let bitset_bytes = set.len.div_ceil(8) as usize;
    let runs = set.runs();
    let run_bytes: usize = runs.iter().map(|&r| varint_len(r)).sum();
    let mut raw = header;
    if run_bytes < bitset_bytes {
        raw[1] = ENCODING_RUN_LENGTH;
        for run in runs {
            put_varint(&mut raw, run);
        }
    } else {
        raw.extend(
            set.words
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .take(bitset_bytes),
        );
    }
    if PREFIX.len() + (raw.len() * 4).div_ceil(3) > budget_bytes {
        crate::reach!("metadata.over_budget");
        return String::new();
    }
    let mut text = String::with_capacity(PREFIX.len() + (raw.len() * 4).div_ceil(3));
    text.push_str(PREFIX);
    base64_encode(&raw, &mut text);
    debug_assert!(text.len() <= budget_bytes);
    text
}

/// Decodes metadata written for committed offset `expected_base`, keeping at most
/// `max_len` offsets, and never more than [`Limits::SPAN_MAX`] (more would exceed the
/// tracker's span; dropping them is safe: those records are redone).
pub fn decode(text: &str, expected_base: i64, max_len: u64) -> Result<FinishedSet, MetadataError> {
    let body = text.strip_prefix(PREFIX).ok_or(MetadataError::Foreign)?;
    let raw = base64_decode(body).ok_or(MetadataError::Base64)?;
    if raw.len() < HEADER_BYTES {
        return Err(MetadataError::Truncated);
    }
    if raw[0] != VERSION {
        return Err(MetadataError::Version(raw[0]));
    }
    let mut base_bytes = [0u8; 8];
    base_bytes.copy_from_slice(&raw[2..HEADER_BYTES]);
    let base = i64::from_le_bytes(base_bytes);
    if base != expected_base {
        return Err(MetadataError::BaseMismatch {
            found: base,
            expected: expected_base,
        });
    }
    let mut rest = &raw[HEADER_BYTES..];
    let len = take_varint(&mut rest).ok_or(MetadataError::Truncated)?;
    if raw[1] == ENCODING_BITSET {
        // Check the length before allocating anything for it.
        let bytes = usize::try_from(len.div_ceil(8)).map_err(|_| MetadataError::Truncated)?;
        if rest.len() < bytes {
            return Err(MetadataError::Truncated);
        }
        if rest.len() > bytes {
            return Err(MetadataError::Trailing);
        }
    }
    // Run-length can describe any length in a few bytes: allocate only what is kept.
    let mut set = FinishedSet::new(base, len.min(max_len).min(Limits::SPAN_MAX));
    match raw[1] {
        ENCODING_BITSET => {
            for (i, chunk) in rest.chunks(8).take(set.words.len()).enumerate() {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                set.words[i] = u64::from_le_bytes(word);
            }
            set.clear_above_len();
        }
        ENCODING_RUN_LENGTH => {
            let mut index: u64 = 0;
            let mut finished = false;
            while !rest.is_empty() {
                let run = take_varint(&mut rest).ok_or(MetadataError::Truncated)?;
                let end = index.checked_add(run).ok_or(MetadataError::Runs)?;
                if end > len {
                    return Err(MetadataError::Runs);
                }
                if finished {
                    set.set_range(index.min(set.len), end.min(set.len));
                }
                index = end;
                finished = !finished;
            }
            if index != len {
                return Err(MetadataError::Runs);
            }
        }
        other => return Err(MetadataError::Encoding(other)),
    }
    Ok(set)
}

fn varint_len(value: u64) -> usize {
    (64 - value.leading_zeros() as usize).div_ceil(7).max(1)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64_encode(raw: &[u8], out: &mut String) {
    for chunk in raw.chunks(3) {
        let bytes = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let group = u32::from(bytes[0]) << 16 | u32::from(bytes[1]) << 8 | u32::from(bytes[2]);
        for i in 0..=chunk.len() {
            let sextet = (group >> (18 - 6 * i)) & 63;
            let _ = out.write_char(char::from(ALPHABET[sextet as usize]));
        }
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let sextet = |c: u8| ALPHABET.iter().position(|&a| a == c).map(|p| p as u32);
    let text = text.as_bytes();
    if text.len() % 4 == 1 {
        return None;
    }
    let mut raw = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut group = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            group |= sextet(c)? << (18 - 6 * i);
        }
        let bytes = group.to_be_bytes();
        raw.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_of(base: i64, len: u64, finished: &[i64]) -> FinishedSet {
        let mut set = FinishedSet::new(base, len);
        for &o in finished {
            set.insert(o);
        }
        set
    }

    #[test]
    fn base64_round_trips_every_length() {
        for n in 0..20u8 {
            let raw: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            let mut text = String::new();
            base64_encode(&raw, &mut text);
            assert_eq!(base64_decode(&text), Some(raw));
        }
    }

    #[test]
    fn varint_round_trips_and_refuses_overflow() {
        for value in [0, 1, 127, 128, 300, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value));
            assert_eq!(take_varint(&mut out.as_slice()), Some(value));
        }
        let too_big = [0xff; 11];
        assert_eq!(take_varint(&mut too_big.as_slice()), None);
    }

    #[test]
    fn dense_set_uses_bitset_and_round_trips() {
        // Alternating bits: runs would cost a byte per offset, the bitset one bit.
        let finished: Vec<i64> = (101..300).step_by(2).collect();
        let set = set_of(100, 200, &finished);
        let text = encode(&set, 4096);
        let decoded = decode(&text, 100, 1 << 20).unwrap();
        assert_eq!(decoded.iter().collect::<Vec<_>>(), finished);
        let raw = base64_decode(&text[PREFIX.len()..]).unwrap();
        assert_eq!(raw[1], ENCODING_BITSET);
    }

    #[test]
    fn sparse_set_uses_run_length_and_round_trips() {
        // One stuck record, 50_000 finished above it: two runs.
        let mut set = FinishedSet::new(7, 50_001);
        set.set_range(1, 50_001);
        let text = encode(&set, 4096);
        assert!(text.len() < 30, "{text}");
        let decoded = decode(&text, 7, 1 << 20).unwrap();
        assert_eq!(decoded.count(), 50_000);
        assert!(!decoded.contains(7));
        assert!(decoded.contains(8) && decoded.contains(50_007));
    }

    #[test]
    fn nothing_finished_encodes_to_empty() {
        assert_eq!(encode(&FinishedSet::new(5, 100), 4096), "");
    }

    /// Goal: bits beyond the covered range never count: a set built from whole words equals
    /// the same offsets inserted one by one, and so counts the same. Method: a word of all
    /// ones over a range of three.
    #[test]
    fn bits_beyond_the_range_are_cleared() {
        let mut inserted = FinishedSet::new(7, 3);
        for offset in 7..10 {
            inserted.insert(offset);
        }
        let built = FinishedSet::from_words(7, 3, vec![u64::MAX]);
        assert_eq!(built, inserted);
        assert_eq!(built.count(), 3);
    }

    /// Goal: a run that crosses words is one run, not one per word, whether it starts on a
    /// word boundary or inside a word. Method: 130 finished offsets from a boundary, and 120
    /// from offset 10.
    #[test]
    fn a_run_across_words_is_one_run() {
        for (first, runs) in [(0, vec![0, 130]), (10, vec![10, 120])] {
            let mut set = FinishedSet::new(0, 130);
            for offset in first..130 {
                set.insert(offset);
            }
            assert_eq!(set.runs(), runs);
        }
    }

    /// Goal: an encoding exactly as long as the budget fits it. Method: encode once without
    /// a budget, then with its own length as the budget.
    #[test]
    fn an_encoding_exactly_the_budget_fits() {
        let mut set = FinishedSet::new(100, 40);
        for offset in [101, 105, 117, 139] {
            set.insert(offset);
        }
        let text = encode(&set, 10_000);
        assert!(!text.is_empty());
        assert_eq!(encode(&set, text.len()), text);
        assert_eq!(encode(&set, text.len() - 1), "");
    }

    /// Goal: a bitset one byte short is truncated and one byte long has trailing bytes; the
    /// exact one decodes. Method: a bitset encoding re-encoded with a byte removed or added.
    #[test]
    fn a_bitset_of_the_wrong_length_is_refused() {
        let mut set = FinishedSet::new(0, 24);
        for offset in [0, 2, 5, 9, 12, 17, 23] {
            set.insert(offset);
        }
        let text = encode(&set, 10_000);
        let raw = base64_decode(text.strip_prefix(PREFIX).unwrap()).unwrap();
        assert_eq!(raw[1], ENCODING_BITSET);
        let reencode = |raw: &[u8]| {
            let mut text = PREFIX.to_owned();
            base64_encode(raw, &mut text);
            text
        };
        assert_eq!(decode(&reencode(&raw), 0, 100), Ok(set));
        let short = &raw[..raw.len() - 1];
        assert_eq!(
            decode(&reencode(short), 0, 100),
            Err(MetadataError::Truncated)
        );
        let mut long = raw.clone();
        long.push(0);
        assert_eq!(
            decode(&reencode(&long), 0, 100),
            Err(MetadataError::Trailing)
        );
    }

    /// Goal: a varint reads back up to u64::MAX, and a tenth byte that would overflow 64 bits
    /// is refused. Method: u64::MAX written and read; its tenth byte raised to 2.
    #[test]
    fn a_varint_past_64_bits_is_refused() {
        let mut bytes = Vec::new();
        put_varint(&mut bytes, u64::MAX);
        assert_eq!(bytes.len(), 10);
        assert_eq!(take_varint(&mut bytes.as_slice()), Some(u64::MAX));
        bytes[9] = 2;
        assert_eq!(take_varint(&mut bytes.as_slice()), None);
    }

    /// Goal: `is_empty` means "covers no offset", whatever is finished. Method: an empty
    /// range and a covered one with nothing finished.
    #[test]
    fn a_set_is_empty_only_when_it_covers_no_offset() {
        assert!(FinishedSet::new(5, 0).is_empty());
        assert!(!FinishedSet::new(5, 3).is_empty());
    }

    #[test]
    fn over_budget_encodes_to_empty() {
        let finished: Vec<i64> = (1..100_000).step_by(2).collect();
        let set = set_of(0, 100_000, &finished);
        assert_eq!(encode(&set, 4096), "");
        assert!(!encode(&set, 100_000).is_empty());
    }

    #[test]
    fn decode_allocates_only_what_it_keeps() {
        // A hostile run-length header claiming 2^62 offsets in a handful of bytes.
        let mut raw = vec![VERSION, ENCODING_RUN_LENGTH];
        raw.extend_from_slice(&0i64.to_le_bytes());
        put_varint(&mut raw, 1 << 62);
        put_varint(&mut raw, 1);
        put_varint(&mut raw, (1 << 62) - 1);
        let mut text = String::from(PREFIX);
        base64_encode(&raw, &mut text);
        let decoded = decode(&text, 0, u64::MAX).unwrap();
        assert_eq!(decoded.len(), Limits::SPAN_MAX);
        assert!(!decoded.contains(0) && decoded.contains(1));
    }

    #[test]
    fn decode_truncates_to_max_len() {
        let set = set_of(0, 100, &[1, 2, 50, 99]);
        let decoded = decode(&encode(&set, 4096), 0, 51).unwrap();
        assert_eq!(decoded.iter().collect::<Vec<_>>(), vec![1, 2, 50]);
    }

    #[test]
    fn decode_refuses_foreign_and_damaged_metadata() {
        let good = encode(&set_of(0, 10, &[3]), 4096);
        assert_eq!(decode("", 0, 100), Err(MetadataError::Foreign));
        assert_eq!(
            decode("some other consumer", 0, 100),
            Err(MetadataError::Foreign)
        );
        assert_eq!(decode("hf:!!!!", 0, 100), Err(MetadataError::Base64));
        // Four characters and one more: no whole byte can end in a lone sextet.
        assert_eq!(decode("hf:AAAAA", 0, 100), Err(MetadataError::Base64));
        assert_eq!(decode("hf:AQ", 0, 100), Err(MetadataError::Truncated));
        assert!(matches!(
            decode(&good, 1, 100),
            Err(MetadataError::BaseMismatch { .. })
        ));
        let mut raw = base64_decode(&good[3..]).unwrap();
        raw[0] = 9;
        let mut text = String::from(PREFIX);
        base64_encode(&raw, &mut text);
        assert_eq!(decode(&text, 0, 100), Err(MetadataError::Version(9)));
        raw[0] = VERSION;
        raw[1] = 7;
        let mut text = String::from(PREFIX);
        base64_encode(&raw, &mut text);
        assert_eq!(decode(&text, 0, 100), Err(MetadataError::Encoding(7)));
    }

    #[test]
    fn decode_never_panics_on_prefixed_garbage() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut raw = vec![VERSION, (seed & 1) as u8];
            for _ in 0..(seed % 24) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                raw.push(seed as u8);
            }
            let mut text = String::from(PREFIX);
            base64_encode(&raw, &mut text);
            let _ = decode(
                &text,
                i64::from_le_bytes(raw.get(2..10).map_or([0; 8], |b| b.try_into().unwrap())),
                1 << 16,
            );
        }
    }
}

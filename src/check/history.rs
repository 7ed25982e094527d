//! The history of one run: every poll, commit, rebalance, crash and fault, in time order (the
//! simulator's virtual time, or a real run's wall clock). The checker reads it; a simulated
//! run's hash is its fingerprint (the same seed must always give the same hash).

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

/// One thing that happened, at a time in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// A producer's send finished; `acknowledged` is what the producer was told, `delivered`
    /// where the broker said it put the record.
    Sent {
        event_id: String,
        acknowledged: bool,
        delivered: Option<(i32, i64)>,
    },
    /// A member's poll returned this record.
    Polled {
        member: String,
        partition: i32,
        offset: i64,
        /// FNV-1a of the payload: a changed record at a read offset is an inconsistency.
        digest: u64,
    },
    /// A member's store transaction committed this event (`applied`) or found its key already
    /// there (`duplicate`).
    Stored {
        member: String,
        event_id: String,
        applied: bool,
    },
    /// A member was assigned a partition in a group generation, or lost it.
    Assigned {
        member: String,
        partition: i32,
        generation: i32,
    },
    Revoked {
        member: String,
        partition: i32,
    },
    /// A commit a member sent (an asynchronous one may still be refused).
    CommitSent {
        member: String,
        partition: i32,
        offset: i64,
    },
    /// A change of the committed offset as the group coordinator stores it.
    Committed {
        member: String,
        partition: i32,
        offset: i64,
    },
    /// A fault the injector applied (crash, restart, clog, flush of the cache, ...).
    Fault {
        description: String,
    },
    /// A record went to the dead-letter topic.
    DeadLettered {
        partition: i32,
        offset: i64,
    },
}

/// A shared, append-only history. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct History {
    steps: Arc<Mutex<Vec<(u64, Step)>>>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    /// The steps, even after a thread panicked while holding them: a push is one `Vec` push,
    /// so they are whole, and dropping later steps would hide evidence from the checker.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Step)>> {
        self.steps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends a step at virtual time `at_ms`.
    pub fn push(&self, at_ms: u64, step: Step) {
        self.lock().push((at_ms, step));
    }

    /// Appends steps at virtual time `at_ms`, in order, under one lock.
    pub fn extend(&self, at_ms: u64, steps: impl IntoIterator<Item = Step>) {
        self.lock()
            .extend(steps.into_iter().map(|step| (at_ms, step)));
    }

    /// A copy of every step so far.
    pub fn steps(&self) -> Vec<(u64, Step)> {
        self.lock().clone()
    }

    /// Every step so far, leaving the history empty (a finished run hands its history to the
    /// checker without copying it).
    pub fn take(&self) -> Vec<(u64, Step)> {
        std::mem::take(&mut *self.lock())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// See [`fingerprint`].
    pub fn fingerprint(&self) -> u64 {
        fingerprint(&self.lock())
    }

    /// The trace, one line per step, at most `limit` lines (the last ones).
    pub fn render(&self, limit: usize) -> String {
        render(&self.lock(), limit)
    }
}

/// Renders steps as trace lines, at most `limit` (the last ones).
pub fn render(steps: &[(u64, Step)], limit: usize) -> String {
    let skip = steps.len().saturating_sub(limit);
    let mut out = String::with_capacity(48 * (steps.len() - skip));
    for (at_ms, step) in &steps[skip..] {
        let _ = write!(out, "{at_ms:>9}ms ");
        write_step(&mut out, step);
        out.push('\n');
    }
    out
}

/// A 64-bit digest of some bytes, eight at a time (a recorded run digests every payload it
/// polls, so this is on the hot path; FNV-1a's byte at a time cost several times more): each
/// word is mixed in by a folded multiply (the 128-bit product's halves xor-ed), which carries
/// every bit both up and down, the length first and a final round last.
pub fn digest(bytes: &[u8]) -> u64 {
    const WORD: u64 = 0x9e37_79b9_7f4a_7c15;
    const FINAL: u64 = 0xbf58_476d_1ce4_e5b9;
    let fold = |x: u64, y: u64| {
        let product = u128::from(x) * u128::from(y);
        (product as u64) ^ ((product >> 64) as u64)
    };
    let mut chunks = bytes.chunks_exact(8);
    let mut hash = fold(0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64, WORD);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        hash = fold(hash ^ u64::from_le_bytes(word), WORD);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    fold(hash ^ u64::from_le_bytes(tail), FINAL)
}

/// FNV-1a over every step and its time: equal for equal histories (within one build), and
/// cheaper than hashing the rendered trace, which a sweep never prints.
pub fn fingerprint(steps: &[(u64, Step)]) -> u64 {
    let mut hasher = Fnv::default();
    steps.hash(&mut hasher);
    hasher.finish()
}

/// The FNV-1a hash as a [`Hasher`]: deterministic, unlike the standard library's seeded one.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One step as a trace line.
pub fn describe(step: &Step) -> String {
    let mut out = String::new();
    write_step(&mut out, step);
    out
}

/// Writes one step's trace line (without the time) to `out`.
fn write_step(out: &mut String, step: &Step) {
    let _ = match step {
        Step::Sent {
            event_id,
            acknowledged: false,
            ..
        } => write!(out, "send {event_id} unacked"),
        Step::Sent {
            event_id,
            delivered: Some((partition, offset)),
            ..
        } => write!(out, "send {event_id} acked p{partition}@{offset}"),
        Step::Sent { event_id, .. } => write!(out, "send {event_id} acked"),
        Step::Polled {
            member,
            partition,
            offset,
            digest,
        } => write!(
            out,
            "{member} poll p{partition}@{offset} #{:04x}",
            digest & 0xffff
        ),
        Step::Stored {
            member,
            event_id,
            applied,
        } => write!(
            out,
            "{member} {} {event_id}",
            if *applied { "applied" } else { "duplicate" }
        ),
        Step::Assigned {
            member,
            partition,
            generation,
        } => write!(
            out,
            "{member} assigned p{partition} in generation {generation}"
        ),
        Step::Revoked { member, partition } => write!(out, "{member} revoked p{partition}"),
        Step::CommitSent {
            member,
            partition,
            offset,
        } => write!(out, "{member} commit p{partition}={offset}"),
        Step::Committed {
            member,
            partition,
            offset,
        } => write!(out, "{member} stored p{partition}={offset}"),
        Step::Fault { description } => write!(out, "FAULT {description}"),
        Step::DeadLettered { partition, offset } => {
            write!(out, "dead-letter p{partition}@{offset}")
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(description: &str) -> Step {
        Step::Fault {
            description: description.to_owned(),
        }
    }

    /// Goal: what is pushed and extended is read back in order with its times, by every
    /// accessor, and `take` empties the history; a thread that panics holding the lock does
    /// not make later steps vanish. Method: a history filled by hand, then poisoned.
    #[test]
    fn steps_read_back_in_order_and_survive_a_poisoned_lock() {
        let history = History::new();
        assert!(history.is_empty());
        history.push(1, fault("a"));
        history.extend(2, [fault("b"), fault("c")]);
        let expected = vec![(1, fault("a")), (2, fault("b")), (2, fault("c"))];
        assert_eq!(history.len(), 3);
        assert!(!history.is_empty());
        assert_eq!(history.steps(), expected);
        let shared = history.clone();
        let _ = std::thread::spawn(move || {
            let _guard = shared.steps.lock();
            panic!("poisons the lock");
        })
        .join();
        history.push(3, fault("d"));
        assert_eq!(history.len(), 4);
        assert_eq!(history.take()[3], (3, fault("d")));
        assert!(history.is_empty());
    }

    /// Goal: the digest tells apart payloads that differ in one bit, in their length only, or
    /// in their order of words, so that a changed record at a read offset is noticed.
    #[test]
    fn digest_tells_payloads_apart() {
        let payload: Vec<u8> = (0..150u8).collect();
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert(digest(&payload)));
        for bit in 0..payload.len() * 8 {
            let mut flipped = payload.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(seen.insert(digest(&flipped)), "bit {bit}");
        }
        for length in 0..payload.len() {
            assert!(seen.insert(digest(&payload[..length])), "length {length}");
        }
        assert!(seen.insert(digest(&[0u8; 9])));
        let swapped: Vec<u8> = payload[8..16]
            .iter()
            .chain(&payload[..8])
            .copied()
            .collect();
        assert_ne!(digest(&swapped), digest(&payload[..16]));
        assert_eq!(digest(b"same"), digest(b"same"));
    }

    /// Goal: the digest is the documented function, the same in every build and process (a
    /// history file is written by one process and judged by another). Method: values computed
    /// by an independent implementation of the doc comment's algorithm (the empty payload, a
    /// tail only, one whole word, words and a tail).
    #[test]
    fn digest_matches_its_definition() {
        assert_eq!(digest(b""), 0xec97_06eb_b818_2c89);
        assert_eq!(digest(b"a"), 0x272d_7dea_8335_49d0);
        assert_eq!(digest(b"holdfast"), 0xd18d_5dfe_2b83_8ce0);
        assert_eq!(digest(b"holdfast order events"), 0xe708_7c93_1cfe_1569);
    }

    /// Goal: the fingerprint's hasher is FNV-1a. Method: the published 64-bit FNV-1a test
    /// vectors.
    #[test]
    fn fnv_matches_the_published_vectors() {
        for (bytes, expected) in [
            (&b""[..], 0xcbf2_9ce4_8422_2325),
            (b"a", 0xaf63_dc4c_8601_ec8c),
            (b"foobar", 0x8594_4171_f739_67e8),
        ] {
            let mut hasher = Fnv::default();
            hasher.write(bytes);
            assert_eq!(hasher.finish(), expected, "{bytes:?}");
        }
    }

    /// Goal: each step's trace line says what happened (the simulator's timeline labels its
    /// steps with it). Method: a step of each shape, described.
    #[test]
    fn steps_are_described_as_trace_lines() {
        let cases = [
            (
                Step::Sent {
                    event_id: "e1".into(),
                    acknowledged: true,
                    delivered: Some((2, 9)),
                },
                "send e1 acked p2@9",
            ),
            (
                Step::Sent {
                    event_id: "e2".into(),
                    acknowledged: false,
                    delivered: None,
                },
                "send e2 unacked",
            ),
            (
                Step::Stored {
                    member: "c1".into(),
                    event_id: "e1".into(),
                    applied: false,
                },
                "c1 duplicate e1",
            ),
            (
                Step::Revoked {
                    member: "c2".into(),
                    partition: 3,
                },
                "c2 revoked p3",
            ),
            (fault("kill broker-0"), "FAULT kill broker-0"),
        ];
        for (step, line) in cases {
            assert_eq!(describe(&step), line);
        }
    }

    #[test]
    fn fingerprint_tells_histories_apart() {
        let a = History::new();
        let b = History::new();
        for history in [&a, &b] {
            history.push(
                1,
                Step::Fault {
                    description: "kill broker-0".into(),
                },
            );
            history.push(
                2,
                Step::Polled {
                    member: "c1".into(),
                    partition: 0,
                    offset: 7,
                    digest: 1,
                },
            );
        }
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.push(
            3,
            Step::Committed {
                member: "c1".into(),
                partition: 0,
                offset: 8,
            },
        );
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(b.render(1).lines().count(), 1);
        assert!(b.render(10).contains("c1 stored p0=8"));
    }
}

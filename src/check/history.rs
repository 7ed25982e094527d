//! The history of one run: every poll, commit, rebalance, crash and fault, in time order (the
//! simulator's virtual time, or a real run's wall clock). The checker reads it; a simulated
//! run's hash is its fingerprint (the same seed must always give the same hash).

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

/// One thing that happened, at a time in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// A producer's send finished; `acknowledged` is what the producer was told.
    Sent {
        event_id: String,
        acknowledged: bool,
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
    /// A member was assigned or lost a partition.
    Assigned {
        member: String,
        partition: i32,
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

    /// Appends a step at virtual time `at_ms`.
    pub fn push(&self, at_ms: u64, step: Step) {
        if let Ok(mut steps) = self.steps.lock() {
            steps.push((at_ms, step));
        }
    }

    /// A copy of every step so far.
    pub fn steps(&self) -> Vec<(u64, Step)> {
        self.steps
            .lock()
            .map(|steps| steps.clone())
            .unwrap_or_default()
    }

    /// Every step so far, leaving the history empty (a finished run hands its history to the
    /// checker without copying it).
    pub fn take(&self) -> Vec<(u64, Step)> {
        self.steps
            .lock()
            .map(|mut steps| std::mem::take(&mut *steps))
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.steps.lock().map(|steps| steps.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// See [`fingerprint`].
    pub fn fingerprint(&self) -> u64 {
        self.steps
            .lock()
            .map(|steps| fingerprint(&steps))
            .unwrap_or_default()
    }

    /// The trace, one line per step, at most `limit` lines (the last ones).
    pub fn render(&self, limit: usize) -> String {
        self.steps
            .lock()
            .map(|steps| render(&steps, limit))
            .unwrap_or_default()
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

/// FNV-1a of some bytes.
pub fn digest(bytes: &[u8]) -> u64 {
    let mut hasher = Fnv::default();
    hasher.write(bytes);
    hasher.finish()
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
            acknowledged,
        } => write!(
            out,
            "send {event_id} {}",
            if *acknowledged { "acked" } else { "unacked" }
        ),
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
        Step::Assigned { member, partition } => write!(out, "{member} assigned p{partition}"),
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

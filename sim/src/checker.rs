//! The checker: reads a run's history and final state and names every violated invariant, in
//! the vocabulary of Jepsen's Kafka workload where it applies.

use crate::history::{digest, Step};
use holdfast::event::OrderEvent;
use holdfast::idempotency::IdempotencyKey;
use holdfast::ports::Record;
use holdfast::verify::{verify, GroundTruth, StoreView, VerifyReport};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// The invariants the simulator checks on every run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Invariant {
    /// An event a producer saw acknowledged was never applied nor dead-lettered.
    LostWrite,
    /// An event was applied more than once.
    Duplicate,
    /// An event was applied that no producer ever sent.
    Unexpected,
    /// A wide row differs from the merge of the events applied to it.
    RowMismatch,
    /// acknowledged != applied + dead-lettered + pending.
    Conservation,
    /// One offset held two different records over the run.
    InconsistentOffsets,
    /// Within one assignment, a member polled an offset at or below one it had polled.
    NonmonotonicPoll,
    /// Within one assignment, a member's polls skipped an offset present in the log.
    PollSkip,
    /// A partition's committed offset moved backwards.
    CommitBackwards,
    /// A commit passed a record whose effect was not yet in the store.
    CommitPastUnfinished,
    /// After healing, the system did not converge within the liveness bound.
    Liveness,
}

/// Every invariant.
pub const ALL_INVARIANTS: [Invariant; 11] = [
    Invariant::LostWrite,
    Invariant::Duplicate,
    Invariant::Unexpected,
    Invariant::RowMismatch,
    Invariant::Conservation,
    Invariant::InconsistentOffsets,
    Invariant::NonmonotonicPoll,
    Invariant::PollSkip,
    Invariant::CommitBackwards,
    Invariant::CommitPastUnfinished,
    Invariant::Liveness,
];

impl Invariant {
    /// Jepsen-style name.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::LostWrite => "lost-write",
            Invariant::Duplicate => "duplicate",
            Invariant::Unexpected => "unexpected",
            Invariant::RowMismatch => "row-mismatch",
            Invariant::Conservation => "conservation",
            Invariant::InconsistentOffsets => "inconsistent-offsets",
            Invariant::NonmonotonicPoll => "nonmonotonic-poll",
            Invariant::PollSkip => "poll-skip",
            Invariant::CommitBackwards => "commit-backwards",
            Invariant::CommitPastUnfinished => "commit-past-unfinished",
            Invariant::Liveness => "liveness",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        out.write_str(self.name())
    }
}

/// One violation with the records involved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
}

/// Everything the checker needs from a finished run.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub history: Vec<(u64, Step)>,
    pub truth: GroundTruth,
    pub store: StoreView,
    /// Keys of decodable events that were dead-lettered.
    pub dead_lettered: BTreeSet<IdempotencyKey>,
    /// The final contents of every partition.
    pub logs: BTreeMap<i32, Vec<(i64, Record)>>,
    /// Violations found online during the run (commit checks).
    pub online: Vec<Violation>,
    /// Whether the liveness phase converged.
    pub converged: bool,
}

/// The checker's verdict on one run.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub violations: Vec<Violation>,
    pub report: VerifyReport,
    /// Acknowledged events that no consumer ever polled (Jepsen's `unseen`), for information.
    pub unseen: usize,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The distinct invariants violated.
    pub fn invariants(&self) -> BTreeSet<Invariant> {
        self.violations.iter().map(|v| v.invariant).collect()
    }
}

/// Examples shown per invariant.
const EXAMPLES_MAX: usize = 5;

/// Checks one run.
pub fn check(observed: &Observed) -> Verdict {
    let mut violations = observed.online.clone();
    let report = verify(
        &observed.truth,
        &observed.store,
        &observed.dead_lettered,
        &BTreeSet::new(),
    );
    let mut add = |invariant, detail: String| violations.push(Violation { invariant, detail });
    let keys = |keys: &mut dyn Iterator<Item = String>| {
        keys.take(EXAMPLES_MAX).collect::<Vec<_>>().join(", ")
    };
    // Before convergence an unapplied event may merely be late: that is the liveness
    // violation below, not a lost write.
    if !report.missing.is_empty() && observed.converged {
        add(
            Invariant::LostWrite,
            format!(
                "{} acknowledged events never applied: {}",
                report.missing.len(),
                keys(&mut report.missing.iter().map(key_text))
            ),
        );
    }
    if !report.applied_twice.is_empty() {
        add(
            Invariant::Duplicate,
            format!(
                "{} events applied more than once: {}",
                report.applied_twice.len(),
                keys(
                    &mut report
                        .applied_twice
                        .iter()
                        .map(|(k, n)| format!("{} x{n}", key_text(k)))
                )
            ),
        );
    }
    if !report.unexpected.is_empty() {
        add(
            Invariant::Unexpected,
            format!(
                "{} applied events never sent: {}",
                report.unexpected.len(),
                keys(&mut report.unexpected.iter().map(key_text))
            ),
        );
    }
    if !report.row_mismatches.is_empty() {
        add(
            Invariant::RowMismatch,
            format!(
                "{} rows differ from the merge of their events: {}",
                report.row_mismatches.len(),
                keys(&mut report.row_mismatches.iter().cloned())
            ),
        );
    }
    if report.missing.is_empty() && !report.conservation_holds() {
        add(Invariant::Conservation, format!("{report:?}"));
    }
    let (poll_violations, polled) = check_polls(&observed.history, &observed.logs);
    violations.extend(poll_violations);
    violations.extend(check_commits(&observed.history));
    if !observed.converged {
        violations.push(Violation {
            invariant: Invariant::Liveness,
            detail: format!(
                "after healing every fault the consumers did not finish the log within the liveness bound ({} acknowledged events not applied)",
                report.missing.len()
            ),
        });
    }
    let unseen = observed
        .truth
        .acknowledged
        .iter()
        .filter(|key| !polled.contains(*key))
        .count();
    Verdict {
        violations: collapse(violations),
        report,
        unseen,
    }
}

/// One violation per invariant: the first few details and how many there were in all, so
/// that a broken commit discipline does not print a line per commit.
fn collapse(violations: Vec<Violation>) -> Vec<Violation> {
    let mut grouped: BTreeMap<Invariant, Vec<String>> = BTreeMap::new();
    for violation in violations {
        grouped
            .entry(violation.invariant)
            .or_default()
            .push(violation.detail);
    }
    grouped
        .into_iter()
        .map(|(invariant, details)| {
            let total = details.len();
            let mut detail = details
                .into_iter()
                .take(EXAMPLES_MAX)
                .collect::<Vec<_>>()
                .join("; ");
            if total > EXAMPLES_MAX {
                detail.push_str(&format!(" (and {} more)", total - EXAMPLES_MAX));
            }
            Violation { invariant, detail }
        })
        .collect()
}

/// Poll-order checks per member and assignment; returns the keys ever polled.
fn check_polls(
    history: &[(u64, Step)],
    logs: &BTreeMap<i32, Vec<(i64, Record)>>,
) -> (Vec<Violation>, BTreeSet<IdempotencyKey>) {
    let final_digest: HashMap<(i32, i64), u64> = logs
        .iter()
        .flat_map(|(partition, records)| {
            records
                .iter()
                .map(move |(offset, record)| ((*partition, *offset), digest(&record.payload)))
        })
        .collect();
    let offsets: BTreeMap<i32, BTreeSet<i64>> = logs
        .iter()
        .map(|(partition, records)| (*partition, records.iter().map(|(o, _)| *o).collect()))
        .collect();
    let keys: HashMap<(i32, i64), IdempotencyKey> = logs
        .iter()
        .flat_map(|(partition, records)| {
            records.iter().filter_map(move |(offset, record)| {
                OrderEvent::decode(&record.payload)
                    .ok()
                    .map(|event| ((*partition, *offset), IdempotencyKey::of(&event)))
            })
        })
        .collect();
    let mut violations = Vec::new();
    let mut inconsistent: BTreeSet<(i32, i64)> = BTreeSet::new();
    let mut last: HashMap<(&str, i32), i64> = HashMap::new();
    let mut polled = BTreeSet::new();
    for (at_ms, step) in history {
        match step {
            Step::Assigned { member, partition } | Step::Revoked { member, partition } => {
                last.remove(&(member.as_str(), *partition));
            }
            Step::Polled {
                member,
                partition,
                offset,
                digest,
            } => {
                if let Some(key) = keys.get(&(*partition, *offset)) {
                    polled.insert(key.clone());
                }
                match final_digest.get(&(*partition, *offset)) {
                    Some(expected) if expected != digest => {
                        inconsistent.insert((*partition, *offset));
                    }
                    _ => {}
                }
                let slot = (member.as_str(), *partition);
                if let Some(previous) = last.get(&slot).copied() {
                    if *offset <= previous {
                        violations.push(Violation {
                            invariant: Invariant::NonmonotonicPoll,
                            detail: format!("{member} polled p{partition}@{offset} after @{previous} at {at_ms}ms"),
                        });
                    } else if let Some(skipped) = offsets
                        .get(partition)
                        .and_then(|set| set.range(previous + 1..*offset).next())
                    {
                        violations.push(Violation {
                            invariant: Invariant::PollSkip,
                            detail: format!("{member} polled p{partition}@{offset} right after @{previous}, skipping @{skipped} at {at_ms}ms"),
                        });
                    }
                }
                last.insert(slot, *offset);
            }
            _ => {}
        }
    }
    if !inconsistent.is_empty() {
        let examples: Vec<String> = inconsistent
            .iter()
            .take(EXAMPLES_MAX)
            .map(|(p, o)| format!("p{p}@{o}"))
            .collect();
        violations.push(Violation {
            invariant: Invariant::InconsistentOffsets,
            detail: format!(
                "{} offsets were read with a record that is no longer there: {}",
                inconsistent.len(),
                examples.join(", ")
            ),
        });
    }
    (violations, polled)
}

/// Committed offsets must never move backwards, across members and generations.
fn check_commits(history: &[(u64, Step)]) -> Vec<Violation> {
    let mut committed: HashMap<i32, (i64, String)> = HashMap::new();
    let mut violations = Vec::new();
    for (at_ms, step) in history {
        if let Step::Committed {
            member,
            partition,
            offset,
        } = step
        {
            if let Some((previous, by)) = committed.get(partition) {
                if offset < previous {
                    violations.push(Violation {
                        invariant: Invariant::CommitBackwards,
                        detail: format!("{member} committed p{partition}={offset} at {at_ms}ms after {by} committed {previous}"),
                    });
                }
            }
            committed.insert(*partition, (*offset, member.clone()));
        }
    }
    violations
}

fn key_text(key: &IdempotencyKey) -> String {
    String::from_utf8_lossy(&key.to_bytes()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast::widetable::OrderRow;
    use holdfast::workload::{Workload, WorkloadConfig};

    /// A run where every acknowledged event was polled once and applied once.
    fn clean_run() -> Observed {
        let workload = Workload::generate(&WorkloadConfig {
            orders: 20,
            malformed_ratio: 0.0,
            ..WorkloadConfig::default()
        })
        .unwrap();
        let events = workload.distinct_events();
        let mut observed = Observed {
            converged: true,
            ..Observed::default()
        };
        let mut log = Vec::new();
        for (offset, event) in events.iter().enumerate() {
            let offset = offset as i64;
            observed.truth.record(event, true);
            observed
                .store
                .applications
                .insert(IdempotencyKey::of(event), 1);
            let record = Record {
                partition: 0,
                offset,
                key: Some(event.order_id.clone().into_bytes()),
                payload: event.payload.clone(),
                headers: vec![],
            };
            observed.history.push((
                offset as u64,
                Step::Polled {
                    member: "c1".into(),
                    partition: 0,
                    offset,
                    digest: digest(&record.payload),
                },
            ));
            log.push((offset, record));
        }
        observed.history.push((
            999,
            Step::Committed {
                member: "c1".into(),
                partition: 0,
                offset: log.len() as i64,
            },
        ));
        observed.logs.insert(0, log);
        observed.store.rows = OrderRow::fold(&events)
            .into_iter()
            .map(|r| (r.order_id.clone(), r))
            .collect();
        observed
    }

    #[test]
    fn a_clean_run_passes() {
        let verdict = check(&clean_run());
        assert!(verdict.passed(), "{:?}", verdict.violations);
        assert_eq!(verdict.unseen, 0);
    }

    #[test]
    fn names_lost_writes_and_duplicates() {
        let mut observed = clean_run();
        let first = observed.store.applications.keys().next().cloned().unwrap();
        observed.store.applications.remove(&first);
        let second = observed.store.applications.keys().next().cloned().unwrap();
        observed.store.applications.insert(second, 2);
        let invariants = check(&observed).invariants();
        assert!(invariants.contains(&Invariant::LostWrite));
        assert!(invariants.contains(&Invariant::Duplicate));
    }

    #[test]
    fn names_poll_and_commit_anomalies() {
        let mut observed = clean_run();
        let member = || "c1".to_string();
        observed.history.push((
            1000,
            Step::Polled {
                member: member(),
                partition: 0,
                offset: 2,
                digest: 0,
            },
        ));
        observed.history.push((
            1001,
            Step::Committed {
                member: member(),
                partition: 0,
                offset: 1,
            },
        ));
        let invariants = check(&observed).invariants();
        assert!(invariants.contains(&Invariant::NonmonotonicPoll));
        assert!(invariants.contains(&Invariant::InconsistentOffsets));
        assert!(invariants.contains(&Invariant::CommitBackwards));

        let mut observed = clean_run();
        observed
            .history
            .retain(|(_, step)| !matches!(step, Step::Polled { offset: 3, .. }));
        assert!(check(&observed).invariants().contains(&Invariant::PollSkip));
    }

    #[test]
    fn a_rebalance_excuses_a_restart_from_an_older_offset() {
        let mut observed = clean_run();
        observed.history.push((
            1000,
            Step::Revoked {
                member: "c1".into(),
                partition: 0,
            },
        ));
        observed.history.push((
            1001,
            Step::Assigned {
                member: "c1".into(),
                partition: 0,
            },
        ));
        let payload = observed.logs[&0][0].1.payload.clone();
        observed.history.push((
            1002,
            Step::Polled {
                member: "c1".into(),
                partition: 0,
                offset: 0,
                digest: digest(&payload),
            },
        ));
        assert!(check(&observed).passed());
    }

    #[test]
    fn no_convergence_is_a_liveness_violation() {
        let mut observed = clean_run();
        observed.converged = false;
        assert_eq!(
            check(&observed).invariants(),
            BTreeSet::from([Invariant::Liveness])
        );
    }
}

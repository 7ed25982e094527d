//! The checker: reads a run's history and final state and names every violated invariant, in
//! the vocabulary of Jepsen's Kafka workload where it applies.
//!
//! It judges with `crate::verify`'s reference model, written apart from the code under
//! test: events are identified by their content, payloads are read by the model's own reading
//! of the wire format, and rows are compared with the conflict rule restated there.

use super::history::{digest, Step};
use crate::ports::Record;
use crate::verify::reference::{read_payload, reflected};
use crate::verify::{verify, Fact, GroundTruth, StoreView, VerifyReport};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// The invariants the simulator checks on every run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Invariant {
    /// An event a producer saw acknowledged is absent from the final log (judged after
    /// convergence).
    BrokerLoss,
    /// A record of the final log was neither applied nor dead-lettered (judged after
    /// convergence).
    ConsumerLoss,
    /// A business key was applied more than once.
    Duplicate,
    /// The store holds an event, or a row claim, that no producer ever sent.
    Unexpected,
    /// A wide row keeps a claim although a sent, acknowledged one precedes it.
    RowMismatch,
    /// A row holds an effect whose business key the store's unique key does not: nothing
    /// stops a redelivery from applying it again.
    UnkeyedRow,
    /// acknowledged != applied + dead-lettered + pending, each counted from its own source.
    Conservation,
    /// A valid event sent by the producer ended on the dead-letter topic.
    DeadLetteredValid,
    /// An event is both in the store's rows and on the dead-letter topic.
    AppliedAndDeadLettered,
    /// One offset held two different records over the run.
    InconsistentOffsets,
    /// A record is in the log more often than the producer published it: an idempotent
    /// producer's retries must not append it twice.
    DuplicatedAppend,
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
pub const ALL_INVARIANTS: [Invariant; 16] = [
    Invariant::BrokerLoss,
    Invariant::ConsumerLoss,
    Invariant::Duplicate,
    Invariant::Unexpected,
    Invariant::RowMismatch,
    Invariant::UnkeyedRow,
    Invariant::Conservation,
    Invariant::DeadLetteredValid,
    Invariant::AppliedAndDeadLettered,
    Invariant::InconsistentOffsets,
    Invariant::DuplicatedAppend,
    Invariant::NonmonotonicPoll,
    Invariant::PollSkip,
    Invariant::CommitBackwards,
    Invariant::CommitPastUnfinished,
    Invariant::Liveness,
];

impl From<Invariant> for String {
    fn from(invariant: Invariant) -> String {
        invariant.name().to_string()
    }
}

impl TryFrom<String> for Invariant {
    type Error = String;
    fn try_from(name: String) -> Result<Invariant, String> {
        Invariant::parse(&name).ok_or(format!("unknown invariant `{name}`"))
    }
}

impl Invariant {
    /// Jepsen-style name.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::BrokerLoss => "broker-loss",
            Invariant::ConsumerLoss => "consumer-loss",
            Invariant::Duplicate => "duplicate",
            Invariant::Unexpected => "unexpected",
            Invariant::RowMismatch => "row-mismatch",
            Invariant::UnkeyedRow => "unkeyed-row",
            Invariant::Conservation => "conservation",
            Invariant::DeadLetteredValid => "dead-lettered-valid",
            Invariant::AppliedAndDeadLettered => "applied-and-dead-lettered",
            Invariant::InconsistentOffsets => "inconsistent-offsets",
            Invariant::DuplicatedAppend => "duplicated-append",
            Invariant::NonmonotonicPoll => "nonmonotonic-poll",
            Invariant::PollSkip => "poll-skip",
            Invariant::CommitBackwards => "commit-backwards",
            Invariant::CommitPastUnfinished => "commit-past-unfinished",
            Invariant::Liveness => "liveness",
        }
    }

    /// Parses [`Invariant::name`].
    pub fn parse(name: &str) -> Option<Invariant> {
        ALL_INVARIANTS.into_iter().find(|i| i.name() == name)
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
    /// The payload of every dead letter.
    pub dead_letters: Vec<Vec<u8>>,
    /// The final contents of every partition.
    pub logs: BTreeMap<i32, Vec<(i64, Record)>>,
    /// Violations found online during the run (commit checks).
    pub online: Vec<Violation>,
    /// How the liveness phase ended.
    pub convergence: Convergence,
    /// How many times the workload producer called `publish` with each payload (by digest),
    /// its own retries included.
    pub publishes: BTreeMap<u64, u32>,
}

/// How the liveness phase ended: a run that stopped progressing is told from one that was
/// still progressing, only slowly, when its time ran out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Convergence {
    /// The consumers finished the log.
    #[default]
    Converged,
    /// Work was pending and nothing progressed (no commit advanced, nothing acknowledged) for
    /// `quiet_ms` of virtual time: stuck.
    Stuck { quiet_ms: u64 },
    /// Still progressing when the run's cap of `cap_ms` after healing ran out: too slow.
    Slow { cap_ms: u64 },
}

impl Convergence {
    pub fn converged(self) -> bool {
        self == Convergence::Converged
    }
}

/// The checker's verdict on one run.
#[derive(Clone, Debug, Default)]
pub struct RunVerdict {
    pub violations: Vec<Violation>,
    pub report: VerifyReport,
    /// Acknowledged events that no consumer ever polled (Jepsen's `unseen`), for information.
    pub unseen: usize,
    /// Acknowledged events absent from the final log (counted whether or not the run
    /// converged; a violation only when it did).
    pub broker_lost: usize,
    /// Records of the final log neither applied nor dead-lettered.
    pub consumer_lost: usize,
}

impl RunVerdict {
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

fn examples(items: impl IntoIterator<Item = String>) -> String {
    items
        .into_iter()
        .take(EXAMPLES_MAX)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks one run.
pub fn check(observed: &Observed) -> RunVerdict {
    let mut violations = observed.online.clone();
    let pending = BTreeSet::new();
    let report = verify(
        &observed.truth,
        &observed.store,
        &observed.dead_letters,
        &pending,
    );
    let mut add = |invariant, detail: String| violations.push(Violation { invariant, detail });
    let log = FinalLog::of(&observed.logs);
    let losses = locate_losses(observed, &log, &report);
    // Before convergence an unapplied event may merely be late: that is the liveness
    // violation below, not a loss nor a row that misses its claim.
    if observed.convergence.converged() {
        report_converged_faults(&report, &losses, &mut add);
    }
    report_store_faults(&report, &mut add);
    let (poll_violations, polled) = check_polls(&observed.history, &log);
    violations.extend(poll_violations);
    violations.extend(check_commits(&observed.history));
    violations.extend(check_appends(&observed.logs, &observed.publishes));
    if let Some(violation) = liveness(observed.convergence, report.missing.len()) {
        violations.push(violation);
    }
    let unseen = observed
        .truth
        .acknowledged
        .iter()
        .filter(|fact| !polled.contains(*fact))
        .count();
    RunVerdict {
        violations: collapse(violations),
        report,
        unseen,
        broker_lost: losses.broker.len(),
        consumer_lost: losses.consumer.len(),
    }
}

/// The violations only a converged run can show: losses, rows that break the conflict rule,
/// and conservation.
fn report_converged_faults(
    report: &VerifyReport,
    losses: &Losses,
    add: &mut impl FnMut(Invariant, String),
) {
    if !losses.broker.is_empty() {
        let detail = format!(
            "{} acknowledged events are not in the final log, or were written where the group had already passed: {}",
            losses.broker.len(),
            examples(losses.broker.iter().cloned())
        );
        add(Invariant::BrokerLoss, detail);
    }
    if !losses.consumer.is_empty() {
        let detail = format!(
            "{} records of the final log were neither applied nor dead-lettered: {}",
            losses.consumer.len(),
            examples(losses.consumer.iter().cloned())
        );
        add(Invariant::ConsumerLoss, detail);
    }
    // A row still missing the claim that wins may only be waiting for its event.
    if !report.row_mismatches.is_empty() {
        let detail = format!(
            "{} claims break the conflict rule: {}",
            report.row_mismatches.len(),
            examples(report.row_mismatches.iter().cloned())
        );
        add(Invariant::RowMismatch, detail);
    }
    if !report.conservation_holds() {
        let detail = format!(
            "acknowledged {} != applied {} + dead-lettered {} + pending {}",
            report.acknowledged, report.applied, report.dead_lettered, report.pending
        );
        add(Invariant::Conservation, detail);
    }
}

/// The liveness violation of a run that did not converge, telling stuck from slow.
fn liveness(convergence: Convergence, missing: usize) -> Option<Violation> {
    let stalled = match convergence {
        Convergence::Converged => return None,
        Convergence::Stuck { quiet_ms } => format!(
            "stuck: after healing every fault, no commit advanced and nothing was acknowledged for {quiet_ms} ms while work was pending"
        ),
        Convergence::Slow { cap_ms } => format!(
            "slow: after healing every fault, the consumers were still progressing when the {cap_ms} ms cap ran out"
        ),
    };
    Some(Violation {
        invariant: Invariant::Liveness,
        detail: format!("{stalled} ({missing} acknowledged events not applied)"),
    })
}

/// The violations the store comparison found, whatever the convergence.
fn report_store_faults(report: &VerifyReport, add: &mut impl FnMut(Invariant, String)) {
    if !report.applied_twice.is_empty() {
        let twice = report
            .applied_twice
            .iter()
            .map(|(k, n)| format!("{k} x{n}"));
        let detail = format!(
            "{} business keys applied more than once: {}",
            report.applied_twice.len(),
            examples(twice)
        );
        add(Invariant::Duplicate, detail);
    }
    if !report.unexpected.is_empty() {
        let detail = format!(
            "{} never sent: {}",
            report.unexpected.len(),
            examples(report.unexpected.iter().cloned())
        );
        add(Invariant::Unexpected, detail);
    }
    if !report.unkeyed.is_empty() {
        let detail = format!(
            "{} row claims without their unique key: {}",
            report.unkeyed.len(),
            examples(report.unkeyed.iter().cloned())
        );
        add(Invariant::UnkeyedRow, detail);
    }
    if !report.dead_lettered_valid.is_empty() {
        let detail = format!(
            "{} valid events dead-lettered: {}",
            report.dead_lettered_valid.len(),
            examples(report.dead_lettered_valid.iter().map(Fact::text))
        );
        add(Invariant::DeadLetteredValid, detail);
    }
    if !report.applied_and_dead_lettered.is_empty() {
        let detail = format!(
            "{} events applied and dead-lettered: {}",
            report.applied_and_dead_lettered.len(),
            examples(report.applied_and_dead_lettered.iter().map(Fact::text))
        );
        add(Invariant::AppliedAndDeadLettered, detail);
    }
}

/// Where the unfinished work is: acknowledged events the broker no longer has, and records
/// the broker has that the consumers never finished.
struct Losses {
    /// Acknowledged events absent from the final log, then records the broker wrote, after
    /// losing others, at offsets below what the group had already committed: the group's
    /// position was past them before they existed.
    broker: Vec<String>,
    consumer: Vec<String>,
}

fn locate_losses(observed: &Observed, log: &FinalLog, report: &VerifyReport) -> Losses {
    let letters: BTreeSet<&[u8]> = observed.dead_letters.iter().map(Vec::as_slice).collect();
    let dead_facts: BTreeSet<Fact> = letters.iter().filter_map(|p| read_payload(p)).collect();
    let (rewound, committed_max) = rewound_partitions(&observed.history, log);
    let mut in_log: BTreeSet<&Fact> = BTreeSet::new();
    let (mut broker, mut consumer) = (Vec::new(), Vec::new());
    for (partition, records) in &observed.logs {
        for (offset, record) in records {
            // The final log's facts were read once, for every check.
            let finished = match log.facts.get(&(*partition, *offset)) {
                Some(fact) => {
                    let done = reflected(&observed.store.rows, fact) || dead_facts.contains(fact);
                    in_log.insert(fact);
                    done
                }
                None => letters.contains(&record.payload[..]),
            };
            if finished {
                continue;
            }
            let passed = committed_max.get(partition).is_some_and(|c| offset < c);
            if rewound.contains(partition) && passed {
                broker.push(format!(
                    "p{partition}@{offset} (written below the group's commit)"
                ));
            } else {
                consumer.push(format!("p{partition}@{offset}"));
            }
        }
    }
    let mut overwritten = overwritten_acknowledgements(&observed.history, log);
    let absent = report.missing.iter().filter(|fact| !in_log.contains(*fact));
    let mut located: Vec<String> = absent
        .map(|fact| match overwritten.remove(&fact.event_id) {
            Some(evidence) => format!("{} ({evidence})", fact.text()),
            None => fact.text(),
        })
        .collect();
    located.append(&mut broker);
    located.extend(
        overwritten
            .into_iter()
            .map(|(event_id, evidence)| format!("{event_id} {evidence}")),
    );
    Losses {
        broker: located,
        consumer,
    }
}

/// Acknowledged sends whose offset, as the broker acknowledged it, holds another record in the
/// final log, or none (a send without an offset, under `acks=0`, says nothing), as evidence by
/// event id. The event may have survived elsewhere (a later copy): the acknowledgement was
/// still broken.
fn overwritten_acknowledgements(
    history: &[(u64, Step)],
    log: &FinalLog,
) -> BTreeMap<String, String> {
    let mut overwritten = BTreeMap::new();
    for (_, step) in history {
        let Step::Sent {
            event_id,
            acknowledged: true,
            delivered: Some((partition, offset)),
        } = step
        else {
            continue;
        };
        if *offset < 0 {
            continue;
        }
        let slot = (*partition, *offset);
        let now = match (log.facts.get(&slot), log.digests.contains_key(&slot)) {
            (Some(fact), _) if fact.event_id == *event_id => continue,
            (Some(fact), _) => fact.event_id.as_str(),
            (None, true) => "a malformed record",
            (None, false) => "nothing",
        };
        overwritten.insert(
            event_id.clone(),
            format!("acknowledged at p{partition}@{offset}, which holds {now}"),
        );
    }
    overwritten
}

/// The partitions whose log went back on what it served (a polled offset now holds another
/// record, or is past the final end: the broker lost records and reused their offsets), and
/// the highest offset committed per partition.
fn rewound_partitions(
    history: &[(u64, Step)],
    log: &FinalLog,
) -> (BTreeSet<i32>, HashMap<i32, i64>) {
    let mut rewound = BTreeSet::new();
    let mut committed_max: HashMap<i32, i64> = HashMap::new();
    for (_, step) in history {
        match step {
            Step::Polled {
                partition,
                offset,
                digest,
                ..
            } if log.digests.get(&(*partition, *offset)) != Some(digest) => {
                rewound.insert(*partition);
            }
            Step::Committed {
                partition, offset, ..
            } => {
                let max = committed_max.entry(*partition).or_insert(*offset);
                *max = (*max).max(*offset);
            }
            _ => {}
        }
    }
    (rewound, committed_max)
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

/// The final log, indexed for the poll checks.
struct FinalLog {
    /// Each record's payload digest, by (partition, offset).
    digests: HashMap<(i32, i64), u64>,
    /// The offsets each partition holds.
    offsets: BTreeMap<i32, BTreeSet<i64>>,
    /// The fact each decodable record states.
    facts: HashMap<(i32, i64), Fact>,
}

impl FinalLog {
    fn of(logs: &BTreeMap<i32, Vec<(i64, Record)>>) -> FinalLog {
        let records = || {
            logs.iter().flat_map(|(partition, records)| {
                records
                    .iter()
                    .map(move |(offset, record)| ((*partition, *offset), record))
            })
        };
        FinalLog {
            digests: records()
                .map(|(slot, record)| (slot, digest(&record.payload)))
                .collect(),
            offsets: logs
                .iter()
                .map(|(partition, records)| (*partition, records.iter().map(|(o, _)| *o).collect()))
                .collect(),
            facts: records()
                .filter_map(|(slot, record)| read_payload(&record.payload).map(|fact| (slot, fact)))
                .collect(),
        }
    }
}

/// Poll-order checks per member and assignment; returns the keys ever polled.
/// Every workload record appears in the final log at most as often as it was published: the
/// producer is idempotent, so its own retries never append twice (a publish the application
/// repeated after a failure may). The compensator's re-sends carry its header and are left
/// out.
fn check_appends(
    logs: &BTreeMap<i32, Vec<(i64, Record)>>,
    publishes: &BTreeMap<u64, u32>,
) -> Option<Violation> {
    let mut copies: BTreeMap<u64, (u32, i32, i64)> = BTreeMap::new();
    for (partition, log) in logs {
        for (offset, record) in log {
            if crate::pipeline::dead_letter::header(
                &record.headers,
                crate::pipeline::dead_letter::HEADER_ATTEMPTS,
            )
            .is_some()
            {
                continue;
            }
            let entry = copies
                .entry(digest(&record.payload))
                .or_insert((0, *partition, *offset));
            entry.0 += 1;
        }
    }
    let over: Vec<String> = copies
        .iter()
        .filter(|(payload, (count, _, _))| *count > publishes.get(*payload).copied().unwrap_or(0))
        .map(|(payload, (count, partition, offset))| {
            let published = publishes.get(payload).copied().unwrap_or(0);
            format!("p{partition}@{offset} in the log {count} times, published {published}")
        })
        .collect();
    (!over.is_empty()).then(|| Violation {
        invariant: Invariant::DuplicatedAppend,
        detail: format!(
            "{} records appended more often than published: {}",
            over.len(),
            examples(over.into_iter())
        ),
    })
}

fn check_polls(history: &[(u64, Step)], log: &FinalLog) -> (Vec<Violation>, BTreeSet<Fact>) {
    let mut violations = Vec::new();
    let mut inconsistent: BTreeSet<(i32, i64)> = BTreeSet::new();
    let mut last: HashMap<(&str, i32), i64> = HashMap::new();
    let mut polled = BTreeSet::new();
    for (at_ms, step) in history {
        match step {
            Step::Assigned {
                member, partition, ..
            }
            | Step::Revoked { member, partition } => {
                last.remove(&(member.as_str(), *partition));
            }
            Step::Polled {
                member,
                partition,
                offset,
                digest,
            } => {
                let slot = (*partition, *offset);
                if let Some(fact) = log.facts.get(&slot) {
                    polled.insert(fact.clone());
                }
                if log
                    .digests
                    .get(&slot)
                    .is_some_and(|expected| expected != digest)
                {
                    inconsistent.insert(slot);
                }
                let previous = last.insert((member.as_str(), *partition), *offset);
                if let Some(previous) = previous {
                    violations.extend(poll_order(log, member, slot, previous, *at_ms));
                }
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

/// One member's poll of `partition@offset` right after its poll of `@previous` within one
/// assignment: offsets only grow, and none of the final log's is skipped.
fn poll_order(
    log: &FinalLog,
    member: &str,
    (partition, offset): (i32, i64),
    previous: i64,
    at_ms: u64,
) -> Option<Violation> {
    if offset <= previous {
        return Some(Violation {
            invariant: Invariant::NonmonotonicPoll,
            detail: format!("{member} polled p{partition}@{offset} after @{previous} at {at_ms}ms"),
        });
    }
    let skipped = log
        .offsets
        .get(&partition)
        .and_then(|set| set.range(previous + 1..offset).next())?;
    Some(Violation {
        invariant: Invariant::PollSkip,
        detail: format!(
            "{member} polled p{partition}@{offset} right after @{previous}, skipping @{skipped} at {at_ms}ms"
        ),
    })
}

/// Committed offsets must never move backwards, across members and generations.
///
/// A commit's answer is recorded when its member's client serves it, so its time only bounds
/// when the coordinator stored it: a member frozen just after sending a commit has it answered
/// after it thaws, behind the next owner's commits. The generation orders them: a coordinator
/// stores a commit only from a member of its current generation, and a member serves its
/// revoke before it can rejoin into a later one, so a commit answered while its member's
/// latest assignment was of generation `g` was stored during `g` (or later, if the client
/// held it and sent it after rejoining: then the member's next assignment comes first, and
/// the commit is judged in that generation). Commits are judged in the order (generation,
/// answer time).
fn check_commits(history: &[(u64, Step)]) -> Vec<Violation> {
    let mut generations: HashMap<&str, i32> = HashMap::new();
    let mut commits = Vec::new();
    for (at_ms, step) in history {
        match step {
            Step::Assigned {
                member, generation, ..
            } => {
                let latest = generations.entry(member.as_str()).or_insert(*generation);
                *latest = (*latest).max(*generation);
            }
            Step::Committed {
                member,
                partition,
                offset,
            } => {
                let generation = generations.get(member.as_str()).copied();
                commits.push((*partition, generation, *at_ms, member.as_str(), *offset));
            }
            _ => {}
        }
    }
    // Stable: commits of one generation and millisecond keep their recorded order.
    commits.sort_by_key(|&(partition, generation, at_ms, ..)| (partition, generation, at_ms));
    let mut violations = Vec::new();
    for pair in commits.windows(2) {
        let [(partition, _, _, by, previous), (next_partition, generation, at_ms, member, offset)] =
            pair
        else {
            continue;
        };
        if partition == next_partition && offset < previous {
            let generation = generation.map_or("none".to_owned(), |g| g.to_string());
            violations.push(Violation {
                invariant: Invariant::CommitBackwards,
                detail: format!(
                    "{member} committed p{partition}={offset} at {at_ms}ms in generation \
                     {generation} after {by} committed {previous}"
                ),
            });
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use crate::verify::Application;
    use crate::widetable::OrderRow;
    use crate::workload::{Workload, WorkloadConfig};

    /// `event` as the record at `offset` of partition 0.
    fn record_of(offset: i64, event: &crate::event::OrderEvent) -> Record {
        Record {
            partition: 0,
            offset,
            key: Some(event.order_id.clone().into_bytes()),
            payload: event.payload.clone(),
            headers: vec![],
        }
    }

    /// Moves the acknowledgement of the send delivered at `from` to `to`.
    fn move_acknowledgement(observed: &mut Observed, from: (i32, i64), to: (i32, i64)) {
        for (_, step) in &mut observed.history {
            if let Step::Sent { delivered, .. } = step {
                if *delivered == Some(from) {
                    *delivered = Some(to);
                }
            }
        }
    }

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
            convergence: Convergence::Converged,
            ..Observed::default()
        };
        let mut log = Vec::new();
        let mut keys = BTreeSet::new();
        for (offset, event) in events.iter().enumerate() {
            let offset = offset as i64;
            observed.truth.record(event, true);
            if keys.insert(Fact::business_key(
                &event.order_id,
                event.kind,
                &event.event_id,
            )) {
                observed.store.ledger.push(Application::of(event));
            }
            let record = record_of(offset, event);
            observed.history.push((
                0,
                Step::Sent {
                    event_id: event.event_id.clone(),
                    acknowledged: true,
                    delivered: Some((0, offset)),
                },
            ));
            observed.history.push((
                offset as u64,
                Step::Polled {
                    member: "c1".into(),
                    partition: 0,
                    offset,
                    digest: digest(&record.payload),
                },
            ));
            *observed
                .publishes
                .entry(digest(&record.payload))
                .or_default() += 1;
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

    /// Goal: each invariant has its own name, which reads back as that invariant, in every
    /// form a report or a sweep file writes it (the names are what users match on). Method:
    /// every invariant through each form, and two names spelled out.
    #[test]
    fn every_invariant_reads_back_from_its_name() {
        let names: BTreeSet<&str> = ALL_INVARIANTS.iter().map(|i| i.name()).collect();
        assert_eq!(names.len(), ALL_INVARIANTS.len(), "names are distinct");
        for invariant in ALL_INVARIANTS {
            let name = invariant.name();
            assert_eq!(Invariant::parse(name), Some(invariant));
            assert_eq!(invariant.to_string(), name);
            assert_eq!(String::from(invariant), name);
            assert_eq!(Invariant::try_from(name.to_string()), Ok(invariant));
        }
        assert_eq!(Invariant::BrokerLoss.name(), "broker-loss");
        assert_eq!(
            Invariant::CommitPastUnfinished.name(),
            "commit-past-unfinished"
        );
        assert_eq!(Invariant::parse("no-such-invariant"), None);
    }

    #[test]
    fn a_clean_run_passes() {
        let verdict = check(&clean_run());
        assert!(verdict.passed(), "{:?}", verdict.violations);
        assert_eq!(verdict.unseen, 0);
    }

    #[test]
    fn names_consumer_loss_and_duplicates() {
        let mut observed = clean_run();
        let created = observed
            .truth
            .attempted
            .iter()
            .find(|e| e.kind == EventKind::Created)
            .cloned()
            .unwrap();
        observed
            .store
            .rows
            .get_mut(&created.order_id)
            .unwrap()
            .created = None;
        let doubled = observed.store.ledger[1].clone();
        observed.store.ledger.push(doubled);
        let invariants = check(&observed).invariants();
        assert!(
            invariants.contains(&Invariant::ConsumerLoss),
            "{invariants:?}"
        );
        assert!(
            invariants.contains(&Invariant::Conservation),
            "{invariants:?}"
        );
        assert!(invariants.contains(&Invariant::Duplicate), "{invariants:?}");
        assert!(
            !invariants.contains(&Invariant::BrokerLoss),
            "{invariants:?}"
        );
        assert!(!check(&observed).passed(), "a run with violations passed");
    }

    #[test]
    fn an_acknowledged_event_missing_from_the_log_is_broker_loss() {
        let mut observed = clean_run();
        let log = observed.logs.get_mut(&0).unwrap();
        let (_, record) = log.remove(0);
        let event = crate::event::OrderEvent::decode(&record.payload).unwrap();
        let row = observed.store.rows.get_mut(&event.order_id).unwrap();
        assert_eq!(
            event.kind,
            EventKind::Created,
            "the first event of the workload"
        );
        row.created = None;
        let verdict = check(&observed);
        assert_eq!(
            verdict.invariants(),
            BTreeSet::from([Invariant::BrokerLoss, Invariant::Conservation])
        );
        assert_eq!((verdict.broker_lost, verdict.consumer_lost), (1, 0));
    }

    /// Goal: an acknowledgement the final log does not keep is a broker loss even when the
    /// event survived (here: at another offset), with the offset as evidence; a send under
    /// `acks=0`, answered without an offset, says nothing. Method: the clean run's history
    /// with one acknowledged offset moved.
    #[test]
    fn an_acknowledged_offset_holding_another_record_is_broker_loss() {
        let mut observed = clean_run();
        move_acknowledgement(&mut observed, (0, 0), (0, 1));
        move_acknowledgement(&mut observed, (0, 2), (0, -1));
        let verdict = check(&observed);
        assert_eq!(
            verdict.invariants(),
            BTreeSet::from([Invariant::BrokerLoss])
        );
        assert_eq!(verdict.broker_lost, 1);
        assert!(
            verdict.violations[0]
                .detail
                .contains("acknowledged at p0@1, which holds"),
            "{:?}",
            verdict.violations
        );
    }

    /// Goal: violations are collapsed to one per invariant, with the first few details and
    /// the count of the rest only when there is a rest. Method: five details of one invariant
    /// and seven of another.
    #[test]
    fn violations_collapse_to_one_per_invariant_with_the_rest_counted() {
        let of = |invariant, count: usize| {
            (0..count).map(move |n| Violation {
                invariant,
                detail: format!("d{n}"),
            })
        };
        let violations = of(Invariant::Duplicate, EXAMPLES_MAX)
            .chain(of(Invariant::CommitBackwards, EXAMPLES_MAX + 2))
            .collect();
        let collapsed = collapse(violations);
        let details: Vec<(Invariant, &str)> = collapsed
            .iter()
            .map(|v| (v.invariant, v.detail.as_str()))
            .collect();
        assert_eq!(
            details,
            [
                (Invariant::Duplicate, "d0; d1; d2; d3; d4"),
                (
                    Invariant::CommitBackwards,
                    "d0; d1; d2; d3; d4 (and 2 more)"
                ),
            ]
        );
    }

    /// Goal: offset 0 is an offset like any other: an acknowledgement there that the final log
    /// does not keep is a broker loss. Method: the clean run with the second send's
    /// acknowledgement moved to offset 0.
    #[test]
    fn an_acknowledgement_at_offset_zero_holding_another_record_is_broker_loss() {
        let mut observed = clean_run();
        move_acknowledgement(&mut observed, (0, 1), (0, 0));
        let verdict = check(&observed);
        assert_eq!(
            verdict.invariants(),
            BTreeSet::from([Invariant::BrokerLoss])
        );
        assert!(
            verdict.violations[0]
                .detail
                .contains("acknowledged at p0@0, which holds"),
            "{:?}",
            verdict.violations
        );
    }

    /// Goal: on a partition whose log went back on what it served, an unfinished record
    /// below the group's commit was written after the group had passed its offset (broker
    /// loss), while one at the commit is the consumers' to finish (consumer loss). Method: the
    /// clean run with offset 0 served with another payload and its effect removed, plus two
    /// acknowledged records nobody applied, the group's commit moved onto the second.
    #[test]
    fn an_unfinished_record_below_a_rewound_commit_is_broker_loss() {
        let mut observed = clean_run();
        let end = observed.logs[&0].len() as i64;
        for (_, step) in &mut observed.history {
            match step {
                Step::Polled {
                    offset: 0, digest, ..
                } => *digest ^= 1,
                Step::Committed { offset, .. } => *offset = end + 1,
                _ => {}
            }
        }
        let first = observed.truth.attempted[0].clone();
        observed
            .store
            .rows
            .get_mut(&first.order_id)
            .unwrap()
            .created = None;
        for offset in [end, end + 1] {
            let mut extra = crate::event::OrderEvent {
                event_id: format!("e-extra-{offset}"),
                order_id: format!("o-extra-{offset}"),
                user_id: "u-extra".into(),
                kind: EventKind::Created,
                amount_minor: None,
                event_time_ms: 7,
                payload: bytes::Bytes::new(),
            };
            extra.payload = extra.encode().into();
            let record = record_of(offset, &extra);
            observed.logs.get_mut(&0).unwrap().push((offset, record));
            observed.truth.record(&extra, true);
        }
        let verdict = check(&observed);
        let detail = |invariant| {
            let found = verdict.violations.iter().find(|v| v.invariant == invariant);
            found.map_or(String::new(), |v| v.detail.clone())
        };
        let broker = detail(Invariant::BrokerLoss);
        for offset in [0, end] {
            let below = format!("p0@{offset} (written below the group's commit)");
            assert!(broker.contains(&below), "{:?}", verdict.violations);
        }
        let at_commit = format!("p0@{}", end + 1);
        assert!(
            detail(Invariant::ConsumerLoss).contains(&at_commit),
            "{:?}",
            verdict.violations
        );
        assert_eq!((verdict.broker_lost, verdict.consumer_lost), (2, 1));
    }

    /// Goal: rows whose keys the store never recorded are a violation of their own, whatever
    /// the convergence, and nothing else. Method: a clean run's ledger emptied, converged and
    /// stuck.
    #[test]
    fn rows_without_their_keys_are_unkeyed() {
        let mut observed = clean_run();
        observed.store.ledger.clear();
        assert_eq!(
            check(&observed).invariants(),
            BTreeSet::from([Invariant::UnkeyedRow])
        );
        observed.convergence = Convergence::Stuck { quiet_ms: 20_000 };
        let invariants = check(&observed).invariants();
        assert!(
            invariants.contains(&Invariant::UnkeyedRow),
            "{invariants:?}"
        );
    }

    #[test]
    fn losses_before_convergence_are_liveness_only() {
        let mut observed = clean_run();
        observed.logs.get_mut(&0).unwrap().clear();
        observed.store.rows.clear();
        observed.store.ledger.clear();
        observed.convergence = Convergence::Stuck { quiet_ms: 20_000 };
        let verdict = check(&observed);
        assert!(!verdict.invariants().contains(&Invariant::BrokerLoss));
        assert!(verdict.invariants().contains(&Invariant::Liveness));
        assert!(
            verdict.broker_lost > 0,
            "counted for the report all the same"
        );
    }

    #[test]
    fn a_malformed_record_must_be_dead_lettered_and_a_valid_one_must_not() {
        let mut observed = clean_run();
        let malformed = Record {
            partition: 0,
            offset: 1000,
            key: None,
            payload: bytes::Bytes::from_static(br#"[1,"e","o","u","paid",100,1700000000000]"#),
            headers: vec![],
        };
        observed
            .logs
            .get_mut(&0)
            .unwrap()
            .push((1000, malformed.clone()));
        observed.publishes.insert(digest(&malformed.payload), 1);
        assert!(check(&observed)
            .invariants()
            .contains(&Invariant::ConsumerLoss));
        observed.dead_letters.push(malformed.payload.to_vec());
        assert!(check(&observed).passed());
        let valid = observed.truth.attempted[0].payload.to_vec();
        observed.dead_letters.push(valid);
        let invariants = check(&observed).invariants();
        assert!(
            invariants.contains(&Invariant::DeadLetteredValid),
            "{invariants:?}"
        );
        assert!(
            invariants.contains(&Invariant::AppliedAndDeadLettered),
            "{invariants:?}"
        );
    }

    /// Goal: committing the same offset again (a member re-commits its position, or the
    /// next owner commits where the last one stopped) is not a commit going backwards.
    /// Method: the clean run's last commit repeated by another member.
    #[test]
    fn a_repeated_commit_is_not_backwards() {
        let mut observed = clean_run();
        let end = observed.logs[&0].len() as i64;
        observed.history.push((
            1000,
            Step::Committed {
                member: "c2".into(),
                partition: 0,
                offset: end,
            },
        ));
        let verdict = check(&observed);
        assert!(verdict.passed(), "{:?}", verdict.violations);
    }

    /// Goal: a commit is judged in the generation it was answered in, not at its answer's
    /// time alone: a frozen member's commit of generation 1, answered after the next owner
    /// of generation 2 committed further, was stored first (it passes); a commit answered
    /// after its member joined generation 3 is judged there and goes backwards (it fails).
    /// Method: the clean run handed from c1 (generation 1) to c2 (generation 2).
    #[test]
    fn commits_are_ordered_by_generation_before_answer_time() {
        let assigned = |member: &str, generation| Step::Assigned {
            member: member.into(),
            partition: 0,
            generation,
        };
        let committed = |member: &str, offset| Step::Committed {
            member: member.into(),
            partition: 0,
            offset,
        };
        let mut observed = clean_run();
        let end = observed.logs[&0].len() as i64;
        observed.history.insert(0, (0, assigned("c1", 1)));
        let last = observed.history.pop();
        assert!(matches!(last, Some((_, Step::Committed { .. }))));
        observed.history.push((999, committed("c1", end - 2)));
        observed.history.push((1000, assigned("c2", 2)));
        observed.history.push((1001, committed("c2", end)));
        observed.history.push((1002, committed("c1", end - 1)));
        let verdict = check(&observed);
        assert!(verdict.passed(), "{:?}", verdict.violations);

        observed.history.push((1003, assigned("c1", 3)));
        observed.history.push((1004, committed("c1", end - 2)));
        let verdict = check(&observed);
        assert_eq!(verdict.invariants(), [Invariant::CommitBackwards].into());
        let expected = format!("p0={} at 1004ms in generation 3", end - 2);
        assert!(
            verdict.violations[0].detail.contains(&expected),
            "{:?}",
            verdict.violations
        );
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
                generation: 2,
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
    fn no_convergence_is_a_liveness_violation_that_says_stuck_or_slow() {
        let mut observed = clean_run();
        for (convergence, says) in [
            (Convergence::Stuck { quiet_ms: 20_000 }, "stuck"),
            (Convergence::Slow { cap_ms: 90_000 }, "slow"),
        ] {
            observed.convergence = convergence;
            let verdict = check(&observed);
            assert_eq!(verdict.invariants(), BTreeSet::from([Invariant::Liveness]));
            assert!(verdict.violations[0].detail.starts_with(says));
        }
    }

    /// Goal: a record in the log more often than it was published is flagged, a deliberate
    /// repeat publish is not, and the compensator's re-sends are left out. Method: one payload
    /// twice in the log against one, then two publishes, and a re-send beside it.
    #[test]
    fn an_append_beyond_its_publishes_is_flagged() {
        let record = |offset: i64, headers: Vec<(String, Vec<u8>)>| {
            let payload = bytes::Bytes::from_static(b"{\"event\":1}");
            (
                offset,
                Record {
                    partition: 0,
                    offset,
                    key: None,
                    payload,
                    headers,
                },
            )
        };
        let resend = vec![(
            crate::pipeline::dead_letter::HEADER_ATTEMPTS.to_owned(),
            b"1".to_vec(),
        )];
        let logs = BTreeMap::from([(
            0,
            vec![record(0, vec![]), record(1, vec![]), record(2, resend)],
        )]);
        let published = |times| BTreeMap::from([(digest(b"{\"event\":1}"), times)]);
        let violation = check_appends(&logs, &published(1)).expect("a doubled append");
        assert_eq!(violation.invariant, Invariant::DuplicatedAppend);
        assert!(
            violation
                .detail
                .contains("p0@0 in the log 2 times, published 1"),
            "{}",
            violation.detail
        );
        assert_eq!(check_appends(&logs, &published(2)), None);
    }
}

//! Scenarios: the standard adversarial run and the configuration explorer's rows.
//!
//! Each explorer row reproduces one loss window the seed names, or its remedy, and carries the
//! expectation the suite asserts over a sweep of seeds.

use crate::checker::Invariant;
use holdfast::testkit::planted::PlantedBug;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a loss window loses an acknowledged event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossAt {
    /// The broker: the event is absent from the final log.
    Broker,
    /// The consumer: the event is in the log and was never applied.
    Consumer,
}

/// What a scenario's sweep must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expectation {
    /// No seed may lose an acknowledged event or violate any invariant.
    Safe,
    /// Some seed of the sweep must converge and lose acknowledged events where the window
    /// says (the window is real), and no seed may break an invariant the window does not
    /// entail ([`Expectation::tolerates`]): a duplicate or a stall under a loss window is a
    /// bug like any other.
    LossShown(LossAt),
    /// Some seed of the sweep must break one of the invariants the planted bug declares, and
    /// the same seeds with the bug off ([`Scenario::Control`]) must be clean.
    Caught(&'static [Invariant]),
    /// A planted loss that the compensator must repair: the checker may flag the commit
    /// discipline and the compensator's give-ups, but no seed may lose or double an
    /// acknowledged event, keep a wrong row, or stall.
    Repaired,
}

impl Expectation {
    /// Whether a seed of this expectation may break `invariant`: only what its window or its
    /// planted bug entails. A panic is never tolerated.
    pub fn tolerates(self, invariant: Invariant) -> bool {
        use Invariant::*;
        match self {
            Expectation::Safe => false,
            Expectation::Caught(_) => true,
            // A log that loses acknowledged records, and after an unclean crash fills their
            // offsets with other records: the loss, the counts and rows without the lost
            // claims, an offset that held two records, polls and commits that went past a
            // range before it was filled again.
            Expectation::LossShown(LossAt::Broker) => matches!(
                invariant,
                BrokerLoss
                    | Conservation
                    | RowMismatch
                    | InconsistentOffsets
                    | NonmonotonicPoll
                    | CommitPastUnfinished
            ),
            // Commits of positions, not of finished work: records skipped, the counts and rows
            // without them, and positions that go back after a rebalance.
            Expectation::LossShown(LossAt::Consumer) => matches!(
                invariant,
                ConsumerLoss | Conservation | RowMismatch | CommitPastUnfinished | CommitBackwards
            ),
            // The same commits, each skipped record re-sent by the compensator; an event it
            // gave up on after every attempt is dead-lettered, even when a later re-send of
            // it is applied.
            Expectation::Repaired => matches!(
                invariant,
                ConsumerLoss
                    | CommitPastUnfinished
                    | CommitBackwards
                    | Conservation
                    | DeadLetteredValid
                    | AppliedAndDeadLettered
            ),
        }
    }
}

/// One kind of run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Scenario {
    /// Safe configuration (acks=all, RF 3, min ISR 2, idempotent producer, flush on a timer)
    /// under every fault: consumer, broker, Redis and PostgreSQL crashes, crashes at the
    /// protocol's fault points, network clogs, rebalances.
    Standard,
    /// acks=0 without callback; the partition leader crashes.
    FireAndForget,
    /// acks=1; the leader crashes right after acknowledging, before followers fetched.
    AcksOneLeaderCrash,
    /// acks=all, RF 3, min ISR 2; one broker at a time crashes.
    AcksAllSingleFailure,
    /// Every replica crashes at once while records sit unflushed in the page cache.
    AllReplicasCrashUnflushed,
    /// The same crash, with a flush after every append.
    AllReplicasCrashFlushed,
    /// The consumer commits polled offsets on a timer and crashes.
    AutoCommit,
    /// The standard run with the seed's literal commit rule (step 6 as written).
    LiteralCommitRule,
    /// Auto-commit and consumer crashes, with the compensator running.
    CompensatedAutoCommit,
    /// A planted bug that the checker must catch.
    Planted(PlantedBug),
    /// The runs of [`Scenario::Planted`] on the same seeds, with the bug off: must be clean,
    /// so that a catch is the bug's and not the scenario's.
    Control(PlantedBug),
}

impl Scenario {
    /// The explorer's rows, in the order the table prints them.
    pub const EXPLORER: [Scenario; 9] = [
        Scenario::Standard,
        Scenario::FireAndForget,
        Scenario::AcksOneLeaderCrash,
        Scenario::AcksAllSingleFailure,
        Scenario::AllReplicasCrashUnflushed,
        Scenario::AllReplicasCrashFlushed,
        Scenario::AutoCommit,
        Scenario::LiteralCommitRule,
        Scenario::CompensatedAutoCommit,
    ];

    /// Every scenario: explorer rows, then each planted bug and its control.
    pub fn all() -> Vec<Scenario> {
        let mut all = Scenario::EXPLORER.to_vec();
        for bug in PlantedBug::ALL
            .into_iter()
            .filter(|bug| *bug != PlantedBug::AutoCommit)
        {
            all.push(Scenario::Planted(bug));
            all.push(Scenario::Control(bug));
        }
        all
    }

    pub fn expectation(self) -> Expectation {
        match self {
            Scenario::Standard
            | Scenario::AcksAllSingleFailure
            | Scenario::AllReplicasCrashFlushed
            | Scenario::LiteralCommitRule
            | Scenario::Control(_) => Expectation::Safe,
            Scenario::FireAndForget
            | Scenario::AcksOneLeaderCrash
            | Scenario::AllReplicasCrashUnflushed => Expectation::LossShown(LossAt::Broker),
            Scenario::AutoCommit => Expectation::LossShown(LossAt::Consumer),
            Scenario::Planted(bug) => Expectation::Caught(caught_by(bug)),
            Scenario::CompensatedAutoCommit => Expectation::Repaired,
        }
    }

    /// The scenario whose seeds drive this one's parameters: a control runs its planted
    /// scenario's seeds exactly.
    pub fn seeded_as(self) -> Scenario {
        match self {
            Scenario::Control(bug) => Scenario::Planted(bug),
            scenario => scenario,
        }
    }

    /// The stable name used on the command line and in reports.
    pub fn name(self) -> String {
        match self {
            Scenario::Standard => "standard".into(),
            Scenario::FireAndForget => "fire-and-forget".into(),
            Scenario::AcksOneLeaderCrash => "acks1-leader-crash".into(),
            Scenario::AcksAllSingleFailure => "acks-all-single-failure".into(),
            Scenario::AllReplicasCrashUnflushed => "all-replicas-crash-unflushed".into(),
            Scenario::AllReplicasCrashFlushed => "all-replicas-crash-flushed".into(),
            Scenario::AutoCommit => "auto-commit".into(),
            Scenario::LiteralCommitRule => "literal-commit-rule".into(),
            Scenario::CompensatedAutoCommit => "auto-commit-compensated".into(),
            Scenario::Planted(bug) => format!("planted-{}", planted_name(bug)),
            Scenario::Control(bug) => format!("control-{}", planted_name(bug)),
        }
    }

    /// Parses [`Scenario::name`].
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::all()
            .into_iter()
            .find(|scenario| scenario.name() == name)
    }

    /// One line for the explorer table.
    pub fn describe(self) -> &'static str {
        match self {
            Scenario::Standard => "acks=all RF3 minISR2, idempotent, every fault",
            Scenario::FireAndForget => "acks=0, no callback, leader crash",
            Scenario::AcksOneLeaderCrash => "acks=1, leader crash before replication",
            Scenario::AcksAllSingleFailure => "acks=all RF3 minISR2, single broker crashes",
            Scenario::AllReplicasCrashUnflushed => "all replicas crash, page cache unflushed",
            Scenario::AllReplicasCrashFlushed => "all replicas crash, flush every append",
            Scenario::AutoCommit => "consumer auto-commit, consumer crash",
            Scenario::LiteralCommitRule => "standard faults, the seed's literal commit rule",
            Scenario::CompensatedAutoCommit => "auto-commit and crashes, compensator on",
            Scenario::Planted(_) => "planted bug",
            Scenario::Control(_) => "the planted bug's seeds, bug off",
        }
    }

    /// The planted bug the scenario switches on, if any.
    pub fn planted(self) -> Option<PlantedBug> {
        match self {
            Scenario::AutoCommit | Scenario::CompensatedAutoCommit => Some(PlantedBug::AutoCommit),
            Scenario::Planted(bug) => Some(bug),
            _ => None,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        out.write_str(&self.name())
    }
}

/// The invariants a planted bug must break to count as caught: what the bug really does, so
/// that a catch through an unrelated failure (a stall, say) is not credited to the checker.
fn caught_by(bug: PlantedBug) -> &'static [Invariant] {
    match bug {
        PlantedBug::CommitBeforeProcessing
        | PlantedBug::AutoCommit
        | PlantedBug::CommitAckedPlusOne
        | PlantedBug::CacheWrittenBeforeStore => {
            &[Invariant::CommitPastUnfinished, Invariant::ConsumerLoss]
        }
        PlantedBug::NoUniqueKey => &[Invariant::Duplicate],
        PlantedBug::MergeByArrival => &[Invariant::RowMismatch],
    }
}

fn planted_name(bug: PlantedBug) -> &'static str {
    match bug {
        PlantedBug::CommitBeforeProcessing => "commit-before-processing",
        PlantedBug::CacheWrittenBeforeStore => "cache-before-store",
        PlantedBug::NoUniqueKey => "no-unique-key",
        PlantedBug::AutoCommit => "auto-commit",
        PlantedBug::CommitAckedPlusOne => "commit-acked-plus-one",
        PlantedBug::MergeByArrival => "merge-by-arrival",
    }
}

impl From<Scenario> for String {
    fn from(scenario: Scenario) -> String {
        scenario.name()
    }
}

impl TryFrom<String> for Scenario {
    type Error = String;
    fn try_from(name: String) -> Result<Scenario, String> {
        Scenario::parse(&name).ok_or(format!("unknown scenario `{name}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let all = Scenario::all();
        let names: std::collections::BTreeSet<String> = all.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), all.len());
        for scenario in all {
            assert_eq!(Scenario::parse(&scenario.name()), Some(scenario));
        }
        assert_eq!(Scenario::parse("nonsense"), None);
    }

    #[test]
    fn every_planted_bug_has_a_scenario() {
        for bug in PlantedBug::ALL {
            assert!(
                Scenario::all().iter().any(|s| s.planted() == Some(bug)),
                "{bug:?}"
            );
        }
    }
}

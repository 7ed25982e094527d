//! Sweeps: many seeds over every core, with progress, shrinking of failures, the explorer
//! matrix, and JSON reports that shards can merge.

use crate::checker::Invariant;
use crate::params::{Overrides, RunParams, Size};
use crate::runner::{run, RunOutcome};
use crate::scenario::{Expectation, LossAt, Scenario};
use holdfast::pipeline::ProgressMode;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The result of one seed, reduced to what reports need.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedResult {
    pub scenario: Scenario,
    pub seed: u64,
    pub invariants: Vec<Invariant>,
    pub lost: usize,
    /// Acknowledged events absent from the final log.
    pub broker_lost: usize,
    /// Records of the final log neither applied nor dead-lettered.
    pub consumer_lost: usize,
    pub redeliveries: usize,
    /// Where the run's consumers kept progress, and the redeliveries they processed again.
    #[serde(default)]
    pub progress: ProgressMode,
    #[serde(default)]
    pub redone: usize,
    pub sent: usize,
    pub steps: usize,
    pub faults: usize,
    pub virtual_ms: u64,
    /// A panic inside the simulation (a model or pipeline bug), if any.
    pub panic: Option<String>,
    /// The reach points the run took.
    pub reached: Vec<String>,
    pub replay: String,
}

impl SeedResult {
    pub fn failed(&self) -> bool {
        !self.invariants.is_empty() || self.panic.is_some()
    }

    /// The first invariant this run broke that its scenario does not tolerate.
    pub fn intolerable(&self) -> Option<Invariant> {
        let expectation = self.scenario.expectation();
        (self.invariants.iter().copied()).find(|invariant| !expectation.tolerates(*invariant))
    }

    /// Whether the run broke more than its scenario allows: it panicked, or it broke an
    /// invariant its window or planted bug does not entail.
    pub fn beyond_expectation(&self) -> bool {
        self.panic.is_some() || self.intolerable().is_some()
    }

    /// Whether the run converged: only a converged run's losses are losses, not a stall.
    pub fn converged(&self) -> bool {
        self.panic.is_none() && !self.invariants.contains(&Invariant::Liveness)
    }

    /// Whether the run converged and lost where the window says: in the broker (with no
    /// consumer loss), or in the consumer.
    pub fn loss_at(&self, at: LossAt) -> bool {
        self.converged()
            && match at {
                LossAt::Broker => self.broker_lost > 0 && self.consumer_lost == 0,
                LossAt::Consumer => self.consumer_lost > 0,
            }
    }
}

/// Runs one seed, turning a panic into a result.
pub fn run_guarded(params: &RunParams) -> (SeedResult, Option<RunOutcome>) {
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(params)));
    match outcome {
        Ok(outcome) => (summarize(&outcome), Some(outcome)),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".into());
            let result = SeedResult {
                scenario: params.scenario,
                seed: params.seed,
                invariants: Vec::new(),
                lost: 0,
                broker_lost: 0,
                consumer_lost: 0,
                redeliveries: 0,
                progress: params.progress,
                redone: 0,
                sent: 0,
                steps: 0,
                faults: 0,
                virtual_ms: 0,
                panic: Some(message),
                reached: Vec::new(),
                replay: params.replay_command(),
            };
            (result, None)
        }
    }
}

fn summarize(outcome: &RunOutcome) -> SeedResult {
    SeedResult {
        scenario: outcome.params.scenario,
        seed: outcome.params.seed,
        invariants: outcome.verdict.invariants().into_iter().collect(),
        lost: outcome.lost(),
        broker_lost: outcome.verdict.broker_lost,
        consumer_lost: outcome.verdict.consumer_lost,
        redeliveries: outcome.redeliveries,
        progress: outcome.params.progress,
        redone: outcome.redone,
        sent: outcome.sent,
        steps: outcome.steps,
        faults: outcome.faults_injected,
        virtual_ms: outcome.virtual_ms,
        panic: None,
        reached: outcome.reached.keys().cloned().collect(),
        replay: outcome.params.replay_command(),
    }
}

/// The scenarios a sweep of `requested` runs: each planted bug brings its control.
pub fn with_controls(requested: &[Scenario]) -> Vec<Scenario> {
    let mut scenarios = requested.to_vec();
    for scenario in requested {
        if let Scenario::Planted(bug) = scenario {
            if !scenarios.contains(&Scenario::Control(*bug)) {
                scenarios.push(Scenario::Control(*bug));
            }
        }
    }
    scenarios
}

/// The runs of a sweep: `seeds` spread over `scenarios` (half to the standard scenario when
/// it is included, the rest evenly), then sliced by shard.
pub fn plan(
    scenarios: &[Scenario],
    seeds: u64,
    first_seed: u64,
    shard: (u64, u64),
    overrides: Overrides,
    size: Size,
) -> Vec<RunParams> {
    let mut runs = Vec::new();
    let others = scenarios
        .iter()
        .filter(|s| **s != Scenario::Standard)
        .count() as u64;
    let standard = scenarios.contains(&Scenario::Standard);
    let standard_seeds = match (standard, others) {
        (true, 0) => seeds,
        (true, _) => seeds / 2,
        (false, _) => 0,
    };
    let per_other = (seeds - standard_seeds).checked_div(others).unwrap_or(0);
    // What does not divide evenly goes to the standard scenario, so the sweep has exactly
    // `seeds` runs whenever the standard scenario is part of it.
    let standard_seeds = if standard {
        seeds - per_other * others
    } else {
        0
    };
    let mut index = 0u64;
    for scenario in scenarios {
        let count = if *scenario == Scenario::Standard {
            standard_seeds
        } else {
            per_other
        };
        for offset in 0..count {
            if index % shard.1 == shard.0 {
                let mut params = RunParams::derive_sized(first_seed + offset, *scenario, size);
                overrides.apply(&mut params);
                runs.push(params);
            }
            index += 1;
        }
    }
    runs
}

/// Runs every planned seed on a pool of `jobs` threads (rayon), with a progress bar on a
/// terminal (indicatif) and a line per quarter otherwise (a CI log).
pub fn execute(runs: Vec<RunParams>, jobs: usize) -> Result<Vec<SeedResult>, String> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs.max(1))
        .build()
        .map_err(|error| format!("cannot start {jobs} threads: {error}"))?;
    let progress = Progress::new(runs.len());
    // Panics are reported per seed; the default hook's backtrace noise would bury the report.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut results: Vec<SeedResult> = pool.install(|| {
        runs.par_iter()
            .map(|params| {
                let (result, _) = run_guarded(params);
                progress.seed_done(result.failed());
                result
            })
            .collect()
    });
    std::panic::set_hook(hook);
    progress.finish();
    results.sort_by_key(|r| (r.scenario, r.seed));
    Ok(results)
}

/// The sweep's progress: seeds done and runs with violations so far.
struct Progress {
    bar: ProgressBar,
    failing: AtomicUsize,
    done: AtomicUsize,
    total: usize,
}

impl Progress {
    fn new(total: usize) -> Progress {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::new(total as u64)
        } else {
            ProgressBar::hidden()
        };
        let style = ProgressStyle::with_template(
            "[{bar:30}] seeds {pos}/{len}  runs with violations {msg}  {elapsed}",
        );
        if let Ok(style) = style {
            bar.set_style(style.progress_chars("#>-"));
        }
        bar.set_message("0");
        Progress {
            bar,
            failing: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            total,
        }
    }

    fn seed_done(&self, failed: bool) {
        let failing = self
            .failing
            .fetch_add(usize::from(failed), Ordering::Relaxed)
            + usize::from(failed);
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        self.bar.set_message(failing.to_string());
        self.bar.inc(1);
        if self.bar.is_hidden() && self.total >= 4 && done.is_multiple_of(self.total / 4) {
            let elapsed = self.bar.elapsed().as_secs_f64();
            eprintln!(
                "seeds {done}/{}  runs with violations {failing}  {elapsed:.0}s",
                self.total
            );
        }
    }

    fn finish(&self) {
        self.bar.finish();
    }
}

/// Shrinks a failing run: fewer orders, fewer faults, no named crash, as long as it still
/// fails with the same invariant (or panics).
pub fn shrink(params: &RunParams, target: &SeedResult) -> RunParams {
    let still_fails = |candidate: &RunParams| {
        let (result, _) = run_guarded(candidate);
        match (&target.panic, &result.panic) {
            (Some(_), Some(_)) => true,
            (None, None) => (target.intolerable())
                .or_else(|| target.invariants.first().copied())
                .is_some_and(|i| result.invariants.contains(&i)),
            _ => false,
        }
    };
    let mut best = params.clone();
    for _ in 0..12 {
        let mut candidates = Vec::new();
        if best.orders > 1 {
            candidates.push(RunParams {
                orders: (best.orders / 2).max(1),
                ..best.clone()
            });
        }
        if best.faults > 0 {
            candidates.push(RunParams {
                faults: best.faults / 2,
                ..best.clone()
            });
        }
        match candidates
            .into_iter()
            .find(|candidate| still_fails(candidate))
        {
            Some(smaller) => best = smaller,
            None => break,
        }
    }
    best
}

/// One row of the explorer matrix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    pub seeds: usize,
    pub failing_seeds: usize,
    pub seeds_with_loss: usize,
    /// Converged seeds that lost in the broker only.
    pub seeds_broker_loss: usize,
    /// Converged seeds that lost in the consumer.
    pub seeds_consumer_loss: usize,
    /// Seeds that broke an invariant the scenario's planted bug declares.
    pub seeds_caught: usize,
    /// Seeds that broke more than the scenario allows ([`SeedResult::beyond_expectation`]).
    pub seeds_beyond: usize,
    pub lost: usize,
    /// Acknowledged events absent from the final log.
    pub broker_lost: usize,
    /// Records of the final log neither applied nor dead-lettered.
    pub consumer_lost: usize,
    pub redeliveries: usize,
    pub events: usize,
    /// Index (1-based) of the first seed that broke a declared invariant (planted bugs), or
    /// that the checker flagged at all (other scenarios).
    pub first_caught: Option<usize>,
    pub invariants: BTreeMap<Invariant, usize>,
    pub panics: usize,
}

/// The standard scenario's seeds of one progress mode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModeRow {
    pub seeds: usize,
    pub sent: usize,
    pub redeliveries: usize,
    pub redone: usize,
}

/// The standard scenario's redeliveries per progress mode (its seeds draw the mode, so both
/// modes meet the same faults).
pub fn by_progress(results: &[SeedResult]) -> BTreeMap<ProgressMode, ModeRow> {
    let mut rows: BTreeMap<ProgressMode, ModeRow> = BTreeMap::new();
    for result in results.iter().filter(|r| r.scenario == Scenario::Standard) {
        let row = rows.entry(result.progress).or_default();
        row.seeds += 1;
        row.sent += result.sent;
        row.redeliveries += result.redeliveries;
        row.redone += result.redone;
    }
    rows
}

/// Aggregates results per scenario; every scenario of `planned` has a row, seeds or not.
pub fn matrix(planned: &[Scenario], results: &[SeedResult]) -> BTreeMap<Scenario, Row> {
    let mut rows: BTreeMap<Scenario, Row> = planned.iter().map(|s| (*s, Row::default())).collect();
    for result in results {
        let row = rows.entry(result.scenario).or_default();
        row.seeds += 1;
        row.lost += result.lost;
        row.redeliveries += result.redeliveries;
        row.events += result.sent;
        row.seeds_with_loss += usize::from(result.lost > 0);
        row.seeds_broker_loss += usize::from(result.loss_at(LossAt::Broker));
        row.seeds_consumer_loss += usize::from(result.loss_at(LossAt::Consumer));
        let caught = match result.scenario.expectation() {
            Expectation::Caught(declared) => result.invariants.iter().any(|i| declared.contains(i)),
            _ => result.failed(),
        };
        row.seeds_caught += usize::from(caught);
        if caught {
            row.first_caught.get_or_insert(row.seeds);
        }
        if result.failed() {
            row.failing_seeds += 1;
        }
        row.seeds_beyond += usize::from(result.beyond_expectation());
        if result.panic.is_some() {
            row.panics += 1;
        }
        for invariant in &result.invariants {
            *row.invariants.entry(*invariant).or_default() += 1;
        }
    }
    rows
}

/// For every declared reach point, how many runs took it (zero: never reached); points taken
/// that no one declared are listed too, so that a typo shows.
pub fn reach_table(results: &[SeedResult]) -> BTreeMap<String, usize> {
    let mut table: BTreeMap<String, usize> = crate::reach::declared()
        .into_iter()
        .map(|(name, _)| (name.to_owned(), 0))
        .collect();
    for result in results {
        for point in &result.reached {
            *table.entry(point.clone()).or_default() += 1;
        }
    }
    table
}

/// Whether a sweep must reach every declared point: it does when it covers every scenario.
pub fn must_reach_all(planned: &[Scenario]) -> bool {
    Scenario::all()
        .iter()
        .all(|scenario| planned.contains(scenario))
}

/// Whether a row meets its scenario's expectation. A scenario that ran no seed meets none.
pub fn meets(scenario: Scenario, row: &Row) -> bool {
    if row.panics > 0 || row.seeds == 0 {
        return false;
    }
    let within = row.seeds_beyond == 0;
    match scenario.expectation() {
        Expectation::Safe => row.failing_seeds == 0,
        Expectation::LossShown(LossAt::Broker) => {
            within && row.seeds_broker_loss > 0 && row.seeds_consumer_loss == 0
        }
        Expectation::LossShown(LossAt::Consumer) => within && row.seeds_consumer_loss > 0,
        Expectation::Caught(_) => row.seeds_caught > 0,
        Expectation::Repaired => within && row.seeds_with_loss == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(scenario: Scenario, invariants: Vec<Invariant>) -> SeedResult {
        SeedResult {
            scenario,
            seed: 1,
            invariants,
            lost: 0,
            broker_lost: 0,
            consumer_lost: 0,
            redeliveries: 0,
            progress: ProgressMode::Kafka,
            redone: 0,
            sent: 10,
            steps: 10,
            faults: 1,
            virtual_ms: 1,
            panic: None,
            reached: Vec::new(),
            replay: String::new(),
        }
    }

    #[test]
    fn a_planned_scenario_without_seeds_meets_nothing() {
        let planned = [Scenario::Standard, Scenario::FireAndForget];
        let rows = matrix(&planned, &[result(Scenario::Standard, vec![])]);
        assert!(meets(Scenario::Standard, &rows[&Scenario::Standard]));
        assert!(!meets(
            Scenario::FireAndForget,
            &rows[&Scenario::FireAndForget]
        ));
    }

    #[test]
    fn a_planted_bug_is_caught_only_by_what_it_declares() {
        let bug = Scenario::Planted(holdfast::testkit::planted::PlantedBug::NoUniqueKey);
        let stalled = [result(bug, vec![Invariant::Liveness])];
        assert!(!meets(bug, &matrix(&[bug], &stalled)[&bug]));
        let doubled = [result(bug, vec![Invariant::Duplicate])];
        assert!(meets(bug, &matrix(&[bug], &doubled)[&bug]));
    }

    #[test]
    fn loss_counts_only_where_the_window_is_and_only_once_converged() {
        let window = Scenario::FireAndForget;
        let mut stalled = result(window, vec![Invariant::Liveness, Invariant::BrokerLoss]);
        stalled.broker_lost = 3;
        assert!(!meets(
            window,
            &matrix(&[window], &[stalled.clone()])[&window]
        ));
        let mut located = stalled.clone();
        located.invariants = vec![Invariant::BrokerLoss];
        assert!(meets(
            window,
            &matrix(&[window], &[located.clone()])[&window]
        ));
        let mut consumer_too = located;
        consumer_too.consumer_lost = 1;
        assert!(!meets(window, &matrix(&[window], &[consumer_too])[&window]));
    }

    /// Goal: a loss window or a repair tolerates only what it entails; anything else (a
    /// duplicate, a wrong row, a stall, a panic) fails the scenario as it fails a safe one.
    /// Method: per scenario, one seed showing what the scenario must show, then the same
    /// with one more invariant or a panic.
    #[test]
    fn every_expectation_refuses_what_its_window_does_not_entail() {
        let meets_with = |scenario: Scenario, seeds: &[SeedResult]| {
            meets(scenario, &matrix(&[scenario], seeds)[&scenario])
        };
        let broker = {
            let mut seed = result(Scenario::FireAndForget, vec![Invariant::BrokerLoss]);
            seed.broker_lost = 2;
            seed
        };
        let consumer = {
            let mut seed = result(Scenario::AutoCommit, vec![Invariant::ConsumerLoss]);
            seed.consumer_lost = 2;
            seed
        };
        let repaired = result(
            Scenario::CompensatedAutoCommit,
            vec![
                Invariant::CommitPastUnfinished,
                Invariant::DeadLetteredValid,
            ],
        );
        let standard = result(Scenario::Standard, vec![]);
        for (shown, beyond) in [
            (broker, Invariant::Duplicate),
            (consumer, Invariant::BrokerLoss),
            (repaired, Invariant::RowMismatch),
            (standard, Invariant::CommitBackwards),
        ] {
            let scenario = shown.scenario;
            assert!(
                meets_with(scenario, std::slice::from_ref(&shown)),
                "{scenario}"
            );
            for extra in [beyond, Invariant::Liveness] {
                let mut broke_more = shown.clone();
                broke_more.invariants.push(extra);
                assert!(broke_more.beyond_expectation(), "{scenario} {extra}");
                assert_eq!(broke_more.intolerable(), Some(extra));
                assert!(
                    !meets_with(scenario, &[shown.clone(), broke_more]),
                    "{scenario} tolerated {extra}"
                );
            }
            let mut panicked = shown.clone();
            panicked.panic = Some("boom".into());
            assert!(panicked.beyond_expectation());
            assert!(!meets_with(scenario, &[shown, panicked]), "{scenario}");
        }
    }

    #[test]
    fn every_planted_bug_brings_its_control() {
        let bug = holdfast::testkit::planted::PlantedBug::MergeByArrival;
        let planned = with_controls(&[Scenario::Planted(bug)]);
        assert_eq!(
            planned,
            vec![Scenario::Planted(bug), Scenario::Control(bug)]
        );
    }

    #[test]
    fn plan_has_exactly_the_requested_seeds_and_shards_partition_it() {
        let all = Scenario::all();
        assert_eq!(
            plan(&all, 2000, 1, (0, 1), Overrides::default(), Size::Mixed).len(),
            2000
        );
        let shards: usize = (0..3)
            .map(|k| plan(&all, 2000, 1, (k, 3), Overrides::default(), Size::Mixed).len())
            .sum();
        assert_eq!(shards, 2000);
        let only = plan(
            &[Scenario::AutoCommit],
            10,
            5,
            (0, 1),
            Overrides {
                orders: Some(3),
                faults: Some(1),
                progress: Some(ProgressMode::Store),
            },
            Size::Mixed,
        );
        assert_eq!(only.len(), 10);
        assert!(only.iter().all(|p| p.orders == 3
            && p.faults == 1
            && p.progress == ProgressMode::Store
            && p.seed >= 5));
    }
}

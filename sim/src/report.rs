//! Printing and JSON for sweeps and single runs.

use crate::checker::Invariant;
use crate::runner::RunOutcome;
use crate::scenario::{Expectation, LossAt, Scenario};
use crate::sweep::{matrix, meets, must_reach_all, reach_table, Row, SeedResult};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The commit the simulator was built from.
pub const COMMIT: &str = env!("HOLDFAST_COMMIT");

/// The timeline page of one run (see [`crate::timeline`]).
pub fn timeline(outcome: &RunOutcome) -> String {
    let title = format!(
        "holdfast-sim seed {} ({}) at commit {COMMIT}",
        outcome.params.seed,
        outcome.params.scenario.name()
    );
    crate::timeline::render(&crate::timeline::Page {
        title: &title,
        replay: &outcome.params.replay_command(),
        world: &format!("{}; {}", outcome.params, outcome.world),
        virtual_ms: outcome.virtual_ms,
        steps: &outcome.history,
        faults: &outcome.faults,
        violations: &outcome.verdict.violations,
    })
}

/// The full report of one run: parameters first, then faults, steps, the verdict, and on
/// failure the violated invariants with their records and the replay command.
pub fn single(outcome: &RunOutcome, trace_lines: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "commit {COMMIT}");
    let _ = writeln!(out, "{}", outcome.params);
    let _ = writeln!(out, "{}", outcome.world);
    let _ = writeln!(
        out,
        "faults injected {}; faults and model events ({}):",
        outcome.faults_injected,
        outcome.faults.len()
    );
    for fault in &outcome.faults {
        let _ = writeln!(out, "  {fault}");
    }
    let _ = writeln!(
        out,
        "steps {}  messages sent {}  redeliveries {}  compensator re-sends {}  unseen {}  virtual time {}ms  trace hash {:016x}",
        outcome.steps,
        outcome.sent,
        outcome.redeliveries,
        outcome.resent,
        outcome.verdict.unseen,
        outcome.virtual_ms,
        outcome.fingerprint
    );
    // The store against the reference model only; the run's verdict, which also judges the
    // logs, the commits and liveness, is the PASSED or VIOLATION lines at the end.
    let _ = writeln!(out, "the store against the reference model:");
    let _ = writeln!(out, "{}", outcome.verdict.report);
    if trace_lines > 0 {
        let shown = trace_lines.min(outcome.history.len());
        let _ = writeln!(
            out,
            "trace (last {shown} of {} steps):",
            outcome.history.len()
        );
        for line in crate::history::render(&outcome.history, trace_lines).lines() {
            let _ = writeln!(out, "{line}");
        }
    }
    if outcome.verdict.passed() {
        let _ = writeln!(out, "PASSED");
    } else {
        for violation in &outcome.verdict.violations {
            let _ = writeln!(
                out,
                "VIOLATION {}: {}",
                violation.invariant, violation.detail
            );
        }
        let _ = writeln!(out, "replay: {}", outcome.params.replay_command());
    }
    out
}

/// The explorer matrix and the summary of a sweep of the `planned` scenarios. Returns the
/// text and whether every scenario met its expectation (one that ran no seed did not).
pub fn sweep(planned: &[Scenario], results: &[SeedResult], wall_s: f64) -> (String, bool) {
    let rows = matrix(planned, results);
    let mut out = String::new();
    let mut all_met = write_matrix(&mut out, &rows);
    write_planted(&mut out, &rows);
    write_progress_modes(&mut out, results);
    all_met &= write_reach(&mut out, planned, results);
    let failing = write_failing(&mut out, results);
    let events: usize = results.iter().map(|r| r.sent).sum();
    let faults: usize = results.iter().map(|r| r.faults).sum();
    let violating = results.iter().filter(|r| r.failed()).count();
    let _ = writeln!(
        out,
        "\nsummary: {} seeds, {} simulated events, {} faults injected, {} runs with violations ({} beyond what their scenario allows), wall {:.1}s, {:.0} seeds/min",
        results.len(),
        events,
        faults,
        violating,
        failing,
        wall_s,
        results.len() as f64 / wall_s.max(1e-9) * 60.0
    );
    let _ = writeln!(
        out,
        "verdict: {}",
        if all_met {
            "every expectation met"
        } else {
            "EXPECTATIONS UNMET"
        }
    );
    (out, all_met)
}

/// The standard scenario's redeliveries by progress mode.
fn write_progress_modes(out: &mut String, results: &[SeedResult]) {
    let rows = crate::sweep::by_progress(results);
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nprogress modes (standard scenario): redelivered records, and those processed again\n  {:<8} {:>6} {:>9} {:>9} {:>9} {:>14}",
        "mode", "seeds", "sent", "redeliv", "redone", "redone/1000"
    );
    for (mode, row) in rows {
        let _ = writeln!(
            out,
            "  {:<8} {:>6} {:>9} {:>9} {:>9} {:>14.1}",
            mode.to_string(),
            row.seeds,
            row.sent,
            row.redeliveries,
            row.redone,
            row.redone as f64 * 1000.0 / row.sent.max(1) as f64
        );
    }
}

/// One line per scenario with its verdict; returns whether every scenario met its
/// expectation.
fn write_matrix(out: &mut String, rows: &BTreeMap<Scenario, Row>) -> bool {
    let _ = writeln!(out, "commit {COMMIT}");
    let _ = writeln!(
        out,
        "{:<36} {:<46} {:>6} {:>9} {:>6} {:>8} {:>8}  {:<11} verdict",
        "scenario", "configuration", "seeds", "w/ loss", "lost", "redeliv", "flagged", "expected"
    );
    let mut all_met = true;
    for (scenario, row) in rows {
        let met = meets(*scenario, row);
        all_met &= met;
        let expected = expected_label(*scenario);
        let _ = writeln!(
            out,
            "{:<36} {:<46} {:>6} {:>9} {:>6} {:>8} {:>8}  {:<11} {}",
            scenario.name(),
            scenario.describe(),
            row.seeds,
            row.seeds_with_loss,
            row.lost,
            row.redeliveries,
            row.failing_seeds,
            expected,
            if met { "ok" } else { "UNMET" }
        );
    }
    all_met
}

/// What a scenario's row is expected to show, in a few words.
pub fn expected_label(scenario: Scenario) -> &'static str {
    match scenario.expectation() {
        Expectation::Safe => "no loss",
        Expectation::LossShown(LossAt::Broker) => "broker loss",
        Expectation::LossShown(LossAt::Consumer) => "cons. loss",
        Expectation::Caught(_) => "caught",
        Expectation::Repaired => "repaired",
    }
}

/// Per planted bug: the first seed that caught it, and what it broke.
fn write_planted(out: &mut String, rows: &BTreeMap<Scenario, Row>) {
    let _ = writeln!(out, "\nplanted bugs, seeds to detection:");
    for (scenario, row) in rows
        .iter()
        .filter(|(s, _)| matches!(s, Scenario::Planted(_) | Scenario::AutoCommit))
    {
        let invariants: Vec<String> = row
            .invariants
            .iter()
            .map(|(i, n)| format!("{i} x{n}"))
            .collect();
        let declared = match scenario.expectation() {
            Expectation::Caught(declared) => names(declared),
            _ => "any".into(),
        };
        let _ = writeln!(
            out,
            "  {:<36} {}  (must break: {declared}; broke: {})",
            scenario.name(),
            row.first_caught
                .map_or("NOT CAUGHT".to_string(), |n| format!("caught at seed #{n}")),
            invariants.join(", ")
        );
    }
}

/// The first ten runs that broke more than their scenario allows (any violation of a safe
/// scenario; under a loss window, what the window does not entail), each with its replay
/// command; returns how many there are.
fn write_failing(out: &mut String, results: &[SeedResult]) -> usize {
    let failing: Vec<&SeedResult> = results.iter().filter(|r| r.beyond_expectation()).collect();
    if !failing.is_empty() {
        let _ = writeln!(out, "\nviolations beyond what their scenario allows:");
        for result in failing.iter().take(10) {
            let what = result
                .panic
                .clone()
                .unwrap_or_else(|| names(&result.invariants));
            let _ = writeln!(
                out,
                "  seed {} {}: {}\n    replay: {}",
                result.seed, result.scenario, what, result.replay
            );
        }
    }
    failing.len()
}

/// The reach table: per declared point, how many runs took it. Returns false when the sweep
/// covers every scenario and some point was never reached.
fn write_reach(out: &mut String, planned: &[Scenario], results: &[SeedResult]) -> bool {
    let table = reach_table(results);
    let required = must_reach_all(planned);
    let unreached: Vec<&String> = table
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(p, _)| p)
        .collect();
    let _ = writeln!(
        out,
        "\nreach points, runs that took each ({} of {} reached{}):",
        table.len() - unreached.len(),
        table.len(),
        if required { "; every one required" } else { "" }
    );
    let declared = crate::reach::declared();
    for (point, runs) in &table {
        let meaning = declared
            .iter()
            .find(|(name, _)| name == point)
            .map_or("(not declared)", |(_, meaning)| meaning);
        let mark = if *runs == 0 { "UNREACHED" } else { "" };
        let _ = writeln!(out, "  {point:<40} {runs:>6}  {mark:<9} {meaning}");
    }
    !required || unreached.is_empty()
}

fn names(invariants: &[Invariant]) -> String {
    invariants
        .iter()
        .map(|i| i.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A sweep as JSON: the commit, the wall time, the scenarios planned and every seed's result.
#[derive(Serialize, Deserialize)]
pub struct SweepFile {
    #[serde(default)]
    pub commit: String,
    #[serde(default)]
    pub wall_s: f64,
    #[serde(rename = "scenarios")]
    pub planned: Vec<Scenario>,
    #[serde(rename = "seeds")]
    pub results: Vec<SeedResult>,
}

/// A sweep as JSON.
pub fn to_json(
    planned: &[Scenario],
    results: &[SeedResult],
    wall_s: f64,
) -> Result<String, String> {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        commit: &'a str,
        wall_s: f64,
        scenarios: &'a [Scenario],
        seeds: &'a [SeedResult],
    }
    let file = Borrowed {
        commit: COMMIT,
        wall_s,
        scenarios: planned,
        seeds: results,
    };
    serde_json::to_string_pretty(&file).map_err(|error| error.to_string())
}

/// Reads a sweep back from JSON (for `--merge`).
pub fn from_json(text: &str) -> Result<SweepFile, String> {
    serde_json::from_str(text).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast::testkit::planted::PlantedBug;

    #[test]
    fn a_sweep_reads_back_as_written() {
        let planned = [
            Scenario::Standard,
            Scenario::Control(PlantedBug::NoUniqueKey),
        ];
        let result = SeedResult {
            scenario: planned[1],
            seed: 7,
            invariants: vec![Invariant::Duplicate],
            lost: 1,
            broker_lost: 2,
            consumer_lost: 3,
            redeliveries: 4,
            progress: holdfast::pipeline::ProgressMode::Store,
            redone: 1,
            sent: 5,
            steps: 6,
            faults: 8,
            virtual_ms: 9,
            panic: Some("boom".into()),
            reached: vec!["fault.clog".into()],
            replay: "cargo sim --seed 7".into(),
        };
        let text = to_json(&planned, std::slice::from_ref(&result), 1.5).unwrap();
        let file = from_json(&text).unwrap();
        assert_eq!(file.planned, planned);
        assert_eq!(file.wall_s, 1.5);
        assert_eq!(file.commit, COMMIT);
        assert_eq!(to_json(&file.planned, &file.results, 1.5).unwrap(), text);
    }

    #[test]
    fn an_unknown_scenario_or_invariant_is_refused_by_name() {
        let error = from_json(r#"{"scenarios": ["nope"], "seeds": []}"#).err();
        assert!(error.is_some_and(|e| e.contains("unknown scenario `nope`")));
        let seed = r#"{"scenario": "standard", "seed": 1, "invariants": ["nope"], "lost": 0,
            "broker_lost": 0, "consumer_lost": 0, "redeliveries": 0, "sent": 0, "steps": 0,
            "faults": 0, "virtual_ms": 0, "panic": null, "reached": [], "replay": ""}"#;
        let text = format!(r#"{{"scenarios": ["standard"], "seeds": [{seed}]}}"#);
        let error = from_json(&text).err();
        assert!(error.is_some_and(|e| e.contains("unknown invariant `nope`")));
    }
}

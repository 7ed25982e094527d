//! Command-line options of `cargo sim`.

use crate::params::{Overrides, Size};
use crate::scenario::Scenario;
use clap::{CommandFactory, Parser};
use holdfast::pipeline::ProgressMode;

/// What `cargo sim` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Replay exactly one seed and print its trace.
    pub seed: Option<u64>,
    /// Seeds in a sweep, spread over the scenarios.
    pub seeds: u64,
    pub first_seed: u64,
    /// Only these scenarios (default: all).
    pub scenarios: Vec<Scenario>,
    /// Overrides of the derived parameters (shrunk replays use them).
    pub orders: Option<usize>,
    pub faults: Option<usize>,
    pub progress: Option<ProgressMode>,
    /// The size distribution of the seeds.
    pub size: Size,
    /// Run only seeds whose index is `shard.0` modulo `shard.1`.
    pub shard: (u64, u64),
    pub json: Option<String>,
    /// Merge these JSON reports instead of running.
    pub merge: Vec<String>,
    pub jobs: Option<usize>,
    /// Run a seed twice and compare trace fingerprints.
    pub check_determinism: bool,
    /// Trace lines a replay prints (the last ones).
    pub trace_lines: usize,
    /// Where a replay writes its timeline page, or a sweep its explorer page.
    pub html: Option<String>,
}

impl Options {
    /// The derived parameters this command line pins.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            orders: self.orders,
            faults: self.faults,
            progress: self.progress,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: None,
            seeds: 2000,
            first_seed: 1,
            scenarios: Scenario::all(),
            orders: None,
            faults: None,
            progress: None,
            size: Size::Mixed,
            shard: (0, 1),
            json: None,
            merge: Vec::new(),
            jobs: None,
            check_determinism: false,
            trace_lines: 40,
            html: None,
        }
    }
}

/// The seeded simulation suite: with no options, a sweep of 2000 seeds over every scenario,
/// printing the explorer matrix, the planted bugs' detection, the reach table and a summary.
#[derive(Debug, Parser)]
#[command(name = "cargo sim", after_help = scenarios_help())]
struct SimArgs {
    /// Replay one seed (of one --scenario, default standard) and print its trace.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Seeds in the sweep.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    seeds: u64,
    /// The sweep's first seed.
    #[arg(long, value_name = "N", default_value_t = 1)]
    first_seed: u64,
    /// Only this scenario (repeatable; `all` for every one).
    #[arg(long = "scenario", value_name = "NAME", value_parser = scenarios)]
    scenarios: Vec<Vec<Scenario>>,
    /// Override the derived number of orders.
    #[arg(long, value_name = "N")]
    orders: Option<usize>,
    /// Override the derived number of faults.
    #[arg(long, value_name = "N")]
    faults: Option<usize>,
    /// Where consumers keep progress: kafka (commit metadata) or store (the database, in the
    /// effects' transaction). Default: half the seeds each, drawn from the seed.
    #[arg(long, value_name = "MODE")]
    progress: Option<ProgressMode>,
    /// Seed sizes: mixed (1 to 600 orders), large (300 to 1,000), recorded (10 to 60, as the
    /// regression seeds were recorded).
    #[arg(long, value_name = "NAME", default_value = "mixed", value_parser = size)]
    size: Size,
    /// Run only the K-th of N slices of the sweep.
    #[arg(long, value_name = "K/N", default_value = "0/1", value_parser = shard)]
    shard: (u64, u64),
    /// Write a machine-readable report.
    #[arg(long, value_name = "PATH")]
    json: Option<String>,
    /// Merge sharded JSON reports and print the summary instead of running.
    #[arg(long, value_name = "REPORT", num_args = 1..)]
    merge: Vec<String>,
    /// Worker threads (default: every core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    jobs: Option<u64>,
    /// Run the seed twice and compare trace hashes.
    #[arg(long)]
    check_determinism: bool,
    /// Trace lines a replay prints (the last ones).
    #[arg(long = "trace", value_name = "N", default_value_t = 40)]
    trace_lines: usize,
    /// Write a self-contained HTML page: with --seed, the run's timeline (one lane per
    /// process, the steps a violation names ringed); of a sweep, the explorer matrix and the
    /// flagged seeds with their replay commands.
    #[arg(long, value_name = "FILE", conflicts_with = "merge")]
    html: Option<String>,
}

fn scenarios_help() -> String {
    format!("Scenarios: {}", scenario_names())
}

fn scenarios(name: &str) -> Result<Vec<Scenario>, String> {
    if name == "all" {
        return Ok(Scenario::all());
    }
    Scenario::parse(name)
        .map(|scenario| vec![scenario])
        .ok_or_else(|| format!("unknown scenario `{name}`; known: {}", scenario_names()))
}

fn size(name: &str) -> Result<Size, String> {
    Size::parse(name).ok_or_else(|| format!("unknown size `{name}`; known: mixed, large, recorded"))
}

fn shard(text: &str) -> Result<(u64, u64), String> {
    let parsed = text
        .split_once('/')
        .and_then(|(k, n)| Some((k.parse::<u64>().ok()?, n.parse::<u64>().ok()?)));
    match parsed {
        Some((k, n)) if k < n => Ok((k, n)),
        _ => Err(format!("expected K/N with 0 <= K < N, got `{text}`")),
    }
}

/// Parses the arguments (without the program name). `--help` comes back as an error whose
/// exit code is 0 (`clap::Error::exit` prints it).
pub fn parse(args: &[String]) -> Result<Options, clap::Error> {
    // `cargo sim -- --seed 1` passes the separator through.
    let args = args.strip_prefix(&["--".to_owned()]).unwrap_or(args);
    let parsed = SimArgs::try_parse_from(
        std::iter::once("cargo sim").chain(args.iter().map(String::as_str)),
    )?;
    let mut scenarios: Vec<Scenario> = parsed.scenarios.into_iter().flatten().collect();
    scenarios.dedup();
    if parsed.seed.is_some() && scenarios.len() > 1 {
        let message = "--seed replays one run: give at most one --scenario";
        return Err(SimArgs::command().error(clap::error::ErrorKind::ArgumentConflict, message));
    }
    if scenarios.is_empty() {
        scenarios = if parsed.seed.is_some() {
            vec![Scenario::Standard]
        } else {
            Scenario::all()
        };
    }
    Ok(Options {
        seed: parsed.seed,
        seeds: parsed.seeds,
        first_seed: parsed.first_seed,
        scenarios,
        orders: parsed.orders,
        faults: parsed.faults,
        progress: parsed.progress,
        size: parsed.size,
        shard: parsed.shard,
        json: parsed.json,
        merge: parsed.merge,
        jobs: parsed.jobs.map(|jobs| jobs as usize),
        check_determinism: parsed.check_determinism,
        trace_lines: parsed.trace_lines,
        html: parsed.html,
    })
}

pub fn scenario_names() -> String {
    Scenario::all()
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn defaults_sweep_every_scenario() {
        let options = parse(&[]).unwrap();
        assert_eq!(options.seeds, 2000);
        assert_eq!(options.scenarios, Scenario::all());
        assert_eq!(options.shard, (0, 1));
    }

    #[test]
    fn replay_with_overrides() {
        let options = parse(&args(
            "--seed 42 --scenario planted-no-unique-key --orders 5 --faults 1",
        ))
        .unwrap();
        assert_eq!(options.seed, Some(42));
        assert_eq!(
            options.scenarios,
            vec![Scenario::Planted(
                holdfast::testkit::planted::PlantedBug::NoUniqueKey
            )]
        );
        assert_eq!((options.orders, options.faults), (Some(5), Some(1)));
        assert_eq!(
            parse(&args("--seed 3")).unwrap().scenarios,
            vec![Scenario::Standard]
        );
    }

    #[test]
    fn shards_and_merges() {
        assert_eq!(parse(&args("--shard 2/4")).unwrap().shard, (2, 4));
        assert!(parse(&args("--shard 4/4")).is_err());
        assert!(parse(&args("--shard x")).is_err());
        assert_eq!(
            parse(&args("--merge a.json b.json")).unwrap().merge,
            vec!["a.json", "b.json"]
        );
    }

    #[test]
    fn refuses_bad_input_naming_the_flag() {
        for (line, named) in [
            ("--seeds", "--seeds"),
            ("--seeds many", "--seeds"),
            ("--scenario nope", "unknown scenario"),
            ("--frobnicate", "--frobnicate"),
            ("--jobs 0", "--jobs"),
            ("--seed 1 --scenario all", "at most one --scenario"),
            ("--html t.html --merge a.json", "--merge"),
        ] {
            let error = parse(&args(line)).unwrap_err().to_string();
            assert!(error.contains(named), "{line}: {error}");
        }
        let help = parse(&args("--help")).unwrap_err();
        assert_eq!(help.exit_code(), 0);
        assert!(help.to_string().contains("planted-no-unique-key"), "{help}");
        assert_eq!(parse(&args("-- --seeds 3")).unwrap().seeds, 3);
    }
}

//! Command-line options of `cargo sim`.

use crate::params::Size;
use crate::scenario::Scenario;

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
            size: Size::Mixed,
            shard: (0, 1),
            json: None,
            merge: Vec::new(),
            jobs: None,
            check_determinism: false,
            trace_lines: 40,
        }
    }
}

pub const USAGE: &str = "\
usage: cargo sim [options]
  (no options)            sweep 2000 seeds over every scenario, print the matrix and a summary
  --seed N                replay one seed (with --scenario) and print its trace
  --seeds N               seeds in the sweep (default 2000)
  --first-seed N          first seed of the sweep (default 1)
  --scenario NAME         only this scenario (repeatable; `all` for every one)
  --orders N              override the derived number of orders
  --faults N              override the derived number of faults
  --size NAME             seed sizes: mixed (default: 1 to 600 orders), large (300 to 1,000),
                          recorded (10 to 60, as the regression seeds were recorded)
  --shard K/N             run only the K-th of N slices of the sweep
  --json PATH             write a machine-readable report
  --merge A.json B.json   merge sharded JSON reports and print the summary
  --jobs N                worker threads (default: every core)
  --check-determinism     run the seed twice and compare trace hashes
  --trace N               trace lines a replay prints (default 40, the last ones)
scenarios: ";

/// Parses the arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut scenarios: Vec<Scenario> = Vec::new();
    let mut index = 0;
    let value = |index: &mut usize, flag: &str| -> Result<String, String> {
        *index += 1;
        args.get(*index)
            .cloned()
            .ok_or_else(|| format!("{flag} needs a value"))
    };
    let number = |text: String, flag: &str| -> Result<u64, String> {
        text.parse::<u64>()
            .map_err(|_| format!("{flag} expects a non-negative integer, got `{text}`"))
    };
    while index < args.len() {
        let flag = args[index].as_str();
        match flag {
            // `cargo sim -- --seed 1` passes the separator through.
            "--" => {}
            "--seed" => options.seed = Some(number(value(&mut index, flag)?, flag)?),
            "--seeds" => options.seeds = number(value(&mut index, flag)?, flag)?,
            "--first-seed" => options.first_seed = number(value(&mut index, flag)?, flag)?,
            "--orders" => options.orders = Some(number(value(&mut index, flag)?, flag)? as usize),
            "--faults" => options.faults = Some(number(value(&mut index, flag)?, flag)? as usize),
            "--jobs" => {
                options.jobs = Some(number(value(&mut index, flag)?, flag)?.max(1) as usize)
            }
            "--trace" => options.trace_lines = number(value(&mut index, flag)?, flag)? as usize,
            "--json" => options.json = Some(value(&mut index, flag)?),
            "--check-determinism" => options.check_determinism = true,
            "--size" => {
                let name = value(&mut index, flag)?;
                options.size = Size::parse(&name).ok_or_else(|| {
                    format!("unknown size `{name}`; known: mixed, large, recorded")
                })?;
            }
            "--scenario" => {
                let name = value(&mut index, flag)?;
                if name == "all" {
                    scenarios.extend(Scenario::all());
                } else {
                    scenarios.push(Scenario::parse(&name).ok_or_else(|| {
                        format!("unknown scenario `{name}`; known: {}", scenario_names())
                    })?);
                }
            }
            "--shard" => {
                let text = value(&mut index, flag)?;
                let (k, n) = text
                    .split_once('/')
                    .ok_or_else(|| format!("--shard expects K/N, got `{text}`"))?;
                let (k, n) = (number(k.to_owned(), flag)?, number(n.to_owned(), flag)?);
                if n == 0 || k >= n {
                    return Err(format!("--shard K/N needs 0 <= K < N, got {k}/{n}"));
                }
                options.shard = (k, n);
            }
            "--merge" => {
                while args
                    .get(index + 1)
                    .is_some_and(|next| !next.starts_with("--"))
                {
                    index += 1;
                    options.merge.push(args[index].clone());
                }
                if options.merge.is_empty() {
                    return Err("--merge needs at least one JSON report".into());
                }
            }
            "-h" | "--help" => return Err(format!("{USAGE}{}", scenario_names())),
            other => {
                return Err(format!(
                    "unknown option `{other}`\n{USAGE}{}",
                    scenario_names()
                ))
            }
        }
        index += 1;
    }
    if !scenarios.is_empty() {
        scenarios.dedup();
        options.scenarios = scenarios;
    }
    if options.seed.is_some() && options.scenarios.len() != 1 {
        options.scenarios = vec![Scenario::Standard];
        if scenarios_given(args) {
            return Err("--seed replays one run: give at most one --scenario".into());
        }
    }
    Ok(options)
}

fn scenarios_given(args: &[String]) -> bool {
    args.iter().filter(|arg| *arg == "--scenario").count() > 1
        || args.iter().any(|arg| arg == "all")
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
    fn refuses_bad_input_with_a_message() {
        assert!(parse(&args("--seeds"))
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse(&args("--seeds many"))
            .unwrap_err()
            .contains("non-negative integer"));
        assert!(parse(&args("--scenario nope"))
            .unwrap_err()
            .contains("unknown scenario"));
        assert!(parse(&args("--frobnicate"))
            .unwrap_err()
            .contains("unknown option"));
    }
}

//! `cargo sim`: the seeded simulation suite, holdfast's main job.
//!
//! With no options it sweeps 2000 seeds over every scenario on every core and prints the
//! explorer matrix and a summary; `--seed N` replays one run and prints its trace. See
//! `cargo sim -- --help` and docs/simulation.md.

#[cfg(madsim)]
fn main() {
    std::process::exit(app::main(std::env::args().skip(1).collect()));
}

#[cfg(not(madsim))]
fn main() {
    eprintln!(
        "holdfast-sim runs inside madsim's simulated runtime: use `cargo sim` (see README.md)"
    );
    std::process::exit(2);
}

#[cfg(madsim)]
mod app {
    use holdfast_sim::cli::{parse, Options};
    use holdfast_sim::params::RunParams;
    use holdfast_sim::report;
    use holdfast_sim::runner::run;
    use holdfast_sim::scenario::Scenario;
    use holdfast_sim::sweep::{execute, plan, run_guarded, shrink, with_controls, SeedResult};
    use std::time::Instant;

    pub fn main(args: Vec<String>) -> i32 {
        let options = match parse(&args) {
            Ok(options) => options,
            Err(error) => {
                // Help and version go to stdout with 0, errors to stderr with 2.
                let _ = error.print();
                return error.exit_code();
            }
        };
        if !options.merge.is_empty() {
            return merge(&options);
        }
        match options.seed {
            Some(seed) => replay(&options, seed),
            None => sweep(&options),
        }
    }

    fn params_of(options: &Options, seed: u64) -> RunParams {
        let mut params = RunParams::derive_sized(seed, options.scenarios[0], options.size);
        options.overrides().apply(&mut params);
        params
    }

    fn replay(options: &Options, seed: u64) -> i32 {
        let params = params_of(options, seed);
        let started = Instant::now();
        let outcome = run(&params);
        let wall = started.elapsed();
        print!("{}", report::single(&outcome, options.trace_lines));
        println!("wall time {:.3}s", wall.as_secs_f64());
        if let Some(path) = &options.html {
            if let Err(error) = std::fs::write(path, report::timeline(&outcome)) {
                eprintln!("cannot write {path}: {error}");
                return 2;
            }
            println!("timeline: {path}");
        }
        if options.check_determinism {
            let again = run(&params);
            if again.fingerprint != outcome.fingerprint {
                println!(
                    "NONDETERMINISM: trace hash {:016x} then {:016x}",
                    outcome.fingerprint, again.fingerprint
                );
                return 1;
            }
            println!("determinism: same trace hash on a second run");
        }
        if outcome.verdict.passed() {
            0
        } else {
            1
        }
    }

    fn sweep(options: &Options) -> i32 {
        let planned = with_controls(&options.scenarios);
        let runs = plan(
            &planned,
            options.seeds,
            options.first_seed,
            options.shard,
            options.overrides(),
            options.size,
        );
        let jobs = options
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        eprintln!(
            "commit {}: {} seeds over {} scenarios (shard {}/{}), {} threads",
            report::COMMIT,
            runs.len(),
            planned.len(),
            options.shard.0,
            options.shard.1,
            jobs
        );
        let started = Instant::now();
        let results = match execute(runs.clone(), jobs) {
            Ok(results) => results,
            Err(error) => {
                eprintln!("{error}");
                return 2;
            }
        };
        let wall_s = started.elapsed().as_secs_f64();
        let (text, all_met) = report::sweep(&planned, &results, wall_s);
        print!("{text}");
        shrink_first_beyond_expectation(&runs, &results);
        if let Err(error) = write_reports(options, &planned, &results, wall_s) {
            eprintln!("{error}");
            return 2;
        }
        if all_met {
            0
        } else {
            1
        }
    }

    /// Shrinks the first run that broke more than its scenario allows (that is a real bug)
    /// and prints it with its replay command.
    fn shrink_first_beyond_expectation(runs: &[RunParams], results: &[SeedResult]) {
        if let Some(failure) = results.iter().find(|r| r.beyond_expectation()) {
            if let Some(params) = runs
                .iter()
                .find(|p| p.seed == failure.seed && p.scenario == failure.scenario)
            {
                let smallest = shrink(params, failure);
                let (result, _) = run_guarded(&smallest);
                println!(
                    "shrunk: {smallest}\n  still failing: {}\n  replay: {}",
                    result.failed(),
                    smallest.replay_command()
                );
            }
        }
    }

    /// Writes the explorer page (`--html`) and the JSON report (`--json`) asked for.
    fn write_reports(
        options: &Options,
        planned: &[Scenario],
        results: &[SeedResult],
        wall_s: f64,
    ) -> Result<(), String> {
        if let Some(path) = &options.html {
            let page = holdfast_sim::explorer_page::render(planned, results, wall_s);
            std::fs::write(path, page).map_err(|error| format!("cannot write {path}: {error}"))?;
            println!("explorer page: {path}");
        }
        if let Some(path) = &options.json {
            report::to_json(planned, results, wall_s)
                .and_then(|text| std::fs::write(path, text).map_err(|e| e.to_string()))
                .map_err(|error| format!("cannot write {path}: {error}"))?;
        }
        Ok(())
    }

    fn merge(options: &Options) -> i32 {
        let mut all = Vec::new();
        let mut planned: Vec<Scenario> = Vec::new();
        let mut wall = 0.0f64;
        for path in &options.merge {
            let parsed = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| report::from_json(&text));
            match parsed {
                Ok(file) => {
                    all.extend(file.results);
                    for scenario in file.planned {
                        if !planned.contains(&scenario) {
                            planned.push(scenario);
                        }
                    }
                    wall = wall.max(file.wall_s);
                }
                Err(error) => {
                    eprintln!("cannot read report {path}: {error}");
                    return 2;
                }
            }
        }
        all.sort_by_key(|r| (r.scenario, r.seed));
        let (text, all_met) = report::sweep(&planned, &all, wall);
        print!("{text}");
        if all_met {
            0
        } else {
            1
        }
    }
}

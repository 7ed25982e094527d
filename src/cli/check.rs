//! `holdfast check`: the simulator's checker over a real run's recorded history (`--history`
//! of `holdfast run`), the final topic, PostgreSQL and the dead-letter topic, against the
//! ground truth `holdfast produce` wrote. Prints every violated invariant by name with the
//! records involved, and the verdict; exit 1 on any violation.

use super::args::CheckArgs;
use super::verify::final_state;
use super::{block_on, connect_store, reach_brokers, truth};
use holdfast::adapters::read_topic;
use holdfast::check::checker::{check, Convergence, Observed};
use holdfast::check::file::read_dir;
use holdfast::check::history::digest;
use holdfast::ports::Record;
use holdfast::verify::reference;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

pub fn main(args: CheckArgs) -> Result<ExitCode, String> {
    let resolved = args.verify.settings()?;
    let settings = resolved.kafka_settings()?;
    let wait = resolved.connect_timeout();
    let (topic, dead_letter_topic) = (resolved.topic(), resolved.dead_letter_topic());
    let postgres = resolved.postgres_url()?;
    let (truth, lines) = truth::read_with_lines(&args.verify.truth)?;
    // How often `holdfast produce` published each payload: once per line of its truth file.
    let mut publishes: BTreeMap<u64, u32> = BTreeMap::new();
    for line in &lines {
        *publishes
            .entry(digest(line.payload.as_bytes()))
            .or_insert(0) += 1;
    }
    let history = read_dir(&args.history)?;
    if history.is_empty() {
        return Err(format!("no history steps in {}", args.history.display()));
    }
    block_on(async move {
        let store = connect_store(&postgres, wait).await?;
        reach_brokers(&settings, Some(&topic), wait).await?;
        let (view, letters) = final_state(&store, &settings, &dead_letter_topic).await?;
        let records = read_topic(&settings, &topic, Duration::from_secs(120))
            .await
            .map_err(|error| format!("reading {topic}: {error}"))?;
        let mut logs: BTreeMap<i32, Vec<(i64, Record)>> = BTreeMap::new();
        for record in records {
            // Malformed input is not in the truth: it counts as published as often as it is
            // in the log, so duplicated appends are judged on the valid events only.
            if reference::read_payload(&record.payload).is_none() {
                *publishes.entry(digest(&record.payload)).or_insert(0) += 1;
            }
            logs.entry(record.partition)
                .or_default()
                .push((record.offset, record));
        }
        let steps = history.len();
        let observed = Observed {
            history,
            truth,
            store: view,
            dead_letters: letters,
            logs,
            online: Vec::new(),
            convergence: Convergence::Converged,
            publishes,
        };
        let verdict = check(&observed);
        println!("{steps} history steps from {}", args.history.display());
        println!("{}", verdict.report);
        println!("unseen (acknowledged, never polled): {}", verdict.unseen);
        for violation in &verdict.violations {
            println!("VIOLATION {}: {}", violation.invariant, violation.detail);
        }
        Ok(if verdict.passed() {
            println!("verdict: every invariant holds");
            ExitCode::SUCCESS
        } else {
            println!("verdict: VIOLATED");
            ExitCode::FAILURE
        })
    })
}

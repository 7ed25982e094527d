//! `holdfast check`: the simulator's checker over a real run's recorded history (`--history`
//! of `holdfast run`), the final topic, PostgreSQL and the dead-letter topic, against the
//! ground truth `holdfast produce` wrote. Prints every violated invariant by name with the
//! records involved, and the verdict; exit 1 on any violation.

use super::args::CheckArgs;
use super::truth::TruthLine;
use super::{block_on, connect_store, reach_brokers, truth};
use holdfast::adapters::read_topic;
use holdfast::check::checker::{check, Convergence, Observed};
use holdfast::check::history::digest;
use holdfast::check::record::read_dir;
use holdfast::ports::Record;
use holdfast::verify::{reference, StoreView};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

pub fn main(args: CheckArgs) -> Result<ExitCode, String> {
    let resolved = args.verify.settings()?;
    let settings = resolved.kafka_settings()?;
    let wait = resolved.connect_timeout();
    let (topic, dead_letter_topic) = (resolved.topic(), resolved.dead_letter_topic());
    let postgres = resolved.postgres_url()?;
    let truth = truth::read(&args.verify.truth)?;
    let mut publishes = truth_publishes(&args.verify.truth)?;
    let history = read_dir(&args.history)?;
    if history.is_empty() {
        return Err(format!("no history steps in {}", args.history.display()));
    }
    block_on(async move {
        let store = connect_store(&postgres, wait).await?;
        reach_brokers(&settings, Some(&topic), wait).await?;
        let view = StoreView {
            ledger: store.ledger().await.map_err(|e| e.to_string())?,
            rows: store.rows().await.map_err(|e| e.to_string())?,
        };
        let read = |name: String| {
            let settings = settings.clone();
            async move {
                read_topic(&settings, &name, Duration::from_secs(120))
                    .await
                    .map_err(|error| format!("reading {name}: {error}"))
            }
        };
        let letters: Vec<Vec<u8>> = read(dead_letter_topic.clone())
            .await?
            .into_iter()
            .map(|record| record.payload.to_vec())
            .collect();
        let mut logs: BTreeMap<i32, Vec<(i64, Record)>> = BTreeMap::new();
        for record in read(topic.clone()).await? {
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

/// How often `holdfast produce` published each payload: once per line of its truth file.
fn truth_publishes(path: &Path) -> Result<BTreeMap<u64, u32>, String> {
    let file = std::fs::File::open(path)
        .map_err(|error| format!("cannot open {}: {error}", path.display()))?;
    let mut publishes = BTreeMap::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|error| format!("{}:{}: {error}", path.display(), index + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let entry: TruthLine = serde_json::from_str(&line)
            .map_err(|error| format!("{}:{}: {error}", path.display(), index + 1))?;
        *publishes
            .entry(digest(entry.payload.as_bytes()))
            .or_insert(0) += 1;
    }
    Ok(publishes)
}

//! The checker over a benchmark run's recorded history: what `holdfast check` does for real
//! runs, in process (the bench keeps its truth in memory, not in a file).

use holdfast::adapters::kafka::{read_topic, KafkaSettings};
use holdfast::adapters::PostgresStore;
use holdfast::check::checker::{check, Convergence, Observed};
use holdfast::check::file::read_dir;
use holdfast::check::history::Step;
use holdfast::ports::Record;
use holdfast::verify::{GroundTruth, StoreView};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// What the run was judged against: its topic, the truth and every publish of the workload.
pub struct Judged<'a> {
    pub settings: &'a KafkaSettings,
    pub topic: &'a str,
    pub dead_letter_topic: &'a str,
    pub truth: &'a GroundTruth,
    /// How often each payload (by digest) was published.
    pub publishes: &'a BTreeMap<u64, u32>,
    /// The fill's sends, acknowledged where the broker said.
    pub sends: &'a [(u64, Step)],
}

/// Judges the histories in `dir` with the simulator's checker; panics on any violation.
/// Returns the number of steps judged.
pub async fn audit(judged: &Judged<'_>, store: &PostgresStore, dir: &Path) -> usize {
    let mut history = judged.sends.to_vec();
    history.extend(read_dir(dir).expect("a readable history"));
    let read = |topic: &str| {
        let topic = topic.to_owned();
        async move {
            read_topic(judged.settings, &topic, Duration::from_secs(120))
                .await
                .unwrap_or_else(|error| panic!("reading {topic}: {error}"))
        }
    };
    let mut logs: BTreeMap<i32, Vec<(i64, Record)>> = BTreeMap::new();
    for record in read(judged.topic).await {
        logs.entry(record.partition)
            .or_default()
            .push((record.offset, record));
    }
    let dead_letters = read(judged.dead_letter_topic).await;
    let steps = history.len();
    let observed = Observed {
        history,
        truth: judged.truth.clone(),
        store: StoreView {
            ledger: store.ledger().await.expect("ledger"),
            rows: store.rows().await.expect("rows"),
        },
        dead_letters: dead_letters
            .into_iter()
            .map(|r| r.payload.to_vec())
            .collect(),
        logs,
        online: Vec::new(),
        convergence: Convergence::Converged,
        publishes: judged.publishes.clone(),
    };
    let verdict = check(&observed);
    assert!(
        verdict.passed(),
        "the recorded history breaks invariants: {:?}",
        verdict.violations
    );
    steps
}

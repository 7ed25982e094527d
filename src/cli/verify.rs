//! `holdfast verify`: compares PostgreSQL with the ground truth `holdfast produce` wrote and
//! with the dead-letter topic; prints the report and fails when anything is missing, doubled,
//! invented or a row differs from the fold of its events.

use super::{block_on, kafka_settings, truth, Flags};
use holdfast::adapters::{read_topic, PostgresStore};
use holdfast::event::OrderEvent;
use holdfast::idempotency::IdempotencyKey;
use holdfast::verify::{verify, StoreView};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

pub const FLAGS: &[&str] = &["--truth", "--postgres", "--dlq"];

pub fn main(flags: Flags) -> Result<ExitCode, String> {
    let truth_path = PathBuf::from(flags.required("--truth")?);
    let postgres = flags.address("--postgres", "HOLDFAST_POSTGRES_URL")?;
    let settings = kafka_settings(&flags)?;
    let dead_letter_topic = flags.text("--dlq", "orders.dlq");
    let truth = truth::read(&truth_path)?;
    block_on(async move {
        let store = PostgresStore::connect(&postgres)
            .await
            .map_err(|error| error.to_string())?;
        let view = StoreView {
            applications: store.applications().await.map_err(|e| e.to_string())?,
            rows: store.rows().await.map_err(|e| e.to_string())?,
        };
        // Valid events that were dead-lettered (retries exhausted, or the compensator gave
        // up) are accounted for, not missing.
        let letters = read_topic(&settings, &dead_letter_topic, Duration::from_secs(60))
            .await
            .map_err(|error| error.to_string())?;
        let dead: BTreeSet<IdempotencyKey> = letters
            .iter()
            .filter_map(|record| OrderEvent::decode(&record.payload).ok())
            .map(|event| IdempotencyKey::of(&event))
            .collect();
        let report = verify(&truth, &view, &dead, &BTreeSet::new());
        println!(
            "{} dead letters read from {dead_letter_topic} ({} of valid events)",
            letters.len(),
            dead.len()
        );
        println!("{report}");
        println!(
            "conservation (acknowledged = applied + dead-lettered + pending): {}",
            if report.conservation_holds() {
                "holds"
            } else {
                "VIOLATED"
            }
        );
        Ok(if report.passed() && report.conservation_holds() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

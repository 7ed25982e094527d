//! `holdfast verify`: compares PostgreSQL with the ground truth `holdfast produce` wrote and
//! with the dead-letter topic; prints the report and fails when anything is missing, doubled,
//! invented or a row differs from the fold of its events.

use super::args::VerifyArgs;
use super::{block_on, connect_store, reach_brokers, truth};
use holdfast::adapters::{read_topic, KafkaSettings, PostgresStore};
use holdfast::verify::{reference, verify, StoreView};
use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

/// What a run left: the store's ledger and rows, and the dead-letter topic's payloads. A
/// valid event on the dead-letter topic is accounted for, not missing, but it is still a
/// failure: only malformed input may end there.
pub(super) async fn final_state(
    store: &PostgresStore,
    settings: &KafkaSettings,
    dead_letter_topic: &str,
) -> Result<(StoreView, Vec<Vec<u8>>), String> {
    let view = StoreView {
        ledger: store.ledger().await.map_err(|e| e.to_string())?,
        rows: store.rows().await.map_err(|e| e.to_string())?,
    };
    let letters: Vec<Vec<u8>> = read_topic(settings, dead_letter_topic, Duration::from_secs(60))
        .await
        .map_err(|error| format!("reading {dead_letter_topic}: {error}"))?
        .into_iter()
        .map(|record| record.payload.to_vec())
        .collect();
    Ok((view, letters))
}

pub fn main(args: VerifyArgs) -> Result<ExitCode, String> {
    let resolved = args.settings()?;
    let settings = resolved.kafka_settings()?;
    let wait = resolved.connect_timeout();
    let dead_letter_topic = resolved.dead_letter_topic();
    let postgres = resolved.postgres_url()?;
    let truth = truth::read(&args.truth)?;
    block_on(async move {
        let store = connect_store(&postgres, wait).await?;
        let reading = indicatif::ProgressBar::new_spinner();
        reading.set_message("reading the store and the dead-letter topic");
        reading.enable_steady_tick(Duration::from_millis(100));
        reach_brokers(&settings, Some(&dead_letter_topic), wait).await?;
        let (view, letters) = final_state(&store, &settings, &dead_letter_topic).await?;
        reading.finish_and_clear();
        let report = verify(&truth, &view, &letters, &BTreeSet::new());
        let valid = letters
            .iter()
            .filter(|payload| reference::read_payload(payload).is_some())
            .count();
        println!(
            "{} dead letters read from {dead_letter_topic} ({valid} of them valid events)",
            letters.len(),
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
        // `passed` includes conservation.
        Ok(if report.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

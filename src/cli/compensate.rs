//! `holdfast compensate`: the compensating consumer (its own group) on Kafka and PostgreSQL,
//! until SIGINT, SIGTERM or `--for-s` seconds; prints its report.

use super::args::CompensateArgs;
use super::{block_on, connect_store, reach_brokers, terminated};
use holdfast::adapters::{KafkaGroupOffsets, KafkaLog, KafkaPublisher};
use holdfast::check::file::Recorder;
use holdfast::check::record::{RecordingLog, RecordingPublisher};
use holdfast::pipeline::{Compensator, ShutdownTrigger};
use std::process::ExitCode;
use std::time::Duration;

pub fn main(args: CompensateArgs) -> Result<ExitCode, String> {
    let settings = args.settings()?;
    let kafka = settings.kafka_settings()?;
    let config = settings.compensator_config()?;
    let wait = settings.connect_timeout();
    let group = settings.compensator_group();
    let postgres = settings.postgres_url()?;
    let run_for = args.for_s;
    let history = args.history.clone();
    block_on(async move {
        let store = connect_store(&postgres, wait).await?;
        reach_brokers(&kafka, Some(&config.topic), wait).await?;
        let log =
            KafkaLog::connect(&kafka, &group, &config.topic).map_err(|error| error.to_string())?;
        let offsets =
            KafkaGroupOffsets::connect(&kafka, &config.topic).map_err(|error| error.to_string())?;
        let publisher = KafkaPublisher::connect(&kafka).map_err(|error| error.to_string())?;
        let (trigger, shutdown) = ShutdownTrigger::new();
        tokio::spawn(async move {
            match run_for {
                Some(seconds) => {
                    tokio::select! {
                        _ = terminated() => {}
                        _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
                    }
                }
                None => terminated().await,
            }
            trigger.trigger();
        });
        let report = match history {
            None => {
                Compensator::new(config, log, offsets, store, publisher)
                    .run(shutdown)
                    .await
            }
            Some(dir) => {
                let (recorder, writing) = Recorder::create(&dir, "compensate")
                    .map_err(|error| format!("history in {}: {error}", dir.display()))?;
                let recorder = recorder.without_commits();
                let log = RecordingLog {
                    inner: log,
                    sink: recorder.clone(),
                };
                let publisher = RecordingPublisher {
                    inner: publisher,
                    sink: recorder,
                };
                let report = Compensator::new(config, log, offsets, store, publisher)
                    .run(shutdown)
                    .await;
                let written = writing.finish().map_err(|error| error.to_string())?;
                tracing::info!(written, "history written");
                report
            }
        };
        println!(
            "compensator: confirmed {}, re-sent {}, dead-lettered {}, still pending {}",
            report.confirmed,
            report.resent,
            report.dead_lettered.len(),
            report.pending
        );
        for key in &report.dead_lettered {
            println!("  gave up on {key:?}");
        }
        Ok(ExitCode::SUCCESS)
    })
}

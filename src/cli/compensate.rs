//! `holdfast compensate`: the compensating consumer (its own group) on Kafka and PostgreSQL,
//! until SIGINT, SIGTERM or `--for-s` seconds; prints its report.

use super::{block_on, kafka_settings, terminated, Flags};
use holdfast::adapters::{KafkaGroupOffsets, KafkaLog, KafkaPublisher, PostgresStore};
use holdfast::pipeline::{Compensator, CompensatorConfig, ShutdownTrigger};
use std::process::ExitCode;
use std::time::Duration;

pub const FLAGS: &[&str] = &[
    "--group",
    "--main-group",
    "--postgres",
    "--dlq",
    "--delay-ms",
    "--check-ms",
    "--attempts",
    "--for-s",
];

pub fn main(flags: Flags) -> Result<ExitCode, String> {
    let settings = kafka_settings(&flags)?;
    let defaults = CompensatorConfig::default();
    let group = flags.text("--group", "holdfast-compensator");
    let config = CompensatorConfig {
        main_group: flags.text("--main-group", &defaults.main_group),
        topic: flags.text("--topic", &defaults.topic),
        dead_letter_topic: flags.text("--dlq", &defaults.dead_letter_topic),
        delay: Duration::from_millis(
            flags.number("--delay-ms", defaults.delay.as_millis() as u64)?,
        ),
        check_interval: Duration::from_millis(
            flags.number("--check-ms", defaults.check_interval.as_millis() as u64)?,
        ),
        attempts_max: u32::try_from(flags.number("--attempts", u64::from(defaults.attempts_max))?)
            .map_err(|_| "--attempts is too large".to_owned())?,
        ..defaults
    };
    if group == config.main_group {
        return Err("the compensator needs its own --group, not the main group".into());
    }
    let run_for = flags
        .get("--for-s")
        .map(|_| flags.number("--for-s", 0))
        .transpose()?;
    let postgres = flags.address("--postgres", "HOLDFAST_POSTGRES_URL")?;
    block_on(async move {
        let store = PostgresStore::connect(&postgres)
            .await
            .map_err(|error| error.to_string())?;
        let log = KafkaLog::connect(&settings, &group, &config.topic)
            .map_err(|error| error.to_string())?;
        let offsets = KafkaGroupOffsets::connect(&settings, &config.topic)
            .map_err(|error| error.to_string())?;
        let publisher = KafkaPublisher::connect(&settings).map_err(|error| error.to_string())?;
        let (trigger, shutdown) = ShutdownTrigger::new();
        tokio_real::spawn(async move {
            match run_for {
                Some(seconds) => {
                    tokio_real::select! {
                        _ = terminated() => {}
                        _ = tokio_real::time::sleep(Duration::from_secs(seconds)) => {}
                    }
                }
                None => terminated().await,
            }
            trigger.trigger();
        });
        let report = Compensator::new(config, log, offsets, store, publisher)
            .run(shutdown)
            .await;
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

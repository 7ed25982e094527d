//! `holdfast compensate`: the compensating consumer (its own group) on Kafka and PostgreSQL,
//! until SIGINT, SIGTERM or `--for-s` seconds; prints its report.

use super::args::CompensateArgs;
use super::{block_on, connect_store, kafka_settings, reach_brokers, terminated};
use holdfast::adapters::{KafkaGroupOffsets, KafkaLog, KafkaPublisher};
use holdfast::pipeline::{Compensator, CompensatorConfig, ShutdownTrigger};
use std::process::ExitCode;
use std::time::Duration;

pub fn main(args: CompensateArgs) -> Result<ExitCode, String> {
    let settings = kafka_settings(&args.kafka)?;
    let wait = args.kafka.connect_timeout();
    let config = CompensatorConfig {
        main_group: args.main_group,
        topic: args.kafka.topic,
        dead_letter_topic: args.dlq,
        delay: Duration::from_millis(args.delay_ms),
        check_interval: Duration::from_millis(args.check_ms),
        attempts_max: args.attempts,
        ..CompensatorConfig::default()
    };
    let group = args.group;
    if group == config.main_group {
        return Err("the compensator needs its own --group, not the main group".into());
    }
    let (run_for, postgres) = (args.for_s, args.store.postgres);
    block_on(async move {
        let store = connect_store(&postgres, wait).await?;
        reach_brokers(&settings, Some(&config.topic), wait).await?;
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

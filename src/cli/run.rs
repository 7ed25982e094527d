//! `holdfast run`: the consumer pipeline on Kafka, Redis and PostgreSQL until SIGINT or
//! SIGTERM, then drain and commit.

use super::args::{RunArgs, StoreArgs};
use super::{
    block_on, connect_store, kafka_settings, ops_http, reach_brokers, startup, terminated,
};
use holdfast::adapters::{KafkaLog, KafkaPublisher, RedisCache};
use holdfast::pipeline::{
    Consumer, ConsumerConfig, Metrics, RunSummary, Services, ShutdownTrigger,
};
use holdfast::ports::NoProbe;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub fn main(args: RunArgs) -> Result<ExitCode, String> {
    let settings = kafka_settings(&args.kafka)?;
    let config = consumer_config(&args)?;
    let wait = args.kafka.connect_timeout();
    let RunArgs {
        kafka,
        group,
        redis,
        store: StoreArgs { postgres },
        metrics: metrics_address,
        ready_backlog_max,
        ..
    } = args;
    let topic = kafka.topic;
    block_on(async move {
        let cache = startup::connect("redis", &RedisCache::describe_address(&redis), wait, || {
            RedisCache::connect(&redis)
        })
        .await?;
        let store = connect_store(&postgres, wait).await?;
        reach_brokers(&settings, Some(&topic), wait).await?;
        let log =
            KafkaLog::connect(&settings, &group, &topic).map_err(|error| error.to_string())?;
        let dead_letters = KafkaPublisher::connect(&settings).map_err(|error| error.to_string())?;
        let metrics = Arc::new(Metrics::new());
        if let Some(address) = &metrics_address {
            let limits = ops_http::ProbeLimits {
                silence_max: config.stall_after,
                backlog_max: ready_backlog_max,
            };
            ops_http::serve(address, Arc::clone(&metrics), limits).await?;
        }
        let services = Services {
            cache,
            store,
            dead_letters,
            probe: NoProbe,
        };
        let consumer = Consumer::new(config, log, services, Arc::clone(&metrics))
            .map_err(|error| format!("bad consumer configuration: {error}"))?;
        let (trigger, shutdown) = ShutdownTrigger::new();
        tokio_real::spawn(async move {
            terminated().await;
            tracing::info!("signal received: draining and committing");
            trigger.trigger();
        });
        tracing::info!(topic, group, "consuming");
        let summary = consumer.run(shutdown).await;
        print_summary(&summary, &metrics);
        Ok(ExitCode::SUCCESS)
    })
}

/// The consumer's configuration: the defaults, with the flags given.
fn consumer_config(args: &RunArgs) -> Result<ConsumerConfig, String> {
    let config = ConsumerConfig {
        batch_size: args.batch,
        concurrency: args.workers,
        commit_interval: Duration::from_millis(args.commit_ms),
        dead_letter_topic: args.dlq.clone(),
        ..ConsumerConfig::default()
    };
    config
        .validate()
        .map_err(|error| format!("bad consumer configuration: {error}"))?;
    Ok(config)
}

fn print_summary(summary: &RunSummary, metrics: &Metrics) {
    println!(
        "stopped: polled {}, applied {}, duplicates dropped {} (cache) {} (batch) {} (store), \
         dead letters {}, commits {}, abandoned in flight {}",
        summary.polled,
        metrics.applied.get(),
        metrics.duplicates_cache.get(),
        metrics.duplicates_batch.get(),
        metrics.duplicates_store.get(),
        metrics.dead_letters.get(),
        summary.commits,
        summary.abandoned
    );
}

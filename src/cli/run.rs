//! `holdfast run`: the consumer pipeline on Kafka, Redis and PostgreSQL until SIGINT or
//! SIGTERM, then drain and commit.

use super::args::RunArgs;
use super::{block_on, connect_store, ops_http, reach_brokers, startup, terminated};
use holdfast::adapters::{KafkaLog, KafkaPublisher, RedisCache};
use holdfast::check::file::Recorder;
use holdfast::check::record::{RecordingLog, RecordingPublisher, RecordingStore};
use holdfast::pipeline::{
    Consumer, ConsumerConfig, Metrics, RunSummary, Services, ShutdownTrigger,
};
use holdfast::ports::{DedupCache, EventLog, NoProbe, OrderStore, Publisher};
use std::process::ExitCode;
use std::sync::Arc;

pub fn main(args: RunArgs) -> Result<ExitCode, String> {
    let settings = args.settings()?;
    let kafka = settings.kafka_settings()?;
    let config = settings.consumer_config()?;
    let wait = settings.connect_timeout();
    let (topic, group) = (settings.topic(), settings.group());
    let redis = settings.redis_url()?;
    let postgres = settings.postgres_url()?;
    let limits = ops_http::ProbeLimits {
        silence_max: config.stall_after,
        backlog_max: settings.ready_backlog_max(),
    };
    let metrics_address = settings.consumer.metrics;
    let history = args.history.clone();
    block_on(async move {
        let cache = startup::connect("redis", &RedisCache::describe_address(&redis), wait, || {
            RedisCache::connect(&redis)
        })
        .await?;
        // Progress rows are the group's on the topic: consumers of other topics or groups may
        // share the database.
        let store = connect_store(&postgres, wait)
            .await?
            .with_progress_scope(format!("{group}/{topic}"));
        reach_brokers(&kafka, Some(&topic), wait).await?;
        let log = KafkaLog::connect(&kafka, &group, &topic).map_err(|error| error.to_string())?;
        let dead_letters = KafkaPublisher::connect(&kafka).map_err(|error| error.to_string())?;
        let metrics = Arc::new(Metrics::new());
        if let Some(address) = &metrics_address {
            ops_http::serve(address, Arc::clone(&metrics), limits).await?;
        }
        let services = Services {
            cache,
            store,
            dead_letters,
            probe: NoProbe,
        };
        tracing::info!(topic, group, "consuming");
        let summary = match history {
            None => consume(config, log, services, &metrics).await?,
            Some(dir) => {
                let (recorder, writing) = Recorder::create(&dir, "run")
                    .map_err(|error| format!("history in {}: {error}", dir.display()))?;
                let log = RecordingLog {
                    inner: log,
                    sink: recorder.clone(),
                };
                let services = Services {
                    cache: services.cache,
                    store: RecordingStore {
                        inner: services.store,
                        sink: recorder.clone(),
                    },
                    dead_letters: RecordingPublisher {
                        inner: services.dead_letters,
                        sink: recorder,
                    },
                    probe: NoProbe,
                };
                let summary = consume(config, log, services, &metrics).await?;
                let written = writing.finish().map_err(|error| error.to_string())?;
                tracing::info!(written, "history written");
                summary
            }
        };
        print_summary(&summary, &metrics);
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs the consumer until SIGINT or SIGTERM, then drains and commits.
async fn consume<L, C, S, D>(
    config: ConsumerConfig,
    log: L,
    services: Services<C, S, D, NoProbe>,
    metrics: &Arc<Metrics>,
) -> Result<RunSummary, String>
where
    L: EventLog + 'static,
    C: DedupCache + 'static,
    S: OrderStore + 'static,
    D: Publisher + 'static,
{
    let consumer = Consumer::new(config, log, services, Arc::clone(metrics))
        .map_err(|error| format!("bad consumer configuration: {error}"))?;
    let (trigger, shutdown) = ShutdownTrigger::new();
    tokio::spawn(async move {
        terminated().await;
        tracing::info!("signal received: draining and committing");
        trigger.trigger();
    });
    Ok(consumer.run(shutdown).await)
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

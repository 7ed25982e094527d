//! End-to-end events per second on the real Redis and PostgreSQL: holdfast's batched pipeline
//! against a per-message pipeline that follows the seed text literally (Redis GET, one database
//! transaction, Redis SET, one offset commit, for every message), in the same run, on the same
//! messages, each starting from empty tables and an empty cache.
//!
//! The log is the in-memory one (`holdfast::memlog`), so the figures isolate what the
//! idempotency protocol costs against the services; both runs are verified end to end, so
//! neither can win by skipping work.
//!
//! Run: `scripts/services-up && source .services/env && cargo bench --features services --bench pipeline_services`

mod common;

use common::{check, env, per_message, reset};
use holdfast::adapters::{PostgresStore, RedisCache};
use holdfast::memlog::MemoryBroker;
use holdfast::pipeline::{Consumer, ConsumerConfig, Metrics, Services};
use holdfast::ports::NoProbe;
use holdfast::verify::GroundTruth;
use holdfast::workload::{Workload, WorkloadConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOPIC: &str = "orders";
const ORDERS: usize = 3000;
/// How long a round may take to catch up before the bench fails.
const CATCH_UP: Duration = Duration::from_secs(600);

/// A topic holding the workload, and its ground truth.
async fn topic(workload: &Workload) -> (MemoryBroker, GroundTruth) {
    let broker = MemoryBroker::new(TOPIC, 8);
    let truth = broker
        .publish_workload(TOPIC, workload)
        .await
        .expect("publish")
        .truth;
    (broker, truth)
}

/// holdfast: batches of 500, 8 workers, one transaction per batch, pipelined Redis calls.
async fn batched(broker: &MemoryBroker, cache: RedisCache, store: PostgresStore) -> Duration {
    let started = Instant::now();
    let services = Services {
        cache,
        store,
        dead_letters: broker.clone(),
        probe: NoProbe,
    };
    let config = ConsumerConfig {
        commit_interval: Duration::from_millis(20),
        poll_timeout: Duration::from_millis(5),
        ..ConsumerConfig::default()
    };
    let running = Consumer::new(
        config,
        broker.consumer(TOPIC, "batched"),
        services,
        Arc::new(Metrics::new()),
    )
    .expect("consumer")
    .spawn();
    broker
        .wait_caught_up(TOPIC, "batched", Duration::from_millis(1), CATCH_UP)
        .await
        .expect("the batched consumer");
    let elapsed = started.elapsed();
    running.stop().await.expect("consumer task");
    elapsed
}

fn main() {
    let redis_url = env("HOLDFAST_REDIS_URL");
    let postgres_url = env("HOLDFAST_POSTGRES_URL");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let workload = Workload::generate(&WorkloadConfig {
            orders: ORDERS,
            seed: 0xbe7c,
            ..WorkloadConfig::default()
        })
        .expect("workload");
        let messages = workload.messages.len();
        let cache = RedisCache::connect(&redis_url).await.expect("redis");
        let store = PostgresStore::connect(&postgres_url)
            .await
            .expect("postgres");

        reset(&redis_url, &postgres_url).await;
        let (broker, truth) = topic(&workload).await;
        let batched_time = batched(&broker, cache.clone(), store.clone()).await;
        check(&store, &truth, "the batched pipeline").await;

        reset(&redis_url, &postgres_url).await;
        let (broker, truth) = topic(&workload).await;
        let end = broker.records(TOPIC).len();
        let mut log = broker.consumer(TOPIC, "per-message");
        let literal = per_message(&mut log, &cache, &store, end, Duration::MAX).await;
        assert_eq!(literal.messages, end, "the per-message run stopped early");
        let literal_time = literal.elapsed;
        check(&store, &truth, "the per-message pipeline").await;

        let rate = |time: Duration| messages as f64 / time.as_secs_f64();
        println!(
            "{messages} messages ({} distinct events), Redis and PostgreSQL on loopback",
            truth.acknowledged.len()
        );
        println!("{:<28} {:>10} {:>14}", "pipeline", "seconds", "messages/s");
        println!(
            "{:<28} {:>10.2} {:>14.0}",
            "batched (holdfast)",
            batched_time.as_secs_f64(),
            rate(batched_time)
        );
        println!(
            "{:<28} {:>10.2} {:>14.0}",
            "per message (seed)",
            literal_time.as_secs_f64(),
            rate(literal_time)
        );
        println!("speed-up: {:.1}x", rate(batched_time) / rate(literal_time));
    });
}

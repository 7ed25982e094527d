//! The real pipeline (`holdfast::pipeline::Consumer`) on the real Redis and PostgreSQL, over
//! the in-memory log: exactly-once effect with duplicates, disorder, malformed input and a
//! Redis FLUSHALL mid-run. Needs `scripts/services-up`; the addresses come from
//! `HOLDFAST_REDIS_URL` and `HOLDFAST_POSTGRES_URL` (a missing one is a failure, not a skip).

mod common;

use common::{env, flushall, fresh_store, services_up};
use holdfast::adapters::{PostgresStore, RedisCache};
use holdfast::memlog::MemoryBroker;
use holdfast::pipeline::{Consumer, ConsumerConfig, Metrics, RunningConsumer, Services};
use holdfast::ports::NoProbe;
use holdfast::verify::{verify, GroundTruth, StoreView, VerifyReport};
use holdfast::workload::{Workload, WorkloadConfig};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOPIC: &str = "orders";

/// The tests of this binary flush and restart the shared services: one at a time.
static SERVICES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until the consumer applied at least `count` keys.
async fn wait_applied(metrics: &Metrics, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.applied.get() < count {
        assert!(Instant::now() < deadline, "{count} keys were never applied");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Publishes a workload; returns the ground truth, the number of valid messages (repeats
/// included) and of malformed ones.
async fn publish(broker: &MemoryBroker, config: &WorkloadConfig) -> (GroundTruth, usize, usize) {
    let workload = Workload::generate(config).unwrap();
    let published = broker.publish_workload(TOPIC, &workload).await.unwrap();
    (published.truth, published.valid, published.malformed)
}

fn config() -> ConsumerConfig {
    ConsumerConfig {
        batch_size: 100,
        concurrency: 4,
        commit_interval: Duration::from_millis(20),
        poll_timeout: Duration::from_millis(5),
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(200),
        ..ConsumerConfig::default()
    }
}

fn start(
    broker: &MemoryBroker,
    group: &str,
    cache: &RedisCache,
    store: &PostgresStore,
) -> (RunningConsumer, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let services = Services {
        cache: cache.clone(),
        store: store.clone(),
        dead_letters: broker.clone(),
        probe: NoProbe,
    };
    let consumer = Consumer::new(
        config(),
        broker.consumer(TOPIC, group),
        services,
        Arc::clone(&metrics),
    )
    .unwrap();
    (consumer.spawn(), metrics)
}

/// Waits until `group` committed the end of every partition.
async fn wait_caught_up(broker: &MemoryBroker, group: &str) {
    let (tick, limit) = (Duration::from_millis(10), Duration::from_secs(120));
    let waited = broker.wait_caught_up(TOPIC, group, tick, limit).await;
    waited.unwrap_or_else(|error| panic!("{error}"));
}

async fn check(truth: &GroundTruth, store: &PostgresStore) -> VerifyReport {
    let view = StoreView {
        ledger: store.ledger().await.unwrap(),
        rows: store.rows().await.unwrap(),
    };
    verify(truth, &view, &[], &BTreeSet::new())
}

/// Goal: exactly-once effect on the real services, and a lost cache costing nothing but round
/// trips. Method: 2,000+ events with duplicates, disorder and malformed messages through the
/// real consumer; Redis FLUSHALL once half of them are applied; verify the database against
/// the ground truth. Then a second group replays the whole topic: nothing may be applied
/// again, and the keys the flush erased must be caught by PostgreSQL's unique key.
#[tokio::test]
async fn exactly_once_on_redis_and_postgres_with_a_flushall_mid_run() {
    let _exclusive = SERVICES.lock().await;
    let redis_url = env("HOLDFAST_REDIS_URL");
    // This test binary runs alone; keys left by an earlier run would hide events from the
    // fresh database.
    flushall(&redis_url).await;
    let cache = RedisCache::connect(&redis_url).await.unwrap();
    let store = fresh_store("hf_test_pipeline").await;
    let broker = MemoryBroker::new(TOPIC, 4);
    let workload = WorkloadConfig {
        orders: 500,
        duplicate_ratio: 0.1,
        reorder_ratio: 0.3,
        malformed_ratio: 0.02,
        seed: 21,
        ..WorkloadConfig::default()
    };
    let (truth, valid, malformed) = publish(&broker, &workload).await;
    assert!(valid >= 2000, "only {valid} events");
    let distinct = truth.acknowledged_keys().len() as u64;

    let started = Instant::now();
    let (running, metrics) = start(&broker, "holdfast", &cache, &store);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.applied.get() < distinct / 2 {
        assert!(
            Instant::now() < deadline,
            "half the events were never applied"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    flushall(&redis_url).await;
    let applied_at_flush = metrics.applied.get();
    wait_caught_up(&broker, "holdfast").await;
    let elapsed = started.elapsed();
    running.stop().await.unwrap();
    assert!(applied_at_flush < distinct, "the flush came after the run");
    let report = check(&truth, &store).await;
    assert!(report.passed(), "{report}");
    assert_eq!(metrics.applied.get(), distinct);
    assert_eq!(metrics.dead_letters.get(), malformed as u64);
    assert_eq!(broker.records("orders.dlq").len(), malformed);
    assert_eq!(
        metrics.retries_outage.get(),
        0,
        "healthy services, no outage"
    );
    eprintln!(
        "{valid} valid + {malformed} malformed messages, {distinct} keys applied in {elapsed:?}"
    );

    let (running, replay) = start(&broker, "holdfast-replay", &cache, &store);
    wait_caught_up(&broker, "holdfast-replay").await;
    running.stop().await.unwrap();
    assert_eq!(replay.applied.get(), 0, "a replay applied something again");
    assert!(
        replay.duplicates_store.get() > 0,
        "the keys FLUSHALL erased were not caught by the store"
    );
    assert!(replay.duplicates_cache.get() > 0, "the cache never helped");
    let report = check(&truth, &store).await;
    assert!(report.passed(), "{report}");
}

/// Goal: outages of the real services pause the pipeline and lose or double nothing, and an
/// outage never dead-letters. Method: 8,000+ events; PostgreSQL restarted once a fifth of the
/// keys are applied and Redis (no persistence: it comes back empty) once half are, both
/// while the consumer runs; verify the database; only malformed messages may be dead letters.
#[tokio::test]
async fn exactly_once_through_postgres_and_redis_restarts_mid_run() {
    let _exclusive = SERVICES.lock().await;
    let redis_url = env("HOLDFAST_REDIS_URL");
    flushall(&redis_url).await;
    let cache = RedisCache::connect(&redis_url).await.unwrap();
    let store = fresh_store("hf_test_pipeline_restarts").await;
    let broker = MemoryBroker::new(TOPIC, 4);
    let workload = WorkloadConfig {
        orders: 1500,
        duplicate_ratio: 0.1,
        reorder_ratio: 0.3,
        malformed_ratio: 0.02,
        seed: 22,
        ..WorkloadConfig::default()
    };
    let (truth, valid, malformed) = publish(&broker, &workload).await;
    assert!(valid >= 2000, "only {valid} events");
    let distinct = truth.acknowledged_keys().len() as u64;

    let (running, metrics) = start(&broker, "holdfast", &cache, &store);
    wait_applied(&metrics, distinct / 5).await;
    let postgres_at = metrics.applied.get();
    services_up(&["--restart", "postgres"]).await;
    let postgres_back_at = metrics.applied.get();
    wait_applied(&metrics, distinct / 2).await;
    let redis_at = metrics.applied.get();
    services_up(&["--restart", "redis"]).await;
    let redis_back_at = metrics.applied.get();
    wait_caught_up(&broker, "holdfast").await;
    running.stop().await.unwrap();
    // The consumer cannot apply while PostgreSQL is down; Redis stops first thing in its
    // restart, so work was left when it went down.
    assert!(
        postgres_back_at < distinct,
        "PostgreSQL restarted after the run"
    );
    assert!(redis_at < distinct, "Redis restarted after the run");
    let report = check(&truth, &store).await;
    assert!(report.passed(), "{report}");
    assert_eq!(metrics.applied.get(), distinct);
    assert_eq!(
        metrics.dead_letters.get(),
        malformed as u64,
        "only malformed messages may be dead-lettered"
    );
    eprintln!(
        "of {distinct} keys, applied when PostgreSQL's restart began/ended: \
         {postgres_at}/{postgres_back_at}, Redis's: {redis_at}/{redis_back_at}; \
         {} outage retries, {} batches with the cache degraded",
        metrics.retries_outage.get(),
        metrics.cache_degraded_batches.get()
    );
}

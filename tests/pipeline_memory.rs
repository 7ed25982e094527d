//! The pipeline end to end on the in-memory ports: exactly-once effect with duplicates,
//! disorder and malformed input; crashes at random points; cache and store outages; the
//! compensator re-sending a missing effect.

use holdfast::event::OrderEvent;
use holdfast::idempotency::memory::{MemoryCache, MemoryStore};
use holdfast::idempotency::IdempotencyKey;
use holdfast::memlog::MemoryBroker;
use holdfast::pipeline::{
    Compensator, CompensatorConfig, Consumer, ConsumerConfig, Metrics, RunningConsumer, Services,
    ShutdownTrigger,
};
use holdfast::ports::{
    ApplyOutcome, CommitMode, CommittedOffset, EventLog, FaultPoint, OffsetCommit, OrderStore,
    PartitionId, PortError, Probe, ProgressWrite, Record,
};
use holdfast::testkit::planted::{PlantedBug, PlantedLog};
use holdfast::verify::{verify, Application, Fact, GroundTruth, StoreView};
use holdfast::widetable::OrderRow;
use holdfast::workload::{Workload, WorkloadConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const TOPIC: &str = "orders";
const GROUP: &str = "holdfast";

/// Publishes a workload and returns the ground truth.
async fn publish(broker: &MemoryBroker, config: &WorkloadConfig) -> (GroundTruth, usize) {
    let workload = Workload::generate(config).unwrap();
    let published = broker.publish_workload(TOPIC, &workload).await.unwrap();
    (published.truth, published.malformed)
}

/// A workload of `orders` lifecycles whose every message is a valid, distinct event (no
/// malformed messages, duplicates or rivals), published to a new broker of `partitions`:
/// what the compensator tests count on.
async fn clean_topic(partitions: i32, orders: usize, seed: u64) -> (MemoryBroker, GroundTruth) {
    let broker = MemoryBroker::new(TOPIC, partitions);
    let workload = WorkloadConfig {
        orders,
        malformed_ratio: 0.0,
        duplicate_ratio: 0.0,
        conflict_ratio: 0.0,
        seed,
        ..WorkloadConfig::default()
    };
    let (truth, _) = publish(&broker, &workload).await;
    (broker, truth)
}

/// Freezes the whole pipeline at the `hit`-th pass of `point` (every task stops at its next
/// fault point) and tells the test, which then kills the consumer: a crash exactly inside one
/// of the protocol's windows. With a `delay`, every batch is slow instead.
#[derive(Default)]
struct CrashProbe {
    point: Option<FaultPoint>,
    hit: u32,
    hits: AtomicU32,
    frozen: std::sync::atomic::AtomicBool,
    crashed: Arc<Notify>,
    /// How long every batch waits after its cache check (a slow store, in effect).
    delay: Duration,
}

impl Probe for CrashProbe {
    async fn at(&self, point: FaultPoint) {
        if point == FaultPoint::AfterCacheCheck && !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.point == Some(point) && self.hits.fetch_add(1, Ordering::SeqCst) + 1 == self.hit {
            self.frozen.store(true, Ordering::SeqCst);
            self.crashed.notify_one();
        }
        if self.frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

fn config() -> ConsumerConfig {
    ConsumerConfig {
        batch_size: 50,
        concurrency: 4,
        commit_interval: Duration::from_millis(5),
        poll_timeout: Duration::from_millis(2),
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(20),
        ..ConsumerConfig::default()
    }
}

/// Starts a consumer; returns it and its metrics.
fn start(
    broker: &MemoryBroker,
    cache: &MemoryCache,
    store: &MemoryStore,
    config: ConsumerConfig,
) -> (RunningConsumer, Arc<Metrics>) {
    start_probed(broker, cache, store, config, CrashProbe::default(), None)
}

fn start_probed(
    broker: &MemoryBroker,
    cache: &MemoryCache,
    store: &MemoryStore,
    config: ConsumerConfig,
    probe: CrashProbe,
    planted: Option<PlantedBug>,
) -> (RunningConsumer, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let services = Services {
        cache: cache.clone(),
        store: store.clone(),
        dead_letters: broker.clone(),
        probe,
    };
    let consumer = Consumer::new(
        config,
        PlantedLog::new(broker.consumer(TOPIC, GROUP), planted),
        services,
        Arc::clone(&metrics),
    )
    .unwrap();
    (consumer.spawn(), metrics)
}

/// Waits until the group committed the end of every partition.
async fn wait_caught_up(broker: &MemoryBroker) {
    let (tick, limit) = (Duration::from_millis(2), Duration::from_secs(8));
    let waited = broker.wait_caught_up(TOPIC, GROUP, tick, limit).await;
    waited.unwrap_or_else(|error| panic!("{error}"));
}

fn check(truth: &GroundTruth, store: &MemoryStore) -> holdfast::verify::VerifyReport {
    let view = StoreView {
        ledger: store.applied_events().iter().map(Application::of).collect(),
        rows: store.rows(),
    };
    verify(truth, &view, &[], &BTreeSet::new())
}

/// Goal: `stop` drains, commits and reports what the consumer did. Method: a clean topic
/// consumed to its end; the summary counts every record polled once, some commits, nothing
/// abandoned.
#[tokio::test]
async fn stop_reports_what_the_consumer_did() {
    let (broker, _) = clean_topic(2, 20, 12).await;
    let records = broker.records(TOPIC).len() as u64;
    let (cache, store) = (MemoryCache::new(), MemoryStore::new());
    let (running, _) = start(&broker, &cache, &store, config());
    wait_caught_up(&broker).await;
    let summary = running.stop().await.unwrap();
    assert_eq!(summary.polled, records, "{summary:?}");
    assert!(summary.commits > 0, "{summary:?}");
    assert_eq!(summary.abandoned, 0, "{summary:?}");
}

/// Goal: the consumer commits once per commit interval, not once per poll (commits load the
/// group coordinator). Method: records arrive every few milliseconds while the consumer runs
/// with a 100 ms interval; the commits, the final one included, are at most one per interval
/// elapsed, plus the first and the final one.
#[tokio::test]
async fn commits_wait_for_the_commit_interval() {
    let broker = MemoryBroker::new(TOPIC, 2);
    let (cache, store) = (MemoryCache::new(), MemoryStore::new());
    let interval = Duration::from_millis(100);
    let config = ConsumerConfig {
        commit_interval: interval,
        ..config()
    };
    let started = std::time::Instant::now();
    let (running, _) = start(&broker, &cache, &store, config);
    for seed in 0..60 {
        let one = WorkloadConfig {
            orders: 1,
            seed,
            ..WorkloadConfig::default()
        };
        publish(&broker, &one).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_caught_up(&broker).await;
    let summary = running.stop().await.unwrap();
    let intervals = (started.elapsed().as_millis() / interval.as_millis()) as u64;
    assert!(
        summary.commits <= intervals + 2,
        "{} commits in {intervals} intervals",
        summary.commits
    );
}

/// Goal: a tracker with room for a few records holds what it has no room for, pauses the
/// partition, and re-offers the held records as room frees, so the consumer still reaches the
/// end of the log with every effect applied once. Method: a tracker of 4 records in flight
/// under a few hundred records.
#[tokio::test]
async fn a_full_tracker_holds_records_and_catches_up() {
    let broker = MemoryBroker::new(TOPIC, 2);
    let workload = WorkloadConfig {
        orders: 60,
        seed: 16,
        ..WorkloadConfig::default()
    };
    let (truth, _) = publish(&broker, &workload).await;
    let (cache, store) = (MemoryCache::new(), MemoryStore::new());
    let mut config = ConsumerConfig {
        batch_size: 4,
        ..config()
    };
    config.limits.in_flight_max = 4;
    config.limits.span_max = 8;
    // Slow batches keep the tracker full when the next poll comes.
    let probe = CrashProbe {
        delay: Duration::from_millis(2),
        ..CrashProbe::default()
    };
    let (running, _) = start_probed(&broker, &cache, &store, config, probe, None);
    wait_caught_up(&broker).await;
    running.stop().await.unwrap();
    let report = check(&truth, &store);
    assert!(report.passed(), "{report}");
}

/// Goal: `stop` with work in flight waits for it (up to `drain_timeout`) before its final
/// commit, so nothing finished is left uncommitted and nothing is abandoned. Method: slow
/// batches; stop while records are in flight; the summary abandons nothing and the group's
/// commit covers everything polled.
#[tokio::test]
async fn stop_drains_work_in_flight_before_the_final_commit() {
    let (broker, _) = clean_topic(2, 40, 17).await;
    let (cache, store) = (MemoryCache::new(), MemoryStore::new());
    let config = ConsumerConfig {
        batch_size: 10,
        commit_interval: Duration::from_secs(60),
        ..config()
    };
    let probe = CrashProbe {
        delay: Duration::from_millis(20),
        ..CrashProbe::default()
    };
    let (running, metrics) = start_probed(&broker, &cache, &store, config, probe, None);
    while metrics.polled.get() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let summary = running.stop().await.unwrap();
    assert_eq!(summary.abandoned, 0, "{summary:?}");
    let applied = store.applied_events().len() as u64;
    assert_eq!(applied, summary.polled, "every polled record finished");
    let committed: i64 = broker.committed(GROUP).values().map(|c| c.offset).sum();
    assert_eq!(
        committed as u64, summary.polled,
        "the final commit covers them"
    );
}

/// Goal: an aborted consumer abandons its in-flight work: its workers stop with it (a crash
/// takes every task of the process). Method: slow batches queued at the workers; abort; the
/// store receives nothing more.
#[tokio::test]
async fn abort_abandons_work_in_flight() {
    let (broker, _) = clean_topic(1, 60, 18).await;
    let (cache, store) = (MemoryCache::new(), MemoryStore::new());
    let config = ConsumerConfig {
        batch_size: 5,
        concurrency: 1,
        ..config()
    };
    let probe = CrashProbe {
        delay: Duration::from_millis(10),
        ..CrashProbe::default()
    };
    let (running, metrics) = start_probed(&broker, &cache, &store, config, probe, None);
    while metrics.polled.get() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    running.abort().await;
    let applied = store.applied_events().len();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        store.applied_events().len(),
        applied,
        "a worker outlived the abort"
    );
}

/// Goal: `abort` kills the consumer as a crash would: after it, nothing more is consumed or
/// committed. Method: consume a topic to its end, abort, publish more; the group's commits
/// stay where they were.
#[tokio::test]
async fn abort_stops_the_consumer_at_once() {
    let (broker, _) = clean_topic(2, 5, 13).await;
    let (cache, store) = (MemoryCache::new(), MemoryStore::new());
    let (running, _) = start(&broker, &cache, &store, config());
    wait_caught_up(&broker).await;
    running.abort().await;
    let committed = broker.committed(GROUP);
    let more = WorkloadConfig {
        orders: 5,
        seed: 14,
        ..WorkloadConfig::default()
    };
    publish(&broker, &more).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        broker.committed(GROUP),
        committed,
        "an aborted consumer went on"
    );
}

#[tokio::test]
async fn exactly_once_effect_with_duplicates_disorder_and_malformed_input() {
    let broker = MemoryBroker::new(TOPIC, 4);
    let workload = WorkloadConfig {
        orders: 400,
        malformed_ratio: 0.02,
        duplicate_ratio: 0.1,
        ..WorkloadConfig::default()
    };
    let (truth, malformed) = publish(&broker, &workload).await;
    let (cache, store) = (MemoryCache::new(), MemoryStore::new());
    let (running, metrics) = start(&broker, &cache, &store, config());
    wait_caught_up(&broker).await;
    running.stop().await.unwrap();
    let report = check(&truth, &store);
    assert!(report.passed(), "{report}");
    assert!(malformed > 0);
    assert_eq!(metrics.dead_letters.get(), malformed as u64);
    assert_eq!(broker.records("orders.dlq").len(), malformed);
    let duplicates = metrics.duplicates_cache.get()
        + metrics.duplicates_batch.get()
        + metrics.duplicates_store.get();
    assert!(duplicates > 0, "the workload's duplicates were never seen");
    assert_eq!(
        metrics.applied.get(),
        truth.acknowledged_keys().len() as u64
    );
}

/// Twenty crashes, each inside one of the protocol's windows (every fault point, several
/// hits), then a clean run; returns the verdict.
async fn crash_cycles(planted: Option<PlantedBug>) -> holdfast::verify::VerifyReport {
    let broker = MemoryBroker::new(TOPIC, 3);
    // Enough work that the twentieth round still has records to crash in: a round runs until
    // its point's hit, and a fast round takes a large share of the log.
    let workload = WorkloadConfig {
        orders: 1500,
        seed: 11,
        ..WorkloadConfig::default()
    };
    let (truth, _) = publish(&broker, &workload).await;
    let schema = PlantedBug::schema(planted);
    let (cache, store) = (MemoryCache::new(), MemoryStore::with_schema(schema));
    let mut crashes = 0;
    for round in 0..20u32 {
        let crashed = Arc::new(Notify::new());
        let probe = CrashProbe {
            point: Some(FaultPoint::ALL[round as usize % FaultPoint::ALL.len()]),
            hit: 1 + round % 3,
            crashed: Arc::clone(&crashed),
            ..CrashProbe::default()
        };
        // A small window makes the poll loop wait for acks, so work is always in flight.
        let mut config = ConsumerConfig {
            batch_size: 7,
            jitter_seed: u64::from(round),
            ..config()
        };
        config.limits.in_flight_max = 21;
        config.limits.span_max = 64;
        let (running, _) = start_probed(&broker, &cache, &store, config, probe, planted);
        // Generous: under a loaded machine (tests run in parallel) a round can take a while to
        // reach its point; a round that reaches it returns at once.
        let reached = tokio::time::timeout(Duration::from_secs(3), crashed.notified())
            .await
            .is_ok();
        if reached {
            crashes += 1;
        }
        running.abort().await;
        if round % 5 == 4 {
            cache.clear(); // Redis restarted without persistence.
        }
    }
    assert!(
        crashes >= 15,
        "only {crashes} of 20 rounds reached their fault point"
    );
    let (running, _) = start_probed(
        &broker,
        &cache,
        &store,
        config(),
        CrashProbe::default(),
        planted,
    );
    wait_caught_up(&broker).await;
    running.stop().await.unwrap();
    check(&truth, &store)
}

#[tokio::test]
async fn crashes_inside_every_window_lose_nothing_and_double_nothing() {
    let report = crash_cycles(None).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn the_same_crashes_expose_commit_before_processing() {
    let report = crash_cycles(Some(PlantedBug::CommitBeforeProcessing)).await;
    assert!(
        !report.missing.is_empty(),
        "the planted bug lost nothing: {report}"
    );
}

#[tokio::test]
async fn cache_outage_degrades_to_store_dedup_and_store_outage_waits() {
    let broker = MemoryBroker::new(TOPIC, 2);
    let workload = WorkloadConfig {
        orders: 100,
        malformed_ratio: 0.0,
        seed: 5,
        ..WorkloadConfig::default()
    };
    let (truth, _) = publish(&broker, &workload).await;
    let (cache, store) = (MemoryCache::new(), MemoryStore::new());
    cache.set_failing(true);
    store.set_failing(true);
    let (running, metrics) = start(&broker, &cache, &store, config());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(metrics.applied.get(), 0);
    assert!(
        metrics.retries_outage.get() > 0,
        "the store outage was not retried"
    );
    store.set_failing(false);
    wait_caught_up(&broker).await;
    running.stop().await.unwrap();
    assert_eq!(
        metrics.dead_letters.get(),
        0,
        "an outage must never dead-letter"
    );
    assert!(metrics.cache_degraded_batches.get() > 0);
    let report = check(&truth, &store);
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn compensator_resends_an_effect_missing_after_the_main_group_passed_it() {
    let (broker, truth) = clean_topic(2, 30, 9).await;
    let (cache, store) = (MemoryCache::new(), MemoryStore::new());
    let (running, _) = start(&broker, &cache, &store, config());
    wait_caught_up(&broker).await;
    running.stop().await.unwrap();
    // Lose one applied effect behind the pipeline's back, as a bug or a restore would.
    let victim = OrderEvent::decode(&broker.records(TOPIC)[0].payload).unwrap();
    let lost = IdempotencyKey::of(&victim);
    let damaged = MemoryStore::new();
    let survivors: Vec<OrderEvent> = store
        .applied_events()
        .into_iter()
        .filter(|e| IdempotencyKey::of(e) != lost)
        .collect();
    use holdfast::ports::OrderStore;
    damaged.apply_batch(&survivors, &[]).await.unwrap();
    assert!(!check(&truth, &damaged).passed());
    let originals = broker.records(TOPIC).len();

    let compensator_config = CompensatorConfig {
        delay: Duration::from_millis(5),
        check_interval: Duration::from_millis(5),
        poll_timeout: Duration::from_millis(2),
        ..CompensatorConfig::default()
    };
    let compensator = Compensator::new(
        compensator_config,
        broker.consumer(TOPIC, "holdfast-compensator"),
        broker.clone(),
        damaged.clone(),
        broker.clone(),
    );
    let (stop_compensator, compensator_shutdown) = ShutdownTrigger::new();
    let compensator_task = tokio::spawn(compensator.run(compensator_shutdown));
    // The main group picks up the re-send.
    let (running, _) = start(&broker, &MemoryCache::new(), &damaged, config());
    for _ in 0..2000 {
        if check(&truth, &damaged).passed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    running.stop().await.unwrap();
    stop_compensator.trigger();
    let report = compensator_task.await.unwrap();
    assert!(report.resent >= 1, "{report:?}");
    assert!(report.dead_lettered.is_empty());
    // Every original record is confirmed or still pending; a re-sent copy is neither (its
    // original is the one tracked).
    assert_eq!(
        report.confirmed + report.pending as u64,
        originals as u64,
        "{report:?}"
    );
    let verdict = check(&truth, &damaged);
    assert!(verdict.passed(), "{verdict}");
}

/// Goal: an effect that stays missing is re-sent `attempts_max` times, then dead-lettered
/// once and reported, and never re-sent again. Method: one effect lost behind the pipeline's
/// back and no main group running to apply the re-sends.
#[tokio::test]
async fn compensator_gives_up_after_attempts_max_and_dead_letters_the_event() {
    let (broker, _) = clean_topic(2, 10, 4).await;
    let (cache, store) = (MemoryCache::new(), MemoryStore::new());
    let (running, _) = start(&broker, &cache, &store, config());
    wait_caught_up(&broker).await;
    running.stop().await.unwrap();
    let victim = OrderEvent::decode(&broker.records(TOPIC)[0].payload).unwrap();
    let damaged = MemoryStore::new();
    let survivors: Vec<OrderEvent> = store
        .applied_events()
        .into_iter()
        .filter(|event| event.event_id != victim.event_id)
        .collect();
    damaged.apply_batch(&survivors, &[]).await.unwrap();

    let compensator = Compensator::new(
        CompensatorConfig {
            delay: Duration::from_millis(5),
            check_interval: Duration::from_millis(5),
            poll_timeout: Duration::from_millis(2),
            attempts_max: 2,
            ..CompensatorConfig::default()
        },
        broker.consumer(TOPIC, "holdfast-compensator"),
        broker.clone(),
        damaged.clone(),
        broker.clone(),
    );
    let (stop, shutdown) = ShutdownTrigger::new();
    let task = tokio::spawn(compensator.run(shutdown));
    for _ in 0..2000 {
        if !broker.records("orders.dlq").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Time for any further (wrong) re-send or letter to show.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.trigger();
    let report = task.await.unwrap();
    assert_eq!(report.resent, 2, "{report:?}");
    assert_eq!(report.dead_lettered, vec![IdempotencyKey::of(&victim)]);
    let letters = broker.records("orders.dlq");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].payload, victim.payload);
}

/// Runs a compensator over the topic for `run_for` against `store`, with no main group
/// running, and returns its report.
async fn compensate_for(
    broker: &MemoryBroker,
    store: &MemoryStore,
    config: CompensatorConfig,
    run_for: Duration,
) -> holdfast::pipeline::CompensatorReport {
    compensate_until(broker, store, config, |_| true, run_for).await
}

/// Runs a compensator as `compensate_for` does, until `reached` holds of the broker (at most
/// 10 s, so that a loaded machine only slows the test), then for `then` more.
async fn compensate_until(
    broker: &MemoryBroker,
    store: &MemoryStore,
    config: CompensatorConfig,
    reached: impl Fn(&MemoryBroker) -> bool,
    then: Duration,
) -> holdfast::pipeline::CompensatorReport {
    let compensator = Compensator::new(
        config,
        broker.consumer(TOPIC, "holdfast-compensator"),
        broker.clone(),
        store.clone(),
        broker.clone(),
    );
    let (stop, shutdown) = ShutdownTrigger::new();
    let task = tokio::spawn(compensator.run(shutdown));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !reached(broker) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(then).await;
    stop.trigger();
    task.await.unwrap()
}

/// How many records of the topic are re-sends of attempt `attempt`.
fn resends(broker: &MemoryBroker, attempt: u32) -> usize {
    broker
        .records(TOPIC)
        .iter()
        .filter(|record| attempts(record) == Some(attempt))
        .count()
}

/// Goal: the compensator re-sends only what the main group has committed past: an event
/// still ahead of the main group is not missing, it is not processed yet. Method: a workload
/// that no main group consumed, an empty store, a compensator whose delay and check interval
/// pass many times; nothing is checked or re-sent, everything stays pending.
#[tokio::test]
async fn compensator_waits_for_the_main_group_to_pass_an_event() {
    let (broker, _) = clean_topic(2, 10, 6).await;
    let records = broker.records(TOPIC).len();
    let config = CompensatorConfig {
        delay: Duration::from_millis(1),
        check_interval: Duration::from_millis(2),
        poll_timeout: Duration::from_millis(2),
        ..CompensatorConfig::default()
    };
    let report = compensate_for(
        &broker,
        &MemoryStore::new(),
        config,
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(report.resent, 0, "{report:?}");
    assert_eq!(report.confirmed, 0, "{report:?}");
    assert_eq!(report.pending, records, "{report:?}");
    assert_eq!(
        broker.records(TOPIC).len(),
        records,
        "nothing was re-published"
    );
}

/// Goal: the main group's committed offset is the next record it will read: the record AT it
/// is not passed yet, only those below. Method: no store effects at all, the main group's
/// commit set by hand to offset 3 of partition 0 and nothing elsewhere; exactly the first
/// three records of partition 0 are re-sent.
#[tokio::test]
async fn compensator_resends_only_below_the_main_group_commit() {
    let (broker, _) = clean_topic(2, 10, 8).await;
    let originals = broker.records(TOPIC);
    let commit = OffsetCommit {
        partition: 0,
        offset: 3,
        metadata: String::new(),
    };
    let mut main = broker.consumer(TOPIC, GROUP);
    main.commit(&[commit], CommitMode::Sync).await.unwrap();
    let config = CompensatorConfig {
        delay: Duration::from_millis(1),
        check_interval: Duration::from_millis(2),
        poll_timeout: Duration::from_millis(2),
        ..CompensatorConfig::default()
    };
    let three_resent = |broker: &MemoryBroker| resends(broker, 1) >= 3;
    let store = MemoryStore::new();
    let then = Duration::from_millis(50);
    compensate_until(&broker, &store, config, three_resent, then).await;
    let first_resends: BTreeSet<bytes::Bytes> = broker
        .records(TOPIC)
        .into_iter()
        .filter(|record| attempts(record) == Some(1))
        .map(|record| record.payload)
        .collect();
    let expected: BTreeSet<bytes::Bytes> = originals
        .into_iter()
        .filter(|record| record.partition == 0 && record.offset < 3)
        .map(|record| record.payload)
        .collect();
    assert_eq!(first_resends, expected);
}

/// Goal: after a re-send the compensator waits `delay` before it checks that event again
/// (the re-send needs time to be applied). Method: a missing effect behind a committed main
/// group, a delay of 1 s; once every record was re-sent, 300 ms more bring no second re-send.
#[tokio::test]
async fn compensator_waits_one_delay_between_resends() {
    let (broker, _) = clean_topic(1, 1, 3).await;
    let end = broker.records(TOPIC).len() as i64;
    let commit = OffsetCommit {
        partition: 0,
        offset: end,
        metadata: String::new(),
    };
    let mut main = broker.consumer(TOPIC, GROUP);
    main.commit(&[commit], CommitMode::Sync).await.unwrap();
    let config = CompensatorConfig {
        delay: Duration::from_secs(1),
        check_interval: Duration::from_millis(2),
        poll_timeout: Duration::from_millis(2),
        attempts_max: 10,
        ..CompensatorConfig::default()
    };
    let all_resent = |broker: &MemoryBroker| resends(broker, 1) as i64 >= end;
    let store = MemoryStore::new();
    let then = Duration::from_millis(300);
    let report = compensate_until(&broker, &store, config, all_resent, then).await;
    assert_eq!(
        report.resent, end as u64,
        "one re-send per record: {report:?}"
    );
}

/// The compensator's attempts header of a record, if it is a re-send.
fn attempts(record: &Record) -> Option<u32> {
    holdfast::pipeline::dead_letter::header(
        &record.headers,
        holdfast::pipeline::dead_letter::HEADER_ATTEMPTS,
    )
    .and_then(|value| value.parse().ok())
}

/// Goal: the first check comes one check interval after start, not at once (the interval
/// bounds the load the compensator puts on the store and the group coordinator). Method: a
/// fully applied and committed workload, no delay, a check interval far longer than the run:
/// nothing is confirmed yet.
#[tokio::test]
async fn compensator_checks_first_after_one_check_interval() {
    let broker = MemoryBroker::new(TOPIC, 2);
    let workload = WorkloadConfig {
        orders: 10,
        malformed_ratio: 0.0,
        seed: 7,
        ..WorkloadConfig::default()
    };
    publish(&broker, &workload).await;
    let (cache, store) = (MemoryCache::new(), MemoryStore::new());
    let (running, _) = start(&broker, &cache, &store, config());
    wait_caught_up(&broker).await;
    running.stop().await.unwrap();
    let config = CompensatorConfig {
        delay: Duration::ZERO,
        check_interval: Duration::from_secs(30),
        poll_timeout: Duration::from_millis(2),
        ..CompensatorConfig::default()
    };
    let report = compensate_for(&broker, &store, config, Duration::from_millis(100)).await;
    assert_eq!(
        report.confirmed, 0,
        "checked before the interval: {report:?}"
    );
    assert!(report.pending > 0, "{report:?}");
}

/// A store that refuses every transaction holding one of the `poison` events (as a
/// constraint the event breaks would), and is the in-memory store otherwise.
#[derive(Clone)]
struct PoisonStore {
    inner: MemoryStore,
    poison: Arc<BTreeSet<String>>,
}

impl OrderStore for PoisonStore {
    async fn apply_batch(
        &self,
        events: &[OrderEvent],
        progress: &[ProgressWrite],
    ) -> Result<Vec<ApplyOutcome>, PortError> {
        if let Some(event) = events.iter().find(|e| self.poison.contains(&e.event_id)) {
            return Err(PortError::Rejected {
                service: "test store",
                detail: format!("event {} breaks a constraint", event.event_id),
            });
        }
        self.inner.apply_batch(events, progress).await
    }

    async fn claim_progress(
        &self,
        partition: PartitionId,
        owner: i32,
    ) -> Result<Option<CommittedOffset>, PortError> {
        self.inner.claim_progress(partition, owner).await
    }

    async fn load_rows(
        &self,
        order_ids: &[String],
    ) -> Result<BTreeMap<String, OrderRow>, PortError> {
        self.inner.load_rows(order_ids).await
    }
}

/// Goal: a batch the store keeps rejecting is split, only the poison events are dead-lettered
/// (after `record_attempts_max` rejections each), every other event of their batches is
/// applied, and the commit point passes them. Method: three events the store refuses in a
/// workload of 120 orders; the verdict's only complaint must be those three, dead-lettered.
#[tokio::test]
async fn a_rejected_batch_is_split_and_only_the_poison_is_dead_lettered() {
    let (broker, truth) = clean_topic(2, 120, 9).await;
    let poisoned: Vec<Fact> = truth
        .acknowledged
        .iter()
        .step_by(97)
        .take(3)
        .cloned()
        .collect();
    let store = PoisonStore {
        inner: MemoryStore::new(),
        poison: Arc::new(poisoned.iter().map(|f| f.event_id.clone()).collect()),
    };
    let metrics = Arc::new(Metrics::new());
    let services = Services {
        cache: MemoryCache::new(),
        store: store.clone(),
        dead_letters: broker.clone(),
        probe: CrashProbe::default(),
    };
    let consumer = Consumer::new(
        config(),
        broker.consumer(TOPIC, GROUP),
        services,
        Arc::clone(&metrics),
    )
    .unwrap();
    let running = consumer.spawn();
    wait_caught_up(&broker).await;
    running.stop().await.unwrap();
    let letters: Vec<Vec<u8>> = broker
        .records("orders.dlq")
        .into_iter()
        .map(|record| record.payload.to_vec())
        .collect();
    let view = StoreView {
        ledger: store
            .inner
            .applied_events()
            .iter()
            .map(Application::of)
            .collect(),
        rows: store.inner.rows(),
    };
    let report = verify(&truth, &view, &letters, &BTreeSet::new());
    assert!(report.missing.is_empty(), "{report}");
    assert!(report.applied_and_dead_lettered.is_empty(), "{report}");
    assert_eq!(report.dead_lettered_valid, poisoned, "{report}");
    assert_eq!(letters.len(), 3, "only the poison is dead-lettered");
    assert_eq!(report.applied, report.acknowledged - 3);
    assert!(metrics.retries_rejected.get() >= 3);
}

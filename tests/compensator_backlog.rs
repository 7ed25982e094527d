//! The compensator under a backlog larger than its tracker admits: it must hold what it has no
//! room for, never skip it, so every missing effect is still found and re-sent.

use holdfast::event::OrderEvent;
use holdfast::idempotency::memory::{MemoryCache, MemoryStore};
use holdfast::memlog::MemoryBroker;
use holdfast::offsets::Limits;
use holdfast::pipeline::{
    Compensator, CompensatorConfig, Consumer, ConsumerConfig, Metrics, RunningConsumer, Services,
    ShutdownTrigger,
};
use holdfast::ports::{NoProbe, OrderStore};
use holdfast::verify::{verify, Application, GroundTruth, StoreView};
use holdfast::workload::{Workload, WorkloadConfig};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const TOPIC: &str = "orders";
const GROUP: &str = "holdfast";
const COMPENSATOR_GROUP: &str = "holdfast-compensator";

fn start(broker: &MemoryBroker, store: &MemoryStore) -> RunningConsumer {
    let config = ConsumerConfig {
        batch_size: 50,
        commit_interval: Duration::from_millis(5),
        poll_timeout: Duration::from_millis(2),
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(20),
        ..ConsumerConfig::default()
    };
    let services = Services {
        cache: MemoryCache::new(),
        store: store.clone(),
        dead_letters: broker.clone(),
        probe: NoProbe,
    };
    let log = broker.consumer(TOPIC, GROUP);
    Consumer::new(config, log, services, Arc::new(Metrics::new()))
        .unwrap()
        .spawn()
}

fn check(truth: &GroundTruth, store: &MemoryStore) -> holdfast::verify::VerifyReport {
    let view = StoreView {
        ledger: store.applied_events().iter().map(Application::of).collect(),
        rows: store.rows(),
    };
    verify(truth, &view, &[], &BTreeSet::new())
}

/// Goal: with room for 4 records in flight (and a span wide enough that a skipped record
/// would be gap-filled as finished) and a log of hundreds, every effect missing
/// anywhere in the log is re-sent. Method: apply a workload, then drop every seventh event's
/// effect behind the pipeline's back; run the compensator with a tiny tracker until its group
/// has committed the whole log, and the main group (which applies the re-sends) too.
#[tokio::test]
async fn a_full_tracker_holds_records_and_never_skips_them() {
    let broker = MemoryBroker::new(TOPIC, 1);
    let workload = Workload::generate(&WorkloadConfig {
        orders: 60,
        malformed_ratio: 0.0,
        duplicate_ratio: 0.0,
        // Without rivals every victim's effect is missing, so every one must be re-sent (a lost
        // rival that the rule ranks below the claim kept is rightly not).
        conflict_ratio: 0.0,
        seed: 5,
        ..WorkloadConfig::default()
    })
    .unwrap();
    let truth = broker
        .publish_workload(TOPIC, &workload)
        .await
        .unwrap()
        .truth;
    let records = broker.records(TOPIC);
    let victims: Vec<OrderEvent> = records
        .iter()
        .step_by(7)
        .filter_map(|record| OrderEvent::decode(&record.payload).ok())
        .collect();
    let damaged = MemoryStore::new();
    let survivors: Vec<OrderEvent> = records
        .iter()
        .filter_map(|record| OrderEvent::decode(&record.payload).ok())
        .filter(|event| !victims.contains(event))
        .collect();
    damaged.apply_batch(&survivors, &[]).await.unwrap();
    // The main group commits the whole log (on a whole store): every missing effect is due.
    let tick = Duration::from_millis(2);
    let limit = Duration::from_secs(20);
    let first = start(&broker, &MemoryStore::new());
    broker
        .wait_caught_up(TOPIC, GROUP, tick, limit)
        .await
        .unwrap();
    first.stop().await.unwrap();
    assert!(!check(&truth, &damaged).passed(), "the damage shows");
    // From here the main group applies only what the compensator re-sends.
    let main = start(&broker, &damaged);

    let config = CompensatorConfig {
        delay: Duration::from_millis(5),
        check_interval: Duration::from_millis(5),
        poll_timeout: Duration::from_millis(2),
        limits: Limits {
            in_flight_max: 4,
            span_max: 4096,
            ..Limits::default()
        },
        ..CompensatorConfig::default()
    };
    let compensator = Compensator::new(
        config,
        broker.consumer(TOPIC, COMPENSATOR_GROUP),
        broker.clone(),
        damaged.clone(),
        broker.clone(),
    );
    let (stop, shutdown) = ShutdownTrigger::new();
    let task = tokio::spawn(compensator.run(shutdown));
    broker
        .wait_caught_up(TOPIC, COMPENSATOR_GROUP, tick, limit)
        .await
        .unwrap();
    broker
        .wait_caught_up(TOPIC, GROUP, tick, limit)
        .await
        .unwrap();
    stop.trigger();
    let report = task.await.unwrap();
    main.stop().await.unwrap();
    assert!(
        report.resent >= victims.len() as u64,
        "{} missing effects, {} re-sent: {report:?}",
        victims.len(),
        report.resent
    );
    assert!(report.dead_lettered.is_empty(), "{report:?}");
    let verdict = check(&truth, &damaged);
    assert!(verdict.passed(), "{verdict}");
}

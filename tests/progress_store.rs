//! `progress = store` through the whole pipeline, on the in-memory ports: a new owner resumes
//! from the progress stored with the effects, not from the group's commit, and a member whose
//! partitions a later generation claimed has every transaction refused.

use holdfast::idempotency::memory::{MemoryCache, MemoryStore};
use holdfast::memlog::MemoryBroker;
use holdfast::pipeline::{Consumer, ConsumerConfig, Metrics, ProgressMode, Services};
use holdfast::ports::{NoProbe, OrderStore, OutboundMessage, Publisher};
use holdfast::verify::{verify, Application, GroundTruth, StoreView};
use holdfast::workload::{Workload, WorkloadConfig};
use std::sync::Arc;
use std::time::Duration;

const TOPIC: &str = "orders";
const PARTITIONS: i32 = 3;

async fn topic(orders: usize) -> (MemoryBroker, GroundTruth, usize) {
    let broker = MemoryBroker::new(TOPIC, PARTITIONS);
    let workload = Workload::generate(&WorkloadConfig {
        orders,
        malformed_ratio: 0.0,
        seed: 41,
        ..WorkloadConfig::default()
    })
    .unwrap();
    let published = broker.publish_workload(TOPIC, &workload).await.unwrap();
    let records = workload.messages.len();
    (broker, published.truth, records)
}

fn config(progress: ProgressMode) -> ConsumerConfig {
    ConsumerConfig {
        batch_size: 20,
        concurrency: 3,
        commit_interval: Duration::from_millis(5),
        poll_timeout: Duration::from_millis(2),
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(20),
        drain_timeout: Duration::from_millis(200),
        progress,
        ..ConsumerConfig::default()
    }
}

fn start(
    broker: &MemoryBroker,
    group: &str,
    store: &MemoryStore,
    progress: ProgressMode,
) -> (holdfast::pipeline::RunningConsumer, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let services = Services {
        cache: MemoryCache::new(),
        store: store.clone(),
        dead_letters: broker.clone(),
        probe: NoProbe,
    };
    let log = broker.consumer(TOPIC, group);
    let consumer = Consumer::new(config(progress), log, services, Arc::clone(&metrics)).unwrap();
    (consumer.spawn(), metrics)
}

async fn caught_up(broker: &MemoryBroker, group: &str) {
    let (tick, limit) = (Duration::from_millis(2), Duration::from_secs(8));
    let waited = broker.wait_caught_up(TOPIC, group, tick, limit).await;
    waited.unwrap_or_else(|error| panic!("{error}"));
}

/// Records the group's workers processed (applied, or found to be duplicates anywhere).
fn processed(metrics: &Metrics) -> u64 {
    metrics.applied.get()
        + metrics.duplicates_cache.get()
        + metrics.duplicates_batch.get()
        + metrics.duplicates_store.get()
}

fn check(truth: &GroundTruth, store: &MemoryStore) {
    let view = StoreView {
        ledger: store.applied_events().iter().map(Application::of).collect(),
        rows: store.rows(),
    };
    let report = verify(truth, &view, &[], &std::collections::BTreeSet::new());
    assert!(report.passed(), "{report}");
}

/// Goal: in store mode a member with no commit at all (a group whose commits, or commit
/// metadata, the broker lost) resumes where the store's progress says and processes nothing
/// again; in kafka mode the same member redoes everything (so the test can tell the modes
/// apart). Method: one group consumes everything in store mode; a second group on the same
/// store then runs in store mode, a third in kafka mode, each until caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_resumes_from_the_stored_progress() {
    let (broker, truth, records) = topic(40).await;
    let store = MemoryStore::new();
    let (first, first_metrics) = start(&broker, "first", &store, ProgressMode::Store);
    caught_up(&broker, "first").await;
    first.stop().await.unwrap();
    assert!(processed(&first_metrics) > 0);
    let rows = store.state().progress_rows().clone();
    assert_eq!(rows.len(), PARTITIONS as usize, "{rows:?}");
    let committed = broker.committed("first");
    for (partition, row) in &rows {
        let stored = row.progress.as_ref().map(|p| p.offset);
        assert_eq!(stored, committed.get(partition).map(|c| c.offset));
    }

    let (second, metrics) = start(&broker, "second", &store, ProgressMode::Store);
    caught_up(&broker, "second").await;
    second.stop().await.unwrap();
    assert_eq!(processed(&metrics), 0, "the stored progress was not used");
    assert_eq!(metrics.stale_skipped.get(), records as u64);

    let (third, metrics) = start(&broker, "third", &store, ProgressMode::Kafka);
    caught_up(&broker, "third").await;
    third.stop().await.unwrap();
    assert_eq!(processed(&metrics), records as u64);
    check(&truth, &store);
}

/// Goal: a member that claims its partitions after a later generation did (a zombie) has every
/// transaction refused: it applies nothing and commits nothing; the later generation's member
/// then applies everything once. Method: every partition's row is claimed for generation 2
/// first; the group's first member (generation 1) runs for a while and is aborted; its
/// second member (generation 2) runs until caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_generation_has_every_transaction_refused() {
    let (broker, truth, _) = topic(30).await;
    let store = MemoryStore::new();
    for partition in 0..PARTITIONS {
        store.claim_progress(partition, 2).await.unwrap();
    }
    let (zombie, metrics) = start(&broker, "group", &store, ProgressMode::Store);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(metrics.polled.get() > 0, "the zombie never polled");
    assert!(
        store.applied_events().is_empty(),
        "a zombie's transaction committed"
    );
    assert!(metrics.batches_fenced.get() > 0, "no transaction was tried");
    zombie.abort().await;
    assert!(broker.committed("group").values().all(|c| c.offset == 0));

    let (owner, metrics) = start(&broker, "group", &store, ProgressMode::Store);
    caught_up(&broker, "group").await;
    owner.stop().await.unwrap();
    assert!(metrics.applied.get() > 0);
    check(&truth, &store);
}

/// Goal: a partition given up (here at shutdown) has its final progress stored, also when its
/// last records never reached a store transaction (malformed, so dead-lettered): the next
/// owner resumes at the group's commit and redoes nothing. Method: every partition ends in
/// malformed records; after the group caught up and stopped, each progress row holds the
/// group's commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_given_up_has_its_final_progress_stored() {
    let (broker, truth, _) = topic(20).await;
    for index in 0..12 {
        let malformed = OutboundMessage {
            topic: TOPIC.to_owned(),
            key: format!("order-tail-{index}").into_bytes(),
            payload: "not an event".into(),
            headers: Vec::new(),
        };
        broker.publish(malformed).await.unwrap();
    }
    let store = MemoryStore::new();
    let (member, metrics) = start(&broker, "group", &store, ProgressMode::Store);
    caught_up(&broker, "group").await;
    member.stop().await.unwrap();
    assert_eq!(metrics.dead_letters.get(), 12);
    let committed = broker.committed("group");
    let rows = store.state().progress_rows().clone();
    for partition in 0..PARTITIONS {
        let stored = rows
            .get(&partition)
            .and_then(|row| row.progress.as_ref())
            .map(|p| p.offset);
        let commit = committed.get(&partition).map(|c| c.offset);
        assert_eq!(stored, commit, "partition {partition}: {rows:?}");
    }
    check(&truth, &store);
}

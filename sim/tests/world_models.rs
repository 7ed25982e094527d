//! Tests of the simulated world's models: each checks one behaviour the explorer relies on,
//! and, where a fault should cause loss or duplication, that it really does (no test here
//! passes on a model that cannot fail).
#![cfg(madsim)]

mod common;

use common::{cut, settle, simulate};
use holdfast::event::{EventKind, OrderEvent};
use holdfast::idempotency::DeliveryKey;
use holdfast::ports::{
    ApplyOutcome, CommitMode, CommittedOffset, DedupCache, Delivery, EventLog, OffsetCommit,
    OrderStore, OutboundMessage, PortError, ProgressWrite, Publisher, Rebalance, Record,
};
use holdfast::testkit::planted::PlantedBug;
use holdfast_sim::world::{Acks, FlushPolicy, NodeId, ServiceNode, SimLog, World, WorldConfig};
use madsim::runtime::NodeHandle;
use madsim::task::JoinHandle;
use madsim::time::{sleep, Instant};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What one publish answered.
type Answer = Result<Delivery, PortError>;

fn message(index: usize) -> OutboundMessage {
    OutboundMessage {
        topic: "orders".to_string(),
        key: format!("order-{}", index % 37).into_bytes(),
        payload: format!("event-{index}").into(),
        headers: Vec::new(),
    }
}

/// RF 3 with `acks` and the `min.insync.replicas` that goes with it (2 for acks=all, else 1).
fn with_acks(acks: Acks) -> WorldConfig {
    WorldConfig {
        acks,
        min_insync_replicas: if acks == Acks::All { 2 } else { 1 },
        ..WorldConfig::default()
    }
}

/// The default (safe) world with a single partition, so every record meets the same leader.
fn one_partition() -> WorldConfig {
    WorldConfig {
        partitions: 1,
        ..WorldConfig::default()
    }
}

/// Runs `task` on `node` (a simulated machine of its own) and waits for its answer.
async fn on_node<T: Send + 'static>(
    node: &NodeHandle,
    task: impl Future<Output = T> + Send + 'static,
) -> T {
    node.spawn(task).await.unwrap()
}

/// Runs `task` on a fresh client node called `name`, giving it its own handle on the world.
async fn on_client<T, F>(world: &World, name: &str, task: impl FnOnce(World) -> F) -> T
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    on_node(&world.client_node(name), task(world.clone())).await
}

/// Publishes `count` messages one after another from a fresh client node; returns the result
/// of each, by index.
async fn produce(world: &World, name: &str, count: usize) -> Vec<Answer> {
    on_client(world, name, move |world| async move {
        let publisher = world.publisher().await;
        let mut results = Vec::new();
        for index in 0..count {
            results.push(publisher.publish(message(index)).await);
        }
        results
    })
    .await
}

/// Starts `produce` of `count` messages from a node called "producer" and returns at once, so
/// the caller can inject faults while it runs.
fn produce_in_background(world: &World, count: usize) -> JoinHandle<Vec<Answer>> {
    let world = world.clone();
    madsim::task::spawn(async move { produce(&world, "producer", count).await })
}

/// Consumes with a fresh member of `group` until `expected` records arrived or `limit` passed.
async fn consume(world: &World, group: &str, expected: usize, limit: Duration) -> Vec<Record> {
    let group = group.to_string();
    on_client(
        world,
        &format!("consumer-{group}"),
        move |world| async move {
            let mut log = world.log(&group).await;
            let deadline = Instant::now() + limit;
            let mut records = Vec::new();
            while records.len() < expected && Instant::now() < deadline {
                if let Ok(polled) = log.poll(1000, Duration::from_millis(50)).await {
                    records.extend(polled.records);
                }
            }
            records
        },
    )
    .await
}

/// The indices of the publishes that were acknowledged.
fn acknowledged_indices(results: &[Answer]) -> Vec<usize> {
    (0..results.len()).filter(|i| results[*i].is_ok()).collect()
}

/// Acknowledged deliveries that the partition's committed log does not hold (lost writes).
fn lost_acknowledged(world: &World, results: &[Answer]) -> Vec<usize> {
    let mut logs = BTreeMap::new();
    let mut lost = Vec::new();
    for (index, result) in results.iter().enumerate() {
        let Ok(delivery) = result else { continue };
        let log = logs
            .entry(delivery.partition)
            .or_insert_with(|| world.partition_log(delivery.partition));
        let payload = message(index).payload;
        if !log.iter().any(|(_, record)| record.payload == payload) {
            lost.push(index);
        }
    }
    lost
}

/// (acknowledged, lost acknowledged) for `results`, judged against the logs as they are now.
fn tally(world: &World, results: &[Answer]) -> (usize, usize) {
    (
        acknowledged_indices(results).len(),
        lost_acknowledged(world, results).len(),
    )
}

/// Copies of `payload` in one partition's log.
fn copies_in(log: &[(i64, Record)], payload: &[u8]) -> usize {
    log.iter()
        .filter(|(_, record)| record.payload == payload)
        .count()
}

/// Copies of `payload` across the first `partitions` partitions' logs.
fn copies(world: &World, partitions: i32, payload: &[u8]) -> usize {
    (0..partitions)
        .map(|partition| copies_in(&world.partition_log(partition), payload))
        .sum()
}

mod kafka {
    use super::*;

    /// Partition 0's leader: its broker index and its node.
    fn leader_of_partition_zero(world: &World) -> (usize, NodeId) {
        let leader = world.partition_table()[0].leader.unwrap();
        (leader, world.id(ServiceNode::Broker(leader)))
    }

    /// The brokers other than `leader` (the cluster has three).
    fn followers_of(leader: usize) -> Vec<usize> {
        (0..3).filter(|broker| *broker != leader).collect()
    }

    /// Goal: what is produced with acks=all is consumed exactly once, in offset order per
    /// partition, at the offsets the producer was told, and equals the committed log.
    #[madsim::test]
    async fn produce_consume_round_trip() {
        let world = World::start(WorldConfig::default()).await;
        let results = produce(&world, "producer", 300).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let records = consume(&world, "g", 300, Duration::from_secs(10)).await;
        assert_eq!(records.len(), 300);
        let mut last: BTreeMap<i32, i64> = BTreeMap::new();
        for record in &records {
            let previous = last.insert(record.partition, record.offset);
            assert!(
                previous.is_none_or(|p| p + 1 == record.offset),
                "no gap, no rewind"
            );
        }
        for (index, result) in results.iter().enumerate() {
            let delivery = result.clone().unwrap();
            let found = records
                .iter()
                .find(|r| r.partition == delivery.partition && r.offset == delivery.offset)
                .unwrap();
            assert_eq!(found.payload, message(index).payload);
        }
        let logged: usize = (0..4).map(|p| world.partition_log(p).len()).sum();
        assert_eq!(logged, 300);
        assert_eq!(lost_acknowledged(&world, &results), Vec::<usize>::new());
    }

    /// Goal: acks=all, RF 3, min ISR 2 survives one broker crash with no acknowledged loss.
    /// Method: kill the leader of every partition's first replica mid-production, restart it.
    #[madsim::test]
    async fn acks_all_survives_one_broker_crash() {
        let world = World::start(WorldConfig::default()).await;
        let producing = produce_in_background(&world, 400);
        sleep(Duration::from_millis(300)).await;
        world.kill(ServiceNode::Broker(0));
        sleep(Duration::from_millis(800)).await;
        world.restart(ServiceNode::Broker(0));
        let results = producing.await.unwrap();
        settle(&world).await;
        let acknowledged = acknowledged_indices(&results).len();
        assert!(
            acknowledged > 300,
            "most writes acknowledged: {acknowledged}"
        );
        assert_eq!(lost_acknowledged(&world, &results), Vec::<usize>::new());
        assert!(
            world.faults().iter().any(|f| f.contains("leader Some(0)")),
            "{:?}",
            world.faults()
        );
    }

    fn single_partition(acks: Acks) -> WorldConfig {
        WorldConfig {
            partitions: 1,
            ..with_acks(acks)
        }
    }

    /// Runs the "leader dies before its followers fetched" scenario: replication from the
    /// leader is cut, ten records are produced, the leader is killed and the cut healed.
    /// Returns (acknowledged, lost acknowledged).
    async fn leader_dies_before_replication(acks: Acks) -> (usize, usize) {
        let world = World::start(single_partition(acks)).await;
        let (leader, leader_node) = leader_of_partition_zero(&world);
        let followers = followers_of(leader);
        for follower in &followers {
            world.clog_link(leader_node, world.id(ServiceNode::Broker(*follower)), true);
        }
        let producing = produce_in_background(&world, 10);
        sleep(Duration::from_millis(200)).await;
        world.kill(ServiceNode::Broker(leader));
        for follower in &followers {
            world.clog_link(leader_node, world.id(ServiceNode::Broker(*follower)), false);
        }
        let results = producing.await.unwrap();
        world.restart(ServiceNode::Broker(leader));
        settle(&world).await;
        tally(&world, &results)
    }

    /// Goal: acks=1 loses acknowledged records when the leader dies before replicating them;
    /// acks=all in the very same scenario loses none (it waits, retries, and lands them on
    /// the new leader).
    #[test]
    fn acks_one_loses_when_the_leader_dies_before_replication() {
        for seed in 1..=3 {
            let (acknowledged, lost) = simulate(seed, leader_dies_before_replication(Acks::One));
            assert_eq!(acknowledged, 10);
            assert!(
                lost > 0,
                "acks=1 should lose: acknowledged {acknowledged}, lost {lost}"
            );
            let (acknowledged, lost) = simulate(seed, leader_dies_before_replication(Acks::All));
            assert!(acknowledged > 0);
            assert_eq!(lost, 0, "acks=all must not lose (seed {seed})");
        }
    }

    /// Produces 50 records, crashes every broker at once, restarts them; returns the lost
    /// acknowledged records.
    async fn all_replicas_crash(flush: FlushPolicy) -> (usize, usize) {
        let world = World::start(WorldConfig {
            flush,
            ..one_partition()
        })
        .await;
        let results = produce(&world, "producer", 50).await;
        for broker in 0..3 {
            world.kill(ServiceNode::Broker(broker));
        }
        sleep(Duration::from_millis(100)).await;
        for broker in 0..3 {
            world.restart(ServiceNode::Broker(broker));
        }
        settle(&world).await;
        tally(&world, &results)
    }

    /// Goal: the page cache is volatile: every replica crashing at once loses acknowledged
    /// records unless each append was flushed.
    #[test]
    fn all_replicas_crashing_loses_unflushed_records() {
        let (acknowledged, lost) = simulate(1, all_replicas_crash(FlushPolicy::Never));
        assert_eq!(acknowledged, 50);
        assert_eq!(lost, 50, "nothing was flushed, so nothing survives");
        let (acknowledged, lost) = simulate(1, all_replicas_crash(FlushPolicy::EveryAppend));
        assert_eq!(acknowledged, 50);
        assert_eq!(lost, 0);
    }

    /// Starts a world with a client node "producer" that does not hear partition 0's leader:
    /// every acknowledgement is lost until the caller heals the link. Returns the world, the
    /// client and the leader's node.
    async fn answers_cut(config: WorldConfig) -> (World, NodeHandle, NodeId) {
        let world = World::start(config).await;
        let (_, leader_node) = leader_of_partition_zero(&world);
        let client = world.client_node("producer");
        world.clog_link(leader_node, client.id(), true);
        (world, client, leader_node)
    }

    /// One partition, a producer with the given idempotence that gives up after 100 ms.
    fn impatient_producer(idempotent: bool) -> WorldConfig {
        WorldConfig {
            idempotent_producer: idempotent,
            request_timeout: Duration::from_millis(100),
            ..one_partition()
        }
    }

    /// Publishes one record while the leader's answers are cut for a while, so the first
    /// attempt is appended but its acknowledgement lost; returns copies in the log.
    async fn retry_after_lost_ack(idempotent: bool) -> (Delivery, usize) {
        let (world, client, leader_node) = answers_cut(impatient_producer(idempotent)).await;
        let publishing = {
            let world = world.clone();
            client.spawn(async move { world.publisher().await.publish(message(1)).await })
        };
        sleep(Duration::from_millis(130)).await;
        world.clog_link(leader_node, client.id(), false);
        let delivery = publishing.await.unwrap().unwrap();
        sleep(Duration::from_millis(200)).await;
        (delivery, copies(&world, 1, &message(1).payload))
    }

    /// Goal: a retry after a lost acknowledgement duplicates without idempotence and does
    /// not with it (the broker recognises the sequence and answers the original offset).
    #[test]
    fn retries_duplicate_unless_idempotent() {
        let (_, copies_plain) = simulate(1, retry_after_lost_ack(false));
        assert!(
            copies_plain >= 2,
            "non-idempotent retry should duplicate: {copies_plain}"
        );
        let (delivery, copies_idempotent) = simulate(1, retry_after_lost_ack(true));
        assert_eq!(copies_idempotent, 1);
        assert_eq!(delivery.offset, 0, "the original offset");
    }

    /// Publishes 30 records at once from one client while the leader's answers to it are
    /// cut: the first record to reach the producer goes alone and gives up, the other 29
    /// queue behind it and go as one batch, whose acknowledgement is lost too; the cut heals
    /// 50 ms after the first record gave up, before that batch's retry. Returns each
    /// publish's result and the partition's log.
    async fn batch_retry_after_lost_ack(idempotent: bool) -> (Vec<Answer>, Vec<(i64, Record)>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (world, client, leader_node) = answers_cut(WorldConfig {
            producer_retries: 2,
            ..impatient_producer(idempotent)
        })
        .await;
        let finished = std::sync::Arc::new(AtomicUsize::new(0));
        let publishing = {
            let (world, finished) = (world.clone(), finished.clone());
            client.spawn(async move {
                let publisher = std::sync::Arc::new(world.publisher().await);
                let sends: Vec<_> = (0..30)
                    .map(|index| {
                        let (publisher, finished) = (publisher.clone(), finished.clone());
                        madsim::task::spawn(async move {
                            let result = publisher.publish(message(index)).await;
                            finished.fetch_add(1, Ordering::SeqCst);
                            result
                        })
                    })
                    .collect();
                let mut results = Vec::new();
                for send in sends {
                    results.push(send.await.unwrap());
                }
                results
            })
        };
        while finished.load(Ordering::SeqCst) == 0 {
            sleep(Duration::from_millis(1)).await;
        }
        sleep(Duration::from_millis(50)).await;
        world.clog_link(leader_node, client.id(), false);
        let results = publishing.await.unwrap();
        sleep(Duration::from_millis(200)).await;
        (results, world.partition_log(0))
    }

    /// Goal: a batch is retried as a whole, and each record's caller still gets its own
    /// answer: with idempotence every acknowledged record is in the log once, at the offset
    /// its caller was told; without it, the retried batch is appended twice.
    #[test]
    fn batches_retry_as_a_whole_and_answer_each_record() {
        for seed in 1..=3 {
            let (results, log) = simulate(seed, batch_retry_after_lost_ack(true));
            let acknowledged = acknowledged_indices(&results);
            assert_eq!(
                acknowledged.len(),
                29,
                "seed {seed}: only the record sent alone gave up"
            );
            for index in acknowledged {
                let offset = results[index].as_ref().unwrap().offset;
                let at = log.iter().find(|(at, _)| *at == offset);
                assert_eq!(
                    at.map(|(_, record)| record.payload.clone()),
                    Some(message(index).payload),
                    "seed {seed}: record {index} is at the offset its caller was told"
                );
                assert_eq!(
                    copies_in(&log, &message(index).payload),
                    1,
                    "record {index}"
                );
            }
            let (results, log) = simulate(seed, batch_retry_after_lost_ack(false));
            let acknowledged = acknowledged_indices(&results);
            assert_eq!(acknowledged.len(), 29, "seed {seed}");
            for index in acknowledged {
                assert!(
                    copies_in(&log, &message(index).payload) >= 2,
                    "seed {seed} record {index}: the whole batch was appended again"
                );
            }
        }
    }

    /// Cuts replication, produces ten acks=1 records (flushed), waits until the ISR shrinks
    /// to the leader alone, kills the leader; returns (acknowledged, lost acknowledged).
    async fn leader_alone_in_isr_dies(unclean_election: bool) -> (usize, usize) {
        let world = World::start(WorldConfig {
            flush: FlushPolicy::EveryAppend,
            unclean_election,
            ..single_partition(Acks::One)
        })
        .await;
        let (leader, leader_node) = leader_of_partition_zero(&world);
        let followers = followers_of(leader);
        let replication = |on: bool| {
            for follower in &followers {
                let follower_node = world.id(ServiceNode::Broker(*follower));
                cut(&world, leader_node, follower_node, on);
            }
        };
        // Both ways: a follower whose fetches do arrive still counts as caught up.
        replication(true);
        // A follower leaves the ISR only once it lags the leader's log for the lag time
        // (an idle one with the whole log stays, as in Kafka): the records make it lag.
        let results = produce(&world, "producer", 10).await;
        sleep(Duration::from_secs(1)).await;
        assert_eq!(
            world.partition_table()[0].isr,
            vec![leader],
            "the ISR shrank"
        );
        world.kill(ServiceNode::Broker(leader));
        replication(false);
        sleep(Duration::from_millis(600)).await;
        let offline = world.partition_table()[0].leader.is_none();
        assert_eq!(
            offline, !unclean_election,
            "clean election waits for the ISR"
        );
        world.restart(ServiceNode::Broker(leader));
        settle(&world).await;
        tally(&world, &results)
    }

    /// Goal: unclean leader election loses acknowledged records that only the dead leader
    /// had; clean election keeps the partition offline instead and loses nothing.
    #[test]
    fn unclean_election_loses_clean_election_waits() {
        assert_eq!(simulate(1, leader_alone_in_isr_dies(false)), (10, 0));
        assert_eq!(simulate(1, leader_alone_in_isr_dies(true)), (10, 10));
    }

    /// Goal: acks=all refuses writes when the ISR is below min.insync.replicas.
    #[madsim::test]
    async fn acks_all_refuses_below_min_insync() {
        let world = World::start(WorldConfig {
            producer_retries: 2,
            ..one_partition()
        })
        .await;
        let (leader, _) = leader_of_partition_zero(&world);
        for broker in followers_of(leader) {
            world.kill(ServiceNode::Broker(broker));
        }
        sleep(Duration::from_secs(1)).await;
        assert_eq!(world.partition_table()[0].isr, vec![leader]);
        let results = produce(&world, "producer", 1).await;
        assert!(
            matches!(results[0], Err(PortError::Unavailable { .. })),
            "{results:?}"
        );
    }
}

mod groups {
    use super::*;

    type Owned = Arc<Mutex<BTreeSet<i32>>>;

    /// A member that polls forever, keeping its current ownership in `owned`.
    fn member(world: &World, name: &str, owned: Owned) -> NodeHandle {
        let node = world.client_node(name);
        let world = world.clone();
        node.spawn(async move {
            let mut log = world.log("g").await;
            loop {
                if let Ok(polled) = log.poll(100, Duration::from_millis(20)).await {
                    let mut owned = owned.lock().unwrap();
                    for change in polled.rebalances {
                        match change {
                            Rebalance::Assigned { partition, .. } => owned.insert(partition),
                            Rebalance::Revoked { partition } => owned.remove(&partition),
                        };
                    }
                }
            }
        });
        node
    }

    /// Polls until a poll brings ownership changes, and returns them (every poll must
    /// succeed: these tests inject no faults while a member joins).
    async fn next_rebalances(log: &mut SimLog) -> Vec<Rebalance> {
        loop {
            let polled = log.poll(10, Duration::from_millis(50)).await.unwrap();
            if !polled.rebalances.is_empty() {
                return polled.rebalances;
            }
        }
    }

    /// Goal: when a member dies, its session expires and the survivor gets every partition.
    #[madsim::test]
    async fn rebalance_on_member_death() {
        let world = World::start(WorldConfig::default()).await;
        let (first, second) = (Owned::default(), Owned::default());
        member(&world, "first", first.clone());
        sleep(Duration::from_millis(500)).await;
        let second_node = member(&world, "second", second.clone());
        sleep(Duration::from_secs(2)).await;
        assert_eq!(first.lock().unwrap().len(), 2, "split between two members");
        assert_eq!(second.lock().unwrap().len(), 2);
        madsim::runtime::Handle::current().kill(second_node.id());
        sleep(Duration::from_secs(3)).await;
        assert_eq!(*first.lock().unwrap(), (0..4).collect::<BTreeSet<_>>());
        assert!(world.faults().iter().any(|f| f.contains("evicted")));
    }

    /// Goal: a zombie member (cut off until evicted) is fenced when it commits, and its
    /// commit changes nothing. The pure coordinator's stale-generation rule is tested in
    /// `group.rs`; this is the end-to-end path.
    #[madsim::test]
    async fn zombie_commit_is_fenced() {
        let world = World::start(WorldConfig::default()).await;
        let zombie = world.client_node("zombie");
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let (resume, resumed) = tokio::sync::oneshot::channel::<()>();
        let zombie_world = world.clone();
        let outcome = zombie.spawn(async move {
            let mut log = zombie_world.log("g").await;
            let mut owned = Vec::new();
            while owned.is_empty() {
                for change in next_rebalances(&mut log).await {
                    if let Rebalance::Assigned { partition, .. } = change {
                        owned.push(partition);
                    }
                }
            }
            let _ = sender.send(());
            let _ = resumed.await;
            let commit = OffsetCommit {
                partition: owned[0],
                offset: 7,
                metadata: "zombie".to_string(),
            };
            log.commit(&[commit], CommitMode::Sync).await
        });
        receiver.await.unwrap();
        world.clog(ServiceNode::Controller, true);
        sleep(Duration::from_millis(1500)).await; // longer than the session timeout
        world.clog(ServiceNode::Controller, false);
        sleep(Duration::from_millis(100)).await;
        resume.send(()).unwrap();
        let result = outcome.await.unwrap();
        assert!(
            matches!(result, Err(PortError::Fenced { .. })),
            "{result:?}"
        );
        assert!(world.committed("g").is_empty());
        assert!(world.commit_history("g").is_empty());
    }

    /// A member of group "g" commits offset 5 of partition 2 with metadata.
    async fn commit_offset_five_with_metadata(world: &World) {
        let committed = on_client(world, "first", |world| async move {
            let mut log = world.log("g").await;
            next_rebalances(&mut log).await;
            let commit = OffsetCommit {
                partition: 2,
                offset: 5,
                metadata: "finished:7,9".to_string(),
            };
            log.commit(&[commit], CommitMode::Sync).await
        })
        .await;
        assert_eq!(committed, Ok(()));
    }

    /// Goal: committed offsets and their metadata survive a coordinator restart, and a new
    /// member is assigned with them.
    #[madsim::test]
    async fn committed_metadata_survives_coordinator_restart() {
        let world = World::start(WorldConfig::default()).await;
        commit_offset_five_with_metadata(&world).await;
        let history = world.commit_history("g");
        assert_eq!(history.len(), 1);
        assert_eq!((history[0].partition, history[0].offset), (2, 5));
        world.restart(ServiceNode::Controller);
        sleep(Duration::from_secs(2)).await;
        let stored = world.committed("g");
        assert_eq!(stored[&2].offset, 5);
        assert_eq!(stored[&2].metadata.as_deref(), Some("finished:7,9"));
        let assigned = on_client(&world, "second", |world| async move {
            next_rebalances(&mut world.log("g").await).await
        })
        .await;
        assert!(assigned.iter().any(|change| matches!(change,
            Rebalance::Assigned { partition: 2, committed: Some(c), .. }
                if c.offset == 5 && c.metadata.as_deref() == Some("finished:7,9"))));
    }

    /// Goal: a coordinator that keeps no commit metadata (nisshi's behaviour) stores the
    /// offset alone and assigns with no metadata.
    #[madsim::test]
    async fn a_coordinator_without_metadata_keeps_the_offset_alone() {
        let world = World::start(WorldConfig {
            commit_metadata_kept: false,
            ..WorldConfig::default()
        })
        .await;
        commit_offset_five_with_metadata(&world).await;
        let stored = world.committed("g");
        assert_eq!(
            (stored[&2].offset, stored[&2].metadata.as_deref()),
            (5, None)
        );
    }
}

mod stores {
    use super::*;

    fn event(index: usize) -> OrderEvent {
        OrderEvent {
            event_id: format!("e{index}"),
            order_id: format!("o{index}"),
            user_id: "u".to_string(),
            kind: EventKind::Created,
            amount_minor: None,
            event_time_ms: 1_700_000_000_000 + index as i64,
            payload: bytes::Bytes::new(),
        }
    }

    fn keys(count: usize) -> Vec<DeliveryKey> {
        (0..count).map(|i| DeliveryKey::of(&event(i))).collect()
    }

    /// Goal: a volatile Redis forgets every key on restart, a persistent one does not; TTLs
    /// expire in virtual time; max-keys evicts.
    async fn redis_survives_restart(persistent: bool) -> Vec<bool> {
        let world = World::start(WorldConfig {
            redis_persistent: persistent,
            ..WorldConfig::default()
        })
        .await;
        let client_world = world.clone();
        let node = world.client_node("client");
        let cache = on_node(&node, async move { client_world.cache().await }).await;
        let remembered = {
            let cache = cache.clone();
            on_node(&node, async move {
                cache
                    .remember_batch(&keys(3), Duration::from_secs(60))
                    .await
                    .unwrap();
                cache.contains_batch(&keys(4)).await.unwrap()
            })
            .await
        };
        assert_eq!(remembered, vec![true, true, true, false]);
        world.restart(ServiceNode::Redis);
        sleep(Duration::from_millis(50)).await;
        on_node(&node, async move {
            cache.contains_batch(&keys(3)).await.unwrap()
        })
        .await
    }

    /// Goal: a volatile Redis forgets every key on restart, a persistent one does not.
    #[test]
    fn redis_restart_loses_keys_unless_persistent() {
        assert_eq!(simulate(1, redis_survives_restart(false)), vec![false; 3]);
        assert_eq!(simulate(1, redis_survives_restart(true)), vec![true; 3]);
    }

    /// Goal: TTLs expire in virtual time; max-keys evicts down to the limit.
    #[madsim::test]
    async fn redis_ttl_and_eviction() {
        let world = World::start(WorldConfig {
            redis_max_keys: Some(10),
            ..WorldConfig::default()
        })
        .await;
        let expired = on_client(&world, "client", |world| async move {
            let cache = world.cache().await;
            cache
                .remember_batch(&keys(1), Duration::from_millis(100))
                .await
                .unwrap();
            let fresh = cache.contains_batch(&keys(1)).await.unwrap();
            sleep(Duration::from_millis(150)).await;
            let stale = cache.contains_batch(&keys(1)).await.unwrap();
            cache
                .remember_batch(&keys(25), Duration::from_secs(60))
                .await
                .unwrap();
            (fresh, stale)
        })
        .await;
        assert_eq!(expired, (vec![true], vec![false]));
        assert_eq!(world.redis_keys(), 10);
    }

    /// Goal: a database crash in the middle of a transaction commits nothing, committed data
    /// survives a restart, and the unique key turns a replay into duplicates.
    #[madsim::test]
    async fn postgres_crash_mid_batch_commits_nothing() {
        let world = World::start(WorldConfig::default()).await;
        let node = world.client_node("client");
        let client_world = world.clone();
        let store = on_node(&node, async move { client_world.store().await }).await;
        let batch: Vec<OrderEvent> = (0..2000).map(event).collect();
        let applying = {
            let (store, batch) = (store.clone(), batch.clone());
            node.spawn(async move { store.apply_batch(&batch, &[]).await })
        };
        sleep(Duration::from_millis(30)).await; // the transaction needs about 100 ms
        world.kill(ServiceNode::Postgres);
        let crashed = applying.await.unwrap();
        assert!(
            matches!(crashed, Err(PortError::Unavailable { .. })),
            "{crashed:?}"
        );
        assert!(
            world.store_ledger().is_empty(),
            "nothing of the batch committed"
        );
        world.restart(ServiceNode::Postgres);
        sleep(Duration::from_millis(50)).await; // let it come back up
        let (first, second) = {
            let store = store.clone();
            on_node(&node, async move {
                let first = store.apply_batch(&batch, &[]).await.unwrap();
                let second = store.apply_batch(&batch, &[]).await.unwrap();
                (first, second)
            })
            .await
        };
        assert!(first.iter().all(|o| *o == ApplyOutcome::Applied));
        assert!(second.iter().all(|o| *o == ApplyOutcome::Duplicate));
        world.restart(ServiceNode::Postgres);
        sleep(Duration::from_millis(10)).await;
        // 2,000 distinct events, each applied once.
        let ledger = world.store_ledger();
        assert_eq!(ledger.len(), 2000);
        assert_eq!(
            ledger
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            2000
        );
        let rows = world.store_rows();
        assert_eq!(
            rows.len(),
            2000,
            "one wide row per order, merged by the core"
        );
        assert_eq!(
            rows["o7"]
                .created
                .as_ref()
                .map(|stamp| stamp.event_id.as_str()),
            Some("e7")
        );
        let found = on_node(&node, async move {
            let asked = vec!["o7".to_string(), "no-such-order".to_string()];
            store.load_rows(&asked).await.unwrap()
        })
        .await;
        assert_eq!(
            found.keys().collect::<Vec<_>>(),
            vec!["o7"],
            "found orders only"
        );
        assert_eq!(found["o7"], rows["o7"], "the row the core merged");
    }

    /// What [`freeze_before_commit`] saw: the frozen client's commit, and when (after the
    /// freeze) another client's claim of the same partition was first answered.
    struct Frozen {
        commit: Result<Vec<ApplyOutcome>, PortError>,
        claimed_after: Option<Duration>,
    }

    /// Freezes a client for `freeze` right before it commits a transaction that wrote
    /// partition 0's progress; meanwhile another client claims partition 0 for a later
    /// generation, again and again until it is answered.
    async fn freeze_before_commit(world: &World, freeze: Duration) -> Frozen {
        let frozen = world.client_node("frozen");
        let store = {
            let world = world.clone();
            on_node(&frozen, async move { world.store().await }).await
        };
        let claimed = {
            let store = store.clone();
            on_node(&frozen, async move { store.claim_progress(0, 1).await }).await
        };
        assert_eq!(claimed.unwrap(), None);
        let reached = world.commit_hook().arm(frozen.id());
        let committing = frozen.spawn(async move {
            let write = ProgressWrite {
                partition: 0,
                owner: 1,
                progress: CommittedOffset {
                    offset: 5,
                    metadata: None,
                },
            };
            store.apply_batch(&[event(1)], &[write]).await
        });
        reached.notified().await;
        madsim::runtime::Handle::current().pause(frozen.id());
        let paused_at = Instant::now();
        let claiming = on_client(world, "next-owner", move |world| async move {
            let store = world.store().await;
            while store.claim_progress(0, 2).await.is_err() {}
            Instant::now()
        });
        let claimed_at = madsim::time::timeout(freeze, claiming).await.ok();
        madsim::runtime::Handle::current().resume(frozen.id());
        Frozen {
            commit: committing.await.unwrap(),
            claimed_after: claimed_at.map(|at| at - paused_at),
        }
    }

    /// Goal: a transaction whose client froze before its commit keeps its rows locked until
    /// the database ends it for sitting idle (`store_idle_max`): the next owner's claim waits
    /// that long (from the statements' answer, just before the freeze), then goes through;
    /// the thawed client's commit fails as an outage and commits nothing.
    #[madsim::test]
    async fn a_transaction_frozen_before_its_commit_holds_its_locks_until_it_sits_idle_too_long() {
        let world = World::start(WorldConfig::default()).await;
        let idle_max = world.config().store_idle_max;
        let frozen = freeze_before_commit(&world, idle_max * 2).await;
        let claimed_after = frozen.claimed_after.expect("the claim was answered");
        assert!(
            claimed_after + Duration::from_millis(20) >= idle_max
                && claimed_after < idle_max + Duration::from_millis(600),
            "claimed {claimed_after:?} after the freeze"
        );
        assert!(
            matches!(frozen.commit, Err(PortError::Unavailable { .. })),
            "{:?}",
            frozen.commit
        );
        assert!(
            world.store_ledger().is_empty(),
            "the frozen batch committed"
        );
    }

    /// Goal: the idle limit is what frees the locks (the test above cannot pass for another
    /// reason). Method: the same freeze in a world without the limit: the claim is not
    /// answered while the client stays frozen, and the transaction commits when it thaws.
    #[madsim::test]
    async fn without_the_idle_limit_a_frozen_transaction_stalls_the_next_owner() {
        let world = World::start(WorldConfig {
            store_idle_max: Duration::from_secs(3600),
            ..WorldConfig::default()
        })
        .await;
        let idle_max = WorldConfig::default().store_idle_max;
        let frozen = freeze_before_commit(&world, idle_max * 2).await;
        assert_eq!(frozen.claimed_after, None);
        assert!(frozen.commit.is_ok(), "{:?}", frozen.commit);
        assert_eq!(world.store_ledger().len(), 1);
    }
}

/// One seed of single-broker faults (kill/restart, clog/unclog, one broker at a time) under
/// RF 3 with `acks` (min ISR 2 for acks=all, else 1), idempotent producer. Returns
/// (acknowledged, lost, duplicated, unread) where unread counts acknowledged records a fresh
/// consumer never saw.
async fn single_faults_run(acks: Acks) -> (usize, usize, usize, usize) {
    use madsim::rand::Rng;
    let world = World::start(with_acks(acks)).await;
    let producing = produce_in_background(&world, 400);
    for _ in 0..4 {
        let (broker, clog, down_ms) = {
            let mut rng = madsim::rand::thread_rng();
            (
                rng.gen_range(0..3),
                rng.gen_bool(0.5),
                rng.gen_range(50..900),
            )
        };
        sleep(Duration::from_millis(
            madsim::rand::thread_rng().gen_range(0..400),
        ))
        .await;
        if clog {
            world.clog(ServiceNode::Broker(broker), true);
            sleep(Duration::from_millis(down_ms)).await;
            world.clog(ServiceNode::Broker(broker), false);
        } else {
            world.kill(ServiceNode::Broker(broker));
            sleep(Duration::from_millis(down_ms)).await;
            world.restart(ServiceNode::Broker(broker));
        }
        // One failure at a time: let the cluster heal before the next.
        assert!(world.wait_ready(Duration::from_secs(5)).await);
        sleep(Duration::from_millis(600)).await;
    }
    let results = producing.await.unwrap();
    sleep(Duration::from_secs(1)).await;
    let acknowledged = acknowledged_indices(&results);
    let lost = lost_acknowledged(&world, &results).len();
    let duplicated = acknowledged
        .iter()
        .filter(|i| copies(&world, 4, &message(**i).payload) > 1)
        .count();
    let records = consume(&world, "check", usize::MAX, Duration::from_secs(3)).await;
    let unread = acknowledged
        .iter()
        .filter(|i| !records.iter().any(|r| r.payload == message(**i).payload))
        .count();
    (acknowledged.len(), lost, duplicated, unread)
}

/// Goal: the safe configuration keeps every acknowledged record, exactly once, readable,
/// across many seeds of single-broker crashes and partitions.
#[test]
fn single_faults_lose_nothing_with_acks_all() {
    for seed in 1..=20 {
        let (acknowledged, lost, duplicated, unread) = simulate(seed, single_faults_run(Acks::All));
        assert!(
            acknowledged >= 300,
            "seed {seed}: only {acknowledged} acknowledged"
        );
        assert_eq!((lost, duplicated, unread), (0, 0, 0), "seed {seed}");
    }
}

/// Goal: the same single faults make acks=1 lose acknowledged records in some seeds (the
/// leader acknowledged before its followers had the record), so the test above can fail.
/// Since a follower leaves a leader the partition table no longer names at once (as Kafka's
/// fetcher manager does) instead of waiting out its fetch, such losses are rarer: 7 of the
/// first 40 seeds when measured.
#[test]
fn single_faults_lose_with_acks_one() {
    let losing_seeds = (1..=40)
        .filter(|seed| simulate(*seed, single_faults_run(Acks::One)).1 > 0)
        .count();
    assert!(
        losing_seeds >= 3,
        "acks=1 lost in only {losing_seeds} of 40 seeds"
    );
}

/// Rolling restarts with short gaps: each broker in turn is killed, restarted, and the next
/// one killed shortly after, before the restarted one may have caught up. Returns (acknowledged,
/// lost) under acks=all, RF 3, min ISR 2, flushing every 200 ms.
async fn rolling_restarts_run() -> (usize, usize) {
    use madsim::rand::Rng;
    let world = World::start(WorldConfig {
        partitions: 3,
        flush: FlushPolicy::Interval(Duration::from_millis(200)),
        ..WorldConfig::default()
    })
    .await;
    let producing = produce_in_background(&world, 400);
    for round in 0..6 {
        let (down_ms, gap_ms) = {
            let mut rng = madsim::rand::thread_rng();
            (rng.gen_range(100..1500), rng.gen_range(0..100))
        };
        let broker = ServiceNode::Broker(round % 3);
        world.kill(broker);
        sleep(Duration::from_millis(down_ms)).await;
        world.restart(broker);
        sleep(Duration::from_millis(gap_ms)).await;
    }
    let results = producing.await.unwrap();
    settle(&world).await;
    tally(&world, &results)
}

/// Goal: a restarted follower rejoins the ISR only once it holds everything committed (the
/// leader tracks follower incarnations and the controller refuses stale additions), so rolling
/// restarts lose nothing acknowledged under acks=all.
#[test]
fn rolling_restarts_lose_nothing_with_acks_all() {
    for seed in 1..=20 {
        let (acknowledged, lost) = simulate(seed, rolling_restarts_run());
        assert!(acknowledged > 0, "seed {seed}");
        assert_eq!(
            lost, 0,
            "seed {seed}: {lost} of {acknowledged} acknowledged records lost"
        );
    }
}

/// A scenario with crashes, elections and a rebalance, summarised as text.
async fn eventful_run() -> String {
    let world = World::start(WorldConfig::default()).await;
    let producing = produce_in_background(&world, 200);
    sleep(Duration::from_millis(150)).await;
    world.restart(ServiceNode::Broker(1));
    world.restart(ServiceNode::Controller);
    let results = producing.await.unwrap();
    let records = consume(&world, "g", 200, Duration::from_secs(10)).await;
    let logs: Vec<_> = (0..4).map(|p| world.partition_log(p)).collect();
    format!(
        "{results:?}\n{records:?}\n{logs:?}\n{:?}\n{:?}",
        world.faults(),
        world.committed("g")
    )
}

/// Goal: one seed, one history. Method: madsim's own check (every random draw compared)
/// and a comparison of the runs' summaries; a different seed must differ somewhere.
#[test]
fn same_seed_same_history() {
    let first = simulate(7, eventful_run());
    let second = simulate(7, eventful_run());
    assert_eq!(first, second);
    assert_ne!(first, simulate(8, eventful_run()));
    madsim::runtime::Runtime::check_determinism(7, madsim::Config::default(), eventful_run);
}

/// Goal: the planted `NoUniqueKey` store applies a replayed batch a second time.
#[madsim::test]
async fn planted_no_unique_key_applies_twice() {
    let world = World::start(WorldConfig {
        schema: PlantedBug::schema(Some(PlantedBug::NoUniqueKey)),
        ..WorldConfig::default()
    })
    .await;
    let outcomes = on_client(&world, "client", |world| async move {
        let store = world.store().await;
        let batch: Vec<OrderEvent> = (0..3).map(stores_event).collect();
        store.apply_batch(&batch, &[]).await.unwrap();
        store.apply_batch(&batch, &[]).await.unwrap()
    })
    .await;
    assert!(outcomes.iter().all(|o| *o == ApplyOutcome::Applied));
    // Without the unique key, each of the three events was applied twice.
    assert_eq!(world.store_ledger().len(), 6);
}

fn stores_event(index: usize) -> OrderEvent {
    OrderEvent {
        event_id: format!("p{index}"),
        order_id: format!("order-{index}"),
        user_id: "u".to_string(),
        kind: EventKind::Paid,
        amount_minor: Some(100),
        event_time_ms: 1_700_000_000_000,
        payload: bytes::Bytes::new(),
    }
}

/// Goal: report the wall time of 10,000 records produced and consumed in one seed (printed;
/// run with `--nocapture`). The bound is generous; the number goes in the docs.
#[test]
fn ten_thousand_records_in_one_seed() {
    const COUNT: usize = 10_000;
    let runtime = madsim::runtime::Runtime::with_seed_and_config(1, madsim::Config::default());
    let started = std::time::Instant::now();
    let (consumed, virtual_time) = runtime.block_on(async {
        let world = World::start(WorldConfig::default()).await;
        let begun = Instant::now();
        let mut producers = Vec::new();
        for shard in 0..8 {
            let world_client = world.clone();
            producers.push(
                world
                    .client_node(&format!("producer-{shard}"))
                    .spawn(async move {
                        let publisher = world_client.publisher().await;
                        for index in (shard..COUNT).step_by(8) {
                            publisher.publish(message(index)).await.unwrap();
                        }
                    }),
            );
        }
        for producer in producers {
            producer.await.unwrap();
        }
        let records = consume(&world, "g", COUNT, Duration::from_secs(60)).await;
        (records.len(), begun.elapsed())
    });
    let wall = started.elapsed();
    println!(
        "10,000 records produced (acks=all, RF 3) and consumed: wall {:.3} s, virtual {:.3} s",
        wall.as_secs_f64(),
        virtual_time.as_secs_f64()
    );
    assert_eq!(consumed, COUNT);
    assert!(wall < Duration::from_secs(30));
}

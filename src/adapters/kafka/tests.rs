//! Against librdkafka's in-process mock cluster: no broker process needed. The mock's
//! group coordinator waits 3 s before the first assignment, so each test that joins a
//! group takes that long.

use super::*;
use crate::partition::partition_for_key;
use crate::ports::{
    CommitMode, EventLog, GroupOffsets, OffsetCommit, OutboundMessage, PartitionId, Polled,
    PortError, Publisher, Rebalance as LogRebalance,
};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use std::time::Instant;

fn settings(mock: &MockCluster<'_, impl rdkafka::producer::ProducerContext>) -> KafkaSettings {
    KafkaSettings::new(mock.bootstrap_servers())
}

/// Polls until `count` records arrived or 30 s passed; returns rebalances and records. Polls
/// take at most 7 records, so that a poll that overfills shows.
async fn poll_until(log: &mut KafkaLog, count: usize) -> Polled {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut all = Polled::default();
    while all.records.len() < count && Instant::now() < deadline {
        let polled = log.poll(7, Duration::from_millis(200)).await.unwrap();
        let taken = polled.records.len();
        assert!(taken <= 7, "{taken} records");
        all.rebalances.extend(polled.rebalances);
        all.records.extend(polled.records);
    }
    all
}

fn message(topic: &str, index: usize) -> OutboundMessage {
    OutboundMessage {
        topic: topic.into(),
        key: format!("order-{index}").into_bytes(),
        payload: format!("payload-{index}").into(),
        headers: vec![("n".into(), index.to_string().into_bytes())],
    }
}

/// Goal: settings that can lose or double events are refused with a reason, and accepted
/// only when explicitly allowed; a consumer needs a group and a topic. Method: each unsafe
/// override alone, then the safe values, then an empty group or topic.
#[test]
fn unsafe_settings_are_refused_unless_allowed() {
    for (name, value) in [
        ("enable.auto.commit", "true"),
        ("acks", "1"),
        ("acks", "0"),
        ("request.required.acks", "1"),
        ("enable.idempotence", "false"),
    ] {
        let mut settings = KafkaSettings::new("127.0.0.1:1");
        settings.overrides = vec![(name.into(), value.into())];
        let error = settings.validate().unwrap_err().to_string();
        assert!(error.contains("refusing unsafe setting"), "{error}");
        assert!(error.contains(name), "{error}");
        assert!(KafkaPublisher::connect(&settings).is_err());
        settings.allow_unsafe = true;
        assert!(settings.validate().is_ok());
    }
    let settings = KafkaSettings::new("127.0.0.1:1");
    for (group, topic) in [("", "t"), ("g", ""), ("", "")] {
        let error = KafkaLog::connect(&settings, group, topic).unwrap_err();
        assert!(error.to_string().contains("must not be empty"), "{error}");
    }
    let mut settings = KafkaSettings::new("127.0.0.1:1");
    settings.overrides = vec![
        ("enable.auto.commit".into(), "false".into()),
        ("acks".into(), "-1".into()),
        ("enable.idempotence".into(), "true".into()),
    ];
    assert!(settings.validate().is_ok());
    assert!(KafkaSettings::new(" ").validate().is_err());
}

/// Goal: a flush that cannot deliver within its time says so, as an outage. Method: a
/// message queued for a broker that does not exist.
#[tokio::test]
async fn a_flush_that_cannot_deliver_is_an_outage() {
    let publisher = KafkaPublisher::connect(&KafkaSettings::new("127.0.0.1:1")).unwrap();
    let _delivery = publisher.enqueue(&message("t", 1)).unwrap();
    let error = publisher.flush(Duration::from_millis(300)).unwrap_err();
    assert!(error.is_outage(), "{error:?}");
}

/// Goal: a publish that finds librdkafka's queue full waits for room up to the call timeout,
/// then fails; it neither fails at once nor waits forever. Method: a queue of one message,
/// taken by a message for a broker that does not exist.
#[tokio::test]
async fn a_full_queue_is_waited_out_up_to_the_call_timeout() {
    let mut settings = KafkaSettings::new("127.0.0.1:1");
    settings.overrides = vec![("queue.buffering.max.messages".into(), "1".into())];
    let publisher = KafkaPublisher::connect(&settings).unwrap();
    let _first = publisher.enqueue(&message("t", 1)).unwrap();
    let started = Instant::now();
    let publish = publisher.publish(message("t", 2));
    let waited = tokio::time::timeout(CALL_TIMEOUT * 2, publish).await;
    let error = waited.expect("waited past the call timeout").unwrap_err();
    assert!(
        started.elapsed() >= CALL_TIMEOUT,
        "failed after {:?}: {error:?}",
        started.elapsed()
    );
}

/// Goal: what is published comes back with its key, payload and headers, on the
/// partition the Java client would pick, after the assignment that owns it; paused
/// partitions deliver nothing until resumed. Method: 40 keyed messages to a 4-partition mock
/// topic, one consumer; then two partitions paused while 40 more are published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_keys_headers_and_java_partitions() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 4, 1).unwrap();
    let settings = settings(&mock);
    let publisher = KafkaPublisher::connect(&settings).unwrap();
    let mut sent = BTreeMap::new();
    for index in 0..40 {
        let message = message("t", index);
        let delivery = publisher.publish(message.clone()).await.unwrap();
        assert_eq!(
            delivery.partition,
            partition_for_key(&message.key, 4).unwrap(),
            "not the Java client's partition"
        );
        sent.insert((delivery.partition, delivery.offset), message);
    }
    let mut log = KafkaLog::connect(&settings, "g", "t").unwrap();
    let polled = poll_until(&mut log, 40).await;
    assert_eq!(polled.records.len(), 40);
    let assigned: BTreeSet<PartitionId> = polled
        .rebalances
        .iter()
        .filter_map(|change| match change {
            LogRebalance::Assigned {
                partition,
                committed,
                ..
            } => {
                assert_eq!(committed, &None, "a new group has nothing committed");
                Some(*partition)
            }
            LogRebalance::Revoked { .. } => None,
        })
        .collect();
    assert_eq!(assigned, (0..4).collect());
    for record in &polled.records {
        let message = &sent[&(record.partition, record.offset)];
        assert_eq!(record.key.as_deref(), Some(message.key.as_slice()));
        assert_eq!(record.payload, message.payload);
        assert_eq!(record.headers, message.headers);
    }
    // Paused partitions deliver nothing new until resumed; the others go on.
    log.pause(&[0, 1]).await.unwrap();
    for index in 40..80 {
        publisher.publish(message("t", index)).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut while_paused = Vec::new();
    while Instant::now() < deadline {
        let polled = log.poll(100, Duration::from_millis(200)).await.unwrap();
        while_paused.extend(polled.records);
    }
    assert!(
        !while_paused.is_empty(),
        "the partitions not paused stopped"
    );
    let paused = while_paused.iter().filter(|r| r.partition < 2).count();
    assert_eq!(paused, 0, "records of paused partitions delivered");
    log.resume(&[0, 1]).await.unwrap();
    let resumed = poll_until(&mut log, 40 - while_paused.len()).await;
    assert!(
        !resumed.records.is_empty(),
        "nothing was published to the paused partitions"
    );
    assert!(resumed.records.iter().all(|r| r.partition < 2));
    assert_eq!(while_paused.len() + resumed.records.len(), 40);
}

/// Goal: a new member resumes exactly at the committed offsets and sees the commit
/// metadata; an asynchronous commit's answer is reported unless a later commit overtook it.
/// Method: consume 30 records, commit offset 2 asynchronously and 3 with metadata
/// synchronously on every partition, then 4 asynchronously on one and 3 again; close, rejoin:
/// the assignment carries what was committed and the records start there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_and_resume_from_committed() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 3, 1).unwrap();
    let settings = settings(&mock);
    let publisher = KafkaPublisher::connect(&settings).unwrap();
    for index in 0..30 {
        publisher.publish(message("t", index)).await.unwrap();
    }
    let mut log = KafkaLog::connect(&settings, "g", "t").unwrap();
    let polled = poll_until(&mut log, 30).await;
    assert_eq!(polled.records.len(), 30);
    let mut ends: BTreeMap<PartitionId, i64> = BTreeMap::new();
    for record in &polled.records {
        let end = ends.entry(record.partition).or_default();
        *end = (*end).max(record.offset + 1);
    }
    let commits: Vec<OffsetCommit> = ends
        .keys()
        .map(|partition| OffsetCommit {
            partition: *partition,
            offset: 3,
            metadata: format!("m{partition}"),
        })
        .collect();
    // An asynchronous commit overtaken by a synchronous one: its answer, served by a later
    // poll, is older than the synchronous commit and is not reported as the group's progress.
    let early: Vec<OffsetCommit> = (commits.iter())
        .map(|commit| OffsetCommit {
            offset: 2,
            ..commit.clone()
        })
        .collect();
    log.commit(&early, CommitMode::Async).await.unwrap();
    log.commit(&commits, CommitMode::Sync).await.unwrap();
    let mut answered = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let polled = log.poll(7, Duration::from_millis(100)).await.unwrap();
        answered.extend(polled.commits_answered);
    }
    assert_eq!(answered, [], "an overtaken commit reported");
    let later = OffsetCommit {
        offset: 4,
        ..commits[0].clone()
    };
    log.commit(std::slice::from_ref(&later), CommitMode::Async)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while answered.is_empty() && Instant::now() < deadline {
        let polled = log.poll(7, Duration::from_millis(100)).await.unwrap();
        answered.extend(polled.commits_answered);
    }
    assert_eq!(answered, [(later.partition, 4)], "a later commit's answer");
    log.commit(&commits, CommitMode::Sync).await.unwrap();
    drop(log);

    let mut log = KafkaLog::connect(&settings, "g", "t").unwrap();
    let expected: usize = ends.values().map(|end| (*end - 3) as usize).sum();
    let polled = poll_until(&mut log, expected).await;
    assert_eq!(polled.records.len(), expected);
    for change in &polled.rebalances {
        if let LogRebalance::Assigned {
            partition,
            committed,
            ..
        } = change
        {
            let committed = committed.clone().expect("committed offset missing");
            assert_eq!(committed.offset, 3);
            assert_eq!(committed.metadata, Some(format!("m{partition}")));
        }
    }
    assert!(polled.records.iter().all(|record| record.offset >= 3));
    let offsets = KafkaGroupOffsets::connect(&settings, "t").unwrap();
    let partitions: Vec<PartitionId> = ends.keys().copied().collect();
    let committed = offsets.committed("g", &partitions).await.unwrap();
    assert_eq!(committed, vec![Some(3); partitions.len()]);
    assert_eq!(
        offsets.committed("other", &partitions).await.unwrap(),
        vec![None; partitions.len()]
    );
}

/// The generations of the assignments among `changes`.
fn generations(changes: &[LogRebalance]) -> Vec<i32> {
    let generation = |change: &LogRebalance| match change {
        LogRebalance::Assigned { generation, .. } => Some(*generation),
        LogRebalance::Revoked { .. } => None,
    };
    changes.iter().filter_map(generation).collect()
}

/// Folds rebalance events into the set of partitions a member owns; a revoke must name
/// an owned partition and an assignment a partition not owned.
fn apply(owned: &mut BTreeSet<PartitionId>, changes: &[LogRebalance]) {
    for change in changes {
        match change {
            LogRebalance::Assigned { partition, .. } => {
                assert!(owned.insert(*partition), "assigned twice: {partition}")
            }
            LogRebalance::Revoked { partition } => {
                assert!(
                    owned.remove(partition),
                    "revoked but not owned: {partition}"
                )
            }
        }
    }
}

/// Goal: when a second member joins, the first is told `Revoked` before the new
/// assignment, and the two end up owning disjoint partitions that cover the topic; every
/// record a member receives is on a partition it owns at that moment; every assignment
/// carries the group's generation, and the rebalance's is a later one. Method: two
/// consumers of one group on a 4-partition mock topic, polled in turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_member_takes_partitions_after_a_revoke() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 4, 1).unwrap();
    let settings = settings(&mock);
    let publisher = KafkaPublisher::connect(&settings).unwrap();
    for index in 0..40 {
        publisher.publish(message("t", index)).await.unwrap();
    }
    let mut first = KafkaLog::connect(&settings, "g", "t").unwrap();
    let mut owned_first = BTreeSet::new();
    let mut first_generations = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while owned_first.len() < 4 {
        assert!(Instant::now() < deadline, "no assignment");
        let polled = first.poll(100, Duration::from_millis(100)).await.unwrap();
        apply(&mut owned_first, &polled.rebalances);
        first_generations.extend(generations(&polled.rebalances));
    }
    // The group's generation, as the coordinator numbers it, goes with every assignment.
    let first_generation = first_generations[0];
    assert!(first_generation >= 1, "{first_generations:?}");
    assert!(first_generations.iter().all(|g| *g == first_generation));
    let mut second = KafkaLog::connect(&settings, "g", "t").unwrap();
    let mut owned_second = BTreeSet::new();
    let mut revoked_seen = false;
    let mut later_generations = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while owned_second.is_empty() || owned_first.len() + owned_second.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the second member never got partitions"
        );
        for (log, owned) in [
            (&mut first, &mut owned_first),
            (&mut second, &mut owned_second),
        ] {
            let polled = log.poll(100, Duration::from_millis(100)).await.unwrap();
            revoked_seen |= polled
                .rebalances
                .iter()
                .any(|change| matches!(change, LogRebalance::Revoked { .. }));
            apply(owned, &polled.rebalances);
            later_generations.extend(generations(&polled.rebalances));
            for record in &polled.records {
                assert!(
                    owned.contains(&record.partition),
                    "record of a partition not owned"
                );
            }
        }
    }
    assert!(
        revoked_seen,
        "the first member was never told of the revoke"
    );
    assert!(
        later_generations.iter().all(|g| *g > first_generation),
        "the rebalance kept generation {first_generation}: {later_generations:?}"
    );
    assert!(owned_first.is_disjoint(&owned_second));
    let all: BTreeSet<PartitionId> = owned_first.union(&owned_second).copied().collect();
    assert_eq!(all, (0..4).collect());
    // A commit for a partition the member gave up is refused before it is sent: sent, it
    // could land after the new owner read its starting offset.
    let given_up = OffsetCommit {
        partition: *owned_second.first().unwrap(),
        offset: 1,
        metadata: String::new(),
    };
    for mode in [CommitMode::Sync, CommitMode::Async] {
        let refused = first.commit(std::slice::from_ref(&given_up), mode).await;
        match refused {
            Err(PortError::Fenced { detail, .. }) => {
                assert!(detail.contains("no longer assigned"), "{detail}")
            }
            other => panic!("a commit of a partition given up: {other:?}"),
        }
    }
    let records = read_topic(&settings, "t", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(records.len(), 40, "read_topic reads every record");
}

/// Goal: a broker outage is `Unavailable` (retried without limit), a commit refused for a
/// stale generation is `Fenced`, and the adapters work again once the broker is back.
/// Method: mock broker down, publish with a short delivery timeout; broker up, publish;
/// inject ILLEGAL_GENERATION into OffsetCommit and commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_are_unavailable_and_stale_generations_fenced() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let mut settings = settings(&mock);
    settings.overrides = vec![("message.timeout.ms".into(), "1500".into())];
    let publisher = KafkaPublisher::connect(&settings).unwrap();
    publisher.publish(message("t", 0)).await.unwrap();
    mock.broker_down(-1).unwrap();
    let error = publisher.publish(message("t", 1)).await.unwrap_err();
    assert!(error.is_outage(), "{error:?}");
    mock.broker_up(-1).unwrap();
    // librdkafka reconnects with backoff: the first sends after the outage may still time
    // out, as outages, never as rejections.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match publisher.publish(message("t", 2)).await {
            Ok(_) => break,
            Err(error) => assert!(error.is_outage(), "{error:?}"),
        }
        assert!(Instant::now() < deadline, "the publisher never recovered");
    }

    let mut log = KafkaLog::connect(&settings, "g", "t").unwrap();
    assert!(poll_until(&mut log, 2).await.records.len() >= 2);
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION],
    );
    let commit = OffsetCommit {
        partition: 0,
        offset: 1,
        metadata: String::new(),
    };
    let error = log.commit(&[commit], CommitMode::Sync).await.unwrap_err();
    assert!(matches!(error, PortError::Fenced { .. }), "{error:?}");
}

//! The rdkafka adapter against the real broker started by `scripts/services-up` (nisshi):
//! round trip with keys, headers and Java-compatible partitions; commit and resume; commit
//! metadata (or its documented fallback); dead letters with their headers; another group's
//! offsets; the start-up probe and topic creation. The broker address comes from
//! `HOLDFAST_KAFKA_BROKERS` (missing is a failure). Every test creates its own topics and
//! groups, so the tests do not see each other's data.

use holdfast::adapters::kafka::{
    create_topic, probe_brokers, read_topic, KafkaGroupOffsets, KafkaLog, KafkaPublisher,
    KafkaSettings,
};
use holdfast::partition::partition_for_key;
use holdfast::pipeline::dead_letter::{
    dead_letter, header, HEADER_ERROR, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION,
};
use holdfast::ports::{
    CommitMode, EventLog, GroupOffsets, OffsetCommit, OutboundMessage, PartitionId, Polled,
    Publisher, Rebalance, Record,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn settings() -> KafkaSettings {
    let brokers = std::env::var("HOLDFAST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("HOLDFAST_KAFKA_BROKERS is not set: run scripts/services-up, then `source .services/env`")
    });
    KafkaSettings::new(brokers)
}

/// A topic name no other test run uses.
fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("hf-{name}-{nanos}")
}

fn message(topic: &str, index: usize) -> OutboundMessage {
    OutboundMessage {
        topic: topic.into(),
        key: format!("order-{index}").into_bytes(),
        payload: format!("payload-{index}").into(),
        headers: vec![("n".into(), index.to_string().into_bytes())],
    }
}

/// Polls until `count` records arrived (or 60 s passed).
async fn poll_until(log: &mut KafkaLog, count: usize) -> Polled {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut all = Polled::default();
    while all.records.len() < count && Instant::now() < deadline {
        let polled = log.poll(500, Duration::from_millis(200)).await.unwrap();
        all.rebalances.extend(polled.rebalances);
        all.records.extend(polled.records);
    }
    all
}

/// Goal: the start-up probe refuses an absent topic by name (a mistyped topic stops a command
/// instead of leaving it waiting for records that never come) and finds it once created;
/// creating a topic twice is fine, and a topic needs a partition. Method: the probe before and
/// after `create_topic` of a fresh name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_refuses_an_absent_topic_until_it_is_created() {
    let settings = settings();
    let topic = unique("probe");
    let wait = Duration::from_secs(10);
    probe_brokers(&settings, None, wait).await.unwrap();
    let absent = probe_brokers(&settings, Some(&topic), wait)
        .await
        .unwrap_err();
    let named = format!("topic {topic} does not exist");
    assert!(absent.to_string().contains(&named), "{absent}");
    assert!(!absent.is_unavailable(), "{absent}");
    let none = create_topic(&settings, &topic, 0).await.unwrap_err();
    assert!(
        none.to_string().contains("at least one partition"),
        "{none}"
    );
    create_topic(&settings, &topic, 2).await.unwrap();
    create_topic(&settings, &topic, 2).await.unwrap();
    probe_brokers(&settings, Some(&topic), wait).await.unwrap();
}

/// Goal: reading a whole topic returns what its partitions hold and does not wait on an empty
/// one (a dead-letter topic with nothing on it, a partition no key hashed to). Method: a fresh
/// two-partition topic read empty, then after three messages of one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_topic_returns_at_once_past_its_empty_partitions() {
    let settings = settings();
    let topic = unique("readall");
    create_topic(&settings, &topic, 2).await.unwrap();
    let wait = Duration::from_secs(20);
    assert!(read_topic(&settings, &topic, wait)
        .await
        .unwrap()
        .is_empty());
    let publisher = KafkaPublisher::connect(&settings).unwrap();
    for _ in 0..3 {
        publisher.publish(message(&topic, 7)).await.unwrap();
    }
    let records = read_topic(&settings, &topic, wait).await.unwrap();
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(records.iter().all(|r| r.payload[..] == b"payload-7"[..]));
}

/// Goal: records come back exactly as sent, each on the partition the Java client picks for
/// its key, assigned before they arrive. Method: 300 keyed messages with headers to a fresh
/// 6-partition topic, one consumer of a fresh group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_with_headers_on_java_partitions() {
    let settings = settings();
    let topic = unique("roundtrip");
    create_topic(&settings, &topic, 6).await.unwrap();
    let publisher = KafkaPublisher::connect(&settings).unwrap();
    let mut sent = BTreeMap::new();
    for index in 0..300 {
        let message = message(&topic, index);
        let delivery = publisher.publish(message.clone()).await.unwrap();
        assert_eq!(
            delivery.partition,
            partition_for_key(&message.key, 6).unwrap()
        );
        assert!(sent
            .insert((delivery.partition, delivery.offset), message)
            .is_none());
    }
    let mut log = KafkaLog::connect(&settings, &unique("group"), &topic).unwrap();
    let polled = poll_until(&mut log, 300).await;
    assert_eq!(polled.records.len(), 300);
    let assigned = polled
        .rebalances
        .iter()
        .filter(|change| {
            matches!(
                change,
                Rebalance::Assigned {
                    committed: None,
                    ..
                }
            )
        })
        .count();
    assert_eq!(assigned, 6, "{:?}", polled.rebalances);
    for record in &polled.records {
        let message = &sent[&(record.partition, record.offset)];
        assert_eq!(record.key.as_deref(), Some(message.key.as_slice()));
        assert_eq!(record.payload, message.payload);
        assert_eq!(record.headers, message.headers);
    }
}

/// Goal: a restarted member resumes at the committed offsets; the commit metadata comes back
/// unchanged or not at all (nisshi may drop it: then the assignment carries `None` and the
/// tracker starts from the offset alone), never altered; another group's offsets are
/// readable. Method: 500 records on 4 partitions, commit offset 10 with metadata, reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_resume_and_metadata() {
    let settings = settings();
    let topic = unique("resume");
    let group = unique("group");
    create_topic(&settings, &topic, 4).await.unwrap();
    let publisher = KafkaPublisher::connect(&settings).unwrap();
    let mut ends: BTreeMap<PartitionId, i64> = BTreeMap::new();
    for index in 0..500 {
        let delivery = publisher.publish(message(&topic, index)).await.unwrap();
        let end = ends.entry(delivery.partition).or_default();
        *end = (*end).max(delivery.offset + 1);
    }
    assert_eq!(ends.len(), 4);
    let mut log = KafkaLog::connect(&settings, &group, &topic).unwrap();
    assert_eq!(poll_until(&mut log, 500).await.records.len(), 500);
    let commits: Vec<OffsetCommit> = ends
        .keys()
        .map(|partition| OffsetCommit {
            partition: *partition,
            offset: 10,
            metadata: format!("v1:{partition}:12,15"),
        })
        .collect();
    log.commit(&commits, CommitMode::Sync).await.unwrap();
    drop(log);

    let mut log = KafkaLog::connect(&settings, &group, &topic).unwrap();
    let expected: usize = ends.values().map(|end| (*end - 10) as usize).sum();
    let polled = poll_until(&mut log, expected).await;
    assert_eq!(polled.records.len(), expected);
    assert!(polled.records.iter().all(|record| record.offset >= 10));
    let mut metadata_kept = 0;
    for change in &polled.rebalances {
        if let Rebalance::Assigned {
            partition,
            committed,
            ..
        } = change
        {
            let committed = committed.clone().expect("the committed offset is missing");
            assert_eq!(committed.offset, 10);
            // Kept or dropped, never altered.
            if let Some(metadata) = committed.metadata {
                assert_eq!(metadata, format!("v1:{partition}:12,15"));
                metadata_kept += 1;
            }
        }
    }
    eprintln!("commit metadata came back on {metadata_kept} of 4 partitions");
    let partitions: Vec<PartitionId> = ends.keys().copied().collect();
    let offsets = KafkaGroupOffsets::connect(&settings, &topic).unwrap();
    assert_eq!(
        offsets.committed(&group, &partitions).await.unwrap(),
        vec![Some(10); 4]
    );
    assert_eq!(
        offsets
            .committed(&unique("nobody"), &partitions)
            .await
            .unwrap(),
        vec![None; 4]
    );
}

/// Goal: dead letters reach their topic with the error and the source coordinates in
/// headers, keyed like their source. Method: three records through the pipeline's
/// `dead_letter` and the publisher, read back with `read_topic`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_carry_error_and_source_headers() {
    let settings = settings();
    let topic = unique("dlq");
    create_topic(&settings, &topic, 1).await.unwrap();
    let publisher = KafkaPublisher::connect(&settings).unwrap();
    for offset in 0..3 {
        let source = Record {
            partition: 5,
            offset,
            key: Some(b"order-7".to_vec()),
            payload: bytes::Bytes::from_static(b"{not json"),
            headers: vec![],
        };
        let letter = dead_letter(&topic, &source, "undecodable: expected value", 1);
        publisher.publish(letter).await.unwrap();
    }
    let records = read_topic(&settings, &topic, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(records.len(), 3);
    for (index, record) in records.iter().enumerate() {
        assert_eq!(record.key.as_deref(), Some(&b"order-7"[..]));
        assert_eq!(&record.payload[..], b"{not json");
        assert_eq!(header(&record.headers, HEADER_SOURCE_PARTITION), Some("5"));
        assert_eq!(
            header(&record.headers, HEADER_SOURCE_OFFSET),
            Some(index.to_string().as_str())
        );
        assert!(header(&record.headers, HEADER_ERROR).is_some_and(|e| e.contains("undecodable")));
    }
}

/// Goal: the coordinator's answers to asynchronous commits come back with later polls
/// (`commits_answered`), so that a recorded history shows what the group stored; a
/// synchronous commit's answer is the call's own and does not come back again. Method: 20
/// messages to a fresh 2-partition topic; poll them, commit both partitions asynchronously,
/// poll until the answers arrive; then commit synchronously and poll for a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_commit_answers_come_back_with_later_polls() {
    let settings = settings();
    let topic = unique("answers");
    create_topic(&settings, &topic, 2).await.unwrap();
    let publisher = KafkaPublisher::connect(&settings).unwrap();
    for index in 0..20 {
        publisher.publish(message(&topic, index)).await.unwrap();
    }
    let mut log = KafkaLog::connect(&settings, &unique("group"), &topic).unwrap();
    let polled = poll_until(&mut log, 20).await;
    let mut ends: BTreeMap<PartitionId, i64> = BTreeMap::new();
    for record in &polled.records {
        let end = ends.entry(record.partition).or_default();
        *end = (*end).max(record.offset + 1);
    }
    let commits: Vec<OffsetCommit> = ends
        .iter()
        .map(|(&partition, &offset)| OffsetCommit {
            partition,
            offset,
            metadata: String::new(),
        })
        .collect();
    log.commit(&commits, CommitMode::Async).await.unwrap();
    let answered = answers_within(&mut log, Duration::from_secs(30)).await;
    assert_eq!(answered, ends.clone().into_iter().collect::<Vec<_>>());
    log.commit(&commits, CommitMode::Sync).await.unwrap();
    let answered = answers_within(&mut log, Duration::from_secs(1)).await;
    assert_eq!(answered, vec![]);
}

/// Commit answers `log`'s polls bring within `wait` (until two arrived), sorted.
async fn answers_within(log: &mut KafkaLog, wait: Duration) -> Vec<(PartitionId, i64)> {
    let deadline = Instant::now() + wait;
    let mut answered = Vec::new();
    while answered.len() < 2 && Instant::now() < deadline {
        let polled = log.poll(500, Duration::from_millis(100)).await.unwrap();
        answered.extend(polled.commits_answered);
    }
    answered.sort_unstable();
    answered
}

use super::*;
use crate::event::EventKind;
use crate::idempotency::memory::tests::event;
use crate::idempotency::memory::MemoryStore;
use crate::memlog::MemoryBroker;
use std::sync::{Arc, Mutex};

/// A sink that keeps what it was given, shared by its clones.
#[derive(Clone, Default)]
struct Kept {
    seen: Arc<Mutex<Vec<Seen>>>,
    accepted: Arc<Mutex<Vec<(PartitionId, i64, CommitMode)>>>,
}

impl Kept {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Sink for Kept {
    fn record(&self, seen: Vec<Seen>) {
        self.seen.lock().unwrap().extend(seen);
    }
    fn commit_accepted(&self, partition: PartitionId, offset: i64, mode: CommitMode) {
        self.accepted
            .lock()
            .unwrap()
            .push((partition, offset, mode));
    }
}

const WAIT: Duration = Duration::from_millis(1);

/// A two-partition topic with records on both partitions; returns it with the records.
async fn two_partitions() -> (MemoryBroker, Vec<crate::ports::Record>) {
    let broker = MemoryBroker::new("t", 2);
    for key in ["a", "b", "c", "d", "e", "f"] {
        let message = OutboundMessage {
            topic: "t".into(),
            key: key.as_bytes().to_vec(),
            payload: format!("payload {key}").into(),
            headers: Vec::new(),
        };
        broker.publish(message).await.unwrap();
    }
    let records = broker.records("t");
    assert!(records.iter().any(|r| r.partition == 0) && records.iter().any(|r| r.partition == 1));
    (broker, records)
}

fn polled_steps(records: &[crate::ports::Record], partition: PartitionId) -> Vec<Seen> {
    records
        .iter()
        .filter(|record| record.partition == partition)
        .map(|record| Seen::Polled {
            partition,
            offset: record.offset,
            digest: digest(&record.payload),
        })
        .collect()
}

/// Goal: the recording log hands every call to the log it wraps (polls, pauses, resumes,
/// commits, and their failures) and records exactly what came back: the assignment, each
/// polled record with its payload's digest, each commit sent and accepted; a failed call
/// records nothing. Method: a memory log with one partition paused, then resumed, a
/// commit, then an outage.
#[tokio::test]
async fn the_recording_log_passes_calls_through_and_records_their_answers() {
    let (broker, records) = two_partitions().await;
    let sink = Kept::default();
    let mut log = RecordingLog {
        inner: broker.consumer("t", "g"),
        sink: sink.clone(),
    };
    log.pause(&[0]).await.unwrap();
    let polled = log.poll(100, WAIT).await.unwrap();
    assert_eq!(polled.rebalances.len(), 2);
    assert!(polled.records.iter().all(|record| record.partition == 1));
    let mut expected = vec![
        Seen::Assigned {
            partition: 0,
            generation: 1,
        },
        Seen::Assigned {
            partition: 1,
            generation: 1,
        },
    ];
    expected.extend(polled_steps(&records, 1));
    assert_eq!(sink.seen(), expected);

    log.resume(&[0]).await.unwrap();
    let polled = log.poll(100, WAIT).await.unwrap();
    assert!(!polled.records.is_empty());
    assert!(polled.records.iter().all(|record| record.partition == 0));
    expected.extend(polled_steps(&records, 0));
    assert_eq!(sink.seen(), expected);

    let commit = OffsetCommit {
        partition: 0,
        offset: 1,
        metadata: String::new(),
    };
    log.commit(std::slice::from_ref(&commit), CommitMode::Sync)
        .await
        .unwrap();
    assert_eq!(broker.committed("g")[&0].offset, 1);
    expected.push(Seen::CommitSent {
        partition: 0,
        offset: 1,
    });
    assert_eq!(sink.seen(), expected);
    assert_eq!(*sink.accepted.lock().unwrap(), [(0, 1, CommitMode::Sync)]);

    broker.set_unavailable(true);
    assert!(log.poll(100, WAIT).await.is_err());
    assert!(log.commit(&[commit], CommitMode::Sync).await.is_err());
    assert_eq!(sink.seen(), expected);
    assert_eq!(sink.accepted.lock().unwrap().len(), 1);
}

/// Goal: the recording store hands every call to the store it wraps and records each
/// committed event as applied or duplicate; a failed transaction records nothing.
/// Method: a memory store: a claim, a transaction with a repeated event and progress, the
/// rows and the claim read back through the wrapper, then an outage.
#[tokio::test]
async fn the_recording_store_passes_calls_through_and_records_outcomes() {
    let sink = Kept::default();
    let store = RecordingStore {
        inner: MemoryStore::new(),
        sink: sink.clone(),
    };
    assert_eq!(store.claim_progress(0, 1).await.unwrap(), None);
    let created = event("e1", EventKind::Created);
    let progress = ProgressWrite {
        partition: 0,
        owner: 1,
        progress: CommittedOffset {
            offset: 7,
            metadata: None,
        },
    };
    let outcomes = store
        .apply_batch(&[created.clone(), created.clone()], &[progress])
        .await
        .unwrap();
    assert_eq!(outcomes, [ApplyOutcome::Applied, ApplyOutcome::Duplicate]);
    let stored = |applied| Seen::Stored {
        event_id: "e1".into(),
        applied,
    };
    assert_eq!(sink.seen(), [stored(true), stored(false)]);
    let rows = store.load_rows(&["o1".into(), "o2".into()]).await.unwrap();
    assert_eq!(rows.keys().collect::<Vec<_>>(), ["o1"]);
    let claimed = store.claim_progress(0, 2).await.unwrap();
    assert_eq!(claimed.map(|progress| progress.offset), Some(7));

    store.inner.set_failing(true);
    assert!(store.apply_batch(&[created], &[]).await.is_err());
    assert!(store.load_rows(&["o1".into()]).await.is_err());
    assert!(store.claim_progress(0, 3).await.is_err());
    assert_eq!(sink.seen().len(), 2);
}

/// Goal: the recording publisher records a dead letter's source record once the letter is
/// acknowledged, and nothing for a message without source headers or a failed publish.
/// Method: a memory broker; a letter, a plain message, then an outage.
#[tokio::test]
async fn the_recording_publisher_records_acknowledged_letters_by_source() {
    let broker = MemoryBroker::new("dlq", 1);
    let sink = Kept::default();
    let publisher = RecordingPublisher {
        inner: broker.clone(),
        sink: sink.clone(),
    };
    let letter = OutboundMessage {
        topic: "dlq".into(),
        key: b"o1".to_vec(),
        payload: "bad".into(),
        headers: vec![
            (HEADER_SOURCE_PARTITION.into(), b"3".to_vec()),
            (HEADER_SOURCE_OFFSET.into(), b"41".to_vec()),
        ],
    };
    let plain = OutboundMessage {
        headers: Vec::new(),
        ..letter.clone()
    };
    publisher.publish(letter.clone()).await.unwrap();
    publisher.publish(plain).await.unwrap();
    broker.set_unavailable(true);
    assert!(publisher.publish(letter).await.is_err());
    assert_eq!(broker.records("dlq").len(), 2);
    let letter_seen = Seen::DeadLettered {
        partition: 3,
        offset: 41,
    };
    assert_eq!(sink.seen(), [letter_seen]);
}

//! Each planted component really does what its bug says, and only that.

use super::*;
use crate::idempotency::memory::{MemoryCache, MemoryStore};
use crate::idempotency::protocol::{apply_batch, BatchReport, ProtocolConfig, Verdict};
use crate::memlog::MemoryBroker;
use crate::ports::{CommitMode, NoProbe, OutboundMessage, Publisher};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Runs a future whose every await is ready (the in-memory ports never wait).
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("in-memory ports never wait"),
    }
}

fn event(event_id: &str, kind: EventKind, at_ms: i64) -> OrderEvent {
    OrderEvent {
        event_id: event_id.into(),
        order_id: "o-1".into(),
        user_id: "u-1".into(),
        kind,
        amount_minor: kind.carries_amount().then_some(100),
        event_time_ms: at_ms,
        payload: bytes::Bytes::new(),
    }
}

fn batch() -> Vec<OrderEvent> {
    vec![
        event("e1", EventKind::Created, 1),
        event("e2", EventKind::Paid, 2),
        event("b1", EventKind::Billed, 3),
    ]
}

fn protocol<S: OrderStore>(cache: &MemoryCache, store: &S) -> Result<BatchReport, PortError> {
    block_on(apply_batch(
        cache,
        store,
        &NoProbe,
        &batch(),
        &[],
        &ProtocolConfig::default(),
    ))
}

/// Goal: the arrival-order merge really breaks order independence. Method: two paid events
/// in both orders give different rows under it, the same row under holdfast's schema.
#[test]
fn merge_by_arrival_depends_on_arrival_order() {
    let first = event("p1", EventKind::Paid, 10);
    let second = event("p2", EventKind::Paid, 20);
    let apply_all = |events: [&OrderEvent; 2], bug| {
        let mut row = OrderRow::new("o-1", "u-1");
        for each in events {
            (PlantedBug::schema(bug).merge)(&mut row, each);
        }
        row
    };
    let bug = Some(PlantedBug::MergeByArrival);
    assert_ne!(
        apply_all([&first, &second], bug),
        apply_all([&second, &first], bug)
    );
    assert_eq!(
        apply_all([&first, &second], None),
        apply_all([&second, &first], None)
    );
    assert_eq!(
        apply_all([&second, &first], Some(PlantedBug::NoUniqueKey)),
        apply_all([&first, &second], None),
        "other bugs keep the merge"
    );
}

/// Goal: the cache-first store opens the loss window the protocol's order closes. Method:
/// the store fails (a crash before commit); with the bug the redelivery is skipped by the
/// cache and never applied, without it the redelivery is applied.
#[test]
fn cache_written_before_store_loses_events_on_store_failure() {
    for bug in [None, Some(PlantedBug::CacheWrittenBeforeStore)] {
        let (cache, memory) = (MemoryCache::new(), MemoryStore::new());
        let store = PlantedStore::new(memory.clone(), cache.clone(), Duration::from_secs(60), bug);
        memory.set_failing(true);
        assert!(protocol(&cache, &store).is_err());
        memory.set_failing(false);
        let report = protocol(&cache, &store).unwrap();
        if bug.is_some() {
            assert_eq!(report.verdicts, vec![Verdict::SkippedByCache; 3]);
            assert!(
                memory.applied_events().is_empty(),
                "the bug loses the batch"
            );
        } else {
            assert_eq!(report.verdicts, vec![Verdict::Applied; 3]);
        }
    }
}

/// Goal: the store's unique key is the guarantee. Method: without it and without the cache,
/// a redelivery is applied twice.
#[test]
fn no_unique_key_applies_twice_without_the_cache() {
    let cache = MemoryCache::new();
    cache.set_failing(true);
    let store = MemoryStore::with_schema(PlantedBug::schema(Some(PlantedBug::NoUniqueKey)));
    protocol(&cache, &store).unwrap();
    protocol(&cache, &store).unwrap();
    assert!(store.applications().values().all(|&count| count == 2));
}

/// A broker with `count` records on partition 0 of "t".
fn broker_with(count: usize) -> MemoryBroker {
    let broker = MemoryBroker::new("t", 1);
    for index in 0..count {
        let message = OutboundMessage {
            topic: "t".into(),
            key: b"k".to_vec(),
            payload: format!("{index}").into(),
            headers: Vec::new(),
        };
        block_on(broker.publish(message)).unwrap();
    }
    broker
}

fn committed(broker: &MemoryBroker) -> Option<i64> {
    broker.committed("g").get(&0).map(|c| c.offset)
}

/// Goal: commit-before-processing commits what a poll returned, before anything is acked.
/// Method: poll three records through the wrapper, with and without the bug.
#[tokio::test]
async fn commit_before_processing_commits_on_poll() {
    for bug in [None, Some(PlantedBug::CommitBeforeProcessing)] {
        let broker = broker_with(3);
        let mut log = PlantedLog::new(broker.consumer("t", "g"), bug);
        let polled = log.poll(10, Duration::ZERO).await.unwrap();
        assert_eq!(polled.records.len(), 3);
        let expected = bug.map(|_| 3);
        assert_eq!(committed(&broker), expected);
    }
}

/// Goal: auto-commit turns the consumer's commit into one of the highest polled offset.
/// Method: poll three records, commit offset 1 through the wrapper, with and without the bug.
#[tokio::test]
async fn auto_commit_commits_the_highest_polled_offset() {
    for (bug, expected) in [(None, 1), (Some(PlantedBug::AutoCommit), 3)] {
        let broker = broker_with(3);
        let mut log = PlantedLog::new(broker.consumer("t", "g"), bug);
        log.poll(10, Duration::ZERO).await.unwrap();
        let commit = OffsetCommit {
            partition: 0,
            offset: 1,
            metadata: String::new(),
        };
        log.commit(&[commit], CommitMode::Sync).await.unwrap();
        assert_eq!(committed(&broker), Some(expected));
    }
}

/// Goal: the commit policies are the sound one unless the bug is the policy. Method: the
/// acked-plus-one policy commits past an unfinished record; the others do not.
#[test]
fn only_commit_acked_plus_one_changes_the_policy() {
    for bug in [
        None,
        Some(PlantedBug::CommitAckedPlusOne),
        Some(PlantedBug::AutoCommit),
    ] {
        let limits = crate::offsets::Limits::default();
        let mut tracker =
            crate::offsets::Tracker::with_policy(limits, PlantedBug::commit_policy(bug));
        tracker.assign(0, None);
        tracker.track(0, 0).unwrap();
        let (fast, _) = tracker.track(0, 1).unwrap();
        tracker.ack(fast).unwrap();
        let expected = if bug == Some(PlantedBug::CommitAckedPlusOne) {
            2
        } else {
            0
        };
        assert_eq!(tracker.snapshot(0).unwrap().offset, expected, "{bug:?}");
    }
}

//! Helpers shared by the benchmarks against the real services (each bench binary that needs
//! them declares `mod common;`): service addresses, emptying the services between runs, the
//! end-to-end check, and the pipeline that follows the seed text literally, one message at a
//! time, over any [`EventLog`].
#![allow(dead_code)]

pub mod audit;
pub mod cpu;
pub mod timed;

use holdfast::adapters::PostgresStore;
use holdfast::event::OrderEvent;
use holdfast::idempotency::DeliveryKey;
use holdfast::ports::{CommitMode, DedupCache, EventLog, OffsetCommit, OrderStore};
use holdfast::verify::{verify, GroundTruth, StoreView};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Records asked for per poll: the seed's 500.
pub const POLL_RECORDS: usize = 500;
/// The cache TTL of idempotency keys (the pipeline's default).
const CACHE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A service address from `.services/env`; a missing one is a failure, never a skip.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run scripts/services-up, then `source .services/env`")
    })
}

/// Empty tables and an empty cache, so that every pipeline does the same work.
pub async fn reset(redis_url: &str, postgres_url: &str) {
    let mut redis = redis::Client::open(redis_url)
        .and_then(|client| client.get_connection())
        .expect("redis connection");
    let _: () = redis::cmd("FLUSHALL").query(&mut redis).expect("FLUSHALL");
    let (client, connection) = tokio_postgres::connect(postgres_url, tokio_postgres::NoTls)
        .await
        .expect("postgres connection");
    let driver = tokio::spawn(connection);
    client
        .batch_execute("TRUNCATE holdfast_keys, holdfast_orders, holdfast_bills, holdfast_refunds, holdfast_progress")
        .await
        .expect("TRUNCATE");
    drop(client);
    let _ = driver.await;
}

/// Panics (the bench exits non-zero) unless the store holds every event of `truth` exactly
/// once, with every row equal to the merge of its events.
pub async fn check(store: &PostgresStore, truth: &GroundTruth, name: &str) {
    let view = StoreView {
        ledger: store.ledger().await.expect("ledger"),
        rows: store.rows().await.expect("rows"),
    };
    let report = verify(truth, &view, &[], &BTreeSet::new());
    assert!(
        report.passed(),
        "{name} did not apply the workload exactly once:\n{report}"
    );
}

/// What [`per_message`] did.
pub struct PerMessageRun {
    /// Records processed and committed (malformed ones included: they are committed too).
    pub messages: usize,
    /// From the first record polled to the commit of the last one processed: the group join
    /// is not included.
    pub elapsed: Duration,
    /// From the call to the first record polled (the group join, on a real broker).
    pub first_record_after: Duration,
    /// Records processed, and time, in the second half of the run: its steady rate, without
    /// the slow first commits after a group join.
    pub late_messages: usize,
    pub late_elapsed: Duration,
    /// The events of the records processed, as a ground truth to verify the store against.
    pub truth: GroundTruth,
}

/// The seed literally, one message at a time: GET the key; if absent, one transaction that
/// inserts the key and updates the row; SET the key; commit the record's offset synchronously.
/// Polls batches of [`POLL_RECORDS`]; stops after `messages_max` records or once `budget`
/// (counted from the first record) is spent, whichever comes first.
pub async fn per_message<L: EventLog, C: DedupCache, S: OrderStore>(
    log: &mut L,
    cache: &C,
    store: &S,
    messages_max: usize,
    budget: Duration,
) -> PerMessageRun {
    let called = Instant::now();
    let mut started: Option<Instant> = None;
    let mut truth = GroundTruth::default();
    let mut done = 0;
    // (records done, when) once half the budget or half the messages were reached.
    let mut half: Option<(usize, Instant)> = None;
    'polling: while done < messages_max {
        let polled = log
            .poll(POLL_RECORDS, Duration::from_millis(5))
            .await
            .expect("poll");
        for record in polled.records {
            started.get_or_insert_with(Instant::now);
            if let Ok(event) = OrderEvent::decode(&record.payload) {
                let key = [DeliveryKey::of(&event)];
                let seen = cache.contains_batch(&key).await.expect("GET");
                if !seen[0] {
                    store
                        .apply_batch(std::slice::from_ref(&event), &[])
                        .await
                        .expect("transaction");
                    cache.remember_batch(&key, CACHE_TTL).await.expect("SET");
                }
                truth.record(&event, true);
            }
            let commit = OffsetCommit {
                partition: record.partition,
                offset: record.offset + 1,
                metadata: String::new(),
            };
            log.commit(&[commit], CommitMode::Sync)
                .await
                .expect("commit");
            done += 1;
            let halfway =
                done >= messages_max / 2 || started.is_some_and(|s| s.elapsed() >= budget / 2);
            if half.is_none() && halfway {
                half = Some((done, Instant::now()));
            }
            if done >= messages_max || started.is_some_and(|s| s.elapsed() >= budget) {
                break 'polling;
            }
        }
    }
    let started = started.unwrap_or(called);
    let (half_done, half_at) = half.unwrap_or((0, started));
    PerMessageRun {
        messages: done,
        elapsed: started.elapsed(),
        first_record_after: started.duration_since(called),
        late_messages: done - half_done,
        late_elapsed: half_at.elapsed(),
        truth,
    }
}

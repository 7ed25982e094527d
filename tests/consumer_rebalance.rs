//! The consumer across rebalances, against a scripted log: each test replays the poll
//! answers a client gives around a revoke and fails when the behaviour a simulator seed once
//! found broken comes back (seed 117: a partition assigned back stayed paused; seeds 271 and
//! 341: revoking many partitions outlasted the rebalance timeout; seeds 555, 2678 and 3071:
//! workers applied, or ran the protocol for, records of a revoked assignment). The last test
//! does the same for the compensator's revoke.

use holdfast::event::{EventKind, OrderEvent};
use holdfast::idempotency::memory::{MemoryCache, MemoryStore};
use holdfast::memlog::MemoryBroker;
use holdfast::pipeline::{
    Compensator, CompensatorConfig, Consumer, ConsumerConfig, Metrics, RunningConsumer, Services,
    ShutdownTrigger,
};
use holdfast::ports::{
    ApplyOutcome, CommitMode, CommittedOffset, EventLog, FaultPoint, OffsetCommit, OrderStore,
    PartitionId, Polled, PortError, Probe, ProgressWrite, Rebalance, Record,
};
use holdfast::widetable::OrderRow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// What the scripted client was asked to do.
#[derive(Debug, Default)]
struct Calls {
    /// Synchronous commits: when, and what.
    sync_commits: Vec<(Instant, Vec<OffsetCommit>)>,
    /// Asynchronous commits, in order.
    async_commits: Vec<Vec<OffsetCommit>>,
    /// Partitions the client holds paused, kept across revokes as librdkafka does.
    paused: BTreeSet<PartitionId>,
}

/// Answers polls from a script, then with nothing.
struct ScriptedLog {
    script: VecDeque<Polled>,
    calls: Arc<Mutex<Calls>>,
}

impl EventLog for ScriptedLog {
    async fn poll(&mut self, _: usize, timeout: Duration) -> Result<Polled, PortError> {
        match self.script.pop_front() {
            Some(polled) => Ok(polled),
            None => {
                tokio::time::sleep(timeout).await;
                Ok(Polled::default())
            }
        }
    }

    async fn commit(
        &mut self,
        offsets: &[OffsetCommit],
        mode: CommitMode,
    ) -> Result<(), PortError> {
        let mut calls = self.calls.lock().unwrap();
        match mode {
            CommitMode::Sync => calls.sync_commits.push((Instant::now(), offsets.to_vec())),
            CommitMode::Async => calls.async_commits.push(offsets.to_vec()),
        }
        Ok(())
    }

    async fn pause(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        self.calls.lock().unwrap().paused.extend(partitions);
        Ok(())
    }

    async fn resume(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        let mut calls = self.calls.lock().unwrap();
        for partition in partitions {
            calls.paused.remove(partition);
        }
        Ok(())
    }
}

/// The in-memory store behind a gate: each transaction waits for a permit.
#[derive(Clone)]
struct GatedStore {
    inner: MemoryStore,
    gate: Arc<Semaphore>,
}

impl OrderStore for GatedStore {
    async fn apply_batch(
        &self,
        events: &[OrderEvent],
        progress: &[ProgressWrite],
    ) -> Result<Vec<ApplyOutcome>, PortError> {
        if !events.is_empty() {
            self.gate.acquire().await.expect("gate open").forget();
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

/// Counts the passes of the cache-check fault point (one per batch through the protocol).
#[derive(Clone, Default)]
struct CountingProbe(Arc<AtomicU32>);

impl Probe for CountingProbe {
    async fn at(&self, point: FaultPoint) {
        if point == FaultPoint::AfterCacheCheck {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn record(partition: PartitionId, offset: i64) -> Record {
    let order_id = format!("o{partition}-{offset}");
    let event = OrderEvent {
        event_id: format!("e{partition}-{offset}"),
        order_id: order_id.clone(),
        user_id: "u".into(),
        kind: EventKind::Created,
        amount_minor: None,
        event_time_ms: 1_700_000_000_000,
        payload: bytes::Bytes::new(),
    };
    Record {
        partition,
        offset,
        key: Some(order_id.into_bytes()),
        payload: event.encode().into(),
        headers: Vec::new(),
    }
}

fn assigned(partition: PartitionId) -> Rebalance {
    Rebalance::Assigned {
        partition,
        committed: None,
        generation: 1,
    }
}

struct Started {
    running: RunningConsumer,
    calls: Arc<Mutex<Calls>>,
    store: GatedStore,
    metrics: Arc<Metrics>,
    protocol_passes: Arc<AtomicU32>,
}

fn start(config: ConsumerConfig, script: Vec<Polled>, permits: usize) -> Started {
    let calls = Arc::new(Mutex::new(Calls::default()));
    let log = ScriptedLog {
        script: script.into(),
        calls: Arc::clone(&calls),
    };
    let store = GatedStore {
        inner: MemoryStore::new(),
        gate: Arc::new(Semaphore::new(permits)),
    };
    let probe = CountingProbe::default();
    let protocol_passes = Arc::clone(&probe.0);
    let metrics = Arc::new(Metrics::new());
    let services = Services {
        cache: MemoryCache::new(),
        store: store.clone(),
        dead_letters: MemoryBroker::new("orders.dlq", 1),
        probe,
    };
    let consumer = Consumer::new(config, log, services, Arc::clone(&metrics)).unwrap();
    Started {
        running: consumer.spawn(),
        calls,
        store,
        metrics,
        protocol_passes,
    }
}

fn config() -> ConsumerConfig {
    ConsumerConfig {
        batch_size: 1,
        concurrency: 1,
        commit_interval: Duration::from_millis(50),
        poll_timeout: Duration::from_millis(10),
        revoke_grace: Duration::from_millis(300),
        ..ConsumerConfig::default()
    }
}

/// Goal: giving up six partitions whose work is stuck costs one grace period and one
/// synchronous commit, not one of each per partition (which outlasted the rebalance timeout
/// and made the group hand partitions back and forth). Method: one stuck record in each of six
/// partitions, then one poll revoking all six.
#[tokio::test]
async fn revoking_many_partitions_costs_one_grace_period_and_one_commit() {
    let partitions: Vec<PartitionId> = (0..6).collect();
    let script = vec![
        Polled {
            commits_answered: Vec::new(),
            rebalances: partitions.iter().map(|&p| assigned(p)).collect(),
            records: partitions.iter().map(|&p| record(p, 0)).collect(),
        },
        Polled {
            commits_answered: Vec::new(),
            rebalances: partitions
                .iter()
                .map(|&partition| Rebalance::Revoked { partition })
                .collect(),
            records: Vec::new(),
        },
    ];
    let started_at = Instant::now();
    let started = start(
        ConsumerConfig {
            concurrency: 6,
            ..config()
        },
        script,
        0,
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let commits = std::mem::take(&mut started.calls.lock().unwrap().sync_commits);
    started.running.abort().await;
    assert_eq!(commits.len(), 1, "one synchronous commit: {commits:?}");
    let (at, offsets) = &commits[0];
    assert_eq!(offsets.len(), 6, "{offsets:?}");
    let took = *at - started_at;
    // One grace period is 300 ms; one per partition would be 1.8 s.
    assert!(
        took < Duration::from_millis(1200),
        "the revoke took {took:?}"
    );
}

/// Goal: a partition paused for back-pressure, revoked and assigned back is fetched again.
/// Method: a tracker that admits two records, five records of p0 (so p0 is paused), a revoke
/// and the assignment back; the client keeps pauses across revokes, as librdkafka does.
#[tokio::test]
async fn a_paused_partition_assigned_back_is_resumed() {
    let script = vec![
        Polled {
            commits_answered: Vec::new(),
            rebalances: vec![assigned(0)],
            records: (0..5).map(|offset| record(0, offset)).collect(),
        },
        Polled::default(),
        Polled {
            commits_answered: Vec::new(),
            rebalances: vec![Rebalance::Revoked { partition: 0 }, assigned(0)],
            records: Vec::new(),
        },
    ];
    let mut config = config();
    config.limits.in_flight_max = 2;
    config.limits.span_max = 2;
    let started = start(config, script, 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        started.calls.lock().unwrap().paused.contains(&0),
        "the full tracker paused p0"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let paused = started.calls.lock().unwrap().paused.clone();
    started.running.abort().await;
    assert!(paused.is_empty(), "p0 stayed paused after it came back");
}

/// Goal: records of a revoked assignment still queued at a worker are dropped without a
/// transaction or a pass through the protocol, so the new assignment's records do not wait
/// behind them. Method: five records of p0 queued behind a closed store gate at one worker;
/// p0 revoked and assigned back; the gate opened.
#[tokio::test]
async fn a_worker_drops_records_of_a_revoked_assignment_at_no_cost() {
    let script = vec![
        Polled {
            commits_answered: Vec::new(),
            rebalances: vec![assigned(0)],
            records: (0..5).map(|offset| record(0, offset)).collect(),
        },
        Polled {
            commits_answered: Vec::new(),
            rebalances: vec![Rebalance::Revoked { partition: 0 }, assigned(0)],
            records: Vec::new(),
        },
    ];
    let started = start(config(), script, 0);
    // The first record holds the gate; the revoke gives up after its grace period.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    started.store.gate.add_permits(100);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let applied = started.store.inner.applied_events().len();
    let dropped = started.metrics.dropped_revoked.get();
    let passes = started.protocol_passes.load(Ordering::SeqCst);
    started.running.abort().await;
    assert_eq!(applied, 1, "only the record already in its transaction");
    assert_eq!(dropped, 4);
    assert_eq!(passes, 1, "dropped records ran through the protocol");
}

/// Goal: a poll's records are tracked in runs of one partition's consecutive offsets, and a
/// run never takes in another partition's record or an offset after a gap. Method: one poll
/// whose partitions interleave with offsets that continue across them (p0@5, p1@6), with a
/// gap right after a record (p1@7, p1@10) and one across another partition (p0@5, p0@8);
/// every record is applied once and each partition commits past its last.
#[tokio::test]
async fn runs_of_tracked_records_stop_at_another_partition_and_at_a_gap() {
    // The first poll starts each partition's tracker, so that the second one's runs take the
    // tracker's fast path.
    let script = vec![
        Polled {
            commits_answered: Vec::new(),
            rebalances: vec![assigned(0), assigned(1)],
            records: vec![record(0, 4), record(1, 5)],
        },
        Polled {
            commits_answered: Vec::new(),
            rebalances: Vec::new(),
            records: vec![
                record(0, 5),
                record(1, 6),
                record(1, 7),
                record(1, 10),
                record(0, 8),
            ],
        },
    ];
    // No periodic commit: the drain's synchronous one shows the final commit points.
    let config = ConsumerConfig {
        batch_size: 5,
        commit_interval: Duration::from_secs(60),
        ..config()
    };
    let started = start(config, script, 100);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let summary = started.running.stop().await.unwrap();
    assert_eq!(summary.polled, 7);
    assert_eq!(started.store.inner.applied_events().len(), 7);
    let calls = started.calls.lock().unwrap();
    let last: BTreeMap<PartitionId, i64> = calls
        .sync_commits
        .iter()
        .flat_map(|(_, commits)| commits.iter().map(|c| (c.partition, c.offset)))
        .collect();
    assert_eq!(
        last,
        BTreeMap::from([(0, 9), (1, 11)]),
        "{:?}",
        calls.sync_commits
    );
}

/// Goal: giving up a partition with nothing in flight costs no grace period: its commit goes
/// out at once. Method: a partition assigned at committed offset 5 and revoked on the next
/// poll, with a grace period of 2 s; the synchronous commit comes well before it ends.
#[tokio::test]
async fn revoking_an_idle_partition_commits_at_once() {
    let script = vec![
        Polled {
            commits_answered: Vec::new(),
            rebalances: vec![Rebalance::Assigned {
                partition: 0,
                committed: Some(holdfast::ports::CommittedOffset {
                    offset: 5,
                    metadata: None,
                }),
                generation: 1,
            }],
            records: Vec::new(),
        },
        Polled {
            commits_answered: Vec::new(),
            rebalances: vec![Rebalance::Revoked { partition: 0 }],
            records: Vec::new(),
        },
    ];
    let config = ConsumerConfig {
        revoke_grace: Duration::from_secs(2),
        ..config()
    };
    let begun = Instant::now();
    let started = start(config, script, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    started.running.abort().await;
    let calls = started.calls.lock().unwrap();
    let (at, commits) = calls.sync_commits.first().expect("no commit on revoke");
    assert_eq!(commits[0].offset, 5);
    assert!(
        *at - begun < Duration::from_secs(1),
        "the revoke waited {:?}",
        *at - begun
    );
}

/// Goal: a partition whose commit point stands still with work in flight is reported as
/// stalled once, after `stall_after`, and an idle partition never is. Method: p0's records
/// wait behind a closed store gate; p1 has nothing; `stall_after` 300 ms.
#[tokio::test]
async fn a_stuck_partition_is_reported_stalled_once_and_an_idle_one_never() {
    let script = vec![Polled {
        commits_answered: Vec::new(),
        rebalances: vec![assigned(0), assigned(1)],
        records: vec![record(0, 0), record(0, 1)],
    }];
    let config = ConsumerConfig {
        commit_interval: Duration::from_millis(10),
        stall_after: Duration::from_millis(300),
        ..config()
    };
    let started = start(config, script, 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        started.metrics.stalls.get(),
        0,
        "reported before stall_after"
    );
    tokio::time::sleep(Duration::from_millis(650)).await;
    assert_eq!(
        started.metrics.stalls.get(),
        1,
        "one report, not one per round"
    );
    assert!(started.metrics.partition(0).is_some_and(|g| g.stalled));
    assert!(started.metrics.partition(1).is_some_and(|g| !g.stalled));
    started.store.gate.add_permits(100);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        started.metrics.partition(0).is_some_and(|g| !g.stalled),
        "still reported stalled after the commit point moved"
    );
    started.running.abort().await;
}

/// Goal: a record of a partition this member does not own (a fetch that raced a revoke) is
/// skipped: not applied, and no gauge or probe sees that partition as owned. Method: p0
/// assigned; the poll also brings a record of p3, never assigned.
#[tokio::test]
async fn a_record_of_a_partition_not_owned_is_skipped_without_a_trace() {
    let script = vec![Polled {
        commits_answered: Vec::new(),
        rebalances: vec![assigned(0)],
        records: vec![record(0, 0), record(3, 7)],
    }];
    let started = start(config(), script, 100);
    let deadline = Instant::now() + Duration::from_secs(10);
    while started.metrics.applied.get() < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Commit rounds (every 50 ms) refresh the gauges.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        started.metrics.applied.get(),
        1,
        "only p0's record is applied"
    );
    assert!(started.metrics.partition(3).is_none(), "a gauge for p3");
    assert_eq!(started.metrics.health().owned, 1);
    started.running.abort().await;
}

/// Goal: a compensator that loses a partition drops that partition's pending events, keeps
/// checking the others, and commits what the lost partition finished, synchronously, before
/// the next owner starts. Method: both partitions' records missing from the store and passed
/// by the main group; the scripted client revokes partition 1 on the second poll.
#[tokio::test]
async fn a_compensator_revoke_drops_that_partition_only_and_commits_it() {
    let calls = Arc::new(Mutex::new(Calls::default()));
    let first = Polled {
        commits_answered: Vec::new(),
        rebalances: vec![assigned(0), assigned(1)],
        records: vec![record(0, 0), record(1, 0)],
    };
    let second = Polled {
        commits_answered: Vec::new(),
        rebalances: vec![Rebalance::Revoked { partition: 1 }],
        records: Vec::new(),
    };
    let log = ScriptedLog {
        script: vec![first, second].into(),
        calls: Arc::clone(&calls),
    };
    let main = MemoryBroker::new("orders", 2);
    let passed: Vec<OffsetCommit> = (0..2)
        .map(|partition| OffsetCommit {
            partition,
            offset: 1,
            metadata: String::new(),
        })
        .collect();
    let mut main_member = main.consumer("orders", "holdfast");
    main_member.commit(&passed, CommitMode::Sync).await.unwrap();
    let config = CompensatorConfig {
        delay: Duration::from_millis(1),
        check_interval: Duration::from_millis(2),
        poll_timeout: Duration::from_millis(2),
        ..CompensatorConfig::default()
    };
    let compensator = Compensator::new(config, log, main.clone(), MemoryStore::new(), main.clone());
    let (stop, shutdown) = ShutdownTrigger::new();
    let task = tokio::spawn(compensator.run(shutdown));
    // Until p0's event is re-sent (at most 10 s, so that a loaded machine only slows the
    // test), then a little longer for a wrong re-send of p1's to show.
    let deadline = Instant::now() + Duration::from_secs(10);
    while main.records("orders").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.trigger();
    let report = task.await.unwrap();
    let resent: BTreeSet<bytes::Bytes> = main
        .records("orders")
        .into_iter()
        .map(|record| record.payload)
        .collect();
    assert!(resent.contains(&record(0, 0).payload), "{report:?}");
    assert!(!resent.contains(&record(1, 0).payload), "{report:?}");
    let calls = calls.lock().unwrap();
    assert!(
        calls
            .sync_commits
            .iter()
            .any(|(_, commits)| commits.iter().any(|commit| commit.partition == 1)),
        "the revoked partition was not committed: {:?}",
        calls.sync_commits
    );
}

/// Goal: redeliveries and dead letters are counted per partition and every store transaction
/// is timed. Method: one record in each of two partitions, then a second copy of p1's record
/// at the next offset (a redelivery the cache recognises) and a malformed record in p0; p1
/// shows one redelivered event, p0 one dead letter, and the store's histogram two
/// transactions (neither the copy nor the malformed record reaches the store).
#[tokio::test]
async fn redeliveries_are_counted_per_partition_and_store_transactions_timed() {
    let script = vec![
        Polled {
            commits_answered: Vec::new(),
            rebalances: vec![assigned(0), assigned(1)],
            records: vec![record(0, 0), record(1, 0)],
        },
        Polled {
            commits_answered: Vec::new(),
            rebalances: Vec::new(),
            records: vec![
                Record {
                    offset: 1,
                    ..record(1, 0)
                },
                Record {
                    offset: 1,
                    payload: bytes::Bytes::from_static(b"{not json"),
                    ..record(0, 0)
                },
            ],
        },
    ];
    let started = start(config(), script, 100);
    tokio::time::sleep(Duration::from_millis(200)).await;
    started.running.stop().await.unwrap();
    let metrics = &started.metrics;
    assert_eq!(metrics.applied.get(), 2);
    assert_eq!(metrics.duplicates_cache.get(), 1);
    let redelivered = |p| metrics.partition_counters(p).redelivered;
    assert_eq!((redelivered(0), redelivered(1)), (0, 1));
    let dead_letters = |p| metrics.partition_counters(p).dead_letters;
    assert_eq!((dead_letters(0), dead_letters(1)), (1, 0));
    assert_eq!(metrics.dead_letters.get(), 1);
    assert_eq!(metrics.store_duration.count(), 2);
    let text = metrics.render_prometheus();
    assert!(
        text.contains("holdfast_events_redelivered_total{partition=\"1\"} 1\n"),
        "{text}"
    );
}

/// Goal: a partition's gauges start from its assignment: the committed offset it resumes at
/// and the highest offset polled, so its lag is what this member read and has not committed
/// (not the whole log below it), and no commit goes out while its point has not moved (until
/// the refresh, five seconds on).
/// Method: a partition assigned at committed offset 1000, records 1000 to 1004 polled and held
/// in the store's gate through a few commit rounds; the gauges show committed 1000, polled
/// 1004, lag 5, and nothing was committed.
#[tokio::test]
async fn a_partitions_gauges_start_at_its_committed_offset() {
    let script = vec![Polled {
        commits_answered: Vec::new(),
        rebalances: vec![Rebalance::Assigned {
            partition: 2,
            committed: Some(holdfast::ports::CommittedOffset {
                offset: 1000,
                metadata: None,
            }),
            generation: 1,
        }],
        records: (1000..1005).map(|offset| record(2, offset)).collect(),
    }];
    let started = start(config(), script, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gauges = started.metrics.partition(2).expect("partition 2 is owned");
    assert_eq!((gauges.committed, gauges.polled), (Some(1000), Some(1004)));
    assert_eq!(started.metrics.health().lag_max, 5);
    let async_commits = started.calls.lock().unwrap().async_commits.clone();
    assert!(async_commits.is_empty(), "{async_commits:?}");
    started.running.abort().await;
}

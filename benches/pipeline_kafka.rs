//! End-to-end messages per second over the real Kafka-protocol broker, Redis and PostgreSQL,
//! in one run, on one topic filled once with one workload (8 partitions):
//!
//! - (a) read+commit: a `KafkaLog` consumer that polls batches and commits offsets with the
//!   pipeline's commit policy (asynchronously, every commit interval) and does nothing else;
//!   the ceiling for any consumer of this topic on this machine.
//! - (b) batched: holdfast's `pipeline::Consumer` with `RedisCache` and `PostgresStore` over
//!   `KafkaLog`; the run fails (non-zero exit) unless the database then holds every event
//!   exactly once.
//! - (d) batched, progress in the store: (b) with `progress = store` (each transaction also
//!   writes its partitions' progress, fenced by generation); verified the same way.
//! - (e) batched, history recorded: (b) with `holdfast::check::record`'s wrappers writing the
//!   run's history to a file, as `holdfast run --history` does; verified the same way, then
//!   the history (with the fill's acknowledged sends) judged by the checker, as `holdfast
//!   check` judges a real run: the bench fails on any violation.
//! - (c) per message: the seed text literally (Redis GET, one transaction, Redis SET, one
//!   synchronous offset commit, for every record). It is slow, so it processes a prefix of the
//!   topic (a time budget); its rate is messages per second over that prefix, and the prefix
//!   is verified too.
//!
//! Each run is a fresh consumer group starting at the beginning of the topic; (b) and (c) start
//! from empty tables and an empty cache. A run's clock starts when its consumer gets its first
//! record (the group join is reported apart) and, for (a) and (b), stops when the broker reports
//! the group's committed offsets at the end of every partition. (a), (b), (d) and (e) alternate for
//! several rounds and the medians are compared, because one pair of runs on a shared machine
//! can be far off. Every call into a port is timed, so the output also says where time went.
//!
//! Run: `scripts/services-up && source .services/env && cargo bench --features services --bench pipeline_kafka`
//! Knobs (environment): `HOLDFAST_BENCH_ROUNDS` (3), `HOLDFAST_BENCH_WORKERS` (8),
//! `HOLDFAST_BENCH_CONNECTIONS` (PostgreSQL connections, the store's default 4),
//! `HOLDFAST_BENCH_PER_MESSAGE_S` (15), `HOLDFAST_BENCH_MALFORMED_PERMILLE` (10),
//! `HOLDFAST_BENCH_ORDERS` (24,000 order lifecycles), `HOLDFAST_BENCH_DLQ_PARTITIONS` (1).

mod common;

use common::audit::{audit, Judged};
use common::cpu::{sample, CpuSample};
use common::timed::{Ledger, Timed};
use common::{check, env, per_message, reset, POLL_RECORDS};
use holdfast::adapters::kafka::{
    create_topic, read_topic, KafkaGroupOffsets, KafkaLog, KafkaPublisher, KafkaSettings,
};
use holdfast::adapters::{PostgresStore, RedisCache};
use holdfast::check::file::Recorder;
use holdfast::check::history::{digest, Step};
use holdfast::check::record::{RecordingLog, RecordingPublisher, RecordingStore};
use holdfast::pipeline::{Consumer, ConsumerConfig, Metrics, ProgressMode, Services};
use holdfast::ports::{
    CommitMode, EventLog, GroupOffsets, NoProbe, OffsetCommit, OutboundMessage, PartitionId,
};
use holdfast::verify::GroundTruth;
use holdfast::workload::{Workload, WorkloadConfig};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PARTITIONS: i32 = 8;
/// Order lifecycles in the workload (about six messages each, so about 142,000 messages):
/// enough for (a) to run several seconds, so that a round's fixed tail (the last dead
/// letters' acknowledgement, the last commit) does not decide its rate.
const ORDERS: usize = 24_000;
/// The per-message run stops after this long (counted from its first record), unless
/// `HOLDFAST_BENCH_PER_MESSAGE_S` says otherwise.
const PER_MESSAGE_BUDGET_S: usize = 15;
/// Rounds of (a), (b), (d) and (e), unless `HOLDFAST_BENCH_ROUNDS` says otherwise.
const ROUNDS: usize = 3;
/// How long a run may take before the bench gives up.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

/// An optional numeric setting from the environment.
fn knob(name: &str) -> Option<usize> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// The consumer configuration of (b), and the poll and commit policy of (a): the seed's batch
/// of 500, the default 8 workers (`HOLDFAST_BENCH_WORKERS` changes it), commits every 100 ms.
fn consumer_config(dead_letter_topic: &str) -> ConsumerConfig {
    ConsumerConfig {
        batch_size: POLL_RECORDS,
        concurrency: knob("HOLDFAST_BENCH_WORKERS")
            .unwrap_or(ConsumerConfig::default().concurrency),
        commit_interval: Duration::from_millis(100),
        dead_letter_topic: dead_letter_topic.to_owned(),
        ..ConsumerConfig::default()
    }
}

fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("hf-bench-{name}-{nanos}")
}

/// The topic, filled once.
struct Topic {
    settings: KafkaSettings,
    name: String,
    dead_letters: String,
    /// End offset of every partition.
    ends: BTreeMap<PartitionId, i64>,
    messages: usize,
    malformed: usize,
    truth: GroundTruth,
    /// How often each payload (by digest) was published, and each valid event's send as the
    /// broker acknowledged it: for the checker's audit of (e).
    publishes: BTreeMap<u64, u32>,
    sends: Vec<(u64, Step)>,
}

impl Topic {
    /// What the checker judges a run of this topic against.
    fn judged(&self) -> Judged<'_> {
        Judged {
            settings: &self.settings,
            topic: &self.name,
            dead_letter_topic: &self.dead_letters,
            truth: &self.truth,
            publishes: &self.publishes,
            sends: &self.sends,
        }
    }
}

/// Creates the topic and publishes the workload with many deliveries in flight.
async fn fill(settings: KafkaSettings, workload: &Workload) -> Topic {
    let name = unique("orders");
    let dead_letters = format!("{name}.dlq");
    create_topic(&settings, &name, PARTITIONS)
        .await
        .expect("create topic");
    // One partition, as `scripts/services-up` creates `orders.dlq`, unless
    // `HOLDFAST_BENCH_DLQ_PARTITIONS` says otherwise.
    let dead_letter_partitions = knob("HOLDFAST_BENCH_DLQ_PARTITIONS").map_or(1, |n| {
        i32::try_from(n).expect("HOLDFAST_BENCH_DLQ_PARTITIONS fits in i32")
    });
    create_topic(&settings, &dead_letters, dead_letter_partitions)
        .await
        .expect("create dead-letter topic");
    let publisher = KafkaPublisher::connect(&settings).expect("publisher");
    let mut in_flight = VecDeque::new();
    let (mut ends, mut sends, mut publishes) = (BTreeMap::new(), Vec::new(), BTreeMap::new());
    let mut note = |event_id: Option<String>, delivery: holdfast::ports::Delivery| {
        let end = ends.entry(delivery.partition).or_insert(0);
        *end = (*end).max(delivery.offset + 1);
        if let Some(event_id) = event_id {
            let delivered = Some((delivery.partition, delivery.offset));
            let send = Step::Sent {
                event_id,
                acknowledged: true,
                delivered,
            };
            sends.push((0, send));
        }
    };
    for message in &workload.messages {
        *publishes.entry(digest(&message.payload)).or_insert(0) += 1;
        let event_id = message.event.as_ref().map(|e| e.event_id.clone());
        let outbound = OutboundMessage {
            topic: name.clone(),
            key: message.key.clone(),
            payload: message.payload.clone(),
            headers: vec![],
        };
        in_flight.push_back((event_id, publisher.enqueue(&outbound).expect("enqueue")));
        if in_flight.len() >= 5000 {
            if let Some((event_id, pending)) = in_flight.pop_front() {
                note(event_id, pending.await.expect("delivery"));
            }
        }
    }
    while let Some((event_id, pending)) = in_flight.pop_front() {
        note(event_id, pending.await.expect("delivery"));
    }
    let published = workload.published();
    let messages = workload.messages.len();
    assert_eq!(
        ends.values().sum::<i64>(),
        messages as i64,
        "offsets not dense"
    );
    Topic {
        settings,
        name,
        dead_letters,
        ends,
        messages,
        malformed: published.malformed,
        truth: published.truth,
        publishes,
        sends,
    }
}

/// How long a run took: from the call to its first record (the group join), and from its first
/// record to the group's commit of every partition end.
struct Timing {
    join: Duration,
    run: Duration,
    /// From the first record to the last one polled.
    read: Duration,
}

/// Waits until `polled()` (records the consumer got so far) is positive, then until the
/// broker reports `group`'s committed offsets at every end. The broker is asked only once the
/// consumer got every record, so that the watching does not load it during the run.
async fn time_run(topic: &Topic, group: &str, polled: impl Fn() -> u64) -> Timing {
    let called = Instant::now();
    let offsets = KafkaGroupOffsets::connect(&topic.settings, &topic.name).expect("offsets");
    let partitions: Vec<PartitionId> = topic.ends.keys().copied().collect();
    let wanted: Vec<Option<i64>> = topic.ends.values().map(|end| Some(*end)).collect();
    let mut first: Option<Instant> = None;
    let mut all_read: Option<Instant> = None;
    loop {
        assert!(
            called.elapsed() < RUN_DEADLINE,
            "group {group} did not finish within {RUN_DEADLINE:?}"
        );
        let count = polled();
        if first.is_none() && count > 0 {
            first = Some(Instant::now());
        }
        if all_read.is_none() && count >= topic.messages as u64 {
            all_read = Some(Instant::now());
        }
        if let (Some(first), Some(all_read)) = (first, all_read) {
            let committed = offsets
                .committed(group, &partitions)
                .await
                .expect("committed offsets");
            if committed == wanted {
                return Timing {
                    join: first.duration_since(called),
                    run: first.elapsed(),
                    read: all_read.duration_since(first),
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// What the read+commit consumer did.
#[derive(Default)]
struct ReadStats {
    polls: u64,
    records: u64,
    commits: u64,
    /// Time spent waiting in polls, and the longest poll.
    poll_time: Duration,
    poll_max: Duration,
}

/// (a): poll, note the next offset of every partition, commit what moved every commit
/// interval (asynchronously, as the pipeline does); on `stop`, a final synchronous commit.
async fn read_and_commit<L: EventLog>(
    mut log: L,
    config: ConsumerConfig,
    read: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> ReadStats {
    let mut stats = ReadStats::default();
    let mut next: BTreeMap<PartitionId, i64> = BTreeMap::new();
    let mut committed: BTreeMap<PartitionId, i64> = BTreeMap::new();
    let mut next_commit = Instant::now() + config.commit_interval;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next_commit {
            commit_moved(
                &mut log,
                &next,
                &mut committed,
                CommitMode::Async,
                &mut stats,
            )
            .await;
            next_commit = Instant::now() + config.commit_interval;
        }
        let poll_started = Instant::now();
        let polled = log
            .poll(config.batch_size, config.poll_timeout)
            .await
            .expect("poll");
        stats.polls += 1;
        stats.poll_time += poll_started.elapsed();
        stats.poll_max = stats.poll_max.max(poll_started.elapsed());
        for record in &polled.records {
            let offset = next.entry(record.partition).or_insert(0);
            *offset = (*offset).max(record.offset + 1);
        }
        stats.records += polled.records.len() as u64;
        read.fetch_add(polled.records.len() as u64, Ordering::Relaxed);
    }
    commit_moved(
        &mut log,
        &next,
        &mut committed,
        CommitMode::Sync,
        &mut stats,
    )
    .await;
    stats
}

/// Commits the partitions whose next offset moved since their last commit.
async fn commit_moved<L: EventLog>(
    log: &mut L,
    next: &BTreeMap<PartitionId, i64>,
    committed: &mut BTreeMap<PartitionId, i64>,
    mode: CommitMode,
    stats: &mut ReadStats,
) {
    let moved: Vec<OffsetCommit> = next
        .iter()
        .filter(|(partition, offset)| committed.get(partition) != Some(offset))
        .map(|(partition, offset)| OffsetCommit {
            partition: *partition,
            offset: *offset,
            metadata: String::new(),
        })
        .collect();
    if !moved.is_empty() {
        log.commit(&moved, mode).await.expect("commit");
        stats.commits += 1;
        committed.extend(moved.iter().map(|commit| (commit.partition, commit.offset)));
    }
}

async fn run_read_and_commit(topic: &Topic, ledger: &Arc<Ledger>) -> (Timing, ReadStats) {
    let group = unique("read");
    let log = Timed::new(
        KafkaLog::connect(&topic.settings, &group, &topic.name).expect("consumer"),
        ledger,
    );
    let read = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(read_and_commit(
        log,
        consumer_config(&topic.dead_letters),
        Arc::clone(&read),
        Arc::clone(&stop),
    ));
    let timing = time_run(topic, &group, || read.load(Ordering::Relaxed)).await;
    stop.store(true, Ordering::Relaxed);
    let stats = task.await.expect("read+commit task");
    (timing, stats)
}

/// What the batched pipeline reported.
struct BatchedStats {
    polled: u64,
    commits: u64,
    batches: u64,
    applied: u64,
    dead_letters: u64,
    /// Sum and maximum of the workers' batch latencies.
    batch_time: Duration,
    batch_max: Duration,
}

/// What a batched run is: (b), (d) with progress in the store, or (e) with a history recorded
/// in a directory (left for the audit).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Batched {
    Plain,
    ProgressInStore,
    History(PathBuf),
}

async fn run_batched(
    topic: &Topic,
    cache: &RedisCache,
    store: &PostgresStore,
    ledger: &Arc<Ledger>,
    kind: Batched,
) -> (Timing, BatchedStats) {
    let group = unique("batched");
    let progress = match kind {
        Batched::ProgressInStore => ProgressMode::Store,
        Batched::Plain | Batched::History(_) => ProgressMode::Kafka,
    };
    let config = ConsumerConfig {
        progress,
        ..consumer_config(&topic.dead_letters)
    };
    let scope = format!("{group}/{}", topic.name);
    let store = Timed::new(store.clone().with_progress_scope(scope), ledger);
    let cache = Timed::new(cache.clone(), ledger);
    let publisher = KafkaPublisher::connect(&topic.settings).expect("publisher");
    let dead_letters = Timed::new(publisher, ledger);
    let log = KafkaLog::connect(&topic.settings, &group, &topic.name).expect("consumer");
    let log = Timed::new(log, ledger);
    let Batched::History(dir) = kind else {
        let services = Services {
            cache,
            store,
            dead_letters,
            probe: NoProbe,
        };
        return run_consumer(topic, &group, config, log, services).await;
    };
    let (recorder, writing) = Recorder::create(&dir, "bench").expect("history file");
    let log = RecordingLog {
        inner: log,
        sink: recorder.clone(),
    };
    let services = Services {
        cache,
        store: RecordingStore {
            inner: store,
            sink: recorder.clone(),
        },
        dead_letters: RecordingPublisher {
            inner: dead_letters,
            sink: recorder,
        },
        probe: NoProbe,
    };
    let result = run_consumer(topic, &group, config, log, services).await;
    let steps = writing.finish().expect("history written");
    let bytes = std::fs::metadata(dir.join(format!("bench-{}.history", std::process::id())))
        .map_or(0, |meta| meta.len());
    println!("  (e) history: {steps} steps, {bytes} bytes");
    result
}

/// What every batched round uses: the filled topic, the services, where their state is.
struct Rig<'a> {
    topic: &'a Topic,
    cache: &'a RedisCache,
    store: &'a PostgresStore,
    redis_url: &'a str,
    postgres_url: &'a str,
    services: &'a std::path::Path,
}

/// One kind of run's totals over the rounds: port-call times, rates, CPU and wall time.
#[derive(Default)]
struct Totals {
    ledger: Arc<Ledger>,
    rates: Vec<f64>,
    cpu: CpuSample,
    wall: Duration,
}

/// One round of a batched run from empty services: its CPU and wall time go to `totals`, the
/// store is verified against the truth (`name` says which run failed), and its rate is kept.
async fn batched_round(
    rig: &Rig<'_>,
    kind: Batched,
    totals: &mut Totals,
    name: &str,
) -> (Timing, BatchedStats) {
    reset(rig.redis_url, rig.postgres_url).await;
    let (before, started) = (sample(rig.services), Instant::now());
    let (timing, stats) = run_batched(rig.topic, rig.cache, rig.store, &totals.ledger, kind).await;
    totals.cpu.add(&sample(rig.services).since(&before));
    totals.wall += started.elapsed();
    check(rig.store, &rig.topic.truth, name).await;
    totals
        .rates
        .push(rate(rig.topic.messages as u64, timing.run));
    (timing, stats)
}

/// Runs one consumer over the topic until its group committed every end.
async fn run_consumer<L, S, D>(
    topic: &Topic,
    group: &str,
    config: ConsumerConfig,
    log: L,
    services: Services<Timed<RedisCache>, S, D, NoProbe>,
) -> (Timing, BatchedStats)
where
    L: EventLog + 'static,
    S: holdfast::ports::OrderStore + 'static,
    D: holdfast::ports::Publisher + 'static,
{
    let metrics = Arc::new(Metrics::new());
    let running = Consumer::new(config, log, services, Arc::clone(&metrics))
        .expect("consumer")
        .spawn();
    let timing = time_run(topic, group, || metrics.polled.get()).await;
    let summary = running.stop().await.expect("consumer task");
    let stats = BatchedStats {
        polled: summary.polled,
        commits: summary.commits,
        batches: metrics.batches.get(),
        applied: metrics.applied.get(),
        dead_letters: metrics.dead_letters.get(),
        batch_time: Duration::from_micros(metrics.batch_duration.sum_us()),
        batch_max: Duration::from_micros(metrics.batch_duration.max_us()),
    };
    (timing, stats)
}

fn rate(messages: u64, time: Duration) -> f64 {
    messages as f64 / time.as_secs_f64()
}

/// The median of `values` (the upper one of the middle two for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn met(condition: bool) -> &'static str {
    if condition {
        "met"
    } else {
        "NOT met"
    }
}

fn main() {
    let settings = KafkaSettings::new(env("HOLDFAST_KAFKA_BROKERS"));
    let redis_url = env("HOLDFAST_REDIS_URL");
    let postgres_url = env("HOLDFAST_POSTGRES_URL");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // The default workload has 1% malformed messages (dead-lettered by (b));
        // `HOLDFAST_BENCH_MALFORMED_PERMILLE` changes the share.
        let defaults = WorkloadConfig::default();
        let malformed_ratio = knob("HOLDFAST_BENCH_MALFORMED_PERMILLE")
            .map_or(defaults.malformed_ratio, |permille| permille as f64 / 1000.0);
        let workload = Workload::generate(&WorkloadConfig {
            orders: knob("HOLDFAST_BENCH_ORDERS").unwrap_or(ORDERS),
            seed: 0xbe7c,
            malformed_ratio,
            ..defaults
        })
        .expect("workload");
        let cache = RedisCache::connect(&redis_url).await.expect("redis");
        // The store's connections: its default unless `HOLDFAST_BENCH_CONNECTIONS` says.
        let connections = knob("HOLDFAST_BENCH_CONNECTIONS")
            .unwrap_or(holdfast::adapters::postgres::CONNECTIONS_DEFAULT);
        let store = PostgresStore::connect_with(&postgres_url, connections)
            .await
            .expect("postgres");
        let config = consumer_config("-");
        println!(
            "consumer: batch {}, {} workers, commit every {:?}, poll timeout {:?}; {connections} PostgreSQL connections",
            config.batch_size, config.concurrency, config.commit_interval, config.poll_timeout
        );
        let topic = fill(settings, &workload).await;
        // Read it all once, so that no run pays for the broker's first read from storage.
        let warm = read_topic(&topic.settings, &topic.name, RUN_DEADLINE)
            .await
            .expect("warm-up read");
        assert_eq!(warm.len(), topic.messages);
        let messages = topic.messages as u64;
        println!(
            "topic {}: {} messages ({} malformed, {} distinct events) on {PARTITIONS} partitions",
            topic.name,
            topic.messages,
            topic.malformed,
            topic.truth.acknowledged.len()
        );

        // (a) and (b) alternate for a few rounds: on a shared machine one pair of runs can be
        // far off; the medians are reported.
        let rounds = knob("HOLDFAST_BENCH_ROUNDS").unwrap_or(ROUNDS).max(1);
        let services = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".services");
        let rig = Rig {
            topic: &topic,
            cache: &cache,
            store: &store,
            redis_url: &redis_url,
            postgres_url: &postgres_url,
            services: &services,
        };
        let (mut read, mut batched) = (Totals::default(), Totals::default());
        let (mut stored, mut recorded) = (Totals::default(), Totals::default());
        for round in 1..=rounds {
            let (before, started) = (sample(&services), Instant::now());
            let (read_timing, read_stats) = run_read_and_commit(&topic, &read.ledger).await;
            read.cpu.add(&sample(&services).since(&before));
            read.wall += started.elapsed();
            assert_eq!(read_stats.records, messages, "read+commit saw every record once");
            let (batched_timing, batched_stats) =
                batched_round(&rig, Batched::Plain, &mut batched, "the batched pipeline").await;
            let batched_rate = rate(messages, batched_timing.run);
            let what = "the batched pipeline, progress in the store";
            let (stored_timing, _) =
                batched_round(&rig, Batched::ProgressInStore, &mut stored, what).await;
            let stored_rate = rate(messages, stored_timing.run);
            println!(
                "round {round}: (d) {:.2} s, {stored_rate:.0}/s, verified; d/b {:.0}%",
                stored_timing.run.as_secs_f64(),
                stored_rate / batched_rate * 100.0
            );
            let dir = std::env::temp_dir().join(unique("history"));
            let what = "the batched pipeline, history recorded";
            let kind = Batched::History(dir.clone());
            let (recorded_timing, _) = batched_round(&rig, kind, &mut recorded, what).await;
            let steps = audit(&topic.judged(), &store, &dir).await;
            println!("  (e) checked: every invariant holds over {steps} steps");
            let _ = std::fs::remove_dir_all(&dir);
            let recorded_rate = rate(messages, recorded_timing.run);
            println!(
                "round {round}: (e) {:.2} s, {recorded_rate:.0}/s, verified; e/b {:.0}%",
                recorded_timing.run.as_secs_f64(),
                recorded_rate / batched_rate * 100.0
            );
            let read_rate = rate(messages, read_timing.run);
            println!(
                "round {round}: (a) {:.2} s, {read_rate:.0}/s; (b) {:.2} s, {batched_rate:.0}/s, verified; b/a {:.0}%",
                read_timing.run.as_secs_f64(),
                batched_timing.run.as_secs_f64(),
                batched_rate / read_rate * 100.0
            );
            println!(
                "  joins {:.2} s / {:.2} s; last record polled after {:.2} s / {:.2} s",
                read_timing.join.as_secs_f64(),
                batched_timing.join.as_secs_f64(),
                read_timing.read.as_secs_f64(),
                batched_timing.read.as_secs_f64()
            );
            println!(
                "  (a) {} polls ({:.0} records/poll), {} commits",
                read_stats.polls,
                read_stats.records as f64 / read_stats.polls.max(1) as f64,
                read_stats.commits
            );
            println!(
                "  (b) {} worker batches ({:.0} records/batch, mean {:.0} ms, longest {:.0} ms), {} commits, applied {}, dead-lettered {}",
                batched_stats.batches,
                batched_stats.polled as f64 / batched_stats.batches.max(1) as f64,
                batched_stats.batch_time.as_secs_f64() * 1000.0
                    / batched_stats.batches.max(1) as f64,
                batched_stats.batch_max.as_secs_f64() * 1000.0,
                batched_stats.commits,
                batched_stats.applied,
                batched_stats.dead_letters
            );
            read.rates.push(read_rate);
        }
        println!("batched pipeline verified in every round: every event applied exactly once");

        reset(&redis_url, &postgres_url).await;
        let log =
            KafkaLog::connect(&topic.settings, &unique("per-message"), &topic.name)
                .expect("consumer");
        let literal_ledger = Arc::new(Ledger::default());
        let per_message_budget = Duration::from_secs(
            knob("HOLDFAST_BENCH_PER_MESSAGE_S").unwrap_or(PER_MESSAGE_BUDGET_S) as u64,
        );
        let mut log = Timed::new(log, &literal_ledger);
        let literal = per_message(
            &mut log,
            &Timed::new(cache.clone(), &literal_ledger),
            &Timed::new(store.clone(), &literal_ledger),
            topic.messages,
            per_message_budget,
        )
        .await;
        drop(log);
        check(&store, &literal.truth, "the per-message pipeline").await;
        println!(
            "(c) per message: the first {} of {} messages in {:.2} s ({per_message_budget:?} budget; join {:.2} s), verified",
            literal.messages,
            topic.messages,
            literal.elapsed.as_secs_f64(),
            literal.first_record_after.as_secs_f64()
        );

        let read_rate = median(&mut read.rates);
        let batched_rate = median(&mut batched.rates);
        // The per-message rate over its whole window, and over its second half (without the
        // slow first commits after its group join): the ratio uses the higher, the one more
        // favourable to the per-message pipeline.
        let literal_rate_all = rate(literal.messages as u64, literal.elapsed);
        let literal_rate_late = rate(literal.late_messages as u64, literal.late_elapsed);
        let literal_rate = literal_rate_all.max(literal_rate_late);
        println!(
            "(c) rate over the whole window {literal_rate_all:.0}/s, over its second half ({} messages in {:.2} s) {literal_rate_late:.0}/s",
            literal.late_messages,
            literal.late_elapsed.as_secs_f64()
        );
        println!("{:<26} {:>9} {:>11}", "run", "messages", "messages/s");
        println!(
            "{:<26} {messages:>9} {read_rate:>11.0}",
            format!("(a) read+commit, median/{rounds}")
        );
        println!(
            "{:<26} {messages:>9} {batched_rate:>11.0}",
            format!("(b) batched, median/{rounds}")
        );
        let stored_rate = median(&mut stored.rates);
        println!(
            "{:<26} {messages:>9} {stored_rate:>11.0}",
            format!("(d) progress in store, median/{rounds}")
        );
        let recorded_rate = median(&mut recorded.rates);
        println!(
            "{:<26} {messages:>9} {recorded_rate:>11.0}",
            format!("(e) history recorded, median/{rounds}")
        );
        println!(
            "{:<26} {:>9} {literal_rate:>11.0}",
            "(c) per message, prefix", literal.messages
        );
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        for (run, totals) in [
            ("(a)", &read),
            ("(b)", &batched),
            ("(d)", &stored),
            ("(e)", &recorded),
        ] {
            println!(
                "CPU, all rounds of {run} ({:.2} s wall, joins included, {cores} cores): {}",
                totals.wall.as_secs_f64(),
                totals.cpu.describe()
            );
        }
        println!(
            "time spent in port calls, all rounds (summed over concurrent callers; polls include the group joins):"
        );
        for (run, ledger) in [
            ("(a)", &read.ledger),
            ("(b)", &batched.ledger),
            ("(d)", &stored.ledger),
            ("(e)", &recorded.ledger),
            ("(c)", &literal_ledger),
        ] {
            for (call, spent) in [
                ("poll", &ledger.poll),
                ("offset commit", &ledger.commit),
                ("pause/resume", &ledger.pause),
                ("cache check", &ledger.cache_check),
                ("cache remember", &ledger.cache_remember),
                ("store transaction", &ledger.store_apply),
                ("dead-letter publish", &ledger.publish),
            ] {
                if spent.calls() > 0 {
                    println!("  {run} {call:<18} {}", spent.describe());
                }
            }
        }
        let speedup = batched_rate / literal_rate;
        let share = batched_rate / read_rate;
        println!("b/c = {speedup:.1}x (target >= 10x: {})", met(speedup >= 10.0));
        println!(
            "b/a = {:.0}% (target >= 70%: {})",
            share * 100.0,
            met(share >= 0.7)
        );
        let stored_share = stored_rate / batched_rate;
        println!(
            "d/b = {:.0}%, d/a = {:.0}% (progress in the store within 5% of b: {})",
            stored_share * 100.0,
            stored_rate / read_rate * 100.0,
            met(stored_share >= 0.95)
        );
        let recorded_share = recorded_rate / batched_rate;
        println!(
            "e/b = {:.0}% (recording the history costs under 5% of b: {})",
            recorded_share * 100.0,
            met(recorded_share >= 0.95)
        );
    });
}

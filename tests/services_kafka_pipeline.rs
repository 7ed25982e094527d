//! The real consumer (`holdfast::pipeline::Consumer`) over the real broker, Redis and
//! PostgreSQL: exactly-once effect for 10,000+ events with duplicates, disorder and malformed
//! input, in one clean run and through repeated kills. Needs `scripts/services-up`; addresses
//! come from `HOLDFAST_KAFKA_BROKERS`, `HOLDFAST_REDIS_URL` and `HOLDFAST_POSTGRES_URL` (a
//! missing one is a failure, not a skip). Each test uses its own topics, group and schema.

mod common;

use common::kafka::{
    caught_up, free_address, holdfast, http_get, metric, partition_ends, scrape, spawn_holdfast,
    terminate, topics, unique, wait_caught_up, Topics,
};
use common::{env, flushall, fresh_store, services_up, Scratch};
use holdfast::adapters::kafka::{read_topic, KafkaGroupOffsets, KafkaLog, KafkaPublisher};
use holdfast::adapters::{PostgresStore, RedisCache};
use holdfast::pipeline::dead_letter::{
    header, HEADER_ERROR, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION,
};
use holdfast::pipeline::{Consumer, ConsumerConfig, Metrics, RunningConsumer, Services};
use holdfast::ports::{Delivery, NoProbe, OutboundMessage, PartitionId, Record};
use holdfast::verify::{verify, GroundTruth, StoreView, VerifyReport};
use holdfast::workload::{Workload, WorkloadConfig};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a group may take to commit every end.
const CATCH_UP: Duration = Duration::from_secs(300);

/// The tests of this binary flush Redis: one at a time.
static SERVICES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Publishes a workload with many deliveries in flight; returns the ground truth, the end
/// offset of every partition, and the numbers of valid and malformed messages.
async fn publish(
    topics: &Topics,
    config: &WorkloadConfig,
) -> (GroundTruth, BTreeMap<PartitionId, i64>, usize, usize) {
    let workload = Workload::generate(config).unwrap();
    let publisher = KafkaPublisher::connect(&topics.settings).unwrap();
    let mut in_flight = VecDeque::new();
    let mut deliveries: Vec<Delivery> = Vec::new();
    for message in &workload.messages {
        let outbound = OutboundMessage {
            topic: topics.topic.clone(),
            key: message.key.clone(),
            payload: message.payload.clone(),
            headers: vec![],
        };
        in_flight.push_back(publisher.enqueue(&outbound).unwrap());
        if in_flight.len() >= 5000 {
            deliveries.push(in_flight.pop_front().unwrap().await.unwrap());
        }
    }
    while let Some(pending) = in_flight.pop_front() {
        deliveries.push(pending.await.unwrap());
    }
    let mut ends = BTreeMap::new();
    for delivery in &deliveries {
        let end = ends.entry(delivery.partition).or_insert(0);
        *end = (*end).max(delivery.offset + 1);
    }
    let published = workload.published();
    (published.truth, ends, published.valid, published.malformed)
}

/// Empty Redis, a fresh schema, and fresh topics holding 10,000+ events of one workload.
struct Fixture {
    cache: RedisCache,
    store: PostgresStore,
    topics: Topics,
    truth: GroundTruth,
    ends: BTreeMap<PartitionId, i64>,
    valid: usize,
    malformed: usize,
    /// Distinct idempotency keys among the valid events.
    distinct: u64,
}

impl Fixture {
    async fn new(name: &str, seed: u64) -> Fixture {
        let redis_url = env("HOLDFAST_REDIS_URL");
        flushall(&redis_url).await;
        let cache = RedisCache::connect(&redis_url).await.unwrap();
        let store = fresh_store(&format!("hf_test_kafka_{name}")).await;
        let topics = topics(name).await;
        let (truth, ends, valid, malformed) = publish(&topics, &workload(seed)).await;
        assert!(valid >= 10_000, "only {valid} events");
        assert!(malformed > 0, "no malformed message");
        let distinct = truth.acknowledged_keys().len() as u64;
        Fixture {
            cache,
            store,
            topics,
            truth,
            ends,
            valid,
            malformed,
            distinct,
        }
    }
}

impl Fixture {
    /// Starts a consumer of the fixture's topic in `group` on its Redis and PostgreSQL.
    fn start(&self, group: &str, seed: u64) -> Running {
        start(&self.topics, group, &self.cache, &self.store, seed)
    }

    /// Waits until `group` committed the end of every partition.
    async fn wait_caught_up(&self, group: &str) {
        wait_caught_up(&self.topics, group, &self.ends, CATCH_UP).await;
    }

    /// Verifies the database against the workload's truth.
    async fn check(&self) -> VerifyReport {
        check(&self.truth, &self.store).await
    }

    /// Everything on the dead-letter topic.
    async fn dead_letters(&self) -> Vec<Record> {
        read_topic(
            &self.topics.settings,
            &self.topics.dead_letters,
            Duration::from_secs(60),
        )
        .await
        .unwrap()
    }
}

fn config(topics: &Topics, seed: u64) -> ConsumerConfig {
    ConsumerConfig {
        batch_size: 500,
        concurrency: 4,
        commit_interval: Duration::from_millis(100),
        poll_timeout: Duration::from_millis(50),
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(500),
        dead_letter_topic: topics.dead_letters.clone(),
        jitter_seed: seed,
        ..ConsumerConfig::default()
    }
}

struct Running {
    consumer: RunningConsumer,
    metrics: Arc<Metrics>,
}

impl Running {
    /// Waits until this consumer applied `at_least` events; fails with `what` after two
    /// minutes.
    async fn wait_applied(&self, at_least: u64, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.metrics.applied.get() < at_least {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits until this consumer applied an event (true) or `group` committed every end of
    /// `ends`, so there is nothing left to apply (false); fails with `what` after two minutes.
    async fn wait_applied_or_caught_up(
        &self,
        offsets: &KafkaGroupOffsets,
        group: &str,
        ends: &BTreeMap<PartitionId, i64>,
        what: &str,
    ) -> bool {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut probe_next = Instant::now();
        while self.metrics.applied.get() == 0 {
            assert!(Instant::now() < deadline, "{what}");
            if Instant::now() >= probe_next {
                if caught_up(offsets, group, ends).await {
                    return false;
                }
                probe_next = Instant::now() + Duration::from_millis(100);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }
}

fn start(
    topics: &Topics,
    group: &str,
    cache: &RedisCache,
    store: &PostgresStore,
    seed: u64,
) -> Running {
    let metrics = Arc::new(Metrics::new());
    let services = Services {
        cache: cache.clone(),
        store: store.clone(),
        dead_letters: KafkaPublisher::connect(&topics.settings).unwrap(),
        probe: NoProbe,
    };
    let log = KafkaLog::connect(&topics.settings, group, &topics.topic).unwrap();
    let consumer =
        Consumer::new(config(topics, seed), log, services, Arc::clone(&metrics)).unwrap();
    Running {
        consumer: consumer.spawn(),
        metrics,
    }
}

async fn check(truth: &GroundTruth, store: &PostgresStore) -> VerifyReport {
    let view = StoreView {
        ledger: store.ledger().await.unwrap(),
        rows: store.rows().await.unwrap(),
    };
    verify(truth, &view, &[], &BTreeSet::new())
}

fn workload(seed: u64) -> WorkloadConfig {
    WorkloadConfig {
        orders: 2600,
        duplicate_ratio: 0.1,
        reorder_ratio: 0.3,
        malformed_ratio: 0.01,
        seed,
        ..WorkloadConfig::default()
    }
}

/// Goal: exactly-once effect end to end on the real broker, Redis and PostgreSQL. Method:
/// 10,000+ events with duplicates, disorder and malformed messages on 8 partitions; one
/// consumer until its group committed the end of every partition; verify the database; every
/// malformed message is on the dead-letter topic with its error and source offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_for_ten_thousand_events_on_the_real_services() {
    let _exclusive = SERVICES.lock().await;
    let fixture = Fixture::new("pipeline", 31).await;
    let (valid, malformed, distinct) = (fixture.valid, fixture.malformed, fixture.distinct);

    let started = Instant::now();
    let group = unique("group");
    let running = fixture.start(&group, 1);
    fixture.wait_caught_up(&group).await;
    let elapsed = started.elapsed();
    let summary = running.consumer.stop().await.unwrap();
    let report = fixture.check().await;
    assert!(report.passed(), "{report}");
    assert_eq!(running.metrics.applied.get(), distinct);
    assert_eq!(running.metrics.dead_letters.get(), malformed as u64);
    let letters = fixture.dead_letters().await;
    assert_eq!(letters.len(), malformed);
    for letter in &letters {
        assert!(header(&letter.headers, HEADER_ERROR).is_some());
        assert!(header(&letter.headers, HEADER_SOURCE_OFFSET).is_some());
    }
    eprintln!(
        "{valid} valid + {malformed} malformed messages, {distinct} keys applied in {elapsed:?} \
         (group join included); {} polled, {} commits",
        summary.polled, summary.commits
    );
}

/// Goal: killing the consumer at arbitrary points loses nothing and applies nothing twice.
/// Method: 10,000+ events; a consumer is started and its task aborted (its in-flight work is
/// abandoned, uncommitted) at a point that varies with the cycle, up to 15 times (at least 5 while
/// work remains); then one runs until
/// the group committed the end of every partition; verify the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_through_repeated_consumer_kills() {
    let _exclusive = SERVICES.lock().await;
    let fixture = Fixture::new("kills", 32).await;
    let (valid, malformed, distinct) = (fixture.valid, fixture.malformed, fixture.distinct);
    let group = unique("group");
    let offsets =
        KafkaGroupOffsets::connect(&fixture.topics.settings, &fixture.topics.topic).unwrap();
    let (kills_max, kills_min) = (15u64, 5u64);
    let mut kills = 0;
    let mut applied_total = 0;
    while kills < kills_max {
        let running = fixture.start(&group, kills);
        // Kill once this incarnation applied something (it joined and made progress), after
        // a pause that varies with the cycle so the kill lands at different points. A fast
        // machine may finish the work before the last kill: then there is nothing to cut.
        let what = format!("incarnation {kills} never applied");
        if !running
            .wait_applied_or_caught_up(&offsets, &group, &fixture.ends, &what)
            .await
        {
            running.consumer.abort().await;
            eprintln!("the work was done after {kills} kills ({applied_total} of {distinct} keys counted)");
            break;
        }
        tokio::time::sleep(Duration::from_millis(17 * (kills % 4))).await;
        running.consumer.abort().await;
        applied_total += running.metrics.applied.get();
        eprintln!(
            "kill {kills}: this incarnation applied {}",
            running.metrics.applied.get()
        );
        kills += 1;
    }
    assert!(
        kills >= kills_min,
        "only {kills} kills cut work in progress: the workload is too small for this test"
    );
    assert!(
        applied_total < distinct,
        "the kills came after all the work: nothing was interrupted"
    );
    let running = fixture.start(&group, 99);
    fixture.wait_caught_up(&group).await;
    running.consumer.stop().await.unwrap();
    let report = fixture.check().await;
    assert!(report.passed(), "{report}");
    // A killed incarnation's last transaction may commit after its task died, uncounted:
    // the counters can only fall short, and the database (checked above) is the truth.
    assert!(applied_total + running.metrics.applied.get() <= distinct);
    let letters = fixture.dead_letters().await;
    let sources: BTreeSet<(String, String)> = letters
        .iter()
        .map(|letter| {
            (
                header(&letter.headers, HEADER_SOURCE_PARTITION)
                    .unwrap()
                    .to_owned(),
                header(&letter.headers, HEADER_SOURCE_OFFSET)
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        sources.len(),
        malformed,
        "every malformed message dead-lettered"
    );
    eprintln!(
        "{valid} valid + {malformed} malformed messages, {kills} kills; {} dead letters \
         (repeats come from redelivery after a kill)",
        letters.len()
    );
}

/// Goal: a broker restart mid-run (sqlite storage: records and offsets survive) is an outage
/// the pipeline rides out: nothing lost, nothing doubled, nothing dead-lettered because of
/// it. Method: 10,000+ events; `scripts/services-up --restart kafka` once a third of the keys
/// are applied, while the consumer runs; wait until the group committed every end; verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_through_a_broker_restart_mid_run() {
    let _exclusive = SERVICES.lock().await;
    let fixture = Fixture::new("restart", 33).await;
    let (malformed, distinct) = (fixture.malformed, fixture.distinct);
    let group = unique("group");
    let running = fixture.start(&group, 3);
    running
        .wait_applied(distinct / 3, "a third of the keys were never applied")
        .await;
    let restart_at = running.metrics.applied.get();
    services_up(&["--restart", "kafka"]).await;
    let back_at = running.metrics.applied.get();
    fixture.wait_caught_up(&group).await;
    running.consumer.stop().await.unwrap();
    assert!(restart_at < distinct, "the restart came after the run");
    let report = fixture.check().await;
    assert!(report.passed(), "{report}");
    assert_eq!(
        running.metrics.dead_letters.get(),
        malformed as u64,
        "only malformed messages may be dead-lettered"
    );
    eprintln!(
        "of {distinct} keys, applied when the broker restart began/ended: {restart_at}/{back_at}; \
         {} outage retries, {} commit failures",
        running.metrics.retries_outage.get(),
        running.metrics.commit_failures.get()
    );
}

/// Goal: the command line end to end, with real process deaths: `produce` writes the truth,
/// `run` processes killed with SIGKILL lose nothing, a `run` stopped with SIGTERM drains and
/// commits everything, and `verify` passes. Method: 2,000 orders; three `holdfast run`
/// processes SIGKILLed 0 to 150 ms after their first key reached PostgreSQL (a short session
/// timeout so that the dead member's partitions move on quickly), then one run until the
/// group committed every end (its metrics endpoint scraped); five keys deleted from PostgreSQL and Redis flushed, then
/// `holdfast compensate` must re-send them to the running consumer; SIGTERM; `holdfast
/// verify` on the truth file, and `holdfast check` on every process's recorded history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_through_sigkill_and_sigterm() {
    let _exclusive = SERVICES.lock().await;
    let redis_url = env("HOLDFAST_REDIS_URL");
    flushall(&redis_url).await;
    let schema = "hf_test_kafka_cli";
    let store = fresh_store(schema).await;
    let postgres = format!(
        "{} options='-c search_path={schema}'",
        env("HOLDFAST_POSTGRES_URL")
    );
    let topics = topics("cli").await;
    let truth = std::env::temp_dir().join(format!("{}.truth.jsonl", topics.topic));
    let truth_arg = truth.to_str().unwrap().to_owned();
    let history = std::env::temp_dir().join(format!("{}.history", topics.topic));
    let _ = std::fs::remove_dir_all(&history);
    let _scratch = Scratch(vec![truth.clone(), history.clone()]);
    let history_arg = history.to_str().unwrap().to_owned();
    let summary = holdfast(&[
        "produce",
        "--history",
        &history_arg,
        "--topic",
        &topics.topic,
        "--orders",
        "2000",
        "--seed",
        "34",
        "--truth",
        &truth_arg,
    ]);
    assert!(summary.contains("failed 0"), "{summary}");
    // What was sent is the workload of the seed and the order count asked for.
    let asked = Workload::generate(&WorkloadConfig {
        orders: 2000,
        seed: 34,
        ..WorkloadConfig::default()
    })
    .unwrap();
    let published = asked.published();
    let sent = format!(
        "sent {} messages ({} valid events, {} malformed)",
        asked.messages.len(),
        published.valid,
        published.malformed
    );
    assert!(summary.contains(&sent), "`{sent}` not in {summary}");
    let acknowledged = format!(": acknowledged {}, failed 0", asked.messages.len());
    assert!(
        summary.contains(&acknowledged),
        "`{acknowledged}` not in {summary}"
    );
    // The truth file lists every valid event's send, in workload order, each acknowledged.
    let lines = std::fs::read_to_string(&truth).unwrap();
    let written: Vec<serde_json::Value> = (lines.lines())
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let valid = asked.messages.iter().filter(|m| m.event.is_some());
    assert_eq!(written.len(), published.valid);
    for (line, message) in written.iter().zip(valid) {
        assert_eq!(line["acknowledged"], true, "{line}");
        assert_eq!(
            line["payload"].as_str().map(str::as_bytes),
            Some(&message.payload[..])
        );
    }
    let group = unique("group");
    let run_args = [
        "run",
        "--topic",
        &topics.topic,
        "--dlq",
        &topics.dead_letters,
        "--group",
        &group,
        "--postgres",
        &postgres,
        "--commit-ms",
        "200",
        "--set",
        "session.timeout.ms=6000",
        "--history",
        &history_arg,
    ];
    let spawn = |extra: &[&str]| spawn_holdfast(&[&run_args[..], extra].concat());
    for (kill, delay_ms) in [0u64, 25, 60].into_iter().enumerate() {
        let before = store.applications().await.unwrap().len();
        let mut child = spawn(&[]);
        // Kill once this process applied something, after a delay that varies per cycle. The
        // delays stay short: a run applies the whole topic (about 11,000 events) in well under
        // a second, and the last run must still find work left.
        let deadline = Instant::now() + Duration::from_secs(120);
        while store.applications().await.unwrap().len() == before {
            assert!(
                Instant::now() < deadline,
                "run {kill} never applied anything"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let after = store.applications().await.unwrap().len();
        eprintln!(
            "run {kill} SIGKILLed {delay_ms} ms after its first apply; {after} keys applied so far"
        );
    }
    let ends = partition_ends(&topics.topic).await;
    let applied_before = store.applications().await.unwrap().len();
    let metrics_address = free_address();
    let child = spawn(&["--metrics", &metrics_address]);
    wait_caught_up(&topics, &group, &ends, CATCH_UP).await;
    let scraped = scrape(&metrics_address);
    assert!(scraped.starts_with("HTTP/1.1 200 OK"), "{scraped}");
    // The counter says what this process did: it applied exactly the keys the store gained
    // since it started (none, if the last killed run applied everything before it died).
    let applied = metric(&scraped, "holdfast_events_applied_total")
        .unwrap_or_else(|| panic!("no applied counter in {scraped}"));
    let applied_since = store.applications().await.unwrap().len() - applied_before;
    assert_eq!(
        usize::try_from(applied).unwrap(),
        applied_since,
        "{scraped}"
    );
    // Caught up and polling: live and ready; anything else is not found.
    for (path, status) in [
        ("/livez", "200 OK"),
        ("/readyz", "200 OK"),
        ("/nothing", "404 Not Found"),
    ] {
        let response = http_get(&metrics_address, path).unwrap();
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {response}"
        );
    }

    // Lose five orders behind the pipeline's back (their rows, their keys, and the cache that
    // remembers them); the compensator must find their effects missing and re-send the events
    // to the running consumer.
    let (client, connection) = tokio_postgres::connect(&postgres, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let lost = "(SELECT order_id FROM holdfast_orders ORDER BY order_id LIMIT 5)";
    let mut deleted = 0;
    for table in [
        "holdfast_keys",
        "holdfast_bills",
        "holdfast_refunds",
        "holdfast_orders",
    ] {
        let statement = format!("DELETE FROM {table} WHERE order_id IN {lost}");
        deleted += client.execute(statement.as_str(), &[]).await.unwrap();
    }
    assert!(deleted >= 10, "deleted {deleted} rows");
    flushall(&redis_url).await;
    let compensated = holdfast(&[
        "compensate",
        "--topic",
        &topics.topic,
        "--dlq",
        &topics.dead_letters,
        "--main-group",
        &group,
        "--group",
        &unique("compensator"),
        "--postgres",
        &postgres,
        "--delay-ms",
        "500",
        "--check-ms",
        "500",
        "--for-s",
        "20",
        "--history",
        &history_arg,
    ]);
    let resent: u64 = compensated
        .split("re-sent ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no re-send count in {compensated}"));
    assert!(resent >= 5, "{compensated}");
    assert!(compensated.contains("dead-lettered 0"), "{compensated}");
    let stdout = terminate(child);
    let report = holdfast(&[
        "verify",
        "--truth",
        &truth_arg,
        "--postgres",
        &postgres,
        "--dlq",
        &topics.dead_letters,
    ]);
    assert!(report.contains("PASS"), "{report}");
    // Every process's history (the producer's sends, four runs, the compensator's polls and
    // dead letters) judged by the simulator's checker.
    let checked = holdfast(&[
        "check",
        "--history",
        &history_arg,
        "--truth",
        &truth_arg,
        "--topic",
        &topics.topic,
        "--postgres",
        &postgres,
        "--dlq",
        &topics.dead_letters,
    ]);
    assert!(checked.contains("every invariant holds"), "{checked}");
    let members = std::fs::read_dir(&history).unwrap().count();
    assert_eq!(members, 6, "produce, four runs and compensate: {checked}");
    let applied = store.applications().await.unwrap().len();
    assert!(
        applied_before > 0 && applied_before < applied,
        "the killed runs did all or none of the work ({applied_before} of {applied})"
    );
    eprintln!("{summary}{compensated}{stdout}{report}{checked}");
    let _ = std::fs::remove_file(&truth);
    let _ = std::fs::remove_dir_all(&history);
}

//! The `holdfast` binary under chaos on the real broker, Redis and PostgreSQL: 100,000+ events
//! through twenty SIGKILLs and a restart of every service, and three processes sharing one
//! group with one of them killed. Each test ends with `holdfast verify` on the ground truth
//! `holdfast produce` wrote: nothing missing, nothing applied twice, every row the fold of its
//! events. Needs `scripts/services-up` (a missing service is a failure, not a skip).

mod common;

use common::kafka::{
    free_address, holdfast, in_flight_total, metric, owned_partitions, partition_ends, scrape,
    spawn_holdfast, terminate, topics, try_scrape, unique, wait_caught_up, Spawned, Topics,
    PARTITIONS,
};
use common::{env, flushall, fresh_store, services_up, Scratch};
use holdfast::event::OrderEvent;
use holdfast::idempotency::IdempotencyKey;
use holdfast::rng::SplitMix;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The tests of this binary flush and restart the services: one at a time.
static SERVICES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// SIGKILLs of `holdfast run` in the long chaos test.
const KILLS: u64 = 20;

/// A consumer's session timeout: a SIGKILLed member's partitions move on after it.
const SESSION_TIMEOUT: &str = "session.timeout.ms=6000";

/// A fresh schema, topic, truth file and history directory for one test.
struct Setup {
    topics: Topics,
    postgres: String,
    truth: PathBuf,
    history: PathBuf,
    group: String,
    _scratch: Scratch,
}

impl Setup {
    async fn new(name: &str) -> Setup {
        flushall(&env("HOLDFAST_REDIS_URL")).await;
        let schema = format!("hf_test_chaos_{name}");
        fresh_store(&schema).await;
        let topics = topics(name).await;
        let truth = std::env::temp_dir().join(format!("{}.truth.jsonl", topics.topic));
        let history = std::env::temp_dir().join(format!("{}.history", topics.topic));
        let _ = std::fs::remove_dir_all(&history);
        Setup {
            _scratch: Scratch(vec![truth.clone(), history.clone()]),
            history,
            postgres: format!(
                "{} options='-c search_path={schema}'",
                env("HOLDFAST_POSTGRES_URL")
            ),
            truth,
            group: unique("group"),
            topics,
        }
    }

    fn truth_arg(&self) -> &str {
        self.truth.to_str().unwrap()
    }

    /// The arguments of `holdfast produce` for this test's topic and truth file.
    fn produce_args<'a>(&'a self, orders: &'a str, seed: &'a str) -> [&'a str; 11] {
        [
            "produce",
            "--topic",
            &self.topics.topic,
            "--orders",
            orders,
            "--seed",
            seed,
            "--truth",
            self.truth_arg(),
            "--history",
            self.history.to_str().unwrap(),
        ]
    }

    /// Starts `holdfast run` in the test's group, with `extra` flags.
    fn run(&self, extra: &[&str]) -> Spawned {
        let args = [
            "run",
            "--topic",
            &self.topics.topic,
            "--dlq",
            &self.topics.dead_letters,
            "--group",
            &self.group,
            "--postgres",
            &self.postgres,
            "--commit-ms",
            "200",
            "--set",
            SESSION_TIMEOUT,
            "--history",
            self.history.to_str().unwrap(),
        ];
        spawn_holdfast(&[&args[..], extra].concat())
    }

    /// Idempotency keys in the database; `None` while PostgreSQL is unreachable.
    async fn applied(&self) -> Option<u64> {
        let (client, connection) = tokio_postgres::connect(&self.postgres, tokio_postgres::NoTls)
            .await
            .ok()?;
        let driver = tokio::spawn(connection);
        let count = client
            .query_one("SELECT count(*) FROM holdfast_keys", &[])
            .await
            .ok()
            .map(|row| row.get::<_, i64>(0).unsigned_abs());
        drop(client);
        let _ = driver.await;
        count
    }

    /// Waits until the database holds more than `before` keys.
    async fn wait_applied_beyond(&self, before: u64, what: &str) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(now) = self.applied().await.filter(|now| *now > before) {
                return now;
            }
            assert!(Instant::now() < deadline, "{what}: nothing applied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `holdfast verify` on the truth file and the dead-letter topic; panics unless it passes.
    fn verify(&self) -> String {
        let report = holdfast(&[
            "verify",
            "--truth",
            self.truth_arg(),
            "--postgres",
            &self.postgres,
            "--dlq",
            &self.topics.dead_letters,
        ]);
        assert!(report.contains("PASS"), "{report}");
        assert!(report.contains("conservation"), "{report}");
        report
    }

    /// Waits for a `holdfast produce` of 100,000+ events to acknowledge everything, then for
    /// the group to commit every partition end; returns the producer's summary.
    async fn caught_up_after(&self, producer: Spawned) -> String {
        let produced = produced(producer);
        self.caught_up().await;
        produced
    }

    /// Waits for the group to commit every partition end.
    async fn caught_up(&self) {
        let ends = partition_ends(&self.topics.topic).await;
        wait_caught_up(&self.topics, &self.group, &ends, Duration::from_secs(600)).await;
    }

    /// `holdfast check` over the runs' recorded histories; panics unless every invariant
    /// holds. Returns its report.
    fn check(&self) -> String {
        let report = holdfast(&[
            "check",
            "--history",
            self.history.to_str().unwrap(),
            "--truth",
            self.truth_arg(),
            "--topic",
            &self.topics.topic,
            "--postgres",
            &self.postgres,
            "--dlq",
            &self.topics.dead_letters,
        ]);
        assert!(report.contains("every invariant holds"), "{report}");
        let _ = std::fs::remove_dir_all(&self.history);
        report
    }
}

/// Waits for a `holdfast produce` of 100,000+ events to acknowledge everything; returns its
/// summary.
fn produced(producer: Spawned) -> String {
    let produced = producer.into_child().wait_with_output().unwrap();
    let produced = String::from_utf8_lossy(&produced.stdout).into_owned();
    assert!(produced.contains("failed 0"), "{produced}");
    assert!(valid_events(&produced) >= 100_000, "{produced}");
    produced
}

/// Waits (at most 60 s) until the member scraped at `address` has records in flight;
/// returns how many.
async fn in_flight_awaited(address: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scraped = try_scrape(address).unwrap_or_default();
        let in_flight = in_flight_total(&scraped);
        if in_flight > 0 {
            return in_flight;
        }
        assert!(
            Instant::now() < deadline,
            "no records in flight:\n{scraped}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The number of valid events in `produce`'s summary line.
fn valid_events(summary: &str) -> u64 {
    summary
        .split(" valid events")
        .next()
        .and_then(|head| head.rsplit('(').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no valid-event count in {summary}"))
}

fn sigkill(mut child: Spawned) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// What happens to a service while one incarnation of the consumer runs.
#[derive(Clone, Copy, Debug)]
enum Disruption {
    /// Redis forgets every key.
    FlushAll,
    /// Redis restarts, empty (no persistence).
    RestartRedis,
    /// PostgreSQL restarts; committed data is kept.
    RestartPostgres,
    /// The broker restarts; its sqlite storage keeps records and committed offsets.
    RestartKafka,
}

impl Disruption {
    /// The disruption of kill cycle `cycle`, if any.
    fn of_cycle(cycle: u64) -> Option<Disruption> {
        match cycle {
            3 => Some(Disruption::FlushAll),
            7 => Some(Disruption::RestartRedis),
            11 => Some(Disruption::RestartPostgres),
            15 => Some(Disruption::RestartKafka),
            _ => None,
        }
    }

    async fn apply(self) {
        match self {
            Disruption::FlushAll => flushall(&env("HOLDFAST_REDIS_URL")).await,
            Disruption::RestartRedis => services_up(&["--restart", "redis"]).await,
            Disruption::RestartPostgres => services_up(&["--restart", "postgres"]).await,
            Disruption::RestartKafka => services_up(&["--restart", "kafka"]).await,
        }
    }
}

/// The distinct idempotency keys among the acknowledged events of a truth file.
fn distinct_keys(truth: &std::path::Path) -> u64 {
    let text = std::fs::read_to_string(truth).unwrap();
    let keys: BTreeSet<IdempotencyKey> = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line["acknowledged"] == true)
        .map(|line| {
            let payload = line["payload"].as_str().unwrap().as_bytes().to_vec();
            IdempotencyKey::of(&OrderEvent::decode(&payload).unwrap())
        })
        .collect();
    keys.len() as u64
}

/// Goal: exactly-once effect for 100,000+ events (duplicates, disorder, malformed messages)
/// through twenty SIGKILLs of `holdfast run` at random points, with a Redis FLUSHALL, a
/// Redis restart (it comes back empty), a PostgreSQL restart and a broker restart (sqlite
/// storage) each landing while a consumer runs, with progress kept in the commits
/// (`--progress kafka`). Method: [`through_kills`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_events_through_twenty_kills_and_every_restart() {
    through_kills("kafka").await;
}

/// Goal: the same with progress kept in the database (`--progress store`), which the broker
/// here needs to skip finished work after a kill (it keeps no commit metadata).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_events_through_twenty_kills_with_progress_in_the_store() {
    through_kills("store").await;
}

/// Records an incarnation's workers processed (applied, or found to be duplicates), from
/// its metrics.
fn processed(scraped: &str) -> u64 {
    [
        "holdfast_events_applied_total",
        "holdfast_duplicates_cache_total",
        "holdfast_duplicates_batch_total",
        "holdfast_duplicates_store_total",
    ]
    .iter()
    .filter_map(|name| metric(scraped, name))
    .sum()
}

/// `holdfast produce` 17,500 orders; twenty cycles of: start `run --progress {mode}`, wait
/// until it applied something, start disrupting a service on cycles 3/7/11/15, wait until the
/// database holds the cycle's share of the keys (spread over the whole topic, with a seeded
/// random part) and a seeded random 0-100 ms, SIGKILL. Every kill must land while work
/// remains. Then one `run` until the group committed every partition end, SIGTERM, `verify`.
/// Prints the records processed over every incarnation (each scraped just before its kill):
/// beyond the events' own keys, that is work done again.
async fn through_kills(mode: &str) {
    let _exclusive = SERVICES.lock().await;
    let setup = Setup::new(&format!("kills_{mode}")).await;
    let produced = holdfast(&setup.produce_args("17500", "35"));
    assert!(produced.contains("failed 0"), "{produced}");
    let valid = valid_events(&produced);
    assert!(valid >= 100_000, "{produced}");
    let distinct = distinct_keys(&setup.truth);
    let mut rng = SplitMix::new(35);
    let (mut applied, mut processed_total) = (0, 0);
    for cycle in 0..KILLS {
        // Kill points spread over the whole topic: cycle c dies once the database holds about
        // (c + 1) / (KILLS + 2) of the keys, plus a seeded random share and delay.
        let target = distinct * (cycle + 1) / (KILLS + 2) + rng.between(0, distinct / 50);
        let metrics = free_address();
        let child = setup.run(&["--progress", mode, "--metrics", &metrics]);
        let first = setup
            .wait_applied_beyond(applied, &format!("run {cycle}"))
            .await;
        // The disruption runs alongside: the kill may land while a service is still down (a
        // consumer holding prefetched records keeps applying through a broker restart).
        let disruption = Disruption::of_cycle(cycle);
        let disrupting = disruption.map(|disruption| tokio::spawn(disruption.apply()));
        setup
            .wait_applied_beyond(target.max(first), &format!("run {cycle}"))
            .await;
        let delay = rng.between(0, 100);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        processed_total += try_scrape(&metrics).map_or(0, |scraped| processed(&scraped));
        sigkill(child);
        if let Some(disrupting) = disrupting {
            disrupting.await.unwrap();
        }
        applied = setup.wait_applied_beyond(0, "after a kill").await;
        assert!(
            applied < distinct,
            "kill {cycle} came after all the work: it interrupted nothing"
        );
        eprintln!(
            "kill {cycle}: first apply at {first} keys, SIGKILL {delay} ms after passing \
             {target} (disruption: {disruption:?}); {applied} of {distinct} keys applied"
        );
    }
    let ends = partition_ends(&setup.topics.topic).await;
    let metrics = free_address();
    let last = setup.run(&["--progress", mode, "--metrics", &metrics]);
    wait_caught_up(&setup.topics, &setup.group, &ends, Duration::from_secs(600)).await;
    let scraped = scrape(&metrics);
    processed_total += processed(&scraped);
    let stopped = terminate(last);
    let report = setup.verify();
    let checked = setup.check();
    eprintln!(
        "{produced}progress {mode}: {processed_total} records processed over {} runs for \
         {distinct} keys; last run: {} applied, {} dropped by the store as duplicates\n\
         {stopped}{report}{checked}",
        KILLS + 1,
        metric(&scraped, "holdfast_events_applied_total").unwrap_or(0),
        metric(&scraped, "holdfast_duplicates_store_total").unwrap_or(0),
    );
    let _ = std::fs::remove_file(&setup.truth);
}

/// Goal: three `holdfast run` processes in one group share the partitions, and when one is
/// SIGKILLed mid-run the other two take over its partitions without loss. Method: start three
/// runs (each with a metrics endpoint) on an empty topic and wait until together they own all
/// eight partitions, each at least one; produce 100,000+ events while they run; SIGKILL the
/// member owning the most partitions once every member applied something and production is
/// still going; the survivors must end up owning every partition and the group must commit
/// every partition end; SIGTERM both; `verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runs_share_a_group_and_survivors_take_over_a_killed_one() {
    let _exclusive = SERVICES.lock().await;
    let setup = Setup::new("share").await;
    let addresses: Vec<String> = (0..3).map(|_| free_address()).collect();
    let mut members: Vec<Option<Spawned>> = addresses
        .iter()
        .map(|address| Some(setup.run(&["--metrics", address])))
        .collect();
    // Before its endpoint listens, a member owns nothing and applied nothing.
    let owned = |address: &str| {
        try_scrape(address)
            .map(|scraped| owned_partitions(&scraped))
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let shares: Vec<Vec<i32>> = addresses.iter().map(|a| owned(a)).collect();
        let all: BTreeSet<i32> = shares.iter().flatten().copied().collect();
        if shares.iter().all(|share| !share.is_empty()) && all.len() == PARTITIONS as usize {
            eprintln!("partitions shared: {shares:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the three runs never shared the partitions: {shares:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut producer = spawn_holdfast(&setup.produce_args("17500", "36"));
    let applied = |address: &str| {
        try_scrape(address)
            .ok()
            .and_then(|scraped| metric(&scraped, "holdfast_events_applied_total"))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !addresses.iter().all(|a| applied(a).is_some_and(|n| n > 0)) {
        assert!(
            Instant::now() < deadline,
            "not every member applied something"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim = (0..3).max_by_key(|i| owned(&addresses[*i]).len()).unwrap();
    let victim_partitions = owned(&addresses[victim]);
    let victim_applied = applied(&addresses[victim]).unwrap_or(0);
    sigkill(members[victim].take().unwrap());
    assert!(
        producer.try_wait().unwrap().is_none(),
        "production ended before the kill: the survivors would take over nothing new"
    );
    eprintln!(
        "killed member {victim} owning {victim_partitions:?} after it applied {victim_applied}"
    );
    let produced = setup.caught_up_after(producer).await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let taken: BTreeSet<i32> = survivors
        .iter()
        .flat_map(|i| owned(&addresses[*i]))
        .collect();
    assert_eq!(
        taken.len(),
        PARTITIONS as usize,
        "the survivors own {taken:?}"
    );
    let mut stopped = String::new();
    for i in survivors {
        stopped += &terminate(members[i].take().unwrap());
    }
    let report = setup.verify();
    let checked = setup.check();
    eprintln!("{produced}{stopped}{report}{checked}");
    let _ = std::fs::remove_file(&setup.truth);
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(child: &Spawned, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal}");
}

/// Freezes of the zombie test before it gives up on seeing a fenced transaction.
const FREEZES_MAX: usize = 3;

/// Goal: a member frozen past its session timeout and then thawed is a zombie (it still
/// believes it owns its partitions and has polled records queued for its workers); with
/// progress in the store, its transactions after the group moved its partitions are refused
/// as fenced, and nothing is lost or applied twice. Method: 100,000+ events are produced
/// first, so both members work through a backlog (a member that keeps up with a producer is
/// usually idle when frozen, with nothing queued to be fenced); two `run --progress store`
/// processes share the group; once both applied something and the zombie has records in
/// flight, SIGSTOP it until the other owns all eight partitions (past the 6 s session
/// timeout), then SIGCONT it; repeat (at most three times) until the thawed member's
/// metrics count a fenced batch; the group must then commit every partition end; SIGTERM
/// both, `verify` and `check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_member_thawed_after_its_session_is_fenced_by_the_store() {
    let _exclusive = SERVICES.lock().await;
    let setup = Setup::new("zombie").await;
    let produced = produced(spawn_holdfast(&setup.produce_args("17500", "37")));
    let addresses = [free_address(), free_address()];
    let mut members: Vec<Spawned> = addresses
        .iter()
        .map(|address| setup.run(&["--progress", "store", "--metrics", address]))
        .collect();
    let scraped = |address: &str| try_scrape(address).unwrap_or_default();
    let counter = |address: &str, name: &str| metric(&scraped(address), name).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !addresses
        .iter()
        .all(|a| counter(a, "holdfast_events_applied_total") > 0)
    {
        assert!(Instant::now() < deadline, "not both members applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (zombie, survivor) = (&addresses[0], &addresses[1]);
    let mut freezes = 0;
    while counter(zombie, "holdfast_batches_fenced_total") == 0 {
        assert!(
            freezes < FREEZES_MAX,
            "{freezes} freezes and no fenced transaction:\n{}",
            scraped(zombie)
        );
        freezes += 1;
        let in_flight = in_flight_awaited(zombie).await;
        signal(&members[0], "STOP");
        let deadline = Instant::now() + Duration::from_secs(60);
        while owned_partitions(&scraped(survivor)).len() < PARTITIONS as usize {
            assert!(Instant::now() < deadline, "the survivor never took over");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        signal(&members[0], "CONT");
        // The thawed member finishes what it had queued, then rejoins.
        tokio::time::sleep(Duration::from_secs(3)).await;
        eprintln!(
            "freeze {freezes} with {in_flight} records in flight: the thawed member counts {} \
             fenced batches",
            counter(zombie, "holdfast_batches_fenced_total")
        );
    }
    setup.caught_up().await;
    let fenced = counter(zombie, "holdfast_batches_fenced_total");
    let mut stopped = String::new();
    for member in members.drain(..) {
        stopped += &terminate(member);
    }
    let report = setup.verify();
    let checked = setup.check();
    eprintln!(
        "{produced}{fenced} fenced batches after {freezes} freezes\n{stopped}{report}{checked}"
    );
    let _ = std::fs::remove_file(&setup.truth);
}

//! Runs one seed: builds the world, produces the workload, runs the pipeline's consumers on
//! their own nodes, injects faults (safety phase), heals everything and waits for convergence
//! (liveness phase), then hands the history and the final state to the checker.

use crate::checker::{check, Convergence, Observed, RunVerdict};
use crate::history::{History, Step};
use crate::observe::{
    CrashProbe, DeadLetterSink, DeadLetters, Observers, RecordingLog, RecordingStore,
};
use crate::params::RunParams;
use crate::scenario::Scenario;
use crate::world::{Acks, FlushPolicy, ServiceNode, SimPublisher, World, WorldConfig};
use holdfast::offsets::{CommitPolicy, Limits};
use holdfast::pipeline::{
    Compensator, CompensatorConfig, Consumer, ConsumerConfig, Metrics, Services, ShutdownTrigger,
};
use holdfast::ports::{Delivery, FaultPoint, OutboundMessage, PortError, Publisher};
use holdfast::rng::SplitMix;
use holdfast::testkit::planted::{PlantedBug, PlantedLog, PlantedStore};
use holdfast::testkit::policies::LiteralStep6;
use holdfast::verify::{reference, Fact, GroundTruth, StoreView};
use holdfast::workload::{Workload, WorkloadConfig};
use madsim::runtime::Handle;
use madsim::task::NodeId;
use madsim::time::{sleep, Instant};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

const GROUP: &str = "holdfast";
const TOPIC: &str = "orders";
const COMPENSATOR_GROUP: &str = "holdfast-compensator";
const DEAD_LETTER_TOPIC: &str = "orders.dlq";

/// Everything one run produced.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub params: RunParams,
    pub verdict: RunVerdict,
    /// Hash of the full trace: equal for equal runs.
    pub fingerprint: u64,
    /// The simulated cluster's configuration (acks, replication, flush, ...).
    pub world: String,
    /// Faults and model events (elections, restarts, heals), in order, with virtual time.
    pub faults: Vec<String>,
    /// Faults the harness injected (each counted once, not its restart or heal).
    pub faults_injected: usize,
    pub virtual_ms: u64,
    /// Messages the producer sent (including malformed and repeated ones).
    pub sent: usize,
    /// Steps in the history.
    pub steps: usize,
    /// Polls of an offset already polled before (redeliveries after crashes and rebalances).
    pub redeliveries: usize,
    /// Records the compensator re-published (they carry its attempts header).
    pub resent: usize,
    /// The whole trace, one line per step.
    pub trace: String,
    /// How often the run took each reach point (see `crate::reach`).
    pub reached: BTreeMap<String, u64>,
}

impl RunOutcome {
    /// Acknowledged events lost (neither applied nor dead-lettered).
    pub fn lost(&self) -> usize {
        self.verdict.report.missing.len()
    }
}

/// Runs one seed to completion in its own madsim runtime.
pub fn run(params: &RunParams) -> RunOutcome {
    crate::reach::install();
    // A panicked run on this thread may have left counts behind.
    crate::reach::take();
    let runtime =
        madsim::runtime::Runtime::with_seed_and_config(params.seed, madsim::Config::default());
    let params = params.clone();
    let mut outcome = runtime.block_on(simulate(params));
    outcome.reached = crate::reach::take();
    outcome
}

/// The world configuration of a scenario.
pub fn world_config(params: &RunParams) -> WorldConfig {
    let mut config = WorldConfig {
        partitions: params.partitions,
        flush: FlushPolicy::Interval(Duration::from_millis(200)),
        schema: PlantedBug::schema(params.scenario.planted()),
        redis_max_keys: params.redis_keys_max,
        // A quarter of the seeds run against a coordinator that keeps no commit metadata
        // (nisshi's behaviour), from a stream of their own so that older seeds keep the rest.
        commit_metadata_kept: !SplitMix::new(params.seed ^ 0x6e69_7373_6869_6d64).chance(0.25),
        ..WorldConfig::default()
    };
    match params.scenario {
        Scenario::FireAndForget => {
            config.acks = Acks::Zero;
            config.producer_retries = 0;
        }
        Scenario::AcksOneLeaderCrash => {
            config.acks = Acks::One;
            config.min_insync_replicas = 1;
            config.flush = FlushPolicy::Never;
        }
        Scenario::AllReplicasCrashUnflushed => config.flush = FlushPolicy::Never,
        Scenario::AllReplicasCrashFlushed => config.flush = FlushPolicy::EveryAppend,
        _ => {}
    }
    config
}

/// One line naming every knob of the simulated cluster.
pub fn describe_world(config: &WorldConfig) -> String {
    format!(
        "world: brokers={} rf={} min_isr={} acks={:?} flush={:?} unclean_election={} idempotent_producer={} producer_retries={} redis_persistent={} redis_keys_max={:?} session_timeout={:?} latency={:?}..{:?} commit_metadata_kept={}",
        config.brokers,
        config.replication_factor,
        config.min_insync_replicas,
        config.acks,
        config.flush,
        config.unclean_election,
        config.idempotent_producer,
        config.producer_retries,
        config.redis_persistent,
        config.redis_max_keys,
        config.session_timeout,
        config.latency.0,
        config.latency.1,
        config.commit_metadata_kept
    )
}

/// The consumer's tracker limits, small enough to bind: in half of the seeds the span limit
/// (as wide as the in-flight limit, so a stuck record stops tracking first by span), in the
/// other half the in-flight limit; and in half of the seeds a metadata budget too small for
/// most finished sets.
fn consumer_limits(params: &RunParams) -> Limits {
    let in_flight_max = params.batch_size.max(16) * 4;
    let mut rng = SplitMix::new(params.seed ^ 0x6d65_7461_6461_7461);
    let small_budget = rng.chance(0.5);
    let span_binds = rng.chance(0.5);
    Limits {
        in_flight_max,
        span_max: in_flight_max as u64 * if span_binds { 1 } else { 4 },
        metadata_budget_bytes: if small_budget { 16 } else { 4096 },
    }
}

fn consumer_config(params: &RunParams, index: usize, incarnation: u32) -> ConsumerConfig {
    ConsumerConfig {
        batch_size: params.batch_size,
        concurrency: params.concurrency,
        limits: consumer_limits(params),
        commit_interval: Duration::from_millis(100),
        poll_timeout: Duration::from_millis(50),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(500),
        // Short enough that outages and slow batches trip it: reporting a stall changes nothing.
        stall_after: Duration::from_secs(2),
        revoke_grace: Duration::from_millis(200),
        drain_timeout: Duration::from_secs(1),
        jitter_seed: params.seed ^ ((index as u64) << 32) ^ u64::from(incarnation),
        ..ConsumerConfig::default()
    }
}

/// The consumer's commit policy: the seed's literal step 6 in its scenario, a planted bug's,
/// or holdfast's watermark.
fn commit_policy(params: &RunParams) -> Box<dyn CommitPolicy> {
    if params.scenario == Scenario::LiteralCommitRule {
        Box::<LiteralStep6>::default()
    } else {
        PlantedBug::commit_policy(params.scenario.planted())
    }
}

/// One run's cluster: the world, the nodes the harness runs on it, and what it observes.
struct Cluster {
    world: World,
    observers: Observers,
    truth: Arc<Mutex<GroundTruth>>,
    producer_done: Arc<AtomicBool>,
    sent: Arc<AtomicU32>,
    /// Every consumer node and the compensator's, with their names.
    consumers: Vec<(NodeId, String)>,
    /// Crashes that probes asked for.
    crash_requests: mpsc::UnboundedReceiver<(usize, FaultPoint)>,
    /// The harness's fault stream.
    rng: SplitMix,
}

async fn simulate(params: RunParams) -> RunOutcome {
    let start = Instant::now();
    let mut cluster = Cluster::start(&params, start).await;
    cluster.safety_phase(&params, start).await;
    let convergence = cluster.liveness_phase(&params).await;
    let virtual_ms = crate::observe::now_ms(start);
    cluster.harvest(params, convergence, virtual_ms)
}

impl Cluster {
    /// Starts the world, the producer, the consumers and (if the scenario has one) the
    /// compensator.
    async fn start(params: &RunParams, start: Instant) -> Cluster {
        let config = world_config(params);
        if !config.commit_metadata_kept {
            holdfast::reach!("fault.metadata_dropped");
        }
        let world = World::start(config).await;
        let observers = Observers {
            history: History::new(),
            start,
            world: world.clone(),
            dead_letters: DeadLetters::default(),
            online: Arc::new(Mutex::new(Vec::new())),
            checked: Arc::new(Mutex::new(Default::default())),
            injected: Arc::new(AtomicU32::new(0)),
        };
        let truth = Arc::new(Mutex::new(GroundTruth::default()));
        let producer_done = Arc::new(AtomicBool::new(false));
        let sent = spawn_producer(params, &world, &observers, &truth, &producer_done);
        let (crash_sender, crash_requests) = mpsc::unbounded_channel();
        let mut consumers: Vec<(NodeId, String)> = (0..params.consumers)
            .map(|index| {
                let node = spawn_consumer(params, index, &observers, crash_sender.clone());
                (node, format!("consumer-{index}"))
            })
            .collect();
        if params.compensator {
            // The compensator crashes like any consumer: it must be crash-safe too.
            consumers.push((spawn_compensator(&observers), "compensator".into()));
        }
        Cluster {
            world,
            observers,
            truth,
            producer_done,
            sent,
            consumers,
            crash_requests,
            rng: SplitMix::new(params.seed.rotate_left(17)),
        }
    }

    /// Faults at random moments until `safety_ms`, and the crashes probes ask for.
    async fn safety_phase(&mut self, params: &RunParams, start: Instant) {
        // The faults added later draw from their own stream, so older seeds keep their faults.
        let mut extended = SplitMix::new(params.seed ^ 0x0066_6175_6c74_7332);
        let mut schedule: Vec<u64> = (0..params.faults)
            .map(|_| self.rng.between(200, params.safety_ms))
            .collect();
        schedule.sort_unstable();
        let mut next = schedule.into_iter().peekable();
        while crate::observe::now_ms(start) < params.safety_ms {
            self.serve_crash_requests().await;
            if next
                .peek()
                .is_some_and(|due| *due <= crate::observe::now_ms(start))
            {
                next.next();
                let (world, observers) = (&self.world, &self.observers);
                if params.extended_faults && extended.chance(0.3) && standard_faults(params) {
                    inject_extended_fault(world, observers, &self.consumers, &mut extended).await;
                } else {
                    inject_fault(params, world, observers, &self.consumers, &mut self.rng).await;
                }
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Heals everything, then waits for convergence. A run that stops progressing is stuck
    /// after STALL_BOUND_MS; one still progressing has until its cap.
    async fn liveness_phase(&mut self, params: &RunParams) -> Convergence {
        heal(&self.world, &self.observers);
        let healed = Instant::now();
        let mut progress = Progress::of(&self.world, &self.truth, params);
        let mut progressed_at = healed;
        loop {
            self.serve_crash_requests().await;
            if self.producer_done.load(Ordering::SeqCst)
                && finished(&self.world, &self.truth, &self.observers, params)
            {
                return Convergence::Converged;
            }
            let now = Instant::now();
            let latest = Progress::of(&self.world, &self.truth, params);
            if latest != progress {
                (progress, progressed_at) = (latest, now);
            } else if now - progressed_at >= Duration::from_millis(STALL_BOUND_MS) {
                return Convergence::Stuck {
                    quiet_ms: millis(now - progressed_at),
                };
            }
            if now - healed >= Duration::from_millis(params.liveness_ms) {
                return Convergence::Slow {
                    cap_ms: params.liveness_ms,
                };
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    async fn serve_crash_requests(&mut self) {
        serve_crash_requests(
            &mut self.crash_requests,
            &self.observers,
            &self.consumers,
            &mut self.rng,
        )
        .await;
    }

    /// The run is over: hands the history, the ground truth and the final state to the
    /// checker, and counts what the report shows.
    fn harvest(self, params: RunParams, convergence: Convergence, virtual_ms: u64) -> RunOutcome {
        let world = &self.world;
        record_accepted_commits(world, &self.observers.history);
        // Nothing records any more, so the checker gets the history and the ground truth
        // without copies.
        let truth = self
            .truth
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        let observed = Observed {
            history: self.observers.history.take(),
            truth,
            store: StoreView {
                ledger: world.store_ledger(),
                rows: world.store_rows(),
            },
            dead_letters: self.observers.dead_letters.payloads(),
            logs: (0..params.partitions)
                .map(|p| (p, world.partition_log(p)))
                .collect(),
            online: self
                .observers
                .online
                .lock()
                .map(|o| o.clone())
                .unwrap_or_default(),
            convergence,
        };
        let verdict = check(&observed);
        let trace = crate::history::render(&observed.history, usize::MAX);
        RunOutcome {
            fingerprint: crate::history::digest(trace.as_bytes()),
            steps: observed.history.len(),
            trace,
            verdict,
            faults: merged_faults(world, &observed),
            virtual_ms,
            sent: self.sent.load(Ordering::SeqCst) as usize,
            faults_injected: self.observers.injected.load(Ordering::SeqCst) as usize,
            redeliveries: redeliveries(&observed),
            resent: resent(&observed),
            world: describe_world(&world_config(&params)),
            params,
            reached: BTreeMap::new(),
        }
    }
}

/// What the coordinator really stored, commit by commit (an asynchronous commit that it
/// refused never counts), into the history.
fn record_accepted_commits(world: &World, history: &History) {
    for accepted in world.commit_history(GROUP) {
        history.push(
            millis(accepted.at),
            Step::Committed {
                member: format!(
                    "coordinator(member {} gen {})",
                    accepted.member, accepted.generation
                ),
                partition: accepted.partition,
                offset: accepted.offset,
            },
        );
    }
}

/// Polls of an offset already polled before.
fn redeliveries(observed: &Observed) -> usize {
    let mut seen = std::collections::HashSet::new();
    observed
        .history
        .iter()
        .filter(|(_, step)| {
            matches!(step, Step::Polled { partition, offset, .. } if !seen.insert((*partition, *offset)))
        })
        .count()
}

/// Records the compensator re-published (they carry its attempts header).
fn resent(observed: &Observed) -> usize {
    observed
        .logs
        .values()
        .flatten()
        .filter(|(_, record)| {
            holdfast::pipeline::dead_letter::header(
                &record.headers,
                holdfast::pipeline::dead_letter::HEADER_ATTEMPTS,
            )
            .is_some()
        })
        .count()
}

/// The world's own fault log and the harness's faults, merged in time order.
fn merged_faults(world: &World, observed: &Observed) -> Vec<String> {
    let mut faults: Vec<(f64, String)> = world.timed_faults();
    faults.extend(observed.history.iter().filter_map(|(at, step)| match step {
        Step::Fault { description } => {
            Some((*at as f64, format!("t={:>9.3}ms {description}", *at as f64)))
        }
        _ => None,
    }));
    faults.sort_by(|a, b| a.0.total_cmp(&b.0));
    faults.into_iter().map(|(_, line)| line).collect()
}

/// Every acknowledged event is applied or dead-lettered (judged by the checker's model).
fn effects_done(world: &World, truth: &Arc<Mutex<GroundTruth>>, observers: &Observers) -> bool {
    let dead: BTreeSet<Fact> = observers
        .dead_letters
        .payloads()
        .iter()
        .filter_map(|payload| reference::read_payload(payload))
        .collect();
    truth.lock().is_ok_and(|truth| {
        truth
            .acknowledged
            .iter()
            .all(|fact| world.store_reflects(fact) || dead.contains(fact))
    })
}

/// How long the healed system may go without progress while work is pending: well past
/// every session timeout, retry backoff and compensator delay of the simulated configuration.
pub const STALL_BOUND_MS: u64 = 20_000;

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What moves while the system makes progress: the committed offsets of both groups and the
/// count of acknowledged sends.
#[derive(Debug, PartialEq, Eq)]
struct Progress {
    committed: Vec<i64>,
    acknowledged: usize,
}

impl Progress {
    fn of(world: &World, truth: &Arc<Mutex<GroundTruth>>, params: &RunParams) -> Progress {
        let mut committed = Vec::new();
        for group in [GROUP, COMPENSATOR_GROUP] {
            let offsets = world.committed(group);
            committed.extend(
                (0..params.partitions)
                    .map(|partition| offsets.get(&partition).map_or(-1, |commit| commit.offset)),
            );
        }
        let acknowledged = truth.lock().map_or(0, |truth| truth.acknowledged.len());
        Progress {
            committed,
            acknowledged,
        }
    }
}

/// Converged: the consumers finished the log (and the compensator resolved all of it). The
/// literal commit rule commits an acked record's own offset, so its committed offsets never
/// reach the log end: for it, convergence is judged on effects alone.
fn finished(
    world: &World,
    truth: &Arc<Mutex<GroundTruth>>,
    observers: &Observers,
    params: &RunParams,
) -> bool {
    if params.scenario == Scenario::LiteralCommitRule {
        effects_done(world, truth, observers)
    } else {
        caught_up(world, GROUP, params.partitions)
            && (!params.compensator || caught_up(world, COMPENSATOR_GROUP, params.partitions))
    }
}

/// Every partition's committed offset reached the end of its log.
fn caught_up(world: &World, group: &str, partitions: i32) -> bool {
    let committed = world.committed(group);
    (0..partitions).all(|partition| {
        let end = world.log_end(partition);
        end == 0 || committed.get(&partition).is_some_and(|c| c.offset >= end)
    })
}

/// The producer: sends the workload with callbacks, retrying failed sends, and records what
/// it was told.
fn spawn_producer(
    params: &RunParams,
    world: &World,
    observers: &Observers,
    truth: &Arc<Mutex<GroundTruth>>,
    done: &Arc<AtomicBool>,
) -> Arc<AtomicU32> {
    let workload = Workload::generate(&WorkloadConfig {
        seed: params.seed,
        orders: params.orders,
        duplicate_ratio: f64::from(params.duplicate_percent) / 100.0,
        malformed_ratio: 0.01,
        ..WorkloadConfig::default()
    })
    .unwrap_or_else(|error| panic!("derived workload is invalid: {error}"));
    let sent = Arc::new(AtomicU32::new(0));
    let node = world.client_node("producer");
    let (world, observers, truth, done, sent_counter) = (
        world.clone(),
        observers.clone(),
        truth.clone(),
        done.clone(),
        sent.clone(),
    );
    // Traffic comes in bursts (a burst keeps many records of a partition in flight at once),
    // spread over the first half of the safety phase.
    let messages = workload.messages.len() as u64;
    let mut pacing = SplitMix::new(params.seed ^ 0x7072_6f64);
    let burst_max = pacing.between(1, 64);
    let bursts = messages.div_ceil(burst_max).max(1);
    let pause_ms = (params.safety_ms / 2) / bursts;
    node.spawn(async move {
        let publisher = Arc::new(world.publisher().await);
        let mut messages = workload.messages.into_iter().peekable();
        let mut sends = Vec::new();
        while messages.peek().is_some() {
            // One burst is sent concurrently, as an application hands records to its producer
            // client: per-partition order is kept by the client, which batches what queues up
            // while a request is in flight. The application does not wait for the callbacks
            // before its next burst; each callback records what the producer was told.
            let burst: Vec<_> = messages
                .by_ref()
                .take(pacing.between(1, burst_max) as usize)
                .collect();
            for message in burst {
                let outbound = OutboundMessage {
                    topic: TOPIC.into(),
                    key: message.key.clone(),
                    payload: message.payload.clone(),
                    headers: vec![],
                };
                let publisher = Arc::clone(&publisher);
                let (observers, truth, sent_counter) =
                    (observers.clone(), truth.clone(), sent_counter.clone());
                sends.push(madsim::task::spawn(async move {
                    let mut acknowledged = false;
                    for _attempt in 0..3 {
                        if publisher.publish(outbound.clone()).await.is_ok() {
                            acknowledged = true;
                            break;
                        }
                        sleep(Duration::from_millis(50)).await;
                    }
                    sent_counter.fetch_add(1, Ordering::SeqCst);
                    if let Some(event) = &message.event {
                        if let Ok(mut truth) = truth.lock() {
                            truth.record(event, acknowledged);
                        }
                        observers.history.push(
                            observers.at(),
                            Step::Sent {
                                event_id: event.event_id.clone(),
                                acknowledged,
                            },
                        );
                    }
                }));
            }
            sleep(Duration::from_millis(pause_ms)).await;
        }
        for send in sends {
            let _ = send.await;
        }
        done.store(true, Ordering::SeqCst);
    });
    sent
}

/// The compensator node: the pipeline's own `Compensator` in its own group, re-sending to the
/// topic what the main group committed past without its effect reaching the store.
fn spawn_compensator(observers: &Observers) -> NodeId {
    let observers = observers.clone();
    let node = Handle::current()
        .create_node()
        .name("compensator")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 8, 100)))
        .init(move || {
            let observers = observers.clone();
            async move {
                let world = observers.world.clone();
                let publisher = Routed {
                    topic: world.publisher().await,
                    dead_letters: DeadLetterSink {
                        letters: observers.dead_letters.clone(),
                        observers: observers.clone(),
                    },
                };
                let config = CompensatorConfig {
                    main_group: GROUP.into(),
                    topic: TOPIC.into(),
                    dead_letter_topic: DEAD_LETTER_TOPIC.into(),
                    delay: Duration::from_secs(2),
                    check_interval: Duration::from_millis(500),
                    attempts_max: 3,
                    batch_size: 100,
                    poll_timeout: Duration::from_millis(50),
                    // Small enough that larger seeds fill it while records wait out the
                    // delay, so the full-tracker path (hold and pause) is taken.
                    limits: Limits {
                        in_flight_max: 256,
                        ..Limits::default()
                    },
                };
                let compensator = Compensator::new(
                    config,
                    world.log(COMPENSATOR_GROUP).await,
                    world.group_offsets().await,
                    world.store().await,
                    publisher,
                );
                let (_trigger, shutdown) = ShutdownTrigger::new();
                compensator.run(shutdown).await;
            }
        })
        .build();
    node.id()
}

/// Sends dead letters to the dead-letter sink and everything else to the topic.
struct Routed {
    topic: SimPublisher,
    dead_letters: DeadLetterSink,
}

impl Publisher for Routed {
    async fn publish(&self, message: OutboundMessage) -> Result<Delivery, PortError> {
        if message.topic == DEAD_LETTER_TOPIC {
            self.dead_letters.publish(message).await
        } else {
            self.topic.publish(message).await
        }
    }
}

/// One consumer node; every restart starts a new incarnation of the same pipeline code.
fn spawn_consumer(
    params: &RunParams,
    index: usize,
    observers: &Observers,
    crashes: mpsc::UnboundedSender<(usize, FaultPoint)>,
) -> NodeId {
    let incarnations = Arc::new(AtomicU32::new(0));
    let probe_hits = Arc::new(AtomicU32::new(0));
    let fired = Arc::new(AtomicBool::new(false));
    let (params, observers) = (params.clone(), observers.clone());
    let node = Handle::current()
        .create_node()
        .name(format!("consumer-{index}"))
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 8, 1 + index as u8)))
        .init(move || {
            let incarnation = incarnations.fetch_add(1, Ordering::SeqCst) + 1;
            let (params, observers, crashes) = (params.clone(), observers.clone(), crashes.clone());
            let (probe_hits, fired) = (probe_hits.clone(), fired.clone());
            async move {
                let world = observers.world.clone();
                let planted = params.scenario.planted();
                let log = RecordingLog {
                    inner: world.log(GROUP).await,
                    member: format!("c{index}#{incarnation}"),
                    observers: observers.clone(),
                };
                let cache = world.cache().await;
                let config = consumer_config(&params, index, incarnation);
                let store = RecordingStore {
                    inner: world.store().await,
                    member: format!("c{index}#{incarnation}"),
                    observers: observers.clone(),
                };
                let services = Services {
                    cache: cache.clone(),
                    store: PlantedStore::new(store, cache, config.cache_ttl, planted),
                    dead_letters: DeadLetterSink {
                        letters: observers.dead_letters.clone(),
                        observers: observers.clone(),
                    },
                    probe: CrashProbe {
                        plan: params.crash_at,
                        slow_ms: params.slow_worker_ms,
                        hits: probe_hits,
                        fired,
                        consumer: index,
                        crashes,
                    },
                };
                let log = PlantedLog::new(log, planted);
                let metrics = Arc::new(Metrics::new());
                let policy = commit_policy(&params);
                let consumer = match Consumer::with_policy(config, log, services, metrics, policy) {
                    Ok(consumer) => consumer,
                    Err(error) => panic!("simulated consumer configuration refused: {error}"),
                };
                let (_trigger, shutdown) = ShutdownTrigger::new();
                consumer.run(shutdown).await;
            }
        })
        .build();
    node.id()
}

/// Carries out the crashes that probes asked for (a probe freezes its node at its fault point
/// and asks; the supervisor kills and later restarts it).
async fn serve_crash_requests(
    requests: &mut mpsc::UnboundedReceiver<(usize, FaultPoint)>,
    observers: &Observers,
    consumers: &[(NodeId, String)],
    rng: &mut SplitMix,
) {
    while let Ok((consumer, point)) = requests.try_recv() {
        observers.injected.fetch_add(1, Ordering::SeqCst);
        holdfast::reach!("fault.crash_at_point");
        let (node, name) = &consumers[consumer];
        crash_consumer(
            observers,
            *node,
            &format!("{name} crashed at {point:?}"),
            rng,
        )
        .await;
    }
}

async fn crash_consumer(observers: &Observers, node: NodeId, what: &str, rng: &mut SplitMix) {
    holdfast::reach!("fault.consumer_crash");
    observers.history.push(
        observers.at(),
        Step::Fault {
            description: format!("kill {what}"),
        },
    );
    Handle::current().kill(node);
    sleep(Duration::from_millis(rng.between(10, 1500))).await;
    Handle::current().restart(node);
    observers.history.push(
        observers.at(),
        Step::Fault {
            description: format!("restart {what}"),
        },
    );
}

/// Whether the scenario runs the standard mix of faults.
fn standard_faults(params: &RunParams) -> bool {
    matches!(
        params.scenario,
        Scenario::Standard | Scenario::LiteralCommitRule
    )
}

/// A fault added after the regression seeds were recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtendedFault {
    /// A member cut off from the coordinator past its session while it still reaches the
    /// brokers and the store: a zombie that keeps writing after its partitions moved.
    ZombieMember,
    /// A member frozen past its session timeout, then resumed.
    MemberPause,
    /// The dead-letter topic refusing every publish for a while.
    DeadLettersDown,
    /// The group coordinator fails over: every member is forgotten at once and must rejoin.
    CoordinatorFailover,
}

/// The added faults the standard mix injects, each as likely. The controller's crash and
/// cut-off are not among them: a restarted or isolated controller declares live brokers dead
/// and shrinks ISRs in ways the partition model does not yet follow faithfully.
pub const EXTENDED_FAULTS: [ExtendedFault; 4] = [
    ExtendedFault::ZombieMember,
    ExtendedFault::MemberPause,
    ExtendedFault::DeadLettersDown,
    ExtendedFault::CoordinatorFailover,
];

/// One of the added faults, from their own stream.
async fn inject_extended_fault(
    world: &World,
    observers: &Observers,
    consumers: &[(NodeId, String)],
    rng: &mut SplitMix,
) {
    observers.injected.fetch_add(1, Ordering::SeqCst);
    let session_ms = u64::try_from(world.config().session_timeout.as_millis()).unwrap_or(1000);
    let outlast_session = Duration::from_millis(session_ms * 2 + rng.between(0, 1000));
    let (node, name) = &consumers[rng.below(consumers.len())];
    let fault = |description: String| {
        observers
            .history
            .push(observers.at(), Step::Fault { description });
    };
    match EXTENDED_FAULTS[rng.below(EXTENDED_FAULTS.len())] {
        ExtendedFault::ZombieMember => {
            holdfast::reach!("fault.zombie_member");
            let controller = world.id(ServiceNode::Controller);
            fault(format!(
                "cut {name} off from the coordinator for {outlast_session:?}"
            ));
            world.clog_link(*node, controller, true);
            world.clog_link(controller, *node, true);
            sleep(outlast_session).await;
            world.clog_link(*node, controller, false);
            world.clog_link(controller, *node, false);
        }
        ExtendedFault::MemberPause => {
            holdfast::reach!("fault.member_pause");
            fault(format!("pause {name} for {outlast_session:?}"));
            Handle::current().pause(*node);
            sleep(outlast_session).await;
            Handle::current().resume(*node);
            fault(format!("resume {name}"));
        }
        ExtendedFault::CoordinatorFailover => {
            holdfast::reach!("fault.coordinator_failover");
            world.coordinator_failover();
        }
        ExtendedFault::DeadLettersDown => {
            holdfast::reach!("fault.dead_letters_down");
            let wait = Duration::from_millis(rng.between(100, 3000));
            fault(format!("dead-letter topic down for {wait:?}"));
            observers.dead_letters.set_down(true);
            sleep(wait).await;
            observers.dead_letters.set_down(false);
        }
    }
}

/// One random fault allowed by the scenario.
async fn inject_fault(
    params: &RunParams,
    world: &World,
    observers: &Observers,
    consumers: &[(NodeId, String)],
    rng: &mut SplitMix,
) {
    let brokers = world.config().brokers;
    observers.injected.fetch_add(1, Ordering::SeqCst);
    match params.scenario.seeded_as() {
        Scenario::AllReplicasCrashUnflushed | Scenario::AllReplicasCrashFlushed => {
            holdfast::reach!("fault.all_brokers_crash");
            for broker in 0..brokers {
                world.kill(ServiceNode::Broker(broker));
            }
            sleep(Duration::from_millis(rng.between(50, 500))).await;
            for broker in 0..brokers {
                world.restart(ServiceNode::Broker(broker));
            }
        }
        Scenario::FireAndForget | Scenario::AcksOneLeaderCrash => {
            let broker = leader_of_busiest(world, params.partitions).unwrap_or(rng.below(brokers));
            holdfast::reach!("fault.broker_crash");
            world.kill(ServiceNode::Broker(broker));
            sleep(Duration::from_millis(rng.between(100, 2000))).await;
            world.restart(ServiceNode::Broker(broker));
        }
        Scenario::AcksAllSingleFailure => {
            let broker = leader_of_busiest(world, params.partitions).unwrap_or(rng.below(brokers));
            single_broker_failure(world, observers, broker, rng).await;
        }
        Scenario::AutoCommit | Scenario::CompensatedAutoCommit => {
            let consumer = rng.below(consumers.len());
            {
                let (node, name) = &consumers[consumer];
                crash_consumer(observers, *node, name, rng).await;
            }
        }
        // A planted bug meets the standard mix: it must be caught by the faults a real bug of
        // its kind would meet (a store failure after an early cache write, say).
        Scenario::Standard
        | Scenario::LiteralCommitRule
        | Scenario::Planted(_)
        | Scenario::Control(_) => match rng.below(6) {
            0 | 1 => {
                let consumer = rng.below(consumers.len());
                {
                    let (node, name) = &consumers[consumer];
                    crash_consumer(observers, *node, name, rng).await;
                }
            }
            2 => {
                let broker = rng.below(brokers);
                single_broker_failure(world, observers, broker, rng).await;
            }
            3 => {
                if rng.chance(0.5) {
                    holdfast::reach!("fault.redis_restart");
                    world.restart(ServiceNode::Redis);
                } else {
                    holdfast::reach!("fault.redis_flushall");
                    world.redis_flushall();
                }
            }
            4 => {
                holdfast::reach!("fault.postgres_crash");
                world.kill(ServiceNode::Postgres);
                sleep(Duration::from_millis(rng.between(50, 1000))).await;
                world.restart(ServiceNode::Postgres);
            }
            _ => {
                let node = match rng.below(3) {
                    0 => ServiceNode::Redis,
                    1 => ServiceNode::Postgres,
                    _ => ServiceNode::Broker(rng.below(brokers)),
                };
                holdfast::reach!("fault.clog");
                world.clog(node, true);
                sleep(Duration::from_millis(rng.between(50, 1500))).await;
                world.clog(node, false);
            }
        },
    }
}

/// Crashes one broker, but only once the previous failure has fully healed: every partition
/// has its whole replica set back in sync. A restarted broker lost its page cache, so until
/// it has caught up it still counts as failed; crashing another broker before that would be a
/// double failure, which acks=all with min.insync.replicas=2 does not promise to survive.
async fn single_broker_failure(
    world: &World,
    observers: &Observers,
    broker: usize,
    rng: &mut SplitMix,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fully_replicated(world) {
        if Instant::now() >= deadline {
            observers.history.push(
                observers.at(),
                Step::Fault {
                    description: format!(
                        "skip crash of broker {broker}: replicas still catching up"
                    ),
                },
            );
            // Nothing was injected after all.
            observers.injected.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        sleep(Duration::from_millis(20)).await;
    }
    holdfast::reach!("fault.broker_crash");
    world.kill(ServiceNode::Broker(broker));
    sleep(Duration::from_millis(rng.between(100, 2000))).await;
    world.restart(ServiceNode::Broker(broker));
}

/// Every partition has a leader and its full replica set in sync.
fn fully_replicated(world: &World) -> bool {
    world
        .partition_table()
        .iter()
        .all(|state| state.leader.is_some() && state.isr.len() == state.replicas.len())
}

/// The broker leading the most partitions, the one whose crash hurts most.
fn leader_of_busiest(world: &World, partitions: i32) -> Option<usize> {
    let table = world.partition_table();
    let mut counts = vec![0usize; world.config().brokers];
    for state in table.iter().take(partitions.max(0) as usize) {
        if let Some(leader) = state.leader {
            counts[leader] += 1;
        }
    }
    counts
        .iter()
        .enumerate()
        .max_by_key(|(_, count)| **count)
        .map(|(broker, _)| broker)
}

/// Ends every fault: unclog every service node. Killed nodes were already restarted by the
/// fault that killed them.
fn heal(world: &World, observers: &Observers) {
    for (node, _) in world.nodes() {
        world.clog(node, false);
    }
    observers.history.push(
        observers.at(),
        Step::Fault {
            description: "heal: every fault ended".into(),
        },
    );
}

//! Runs one seed: builds the world, produces the workload, runs the pipeline's consumers on
//! their own nodes, injects faults (safety phase), heals everything and waits for convergence
//! (liveness phase), then hands the history and the final state to the checker.

mod faults;
mod nodes;

use crate::checker::{check, Convergence, Observed, RunVerdict};
use crate::history::{History, Step};
use crate::observe::{DeadLetters, Observers};
use crate::params::RunParams;
use crate::scenario::Scenario;
use crate::world::lock::lock;
use crate::world::{Acks, FlushPolicy, World, WorldConfig};
use faults::{heal, inject_extended_fault, inject_fault, serve_crash_requests, standard_faults};
pub use faults::{ExtendedFault, EXTENDED_FAULTS};
use holdfast::ports::FaultPoint;
use holdfast::rng::SplitMix;
use holdfast::testkit::planted::PlantedBug;
use holdfast::verify::{reference, Fact, GroundTruth, StoreView};
use madsim::task::NodeId;
use madsim::time::{sleep, Instant};
use nodes::{spawn_compensator, spawn_consumer, spawn_producer};
use std::collections::{BTreeMap, BTreeSet};
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
    /// Hash of the history: equal for equal runs.
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
    /// Redeliveries processed again: those the restored progress did not mark finished.
    pub redone: usize,
    /// Records the compensator re-published (they carry its attempts header).
    pub resent: usize,
    /// The history the checker judged (the trace and the timeline page render it).
    pub history: Vec<(u64, Step)>,
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
        // Half the seeds run clients that refuse every second pause or resume, from a stream
        // of their own.
        client_control_failures: SplitMix::new(params.seed ^ 0x7061_7573_6573).chance(0.5),
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
        "world: brokers={} rf={} min_isr={} acks={:?} flush={:?} unclean_election={} idempotent_producer={} producer_retries={} redis_persistent={} redis_keys_max={:?} session_timeout={:?} latency={:?}..{:?} commit_metadata_kept={} client_control_failures={}",
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
        config.commit_metadata_kept,
        config.client_control_failures
    )
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
    let (world, consumers) = (cluster.world.clone(), cluster.consumers.clone());
    let outcome = cluster.harvest(params, convergence, virtual_ms);
    world
        .shut_down(consumers.into_iter().map(|(node, _)| node))
        .await;
    outcome
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
            publishes: Arc::new(Mutex::new(BTreeMap::new())),
            metrics: Arc::new(Mutex::new(Vec::new())),
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

    /// Heals everything, then waits for convergence: finished, and still finished SETTLE_MS
    /// later, so that what lands after the log is caught up (a zombie's late commit or
    /// transaction, a retry in flight) is in the history and the state the checker judges. A
    /// run that stops progressing is stuck after STALL_BOUND_MS; one still progressing has
    /// until its cap.
    async fn liveness_phase(&mut self, params: &RunParams) -> Convergence {
        heal(&self.world, &self.observers);
        let healed = Instant::now();
        let mut progress = Progress::of(&self.world, &self.truth, params);
        let mut progressed_at = healed;
        let mut finished_since = None;
        loop {
            self.serve_crash_requests().await;
            let now = Instant::now();
            let latest = Progress::of(&self.world, &self.truth, params);
            if self.producer_done.load(Ordering::SeqCst)
                && finished(&self.world, &self.truth, &self.observers, params)
            {
                let since = *finished_since.get_or_insert(now);
                if now - since >= Duration::from_millis(SETTLE_MS) {
                    return Convergence::Converged;
                }
                // Settling is not a stall: the stall bound counts from here if it unsettles.
                (progress, progressed_at) = (latest, now);
            } else {
                finished_since = None;
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
        let truth = std::mem::take(&mut *lock(&self.truth));
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
            online: lock(&self.observers.online).clone(),
            convergence,
            publishes: lock(&self.observers.publishes).clone(),
        };
        let verdict = check(&observed);
        let faults = merged_faults(world, &observed);
        let redeliveries = redeliveries(&observed);
        let finished_skipped: u64 = (lock(&self.observers.metrics).iter())
            .map(|m| m.finished_skipped.get() + m.stale_skipped.get())
            .sum();
        RunOutcome {
            fingerprint: crate::history::fingerprint(&observed.history),
            steps: observed.history.len(),
            verdict,
            faults,
            virtual_ms,
            sent: self.sent.load(Ordering::SeqCst) as usize,
            faults_injected: self.observers.injected.load(Ordering::SeqCst) as usize,
            redeliveries,
            redone: redeliveries.saturating_sub(finished_skipped as usize),
            resent: resent(&observed),
            history: observed.history,
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
    (lock(truth).acknowledged.iter()).all(|fact| world.store_reflects(fact) || dead.contains(fact))
}

/// How long a finished run must stay finished before it is judged: past a consumer's session
/// (1 s), so that a member cut off before the heal has been fenced or has finished.
pub const SETTLE_MS: u64 = 1_500;

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
        let acknowledged = lock(truth).acknowledged.len();
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
        world.caught_up(GROUP) && (!params.compensator || world.caught_up(COMPENSATOR_GROUP))
    }
}

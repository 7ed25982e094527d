//! The nodes the harness runs on the world: the producer, the consumers and the compensator,
//! with the configuration each gets from the run's parameters.

use super::{COMPENSATOR_GROUP, DEAD_LETTER_TOPIC, GROUP, TOPIC};
use crate::history::Step;
use crate::observe::{CrashProbe, DeadLetterSink, MemberSink, Observers};
use crate::params::RunParams;
use crate::scenario::Scenario;
use crate::world::lock::lock;
use crate::world::{SimPublisher, World};
use holdfast::check::record::{RecordingLog, RecordingStore};
use holdfast::offsets::{CommitPolicy, Limits};
use holdfast::pipeline::{
    Compensator, CompensatorConfig, Consumer, ConsumerConfig, Metrics, Services, ShutdownTrigger,
};
use holdfast::ports::{Delivery, FaultPoint, OutboundMessage, PortError, Publisher};
use holdfast::rng::SplitMix;
use holdfast::testkit::planted::{PlantedBug, PlantedLog, PlantedStore};
use holdfast::testkit::policies::LiteralStep6;
use holdfast::verify::GroundTruth;
use holdfast::workload::{Message, Workload, WorkloadConfig};
use madsim::runtime::Handle;
use madsim::task::NodeId;
use madsim::time::sleep;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The consumer's tracker limits, small enough to bind: in half of the seeds the span limit
/// (as wide as the in-flight limit, so a stuck record stops tracking first by span), in the
/// other half the in-flight limit; and in half of the seeds a metadata budget too small for
/// most finished sets.
pub(super) fn consumer_limits(params: &RunParams) -> Limits {
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

pub(super) fn consumer_config(
    params: &RunParams,
    index: usize,
    incarnation: u32,
) -> ConsumerConfig {
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
        progress: params.progress,
        ..ConsumerConfig::default()
    }
}

/// The consumer's commit policy: the seed's literal step 6 in its scenario, a planted bug's,
/// or holdfast's watermark.
pub(super) fn commit_policy(params: &RunParams) -> Box<dyn CommitPolicy> {
    if params.scenario == Scenario::LiteralCommitRule {
        Box::<LiteralStep6>::default()
    } else {
        PlantedBug::commit_policy(params.scenario.planted())
    }
}

/// The producer: sends the workload with callbacks, retrying failed sends, and records what
/// it was told.
pub(super) fn spawn_producer(
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
                sends.push(madsim::task::spawn(send_with_callback(
                    Arc::clone(&publisher),
                    message,
                    observers.clone(),
                    truth.clone(),
                    sent_counter.clone(),
                )));
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

/// Sends one message, retrying a failed send twice, and records what the producer was told
/// (the callback).
async fn send_with_callback(
    publisher: Arc<SimPublisher>,
    message: Message,
    observers: Observers,
    truth: Arc<Mutex<GroundTruth>>,
    sent_counter: Arc<AtomicU32>,
) {
    let outbound = OutboundMessage {
        topic: TOPIC.into(),
        key: message.key.clone(),
        payload: message.payload.clone(),
        headers: vec![],
    };
    let mut delivered = None;
    let digest = crate::history::digest(&message.payload);
    for _attempt in 0..3 {
        *lock(&observers.publishes).entry(digest).or_default() += 1;
        if let Ok(delivery) = publisher.publish(outbound.clone()).await {
            delivered = Some((delivery.partition, delivery.offset));
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    sent_counter.fetch_add(1, Ordering::SeqCst);
    if let Some(event) = &message.event {
        lock(&truth).record(event, delivered.is_some());
        observers.history.push(
            observers.at(),
            Step::Sent {
                event_id: event.event_id.clone(),
                acknowledged: delivered.is_some(),
                delivered,
            },
        );
    }
}

/// The compensator node: the pipeline's own `Compensator` in its own group, re-sending to the
/// topic what the main group committed past without its effect reaching the store.
pub(super) fn spawn_compensator(observers: &Observers) -> NodeId {
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
pub(super) struct Routed {
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
pub(super) fn spawn_consumer(
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
                let sink = || MemberSink {
                    member: format!("c{index}#{incarnation}"),
                    observers: observers.clone(),
                };
                let log = RecordingLog {
                    inner: world.log(GROUP).await,
                    sink: sink(),
                };
                let cache = world.cache().await;
                let config = consumer_config(&params, index, incarnation);
                let store = RecordingStore {
                    inner: world.store().await,
                    sink: sink(),
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
                lock(&observers.metrics).push(Arc::clone(&metrics));
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

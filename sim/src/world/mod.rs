//! The simulated world: Kafka, Redis and PostgreSQL models, each on its own madsim node and
//! reached over the world's network ([`transport`]), so that `kill`, `restart` and clogging
//! hit them for real.
//!
//! [`World`] is the harness's facade: it starts the services, hands out port implementations
//! for client nodes, injects faults and lets the checker read the models' state directly.
//! It is long because it is the whole facade: one method per fault and per view of a model.

pub mod kafka;
pub mod lock;
pub mod pause_hook;
pub mod postgres;
pub mod postgres_sessions;
pub mod redis;
pub mod rpc;
pub mod transport;

use holdfast::idempotency::memory::Schema;
use holdfast::ports::{CommittedOffset, PartitionId, Record};
use holdfast::verify::{reference, Application, Fact};
use holdfast::widetable::OrderRow;
use kafka::broker::BrokerState;
use kafka::consumer::SimConsumerConfig;
use kafka::controller::ControllerState;
use kafka::producer::ProducerConfig;
use kafka::{KafkaConfig, PartitionLeadership};
use lock::lock;
use madsim::runtime::{Handle, NodeHandle};
pub use madsim::task::NodeId;
use madsim::time::Instant;
use pause_hook::PauseHook;
use postgres::StoreDisk;
use redis::RedisState;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use transport::{Endpoint, Network};

pub use kafka::{Acks, FlushPolicy, SimGroupOffsets, SimLog, SimPublisher};
pub use postgres::SimStore;
pub use redis::SimCache;

/// Every knob of the simulated world.
#[derive(Clone, Debug)]
pub struct WorldConfig {
    pub brokers: usize,
    pub partitions: i32,
    pub replication_factor: usize,
    pub min_insync_replicas: usize,
    pub acks: Acks,
    pub flush: FlushPolicy,
    pub unclean_election: bool,
    pub idempotent_producer: bool,
    pub producer_retries: u32,
    pub redis_persistent: bool,
    pub redis_max_keys: Option<usize>,
    /// Consumer-group session timeout (and rebalance timeout).
    pub session_timeout: Duration,
    /// The database's schema: holdfast's, or one of the test kit's broken ones.
    pub schema: Schema,
    /// One-way network latency range (uniform).
    pub latency: (Duration, Duration),
    /// `replica.lag.time.max.ms`.
    pub replica_lag_time: Duration,
    /// How long any client waits for an answer before calling the service unavailable.
    pub request_timeout: Duration,
    /// Whether the group coordinator keeps commit metadata. Kafka does; nisshi 0.8.1, the
    /// broker of the real-service tests, drops it, so a restart redoes everything above the
    /// committed offset.
    pub commit_metadata_kept: bool,
    /// Whether the consumer clients refuse every second pause or resume, as librdkafka does
    /// for a partition it does not hold at that moment (`Local: Unknown partition`).
    pub client_control_failures: bool,
    /// How long the database lets a transaction wait for its commit before ending it
    /// (`idle_in_transaction_session_timeout`, which the real adapter sets).
    pub store_idle_max: Duration,
}

impl Default for WorldConfig {
    /// The safe configuration: three brokers, RF 3, `min.insync.replicas` 2, acks=all,
    /// idempotent producer, Kafka's default flush policy (never: replication is durability).
    fn default() -> WorldConfig {
        WorldConfig {
            brokers: 3,
            partitions: 4,
            replication_factor: 3,
            min_insync_replicas: 2,
            acks: Acks::All,
            flush: FlushPolicy::Never,
            unclean_election: false,
            idempotent_producer: true,
            producer_retries: 20,
            redis_persistent: false,
            redis_max_keys: None,
            session_timeout: Duration::from_millis(1000),
            schema: Schema::HOLDFAST,
            latency: (Duration::from_millis(1), Duration::from_millis(3)),
            replica_lag_time: Duration::from_millis(500),
            request_timeout: Duration::from_millis(500),
            commit_metadata_kept: true,
            client_control_failures: false,
            store_idle_max: Duration::from_millis(1500),
        }
    }
}

impl WorldConfig {
    fn kafka(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: self.brokers,
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            min_insync_replicas: self.min_insync_replicas,
            flush: self.flush,
            unclean_election: self.unclean_election,
            session_timeout: self.session_timeout,
            replica_lag_time: self.replica_lag_time,
            broker_session_timeout: self.replica_lag_time.min(Duration::from_millis(300)),
            request_timeout: self.request_timeout,
            commit_metadata_kept: self.commit_metadata_kept,
        }
    }
}

/// A service node of the world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceNode {
    Broker(usize),
    /// The Kafka controller, which also hosts the group coordinator.
    Controller,
    Redis,
    Postgres,
}

/// Faults and notable model events with their virtual time, for the report.
#[derive(Clone, Debug)]
pub struct FaultLog {
    start: Instant,
    /// Each entry's virtual time in milliseconds, and its line (which starts with that time).
    entries: Arc<Mutex<Vec<(f64, String)>>>,
}

impl FaultLog {
    /// An empty log whose clock starts now.
    pub fn new() -> FaultLog {
        FaultLog {
            start: Instant::now(),
            entries: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Virtual time from the world's start to `at`.
    pub fn elapsed(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.start)
    }

    /// Records `what` at virtual time `at`.
    pub fn note(&self, at: Instant, what: impl Into<String>) {
        let at_ms = at.saturating_duration_since(self.start).as_secs_f64() * 1000.0;
        let line = format!("t={at_ms:>9.3}ms {}", what.into());
        lock(&self.entries).push((at_ms, line));
    }

    /// Everything recorded so far, with its virtual time in milliseconds.
    pub fn entries(&self) -> Vec<(f64, String)> {
        lock(&self.entries).clone()
    }
}

impl Default for FaultLog {
    fn default() -> FaultLog {
        FaultLog::new()
    }
}

struct Inner {
    config: WorldConfig,
    controller: Arc<Mutex<ControllerState>>,
    brokers: Vec<Arc<Mutex<BrokerState>>>,
    redis: Arc<Mutex<RedisState>>,
    store: Arc<Mutex<StoreDisk>>,
    nodes: Vec<(ServiceNode, NodeId)>,
    network: Network,
    faults: FaultLog,
    next_client_host: AtomicU32,
    /// Every client node made by [`World::client_node`], for [`World::shut_down`].
    clients: Mutex<Vec<NodeId>>,
    assignment_hook: PauseHook,
    commit_hook: PauseHook,
}

/// The running world. Cheap to clone.
#[derive(Clone)]
pub struct World {
    inner: Arc<Inner>,
}

thread_local! {
    /// Worlds started on this thread and not yet freed (a run's runtime runs on the thread
    /// that calls it).
    static LIVE: Cell<usize> = const { Cell::new(0) };
}

impl Drop for Inner {
    fn drop(&mut self) {
        LIVE.with(|live| live.set(live.get().saturating_sub(1)));
    }
}

/// How long `World::start` waits for every partition to have a serving leader.
const STARTUP_LIMIT: Duration = Duration::from_secs(10);

/// Starts one node per broker, each hosting the partitions `tables` place on it.
fn start_brokers(
    handle: &Handle,
    config: &WorldConfig,
    tables: &[PartitionLeadership],
    network: &Network,
    nodes: &mut Vec<(ServiceNode, NodeId)>,
) -> Vec<Arc<Mutex<BrokerState>>> {
    let kafka = config.kafka();
    let mut brokers = Vec::new();
    for broker in 0..config.brokers {
        let hosted = tables
            .iter()
            .filter(|t| t.replicas.contains(&broker))
            .map(|t| t.partition)
            .collect();
        let state = Arc::new(Mutex::new(BrokerState::new(broker, hosted, kafka.clone())));
        brokers.push(state.clone());
        let name = format!("broker-{broker}");
        let net = network.clone();
        let node = service_node(
            handle,
            network,
            &name,
            kafka::broker_address(broker),
            move || kafka::broker::run(state.clone(), net.clone()),
        );
        nodes.push((ServiceNode::Broker(broker), node.id()));
    }
    brokers
}

impl World {
    /// Creates the broker, controller, Redis and PostgreSQL nodes and waits until every
    /// partition has a leader serving it. Panics on an invalid configuration.
    pub async fn start(config: WorldConfig) -> World {
        let kafka = config.kafka();
        if let Err(problem) = kafka.validate() {
            panic!("invalid world configuration: {problem}");
        }
        let network = Network::new(config.latency.0, config.latency.1);
        let handle = Handle::current();
        let faults = FaultLog::new();
        let controller = Arc::new(Mutex::new(ControllerState::new(
            kafka.clone(),
            faults.clone(),
            Instant::now(),
        )));
        let mut nodes = Vec::new();
        let (state, net) = (controller.clone(), network.clone());
        let node = service_node(
            &handle,
            &network,
            "controller",
            kafka::controller_address(),
            move || kafka::controller::run(state.clone(), net.clone()),
        );
        nodes.push((ServiceNode::Controller, node.id()));
        let tables: Vec<PartitionLeadership> = lock(&controller).partitions.clone();
        let brokers = start_brokers(&handle, &config, &tables, &network, &mut nodes);
        let redis = Arc::new(Mutex::new(RedisState::new(
            config.redis_persistent,
            config.redis_max_keys,
        )));
        let (state, net) = (redis.clone(), network.clone());
        let node = service_node(
            &handle,
            &network,
            "redis",
            redis::redis_address(),
            move || redis::run(state.clone(), net.clone()),
        );
        nodes.push((ServiceNode::Redis, node.id()));
        let store = Arc::new(Mutex::new(StoreDisk::new(config.schema)));
        let idle_max = config.store_idle_max;
        let (state, net) = (store.clone(), network.clone());
        let node = service_node(
            &handle,
            &network,
            "postgres",
            postgres::postgres_address(),
            move || postgres::run(state.clone(), idle_max, net.clone()),
        );
        nodes.push((ServiceNode::Postgres, node.id()));
        LIVE.with(|live| live.set(live.get() + 1));
        let world = World {
            inner: Arc::new(Inner {
                config,
                controller,
                brokers,
                redis,
                store,
                nodes,
                network,
                faults,
                next_client_host: AtomicU32::new(0),
                clients: Mutex::new(Vec::new()),
                assignment_hook: PauseHook::default(),
                commit_hook: PauseHook::default(),
            }),
        };
        world.wait_started(STARTUP_LIMIT).await;
        world
    }

    /// Waits until every partition's controller-named leader serves it; false on timeout.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        self.wait_until(limit, |world| world.served(false)).await
    }

    /// At start, waits until every replica has also heard who leads its partitions: a
    /// broker whose first heartbeat found no controller bound yet learns it one heartbeat
    /// later, and a run should not start with a broker that cannot name any leader.
    async fn wait_started(&self, limit: Duration) -> bool {
        self.wait_until(limit, |world| world.served(true)).await
    }

    async fn wait_until(&self, limit: Duration, done: impl Fn(&World) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if done(self) {
                return true;
            }
            madsim::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Whether every partition's controller-named leader serves it (and, if
    /// `replicas_informed`, every replica knows that leader).
    fn served(&self, replicas_informed: bool) -> bool {
        let tables = lock(&self.inner.controller).partitions.clone();
        tables.iter().all(|table| {
            let led = table.leader.is_some_and(|leader| {
                lock(&self.inner.brokers[leader]).leads(table.partition) == Some(table.leader_epoch)
            });
            let informed = || {
                table
                    .replicas
                    .iter()
                    .all(|replica| lock(&self.inner.brokers[*replica]).knows(table.partition))
            };
            led && (!replicas_informed || informed())
        })
    }

    /// How many worlds started on this thread are still in memory: a finished run's world
    /// is freed once [`World::shut_down`] has run and the runtime is dropped.
    pub fn live_on_this_thread() -> usize {
        LIVE.with(Cell::get)
    }

    /// The configuration the world runs with.
    pub fn config(&self) -> &WorldConfig {
        &self.inner.config
    }

    /// Creates a client node (for a consumer, producer or the workload) with a fresh address.
    pub fn client_node(&self, name: &str) -> NodeHandle {
        // 10.0.9.1 upwards, 250 hosts per /24: room for thousands of client nodes per run.
        let index = self.inner.next_client_host.fetch_add(1, Ordering::Relaxed);
        let subnet = u8::try_from(9 + index / 250).unwrap_or(u8::MAX);
        let host = u8::try_from(1 + index % 250).unwrap_or(u8::MAX);
        let node = Handle::current()
            .create_node()
            .name(name)
            .ip(IpAddr::V4(Ipv4Addr::new(10, 0, subnet, host)))
            .build();
        lock(&self.inner.clients).push(node.id());
        node
    }

    /// Kills every service node and every client node of [`World::client_node`], and `others`.
    /// A run ends with tasks still waiting (servers, long polls, heartbeats), and their futures
    /// hold the world that holds their wakers: dropping the runtime does not free such a
    /// cycle, so every run would keep its whole world in memory to the end of the sweep.
    /// Killing a node wakes its tasks, and madsim drops a killed node's task when it runs.
    pub async fn shut_down(&self, others: impl IntoIterator<Item = NodeId>) {
        let handle = Handle::current();
        let clients = lock(&self.inner.clients).clone();
        let services = self.inner.nodes.iter().map(|(_, id)| *id);
        for node in services.chain(clients).chain(others) {
            handle.kill(node);
        }
        // Let the executor run the woken tasks, which drops them.
        madsim::time::sleep(Duration::from_millis(1)).await;
    }

    fn client_endpoint(&self) -> Endpoint {
        self.inner.network.bind_client()
    }

    fn consumer_config(&self) -> SimConsumerConfig {
        let config = &self.inner.config;
        SimConsumerConfig {
            brokers: config.brokers,
            partitions: config.partitions,
            request_timeout: config.request_timeout,
            session_timeout: config.session_timeout,
            control_failures: config.client_control_failures,
            assignment_hook: self.inner.assignment_hook.clone(),
        }
    }

    /// The hook that stops a member at its next assignment (see [`PauseHook`]).
    pub fn assignment_hook(&self) -> &PauseHook {
        &self.inner.assignment_hook
    }

    /// The hook that stops a store client between its transaction's statements and its
    /// commit (see [`PauseHook`]).
    pub fn commit_hook(&self) -> &PauseHook {
        &self.inner.commit_hook
    }

    /// A consumer-group member for the current (client) node's task.
    pub async fn log(&self, group: &str) -> SimLog {
        SimLog::new(self.client_endpoint(), group, self.consumer_config())
    }

    /// A producer for the current (client) node's task.
    pub async fn publisher(&self) -> SimPublisher {
        let config = &self.inner.config;
        let producer = ProducerConfig {
            brokers: config.brokers,
            partitions: config.partitions,
            acks: config.acks,
            idempotent: config.idempotent_producer,
            retries: config.producer_retries,
            request_timeout: config.request_timeout,
        };
        SimPublisher::new(self.client_endpoint(), producer)
    }

    /// A committed-offsets reader for the current (client) node's task.
    pub async fn group_offsets(&self) -> SimGroupOffsets {
        SimGroupOffsets::new(self.client_endpoint(), self.inner.config.request_timeout)
    }

    /// A Redis client for the current (client) node's task.
    pub async fn cache(&self) -> SimCache {
        SimCache::new(self.client_endpoint(), self.inner.config.request_timeout)
    }

    /// A PostgreSQL client for the current (client) node's task.
    pub async fn store(&self) -> SimStore {
        SimStore::new(
            self.client_endpoint(),
            self.inner.config.request_timeout,
            self.inner.commit_hook.clone(),
        )
    }

    /// Every service node and its madsim id.
    pub fn nodes(&self) -> Vec<(ServiceNode, NodeId)> {
        self.inner.nodes.clone()
    }

    fn node_id(&self, node: ServiceNode) -> NodeId {
        match self
            .inner
            .nodes
            .iter()
            .find(|(service, _)| *service == node)
        {
            Some((_, id)) => *id,
            None => panic!("no such service node: {node:?}"),
        }
    }

    fn note(&self, what: String) {
        self.inner.faults.note(Instant::now(), what);
    }

    /// Kills a service node: its tasks stop, its unflushed data is gone.
    pub fn kill(&self, node: ServiceNode) {
        Handle::current().kill(self.node_id(node));
        self.crash_state(node);
        self.note(format!("kill {node:?}"));
    }

    /// Restarts a service node (killing it first if it runs): it recovers from its disk.
    pub fn restart(&self, node: ServiceNode) {
        let handle = Handle::current();
        let id = self.node_id(node);
        handle.kill(id); // its tasks die, and the sockets they hold with them
        self.crash_state(node);
        handle.restart(id);
        self.note(format!("restart {node:?}"));
    }

    /// Freezes (or thaws) a service node without killing it: a stop-the-world pause. Its
    /// sessions expire meanwhile; when it resumes it acts on stale state (a zombie).
    pub fn pause(&self, node: ServiceNode, paused: bool) {
        let handle = Handle::current();
        let id = self.node_id(node);
        if paused {
            handle.pause(id);
        } else {
            handle.resume(id);
        }
        self.note(format!(
            "{} {node:?}",
            if paused { "pause" } else { "resume" }
        ));
    }

    fn crash_state(&self, node: ServiceNode) {
        match node {
            ServiceNode::Broker(broker) => lock(&self.inner.brokers[broker]).crash(),
            ServiceNode::Redis => lock(&self.inner.redis).crash(),
            ServiceNode::Controller | ServiceNode::Postgres => {}
        }
    }

    /// Cuts (or restores) every link to and from a service node.
    pub fn clog(&self, node: ServiceNode, on: bool) {
        self.inner.network.clog_node(self.node_id(node), on);
        self.note(format!("{} {node:?}", if on { "clog" } else { "unclog" }));
    }

    /// Cuts (or restores) the one-way link from `source` to `target` (any nodes).
    pub fn clog_link(&self, source: NodeId, target: NodeId, on: bool) {
        self.inner.network.clog_link(source, target, on);
        self.note(format!(
            "{} link {source} -> {target}",
            if on { "clog" } else { "unclog" }
        ));
    }

    /// The madsim id of a service node.
    pub fn id(&self, node: ServiceNode) -> NodeId {
        self.node_id(node)
    }

    /// Drops every Redis key (a `FLUSHALL` fault), without the network.
    pub fn redis_flushall(&self) {
        lock(&self.inner.redis).flush_all();
        self.note("redis flushall".to_string());
    }

    /// Moves the group coordinator (a failover): every group forgets its members, which
    /// rejoin; generations and committed offsets survive.
    pub fn coordinator_failover(&self) {
        lock(&self.inner.controller).coordinator_failover();
        self.note("coordinator failover: every group's members forgotten".to_string());
    }

    /// The group's committed offsets with metadata, as the coordinator stores them.
    pub fn committed(&self, group: &str) -> BTreeMap<PartitionId, CommittedOffset> {
        let controller = lock(&self.inner.controller);
        controller.committed.get(group).cloned().unwrap_or_default()
    }

    /// Every commit the coordinator accepted for `group`, in order: what really became the
    /// committed offset, unlike a client's asynchronous commit call, which returns at once.
    pub fn commit_history(&self, group: &str) -> Vec<kafka::controller::AcceptedCommit> {
        let controller = lock(&self.inner.controller);
        controller.accepted.get(group).cloned().unwrap_or_default()
    }

    /// The partition table as the controller holds it.
    pub fn partition_table(&self) -> Vec<PartitionLeadership> {
        lock(&self.inner.controller).partitions.clone()
    }

    /// What a consumer could ever read of `partition`: the current leader's log up to its high
    /// watermark (with no leader, the longest committed prefix any replica holds).
    pub fn partition_log(&self, partition: PartitionId) -> Vec<(i64, Record)> {
        self.partition_range(partition, 0, i64::MAX)
    }

    /// The committed records of a partition with offsets in `[from, until)`, from its leader
    /// (or, with no leader, from the replica holding the most).
    pub fn partition_range(
        &self,
        partition: PartitionId,
        from: i64,
        until: i64,
    ) -> Vec<(i64, Record)> {
        let leader = self.leader_of(partition);
        let entries = match leader {
            Some(leader) => {
                lock(&self.inner.brokers[leader]).committed_range(partition, from, until)
            }
            None => self
                .inner
                .brokers
                .iter()
                .filter_map(|broker| lock(broker).committed_range(partition, from, until))
                .max_by_key(Vec::len),
        };
        entries
            .unwrap_or_default()
            .into_iter()
            .map(|(offset, entry)| {
                let record = Record {
                    partition,
                    offset,
                    key: entry.record.key,
                    payload: entry.record.payload,
                    headers: entry.record.headers,
                };
                (offset, record)
            })
            .collect()
    }

    /// The leader the controller's table names for `partition`, if any.
    fn leader_of(&self, partition: PartitionId) -> Option<usize> {
        let index = usize::try_from(partition).ok()?;
        lock(&self.inner.controller)
            .partitions
            .get(index)
            .and_then(|t| t.leader)
    }

    /// Whether `group` has consumed everything: every partition's leader has committed its
    /// whole log ([`World::replication_settled`]) and the group's committed offset reached
    /// that log's end. A run converges only then: a leader whose high watermark still lags
    /// its log (a new leader before its followers fetched from it) holds acknowledged records
    /// that the committed log does not show yet.
    pub fn caught_up(&self, group: &str) -> bool {
        let committed = self.committed(group);
        (0..self.inner.config.partitions).all(|partition| {
            let end = self.log_end(partition);
            self.replication_settled(partition)
                && (end == 0 || committed.get(&partition).is_some_and(|c| c.offset >= end))
        })
    }

    /// Whether a partition's leader has committed its whole log (its high watermark at its
    /// log end). A new leader's high watermark lags until its followers fetch from it, so
    /// until then the committed log is not yet the final one. True with no leader.
    pub fn replication_settled(&self, partition: PartitionId) -> bool {
        let leader = self.leader_of(partition);
        leader.is_none_or(|leader| {
            let broker = lock(&self.inner.brokers[leader]);
            broker
                .replicas
                .get(&partition)
                .is_none_or(|replica| replica.high_watermark() == replica.log_end())
        })
    }

    /// The end of a partition's committed log (its leader's high watermark; with no leader,
    /// the highest any replica holds).
    pub fn log_end(&self, partition: PartitionId) -> i64 {
        let leader = self.leader_of(partition);
        match leader {
            Some(leader) => lock(&self.inner.brokers[leader])
                .high_watermark(partition)
                .unwrap_or(0),
            None => self
                .inner
                .brokers
                .iter()
                .filter_map(|broker| lock(broker).high_watermark(partition))
                .max()
                .unwrap_or(0),
        }
    }

    /// Whether the store's rows show the fact's effect (read from its disk, no network),
    /// judged by the checker's own model.
    pub fn store_reflects(&self, fact: &Fact) -> bool {
        let store = lock(&self.inner.store);
        store
            .core
            .row(&fact.order_id)
            .is_some_and(|row| reference::reflected_in(row, fact))
    }

    /// Every application the store recorded, in order.
    pub fn store_ledger(&self) -> Vec<Application> {
        let store = lock(&self.inner.store);
        store
            .core
            .applied_events()
            .iter()
            .map(Application::of)
            .collect()
    }

    /// The store's wide rows.
    pub fn store_rows(&self) -> BTreeMap<String, OrderRow> {
        lock(&self.inner.store).core.rows().clone()
    }

    /// How many keys Redis holds now.
    pub fn redis_keys(&self) -> usize {
        lock(&self.inner.redis).len()
    }

    /// Faults injected and model events (elections, evictions), with virtual times.
    pub fn faults(&self) -> Vec<String> {
        self.timed_faults()
            .into_iter()
            .map(|(_, line)| line)
            .collect()
    }

    /// [`World::faults`], each with its virtual time in milliseconds.
    pub fn timed_faults(&self) -> Vec<(f64, String)> {
        self.inner.faults.entries()
    }
}

fn service_node<F>(
    handle: &Handle,
    network: &Network,
    name: &str,
    address: SocketAddr,
    init: impl Fn() -> F + Send + Sync + 'static,
) -> NodeHandle
where
    F: std::future::Future<Output = ()> + 'static,
{
    let node = handle
        .create_node()
        .name(name)
        .ip(address.ip())
        .init(init)
        .build();
    network.reserve(node.id(), address);
    node
}

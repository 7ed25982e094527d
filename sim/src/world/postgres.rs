//! The PostgreSQL model: durable (its data outlives node restarts), one transaction per
//! `apply_batch` in two round trips as the real adapter's (its statements, which take virtual
//! time and lock the rows they write, then its `COMMIT`; a crash before the commit commits
//! nothing), a server that ends a transaction left idle before its commit
//! (`idle_in_transaction_session_timeout`), and a unique key on the idempotency key. Open
//! transactions and locks are in `postgres_sessions`. `SimStore` implements
//! `holdfast::ports::OrderStore`.
//!
//! The store's logic is the core's own (`StoreCore`), not a re-implementation.

use crate::world::lock::lock;
use crate::world::pause_hook::PauseHook;
use crate::world::postgres_sessions::{Sessions, TransactionId};
use crate::world::rpc;
use crate::world::transport::{Endpoint, Network};
use holdfast::event::OrderEvent;
use holdfast::idempotency::memory::Schema;
use holdfast::ports::{
    ApplyOutcome, CommittedOffset, OrderStore, PartitionId, PortError, ProgressWrite,
};
use holdfast::widetable::OrderRow;
use madsim::time::Instant;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The store's logic: the core's own state machine, the same one the in-memory store runs.
pub use holdfast::idempotency::memory::StoreState as StoreCore;

/// The PostgreSQL node's address.
pub fn postgres_address() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 3, 1)), 5432)
}

const SERVICE: &str = "postgres";
/// Virtual time a transaction spends per event (insert + upsert), before it commits.
const COST_PER_EVENT: Duration = Duration::from_micros(50);
/// Virtual time of a transaction's begin and commit.
const COST_PER_TRANSACTION: Duration = Duration::from_micros(200);

/// A request to the database. `wait` is how long the client waits for its answer: a server
/// still waiting for a lock by then stops, as PostgreSQL does once the client has closed its
/// connection.
#[derive(Clone, Debug)]
pub enum StoreRequest {
    /// A transaction's statements: the rows' locks, then the work; the locks are kept.
    Statements {
        id: TransactionId,
        events: Vec<OrderEvent>,
        progress: Vec<ProgressWrite>,
        wait: Duration,
    },
    Commit(TransactionId),
    /// The client gave up on the transaction and closed its connection (no answer).
    Abandon(TransactionId),
    LoadRows(Vec<String>),
    ClaimProgress {
        partition: PartitionId,
        owner: i32,
        wait: Duration,
    },
}

/// The database's answer.
#[derive(Clone, Debug)]
pub enum StoreAnswer {
    /// The statements ran; the transaction waits for its commit.
    Open,
    /// The transaction is not open (ended for sitting idle, or the server restarted).
    Ended,
    Applied(Vec<ApplyOutcome>),
    Rows(BTreeMap<String, OrderRow>),
    Progress(Option<CommittedOffset>),
    /// A progress row is claimed by a later generation: nothing committed.
    Fenced(String),
}

/// The database's disk: created outside the node, so it survives every crash.
#[derive(Debug)]
pub struct StoreDisk {
    pub core: StoreCore,
    /// Transactions committed, for the report.
    pub transactions: u64,
}

impl StoreDisk {
    /// An empty database with `schema`.
    pub fn new(schema: Schema) -> StoreDisk {
        StoreDisk {
            core: StoreCore::with_schema(schema),
            transactions: 0,
        }
    }
}

/// The PostgreSQL node's main task. `idle_max` is how long an open transaction may wait for
/// its commit before the server ends it.
pub async fn run(disk: Arc<Mutex<StoreDisk>>, idle_max: Duration, network: Network) {
    let endpoint = network.bind(postgres_address());
    // In the server's memory: a restart ends every open transaction.
    let sessions = Arc::new(Sessions::default());
    rpc::serve(endpoint, move |request: StoreRequest| {
        let (disk, sessions) = (disk.clone(), sessions.clone());
        async move { handle(&disk, &sessions, idle_max, request).await }
    })
    .await;
}

async fn handle(
    disk: &Mutex<StoreDisk>,
    sessions: &Sessions,
    idle_max: Duration,
    request: StoreRequest,
) -> Option<StoreAnswer> {
    match request {
        StoreRequest::Statements {
            id,
            events,
            progress,
            wait,
        } => {
            let cost = transaction_cost(&events, &progress);
            if !sessions
                .open(id, events, progress, Instant::now() + wait)
                .await
            {
                return None;
            }
            // If the node dies during the work, this task and the sessions are dropped: the
            // transaction never commits.
            madsim::time::sleep(cost).await;
            sessions.idle(id, Instant::now() + idle_max);
            Some(StoreAnswer::Open)
        }
        StoreRequest::Commit(id) => {
            let Some(open) = sessions.commit(id) else {
                return Some(StoreAnswer::Ended);
            };
            let mut disk = lock(disk);
            Some(match disk.core.transaction(&open.events, &open.progress) {
                Ok(outcomes) => {
                    disk.transactions += 1;
                    debug_assert_eq!(outcomes.len(), open.events.len());
                    StoreAnswer::Applied(outcomes)
                }
                Err(fenced) => StoreAnswer::Fenced(fenced.to_string()),
            })
        }
        StoreRequest::Abandon(id) => {
            sessions.abandon(id);
            None
        }
        StoreRequest::ClaimProgress {
            partition,
            owner,
            wait,
        } => {
            let deadline = Instant::now() + wait;
            madsim::time::sleep(COST_PER_TRANSACTION).await;
            // The claim runs right after its row is free, before anything else can lock it.
            if !sessions.progress_row_free(partition, deadline).await {
                return None;
            }
            Some(match lock(disk).core.claim_progress(partition, owner) {
                Ok(progress) => StoreAnswer::Progress(progress),
                Err(fenced) => StoreAnswer::Fenced(fenced.to_string()),
            })
        }
        StoreRequest::LoadRows(order_ids) => {
            let disk = lock(disk);
            let rows = order_ids
                .into_iter()
                .filter_map(|id| disk.core.row(&id).cloned().map(|row| (id, row)))
                .collect();
            Some(StoreAnswer::Rows(rows))
        }
    }
}

/// Virtual time of one transaction: begin and commit, each event, each progress row.
fn transaction_cost(events: &[OrderEvent], progress: &[ProgressWrite]) -> Duration {
    COST_PER_TRANSACTION + COST_PER_EVENT * (events.len() + progress.len()) as u32
}

/// A database client on the node that created it.
#[derive(Clone)]
pub struct SimStore {
    endpoint: Endpoint,
    request_timeout: Duration,
    /// Where the fault injector may freeze this client between its statements and its commit.
    commit_hook: PauseHook,
}

impl SimStore {
    /// A client using `endpoint`.
    pub fn new(endpoint: Endpoint, request_timeout: Duration, commit_hook: PauseHook) -> SimStore {
        SimStore {
            endpoint,
            request_timeout,
            commit_hook,
        }
    }

    async fn call(
        &self,
        request: StoreRequest,
        timeout: Duration,
    ) -> Result<StoreAnswer, PortError> {
        rpc::call(&self.endpoint, postgres_address(), request, timeout)
            .await
            .ok_or_else(|| PortError::Unavailable {
                service: SERVICE,
                detail: "no answer (the transaction may or may not have committed)".to_string(),
            })
    }
}

fn fenced(detail: String) -> PortError {
    PortError::Fenced {
        service: SERVICE,
        detail,
    }
}

fn unexpected(answer: StoreAnswer) -> PortError {
    PortError::Rejected {
        service: SERVICE,
        detail: format!("unexpected answer {answer:?}"),
    }
}

impl OrderStore for SimStore {
    async fn apply_batch(
        &self,
        events: &[OrderEvent],
        progress: &[ProgressWrite],
    ) -> Result<Vec<ApplyOutcome>, PortError> {
        let id: TransactionId = madsim::rand::random();
        let work = transaction_cost(events, progress);
        let statements = StoreRequest::Statements {
            id,
            events: events.to_vec(),
            progress: progress.to_vec(),
            wait: self.request_timeout,
        };
        match self.call(statements, self.request_timeout + work).await {
            Ok(StoreAnswer::Open) => {}
            Ok(other) => return Err(unexpected(other)),
            Err(error) => {
                // The real adapter drops the connection: the server ends the transaction.
                rpc::send(
                    &self.endpoint,
                    postgres_address(),
                    StoreRequest::Abandon(id),
                );
                return Err(error);
            }
        }
        self.commit_hook.reached().await;
        match self
            .call(StoreRequest::Commit(id), self.request_timeout)
            .await?
        {
            StoreAnswer::Applied(outcomes) if outcomes.len() == events.len() => Ok(outcomes),
            StoreAnswer::Fenced(detail) => Err(fenced(detail)),
            StoreAnswer::Ended => Err(PortError::Unavailable {
                service: SERVICE,
                detail: "the server ended the transaction before its commit".to_string(),
            }),
            other => Err(unexpected(other)),
        }
    }

    async fn claim_progress(
        &self,
        partition: PartitionId,
        owner: i32,
    ) -> Result<Option<CommittedOffset>, PortError> {
        let request = StoreRequest::ClaimProgress {
            partition,
            owner,
            wait: self.request_timeout,
        };
        match self.call(request, self.request_timeout).await? {
            StoreAnswer::Progress(progress) => Ok(progress),
            StoreAnswer::Fenced(detail) => Err(fenced(detail)),
            other => Err(unexpected(other)),
        }
    }

    async fn load_rows(
        &self,
        order_ids: &[String],
    ) -> Result<BTreeMap<String, OrderRow>, PortError> {
        let request = StoreRequest::LoadRows(order_ids.to_vec());
        match self.call(request, self.request_timeout).await? {
            StoreAnswer::Rows(rows) => Ok(rows),
            other => Err(unexpected(other)),
        }
    }
}

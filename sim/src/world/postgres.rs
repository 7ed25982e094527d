//! The PostgreSQL model: durable (its data outlives node restarts), one transaction per
//! `apply_batch` that takes virtual time and commits atomically at its end (a crash before
//! then commits nothing), transactions serialized at commit, and a unique key on the
//! idempotency key. `SimStore` implements `holdfast::ports::OrderStore`.
//!
//! The store's logic is the core's own (`StoreCore`), not a re-implementation.

use crate::world::lock::lock;
use crate::world::rpc;
use holdfast::event::OrderEvent;
use holdfast::idempotency::memory::Schema;
use holdfast::ports::{
    ApplyOutcome, CommittedOffset, OrderStore, PartitionId, PortError, ProgressWrite,
};
use holdfast::widetable::OrderRow;
use madsim::net::Endpoint;
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

/// A request to the database.
#[derive(Clone, Debug)]
pub enum StoreRequest {
    ApplyBatch(Vec<OrderEvent>, Vec<ProgressWrite>),
    LoadRows(Vec<String>),
    ClaimProgress(PartitionId, i32),
}

/// The database's answer.
#[derive(Clone, Debug)]
pub enum StoreAnswer {
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

/// The PostgreSQL node's main task.
pub async fn run(disk: Arc<Mutex<StoreDisk>>) {
    let endpoint = crate::world::bind(postgres_address()).await;
    rpc::serve(endpoint, move |request: StoreRequest| {
        let disk = disk.clone();
        async move { Some(handle(&disk, request).await) }
    })
    .await;
}

async fn handle(disk: &Mutex<StoreDisk>, request: StoreRequest) -> StoreAnswer {
    match request {
        StoreRequest::ApplyBatch(events, progress) => {
            // The transaction's work happens first; if the node dies meanwhile this task is
            // dropped and nothing below runs: the transaction never commits.
            madsim::time::sleep(transaction_cost(&events, &progress)).await;
            let mut disk = lock(disk);
            match disk.core.transaction(&events, &progress) {
                Ok(outcomes) => {
                    disk.transactions += 1;
                    debug_assert_eq!(outcomes.len(), events.len());
                    StoreAnswer::Applied(outcomes)
                }
                Err(fenced) => StoreAnswer::Fenced(fenced.to_string()),
            }
        }
        StoreRequest::ClaimProgress(partition, owner) => {
            madsim::time::sleep(COST_PER_TRANSACTION).await;
            match lock(disk).core.claim_progress(partition, owner) {
                Ok(progress) => StoreAnswer::Progress(progress),
                Err(fenced) => StoreAnswer::Fenced(fenced.to_string()),
            }
        }
        StoreRequest::LoadRows(order_ids) => {
            let disk = lock(disk);
            let rows = order_ids
                .into_iter()
                .filter_map(|id| disk.core.row(&id).cloned().map(|row| (id, row)))
                .collect();
            StoreAnswer::Rows(rows)
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
}

impl SimStore {
    /// A client using `endpoint`.
    pub fn new(endpoint: Endpoint, request_timeout: Duration) -> SimStore {
        SimStore {
            endpoint,
            request_timeout,
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
        let work = transaction_cost(events, progress);
        let request = StoreRequest::ApplyBatch(events.to_vec(), progress.to_vec());
        match self.call(request, self.request_timeout + work).await? {
            StoreAnswer::Applied(outcomes) if outcomes.len() == events.len() => Ok(outcomes),
            StoreAnswer::Fenced(detail) => Err(fenced(detail)),
            other => Err(unexpected(other)),
        }
    }

    async fn claim_progress(
        &self,
        partition: PartitionId,
        owner: i32,
    ) -> Result<Option<CommittedOffset>, PortError> {
        let request = StoreRequest::ClaimProgress(partition, owner);
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

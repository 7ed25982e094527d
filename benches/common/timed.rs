//! Wrappers that time every call into a port, so that a benchmark can say where its time went
//! (in the log, the cache, the store) without touching the pipeline. The cost is two clock
//! reads and an atomic add per call.

use holdfast::event::OrderEvent;
use holdfast::idempotency::DeliveryKey;
use holdfast::ports::{
    ApplyOutcome, CommitMode, CommittedOffset, DedupCache, Delivery, EventLog, OffsetCommit,
    OrderStore, OutboundMessage, PartitionId, Polled, PortError, ProgressWrite, Publisher,
};
use holdfast::widetable::OrderRow;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Calls and total time of one kind of call.
#[derive(Debug, Default)]
pub struct Spent {
    calls: AtomicU64,
    micros: AtomicU64,
}

impl Spent {
    async fn time<T>(&self, call: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let result = call.await;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add(micros, Ordering::Relaxed);
        result
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }

    /// "N calls, S s in all, M ms each".
    pub fn describe(&self) -> String {
        let calls = self.calls();
        format!(
            "{calls} calls, {:.2} s in all, {:.2} ms each",
            self.total().as_secs_f64(),
            self.total().as_secs_f64() * 1000.0 / calls.max(1) as f64
        )
    }
}

/// Time spent per port call, shared by clones of the wrappers.
#[derive(Debug, Default)]
pub struct Ledger {
    pub poll: Spent,
    pub commit: Spent,
    pub pause: Spent,
    pub cache_check: Spent,
    pub cache_remember: Spent,
    pub store_apply: Spent,
    pub publish: Spent,
}

/// A port whose calls are timed into a shared [`Ledger`].
#[derive(Clone, Debug)]
pub struct Timed<T> {
    pub inner: T,
    pub ledger: Arc<Ledger>,
}

impl<T> Timed<T> {
    pub fn new(inner: T, ledger: &Arc<Ledger>) -> Timed<T> {
        Timed {
            inner,
            ledger: Arc::clone(ledger),
        }
    }
}

impl<L: EventLog> EventLog for Timed<L> {
    async fn poll(&mut self, records_max: usize, timeout: Duration) -> Result<Polled, PortError> {
        self.ledger
            .poll
            .time(self.inner.poll(records_max, timeout))
            .await
    }

    async fn commit(
        &mut self,
        offsets: &[OffsetCommit],
        mode: CommitMode,
    ) -> Result<(), PortError> {
        self.ledger
            .commit
            .time(self.inner.commit(offsets, mode))
            .await
    }

    async fn pause(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        self.ledger.pause.time(self.inner.pause(partitions)).await
    }

    async fn resume(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        self.ledger.pause.time(self.inner.resume(partitions)).await
    }
}

impl<C: DedupCache> DedupCache for Timed<C> {
    async fn contains_batch(&self, keys: &[DeliveryKey]) -> Result<Vec<bool>, PortError> {
        self.ledger
            .cache_check
            .time(self.inner.contains_batch(keys))
            .await
    }

    async fn remember_batch(&self, keys: &[DeliveryKey], ttl: Duration) -> Result<(), PortError> {
        self.ledger
            .cache_remember
            .time(self.inner.remember_batch(keys, ttl))
            .await
    }
}

impl<S: OrderStore> OrderStore for Timed<S> {
    async fn apply_batch(
        &self,
        events: &[OrderEvent],
        progress: &[ProgressWrite],
    ) -> Result<Vec<ApplyOutcome>, PortError> {
        self.ledger
            .store_apply
            .time(self.inner.apply_batch(events, progress))
            .await
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

impl<P: Publisher> Publisher for Timed<P> {
    async fn publish(&self, message: OutboundMessage) -> Result<Delivery, PortError> {
        self.ledger.publish.time(self.inner.publish(message)).await
    }
}

//! A worker: takes the records routed to it (all records of an order id go to one worker, in
//! poll order), runs each batch through the idempotency protocol, dead-letters what cannot be
//! applied, and acks finished offsets to the tracker.

use super::config::ConsumerConfig;
use super::config::ProgressMode;
use super::dead_letter::dead_letter;
use super::histogram::Histogram;
use super::metrics::Metrics;
use super::progress::{self, Owners};
use super::retry::Backoff;
use crate::event::{DecodeError, OrderEvent};
use crate::idempotency::protocol::{apply_batch, BatchReport, ProtocolConfig, Verdict};
use crate::offsets::{AckError, SharedTracker, Ticket};
use crate::ports::{
    ApplyOutcome, CommittedOffset, DedupCache, FaultPoint, OrderStore, PartitionId, PortError,
    Probe, ProgressWrite, Publisher, Record,
};
use crate::widetable::OrderRow;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One polled record on its way to a worker.
#[derive(Debug)]
pub(crate) struct Job {
    pub ticket: Ticket,
    pub record: Record,
}

/// A record that does not decode, on its way to the dead-letter task.
#[derive(Debug)]
pub(crate) struct Letter {
    job: Job,
    error: DecodeError,
}

/// What every worker shares: the services and the tracker to ack to.
pub struct Services<C, S, D, P> {
    pub cache: C,
    pub store: S,
    /// Publishes dead letters.
    pub dead_letters: D,
    pub probe: P,
}

pub(crate) struct WorkerContext<C, S, D, P> {
    pub services: Arc<Services<C, S, D, P>>,
    pub tracker: SharedTracker,
    /// The generations that claimed the member's partitions (`progress = store`).
    pub owners: Arc<Owners>,
    pub metrics: Arc<Metrics>,
    pub config: ConsumerConfig,
    pub protocol: ProtocolConfig,
}

impl<C, S, D, P> WorkerContext<C, S, D, P>
where
    C: DedupCache + 'static,
    S: OrderStore + 'static,
    D: Publisher + 'static,
    P: Probe + 'static,
{
    /// Runs until the channel closes, batching whatever has queued up to `batch_size`.
    /// Malformed records go to `letters` (the companion [`Self::run_letters`] task); dropping
    /// every worker's sender when the jobs end lets that task finish too.
    pub async fn run(
        self: Arc<Self>,
        index: usize,
        mut jobs: mpsc::UnboundedReceiver<Job>,
        letters: mpsc::UnboundedSender<Letter>,
    ) {
        let mut backoff_seed = worker_seed(self.config.jitter_seed, index);
        while let Some(first) = jobs.recv().await {
            let mut batch = vec![first];
            while batch.len() < self.config.batch_size {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            backoff_seed = backoff_seed.wrapping_add(1);
            self.process(batch, &letters, backoff_seed).await;
        }
    }

    /// Publishes the dead letters of malformed records, all that have queued up at once, and
    /// acks each record once the broker acknowledged its letter. Runs beside the workers so
    /// that the broker's round trip (tens to hundreds of ms) never holds up a batch; the
    /// tracker keeps the commit point below a record until its letter is acknowledged. One
    /// such task serves all workers, so one group of letters is out at a time.
    pub async fn run_letters(
        self: Arc<Self>,
        index: usize,
        mut letters: mpsc::UnboundedReceiver<Letter>,
    ) {
        let mut seed = !worker_seed(self.config.jitter_seed, index);
        while let Some(first) = letters.recv().await {
            let mut pending = vec![first];
            while let Ok(letter) = letters.try_recv() {
                pending.push(letter);
            }
            seed = seed.wrapping_add(1);
            let context: &Self = &self;
            // Concurrent on this task, so that aborting the task cancels every publish.
            let sent = futures_util::future::join_all(pending.iter().map(|letter| async move {
                let error = letter.error.to_string();
                let sent = context
                    .send_dead_letter(&letter.job.record, &error, 1, seed)
                    .await;
                sent.then_some(letter.job.ticket)
            }))
            .await;
            let finished: Vec<Ticket> = sent.into_iter().flatten().collect();
            self.ack_all(&finished).await;
        }
    }

    /// Drops the jobs of partitions revoked (or assigned anew) since they were polled: their
    /// records are above the revoke's commit, so the next owner redoes them; applying them
    /// here would only delay the current assignment's records queued behind them.
    fn current(&self, batch: Vec<Job>) -> Vec<Job> {
        let mut epochs: BTreeMap<PartitionId, Option<u64>> = BTreeMap::new();
        let before = batch.len();
        let current: Vec<Job> = batch
            .into_iter()
            .filter(|job| {
                let partition = job.ticket.partition;
                let epoch = *epochs
                    .entry(partition)
                    .or_insert_with(|| self.tracker.epoch(partition));
                epoch == Some(job.ticket.epoch)
            })
            .collect();
        let dropped = before - current.len();
        if dropped > 0 {
            crate::reach!("worker.dropped_revoked");
            self.metrics.dropped_revoked.add(dropped as u64);
            tracing::debug!(dropped, "records of revoked partitions dropped");
        }
        current
    }

    async fn process(&self, batch: Vec<Job>, letters: &mpsc::UnboundedSender<Letter>, seed: u64) {
        let started = Instant::now();
        let batch = self.current(batch);
        if batch.is_empty() {
            // Only stale records: no transaction, no fault point, nothing to ack.
            return;
        }
        let (good, events) = decode(batch, letters);
        let mut finished: Vec<Ticket> = Vec::with_capacity(good.len());
        let tickets: Vec<Ticket> = good.iter().map(|job| job.ticket).collect();
        match self.apply_with_retries(&events, &tickets, seed).await {
            Applied::All(report) => {
                self.count(&report, &good);
                finished.extend(good.iter().map(|job| job.ticket));
            }
            Applied::Fenced => {
                // The partition moved to another member, which redoes these records.
                tracing::info!(
                    records = good.len(),
                    "batch dropped: this member was fenced"
                );
            }
            Applied::Rejected => {
                // The batch keeps failing while the services are up: apply one event at a time
                // so that only the poison record is dead-lettered.
                for (job, event) in good.iter().zip(&events) {
                    match self
                        .apply_with_retries(
                            std::slice::from_ref(event),
                            std::slice::from_ref(&job.ticket),
                            seed,
                        )
                        .await
                    {
                        Applied::All(report) => {
                            self.count(&report, std::slice::from_ref(job));
                            finished.push(job.ticket);
                        }
                        Applied::Fenced => {}
                        Applied::Rejected => {
                            let attempts = self.config.record_attempts_max;
                            let error = "the store rejected this event on every attempt";
                            if self
                                .send_dead_letter(&job.record, error, attempts, seed)
                                .await
                            {
                                finished.push(job.ticket);
                            }
                        }
                    }
                }
            }
        }
        self.ack_all(&finished).await;
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.metrics.observe_batch(latency_us);
    }

    /// Retries outages without limit and rejections `record_attempts_max` times. `tickets`
    /// are the events' records: under `progress = store` the transaction also writes their
    /// partitions' progress, including them.
    async fn apply_with_retries(
        &self,
        events: &[OrderEvent],
        tickets: &[Ticket],
        seed: u64,
    ) -> Applied {
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max, seed);
        let mut rejections = 0;
        loop {
            let progress = match self.config.progress {
                ProgressMode::Kafka => Vec::new(),
                ProgressMode::Store => progress::writes(&self.tracker, &self.owners, tickets),
            };
            let services = &self.services;
            let store = Timed {
                store: &services.store,
                duration: &self.metrics.store_duration,
            };
            let result = apply_batch(
                &services.cache,
                &store,
                &services.probe,
                events,
                &progress,
                &self.protocol,
            )
            .await;
            match result {
                Ok(report) => return Applied::All(report),
                Err(PortError::Fenced { .. }) => {
                    crate::reach!("worker.store_fenced");
                    self.metrics.batches_fenced.add(1);
                    return Applied::Fenced;
                }
                Err(error @ PortError::Unavailable { .. }) => {
                    self.metrics.retries_outage.add(1);
                    crate::reach!("worker.store_unavailable");
                    tracing::warn!(%error, "store unavailable; retrying the batch");
                }
                Err(error @ PortError::Rejected { .. }) => {
                    rejections += 1;
                    if rejections >= self.config.record_attempts_max {
                        tracing::warn!(%error, rejections, "batch rejected; isolating the failing event");
                        return Applied::Rejected;
                    }
                    self.metrics.retries_rejected.add(1);
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Publishes one dead letter, retrying outages without limit. Returns whether the record
    /// may be acked (false only when the publisher fenced this member).
    async fn send_dead_letter(
        &self,
        record: &Record,
        error: &str,
        attempts: u32,
        seed: u64,
    ) -> bool {
        let letter = dead_letter(&self.config.dead_letter_topic, record, error, attempts);
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max, seed);
        loop {
            match self.services.dead_letters.publish(letter.clone()).await {
                Ok(_) => {
                    self.metrics.note_dead_letter(record.partition);
                    tracing::warn!(
                        partition = record.partition,
                        offset = record.offset,
                        error,
                        "record dead-lettered"
                    );
                    return true;
                }
                Err(PortError::Fenced { .. }) => return false,
                Err(failure) => {
                    self.metrics.retries_outage.add(1);
                    crate::reach!("worker.dead_letter_retry");
                    tracing::warn!(%failure, "dead-letter publish failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Counts the verdicts of `jobs`' events (one verdict per job, in order).
    fn count(&self, report: &BatchReport, jobs: &[Job]) {
        debug_assert_eq!(report.verdicts.len(), jobs.len());
        let mut redelivered: BTreeMap<PartitionId, u64> = BTreeMap::new();
        for (verdict, job) in report.verdicts.iter().zip(jobs) {
            let counter = match verdict {
                Verdict::Applied => {
                    self.metrics.applied.add(1);
                    continue;
                }
                Verdict::SkippedByCache => &self.metrics.duplicates_cache,
                Verdict::DuplicateInBatch => &self.metrics.duplicates_batch,
                Verdict::DuplicateInStore => &self.metrics.duplicates_store,
            };
            counter.add(1);
            *redelivered.entry(job.ticket.partition).or_default() += 1;
        }
        for (partition, events) in redelivered {
            self.metrics.note_redelivered(partition, events);
        }
        if report.cache_degraded {
            self.metrics.cache_degraded_batches.add(1);
        }
    }

    /// Acks finished offsets, each half of the batch under one lock. The `MidBatch` fault
    /// point sits between the two halves, so the simulator can crash a worker with part of a
    /// batch acked.
    async fn ack_all(&self, finished: &[Ticket]) {
        let (first, second) = finished.split_at(finished.len() / 2);
        self.ack_half(first);
        if !first.is_empty() {
            self.services.probe.at(FaultPoint::MidBatch).await;
        }
        self.ack_half(second);
    }

    fn ack_half(&self, finished: &[Ticket]) {
        for (ticket, error) in self.tracker.ack_all(finished) {
            match error {
                AckError::StaleEpoch { .. } => {
                    // Revoked while we worked: the new owner's watermark is not ours to move.
                    crate::reach!("worker.ack_stale");
                }
                error => {
                    tracing::error!(%error, ?ticket, "ack refused");
                    debug_assert!(false, "ack of a dispatched ticket refused: {error}");
                }
            }
        }
    }
}

/// Decodes a batch: the records that decode and their events, in order; the others go to
/// the dead-letter task.
fn decode(batch: Vec<Job>, letters: &mpsc::UnboundedSender<Letter>) -> (Vec<Job>, Vec<OrderEvent>) {
    let mut good = Vec::with_capacity(batch.len());
    let mut events = Vec::with_capacity(batch.len());
    for job in batch {
        match OrderEvent::decode_shared(&job.record.payload) {
            Ok(event) => {
                good.push(job);
                events.push(event);
            }
            Err(error) => {
                if letters.send(Letter { job, error }).is_err() {
                    // The letters task is gone (the consumer is being torn down): the record
                    // stays unacked and is redelivered to the next owner.
                    tracing::error!("the dead-letter task stopped; the record will be redelivered");
                }
            }
        }
    }
    (good, events)
}

/// The store, timed: every transaction's duration goes to a histogram.
struct Timed<'a, S> {
    store: &'a S,
    duration: &'a Histogram,
}

impl<S: OrderStore> OrderStore for Timed<'_, S> {
    async fn apply_batch(
        &self,
        events: &[OrderEvent],
        progress: &[ProgressWrite],
    ) -> Result<Vec<ApplyOutcome>, PortError> {
        let started = Instant::now();
        let outcomes = self.store.apply_batch(events, progress).await;
        let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.duration.observe(elapsed_us);
        outcomes
    }

    async fn load_rows(
        &self,
        order_ids: &[String],
    ) -> Result<BTreeMap<String, OrderRow>, PortError> {
        self.store.load_rows(order_ids).await
    }

    async fn claim_progress(
        &self,
        partition: PartitionId,
        owner: i32,
    ) -> Result<Option<CommittedOffset>, PortError> {
        self.store.claim_progress(partition, owner).await
    }
}

/// The retry-jitter seed of worker `index`.
fn worker_seed(jitter_seed: u64, index: usize) -> u64 {
    jitter_seed ^ (index as u64).wrapping_mul(0x9e37_79b9)
}

enum Applied {
    All(BatchReport),
    Fenced,
    Rejected,
}

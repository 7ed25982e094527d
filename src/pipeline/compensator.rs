//! The compensator: a second consumer group on the same topic that re-sends events whose
//! effect is missing.
//!
//! A delay alone misfires when the main group merely lags, so an event is re-published only
//! when (a) it has waited `delay`, (b) the main group has committed past its offset, and
//! (c) its order's row does not reflect it (neither its claim nor one the conflict rule
//! prefers: a key alone would hide a lost rival of an event already applied). After
//! `attempts_max` re-sends it is dead-lettered and reported. The pending table is the set of tracked, unresolved records:
//! the compensator acks a record to its own tracker only once it is resolved, and commits
//! only the lowest unresolved offset, so a crash rebuilds the table by redelivery.

use super::consumer::Shutdown;
use super::dead_letter::{dead_letter, header, HEADER_ATTEMPTS};
use crate::event::OrderEvent;
use crate::idempotency::IdempotencyKey;
use crate::offsets::{Limits, SharedTracker, Ticket, TrackError, Tracked};
use crate::ports::{
    CommitMode, EventLog, GroupOffsets, OffsetCommit, OrderStore, OutboundMessage, PartitionId,
    PortError, Publisher, Rebalance, Record,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// How the compensator decides and re-sends.
#[derive(Clone, Debug)]
pub struct CompensatorConfig {
    /// The group whose effects are checked.
    pub main_group: String,
    /// Where re-sends go (the main topic).
    pub topic: String,
    pub dead_letter_topic: String,
    /// How long an event waits before its effect is checked.
    pub delay: Duration,
    /// How often pending events are checked.
    pub check_interval: Duration,
    /// Re-sends before an event is dead-lettered.
    pub attempts_max: u32,
    pub batch_size: usize,
    pub poll_timeout: Duration,
    pub limits: Limits,
}

impl Default for CompensatorConfig {
    fn default() -> Self {
        CompensatorConfig {
            main_group: "holdfast".into(),
            topic: "orders".into(),
            dead_letter_topic: "orders.dlq".into(),
            delay: Duration::from_secs(30),
            check_interval: Duration::from_secs(5),
            attempts_max: 3,
            batch_size: 500,
            poll_timeout: Duration::from_millis(100),
            limits: Limits::default(),
        }
    }
}

/// What the compensator did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompensatorReport {
    /// Events found applied when checked.
    pub confirmed: u64,
    /// Re-sends published.
    pub resent: u64,
    /// Events given up on after `attempts_max` re-sends.
    pub dead_lettered: Vec<IdempotencyKey>,
    /// Events still pending when it stopped.
    pub pending: usize,
}

struct Pending {
    ticket: Ticket,
    record: Record,
    event: OrderEvent,
    key: IdempotencyKey,
    due: Instant,
    attempts: u32,
}

/// The compensating consumer.
pub struct Compensator<L, G, S, P> {
    config: CompensatorConfig,
    log: L,
    main_offsets: G,
    store: S,
    publisher: P,
    tracker: SharedTracker,
    pending: BTreeMap<(PartitionId, i64), Pending>,
    /// Per partition, polled records the tracker had no room for, in poll order; the
    /// partition stays paused until they are all admitted.
    held: BTreeMap<PartitionId, VecDeque<Record>>,
    report: CompensatorReport,
}

impl<L: EventLog, G: GroupOffsets, S: OrderStore, P: Publisher> Compensator<L, G, S, P> {
    pub fn new(config: CompensatorConfig, log: L, main_offsets: G, store: S, publisher: P) -> Self {
        let tracker = SharedTracker::new(config.limits);
        Compensator {
            config,
            log,
            main_offsets,
            store,
            publisher,
            tracker,
            pending: BTreeMap::new(),
            held: BTreeMap::new(),
            report: CompensatorReport::default(),
        }
    }

    /// Runs until shutdown, then commits what is resolved.
    pub async fn run(mut self, shutdown: Shutdown) -> CompensatorReport {
        let mut next_check = Instant::now() + self.config.check_interval;
        while !shutdown.requested() {
            match self
                .log
                .poll(self.config.batch_size, self.config.poll_timeout)
                .await
            {
                Ok(polled) => {
                    self.rebalance(polled.rebalances).await;
                    for record in polled.records {
                        self.offer(record).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "compensator poll failed");
                    tokio::time::sleep(self.config.poll_timeout).await;
                }
            }
            if Instant::now() >= next_check {
                if let Err(error) = self.check_due().await {
                    crate::reach!("compensator.check_failed");
                    tracing::warn!(%error, "compensation check failed; retrying next round");
                }
                self.retry_held().await;
                self.commit(CommitMode::Async).await;
                next_check = Instant::now() + self.config.check_interval;
            }
        }
        self.commit(CommitMode::Sync).await;
        self.report.pending = self.pending.len();
        self.report
    }

    /// Admits a polled record, or holds it (and pauses its partition) while the tracker is
    /// full or earlier records of its partition wait: a record is never skipped unchecked,
    /// since the tracker would count a skipped offset finished once a later one is acked.
    async fn offer(&mut self, record: Record) {
        let partition = record.partition;
        if let Some(waiting) = self.held.get_mut(&partition) {
            waiting.push_back(record);
            return;
        }
        if let Some(record) = self.admit(record) {
            crate::reach!("compensator.held");
            self.held.entry(partition).or_default().push_back(record);
            if let Err(error) = self.log.pause(&[partition]).await {
                tracing::warn!(%error, partition, "compensator pause failed");
            }
        }
    }

    /// Re-offers held records, oldest first; resumes a partition whose backlog cleared.
    async fn retry_held(&mut self) {
        let partitions: Vec<PartitionId> = self.held.keys().copied().collect();
        for partition in partitions {
            let mut waiting = self.held.remove(&partition).unwrap_or_default();
            while let Some(record) = waiting.pop_front() {
                if let Some(record) = self.admit(record) {
                    waiting.push_front(record);
                    break;
                }
            }
            if !waiting.is_empty() {
                self.held.insert(partition, waiting);
            } else if let Err(error) = self.log.resume(&[partition]).await {
                // Still paused: an empty backlog keeps the entry so the next round resumes it.
                tracing::warn!(%error, partition, "compensator resume failed");
                self.held.insert(partition, waiting);
            }
        }
    }

    /// Puts a polled record into the pending table, or resolves it at once when there is
    /// nothing to check (undecodable: the main group dead-letters it; a re-send: its
    /// original is the one being tracked). Gives the record back when the tracker is full.
    fn admit(&mut self, record: Record) -> Option<Record> {
        let ticket = match self.tracker.track(record.partition, record.offset) {
            Ok((ticket, Tracked::New)) => ticket,
            Ok((_, Tracked::AlreadyDone)) => return None,
            Err(TrackError::Full { .. }) => return Some(record),
            Err(error @ (TrackError::Backwards { .. } | TrackError::NotAssigned { .. })) => {
                // Below what this assignment already tracks (a redelivery of a record it
                // holds or resolved), or a partition it no longer owns (the new owner checks
                // it): skipping loses nothing.
                tracing::debug!(%error, "compensator skipped a record");
                return None;
            }
        };
        let resend = header(&record.headers, HEADER_ATTEMPTS).is_some();
        match OrderEvent::decode(&record.payload) {
            Ok(event) if !resend => {
                let key = IdempotencyKey::of(&event);
                let due = Instant::now() + self.config.delay;
                self.pending.insert(
                    (record.partition, record.offset),
                    Pending {
                        ticket,
                        record,
                        event,
                        key,
                        due,
                        attempts: 0,
                    },
                );
            }
            _ => self.resolve(ticket),
        }
        None
    }

    /// Checks every due event whose offset the main group has committed past.
    async fn check_due(&mut self) -> Result<(), PortError> {
        let now = Instant::now();
        let partitions: Vec<PartitionId> = {
            let mut partitions: Vec<PartitionId> = self.pending.keys().map(|(p, _)| *p).collect();
            partitions.dedup();
            partitions
        };
        if partitions.is_empty() {
            return Ok(());
        }
        let committed = self
            .main_offsets
            .committed(&self.config.main_group, &partitions)
            .await?;
        let passed: BTreeMap<PartitionId, i64> = partitions
            .iter()
            .zip(committed)
            .filter_map(|(partition, offset)| offset.map(|offset| (*partition, offset)))
            .collect();
        let due: Vec<(PartitionId, i64)> = self
            .pending
            .iter()
            .filter(|((partition, offset), entry)| {
                entry.due <= now && passed.get(partition).is_some_and(|c| offset < c)
            })
            .map(|(slot, _)| *slot)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let order_ids: BTreeSet<String> = due
            .iter()
            .filter_map(|slot| self.pending.get(slot))
            .map(|entry| entry.event.order_id.clone())
            .collect();
        let order_ids: Vec<String> = order_ids.into_iter().collect();
        let rows = self.store.load_rows(&order_ids).await?;
        let present: Vec<bool> = due
            .iter()
            .map(|slot| {
                self.pending.get(slot).is_some_and(|entry| {
                    rows.get(&entry.event.order_id)
                        .is_some_and(|row| row.reflects(&entry.event))
                })
            })
            .collect();
        for (slot, applied) in due.into_iter().zip(present) {
            if applied {
                if let Some(entry) = self.pending.remove(&slot) {
                    self.report.confirmed += 1;
                    self.resolve(entry.ticket);
                }
            } else {
                self.resend(slot).await?;
            }
        }
        Ok(())
    }

    /// Re-publishes one missing event, or dead-letters it after `attempts_max` re-sends.
    async fn resend(&mut self, slot: (PartitionId, i64)) -> Result<(), PortError> {
        let Some(entry) = self.pending.get(&slot) else {
            return Ok(());
        };
        if entry.attempts >= self.config.attempts_max {
            let letter = dead_letter(
                &self.config.dead_letter_topic,
                &entry.record,
                "effect still missing after every compensation attempt",
                entry.attempts,
            );
            self.publisher.publish(letter).await?;
            if let Some(entry) = self.pending.remove(&slot) {
                tracing::error!(key = ?entry.key, attempts = entry.attempts, "compensation gave up; event dead-lettered");
                self.report.dead_lettered.push(entry.key);
                self.resolve(entry.ticket);
            }
            return Ok(());
        }
        let attempts = entry.attempts + 1;
        let message = OutboundMessage {
            topic: self.config.topic.clone(),
            key: entry.event.order_id.as_bytes().to_vec(),
            payload: entry.event.payload.clone(),
            headers: vec![(
                HEADER_ATTEMPTS.to_owned(),
                attempts.to_string().into_bytes(),
            )],
        };
        self.publisher.publish(message).await?;
        self.report.resent += 1;
        crate::reach!("compensator.resent");
        tracing::warn!(key = ?entry.key, attempts, "effect missing; event re-sent");
        if let Some(entry) = self.pending.get_mut(&slot) {
            entry.attempts = attempts;
            entry.due = Instant::now() + self.config.delay;
        }
        Ok(())
    }

    fn resolve(&mut self, ticket: Ticket) {
        if let Err(error) = self.tracker.ack(ticket) {
            tracing::debug!(%error, "compensator ack refused (partition moved)");
        }
    }

    /// Applies one poll's rebalance events in order; what finished in the partitions given up
    /// is committed once per run of revocations, not once per partition.
    async fn rebalance(&mut self, changes: Vec<Rebalance>) {
        let mut revoked = Vec::new();
        for change in changes {
            match change {
                Rebalance::Revoked { partition } => {
                    self.pending.retain(|(p, _), _| *p != partition);
                    // The next owner polls the held records again.
                    self.held.remove(&partition);
                    revoked.extend(self.tracker.revoke(partition).map(OffsetCommit::from));
                }
                Rebalance::Assigned {
                    partition,
                    committed,
                } => {
                    self.commit_revoked(&std::mem::take(&mut revoked)).await;
                    self.tracker.assign(partition, committed.as_ref());
                    // The client may keep a partition paused across its revoke (librdkafka
                    // keeps the pause on the partition object): resume it, or it is never
                    // fetched again.
                    if let Err(error) = self.log.resume(&[partition]).await {
                        // An empty backlog entry: the next round of `retry_held` resumes it.
                        tracing::warn!(%error, partition, "compensator resume on assign failed");
                        self.held.entry(partition).or_default();
                    }
                }
            }
        }
        self.commit_revoked(&revoked).await;
    }

    async fn commit_revoked(&mut self, offsets: &[OffsetCommit]) {
        if offsets.is_empty() {
            return;
        }
        if let Err(error) = self.log.commit(offsets, CommitMode::Sync).await {
            tracing::info!(%error, "compensator commit on revoke failed");
        }
    }

    async fn commit(&mut self, mode: CommitMode) {
        let offsets: Vec<OffsetCommit> = self
            .tracker
            .snapshots()
            .into_iter()
            .map(OffsetCommit::from)
            .collect();
        if offsets.is_empty() {
            return;
        }
        if let Err(error) = self.log.commit(&offsets, mode).await {
            tracing::warn!(%error, "compensator commit failed; the next one covers it");
        }
    }
}

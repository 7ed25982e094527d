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

use super::dead_letter::{dead_letter, header, HEADER_ATTEMPTS};
use super::member::{Member, MemberConfig};
use super::metrics::Metrics;
use super::progress::FromCommit;
use super::shutdown::Shutdown;
use crate::event::OrderEvent;
use crate::idempotency::IdempotencyKey;
use crate::offsets::{Limits, SharedTracker, Ticket};
use crate::ports::{
    CommitMode, EventLog, GroupOffsets, NoProbe, OrderStore, OutboundMessage, PartitionId,
    PortError, Publisher, Record,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The longest wait between retries of a failed poll.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

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

/// The tracked, unresolved records, by partition and offset.
struct PendingTable {
    entries: BTreeMap<(PartitionId, i64), Pending>,
    /// The member's tracker: a record is acked to it once resolved.
    tracker: SharedTracker,
    delay: Duration,
}

impl PendingTable {
    /// Puts an admitted record into the table, or resolves it at once when there is nothing
    /// to check (undecodable: the main group dead-letters it; a re-send: its original is the
    /// one being tracked).
    fn admit(&mut self, ticket: Ticket, record: Record) {
        let resend = header(&record.headers, HEADER_ATTEMPTS).is_some();
        match OrderEvent::decode_shared(&record.payload) {
            Ok(event) if !resend => {
                let key = IdempotencyKey::of(&event);
                let due = Instant::now() + self.delay;
                self.entries.insert(
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
    }

    fn resolve(&self, ticket: Ticket) {
        if let Err(error) = self.tracker.ack(ticket) {
            tracing::debug!(%error, "compensator ack refused (partition moved)");
        }
    }

    /// Forgets a partition given up: its next owner checks its records.
    fn revoked(&mut self, partition: PartitionId) {
        self.entries.retain(|(p, _), _| *p != partition);
    }
}

/// The compensating consumer.
pub struct Compensator<L, G, S, P> {
    config: CompensatorConfig,
    member: Member<L>,
    main_offsets: G,
    store: S,
    publisher: P,
    pending: PendingTable,
    report: CompensatorReport,
}

impl<L: EventLog, G: GroupOffsets, S: OrderStore, P: Publisher> Compensator<L, G, S, P> {
    pub fn new(config: CompensatorConfig, log: L, main_offsets: G, store: S, publisher: P) -> Self {
        let tracker = SharedTracker::new(config.limits);
        // Nothing of a revoked partition finishes by waiting (its records wait for checks, not
        // for workers), so revokes commit at once.
        let member = Member::new(
            MemberConfig {
                batch_size: config.batch_size,
                poll_timeout: config.poll_timeout,
                revoke_grace: Duration::ZERO,
                backoff_initial: config.poll_timeout,
                backoff_max: config.poll_timeout.max(BACKOFF_MAX),
                jitter_seed: 0,
            },
            log,
            tracker.clone(),
            Arc::new(Metrics::new()),
        );
        Compensator {
            pending: PendingTable {
                entries: BTreeMap::new(),
                tracker,
                delay: config.delay,
            },
            config,
            member,
            main_offsets,
            store,
            publisher,
            report: CompensatorReport::default(),
        }
    }

    /// Runs until shutdown, then commits what is resolved.
    pub async fn run(mut self, shutdown: Shutdown) -> CompensatorReport {
        let mut next_check = Instant::now() + self.config.check_interval;
        while !shutdown.requested() {
            let polled = self.member.poll(&NoProbe, &FromCommit).await;
            for revoked in polled.revoked {
                self.pending.revoked(revoked.partition);
            }
            let pending = &mut self.pending;
            self.member
                .offer(polled.records, |t, r| pending.admit(t, r))
                .await;
            if Instant::now() >= next_check {
                if let Err(error) = self.check_due().await {
                    crate::reach!("compensator.check_failed");
                    tracing::warn!(%error, "compensation check failed; retrying next round");
                }
                let pending = &mut self.pending;
                self.member.retry_held(|t, r| pending.admit(t, r)).await;
                self.member
                    .commit_changed(CommitMode::Async, &NoProbe)
                    .await;
                next_check = Instant::now() + self.config.check_interval;
            }
        }
        self.member.commit_changed(CommitMode::Sync, &NoProbe).await;
        self.report.pending = self.pending.entries.len();
        self.report
    }

    /// Checks every due event whose offset the main group has committed past.
    async fn check_due(&mut self) -> Result<(), PortError> {
        let now = Instant::now();
        let partitions: Vec<PartitionId> = {
            let mut partitions: Vec<PartitionId> =
                self.pending.entries.keys().map(|(p, _)| *p).collect();
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
            .entries
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
            .filter_map(|slot| self.pending.entries.get(slot))
            .map(|entry| entry.event.order_id.clone())
            .collect();
        let order_ids: Vec<String> = order_ids.into_iter().collect();
        let rows = self.store.load_rows(&order_ids).await?;
        let present: Vec<bool> = due
            .iter()
            .map(|slot| {
                self.pending.entries.get(slot).is_some_and(|entry| {
                    rows.get(&entry.event.order_id)
                        .is_some_and(|row| row.reflects(&entry.event))
                })
            })
            .collect();
        for (slot, applied) in due.into_iter().zip(present) {
            if applied {
                if let Some(entry) = self.pending.entries.remove(&slot) {
                    self.report.confirmed += 1;
                    self.pending.resolve(entry.ticket);
                }
            } else {
                self.resend(slot).await?;
            }
        }
        Ok(())
    }

    /// Re-publishes one missing event, or dead-letters it after `attempts_max` re-sends.
    async fn resend(&mut self, slot: (PartitionId, i64)) -> Result<(), PortError> {
        let Some(entry) = self.pending.entries.get(&slot) else {
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
            if let Some(entry) = self.pending.entries.remove(&slot) {
                tracing::error!(key = ?entry.key, attempts = entry.attempts, "compensation gave up; event dead-lettered");
                self.report.dead_lettered.push(entry.key);
                self.pending.resolve(entry.ticket);
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
        if let Some(entry) = self.pending.entries.get_mut(&slot) {
            entry.attempts = attempts;
            entry.due = Instant::now() + self.config.delay;
        }
        Ok(())
    }
}

//! What a process saw, as the checker's steps: the recording wrappers record what the ports
//! did (polls, rebalances and commit answers: [`RecordingLog`]; store outcomes:
//! [`RecordingStore`]; dead letters: [`RecordingPublisher`]) into a [`Sink`]: a real run's
//! file ([`super::file::Recorder`]) or the simulator's history. `holdfast produce` records
//! its sends itself, each once with its final outcome.

use super::history::{digest, Step};
use crate::event::OrderEvent;
use crate::pipeline::dead_letter::{header, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION};
use crate::ports::{
    ApplyOutcome, CommitMode, CommittedOffset, Delivery, EventLog, OffsetCommit, OrderStore,
    OutboundMessage, PartitionId, Polled, PortError, ProgressWrite, Publisher, Rebalance,
};
use crate::widetable::OrderRow;
use std::collections::BTreeMap;
use std::time::Duration;

/// One step as the process that took it saw it: a [`Step`] without the member, which the
/// sink names once (a history file's header, the simulator's member sink).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A send finished: what the producer was told, and where the broker put it.
    Sent {
        event_id: String,
        acknowledged: bool,
        delivered: Option<(PartitionId, i64)>,
    },
    Polled {
        partition: PartitionId,
        offset: i64,
        digest: u64,
    },
    Stored {
        event_id: String,
        applied: bool,
    },
    Assigned {
        partition: PartitionId,
        generation: i32,
    },
    Revoked {
        partition: PartitionId,
    },
    CommitSent {
        partition: PartitionId,
        offset: i64,
    },
    Committed {
        partition: PartitionId,
        offset: i64,
    },
    DeadLettered {
        partition: PartitionId,
        offset: i64,
    },
}

impl Seen {
    /// The step, taken by `member`.
    pub fn step(self, member: &str) -> Step {
        let member = || member.to_owned();
        match self {
            Seen::Sent {
                event_id,
                acknowledged,
                delivered,
            } => Step::Sent {
                event_id,
                acknowledged,
                delivered,
            },
            Seen::Polled {
                partition,
                offset,
                digest,
            } => Step::Polled {
                member: member(),
                partition,
                offset,
                digest,
            },
            Seen::Stored { event_id, applied } => Step::Stored {
                member: member(),
                event_id,
                applied,
            },
            Seen::Assigned {
                partition,
                generation,
            } => Step::Assigned {
                member: member(),
                partition,
                generation,
            },
            Seen::Revoked { partition } => Step::Revoked {
                member: member(),
                partition,
            },
            Seen::CommitSent { partition, offset } => Step::CommitSent {
                member: member(),
                partition,
                offset,
            },
            Seen::Committed { partition, offset } => Step::Committed {
                member: member(),
                partition,
                offset,
            },
            Seen::DeadLettered { partition, offset } => Step::DeadLettered { partition, offset },
        }
    }
}

/// Where the recording wrappers put what they saw: a real run's [`super::file::Recorder`]
/// (its file, wall clock), or the simulator's history (virtual time, with its online checks).
pub trait Sink: Send + Sync {
    /// Records what was seen now, in order (one message per poll, transaction or commit, so
    /// that a real run pays for the channel once per batch).
    fn record(&self, seen: Vec<Seen>);
    /// The client accepted a commit of `offset` (under [`CommitMode::Sync`], the coordinator
    /// stored it).
    fn commit_accepted(&self, partition: PartitionId, offset: i64, mode: CommitMode);
}

/// An [`EventLog`] that records rebalances, polled records, commits sent and the answers to
/// them.
pub struct RecordingLog<L, K> {
    pub inner: L,
    pub sink: K,
}

impl<L: EventLog, K: Sink> EventLog for RecordingLog<L, K> {
    async fn poll(&mut self, records_max: usize, timeout: Duration) -> Result<Polled, PortError> {
        let polled = self.inner.poll(records_max, timeout).await?;
        let mut seen = Vec::with_capacity(
            polled.rebalances.len() + polled.records.len() + polled.commits_answered.len(),
        );
        seen.extend(
            polled
                .commits_answered
                .iter()
                .map(|&(partition, offset)| Seen::Committed { partition, offset }),
        );
        seen.extend(polled.rebalances.iter().map(|change| match change {
            Rebalance::Assigned {
                partition,
                generation,
                ..
            } => Seen::Assigned {
                partition: *partition,
                generation: *generation,
            },
            Rebalance::Revoked { partition } => Seen::Revoked {
                partition: *partition,
            },
        }));
        seen.extend(polled.records.iter().map(|record| Seen::Polled {
            partition: record.partition,
            offset: record.offset,
            digest: digest(&record.payload),
        }));
        self.sink.record(seen);
        Ok(polled)
    }

    async fn commit(
        &mut self,
        offsets: &[OffsetCommit],
        mode: CommitMode,
    ) -> Result<(), PortError> {
        self.inner.commit(offsets, mode).await?;
        let sent = offsets.iter().map(|commit| Seen::CommitSent {
            partition: commit.partition,
            offset: commit.offset,
        });
        self.sink.record(sent.collect());
        for commit in offsets {
            self.sink
                .commit_accepted(commit.partition, commit.offset, mode);
        }
        Ok(())
    }

    async fn pause(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        self.inner.pause(partitions).await
    }

    async fn resume(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        self.inner.resume(partitions).await
    }
}

/// An [`OrderStore`] that records what each committed transaction did with its events.
pub struct RecordingStore<S, K> {
    pub inner: S,
    pub sink: K,
}

impl<S: OrderStore, K: Sink> OrderStore for RecordingStore<S, K> {
    async fn apply_batch(
        &self,
        events: &[OrderEvent],
        progress: &[ProgressWrite],
    ) -> Result<Vec<ApplyOutcome>, PortError> {
        let outcomes = self.inner.apply_batch(events, progress).await?;
        let seen = events
            .iter()
            .zip(&outcomes)
            .map(|(event, outcome)| Seen::Stored {
                event_id: event.event_id.clone(),
                applied: *outcome == ApplyOutcome::Applied,
            });
        self.sink.record(seen.collect());
        Ok(outcomes)
    }

    async fn load_rows(
        &self,
        order_ids: &[String],
    ) -> Result<BTreeMap<String, OrderRow>, PortError> {
        self.inner.load_rows(order_ids).await
    }

    async fn claim_progress(
        &self,
        partition: PartitionId,
        owner: i32,
    ) -> Result<Option<CommittedOffset>, PortError> {
        self.inner.claim_progress(partition, owner).await
    }
}

/// A dead-letter [`Publisher`] that records each acknowledged letter's source record.
pub struct RecordingPublisher<P, K> {
    pub inner: P,
    pub sink: K,
}

impl<P: Publisher, K: Sink> Publisher for RecordingPublisher<P, K> {
    async fn publish(&self, message: OutboundMessage) -> Result<Delivery, PortError> {
        let source =
            |name| header(&message.headers, name).and_then(|value| value.parse::<i64>().ok());
        let source = source(HEADER_SOURCE_PARTITION).zip(source(HEADER_SOURCE_OFFSET));
        let delivery = self.inner.publish(message).await?;
        if let Some((partition, offset)) = source {
            self.sink.record(vec![Seen::DeadLettered {
                partition: partition as PartitionId,
                offset,
            }]);
        }
        Ok(delivery)
    }
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;

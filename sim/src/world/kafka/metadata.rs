//! A client's cache of partition leaders, refreshed from any broker that answers.
//!
//! As Kafka's clients do since KIP-320, the cache never goes back to an older leader epoch:
//! a broker cut off from the controller still answers metadata requests from its last
//! partition table, which can name itself leader of a partition that moved on. A client
//! that took that answer would fetch from the stale leader, whose shorter log answers
//! "offset out of range", and reset its position to the start of the log.

use super::broker::{BrokerAnswer, BrokerRequest};
use super::{broker_address, PartitionLeadership};
use crate::world::rpc;
use crate::world::transport::Endpoint;
use holdfast::ports::PartitionId;
use std::time::Duration;

/// Partition leaders as last heard from a broker.
#[derive(Clone, Debug)]
pub struct MetadataCache {
    brokers: usize,
    next_broker: usize,
    leaders: Vec<Option<usize>>,
    /// The newest leader epoch seen per partition (-1: none yet), kept when a leader is
    /// forgotten.
    epochs: Vec<i32>,
}

impl MetadataCache {
    /// An empty cache for a cluster of `brokers` brokers and `partitions` partitions.
    pub fn new(brokers: usize, partitions: i32) -> MetadataCache {
        MetadataCache {
            brokers,
            next_broker: 0,
            leaders: vec![None; usize::try_from(partitions).unwrap_or(0)],
            epochs: vec![-1; usize::try_from(partitions).unwrap_or(0)],
        }
    }

    /// The cached leader of `partition`.
    pub fn leader(&self, partition: PartitionId) -> Option<usize> {
        let index = usize::try_from(partition).ok()?;
        self.leaders.get(index).copied().flatten()
    }

    /// Forgets a leader that failed us, so the next call refreshes.
    pub fn forget(&mut self, partition: PartitionId) {
        if let Some(slot) = usize::try_from(partition)
            .ok()
            .and_then(|index| self.leaders.get_mut(index))
        {
            *slot = None;
        }
    }

    /// Asks brokers in turn until one answers with a non-empty table.
    pub async fn refresh(&mut self, endpoint: &Endpoint, timeout: Duration) -> bool {
        for _ in 0..self.brokers {
            let broker = self.next_broker % self.brokers.max(1);
            self.next_broker += 1;
            let answer = rpc::call(
                endpoint,
                broker_address(broker),
                BrokerRequest::Metadata,
                timeout,
            );
            if let Some(BrokerAnswer::Metadata(states)) = answer.await {
                if !states.is_empty() {
                    self.apply(&states);
                    return true;
                }
            }
        }
        false
    }

    /// Takes each partition's entry unless it is older than one already seen: an entry of
    /// the same epoch may still tell a leader that was forgotten.
    fn apply(&mut self, states: &[PartitionLeadership]) {
        for state in states {
            let Some(index) = usize::try_from(state.partition).ok() else {
                continue;
            };
            let (Some(slot), Some(epoch)) =
                (self.leaders.get_mut(index), self.epochs.get_mut(index))
            else {
                continue;
            };
            if state.leader_epoch < *epoch {
                continue;
            }
            *epoch = state.leader_epoch;
            *slot = state.leader;
        }
    }

    /// The leader of `partition`, refreshing once if unknown.
    pub async fn leader_or_refresh(
        &mut self,
        endpoint: &Endpoint,
        partition: PartitionId,
        timeout: Duration,
    ) -> Option<usize> {
        if self.leader(partition).is_none() {
            self.refresh(endpoint, timeout).await;
        }
        self.leader(partition)
    }
}

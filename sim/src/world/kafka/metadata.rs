//! A client's cache of partition leaders, refreshed from any broker that answers.

use super::broker::{BrokerAnswer, BrokerRequest};
use super::{broker_address, PartitionLeadership};
use crate::world::rpc;
use holdfast::ports::PartitionId;
use madsim::net::Endpoint;
use std::time::Duration;

/// Partition leaders as last heard from a broker.
#[derive(Clone, Debug)]
pub struct MetadataCache {
    brokers: usize,
    next_broker: usize,
    leaders: Vec<Option<usize>>,
}

impl MetadataCache {
    /// An empty cache for a cluster of `brokers` brokers and `partitions` partitions.
    pub fn new(brokers: usize, partitions: i32) -> MetadataCache {
        MetadataCache {
            brokers,
            next_broker: 0,
            leaders: vec![None; usize::try_from(partitions).unwrap_or(0)],
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

    fn apply(&mut self, states: &[PartitionLeadership]) {
        for state in states {
            if let Some(slot) = usize::try_from(state.partition)
                .ok()
                .and_then(|index| self.leaders.get_mut(index))
            {
                *slot = state.leader;
            }
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

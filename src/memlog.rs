//! An in-memory log: topics, partitions, one consumer group's committed offsets. It
//! implements [`EventLog`], [`Publisher`] and [`GroupOffsets`] for tests and for the CLI's
//! embedded demo; it is not a broker model (the simulator has that) and never loses or
//! reorders anything by itself.

use crate::partition::partition_for_key;
use crate::ports::{
    CommitMode, CommittedOffset, Delivery, EventLog, GroupOffsets, OffsetCommit, OutboundMessage,
    PartitionId, Polled, PortError, Publisher, Rebalance, Record,
};
pub use crate::workload::Published;
use crate::workload::Workload;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, Default)]
struct State {
    topics: BTreeMap<String, Vec<Vec<Record>>>,
    committed: BTreeMap<(String, PartitionId), CommittedOffset>,
    /// Each group's generation: a member's first poll (its join) starts the next one.
    generations: BTreeMap<String, i32>,
    unavailable: bool,
}

/// A shared in-memory broker. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct MemoryBroker {
    state: Arc<Mutex<State>>,
}

impl MemoryBroker {
    /// A broker with one topic of `partitions` partitions.
    pub fn new(topic: &str, partitions: i32) -> MemoryBroker {
        let broker = MemoryBroker::default();
        broker.create_topic(topic, partitions);
        broker
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let count = usize::try_from(partitions.max(1)).unwrap_or(1);
        self.lock()
            .topics
            .entry(topic.to_owned())
            .or_insert_with(|| vec![Vec::new(); count]);
    }

    /// Publishes every message of `workload` to `topic`, in order and keyed by order id, and
    /// returns the ground truth to check a consumer against.
    pub async fn publish_workload(
        &self,
        topic: &str,
        workload: &Workload,
    ) -> Result<Published, PortError> {
        for message in &workload.messages {
            self.publish(OutboundMessage {
                topic: topic.to_owned(),
                key: message.key.clone(),
                payload: message.payload.clone(),
                headers: Vec::new(),
            })
            .await?;
        }
        // This log never loses a message: all of it is acknowledged.
        Ok(workload.published())
    }

    /// Makes every call fail with `Unavailable` (an outage), or heals it.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.lock().unavailable = unavailable;
    }

    /// Every record of a topic, partition by partition.
    pub fn records(&self, topic: &str) -> Vec<Record> {
        self.lock()
            .topics
            .get(topic)
            .map(|parts| parts.iter().flatten().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether `group` committed the end of every non-empty partition of `topic`.
    pub fn caught_up(&self, topic: &str, group: &str) -> bool {
        let state = self.lock();
        let Some(parts) = state.topics.get(topic) else {
            return true;
        };
        (0..).zip(parts).all(|(partition, log): (PartitionId, _)| {
            let end = log.len() as i64;
            end == 0
                || state
                    .committed
                    .get(&(group.to_owned(), partition))
                    .is_some_and(|committed| committed.offset == end)
        })
    }

    /// Waits until `group` committed the end of every non-empty partition of `topic`, looking
    /// every `interval`. After `timeout`, an error that says how far the group got.
    pub async fn wait_caught_up(
        &self,
        topic: &str,
        group: &str,
        interval: Duration,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.caught_up(topic, group) {
            if tokio::time::Instant::now() >= deadline {
                let committed: BTreeMap<PartitionId, i64> = self
                    .committed(group)
                    .into_iter()
                    .map(|(partition, committed)| (partition, committed.offset))
                    .collect();
                return Err(format!(
                    "group {group} did not commit the end of topic {topic} within {timeout:?}: \
                     committed {committed:?} of {} records",
                    self.records(topic).len()
                ));
            }
            tokio::time::sleep(interval).await;
        }
        Ok(())
    }

    /// A group's committed offsets.
    pub fn committed(&self, group: &str) -> BTreeMap<PartitionId, CommittedOffset> {
        self.lock()
            .committed
            .iter()
            .filter(|((g, _), _)| g == group)
            .map(|((_, partition), committed)| (*partition, committed.clone()))
            .collect()
    }

    /// A consumer of `topic` in `group`, owning every partition.
    pub fn consumer(&self, topic: &str, group: &str) -> MemoryLog {
        MemoryLog {
            broker: self.clone(),
            topic: topic.to_owned(),
            group: group.to_owned(),
            positions: None,
            paused: BTreeSet::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the log from the others.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_up(state: &State) -> Result<(), PortError> {
        if state.unavailable {
            return Err(PortError::Unavailable {
                service: "memory log",
                detail: "switched off".into(),
            });
        }
        Ok(())
    }
}

/// One group member of a [`MemoryBroker`] topic.
#[derive(Debug)]
pub struct MemoryLog {
    broker: MemoryBroker,
    topic: String,
    group: String,
    /// Next offset per partition; `None` until the first poll assigns everything.
    positions: Option<BTreeMap<PartitionId, i64>>,
    paused: BTreeSet<PartitionId>,
}

impl EventLog for MemoryLog {
    async fn poll(&mut self, records_max: usize, timeout: Duration) -> Result<Polled, PortError> {
        let mut polled = Polled::default();
        {
            let mut state = self.broker.lock();
            MemoryBroker::check_up(&state)?;
            let partitions = state.topics.get(&self.topic).map_or(0, Vec::len);
            if self.positions.is_none() {
                let generation = {
                    let generation = state.generations.entry(self.group.clone()).or_insert(0);
                    *generation += 1;
                    *generation
                };
                let mut positions = BTreeMap::new();
                for index in 0..partitions {
                    let partition = index as PartitionId;
                    let committed = state
                        .committed
                        .get(&(self.group.clone(), partition))
                        .cloned();
                    positions.insert(partition, committed.as_ref().map_or(0, |c| c.offset));
                    polled.rebalances.push(Rebalance::Assigned {
                        partition,
                        committed,
                        generation,
                    });
                }
                self.positions = Some(positions);
            }
            let parts = state.topics.get(&self.topic);
            if let (Some(positions), Some(parts)) = (self.positions.as_mut(), parts) {
                for (partition, position) in positions.iter_mut() {
                    if self.paused.contains(partition) {
                        continue;
                    }
                    let log = &parts[*partition as usize];
                    let start = usize::try_from(*position).unwrap_or(0).min(log.len());
                    let room = records_max.saturating_sub(polled.records.len());
                    let taken: Vec<Record> = log[start..].iter().take(room).cloned().collect();
                    *position += taken.len() as i64;
                    polled.records.extend(taken);
                }
            }
        }
        if polled.records.is_empty() && polled.rebalances.is_empty() {
            tokio::time::sleep(timeout.min(Duration::from_millis(5))).await;
        } else {
            // A real poll crosses the network; let workers run in between.
            tokio::task::yield_now().await;
        }
        Ok(polled)
    }

    async fn commit(
        &mut self,
        offsets: &[OffsetCommit],
        _mode: CommitMode,
    ) -> Result<(), PortError> {
        let mut state = self.broker.lock();
        MemoryBroker::check_up(&state)?;
        for commit in offsets {
            state.committed.insert(
                (self.group.clone(), commit.partition),
                CommittedOffset {
                    offset: commit.offset,
                    metadata: Some(commit.metadata.clone()),
                },
            );
        }
        Ok(())
    }

    async fn pause(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        self.paused.extend(partitions);
        Ok(())
    }

    async fn resume(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        for partition in partitions {
            self.paused.remove(partition);
        }
        Ok(())
    }
}

impl Publisher for MemoryBroker {
    async fn publish(&self, message: OutboundMessage) -> Result<Delivery, PortError> {
        let mut state = self.lock();
        MemoryBroker::check_up(&state)?;
        let parts = state
            .topics
            .entry(message.topic.clone())
            .or_insert_with(|| vec![Vec::new()]);
        let partition = partition_for_key(&message.key, parts.len() as i32).map_err(|error| {
            PortError::Rejected {
                service: "memory log",
                detail: error.to_string(),
            }
        })?;
        let log = &mut parts[partition as usize];
        let offset = log.len() as i64;
        log.push(Record {
            partition,
            offset,
            key: Some(message.key),
            payload: message.payload,
            headers: message.headers,
        });
        Ok(Delivery { partition, offset })
    }
}

impl GroupOffsets for MemoryBroker {
    async fn committed(
        &self,
        group: &str,
        partitions: &[PartitionId],
    ) -> Result<Vec<Option<i64>>, PortError> {
        let state = self.lock();
        MemoryBroker::check_up(&state)?;
        Ok(partitions
            .iter()
            .map(|partition| {
                state
                    .committed
                    .get(&(group.to_owned(), *partition))
                    .map(|c| c.offset)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::WorkloadConfig;

    #[tokio::test]
    async fn a_group_is_caught_up_once_it_committed_every_partition_end() {
        let broker = MemoryBroker::new("orders", 4);
        let config = WorkloadConfig {
            orders: 20,
            ..WorkloadConfig::default()
        };
        let workload = Workload::generate(&config).unwrap();
        let published = broker.publish_workload("orders", &workload).await.unwrap();
        assert_eq!(
            published.valid + published.malformed,
            workload.messages.len()
        );
        assert!(!broker.caught_up("orders", "group"));
        let mut ends = BTreeMap::new();
        for record in broker.records("orders") {
            ends.insert(record.partition, record.offset + 1);
        }
        let mut ends = ends.into_iter();
        let (first, first_end) = ends.next().unwrap();
        let commit = |partition, offset| OffsetCommit {
            partition,
            offset,
            metadata: String::new(),
        };
        let mut log = broker.consumer("orders", "group");
        log.commit(&[commit(first, first_end)], CommitMode::Sync)
            .await
            .unwrap();
        assert!(
            !broker.caught_up("orders", "group"),
            "one partition is not all"
        );
        let rest: Vec<OffsetCommit> = ends.map(|(p, end)| commit(p, end)).collect();
        log.commit(&rest, CommitMode::Sync).await.unwrap();
        assert!(broker.caught_up("orders", "group"));
        assert!(!broker.caught_up("orders", "other-group"));
        let (tick, limit) = (Duration::from_millis(1), Duration::from_millis(20));
        assert_eq!(
            broker.wait_caught_up("orders", "group", tick, limit).await,
            Ok(())
        );
        let waited = broker.wait_caught_up("orders", "other-group", tick, limit);
        let error = waited.await.unwrap_err();
        assert!(
            error.contains("group other-group did not commit the end of topic orders")
                && error.contains(&format!("of {} records", workload.messages.len())),
            "{error}"
        );
    }
}

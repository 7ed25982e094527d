//! The [`EventLog`]: one consumer-group member on a `BaseConsumer`.

use super::answers::Answers;
use super::errors::port_error;
use super::settings::{config_error, connect_error, KafkaSettings};
use super::{COMMITTED_TIMEOUT, LOG};
use crate::adapters::{rejected, AdapterError};
use crate::ports::{
    CommitMode, CommittedOffset, EventLog, OffsetCommit, PartitionId, Polled, PortError,
    Rebalance as LogRebalance, Record,
};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode as KafkaCommitMode, Consumer, ConsumerContext, Rebalance,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub(super) fn owned_record(message: &impl Message) -> Record {
    Record {
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message
            .payload()
            .map(bytes::Bytes::copy_from_slice)
            .unwrap_or_default(),
        headers: message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| {
                        (
                            header.key.to_owned(),
                            header.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The consumer's context: turns librdkafka's rebalance callbacks into [`LogRebalance`]
/// events for the next poll, keeps the commits the coordinator answered for it too, and logs
/// failed commits.
struct LogContext {
    topic: String,
    events: Mutex<VecDeque<LogRebalance>>,
    answered: Mutex<Answers>,
    /// Commit answers served by polls so far (read twice per record polled: no lock).
    served: AtomicU64,
}

impl LogContext {
    fn events(&self) -> MutexGuard<'_, VecDeque<LogRebalance>> {
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn answered(&self) -> MutexGuard<'_, Answers> {
        self.answered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the group had committed for `assigned`; on failure every partition reports
    /// `None` (the tracker then starts at the first offset it sees: redeliveries, no loss).
    fn committed(
        &self,
        consumer: &BaseConsumer<LogContext>,
        assigned: &TopicPartitionList,
    ) -> BTreeMap<PartitionId, CommittedOffset> {
        let mut committed = BTreeMap::new();
        match consumer.committed_offsets(assigned.clone(), COMMITTED_TIMEOUT) {
            Ok(list) => {
                for element in list.elements_for_topic(&self.topic) {
                    if let Offset::Offset(offset) = element.offset() {
                        let metadata = element.metadata();
                        committed.insert(
                            element.partition(),
                            CommittedOffset {
                                offset,
                                metadata: (!metadata.is_empty()).then(|| metadata.to_owned()),
                            },
                        );
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "reading committed offsets on assignment failed; starting without them");
            }
        }
        committed
    }
}

/// The group generation of the assignment being served (`-1` before the group's sync
/// answered). rust-rdkafka does not expose it; librdkafka's group metadata carries it.
fn generation(consumer: &BaseConsumer<LogContext>) -> i32 {
    use rdkafka::bindings::{
        rd_kafka_consumer_group_metadata, rd_kafka_consumer_group_metadata_destroy,
        rd_kafka_consumer_group_metadata_generation_id,
    };
    // SAFETY: the client handle is valid for the consumer's life; the metadata returned is a
    // new object owned here, read once and destroyed.
    unsafe {
        let metadata = rd_kafka_consumer_group_metadata(consumer.client().native_ptr());
        if metadata.is_null() {
            return -1;
        }
        let generation = rd_kafka_consumer_group_metadata_generation_id(metadata);
        rd_kafka_consumer_group_metadata_destroy(metadata);
        generation
    }
}

/// Sends an asynchronous commit whose answer comes back on the consumer's queue, where the
/// next poll serves it to [`LogContext::commit_callback`]. (`rd_kafka_commit` posts an
/// asynchronous answer only to a configured `offset_commit_cb`, which rust-rdkafka does not
/// set: its answers, failures included, would be dropped unseen.)
fn commit_async(consumer: &BaseConsumer<LogContext>, list: &TopicPartitionList) -> KafkaResult<()> {
    use rdkafka::bindings::{
        rd_kafka_commit_queue, rd_kafka_queue_destroy, rd_kafka_queue_get_consumer,
    };
    // SAFETY: the client handle is valid for the consumer's life and the list outlives the
    // call (librdkafka copies it); the queue handle is a new reference, released here (the
    // queue itself is the consumer's). With no callback, the answer is an event on the queue.
    let error = unsafe {
        let client = consumer.client().native_ptr();
        let queue = rd_kafka_queue_get_consumer(client);
        if queue.is_null() {
            return consumer.commit(list, KafkaCommitMode::Async);
        }
        let error = rd_kafka_commit_queue(client, list.ptr(), queue, None, std::ptr::null_mut());
        rd_kafka_queue_destroy(queue);
        error
    };
    match RDKafkaErrorCode::from(error) {
        RDKafkaErrorCode::NoError => Ok(()),
        code => Err(KafkaError::ConsumerCommit(code)),
    }
}

impl ClientContext for LogContext {}

impl ConsumerContext for LogContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let committed = self.committed(consumer, list);
                let generation = generation(consumer);
                let mut events = self.events();
                for element in list.elements_for_topic(&self.topic) {
                    let partition = element.partition();
                    self.answered().assigned(partition);
                    events.push_back(LogRebalance::Assigned {
                        partition,
                        committed: committed.get(&partition).cloned(),
                        generation,
                    });
                }
            }
            Rebalance::Revoke(list) => {
                let mut events = self.events();
                for element in list.elements_for_topic(&self.topic) {
                    self.answered().revoked(element.partition());
                    events.push_back(LogRebalance::Revoked {
                        partition: element.partition(),
                    });
                }
            }
            Rebalance::Error(error) => {
                tracing::warn!(%error, "rebalance failed");
            }
        }
    }

    /// The answers to asynchronous commits ([`commit_async`]), served by a later poll.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        self.served.fetch_add(1, Ordering::Relaxed);
        let mut answered = self.answered();
        for element in offsets.elements_for_topic(&self.topic) {
            let stored = match (&result, element.offset()) {
                (Ok(()), Offset::Offset(offset)) => Some(offset),
                _ => None,
            };
            answered.answered(element.partition(), stored);
        }
        drop(answered);
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                tracing::warn!(%error, "asynchronous offset commit failed; the next one covers it")
            }
        }
    }
}

/// One consumer-group member reading one topic.
pub struct KafkaLog {
    consumer: Arc<BaseConsumer<LogContext>>,
    topic: String,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KafkaLog")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaLog {
    /// Joins `group` and subscribes to `topic`. Partitions arrive with the first polls.
    pub fn connect(
        settings: &KafkaSettings,
        group: &str,
        topic: &str,
    ) -> Result<KafkaLog, AdapterError> {
        settings.validate()?;
        if group.is_empty() || topic.is_empty() {
            return Err(config_error("the group and the topic must not be empty"));
        }
        let context = LogContext {
            topic: topic.to_owned(),
            events: Mutex::new(VecDeque::new()),
            answered: Mutex::new(Answers::default()),
            served: AtomicU64::new(0),
        };
        let consumer: BaseConsumer<LogContext> = settings
            .consumer_config(group)?
            .create_with_context(context)
            .map_err(|error| connect_error(&error))?;
        consumer
            .subscribe(&[topic])
            .map_err(|error| connect_error(&error))?;
        Ok(KafkaLog {
            consumer: Arc::new(consumer),
            topic: topic.to_owned(),
        })
    }

    fn partition_list(&self, offsets: &[OffsetCommit]) -> Result<TopicPartitionList, PortError> {
        let mut list = TopicPartitionList::with_capacity(offsets.len());
        for commit in offsets {
            debug_assert!(
                commit.offset >= 0,
                "negative commit offset {}",
                commit.offset
            );
            let mut element = list.add_partition(&self.topic, commit.partition);
            element
                .set_offset(Offset::Offset(commit.offset))
                .map_err(|error| rejected(LOG, error))?;
            element.set_metadata(commit.metadata.as_str());
        }
        Ok(list)
    }

    /// Why a commit of `offsets` must not be sent, if it must not: the assignment is lost, or
    /// a partition is no longer assigned to this member. librdkafka defers a commit made
    /// while the member rejoins and sends it under the new generation, which a coordinator
    /// accepts from any member for any partition (Kafka's checks the member and the
    /// generation only): it could land after the partition's new owner read its starting
    /// offset, and that owner's next commit would then move the group's offset back.
    fn refusal(&self, offsets: &[OffsetCommit]) -> Option<&'static str> {
        if self.consumer.assignment_lost() {
            return Some("the assignment was lost (the session timed out)");
        }
        // If the client cannot say what it owns, the commit goes (the coordinator decides).
        let assignment = self.consumer.assignment().ok()?;
        let owned =
            |partition: PartitionId| assignment.find_partition(&self.topic, partition).is_some();
        let moved = offsets.iter().any(|commit| !owned(commit.partition));
        moved.then_some("a partition is no longer assigned to this member")
    }

    /// `partitions` of the topic, or `None` when there are none.
    fn topic_list(&self, partitions: &[PartitionId]) -> Option<TopicPartitionList> {
        if partitions.is_empty() {
            return None;
        }
        let mut list = TopicPartitionList::with_capacity(partitions.len());
        for partition in partitions {
            list.add_partition(&self.topic, *partition);
        }
        Some(list)
    }
}

/// One blocking poll: waits up to `timeout` for the first event, then drains what is ready.
fn poll_blocking(
    consumer: &BaseConsumer<LogContext>,
    records_max: usize,
    timeout: Duration,
) -> Result<Polled, PortError> {
    let mut records: Vec<Record> = Vec::new();
    let deadline = std::time::Instant::now() + timeout;
    while records.len() < records_max {
        // Wait for the first record until the deadline, then take only what is ready.
        let wait = if records.is_empty() {
            deadline.saturating_duration_since(std::time::Instant::now())
        } else {
            Duration::ZERO
        };
        let before = consumer.context().events().len();
        let served = consumer.context().served.load(Ordering::Relaxed);
        let polled = consumer.poll(wait);
        if polled.is_none() && consumer.context().served.load(Ordering::Relaxed) != served {
            // A commit answer was served: keep polling (the answers may be many).
            continue;
        }
        drop_moved(&mut records, &consumer.context().events(), before);
        match polled {
            None => {
                // Nothing ready now (or a rebalance was served): return what we have, unless
                // we have nothing and time is left.
                break;
            }
            Some(Ok(message)) => records.push(owned_record(&message)),
            Some(Err(error)) => {
                let failure = port_error(&error);
                if fails_the_poll(&records, &consumer.context().events()) {
                    return Err(failure);
                }
                // Deliver what we have; the error recurs on the next poll if it persists.
                tracing::debug!(%error, "consumer error after a partial poll");
                break;
            }
        }
    }
    let rebalances = consumer.context().events().drain(..).collect();
    let commits_answered = consumer.context().answered().take_stored();
    Ok(Polled {
        rebalances,
        records,
        commits_answered,
    })
}

/// Drops the records of the partitions that the rebalances after the first `before` events
/// moved: fetched before the rebalance ran inside this poll, they are the old assignment's.
fn drop_moved(records: &mut Vec<Record>, events: &VecDeque<LogRebalance>, before: usize) {
    if events.len() == before {
        return;
    }
    let moved: BTreeSet<PartitionId> = (events.iter().skip(before))
        .map(|event| match event {
            LogRebalance::Assigned { partition, .. } | LogRebalance::Revoked { partition } => {
                *partition
            }
        })
        .collect();
    records.retain(|record| !moved.contains(&record.partition));
}

/// Whether a consumer error fails the whole poll: only when it has nothing else to deliver.
/// Records already taken from librdkafka's queue would not be fetched again by this member,
/// and rebalances must reach the caller in order.
fn fails_the_poll(records: &[Record], events: &VecDeque<LogRebalance>) -> bool {
    records.is_empty() && events.is_empty()
}

impl EventLog for KafkaLog {
    async fn poll(&mut self, records_max: usize, timeout: Duration) -> Result<Polled, PortError> {
        let consumer = Arc::clone(&self.consumer);
        let polled = tokio::task::spawn_blocking(move || {
            poll_blocking(&consumer, records_max.max(1), timeout)
        })
        .await
        .map_err(|error| rejected(LOG, format!("poll thread failed: {error}")))??;
        debug_assert!(polled.records.len() <= records_max.max(1));
        Ok(polled)
    }

    async fn commit(
        &mut self,
        offsets: &[OffsetCommit],
        mode: CommitMode,
    ) -> Result<(), PortError> {
        if offsets.is_empty() {
            return Ok(());
        }
        if let Some(reason) = self.refusal(offsets) {
            return Err(PortError::Fenced {
                service: LOG,
                detail: reason.into(),
            });
        }
        let list = self.partition_list(offsets)?;
        let consumer = Arc::clone(&self.consumer);
        let result = match mode {
            CommitMode::Sync => {
                tokio::task::spawn_blocking(move || consumer.commit(&list, KafkaCommitMode::Sync))
                    .await
                    .map_err(|error| rejected(LOG, format!("commit thread failed: {error}")))?
            }
            CommitMode::Async => {
                let partitions = || offsets.iter().map(|commit| commit.partition);
                self.consumer
                    .context()
                    .answered()
                    .in_flight(partitions(), true);
                let sent = commit_async(&consumer, &list);
                if sent.is_err() {
                    self.consumer
                        .context()
                        .answered()
                        .in_flight(partitions(), false);
                }
                sent
            }
        };
        match result {
            Ok(()) => {
                if mode == CommitMode::Sync {
                    // Its answer is this call's: earlier asynchronous answers served later
                    // are older than it.
                    let mut answered = self.consumer.context().answered();
                    for commit in offsets {
                        answered.stored(commit.partition, commit.offset, false);
                    }
                }
                Ok(())
            }
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(error) => Err(port_error(&error)),
        }
    }

    async fn pause(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        match self.topic_list(partitions) {
            Some(list) => self
                .consumer
                .pause(&list)
                .map_err(|error| port_error(&error)),
            None => Ok(()),
        }
    }

    async fn resume(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        match self.topic_list(partitions) {
            Some(list) => self
                .consumer
                .resume(&list)
                .map_err(|error| port_error(&error)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: PartitionId, offset: i64) -> Record {
        Record {
            partition,
            offset,
            key: None,
            payload: bytes::Bytes::new(),
            headers: Vec::new(),
        }
    }

    fn offsets(records: &[Record]) -> Vec<(PartitionId, i64)> {
        records.iter().map(|r| (r.partition, r.offset)).collect()
    }

    /// Goal: records fetched before a rebalance that ran inside the poll are dropped for the
    /// partitions it moved, and only those; events queued before the poll move nothing.
    #[test]
    fn records_of_partitions_moved_inside_the_poll_are_dropped() {
        let mut records = vec![record(0, 5), record(1, 7), record(2, 9), record(1, 8)];
        let mut events = VecDeque::from([LogRebalance::Revoked { partition: 0 }]);
        drop_moved(&mut records, &events, 1);
        assert_eq!(offsets(&records), [(0, 5), (1, 7), (2, 9), (1, 8)]);
        events.push_back(LogRebalance::Revoked { partition: 1 });
        events.push_back(LogRebalance::Assigned {
            partition: 2,
            committed: None,
            generation: 4,
        });
        drop_moved(&mut records, &events, 1);
        assert_eq!(offsets(&records), [(0, 5)]);
    }

    /// Goal: a consumer error fails a poll only when it has nothing else to deliver.
    #[test]
    fn an_error_fails_only_an_empty_poll() {
        let revoked = VecDeque::from([LogRebalance::Revoked { partition: 0 }]);
        assert!(fails_the_poll(&[], &VecDeque::new()));
        assert!(!fails_the_poll(&[record(0, 1)], &VecDeque::new()));
        assert!(!fails_the_poll(&[], &revoked));
        assert!(!fails_the_poll(&[record(0, 1)], &revoked));
    }
}

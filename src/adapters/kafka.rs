//! The log on Kafka: [`EventLog`], [`Publisher`] and [`GroupOffsets`] with rdkafka (bundled
//! librdkafka). Behind the `kafka` cargo feature, compiled out of simulated and model-checked
//! builds.
//!
//! The consumer is a [`BaseConsumer`] polled on tokio's blocking pool: librdkafka runs the
//! rebalance callback on the polling thread, and the callback reads the committed offsets of
//! newly assigned partitions with a blocking call, which must not stall an async worker. The
//! callback queues [`Rebalance`] events; [`EventLog::poll`] returns them before its records,
//! like [`crate::memlog::MemoryLog`]. Records fetched before a rebalance that touched their
//! partition are dropped from the poll that saw the rebalance: they belong to the old
//! assignment, and the new owner (possibly us again) reads them from the committed offset.

use super::{rejected, unavailable, AdapterError};
use crate::ports::{
    CommittedOffset, Delivery, EventLog, GroupOffsets, OffsetCommit, OutboundMessage, PartitionId,
    Polled, PortError, Publisher, Rebalance as LogRebalance, Record,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The service name Kafka errors are reported under.
pub(crate) const LOG: &str = "kafka";

/// How long reading committed offsets (on assignment, or another group's) may take.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a synchronous call to the broker (commit, metadata) may take before it counts as
/// an outage.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the broker is and how the clients are configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `bootstrap.servers`: `host:port[,host:port...]`.
    pub brokers: String,
    /// librdkafka properties applied on top of holdfast's defaults, to every client.
    pub overrides: Vec<(String, String)>,
    /// Accept overrides that can lose or double events (auto commit, weak acks, idempotence
    /// off). Off by default: such settings are refused.
    pub allow_unsafe: bool,
}

/// Consumer defaults: offsets are committed only by the pipeline, a new group starts at the
/// beginning, end of partition is not an event.
const CONSUMER_DEFAULTS: [(&str, &str); 5] = [
    ("enable.auto.commit", "false"),
    ("auto.offset.reset", "earliest"),
    ("enable.partition.eof", "false"),
    // A member that vanished without leaving is replaced within seconds, not 45.
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "1000"),
];

/// Producer defaults: every in-sync replica acknowledges, retries cannot duplicate or reorder,
/// keys land where a Java producer puts them, no compression (the test broker mishandles it).
const PRODUCER_DEFAULTS: [(&str, &str); 6] = [
    ("acks", "all"),
    ("enable.idempotence", "true"),
    ("compression.type", "none"),
    ("linger.ms", "5"),
    ("partitioner", "murmur2_random"),
    ("message.timeout.ms", "30000"),
];

impl KafkaSettings {
    /// Settings for `brokers` with holdfast's defaults.
    pub fn new(brokers: impl Into<String>) -> KafkaSettings {
        KafkaSettings {
            brokers: brokers.into(),
            ..KafkaSettings::default()
        }
    }

    /// Refuses settings that break the guarantees, unless `allow_unsafe`.
    pub fn validate(&self) -> Result<(), AdapterError> {
        if self.brokers.trim().is_empty() {
            return Err(config_error("no brokers given"));
        }
        if self.allow_unsafe {
            return Ok(());
        }
        for (name, value) in &self.overrides {
            let value = value.trim().to_ascii_lowercase();
            let refusal = match name.trim() {
                "enable.auto.commit" if value != "false" => Some(
                    "enable.auto.commit would commit offsets of records not yet processed (loss)",
                ),
                "acks" | "request.required.acks" if value != "all" && value != "-1" => {
                    Some("acks other than all lets the broker lose acknowledged events")
                }
                "enable.idempotence" if value != "true" => {
                    Some("enable.idempotence=false lets producer retries duplicate and reorder")
                }
                _ => None,
            };
            if let Some(reason) = refusal {
                return Err(config_error(format!(
                    "refusing unsafe setting {name}={value}: {reason} (override with allow_unsafe, `--allow-unsafe` on the command line)"
                )));
            }
        }
        Ok(())
    }

    fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (name, value) in defaults {
            config.set(*name, *value);
        }
        for (name, value) in &self.overrides {
            config.set(name, value);
        }
        config
    }

    fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.client_config(&CONSUMER_DEFAULTS);
        config.set("group.id", group);
        config
    }
}

fn config_error(detail: impl ToString) -> AdapterError {
    AdapterError::Config {
        service: LOG,
        detail: detail.to_string(),
    }
}

fn connect_error(error: &KafkaError) -> AdapterError {
    AdapterError::Connect {
        service: LOG,
        detail: error.to_string(),
    }
}

/// Maps an rdkafka error: the broker unreachable or slow is an outage; a member that lost its
/// generation or partitions is fenced; anything else refused this request.
pub(crate) fn port_error(error: &KafkaError) -> PortError {
    use RDKafkaErrorCode as Code;
    match error.rdkafka_error_code() {
        Some(
            Code::BrokerTransportFailure
            | Code::AllBrokersDown
            | Code::OperationTimedOut
            | Code::RequestTimedOut
            | Code::MessageTimedOut
            | Code::TimedOutQueue
            | Code::NetworkException
            | Code::CoordinatorNotAvailable
            | Code::CoordinatorLoadInProgress
            | Code::NotCoordinator
            | Code::WaitingForCoordinator
            | Code::LeaderNotAvailable
            | Code::NotLeaderForPartition
            | Code::Resolve
            | Code::BrokerDestroy
            | Code::DestroyBroker,
        ) => unavailable(LOG, error),
        Some(
            Code::IllegalGeneration
            | Code::UnknownMemberId
            | Code::RebalanceInProgress
            | Code::FencedInstanceId
            | Code::Fenced
            | Code::AssignmentLost
            | Code::State,
        ) => PortError::Fenced {
            service: LOG,
            detail: error.to_string(),
        },
        _ => rejected(LOG, error),
    }
}

/// Creates `topic` with `partitions` partitions (replication factor 1); a topic that already
/// exists is fine.
pub async fn create_topic(
    settings: &KafkaSettings,
    topic: &str,
    partitions: i32,
) -> Result<(), AdapterError> {
    settings.validate()?;
    if partitions < 1 {
        return Err(config_error(format!(
            "a topic needs at least one partition, got {partitions}"
        )));
    }
    let admin: AdminClient<DefaultClientContext> = settings
        .client_config(&[])
        .create()
        .map_err(|error| connect_error(&error))?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .map_err(|error| connect_error(&error))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(AdapterError::Setup {
                    service: LOG,
                    detail: format!("creating topic {name}: {code}"),
                })
            }
        }
    }
    Ok(())
}

/// Reads every record of `topic` present when called, from the beginning, without joining or
/// committing for any group (dead letters for `holdfast verify`, checks in tests). Fails if
/// the records cannot be read within `timeout`.
pub async fn read_topic(
    settings: &KafkaSettings,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<Record>, AdapterError> {
    settings.validate()?;
    let reader: BaseConsumer = settings
        .consumer_config("holdfast-reader")
        .create()
        .map_err(|error| connect_error(&error))?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_topic_blocking(&reader, &topic, timeout))
        .await
        .map_err(|error| AdapterError::Setup {
            service: LOG,
            detail: format!("reader thread failed: {error}"),
        })?
}

fn read_topic_blocking(
    reader: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<Record>, AdapterError> {
    let deadline = std::time::Instant::now() + timeout;
    let failed = |detail: String| AdapterError::Setup {
        service: LOG,
        detail: format!("reading {topic}: {detail}"),
    };
    let metadata = reader
        .fetch_metadata(Some(topic), timeout)
        .map_err(|error| failed(error.to_string()))?;
    let partitions: Vec<PartitionId> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(failed("no such topic".into()));
    }
    // The end of each partition now; records produced later are not waited for.
    let mut ends: BTreeMap<PartitionId, i64> = BTreeMap::new();
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        let (low, high) = reader
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|error| failed(error.to_string()))?;
        if high > low {
            ends.insert(partition, high);
            list.add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|error| failed(error.to_string()))?;
        }
    }
    reader
        .assign(&list)
        .map_err(|error| failed(error.to_string()))?;
    let mut records = Vec::new();
    while !ends.is_empty() {
        if std::time::Instant::now() >= deadline {
            return Err(failed(format!(
                "timed out with partitions {ends:?} unfinished"
            )));
        }
        match reader.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(error)) => tracing::debug!(%error, "reader poll error"),
            Some(Ok(message)) => {
                let record = owned_record(&message);
                if ends
                    .get(&record.partition)
                    .is_some_and(|end| record.offset + 1 >= *end)
                {
                    ends.remove(&record.partition);
                }
                records.push(record);
            }
        }
    }
    Ok(records)
}

fn owned_record(message: &impl Message) -> Record {
    Record {
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
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
/// events for the next poll, and logs failed asynchronous commits.
struct LogContext {
    topic: String,
    events: Mutex<VecDeque<LogRebalance>>,
}

impl LogContext {
    fn events(&self) -> MutexGuard<'_, VecDeque<LogRebalance>> {
        self.events
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

impl ClientContext for LogContext {}

impl ConsumerContext for LogContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let committed = self.committed(consumer, list);
                let mut events = self.events();
                for element in list.elements_for_topic(&self.topic) {
                    let partition = element.partition();
                    events.push_back(LogRebalance::Assigned {
                        partition,
                        committed: committed.get(&partition).cloned(),
                    });
                }
            }
            Rebalance::Revoke(list) => {
                let mut events = self.events();
                for element in list.elements_for_topic(&self.topic) {
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

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
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
        };
        let consumer: BaseConsumer<LogContext> = settings
            .consumer_config(group)
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
}

/// One blocking poll: waits up to `timeout` for the first event, then drains what is ready.
fn poll_blocking(
    consumer: &BaseConsumer<LogContext>,
    records_max: usize,
    timeout: Duration,
) -> Result<Polled, PortError> {
    let mut records: Vec<Record> = Vec::new();
    let mut first = true;
    while records.len() < records_max {
        let wait = if first { timeout } else { Duration::ZERO };
        first = false;
        let before = consumer.context().events().len();
        let polled = consumer.poll(wait);
        if consumer.context().events().len() != before {
            // A rebalance ran inside this poll: what was fetched before it for the partitions
            // it moved is the old assignment's.
            let moved: BTreeSet<PartitionId> = consumer
                .context()
                .events()
                .iter()
                .skip(before)
                .map(|event| match event {
                    LogRebalance::Assigned { partition, .. }
                    | LogRebalance::Revoked { partition } => *partition,
                })
                .collect();
            records.retain(|record| !moved.contains(&record.partition));
        }
        match polled {
            None => {
                // Nothing ready now (or a rebalance was served): return what we have, unless
                // we have nothing and time is left.
                break;
            }
            Some(Ok(message)) => records.push(owned_record(&message)),
            Some(Err(error)) => {
                let failure = port_error(&error);
                if records.is_empty() && consumer.context().events().is_empty() {
                    return Err(failure);
                }
                // Deliver what we have; the error recurs on the next poll if it persists.
                tracing::debug!(%error, "consumer error after a partial poll");
                break;
            }
        }
    }
    let rebalances = consumer.context().events().drain(..).collect();
    Ok(Polled {
        rebalances,
        records,
    })
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

    async fn commit(&mut self, offsets: &[OffsetCommit], wait: bool) -> Result<(), PortError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let list = self.partition_list(offsets)?;
        let consumer = Arc::clone(&self.consumer);
        let result = if wait {
            tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
                .await
                .map_err(|error| rejected(LOG, format!("commit thread failed: {error}")))?
        } else {
            consumer.commit(&list, CommitMode::Async)
        };
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(error) => Err(port_error(&error)),
        }
    }

    async fn pause(&mut self, partitions: &[PartitionId], paused: bool) -> Result<(), PortError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::with_capacity(partitions.len());
        for partition in partitions {
            list.add_partition(&self.topic, *partition);
        }
        let result = if paused {
            self.consumer.pause(&list)
        } else {
            self.consumer.resume(&list)
        };
        result.map_err(|error| port_error(&error))
    }
}

/// A [`Publisher`]: an idempotent producer with `acks=all`; `publish` resolves on the
/// broker's acknowledgement (librdkafka's delivery report).
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KafkaPublisher")
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// Creates the producer. librdkafka connects lazily: an unreachable broker shows up as
    /// failed deliveries, not here.
    pub fn connect(settings: &KafkaSettings) -> Result<KafkaPublisher, AdapterError> {
        settings.validate()?;
        let producer = settings
            .client_config(&PRODUCER_DEFAULTS)
            .create()
            .map_err(|error| connect_error(&error))?;
        Ok(KafkaPublisher { producer })
    }

    /// Queues `message` without waiting and returns the wait for its acknowledgement. Queue
    /// order is send order within a partition, so a caller can keep many messages in flight
    /// without reordering them. Fails at once when librdkafka's local queue is full.
    pub fn enqueue(
        &self,
        message: &OutboundMessage,
    ) -> Result<impl Future<Output = Result<Delivery, PortError>> + Send + 'static, PortError> {
        let record = FutureRecord::to(&message.topic)
            .key(message.key.as_slice())
            .payload(message.payload.as_slice())
            .headers(owned_headers(&message.headers));
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(error, _record)| port_error(&error))?;
        Ok(async move {
            match delivery.await {
                Ok(Ok(delivery)) => Ok(Delivery {
                    partition: delivery.partition,
                    offset: delivery.offset,
                }),
                Ok(Err((error, _message))) => Err(port_error(&error)),
                Err(_canceled) => Err(unavailable(LOG, "the producer closed before delivery")),
            }
        })
    }

    /// Waits up to `timeout` for every queued message to be delivered or to fail.
    pub fn flush(&self, timeout: Duration) -> Result<(), PortError> {
        use rdkafka::producer::Producer;
        self.producer
            .flush(timeout)
            .map_err(|error| port_error(&error))
    }
}

impl Publisher for KafkaPublisher {
    async fn publish(&self, message: OutboundMessage) -> Result<Delivery, PortError> {
        let record = FutureRecord::to(&message.topic)
            .key(message.key.as_slice())
            .payload(message.payload.as_slice())
            .headers(owned_headers(&message.headers));
        // The queue timeout only bounds waiting for room in librdkafka's local queue; the
        // delivery itself is bounded by message.timeout.ms.
        match self.producer.send(record, CALL_TIMEOUT).await {
            Ok(delivery) => Ok(Delivery {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((error, _message)) => Err(port_error(&error)),
        }
    }
}

fn owned_headers(headers: &[(String, Vec<u8>)]) -> OwnedHeaders {
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (key, value) in headers {
        owned = owned.insert(Header {
            key: key.as_str(),
            value: Some(value.as_slice()),
        });
    }
    owned
}

/// Reads the committed offsets of other groups on one topic (the compensator's view of the
/// main group). One idle consumer per group asked about; it never joins the group.
pub struct KafkaGroupOffsets {
    settings: KafkaSettings,
    topic: String,
    readers: Mutex<BTreeMap<String, Arc<BaseConsumer>>>,
}

impl std::fmt::Debug for KafkaGroupOffsets {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KafkaGroupOffsets")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaGroupOffsets {
    pub fn connect(
        settings: &KafkaSettings,
        topic: &str,
    ) -> Result<KafkaGroupOffsets, AdapterError> {
        settings.validate()?;
        Ok(KafkaGroupOffsets {
            settings: settings.clone(),
            topic: topic.to_owned(),
            readers: Mutex::new(BTreeMap::new()),
        })
    }

    fn reader(&self, group: &str) -> Result<Arc<BaseConsumer>, PortError> {
        let mut readers = self
            .readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(reader) = readers.get(group) {
            return Ok(Arc::clone(reader));
        }
        let reader: BaseConsumer = self
            .settings
            .consumer_config(group)
            .create()
            .map_err(|error| rejected(LOG, error))?;
        let reader = Arc::new(reader);
        readers.insert(group.to_owned(), Arc::clone(&reader));
        Ok(reader)
    }
}

impl GroupOffsets for KafkaGroupOffsets {
    async fn committed(
        &self,
        group: &str,
        partitions: &[PartitionId],
    ) -> Result<Vec<Option<i64>>, PortError> {
        let reader = self.reader(group)?;
        let mut list = TopicPartitionList::with_capacity(partitions.len());
        for partition in partitions {
            list.add_partition(&self.topic, *partition);
        }
        let topic = self.topic.clone();
        let wanted = partitions.to_vec();
        tokio::task::spawn_blocking(move || {
            let list = reader
                .committed_offsets(list, COMMITTED_TIMEOUT)
                .map_err(|error| port_error(&error))?;
            Ok(wanted
                .iter()
                .map(|partition| {
                    list.find_partition(&topic, *partition).and_then(|element| {
                        match element.offset() {
                            Offset::Offset(offset) => Some(offset),
                            _ => None,
                        }
                    })
                })
                .collect())
        })
        .await
        .map_err(|error| rejected(LOG, format!("offset thread failed: {error}")))?
    }
}

#[cfg(test)]
mod tests {
    //! Against librdkafka's in-process mock cluster: no broker process needed. The mock's
    //! group coordinator waits 3 s before the first assignment, so each test that joins a
    //! group takes that long.

    use super::*;
    use crate::partition::partition_for_key;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use std::time::Instant;

    fn settings(mock: &MockCluster<'_, impl rdkafka::producer::ProducerContext>) -> KafkaSettings {
        KafkaSettings::new(mock.bootstrap_servers())
    }

    /// Polls until `count` records arrived or 30 s passed; returns rebalances and records.
    async fn poll_until(log: &mut KafkaLog, count: usize) -> Polled {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut all = Polled::default();
        while all.records.len() < count && Instant::now() < deadline {
            let polled = log.poll(100, Duration::from_millis(200)).await.unwrap();
            all.rebalances.extend(polled.rebalances);
            all.records.extend(polled.records);
        }
        all
    }

    fn message(topic: &str, index: usize) -> OutboundMessage {
        OutboundMessage {
            topic: topic.into(),
            key: format!("order-{index}").into_bytes(),
            payload: format!("payload-{index}").into_bytes(),
            headers: vec![("n".into(), index.to_string().into_bytes())],
        }
    }

    /// Goal: settings that can lose or double events are refused with a reason, and accepted
    /// only when explicitly allowed. Method: each unsafe override alone, then the safe values.
    #[test]
    fn unsafe_settings_are_refused_unless_allowed() {
        for (name, value) in [
            ("enable.auto.commit", "true"),
            ("acks", "1"),
            ("acks", "0"),
            ("request.required.acks", "1"),
            ("enable.idempotence", "false"),
        ] {
            let mut settings = KafkaSettings::new("127.0.0.1:1");
            settings.overrides = vec![(name.into(), value.into())];
            let error = settings.validate().unwrap_err().to_string();
            assert!(error.contains("refusing unsafe setting"), "{error}");
            assert!(error.contains(name), "{error}");
            assert!(KafkaPublisher::connect(&settings).is_err());
            settings.allow_unsafe = true;
            assert!(settings.validate().is_ok());
        }
        let mut settings = KafkaSettings::new("127.0.0.1:1");
        settings.overrides = vec![
            ("enable.auto.commit".into(), "false".into()),
            ("acks".into(), "-1".into()),
            ("enable.idempotence".into(), "true".into()),
        ];
        assert!(settings.validate().is_ok());
        assert!(KafkaSettings::new(" ").validate().is_err());
    }

    /// Goal: what is published comes back with its key, payload and headers, on the
    /// partition the Java client would pick, after the assignment that owns it. Method: 40
    /// keyed messages to a 4-partition mock topic, one consumer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trip_keeps_keys_headers_and_java_partitions() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t", 4, 1).unwrap();
        let settings = settings(&mock);
        let publisher = KafkaPublisher::connect(&settings).unwrap();
        let mut sent = BTreeMap::new();
        for index in 0..40 {
            let message = message("t", index);
            let delivery = publisher.publish(message.clone()).await.unwrap();
            assert_eq!(
                delivery.partition,
                partition_for_key(&message.key, 4).unwrap(),
                "not the Java client's partition"
            );
            sent.insert((delivery.partition, delivery.offset), message);
        }
        let mut log = KafkaLog::connect(&settings, "g", "t").unwrap();
        let polled = poll_until(&mut log, 40).await;
        assert_eq!(polled.records.len(), 40);
        let assigned: BTreeSet<PartitionId> = polled
            .rebalances
            .iter()
            .filter_map(|change| match change {
                LogRebalance::Assigned {
                    partition,
                    committed,
                } => {
                    assert_eq!(committed, &None, "a new group has nothing committed");
                    Some(*partition)
                }
                LogRebalance::Revoked { .. } => None,
            })
            .collect();
        assert_eq!(assigned, (0..4).collect());
        for record in &polled.records {
            let message = &sent[&(record.partition, record.offset)];
            assert_eq!(record.key.as_deref(), Some(message.key.as_slice()));
            assert_eq!(record.payload, message.payload);
            assert_eq!(record.headers, message.headers);
        }
    }

    /// Goal: a new member resumes exactly at the committed offsets and sees the commit
    /// metadata. Method: consume 30 records, commit offset 3 with metadata on every partition
    /// (synchronously), close, rejoin: the assignment carries what was committed and the
    /// records start there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commit_and_resume_from_committed() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t", 3, 1).unwrap();
        let settings = settings(&mock);
        let publisher = KafkaPublisher::connect(&settings).unwrap();
        for index in 0..30 {
            publisher.publish(message("t", index)).await.unwrap();
        }
        let mut log = KafkaLog::connect(&settings, "g", "t").unwrap();
        let polled = poll_until(&mut log, 30).await;
        assert_eq!(polled.records.len(), 30);
        let mut ends: BTreeMap<PartitionId, i64> = BTreeMap::new();
        for record in &polled.records {
            let end = ends.entry(record.partition).or_default();
            *end = (*end).max(record.offset + 1);
        }
        let commits: Vec<OffsetCommit> = ends
            .keys()
            .map(|partition| OffsetCommit {
                partition: *partition,
                offset: 3,
                metadata: format!("m{partition}"),
            })
            .collect();
        log.commit(&commits, true).await.unwrap();
        drop(log);

        let mut log = KafkaLog::connect(&settings, "g", "t").unwrap();
        let expected: usize = ends.values().map(|end| (*end - 3) as usize).sum();
        let polled = poll_until(&mut log, expected).await;
        assert_eq!(polled.records.len(), expected);
        for change in &polled.rebalances {
            if let LogRebalance::Assigned {
                partition,
                committed,
            } = change
            {
                let committed = committed.clone().expect("committed offset missing");
                assert_eq!(committed.offset, 3);
                assert_eq!(committed.metadata, Some(format!("m{partition}")));
            }
        }
        assert!(polled.records.iter().all(|record| record.offset >= 3));
        let offsets = KafkaGroupOffsets::connect(&settings, "t").unwrap();
        let partitions: Vec<PartitionId> = ends.keys().copied().collect();
        let committed = offsets.committed("g", &partitions).await.unwrap();
        assert_eq!(committed, vec![Some(3); partitions.len()]);
        assert_eq!(
            offsets.committed("other", &partitions).await.unwrap(),
            vec![None; partitions.len()]
        );
    }

    /// Folds rebalance events into the set of partitions a member owns; a revoke must name
    /// an owned partition and an assignment a partition not owned.
    fn apply(owned: &mut BTreeSet<PartitionId>, changes: &[LogRebalance]) {
        for change in changes {
            match change {
                LogRebalance::Assigned { partition, .. } => {
                    assert!(owned.insert(*partition), "assigned twice: {partition}")
                }
                LogRebalance::Revoked { partition } => {
                    assert!(
                        owned.remove(partition),
                        "revoked but not owned: {partition}"
                    )
                }
            }
        }
    }

    /// Goal: when a second member joins, the first is told `Revoked` before the new
    /// assignment, and the two end up owning disjoint partitions that cover the topic; every
    /// record a member receives is on a partition it owns at that moment. Method: two
    /// consumers of one group on a 4-partition mock topic, polled in turns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_joining_member_takes_partitions_after_a_revoke() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t", 4, 1).unwrap();
        let settings = settings(&mock);
        let publisher = KafkaPublisher::connect(&settings).unwrap();
        for index in 0..40 {
            publisher.publish(message("t", index)).await.unwrap();
        }
        let mut first = KafkaLog::connect(&settings, "g", "t").unwrap();
        let mut owned_first = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while owned_first.len() < 4 {
            assert!(Instant::now() < deadline, "no assignment");
            let polled = first.poll(100, Duration::from_millis(100)).await.unwrap();
            apply(&mut owned_first, &polled.rebalances);
        }
        let mut second = KafkaLog::connect(&settings, "g", "t").unwrap();
        let mut owned_second = BTreeSet::new();
        let mut revoked_seen = false;
        let deadline = Instant::now() + Duration::from_secs(60);
        while owned_second.is_empty() || owned_first.len() + owned_second.len() < 4 {
            assert!(
                Instant::now() < deadline,
                "the second member never got partitions"
            );
            for (log, owned) in [
                (&mut first, &mut owned_first),
                (&mut second, &mut owned_second),
            ] {
                let polled = log.poll(100, Duration::from_millis(100)).await.unwrap();
                revoked_seen |= polled
                    .rebalances
                    .iter()
                    .any(|change| matches!(change, LogRebalance::Revoked { .. }));
                apply(owned, &polled.rebalances);
                for record in &polled.records {
                    assert!(
                        owned.contains(&record.partition),
                        "record of a partition not owned"
                    );
                }
            }
        }
        assert!(
            revoked_seen,
            "the first member was never told of the revoke"
        );
        assert!(owned_first.is_disjoint(&owned_second));
        let all: BTreeSet<PartitionId> = owned_first.union(&owned_second).copied().collect();
        assert_eq!(all, (0..4).collect());
        let records = read_topic(&settings, "t", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(records.len(), 40, "read_topic reads every record");
    }

    /// Goal: a broker outage is `Unavailable` (retried without limit), a commit refused for a
    /// stale generation is `Fenced`, and the adapters work again once the broker is back.
    /// Method: mock broker down, publish with a short delivery timeout; broker up, publish;
    /// inject ILLEGAL_GENERATION into OffsetCommit and commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outages_are_unavailable_and_stale_generations_fenced() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t", 1, 1).unwrap();
        let mut settings = settings(&mock);
        settings.overrides = vec![("message.timeout.ms".into(), "1500".into())];
        let publisher = KafkaPublisher::connect(&settings).unwrap();
        publisher.publish(message("t", 0)).await.unwrap();
        mock.broker_down(-1).unwrap();
        let error = publisher.publish(message("t", 1)).await.unwrap_err();
        assert!(error.is_outage(), "{error:?}");
        mock.broker_up(-1).unwrap();
        // librdkafka reconnects with backoff: the first sends after the outage may still time
        // out, as outages, never as rejections.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match publisher.publish(message("t", 2)).await {
                Ok(_) => break,
                Err(error) => assert!(error.is_outage(), "{error:?}"),
            }
            assert!(Instant::now() < deadline, "the publisher never recovered");
        }

        let mut log = KafkaLog::connect(&settings, "g", "t").unwrap();
        assert!(poll_until(&mut log, 2).await.records.len() >= 2);
        mock.request_errors(
            RDKafkaApiKey::OffsetCommit,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION],
        );
        let commit = OffsetCommit {
            partition: 0,
            offset: 1,
            metadata: String::new(),
        };
        let error = log.commit(&[commit], true).await.unwrap_err();
        assert!(matches!(error, PortError::Fenced { .. }), "{error:?}");
    }
}

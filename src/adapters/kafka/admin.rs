//! Topic creation and whole-topic reads, outside any consumer group.

use super::log::owned_record;
use super::settings::{config_error, connect_error, KafkaSettings};
use super::{CALL_TIMEOUT, LOG};
use crate::adapters::AdapterError;
use crate::ports::{PartitionId, Record};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::Duration;

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

/// Asks the brokers for their metadata (and, given a `topic`, that it exists), waiting up to
/// `timeout`: librdkafka's clients connect lazily and retry without end, so without this a
/// wrong broker address would never say so. No answer is [`AdapterError::Unavailable`].
pub async fn probe_brokers(
    settings: &KafkaSettings,
    topic: Option<&str>,
    timeout: Duration,
) -> Result<(), AdapterError> {
    settings.validate()?;
    let client: BaseConsumer = settings
        .client_config(&[])
        .create()
        .map_err(|error| connect_error(&error))?;
    let topic = topic.map(str::to_owned);
    let metadata = tokio::task::spawn_blocking(move || {
        client
            .fetch_metadata(topic.as_deref(), timeout)
            .map(|metadata| (metadata, topic))
    })
    .await
    .map_err(|error| AdapterError::Setup {
        service: LOG,
        detail: format!("metadata thread failed: {error}"),
    })?;
    let (metadata, topic) = metadata.map_err(|error| AdapterError::Unavailable {
        service: LOG,
        detail: error.to_string(),
    })?;
    let Some(topic) = topic else {
        return Ok(());
    };
    let known = metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if known {
        Ok(())
    } else {
        Err(AdapterError::Setup {
            service: LOG,
            detail: format!("topic {topic} does not exist (holdfast create-topic makes it)"),
        })
    }
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
        .consumer_config("holdfast-reader")?
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

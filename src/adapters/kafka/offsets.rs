//! Other groups' committed offsets (the compensator's view of the main group).

use super::errors::port_error;
use super::settings::KafkaSettings;
use super::{COMMITTED_TIMEOUT, LOG};
use crate::adapters::{rejected, AdapterError};
use crate::ports::{GroupOffsets, PartitionId, PortError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

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
            .map_err(|error| rejected(LOG, error))?
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

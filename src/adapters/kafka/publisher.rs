//! The [`Publisher`]: an idempotent, `acks=all` producer.

use super::errors::port_error;
use super::settings::{connect_error, KafkaSettings, PRODUCER_DEFAULTS};
use super::{CALL_TIMEOUT, LOG};
use crate::adapters::{unavailable, AdapterError};
use crate::ports::{Delivery, OutboundMessage, PortError, Publisher};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::future::Future;
use std::time::Duration;

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
            .payload(&message.payload[..])
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
            .payload(&message.payload[..])
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

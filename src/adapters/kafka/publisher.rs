//! The [`Publisher`]: an idempotent, `acks=all` producer.

use super::errors::port_error;
use super::producer::{delivered, DeliveryProducer, Record, Waiter};
use super::settings::{connect_error, KafkaSettings};
use super::CALL_TIMEOUT;
use crate::adapters::AdapterError;
use crate::ports::{Delivery, OutboundMessage, PortError, Publisher};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long `publish` waits before trying again when librdkafka's local queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(100);

/// A [`Publisher`]: an idempotent producer with `acks=all`; `publish` resolves on the
/// broker's acknowledgement (librdkafka's delivery report).
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: DeliveryProducer,
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
        let producer = DeliveryProducer::create(&settings.producer_config()?)
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
        let (waiter, report) = oneshot::channel();
        self.producer
            .client()
            .send(record(message, waiter))
            .map_err(|(error, _record)| port_error(&error))?;
        Ok(delivered(report))
    }

    /// Waits up to `timeout` for every queued message to be delivered or to fail.
    pub fn flush(&self, timeout: Duration) -> Result<(), PortError> {
        self.producer
            .client()
            .flush(timeout)
            .map_err(|error| port_error(&error))
    }
}

impl Publisher for KafkaPublisher {
    async fn publish(&self, message: OutboundMessage) -> Result<Delivery, PortError> {
        // A full local queue is waited out for up to the call timeout; the delivery itself is
        // bounded by message.timeout.ms.
        let queued_at = Instant::now();
        let (waiter, report) = oneshot::channel();
        let mut pending = record(&message, waiter);
        loop {
            match self.producer.client().send(pending) {
                Ok(()) => return delivered(report).await,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if queued_at.elapsed() < CALL_TIMEOUT =>
                {
                    pending = back;
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err((error, _record)) => return Err(port_error(&error)),
            }
        }
    }
}

/// The record of `message`, carrying the waiter of its report.
fn record<'a>(message: &'a OutboundMessage, waiter: Waiter) -> Record<'a> {
    BaseRecord::with_opaque_to(&message.topic, Box::new(waiter))
        .key(message.key.as_slice())
        .payload(&message.payload[..])
        .headers(owned_headers(&message.headers))
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

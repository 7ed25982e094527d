//! A producer whose delivery reports are served by a thread of its own, each report sent to
//! the caller waiting for it.
//!
//! Why not rdkafka's `FutureProducer`: its polling thread calls `poll` for 100 ms at a time,
//! and rust-rdkafka 0.39 turns the remaining time into whole milliseconds for librdkafka, so
//! the last partial millisecond of every call is a zero timeout polled in a loop until the
//! deadline. That spin cost about 1% of a core per producer, idle or not: an idle `holdfast
//! run` spent 172 ms of 20 s in it, more than all its other threads together. Polling for a
//! second at a time spins a hundredth as often; the cost is that a dropped producer's thread
//! lingers up to that second before it notices and releases the client.

use super::errors::port_error;
use super::LOG;
use crate::adapters::unavailable;
use crate::ports::{Delivery, PortError};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long one poll of the delivery thread waits for a report.
const POLL_WAIT: Duration = Duration::from_secs(1);

/// Where a message's delivery report goes.
pub(super) type Waiter = oneshot::Sender<Result<Delivery, PortError>>;

/// A record carrying its waiter.
pub(super) type Record<'a> = BaseRecord<'a, [u8], [u8], Box<Waiter>>;

/// Hands each delivery report to the waiter that came with its message.
pub(super) struct Reports;

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Waiter>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiter: Box<Waiter>) {
        let outcome = match result {
            Ok(message) => Ok(Delivery {
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err((error, _message)) => Err(port_error(error)),
        };
        // An error here means the caller stopped waiting: nobody is left to tell.
        let _ = waiter.send(outcome);
    }
}

/// A `BaseProducer` and the thread that polls it. Clones share both; the thread stops after
/// the last clone is dropped.
#[derive(Clone)]
pub(super) struct DeliveryProducer {
    shared: Arc<Shared>,
}

struct Shared {
    producer: Arc<BaseProducer<Reports>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl DeliveryProducer {
    /// Creates the client and starts its delivery thread.
    pub(super) fn create(config: &ClientConfig) -> KafkaResult<DeliveryProducer> {
        let producer: Arc<BaseProducer<Reports>> = Arc::new(config.create_with_context(Reports)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (polled, stopped) = (Arc::clone(&producer), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("holdfast-deliveries".to_owned())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    polled.poll(POLL_WAIT);
                }
            })
            .map_err(|error| {
                rdkafka::error::KafkaError::ClientCreation(format!(
                    "cannot start the delivery thread: {error}"
                ))
            })?;
        Ok(DeliveryProducer {
            shared: Arc::new(Shared { producer, stop }),
        })
    }

    /// The client: its `send` queues a [`Record`], whose report goes to the waiter it carries.
    pub(super) fn client(&self) -> &BaseProducer<Reports> {
        &self.shared.producer
    }
}

/// The wait for one message's report.
pub(super) async fn delivered(
    report: oneshot::Receiver<Result<Delivery, PortError>>,
) -> Result<Delivery, PortError> {
    report
        .await
        .unwrap_or_else(|_| Err(unavailable(LOG, "the producer closed before delivery")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Goal: the delivery thread stops and releases the client once the last clone of the
    /// producer is dropped. Method: watch the client through a weak reference.
    #[test]
    fn the_delivery_thread_releases_the_client_after_the_last_drop() {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:1");
        let producer = DeliveryProducer::create(&config).unwrap();
        let client = Arc::downgrade(&producer.shared.producer);
        let clone = producer.clone();
        drop(producer);
        std::thread::sleep(POLL_WAIT * 2);
        assert!(client.upgrade().is_some(), "released while a clone lives");
        drop(clone);
        let deadline = Instant::now() + POLL_WAIT * 10;
        while client.upgrade().is_some() {
            assert!(Instant::now() < deadline, "the client was never released");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

//! The producer client: `SimPublisher` implements `holdfast::ports::Publisher`.
//!
//! acks=0 sends and returns at once (no guarantee, offset -1). acks=1/all wait for the
//! broker's answer, retrying on errors and timeouts up to `retries` times. With idempotence,
//! each record carries (producer id, sequence) and a retry is recognised by the leader;
//! without it, a retry after a lost answer appends the record again.

use super::broker::{BrokerAnswer, BrokerRequest, ProduceResult};
use super::controller::lock;
use super::metadata::MetadataCache;
use super::replica::Produced;
use super::{broker_address, unavailable, Acks, SERVICE};
use crate::world::rpc;
use holdfast::partition::partition_for_key;
use holdfast::ports::{Delivery, OutboundMessage, PartitionId, PortError, Publisher};
use madsim::net::Endpoint;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pause between retries (`retry.backoff.ms`).
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// The producer's settings.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    pub brokers: usize,
    pub partitions: i32,
    pub acks: Acks,
    pub idempotent: bool,
    pub retries: u32,
    pub request_timeout: Duration,
}

#[derive(Debug)]
struct Sequences {
    producer_id: u64,
    next: Vec<i32>,
}

struct Inner {
    endpoint: Endpoint,
    config: ProducerConfig,
    metadata: Mutex<MetadataCache>,
    sequences: Mutex<Sequences>,
    /// One request in flight per partition, so idempotent sequences arrive in order
    /// (`max.in.flight.requests.per.connection=1`).
    in_flight: Vec<tokio::sync::Mutex<()>>,
}

/// A Kafka producer on the node that created it.
#[derive(Clone)]
pub struct SimPublisher {
    inner: Arc<Inner>,
}

impl SimPublisher {
    /// A producer sending from `endpoint`.
    pub fn new(endpoint: Endpoint, config: ProducerConfig) -> SimPublisher {
        let partitions = usize::try_from(config.partitions).unwrap_or(0);
        let inner = Inner {
            endpoint,
            metadata: Mutex::new(MetadataCache::new(config.brokers, config.partitions)),
            sequences: Mutex::new(Sequences {
                producer_id: madsim::rand::random::<u64>() | 1,
                next: vec![0; partitions],
            }),
            in_flight: (0..partitions)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            config,
        };
        SimPublisher {
            inner: Arc::new(inner),
        }
    }

    async fn leader(&self, partition: PartitionId) -> Option<usize> {
        let mut cache = lock(&self.inner.metadata).clone();
        let leader = cache
            .leader_or_refresh(
                &self.inner.endpoint,
                partition,
                self.inner.config.request_timeout,
            )
            .await;
        *lock(&self.inner.metadata) = cache;
        leader
    }

    fn forget(&self, partition: PartitionId) {
        lock(&self.inner.metadata).forget(partition);
    }

    /// The (producer id, sequence) for the next record of `partition`, if idempotent.
    fn next_sequence(&self, partition: PartitionId) -> Option<(u64, i32)> {
        if !self.inner.config.idempotent {
            return None;
        }
        let sequences = lock(&self.inner.sequences);
        let index = usize::try_from(partition).ok()?;
        Some((sequences.producer_id, *sequences.next.get(index)?))
    }

    fn sequence_used(&self, partition: PartitionId) {
        let mut sequences = lock(&self.inner.sequences);
        if let Some(next) = usize::try_from(partition)
            .ok()
            .and_then(|index| sequences.next.get_mut(index))
        {
            *next += 1;
        }
    }

    /// After giving up on a record whose fate is unknown, start over as a new producer
    /// (Kafka bumps the producer epoch), or the next sequence would be refused forever.
    fn reset_producer(&self) {
        let mut sequences = lock(&self.inner.sequences);
        sequences.producer_id = madsim::rand::random::<u64>() | 1;
        sequences.next.iter_mut().for_each(|next| *next = 0);
    }

    async fn send_with_retries(
        &self,
        partition: PartitionId,
        record: Produced,
    ) -> Result<Delivery, PortError> {
        let config = &self.inner.config;
        let mut last_problem = String::from("no attempt");
        for attempt in 0..=config.retries {
            if attempt > 0 {
                madsim::time::sleep(RETRY_BACKOFF).await;
            }
            let Some(leader) = self.leader(partition).await else {
                last_problem = format!("partition {partition} has no known leader");
                continue;
            };
            let request = BrokerRequest::Produce {
                partition,
                record: record.clone(),
                acks: config.acks,
            };
            let answer = rpc::call(
                &self.inner.endpoint,
                broker_address(leader),
                request,
                config.request_timeout,
            );
            match answer.await {
                Some(BrokerAnswer::Produced(
                    ProduceResult::Appended(offset) | ProduceResult::Duplicate(offset),
                )) => return Ok(Delivery { partition, offset }),
                Some(BrokerAnswer::Produced(ProduceResult::OutOfOrderSequence)) => {
                    self.reset_producer();
                    return Err(PortError::Rejected {
                        service: SERVICE,
                        detail: "out of order sequence".to_string(),
                    });
                }
                Some(BrokerAnswer::Produced(problem)) => {
                    last_problem = format!("{problem:?} from broker {leader}");
                    self.forget(partition);
                }
                _ => {
                    last_problem = format!("no answer from broker {leader}");
                    self.forget(partition);
                }
            }
        }
        if config.idempotent {
            self.reset_producer();
        }
        Err(unavailable(format!(
            "partition {partition}: {last_problem}"
        )))
    }
}

impl Publisher for SimPublisher {
    async fn publish(&self, message: OutboundMessage) -> Result<Delivery, PortError> {
        let config = &self.inner.config;
        // The Java client's default partitioner, from the core: an order stays on one partition.
        let partition = partition_for_key(&message.key, config.partitions).map_err(|error| {
            PortError::Rejected {
                service: SERVICE,
                detail: error.to_string(),
            }
        })?;
        debug_assert!((0..config.partitions).contains(&partition));
        let record = |producer| Produced {
            key: Some(message.key.clone()),
            payload: message.payload.clone(),
            headers: message.headers.clone(),
            producer,
        };
        if config.acks == Acks::Zero {
            // Fire and forget: one send to whoever we think leads, no answer, no retry.
            let Some(leader) = self.leader(partition).await else {
                return Ok(Delivery {
                    partition,
                    offset: -1,
                });
            };
            let request = BrokerRequest::Produce {
                partition,
                record: record(None),
                acks: Acks::Zero,
            };
            rpc::send(&self.inner.endpoint, broker_address(leader), request).await;
            return Ok(Delivery {
                partition,
                offset: -1,
            });
        }
        let slot = usize::try_from(partition).unwrap_or(0);
        let _in_flight = self.inner.in_flight[slot].lock().await;
        let producer = self.next_sequence(partition);
        let result = self.send_with_retries(partition, record(producer)).await;
        if result.is_ok() && producer.is_some() {
            self.sequence_used(partition);
        }
        result
    }
}

//! The producer client: `SimPublisher` implements `holdfast::ports::Publisher`.
//!
//! acks=0 sends and returns at once (no guarantee, offset -1). acks=1/all batch: records
//! wait in a per-partition queue while that partition's one request is in flight, and the
//! next request carries all of them (Kafka's record accumulator with `linger.ms=0` and
//! `max.in.flight.requests.per.connection=1`). A batch is retried as a whole on errors and
//! timeouts, up to `retries` times, and every record's caller gets its own answer (its own
//! offset, or the batch's error). With idempotence, each record carries (producer id,
//! sequence) and a retried batch is recognised by the leader; without it, a retry after a
//! lost answer appends the batch again.

use super::broker::{BrokerAnswer, BrokerRequest, ProduceResult};
use super::metadata::MetadataCache;
use super::replica::Produced;
use super::{broker_address, unavailable, Acks, SERVICE};
use crate::world::lock::lock;
use crate::world::rpc;
use crate::world::transport::Endpoint;
use holdfast::partition::partition_for_key;
use holdfast::ports::{Delivery, OutboundMessage, PartitionId, PortError, Publisher};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Pause between retries (`retry.backoff.ms`).
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// Most payload bytes in one batch (`batch.size`); a batch always takes at least one record.
const BATCH_BYTES_MAX: usize = 16 * 1024;

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

/// A record waiting for its partition's next request, with the way back to its caller.
struct Waiting {
    message: OutboundMessage,
    answer: oneshot::Sender<Result<Delivery, PortError>>,
}

/// One partition's side of the producer.
#[derive(Default)]
struct PartitionQueue {
    /// Records not yet sent, in publish order.
    waiting: Mutex<VecDeque<Waiting>>,
    /// Held while this partition's one request is in flight, so idempotent sequences arrive
    /// in order (`max.in.flight.requests.per.connection=1`).
    sending: tokio::sync::Mutex<()>,
}

struct Inner {
    endpoint: Endpoint,
    config: ProducerConfig,
    metadata: Mutex<MetadataCache>,
    sequences: Mutex<Sequences>,
    partitions: Vec<PartitionQueue>,
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
            partitions: (0..partitions).map(|_| PartitionQueue::default()).collect(),
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

    /// The producer id and the first of `count` sequences reserved for the next batch of
    /// `partition`, if idempotent. Reserved before sending: a batch whose fate stays unknown
    /// never has its sequences handed out again under the same producer id.
    fn reserve_sequences(&self, partition: PartitionId, count: usize) -> Option<(u64, i32)> {
        if !self.inner.config.idempotent {
            return None;
        }
        let mut sequences = lock(&self.inner.sequences);
        let producer_id = sequences.producer_id;
        let next = sequences.next.get_mut(usize::try_from(partition).ok()?)?;
        let first = *next;
        *next += i32::try_from(count).unwrap_or(i32::MAX);
        Some((producer_id, first))
    }

    /// After giving up on a record whose fate is unknown, start over as a new producer
    /// (Kafka bumps the producer epoch), or the next sequence would be refused forever.
    fn reset_producer(&self) {
        let mut sequences = lock(&self.inner.sequences);
        sequences.producer_id = madsim::rand::random::<u64>() | 1;
        sequences.next.iter_mut().for_each(|next| *next = 0);
    }

    /// Sends one batch until it is appended or the retries run out; the offset of each
    /// record on success.
    async fn send_with_retries(
        &self,
        partition: PartitionId,
        records: Vec<Produced>,
    ) -> Result<Vec<i64>, PortError> {
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
                records: records.clone(),
                acks: config.acks,
            };
            let answer = rpc::call(
                &self.inner.endpoint,
                broker_address(leader),
                request,
                config.request_timeout,
            );
            match answer.await {
                Some(BrokerAnswer::Produced(ProduceResult::Appended(offsets))) => {
                    debug_assert_eq!(offsets.len(), records.len(), "one offset per record");
                    return Ok(offsets);
                }
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

    /// Takes the next batch off `queue`: records in publish order, up to `BATCH_BYTES_MAX`
    /// of payload (at least one record).
    fn next_batch(queue: &PartitionQueue) -> Vec<Waiting> {
        let mut waiting = lock(&queue.waiting);
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(next) = waiting.front() {
            let size = next.message.payload.len() + next.message.key.len();
            if !batch.is_empty() && bytes + size > BATCH_BYTES_MAX {
                break;
            }
            bytes += size;
            batch.extend(waiting.pop_front());
        }
        batch
    }

    /// Sends one batch and answers each of its callers.
    async fn send_batch(&self, partition: PartitionId, batch: Vec<Waiting>) {
        let producer = self.reserve_sequences(partition, batch.len());
        let records: Vec<Produced> = batch
            .iter()
            .zip(0..)
            .map(|(waiting, index)| Produced {
                key: Some(waiting.message.key.clone()),
                payload: waiting.message.payload.clone(),
                headers: waiting.message.headers.clone(),
                producer: producer.map(|(id, first)| (id, first + index)),
            })
            .collect();
        match self.send_with_retries(partition, records).await {
            Ok(offsets) => {
                for (waiting, offset) in batch.into_iter().zip(offsets) {
                    // A caller that went away no longer wants its answer.
                    let _ = waiting.answer.send(Ok(Delivery { partition, offset }));
                }
            }
            Err(error) => {
                for waiting in batch {
                    let _ = waiting.answer.send(Err(error.clone()));
                }
            }
        }
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
                records: vec![Produced {
                    key: Some(message.key),
                    payload: message.payload,
                    headers: message.headers,
                    producer: None,
                }],
                acks: Acks::Zero,
            };
            rpc::send(&self.inner.endpoint, broker_address(leader), request);
            return Ok(Delivery {
                partition,
                offset: -1,
            });
        }
        let Some(queue) = usize::try_from(partition)
            .ok()
            .and_then(|slot| self.inner.partitions.get(slot))
        else {
            return Err(unavailable(format!("partition {partition} is unknown")));
        };
        let (answer, mut delivered) = oneshot::channel();
        lock(&queue.waiting).push_back(Waiting { message, answer });
        // Whoever holds the partition's turn sends everything queued by then, so by the time
        // this caller gets the turn its record may already be answered.
        let _turn = queue.sending.lock().await;
        loop {
            match delivered.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(unavailable(format!(
                        "partition {partition}: the request carrying this record was abandoned"
                    )));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch = Self::next_batch(queue);
            debug_assert!(!batch.is_empty(), "this caller's record is still queued");
            if batch.is_empty() {
                return Err(unavailable(format!(
                    "partition {partition}: record vanished from the queue"
                )));
            }
            self.send_batch(partition, batch).await;
        }
    }
}

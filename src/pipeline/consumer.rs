//! The consumer: the member loop ([`super::member`]) feeding workers.
//!
//! The loop never waits for processing. It routes each tracked record by key to a worker;
//! workers ack to the shared tracker in any order; the loop commits, every `commit_interval`,
//! the tracker's snapshot (lowest unfinished offset and the finished offsets above it, read
//! together). On revoke it gives in-flight work a bounded grace, then commits synchronously and
//! forgets the partition; on shutdown it drains and commits synchronously.

use super::config::ProgressMode;
use super::config::{ConfigError, ConsumerConfig};
use super::member::{Member, MemberConfig};
use super::metrics::Metrics;
use super::progress::{FromCommit, FromStore, Owners, Resume};
use super::shutdown::{Shutdown, ShutdownTrigger};
use super::worker::{Job, Services, WorkerContext};
use crate::idempotency::protocol::ProtocolConfig;
use crate::offsets::{CommitPolicy, SharedTracker, Ticket, Tracker, Watermark};
use crate::partition::murmur2;
use crate::ports::{
    CommitMode, DedupCache, EventLog, FaultPoint, OrderStore, Probe, Publisher, Record,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A consumer running on a task of its own (see [`Consumer::spawn`]).
#[derive(Debug)]
pub struct RunningConsumer {
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<RunSummary>,
}

impl RunningConsumer {
    /// Asks the consumer to stop (stop polling, drain, commit) and waits until it has. Fails
    /// only if the consumer's task panicked.
    pub async fn stop(self) -> Result<RunSummary, tokio::task::JoinError> {
        self.trigger.trigger();
        self.task.await
    }

    /// Kills the consumer's task, as a crash would: in-flight work is abandoned and nothing
    /// more is committed, so the next owner redoes it.
    pub async fn abort(self) {
        self.task.abort();
        // The error says it was cancelled (or, if it had already stopped, nothing).
        let _ = self.task.await;
    }
}

/// What a consumer did, returned when it stops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub polled: u64,
    pub commits: u64,
    /// Records still in flight when the drain timed out (redone by the next owner).
    pub abandoned: usize,
}

/// One consumer-group member running the holdfast pipeline.
pub struct Consumer<L, C, S, D, P> {
    config: ConsumerConfig,
    member: Member<L>,
    workers: Vec<mpsc::UnboundedSender<Job>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    services: Arc<Services<C, S, D, P>>,
    /// The generations that claimed this member's partitions (`progress = store`).
    owners: Arc<Owners>,
    metrics: Arc<Metrics>,
}

impl<L, C, S, D, P> Consumer<L, C, S, D, P>
where
    L: EventLog,
    C: DedupCache + 'static,
    S: OrderStore + 'static,
    D: Publisher + 'static,
    P: Probe + 'static,
{
    /// Validates the configuration and starts the workers. Partitions commit their
    /// watermark ([`crate::offsets::Watermark`]).
    pub fn new(
        config: ConsumerConfig,
        log: L,
        services: Services<C, S, D, P>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        Consumer::with_policy(config, log, services, metrics, Box::new(Watermark))
    }

    /// [`Consumer::new`], with the partitions' commit points chosen by `policy`.
    pub fn with_policy(
        config: ConsumerConfig,
        log: L,
        services: Services<C, S, D, P>,
        metrics: Arc<Metrics>,
        policy: Box<dyn CommitPolicy>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let tracker = SharedTracker::from(Tracker::with_policy(config.limits, policy));
        let services = Arc::new(services);
        let owners = Arc::new(Owners::default());
        let context = Arc::new(WorkerContext {
            owners: Arc::clone(&owners),
            services: Arc::clone(&services),
            tracker: tracker.clone(),
            metrics: Arc::clone(&metrics),
            protocol: ProtocolConfig {
                cache_ttl: config.cache_ttl,
            },
            config: config.clone(),
        });
        let mut workers = Vec::with_capacity(config.concurrency);
        let mut handles = Vec::with_capacity(config.concurrency + 1);
        // The workers hand malformed records to one companion task that publishes them as
        // dead letters, so that the broker's acknowledgements never hold up a batch. One task,
        // not one per worker: it has one group of letters out at a time, so the dead-letter
        // producer stays under its cap of in-flight requests per partition (librdkafka's
        // broker thread busy-polls while a partition sits at that cap; docs/services.md).
        let (letters, letters_receiver) = mpsc::unbounded_channel();
        for index in 0..config.concurrency {
            let (sender, receiver) = mpsc::unbounded_channel();
            workers.push(sender);
            handles.push(tokio::spawn(Arc::clone(&context).run(
                index,
                receiver,
                letters.clone(),
            )));
        }
        drop(letters);
        handles.push(tokio::spawn(
            Arc::clone(&context).run_letters(config.concurrency, letters_receiver),
        ));
        let member = Member::new(
            MemberConfig {
                batch_size: config.batch_size,
                poll_timeout: config.poll_timeout,
                revoke_grace: config.revoke_grace,
                backoff_initial: config.backoff_initial,
                backoff_max: config.backoff_max,
                jitter_seed: config.jitter_seed,
            },
            log,
            tracker,
            Arc::clone(&metrics),
        );
        Ok(Consumer {
            config,
            member,
            workers,
            handles,
            services,
            owners,
            metrics,
        })
    }

    /// The tracker (tests and the simulator inspect it).
    pub fn tracker(&self) -> &SharedTracker {
        self.member.tracker()
    }

    /// Runs the consumer on a task of its own until [`RunningConsumer::stop`] (or `abort`).
    pub fn spawn(self) -> RunningConsumer
    where
        L: 'static,
    {
        let (trigger, shutdown) = ShutdownTrigger::new();
        RunningConsumer {
            trigger,
            task: tokio::spawn(self.run(shutdown)),
        }
    }

    /// Runs until `shutdown` is requested, then drains and commits.
    pub async fn run(mut self, shutdown: Shutdown) -> RunSummary {
        let mut next_commit = Instant::now() + self.config.commit_interval;
        while !shutdown.requested() {
            let probe = &self.services.probe;
            if Instant::now() >= next_commit {
                self.member.commit_changed(CommitMode::Async, probe).await;
                self.member.detect_stalls(self.config.stall_after);
                next_commit = Instant::now() + self.config.commit_interval;
            }
            let workers = &self.workers;
            if self.member.retry_held(|t, r| send(workers, t, r)).await {
                // Give workers a moment before the next poll so that a full tracker can drain.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let polled = match self.config.progress {
                ProgressMode::Kafka => self.member.poll(probe, &FromCommit).await,
                ProgressMode::Store => {
                    let resume =
                        from_store(&self.services, &self.owners, &self.metrics, &self.config);
                    self.member.poll(probe, &resume).await
                }
            };
            for revoked in &polled.revoked {
                if revoked.abandoned > 0 {
                    crate::reach!("consumer.revoke_abandoned");
                }
            }
            if !polled.records.is_empty() {
                probe.at(FaultPoint::AfterPoll).await;
                self.member
                    .offer(polled.records, |t, r| send(workers, t, r))
                    .await;
            }
        }
        self.drain().await
    }

    /// Stops dispatching, waits for in-flight work up to `drain_timeout`, commits
    /// synchronously, and stops the workers.
    async fn drain(mut self) -> RunSummary {
        let deadline = Instant::now() + self.config.drain_timeout;
        while self.member.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let abandoned = self.member.in_flight();
        if self.config.progress == ProgressMode::Store {
            let owned = self.member.owned();
            from_store(&self.services, &self.owners, &self.metrics, &self.config)
                .released(self.member.tracker(), &owned)
                .await;
        }
        self.member
            .commit_changed(CommitMode::Sync, &self.services.probe)
            .await;
        self.workers.clear();
        for handle in std::mem::take(&mut self.handles) {
            let _ = handle.await;
        }
        RunSummary {
            polled: self.member.polled,
            commits: self.member.commits,
            abandoned,
        }
    }
}

/// Where partitions resume and leave their progress under `progress = store`.
fn from_store<'a, C, S, D, P>(
    services: &'a Services<C, S, D, P>,
    owners: &'a Owners,
    metrics: &'a Metrics,
    config: &ConsumerConfig,
) -> FromStore<'a, S> {
    FromStore {
        store: &services.store,
        owners,
        metrics,
        backoff_initial: config.backoff_initial,
        backoff_max: config.backoff_max,
    }
}

/// Hands a tracked record to its worker (by key, so one order's events stay in order; the
/// worker decodes it, off the serial poll task).
fn send(workers: &[mpsc::UnboundedSender<Job>], ticket: Ticket, record: Record) {
    let route = match &record.key {
        Some(key) => murmur2(key) as u32 as usize,
        None => record.partition as u32 as usize,
    };
    if workers[route % workers.len()]
        .send(Job { ticket, record })
        .is_err()
    {
        tracing::error!("a worker stopped; its records will be redelivered");
    }
}

impl<L, C, S, D, P> Drop for Consumer<L, C, S, D, P> {
    /// A consumer dropped without [`Consumer::run`] finishing (its task was cancelled or its
    /// process is going down) takes its workers with it, like a crash: in-flight work is
    /// abandoned, never acked, and redone by the next owner.
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.abort();
        }
    }
}

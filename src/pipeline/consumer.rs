//! The poll loop: poll, track, dispatch to workers, commit the watermark.
//!
//! The loop never waits for processing. Workers ack to the shared tracker in any order; the
//! loop commits, every `commit_interval`, the tracker's snapshot (lowest unfinished offset and
//! the finished offsets above it, read together). On revoke it gives in-flight work a bounded
//! grace, then commits synchronously and forgets the partition; on shutdown it drains and
//! commits synchronously.

use super::config::{ConfigError, ConsumerConfig};
use super::metrics::{Metrics, PartitionGauges};
use super::retry::Backoff;
use super::worker::{Job, Services, WorkerContext};
use crate::idempotency::protocol::ProtocolConfig;
use crate::offsets::{
    CommitPolicy, CommitSnapshot, SharedTracker, Ticket, TrackError, Tracked, Tracker, Watermark,
};
use crate::partition::murmur2;
use crate::ports::{
    CommitMode, CommittedOffset, DedupCache, EventLog, FaultPoint, OffsetCommit, OrderStore,
    PartitionId, PortError, Probe, Publisher, Rebalance, Record,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Asks a running consumer to stop: stop polling, drain, commit.
#[derive(Clone, Debug)]
pub struct ShutdownTrigger(Arc<watch::Sender<bool>>);

/// The consumer's side of a [`ShutdownTrigger`].
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl ShutdownTrigger {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        (ShutdownTrigger(Arc::new(sender)), Shutdown(receiver))
    }
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// True once shutdown was requested.
    pub fn requested(&self) -> bool {
        *self.0.borrow()
    }
}

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

/// Per-partition state of the poll loop.
#[derive(Debug, Default)]
struct PartitionState {
    /// Records the tracker refused (full); retried before anything newer of the partition.
    held: VecDeque<Record>,
    paused: bool,
    polled: Option<i64>,
    committed: Option<i64>,
    /// Last commit point seen and when it last moved (stall detection).
    point: Option<i64>,
    point_moved_at: Option<Instant>,
    stalled: bool,
    /// (offset, key) of dispatched records, pruned below the commit point: names the stuck
    /// record when the partition stalls.
    dispatched: VecDeque<(i64, Option<Vec<u8>>)>,
}

/// One consumer-group member running the holdfast pipeline.
pub struct Consumer<L, C, S, D, P> {
    config: ConsumerConfig,
    log: L,
    tracker: SharedTracker,
    metrics: Arc<Metrics>,
    workers: Vec<mpsc::UnboundedSender<Job>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    partitions: BTreeMap<PartitionId, PartitionState>,
    services: Arc<Services<C, S, D, P>>,
    summary: RunSummary,
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
        let context = Arc::new(WorkerContext {
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
        Ok(Consumer {
            config,
            log,
            tracker,
            metrics,
            workers,
            handles,
            partitions: BTreeMap::new(),
            services,
            summary: RunSummary::default(),
        })
    }

    /// The tracker (tests and the simulator inspect it).
    pub fn tracker(&self) -> &SharedTracker {
        &self.tracker
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
        let mut poll_backoff = Backoff::new(
            self.config.backoff_initial,
            self.config.backoff_max,
            self.config.jitter_seed,
        );
        while !shutdown.requested() {
            if Instant::now() >= next_commit {
                self.commit_finished(CommitMode::Async).await;
                self.detect_stalls();
                next_commit = Instant::now() + self.config.commit_interval;
            }
            self.retry_held().await;
            match self
                .log
                .poll(self.config.batch_size, self.config.poll_timeout)
                .await
            {
                Ok(polled) => {
                    poll_backoff = Backoff::new(
                        self.config.backoff_initial,
                        self.config.backoff_max,
                        self.config.jitter_seed,
                    );
                    self.rebalance(polled.rebalances).await;
                    self.dispatch(polled.records).await;
                }
                Err(error) => {
                    crate::reach!("consumer.poll_failed");
                    tracing::warn!(%error, "poll failed; retrying");
                    self.metrics.retries_outage.add(1);
                    tokio::time::sleep(poll_backoff.next_delay()).await;
                }
            }
        }
        self.drain().await
    }

    async fn dispatch(&mut self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        self.metrics.polled.add(records.len() as u64);
        self.summary.polled += records.len() as u64;
        self.services.probe.at(FaultPoint::AfterPoll).await;
        let mut records = records.into_iter();
        // Records of the current run that `track_run` tracked and that are not sent yet, and
        // their epoch.
        let (mut run_tracked, mut run_epoch) = (0usize, 0u64);
        while let Some(record) = records.next() {
            let state = self.partitions.entry(record.partition).or_default();
            state.polled = Some(state.polled.map_or(record.offset, |p| p.max(record.offset)));
            if !state.held.is_empty() {
                // Keep poll order: nothing overtakes a held record of its partition (and no
                // run is under way in a partition that holds records).
                debug_assert_eq!(run_tracked, 0);
                state.held.push_back(record);
                continue;
            }
            if run_tracked == 0 {
                // This record and the consecutive offsets of its partition that follow it in
                // the poll: tracked with one call (one lock) as far as the tracker admits them.
                let run = 1 + records
                    .as_slice()
                    .iter()
                    .zip(record.offset.saturating_add(1)..)
                    .take_while(|(next, offset)| {
                        next.partition == record.partition && next.offset == *offset
                    })
                    .count();
                if let Ok(tracked) = self.tracker.track_run(record.partition, record.offset, run) {
                    (run_epoch, run_tracked) = tracked;
                }
            }
            if run_tracked > 0 {
                run_tracked -= 1;
                let ticket = Ticket {
                    partition: record.partition,
                    epoch: run_epoch,
                    offset: record.offset,
                };
                self.send(ticket, record);
            } else if let Some(record) = self.track_and_send(record) {
                self.hold(record).await;
            }
        }
    }

    /// Tracks and dispatches one record; gives it back if the tracker is full.
    fn track_and_send(&mut self, record: Record) -> Option<Record> {
        match self.tracker.track(record.partition, record.offset) {
            Ok((ticket, Tracked::New)) => {
                self.send(ticket, record);
                None
            }
            Ok((_, Tracked::AlreadyDone)) => None,
            Err(TrackError::Full { .. }) => Some(record),
            Err(error) => {
                // Redelivered below what this epoch already tracks, or a partition we no
                // longer own: already handled (or someone else's), so skipping loses nothing.
                crate::reach!("consumer.record_skipped");
                tracing::debug!(%error, partition = record.partition, offset = record.offset, "record skipped");
                None
            }
        }
    }

    /// Hands a tracked record to its worker (by key, so one order's events stay in order; the
    /// worker decodes it, off this serial poll task).
    fn send(&mut self, ticket: Ticket, record: Record) {
        let route = match &record.key {
            Some(key) => murmur2(key) as u32 as usize,
            None => record.partition as u32 as usize,
        };
        if let Some(state) = self.partitions.get_mut(&record.partition) {
            state
                .dispatched
                .push_back((record.offset, record.key.clone()));
        }
        let worker = &self.workers[route % self.workers.len()];
        if worker.send(Job { ticket, record }).is_err() {
            tracing::error!("a worker stopped; its records will be redelivered");
        }
    }

    async fn hold(&mut self, record: Record) {
        crate::reach!("consumer.tracker_full");
        let partition = record.partition;
        let state = self.partitions.entry(partition).or_default();
        state.held.push_back(record);
        if !state.paused {
            state.paused = true;
            if let Err(error) = self.log.pause(&[partition]).await {
                tracing::warn!(%error, partition, "pause failed");
            }
        }
    }

    /// Re-offers held records, oldest first; resumes a partition whose backlog cleared.
    async fn retry_held(&mut self) {
        let waiting: Vec<PartitionId> = self
            .partitions
            .iter()
            .filter(|(_, state)| !state.held.is_empty() || state.paused)
            .map(|(partition, _)| *partition)
            .collect();
        if waiting.is_empty() {
            return;
        }
        for partition in waiting {
            while let Some(record) = self
                .partitions
                .get_mut(&partition)
                .and_then(|state| state.held.pop_front())
            {
                if let Some(record) = self.track_and_send(record) {
                    if let Some(state) = self.partitions.get_mut(&partition) {
                        state.held.push_front(record);
                    }
                    break;
                }
            }
            let resume = self
                .partitions
                .get(&partition)
                .is_some_and(|state| state.held.is_empty() && state.paused);
            if resume {
                if let Err(error) = self.log.resume(&[partition]).await {
                    tracing::warn!(%error, partition, "resume failed");
                } else if let Some(state) = self.partitions.get_mut(&partition) {
                    state.paused = false;
                }
            }
        }
        // Give workers a moment before the next poll so that a full tracker can drain.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    /// Applies one poll's rebalance events in order; each run of consecutive revocations is
    /// handled together (one grace period, one commit), so that giving up many partitions
    /// costs what giving up one does and the member rejoins within the rebalance timeout.
    async fn rebalance(&mut self, changes: Vec<Rebalance>) {
        let mut revoked = Vec::new();
        for change in changes {
            match change {
                Rebalance::Revoked { partition } => revoked.push(partition),
                Rebalance::Assigned {
                    partition,
                    committed,
                } => {
                    self.revoke(&std::mem::take(&mut revoked)).await;
                    self.assign(partition, committed).await;
                }
            }
        }
        self.revoke(&revoked).await;
    }

    async fn assign(&mut self, partition: PartitionId, committed: Option<CommittedOffset>) {
        let assignment = self.tracker.assign(partition, committed.as_ref());
        tracing::info!(
            partition,
            epoch = assignment.epoch,
            start = ?assignment.start_offset,
            already_done = assignment.restore.already_done,
            "partition assigned"
        );
        self.partitions.insert(
            partition,
            PartitionState {
                committed: committed.map(|c| c.offset),
                ..PartitionState::default()
            },
        );
        // A partition paused for back-pressure and then revoked may come back still paused in
        // the client (librdkafka keeps the pause on the partition object): its new state starts
        // unpaused, so the client must be too, or it is never fetched again.
        if let Err(error) = self.log.resume(&[partition]).await {
            // Counted paused: the next round of `retry_held` resumes it again.
            tracing::warn!(%error, partition, "resume of an assigned partition failed");
            if let Some(state) = self.partitions.get_mut(&partition) {
                state.paused = true;
            }
        }
    }

    /// Gives partitions up: waits one shared grace period for their records in flight, then
    /// commits what finished, in one commit.
    async fn revoke(&mut self, partitions: &[PartitionId]) {
        if partitions.is_empty() {
            return;
        }
        let deadline = Instant::now() + self.config.revoke_grace;
        let in_flight = |tracker: &SharedTracker| {
            partitions
                .iter()
                .any(|&partition| tracker.in_flight(partition) > 0)
        };
        while in_flight(&self.tracker) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut snapshots = Vec::new();
        for &partition in partitions {
            let abandoned = self.tracker.in_flight(partition);
            snapshots.extend(self.tracker.revoke(partition));
            self.partitions.remove(&partition);
            self.metrics.remove_partition(partition);
            if abandoned > 0 {
                crate::reach!("consumer.revoke_abandoned");
            }
            tracing::info!(partition, abandoned, "partition revoked");
        }
        if !snapshots.is_empty() {
            self.commit(snapshots, CommitMode::Sync).await;
        }
    }

    /// Commits every partition's snapshot that moved since its last commit.
    async fn commit_finished(&mut self, mode: CommitMode) {
        let changed: Vec<CommitSnapshot> = self
            .tracker
            .snapshots()
            .into_iter()
            .filter(|snapshot| {
                self.partitions
                    .get(&snapshot.partition)
                    .is_some_and(|state| state.committed != Some(snapshot.offset))
                    || !snapshot.metadata.is_empty()
            })
            .collect();
        if !changed.is_empty() {
            self.commit(changed, mode).await;
        }
    }

    async fn commit(&mut self, snapshots: Vec<CommitSnapshot>, mode: CommitMode) {
        let offsets: Vec<OffsetCommit> = snapshots.into_iter().map(OffsetCommit::from).collect();
        self.services.probe.at(FaultPoint::BeforeOffsetCommit).await;
        match self.log.commit(&offsets, mode).await {
            Ok(()) => {
                self.metrics.commits.add(1);
                self.summary.commits += 1;
                for commit in &offsets {
                    if let Some(state) = self.partitions.get_mut(&commit.partition) {
                        debug_assert!(
                            state.committed.is_none_or(|c| c <= commit.offset),
                            "commit point moved backwards on partition {}",
                            commit.partition
                        );
                        state.committed = Some(commit.offset);
                        while state
                            .dispatched
                            .front()
                            .is_some_and(|(o, _)| *o < commit.offset)
                        {
                            state.dispatched.pop_front();
                        }
                    }
                }
                self.services.probe.at(FaultPoint::AfterOffsetCommit).await;
            }
            Err(PortError::Fenced { detail, .. }) => {
                crate::reach!("consumer.commit_fenced");
                tracing::info!(
                    detail,
                    "commit fenced: the partitions moved to another member"
                );
            }
            Err(error) => {
                self.metrics.commit_failures.add(1);
                tracing::warn!(%error, "offset commit failed; the next one covers it");
            }
        }
    }

    /// Flags partitions whose commit point has not moved for `stall_after` with work in
    /// flight, naming the stuck offset and key; updates the partition gauges.
    fn detect_stalls(&mut self) {
        let now = Instant::now();
        for (partition, state) in self.partitions.iter_mut() {
            let in_flight = self.tracker.in_flight(*partition);
            let point = self.tracker.snapshot(*partition).map(|s| s.offset);
            if point != state.point || in_flight == 0 {
                state.point = point;
                state.point_moved_at = Some(now);
                state.stalled = false;
            } else if let Some(moved_at) = state.point_moved_at {
                if !state.stalled && now.duration_since(moved_at) >= self.config.stall_after {
                    crate::reach!("consumer.stalled");
                    state.stalled = true;
                    self.metrics.stalls.add(1);
                    let stuck_key = point.and_then(|offset| {
                        state
                            .dispatched
                            .iter()
                            .find(|(o, _)| *o >= offset)
                            .and_then(|(_, key)| key.as_ref())
                            .map(|key| String::from_utf8_lossy(key).into_owned())
                    });
                    tracing::warn!(
                        partition,
                        stuck_offset = ?point,
                        stuck_key = ?stuck_key,
                        in_flight,
                        "commit point stalled"
                    );
                }
            }
            self.metrics.set_partition(
                *partition,
                PartitionGauges {
                    in_flight: in_flight as u64,
                    committed: state.committed,
                    polled: state.polled,
                    stalled: state.stalled,
                },
            );
        }
    }

    /// Stops dispatching, waits for in-flight work up to `drain_timeout`, commits
    /// synchronously, and stops the workers.
    async fn drain(mut self) -> RunSummary {
        let deadline = Instant::now() + self.config.drain_timeout;
        let in_flight = |tracker: &SharedTracker| -> usize {
            tracker
                .assigned()
                .into_iter()
                .map(|p| tracker.in_flight(p))
                .sum()
        };
        while in_flight(&self.tracker) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.summary.abandoned = in_flight(&self.tracker);
        self.commit_finished(CommitMode::Sync).await;
        self.workers.clear();
        for handle in std::mem::take(&mut self.handles) {
            let _ = handle.await;
        }
        self.summary.clone()
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

//! A broker node: hosts replicas, leads some partitions (appends, serves consumer fetches,
//! tracks followers, proposes ISR changes, advances the high watermark) and follows others
//! (fetches from their leader, truncating where its log diverged).
//!
//! One file, although long: leading and following share the replica state and the ISR
//! protocol with the controller, and a change to one side is a change to the other.

use super::controller::{ControllerAnswer, ControllerRequest, IsrProposal};
use super::replica::{Entry, Produced, Refused, Replica};
use super::{
    broker_address, controller_address, Acks, FlushPolicy, KafkaConfig, PartitionLeadership,
};
use crate::world::lock::lock;
use crate::world::rpc;
use crate::world::transport::{Endpoint, Network};
use holdfast::ports::{PartitionId, Record};
use madsim::time::{sleep, timeout, Instant};
use std::collections::BTreeMap;
use std::future::{poll_fn, Future};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::Notify;

/// How often a broker heartbeats to the controller (and learns the partition table).
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// How often a leader reconsiders its ISR.
const ISR_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Most entries in one replica fetch answer.
const REPLICA_FETCH_ENTRIES_MAX: usize = 1000;

/// A request to a broker.
#[derive(Clone, Debug)]
pub enum BrokerRequest {
    /// One batch of records for one partition, appended all or nothing.
    Produce {
        partition: PartitionId,
        records: Vec<Produced>,
        acks: Acks,
    },
    /// A consumer's fetch of the partitions it reads from this broker.
    Fetch(ConsumerFetch),
    /// A follower's fetch of every partition it follows from this broker.
    ReplicaFetch(FollowerFetch),
    Metadata,
}

/// A consumer's fetch: committed records only (below the high watermark), from each
/// partition's offset, at most `count_max` in all. Like Kafka's `fetch.max.wait.ms` with
/// `fetch.min.bytes=1`, the broker holds a fetch with nothing to give for up to `max_wait`
/// and answers as soon as a record (or an error) is there.
#[derive(Clone, Debug)]
pub struct ConsumerFetch {
    pub partitions: Vec<(PartitionId, i64)>,
    pub count_max: usize,
    pub max_wait: Duration,
}

/// One partition's part of a consumer fetch's answer.
#[derive(Clone, Debug)]
pub enum PartitionFetch {
    Records(Vec<Record>),
    /// The offset is past the log end (the log lost records: an unclean election).
    OutOfRange,
    NotLeader,
}

/// A follower's fetch, one per leader it follows partitions of, as Kafka's replica fetcher
/// sends one request per source broker for all its partitions there.
#[derive(Clone, Debug)]
pub struct FollowerFetch {
    pub follower: usize,
    /// The follower's incarnation: a restarted follower is a new replica to the leader.
    pub incarnation: u64,
    pub partitions: Vec<FollowedPartition>,
}

/// One partition of a follower fetch: `log_end` doubles as the acknowledgement of what the
/// follower has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowedPartition {
    pub partition: PartitionId,
    pub leader_epoch: i32,
    pub log_end: i64,
    /// The epoch of the follower's last entry (-1 if its log is empty).
    pub last_epoch: i32,
}

/// One partition's part of a follower fetch's answer.
#[derive(Clone, Debug)]
pub enum ReplicaAnswer {
    Replicate {
        entries: Vec<Entry>,
        high_watermark: i64,
    },
    Diverged {
        truncate_to: i64,
    },
    NotLeader,
}

/// How a produce request (one batch) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProduceResult {
    /// Every record of the batch is in the log: its offset, in batch order. An idempotent
    /// retry of a record already there gets its original offset (-1 if too old to tell).
    Appended(Vec<i64>),
    NotLeader,
    NotEnoughReplicas,
    OutOfOrderSequence,
    /// acks=all: not replicated to the ISR within the request timeout (it may still be).
    Timeout,
}

/// A broker's answer.
#[derive(Clone, Debug)]
pub enum BrokerAnswer {
    Produced(ProduceResult),
    /// A consumer fetch's answer, partition by partition in the request's order.
    Fetched(Vec<PartitionFetch>),
    /// A follower fetch's answer, partition by partition in the request's order.
    Replicated(Vec<ReplicaAnswer>),
    Metadata(Vec<PartitionLeadership>),
}

/// What a leader knows of one follower, updated when its fetch arrives, as Kafka's
/// `Replica.updateFetchState` does.
#[derive(Clone, Copy, Debug)]
struct FollowerProgress {
    log_end: i64,
    /// Kafka's `lastCaughtUpTimeMs`: the last time the follower held the leader's whole log
    /// (`None`: not since it (re)started, or not an ISR member when this leadership began).
    caught_up_at: Option<Instant>,
    /// The leader's log end when the previous fetch arrived, and when that was: a fetch
    /// that reaches the former means the follower had caught up by the latter.
    leader_log_end_at_last_fetch: i64,
    last_fetch_at: Option<Instant>,
    /// The follower incarnation this progress belongs to (0: not heard from yet).
    incarnation: u64,
}

impl FollowerProgress {
    /// Kafka's rule: caught up now if the fetch reaches the leader's log end, or caught up
    /// as of the previous fetch if it reaches the log end the leader had then.
    fn fetched(&mut self, log_end: i64, leader_log_end: i64, now: Instant) {
        self.log_end = log_end.min(leader_log_end);
        let caught_up_at = if log_end >= leader_log_end {
            Some(now)
        } else if log_end >= self.leader_log_end_at_last_fetch {
            self.last_fetch_at
        } else {
            None
        };
        self.caught_up_at = self.caught_up_at.max(caught_up_at);
        self.leader_log_end_at_last_fetch = leader_log_end;
        self.last_fetch_at = Some(now);
    }
}

#[derive(Clone, Debug)]
struct Leadership {
    epoch: i32,
    isr: Vec<usize>,
    isr_version: u64,
    followers: BTreeMap<usize, FollowerProgress>,
    altering_isr: bool,
    /// The open proposal whose answer never came, to be sent again.
    unanswered: Option<IsrProposal>,
    /// The ISR proposed and not answered yet. Until the controller answers, the high
    /// watermark counts its members too (Kafka's "maximal ISR"): a follower being added
    /// must hold everything below the high watermark once it is in the ISR and electable.
    proposed_isr: Vec<usize>,
}

/// A broker's state. `replicas` stands for the log files: page cache and disk, split by each
/// replica's flushed length; a crash keeps only the disk part. The rest is volatile.
#[derive(Debug)]
pub struct BrokerState {
    pub id: usize,
    pub replicas: BTreeMap<PartitionId, Replica>,
    view: BTreeMap<PartitionId, PartitionLeadership>,
    leading: BTreeMap<PartitionId, Leadership>,
    incarnation: u64,
    /// Signalled when a high watermark moves or the partition table changes: wakes acks=all
    /// produces and held consumer fetches.
    progress: Arc<Notify>,
    /// Per partition, signalled when the leader appends or the partition's entry in the
    /// table changes: wakes the held follower fetches that include that partition.
    appended: BTreeMap<PartitionId, Arc<Notify>>,
    /// Signalled when any hosted partition's entry in the table changes: wakes this broker's
    /// fetchers, to leave a leader the table no longer names or to add a partition.
    table_changed: Arc<Notify>,
    config: KafkaConfig,
}

impl BrokerState {
    /// A broker hosting the given partitions, with empty logs.
    pub fn new(id: usize, hosted: Vec<PartitionId>, config: KafkaConfig) -> BrokerState {
        BrokerState {
            id,
            appended: hosted.iter().map(|p| (*p, Arc::default())).collect(),
            replicas: hosted
                .into_iter()
                .map(|p| (p, Replica::default()))
                .collect(),
            view: BTreeMap::new(),
            leading: BTreeMap::new(),
            incarnation: 0,
            progress: Arc::new(Notify::new()),
            table_changed: Arc::new(Notify::new()),
            config,
        }
    }

    /// A crash: unflushed records and all volatile state are gone.
    pub fn crash(&mut self) {
        for replica in self.replicas.values_mut() {
            replica.crash();
        }
        self.view.clear();
        self.leading.clear();
        self.progress = Arc::new(Notify::new());
        self.table_changed = Arc::new(Notify::new());
        for appended in self.appended.values_mut() {
            *appended = Arc::default();
        }
    }

    /// Wakes the waiters on `partition`, whose entry in the partition table changed: held
    /// follower fetches of it, acks=all produces and held consumer fetches.
    fn notify_changed(&self, partition: PartitionId) {
        self.progress.notify_waiters();
        self.table_changed.notify_waiters();
        if let Some(appended) = self.appended.get(&partition) {
            appended.notify_waiters();
        }
    }

    fn flush_after_append(&mut self, partition: PartitionId) {
        if self.config.flush == FlushPolicy::EveryAppend {
            if let Some(replica) = self.replicas.get_mut(&partition) {
                replica.flush();
            }
        }
    }

    /// Moves the leader's high watermark to the smallest log end in the ISR (never back).
    fn advance_high_watermark(&mut self, partition: PartitionId) {
        let (Some(leadership), Some(replica)) = (
            self.leading.get(&partition),
            self.replicas.get_mut(&partition),
        ) else {
            return;
        };
        let mut smallest = replica.log_end();
        for member in leadership.isr.iter().chain(&leadership.proposed_isr) {
            if let Some(progress) = leadership.followers.get(member) {
                smallest = smallest.min(progress.log_end);
            }
        }
        if smallest > replica.high_watermark() {
            replica.set_high_watermark(smallest);
            self.progress.notify_waiters();
        }
    }

    /// Adopts the controller's partition table: become leader or follower where it says.
    /// Only a partition whose entry changed wakes its waiters: an unchanged table (most
    /// heartbeat answers) gives a held fetch nothing new to answer with.
    fn apply_view(&mut self, states: Vec<PartitionLeadership>, now: Instant) {
        for state in states {
            let partition = state.partition;
            if !self.replicas.contains_key(&partition) {
                continue;
            }
            if self.view.get(&partition) == Some(&state) {
                continue;
            }
            if state.leader == Some(self.id) {
                let current = self.leading.get(&partition).map(|l| l.epoch);
                if current != Some(state.leader_epoch) {
                    let log_end = self.replicas.get(&partition).map_or(0, Replica::log_end);
                    // ISR members get one lag time to catch up with the new leader's log;
                    // the others must catch up before they may join.
                    let followers = state
                        .replicas
                        .iter()
                        .filter(|b| **b != self.id)
                        .map(|b| {
                            let progress = FollowerProgress {
                                log_end: 0,
                                caught_up_at: state.isr.contains(b).then_some(now),
                                leader_log_end_at_last_fetch: log_end,
                                last_fetch_at: Some(now),
                                incarnation: 0,
                            };
                            (*b, progress)
                        })
                        .collect();
                    self.leading.insert(
                        partition,
                        Leadership {
                            epoch: state.leader_epoch,
                            isr: state.isr.clone(),
                            isr_version: state.isr_version,
                            followers,
                            altering_isr: false,
                            unanswered: None,
                            proposed_isr: Vec::new(),
                        },
                    );
                } else if let Some(leadership) = self.leading.get_mut(&partition) {
                    if state.isr_version > leadership.isr_version {
                        leadership.isr = state.isr.clone();
                        leadership.isr_version = state.isr_version;
                    }
                }
                self.advance_high_watermark(partition);
            } else {
                self.leading.remove(&partition);
            }
            self.view.insert(partition, state);
            self.notify_changed(partition);
        }
    }

    fn produce(
        &mut self,
        partition: PartitionId,
        records: Vec<Produced>,
        acks: Acks,
    ) -> ProduceResult {
        let Some(leadership) = self.leading.get(&partition) else {
            return ProduceResult::NotLeader;
        };
        if acks == Acks::All && leadership.isr.len() < self.config.min_insync_replicas {
            return ProduceResult::NotEnoughReplicas;
        }
        let epoch = leadership.epoch;
        let Some(replica) = self.replicas.get_mut(&partition) else {
            return ProduceResult::NotLeader;
        };
        let log_end = replica.log_end();
        let offsets = match replica.append_batch_as_leader(epoch, records) {
            Ok(offsets) => offsets,
            Err(Refused::OutOfOrder) => return ProduceResult::OutOfOrderSequence,
        };
        if replica.log_end() == log_end {
            return ProduceResult::Appended(offsets); // only retries: nothing new
        }
        self.flush_after_append(partition);
        if let Some(appended) = self.appended.get(&partition) {
            appended.notify_waiters();
        }
        self.advance_high_watermark(partition);
        ProduceResult::Appended(offsets)
    }

    /// For acks=all: `Some(answer)` once `offset` is committed or leadership was lost.
    fn replicated(&self, partition: PartitionId, epoch: i32, offset: i64) -> Option<bool> {
        let leadership = self.leading.get(&partition);
        if leadership.map(|l| l.epoch) != Some(epoch) {
            return Some(false);
        }
        let replica = self.replicas.get(&partition)?;
        (replica.high_watermark() > offset).then_some(true)
    }

    /// One partition's part of a consumer fetch, at most `count_max` records.
    fn fetch(&self, partition: PartitionId, offset: i64, count_max: usize) -> PartitionFetch {
        let (Some(_), Some(replica)) =
            (self.leading.get(&partition), self.replicas.get(&partition))
        else {
            return PartitionFetch::NotLeader;
        };
        if offset > replica.log_end() || offset < 0 {
            return PartitionFetch::OutOfRange;
        }
        let records = replica
            .read(offset, replica.high_watermark(), count_max)
            .into_iter()
            .map(|(offset, entry)| Record {
                partition,
                offset,
                key: entry.record.key,
                payload: entry.record.payload,
                headers: entry.record.headers,
            })
            .collect();
        PartitionFetch::Records(records)
    }

    /// A consumer fetch's answer, or `None` while it has nothing to give (no record, no
    /// error) and may be held.
    fn fetch_many(&self, fetch: &ConsumerFetch) -> Option<Vec<PartitionFetch>> {
        let mut left = fetch.count_max;
        let mut ready = false;
        let answers: Vec<PartitionFetch> = fetch
            .partitions
            .iter()
            .map(|&(partition, offset)| {
                let answer = self.fetch(partition, offset, left);
                match &answer {
                    PartitionFetch::Records(records) if records.is_empty() => {}
                    PartitionFetch::Records(records) => {
                        left -= records.len();
                        ready = true;
                    }
                    PartitionFetch::OutOfRange | PartitionFetch::NotLeader => ready = true,
                }
                answer
            })
            .collect();
        ready.then_some(answers)
    }

    /// The leader's side of one partition of a follower fetch: divergence check, progress,
    /// high watermark. `Some` is the partition's answer when it is known at once.
    fn replica_fetch(
        &mut self,
        follower: usize,
        incarnation: u64,
        fetched: FollowedPartition,
        now: Instant,
    ) -> Option<ReplicaAnswer> {
        let FollowedPartition {
            partition,
            leader_epoch,
            log_end,
            last_epoch,
        } = fetched;
        let leadership = self.leading.get(&partition)?;
        if leadership.epoch != leader_epoch {
            return None;
        }
        let known = leadership.followers.get(&follower)?.incarnation;
        if incarnation < known {
            return Some(ReplicaAnswer::NotLeader); // from a dead incarnation: ignore it
        }
        let replica = self.replicas.get(&partition)?;
        if log_end > 0 && replica.epoch_at(log_end - 1) != Some(last_epoch) {
            let mut truncate_to = log_end.min(replica.end_offset_for_epoch(last_epoch));
            if truncate_to >= log_end {
                truncate_to = log_end - 1; // the last entry differs: step back one
            }
            return Some(ReplicaAnswer::Diverged { truncate_to });
        }
        let leader_log_end = replica.log_end();
        let leadership = self.leading.get_mut(&partition)?;
        let progress = leadership.followers.get_mut(&follower)?;
        if known != 0 && incarnation > known {
            // The follower restarted: whatever it had acknowledged may be gone.
            progress.caught_up_at = None;
            progress.last_fetch_at = None;
        }
        progress.incarnation = incarnation;
        progress.fetched(log_end, leader_log_end, now);
        self.advance_high_watermark(partition);
        None
    }

    /// Entries after the follower's log end.
    fn replicate(&self, partition: PartitionId, log_end: i64) -> ReplicaAnswer {
        let Some(replica) = self.replicas.get(&partition) else {
            return ReplicaAnswer::NotLeader;
        };
        let entries: Vec<Entry> = replica
            .read(log_end, replica.log_end(), REPLICA_FETCH_ENTRIES_MAX)
            .into_iter()
            .map(|(_, entry)| entry)
            .collect();
        let high_watermark = replica.high_watermark();
        ReplicaAnswer::Replicate {
            entries,
            high_watermark,
        }
    }

    /// Answers a follower fetch: each partition's early answer, or what it has to replicate.
    fn replica_answer(
        &self,
        fetch: &FollowerFetch,
        early: Vec<Option<ReplicaAnswer>>,
    ) -> BrokerAnswer {
        let answers = fetch.partitions.iter().zip(early).map(|(fetched, early)| {
            early.unwrap_or_else(|| self.replicate(fetched.partition, fetched.log_end))
        });
        BrokerAnswer::Replicated(answers.collect())
    }

    /// ISR changes each leader wants. A member stays while it holds the leader's whole log
    /// or caught up within the lag time (Kafka's `isFollowerOutOfSync`: an idle follower is
    /// never out of sync, however long its fetch is held); a non-member joins once it caught
    /// up and holds everything below the high watermark. Each proposal names the ISR version it starts from and the incarnation of
    /// every proposed member, so the controller can refuse one built on stale knowledge.
    fn isr_proposals(&mut self, now: Instant) -> Vec<IsrProposal> {
        let lag = self.config.replica_lag_time;
        let (me, my_incarnation) = (self.id, self.incarnation);
        let mut proposals = Vec::new();
        for (partition, leadership) in &mut self.leading {
            let (Some(state), Some(replica)) =
                (self.view.get(partition), self.replicas.get(partition))
            else {
                continue;
            };
            if leadership.altering_isr {
                proposals.extend(leadership.unanswered.take());
                continue;
            }
            let (high_watermark, leader_log_end) = (replica.high_watermark(), replica.log_end());
            let in_sync = |broker: &usize| {
                leadership.followers.get(broker).is_some_and(|progress| {
                    let recent = progress
                        .caught_up_at
                        .is_some_and(|at| now.saturating_duration_since(at) <= lag);
                    let heard = progress.incarnation != 0;
                    if leadership.isr.contains(broker) {
                        heard && (recent || progress.log_end == leader_log_end)
                    } else {
                        heard && recent && progress.log_end >= high_watermark
                    }
                })
            };
            let wanted: Vec<usize> = state
                .replicas
                .iter()
                .copied()
                .filter(|b| *b == me || in_sync(b))
                .collect();
            if wanted != leadership.isr {
                let incarnations = wanted
                    .iter()
                    .map(|b| match leadership.followers.get(b) {
                        Some(progress) => progress.incarnation,
                        None => my_incarnation,
                    })
                    .collect();
                leadership.altering_isr = true;
                leadership.proposed_isr = wanted.clone();
                proposals.push(IsrProposal {
                    partition: *partition,
                    leader_epoch: leadership.epoch,
                    isr_version: leadership.isr_version,
                    isr: wanted,
                    incarnations,
                });
            }
        }
        proposals
    }

    /// No answer to an ISR proposal: the controller may have applied it, so it stays open
    /// (its members still count for the high watermark) and is sent again, as Kafka retries
    /// an AlterPartition until it is answered.
    fn isr_unanswered(&mut self, proposal: IsrProposal) {
        if let Some(leadership) = self.leading.get_mut(&proposal.partition) {
            if leadership.epoch == proposal.leader_epoch && leadership.altering_isr {
                leadership.unanswered = Some(proposal);
            }
        }
    }

    fn isr_altered(
        &mut self,
        partition: PartitionId,
        epoch: i32,
        state: Option<PartitionLeadership>,
    ) {
        if let Some(leadership) = self.leading.get_mut(&partition) {
            if leadership.epoch == epoch {
                leadership.altering_isr = false;
                leadership.proposed_isr.clear();
                if let Some(state) = state {
                    if state.leader_epoch == epoch && state.isr_version > leadership.isr_version {
                        leadership.isr = state.isr;
                        leadership.isr_version = state.isr_version;
                    }
                }
            }
        }
        self.advance_high_watermark(partition);
    }

    /// What this broker follows from `leader`: every hosted partition the table says it
    /// leads, with this broker's log end and last epoch there.
    pub(super) fn followed_from(&self, leader: usize) -> Vec<FollowedPartition> {
        self.replicas
            .iter()
            .filter_map(|(partition, replica)| {
                let (target, leader_epoch) = self.follow_target(*partition)?;
                (target == leader).then(|| FollowedPartition {
                    partition: *partition,
                    leader_epoch,
                    log_end: replica.log_end(),
                    last_epoch: replica.last_epoch(),
                })
            })
            .collect()
    }

    /// The signal of a change in the partition table (see `table_changed`).
    pub(super) fn table_changed(&self) -> Arc<Notify> {
        self.table_changed.clone()
    }

    /// This broker's id and incarnation, as its follower fetches name it.
    pub(super) fn follower_id(&self) -> (usize, u64) {
        (self.id, self.incarnation)
    }

    /// Applies a leader's answer to a follower fetch of `sent`; false unless every
    /// partition's part was applied.
    pub(super) fn apply_replicated(
        &mut self,
        leader: usize,
        sent: &[FollowedPartition],
        answer: Option<BrokerAnswer>,
    ) -> bool {
        let Some(BrokerAnswer::Replicated(answers)) = answer else {
            return false;
        };
        debug_assert_eq!(answers.len(), sent.len(), "an answer per partition fetched");
        let mut applied = true;
        for (fetched, answer) in sent.iter().zip(answers) {
            applied &= self.apply_replica_answer(leader, fetched, answer);
        }
        applied
    }

    /// Applies one partition's part of a follower fetch's answer, only if nothing changed
    /// since the fetch was sent (leader, epoch, this replica's log).
    fn apply_replica_answer(
        &mut self,
        leader: usize,
        fetched: &FollowedPartition,
        answer: ReplicaAnswer,
    ) -> bool {
        let partition = fetched.partition;
        let unchanged = self.follow_target(partition) == Some((leader, fetched.leader_epoch))
            && self.replicas.get(&partition).map(Replica::log_end) == Some(fetched.log_end);
        let Some(replica) = self.replicas.get_mut(&partition).filter(|_| unchanged) else {
            return false;
        };
        match answer {
            ReplicaAnswer::Replicate {
                entries,
                high_watermark,
            } => {
                replica.append_as_follower(entries);
                replica.set_high_watermark(high_watermark);
                self.flush_after_append(partition);
                true
            }
            ReplicaAnswer::Diverged { truncate_to } => {
                replica.truncate(truncate_to);
                true
            }
            ReplicaAnswer::NotLeader => false,
        }
    }

    /// Where this broker should fetch `partition` from: `(leader, epoch)`.
    fn follow_target(&self, partition: PartitionId) -> Option<(usize, i32)> {
        if self.leading.contains_key(&partition) {
            return None;
        }
        let state = self.view.get(&partition)?;
        let leader = state.leader?;
        (leader != self.id).then_some((leader, state.leader_epoch))
    }

    /// Whether this broker has heard from the controller who leads `partition`.
    pub fn knows(&self, partition: PartitionId) -> bool {
        self.view.contains_key(&partition)
    }

    /// The epoch this broker leads `partition` in, if it does.
    pub fn leads(&self, partition: PartitionId) -> Option<i32> {
        self.leading
            .get(&partition)
            .map(|leadership| leadership.epoch)
    }

    /// The leader's committed records, for inspection.
    pub fn committed_log(&self, partition: PartitionId) -> Option<Vec<(i64, Entry)>> {
        self.committed_range(partition, 0, i64::MAX)
    }

    /// The committed entries with offsets in `[from, until)`.
    pub fn committed_range(
        &self,
        partition: PartitionId,
        from: i64,
        until: i64,
    ) -> Option<Vec<(i64, Entry)>> {
        let replica = self.replicas.get(&partition)?;
        let until = until.min(replica.high_watermark());
        Some(replica.read(from, until, usize::MAX))
    }

    /// The high watermark of a hosted partition.
    pub fn high_watermark(&self, partition: PartitionId) -> Option<i64> {
        self.replicas
            .get(&partition)
            .map(|replica| replica.high_watermark())
    }
}

/// The broker node's main task (its madsim `init`): recovers from its disk, then serves.
pub async fn run(state: Arc<Mutex<BrokerState>>, network: Network) {
    let (id, config) = {
        let mut broker = lock(&state);
        // After a restart only what was flushed is left.
        broker.crash();
        // Counts up across restarts, so a leader can tell a dead incarnation's late fetch.
        broker.incarnation += 1;
        (broker.id, broker.config.clone())
    };
    let endpoint = network.bind(broker_address(id));
    madsim::task::spawn(heartbeat_loop(
        state.clone(),
        endpoint.clone(),
        config.clone(),
    ));
    madsim::task::spawn(isr_loop(state.clone(), endpoint.clone(), config.clone()));
    if let FlushPolicy::Interval(every) = config.flush {
        let flusher = state.clone();
        madsim::task::spawn(async move {
            loop {
                sleep(every).await;
                for replica in lock(&flusher).replicas.values_mut() {
                    replica.flush();
                }
            }
        });
    }
    // One fetcher per other broker, as Kafka runs a replica fetcher per source broker.
    for leader in (0..config.brokers).filter(|leader| *leader != id) {
        let fetcher = super::fetcher::run(state.clone(), endpoint.clone(), leader, config.clone());
        madsim::task::spawn(fetcher);
    }
    let replica_wait = config.replica_fetch_wait();
    rpc::serve(endpoint, move |request: BrokerRequest| {
        handle(state.clone(), request, config.request_timeout, replica_wait)
    })
    .await;
}

async fn handle(
    state: Arc<Mutex<BrokerState>>,
    request: BrokerRequest,
    request_timeout: Duration,
    replica_wait: Duration,
) -> Option<BrokerAnswer> {
    match request {
        BrokerRequest::Produce {
            partition,
            records,
            acks,
        } => produce(&state, partition, records, acks, request_timeout).await,
        BrokerRequest::Fetch(fetch) => Some(consumer_fetch(&state, &fetch).await),
        BrokerRequest::ReplicaFetch(fetch) => replica_fetch(&state, fetch, replica_wait).await,
        BrokerRequest::Metadata => Some(BrokerAnswer::Metadata(
            lock(&state).view.values().cloned().collect(),
        )),
    }
}

/// Appends as leader; with `acks=all` answers once the ISR has the batch's last record.
async fn produce(
    state: &Mutex<BrokerState>,
    partition: PartitionId,
    records: Vec<Produced>,
    acks: Acks,
    request_timeout: Duration,
) -> Option<BrokerAnswer> {
    let (result, epoch, progress) = {
        let mut broker = lock(state);
        let epoch = broker.leading.get(&partition).map_or(-1, |l| l.epoch);
        (
            broker.produce(partition, records, acks),
            epoch,
            broker.progress.clone(),
        )
    };
    match (acks, result) {
        (Acks::Zero, _) => None,
        (Acks::All, ProduceResult::Appended(offsets)) => {
            // The batch is acknowledged once its last record is committed.
            let last = offsets.iter().copied().max().unwrap_or(-1);
            let answer =
                wait_replicated(state, &progress, partition, epoch, last, request_timeout).await;
            Some(BrokerAnswer::Produced(
                answer.unwrap_or(ProduceResult::Appended(offsets)),
            ))
        }
        (_, result) => Some(BrokerAnswer::Produced(result)),
    }
}

/// Serves a consumer's fetch, holding it while it has nothing to give (up to its `max_wait`):
/// every append, high-watermark move or leadership change wakes it to look again.
async fn consumer_fetch(state: &Mutex<BrokerState>, fetch: &ConsumerFetch) -> BrokerAnswer {
    let deadline = Instant::now() + fetch.max_wait;
    loop {
        let progress = {
            let broker = lock(state);
            if let Some(answer) = broker.fetch_many(fetch) {
                return BrokerAnswer::Fetched(answer);
            }
            broker.progress.clone()
        };
        // No task runs between the look above and this registration (one simulated thread),
        // so no change is missed.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || timeout(left, progress.notified()).await.is_err() {
            let empty = fetch
                .partitions
                .iter()
                .map(|_| PartitionFetch::Records(Vec::new()));
            return BrokerAnswer::Fetched(empty.collect());
        }
    }
}

/// Serves a follower's fetch as leader. Held while the follower has every partition's whole
/// log (up to `wait`), answered at once when any partition has records or an error, or on the
/// first append to any of them, as Kafka answers a fetch when any partition has data.
async fn replica_fetch(
    state: &Mutex<BrokerState>,
    fetch: FollowerFetch,
    wait: Duration,
) -> Option<BrokerAnswer> {
    let (early, appended) = {
        let mut broker = lock(state);
        let now = Instant::now();
        let mut early = Vec::with_capacity(fetch.partitions.len());
        let mut appended = Vec::with_capacity(fetch.partitions.len());
        let mut ready = false;
        for fetched in &fetch.partitions {
            let partition = fetched.partition;
            let answer = broker
                .replica_fetch(fetch.follower, fetch.incarnation, *fetched, now)
                .or_else(|| {
                    (broker.leads(partition) != Some(fetched.leader_epoch))
                        .then_some(ReplicaAnswer::NotLeader)
                });
            let caught_up =
                broker.replicas.get(&partition).map(Replica::log_end) == Some(fetched.log_end);
            match broker.appended.get(&partition) {
                Some(notify) if answer.is_none() && caught_up => appended.push(notify.clone()),
                _ => ready = true,
            }
            early.push(answer);
        }
        if ready {
            return Some(broker.replica_answer(&fetch, early));
        }
        (early, appended)
    };
    // Long poll. No append is missed before the wait registers: no task runs in between
    // (one simulated thread).
    let _ = timeout(wait, any_notified(&appended)).await;
    Some(lock(state).replica_answer(&fetch, early))
}

/// Waits for a signal on any of `notifies`.
async fn any_notified(notifies: &[Arc<Notify>]) {
    let mut waits: Vec<_> = notifies.iter().map(|n| Box::pin(n.notified())).collect();
    poll_fn(|cx| {
        match waits
            .iter_mut()
            .any(|wait| wait.as_mut().poll(cx).is_ready())
        {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    })
    .await;
}

/// Waits until the ISR has `offset`; `None` means it does (answer with the append result).
async fn wait_replicated(
    state: &Mutex<BrokerState>,
    progress: &Notify,
    partition: PartitionId,
    epoch: i32,
    offset: i64,
    request_timeout: Duration,
) -> Option<ProduceResult> {
    let deadline = Instant::now() + request_timeout;
    loop {
        let notified = progress.notified();
        match lock(state).replicated(partition, epoch, offset) {
            Some(true) => return None,
            Some(false) => return Some(ProduceResult::NotLeader),
            None => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || timeout(left, notified).await.is_err() {
            return Some(ProduceResult::Timeout);
        }
    }
}

async fn heartbeat_loop(state: Arc<Mutex<BrokerState>>, endpoint: Endpoint, config: KafkaConfig) {
    loop {
        let (broker, incarnation) = {
            let broker = lock(&state);
            (broker.id, broker.incarnation)
        };
        let request = ControllerRequest::Heartbeat {
            broker,
            incarnation,
        };
        let answer = rpc::call(
            &endpoint,
            controller_address(),
            request,
            config.request_timeout,
        );
        if let Some(ControllerAnswer::Metadata(states)) = answer.await {
            lock(&state).apply_view(states, Instant::now());
        }
        sleep(HEARTBEAT_INTERVAL).await;
    }
}

async fn isr_loop(state: Arc<Mutex<BrokerState>>, endpoint: Endpoint, config: KafkaConfig) {
    loop {
        sleep(ISR_CHECK_INTERVAL).await;
        let (leader, proposals) = {
            let mut broker = lock(&state);
            (broker.id, broker.isr_proposals(Instant::now()))
        };
        for proposal in proposals {
            let (partition, epoch) = (proposal.partition, proposal.leader_epoch);
            let request = ControllerRequest::AlterIsr {
                leader,
                proposal: proposal.clone(),
            };
            let answer = rpc::call(
                &endpoint,
                controller_address(),
                request,
                config.request_timeout,
            );
            match answer.await {
                Some(ControllerAnswer::AlterIsr(altered)) => {
                    lock(&state).isr_altered(partition, epoch, altered);
                }
                _ => lock(&state).isr_unanswered(proposal),
            }
        }
    }
}

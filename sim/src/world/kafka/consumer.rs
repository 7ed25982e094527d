//! The consumer client: `SimLog` implements `holdfast::ports::EventLog` as one member of a
//! consumer group (eager rebalances: everything is revoked, then the new assignment arrives
//! with the committed offsets); `SimGroupOffsets` reads any group's commits.

use super::broker::{BrokerAnswer, BrokerRequest, ConsumerFetch, PartitionFetch};
use super::controller::{ControllerAnswer, ControllerRequest};
use super::group::{GroupAnswer, GroupRequest};
use super::metadata::MetadataCache;
use super::{broker_address, controller_address, unavailable, SERVICE};
use crate::world::lock::lock;
use crate::world::pause_hook::PauseHook;
use crate::world::rpc;
use crate::world::transport::Endpoint;
use holdfast::ports::{
    CommitMode, EventLog, GroupOffsets, OffsetCommit, PartitionId, Polled, PortError, Rebalance,
    Record,
};
use madsim::task::JoinHandle;
use madsim::time::{sleep, sleep_until, Instant};
use std::collections::{BTreeMap, BTreeSet};
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};

/// How long a broker may hold a fetch that has nothing to give (`fetch.max.wait.ms`, scaled
/// down like the other timeouts of the model; well under the request timeout).
const FETCH_MAX_WAIT: Duration = Duration::from_millis(250);
/// Pause before looking again when no fetch could be sent (no leader known).
const FETCH_IDLE: Duration = Duration::from_millis(5);
/// Pause between join attempts while a rebalance is under way.
const JOIN_RETRY: Duration = Duration::from_millis(20);

/// The consumer's settings.
#[derive(Clone, Debug)]
pub struct SimConsumerConfig {
    pub brokers: usize,
    pub partitions: i32,
    pub request_timeout: Duration,
    pub session_timeout: Duration,
    /// Refuse every second pause or resume (see `WorldConfig::client_control_failures`).
    pub control_failures: bool,
    /// Where the fault injector stops a member right after it learned of an assignment and
    /// before it could act on it (claim its progress, fetch): a zombie's late assignment.
    pub assignment_hook: PauseHook,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Unjoined,
    Joined,
    /// The coordinator started a rebalance: revoke everything, then rejoin.
    MustRejoin,
    /// The coordinator evicted us: our partitions are gone; rejoin as a new member.
    Lost,
}

#[derive(Debug)]
struct Membership {
    member: Option<u64>,
    generation: i32,
    status: Status,
}

/// A broker's answer to come.
type Answer = Pin<Box<dyn Future<Output = Option<BrokerAnswer>> + Send>>;

/// A fetch sent to one broker and not answered yet. Like a real client's, it outlives the
/// poll that sent it: a poll that times out leaves it in flight for the next one.
struct InFlight {
    broker: usize,
    partitions: Vec<(PartitionId, i64)>,
    /// Only ever polled through `&mut` (`get_mut`, no locking): the mutex just makes the
    /// client `Sync`, which the pipeline's futures need.
    answer: Mutex<Answer>,
}

struct CommitJob {
    request: GroupRequest,
    reply: Option<oneshot::Sender<Result<(), PortError>>>,
}

/// One consumer-group member on the node that created it.
pub struct SimLog {
    endpoint: Endpoint,
    group: String,
    config: SimConsumerConfig,
    metadata: MetadataCache,
    membership: Arc<Mutex<Membership>>,
    /// Signalled when the heartbeat learns of a rebalance or an eviction, so that a poll
    /// waiting on its fetches returns at once.
    membership_changed: Arc<Notify>,
    /// At most one fetch per broker, as Kafka clients send them.
    in_flight: Vec<InFlight>,
    owned: BTreeSet<PartitionId>,
    positions: BTreeMap<PartitionId, i64>,
    paused: BTreeSet<PartitionId>,
    /// Pause and resume calls so far (which of them fail is decided by their number).
    control_calls: u64,
    pending_assignment: Option<Vec<PartitionId>>,
    rotation: usize,
    commits: mpsc::UnboundedSender<CommitJob>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for SimLog {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl SimLog {
    /// A member of `group` using `endpoint`; it joins on its first poll.
    pub fn new(endpoint: Endpoint, group: &str, config: SimConsumerConfig) -> SimLog {
        let membership = Arc::new(Mutex::new(Membership {
            member: None,
            generation: -1,
            status: Status::Unjoined,
        }));
        let membership_changed = Arc::new(Notify::new());
        let (commits, queue) = mpsc::unbounded_channel();
        let tasks = vec![
            madsim::task::spawn(heartbeat_loop(
                endpoint.clone(),
                group.to_string(),
                (membership.clone(), membership_changed.clone()),
                config.clone(),
            )),
            // One sender, in order: Kafka commits travel on one connection to the coordinator,
            // so an older asynchronous commit never lands after a newer one.
            madsim::task::spawn(commit_loop(endpoint.clone(), queue, config.request_timeout)),
        ];
        SimLog {
            metadata: MetadataCache::new(config.brokers, config.partitions),
            endpoint,
            group: group.to_string(),
            config,
            membership,
            membership_changed,
            in_flight: Vec::new(),
            owned: BTreeSet::new(),
            positions: BTreeMap::new(),
            paused: BTreeSet::new(),
            control_calls: 0,
            pending_assignment: None,
            rotation: 0,
            commits,
            tasks,
        }
    }

    async fn coordinator(&self, request: GroupRequest) -> Result<GroupAnswer, PortError> {
        let request = ControllerRequest::Group(request);
        let answer = rpc::call(
            &self.endpoint,
            controller_address(),
            request,
            self.config.request_timeout,
        );
        match answer.await {
            Some(ControllerAnswer::Group(answer)) => Ok(answer),
            _ => Err(unavailable("group coordinator did not answer")),
        }
    }

    /// Revokes everything if the coordinator asked for it; `Some` is the poll's answer.
    fn revoke_if_needed(&mut self) -> Option<Polled> {
        let mut membership = lock(&self.membership);
        if !matches!(membership.status, Status::MustRejoin | Status::Lost) {
            return None;
        }
        if membership.status == Status::Lost {
            membership.member = None;
        }
        membership.status = Status::Unjoined;
        drop(membership);
        self.pending_assignment = None;
        self.positions.clear();
        // Answers to fetches of the old assignment are dropped unread.
        self.in_flight.clear();
        let rebalances: Vec<Rebalance> = std::mem::take(&mut self.owned)
            .into_iter()
            .map(|partition| Rebalance::Revoked { partition })
            .collect();
        (!rebalances.is_empty()).then(|| Polled {
            commits_answered: Vec::new(),
            rebalances,
            records: Vec::new(),
        })
    }

    /// Joins until assigned or `deadline`; true once assigned.
    async fn join(&mut self, deadline: Instant) -> Result<bool, PortError> {
        loop {
            let member = lock(&self.membership).member;
            let request = GroupRequest::Join {
                group: self.group.clone(),
                member,
            };
            match self.coordinator(request).await? {
                GroupAnswer::Joined {
                    member,
                    generation,
                    partitions,
                } => {
                    let mut membership = lock(&self.membership);
                    membership.member = Some(member);
                    membership.generation = generation;
                    membership.status = Status::Joined;
                    self.pending_assignment = Some(partitions);
                    return Ok(true);
                }
                GroupAnswer::Pending { member } => {
                    lock(&self.membership).member = Some(member);
                }
                other => return Err(unavailable(format!("unexpected join answer {other:?}"))),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            sleep(JOIN_RETRY.min(left)).await;
        }
    }

    /// Reads the committed offsets of a fresh assignment and reports it.
    async fn take_assignment(&mut self, partitions: Vec<PartitionId>) -> Result<Polled, PortError> {
        let request = GroupRequest::Committed {
            group: self.group.clone(),
            partitions: Some(partitions.clone()),
        };
        let GroupAnswer::Offsets(offsets) = self.coordinator(request).await? else {
            return Err(unavailable("unexpected answer to an offset fetch"));
        };
        let committed: BTreeMap<PartitionId, _> = offsets.into_iter().collect();
        let generation = lock(&self.membership).generation;
        let mut rebalances = Vec::new();
        for partition in partitions {
            let offset = committed.get(&partition).cloned();
            // auto.offset.reset=earliest: no commit means the start of the log.
            self.positions
                .insert(partition, offset.as_ref().map_or(0, |c| c.offset));
            self.owned.insert(partition);
            rebalances.push(Rebalance::Assigned {
                partition,
                committed: offset,
                generation,
            });
        }
        self.pending_assignment = None;
        self.config.assignment_hook.reached().await;
        Ok(Polled {
            commits_answered: Vec::new(),
            rebalances,
            records: Vec::new(),
        })
    }

    /// Sends a fetch to each leader of owned, unpaused partitions that no fetch in flight
    /// covers, unless that broker has one in flight already.
    async fn send_fetches(&mut self, records_max: usize) {
        let covered: BTreeSet<PartitionId> = self
            .in_flight
            .iter()
            .flat_map(|fetch| fetch.partitions.iter().map(|(partition, _)| *partition))
            .collect();
        let mut partitions: Vec<PartitionId> = self
            .owned
            .iter()
            .copied()
            .filter(|p| !self.paused.contains(p) && !covered.contains(p))
            .collect();
        if partitions.is_empty() {
            return;
        }
        // Rotate the start for fairness between partitions under `records_max`.
        self.rotation = self.rotation.wrapping_add(1);
        let start = self.rotation % partitions.len();
        partitions.rotate_left(start);
        let timeout = self.config.request_timeout;
        let mut by_broker: BTreeMap<usize, Vec<(PartitionId, i64)>> = BTreeMap::new();
        for partition in partitions {
            let Some(leader) = self
                .metadata
                .leader_or_refresh(&self.endpoint, partition, timeout)
                .await
            else {
                continue;
            };
            if self.in_flight.iter().all(|fetch| fetch.broker != leader) {
                let position = self.positions.get(&partition).copied().unwrap_or(0);
                by_broker
                    .entry(leader)
                    .or_default()
                    .push((partition, position));
            }
        }
        for (broker, partitions) in by_broker {
            let request = BrokerRequest::Fetch(ConsumerFetch {
                partitions: partitions.clone(),
                count_max: records_max,
                max_wait: FETCH_MAX_WAIT,
            });
            let endpoint = self.endpoint.clone();
            let answer: Answer = Box::pin(async move {
                rpc::call(&endpoint, broker_address(broker), request, timeout).await
            });
            let answer = Mutex::new(answer);
            self.in_flight.push(InFlight {
                broker,
                partitions,
                answer,
            });
        }
    }

    /// Waits for answers to the fetches in flight: returns those answered at the first
    /// moment any is, or nothing at `deadline` or when the membership changed.
    async fn answered(&mut self, deadline: Instant) -> Vec<(InFlight, Option<BrokerAnswer>)> {
        // With nothing in flight (no leader known), look again shortly.
        let until = match self.in_flight.is_empty() {
            true => deadline.min(Instant::now() + FETCH_IDLE),
            false => deadline,
        };
        let changed = self.membership_changed.clone();
        let mut changed = pin!(changed.notified());
        let mut expired = pin!(sleep_until(until));
        let in_flight = &mut self.in_flight;
        poll_fn(|cx| {
            let mut answered = Vec::new();
            let mut index = 0;
            while index < in_flight.len() {
                let answer = in_flight[index].answer.get_mut();
                match answer
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_mut()
                    .poll(cx)
                {
                    Poll::Ready(answer) => answered.push((in_flight.remove(index), answer)),
                    Poll::Pending => index += 1,
                }
            }
            let over = changed.as_mut().poll(cx).is_ready() || expired.as_mut().poll(cx).is_ready();
            match !answered.is_empty() || over {
                true => Poll::Ready(answered),
                false => Poll::Pending,
            }
        })
        .await
    }

    /// The records of answered fetches that still apply (partition owned, unpaused, not
    /// moved since), `records_max` at most; the rest is fetched again later.
    fn take_answers(
        &mut self,
        answers: Vec<(InFlight, Option<BrokerAnswer>)>,
        records_max: usize,
    ) -> Vec<Record> {
        let mut records = Vec::new();
        for (fetch, answer) in answers {
            let Some(BrokerAnswer::Fetched(parts)) = answer else {
                for (partition, _) in &fetch.partitions {
                    self.metadata.forget(*partition);
                }
                continue;
            };
            for ((partition, position), part) in fetch.partitions.into_iter().zip(parts) {
                if !self.owned.contains(&partition)
                    || self.paused.contains(&partition)
                    || self.positions.get(&partition) != Some(&position)
                {
                    continue;
                }
                match part {
                    PartitionFetch::Records(batch) => {
                        let room = records_max.saturating_sub(records.len());
                        let batch = batch.into_iter().take(room);
                        let start = records.len();
                        records.extend(batch);
                        if let Some(last) = records.get(start..).and_then(<[Record]>::last) {
                            debug_assert_eq!(
                                records[start].offset, position,
                                "fetch starts at the position"
                            );
                            self.positions.insert(partition, last.offset + 1);
                        }
                    }
                    // The log lost what we were past (unclean election): auto.offset.reset.
                    PartitionFetch::OutOfRange => {
                        self.positions.insert(partition, 0);
                    }
                    PartitionFetch::NotLeader => self.metadata.forget(partition),
                }
            }
        }
        records
    }
}

impl EventLog for SimLog {
    async fn poll(&mut self, records_max: usize, timeout: Duration) -> Result<Polled, PortError> {
        let deadline = Instant::now() + timeout;
        if let Some(revoked) = self.revoke_if_needed() {
            return Ok(revoked);
        }
        if lock(&self.membership).status == Status::Unjoined && !self.join(deadline).await? {
            return Ok(Polled::default());
        }
        if let Some(partitions) = self.pending_assignment.clone() {
            return self.take_assignment(partitions).await;
        }
        let records_max = records_max.max(1);
        loop {
            self.send_fetches(records_max).await;
            let answers = self.answered(deadline).await;
            let records = self.take_answers(answers, records_max);
            let left = deadline.saturating_duration_since(Instant::now());
            let status = lock(&self.membership).status;
            if !records.is_empty() || left.is_zero() || status != Status::Joined {
                return Ok(Polled {
                    commits_answered: Vec::new(),
                    rebalances: Vec::new(),
                    records,
                });
            }
        }
    }

    async fn commit(
        &mut self,
        offsets: &[OffsetCommit],
        mode: CommitMode,
    ) -> Result<(), PortError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let (member, generation) = {
            let membership = lock(&self.membership);
            (membership.member, membership.generation)
        };
        let Some(member) = member else {
            return Err(PortError::Fenced {
                service: SERVICE,
                detail: "not a member of the group".to_string(),
            });
        };
        let request = GroupRequest::Commit {
            group: self.group.clone(),
            member,
            generation,
            offsets: offsets.to_vec(),
        };
        if mode == CommitMode::Async {
            let job = CommitJob {
                request,
                reply: None,
            };
            return self
                .commits
                .send(job)
                .map_err(|_| unavailable("commit queue closed"));
        }
        let (reply, answer) = oneshot::channel();
        let job = CommitJob {
            request,
            reply: Some(reply),
        };
        self.commits
            .send(job)
            .map_err(|_| unavailable("commit queue closed"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(unavailable("commit queue closed")))
    }

    async fn pause(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        self.control_refused()?;
        self.paused.extend(partitions);
        Ok(())
    }

    async fn resume(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        self.control_refused()?;
        for partition in partitions {
            self.paused.remove(partition);
        }
        Ok(())
    }
}

impl SimLog {
    /// Counts a pause or resume call; with control failures on, every second one is refused
    /// (and changes nothing).
    fn control_refused(&mut self) -> Result<(), PortError> {
        self.control_calls += 1;
        if self.config.control_failures && self.control_calls.is_multiple_of(2) {
            holdfast::reach!("fault.client_control_refused");
            return Err(PortError::Rejected {
                service: "kafka",
                detail: "Local: Unknown partition".into(),
            });
        }
        Ok(())
    }
}

async fn heartbeat_loop(
    endpoint: Endpoint,
    group: String,
    (membership, changed): (Arc<Mutex<Membership>>, Arc<Notify>),
    config: SimConsumerConfig,
) {
    let interval = (config.session_timeout / 3).max(Duration::from_millis(10));
    // The last heartbeat the coordinator answered (or the start of the membership). Like
    // librdkafka, a member that heard nothing for a whole session gives its assignment up
    // itself: the coordinator has evicted it by then.
    let mut answered_at = Instant::now();
    loop {
        sleep(interval).await;
        let (member, generation, status) = {
            let membership = lock(&membership);
            (membership.member, membership.generation, membership.status)
        };
        let (Some(member), Status::Joined) = (member, status) else {
            answered_at = Instant::now();
            continue;
        };
        if answered_at.elapsed() > config.session_timeout {
            let mut membership = lock(&membership);
            if membership.member == Some(member) && membership.status == Status::Joined {
                membership.status = Status::Lost;
                changed.notify_one();
            }
            continue;
        }
        let request = ControllerRequest::Group(GroupRequest::Heartbeat {
            group: group.clone(),
            member,
            generation,
        });
        let answer = rpc::call(
            &endpoint,
            controller_address(),
            request,
            config.request_timeout,
        );
        let answer = answer.await;
        if answer.is_some() {
            answered_at = Instant::now();
        }
        let status = match answer {
            Some(ControllerAnswer::Group(GroupAnswer::Rebalance)) => Status::MustRejoin,
            Some(ControllerAnswer::Group(GroupAnswer::UnknownMember)) => Status::Lost,
            _ => continue,
        };
        let mut membership = lock(&membership);
        if membership.member == Some(member) && membership.status == Status::Joined {
            membership.status = status;
            changed.notify_one();
        }
    }
}

async fn commit_loop(
    endpoint: Endpoint,
    mut queue: mpsc::UnboundedReceiver<CommitJob>,
    request_timeout: Duration,
) {
    while let Some(job) = queue.recv().await {
        let request = ControllerRequest::Group(job.request);
        let answer = rpc::call(&endpoint, controller_address(), request, request_timeout).await;
        let result = match answer {
            Some(ControllerAnswer::Group(GroupAnswer::Committed)) => Ok(()),
            Some(ControllerAnswer::Group(GroupAnswer::Fenced(detail))) => Err(PortError::Fenced {
                service: SERVICE,
                detail,
            }),
            _ => Err(unavailable("group coordinator did not answer the commit")),
        };
        if let Some(reply) = job.reply {
            let _ = reply.send(result);
        }
    }
}

/// Reads committed offsets of any group (the compensator's view of the main group).
#[derive(Clone)]
pub struct SimGroupOffsets {
    endpoint: Endpoint,
    request_timeout: Duration,
}

impl SimGroupOffsets {
    /// A reader using `endpoint`.
    pub fn new(endpoint: Endpoint, request_timeout: Duration) -> SimGroupOffsets {
        SimGroupOffsets {
            endpoint,
            request_timeout,
        }
    }
}

impl GroupOffsets for SimGroupOffsets {
    async fn committed(
        &self,
        group: &str,
        partitions: &[PartitionId],
    ) -> Result<Vec<Option<i64>>, PortError> {
        let request = ControllerRequest::Group(GroupRequest::Committed {
            group: group.to_string(),
            partitions: Some(partitions.to_vec()),
        });
        let answer = rpc::call(
            &self.endpoint,
            controller_address(),
            request,
            self.request_timeout,
        );
        let Some(ControllerAnswer::Group(GroupAnswer::Offsets(offsets))) = answer.await else {
            return Err(unavailable("group coordinator did not answer"));
        };
        let committed: BTreeMap<PartitionId, i64> =
            offsets.into_iter().map(|(p, c)| (p, c.offset)).collect();
        Ok(partitions
            .iter()
            .map(|p| committed.get(p).copied())
            .collect())
    }
}

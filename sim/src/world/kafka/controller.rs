//! The controller: broker liveness by heartbeat, leader election (clean from the ISR, or
//! unclean from any live replica), ISR changes proposed by leaders; plus the group
//! coordinator. One madsim node; its partition table and committed offsets are durable
//! (ZooKeeper / `__consumer_offsets`), broker liveness and group membership are not.

use super::group::{store_commits, Group, GroupAnswer, GroupRequest};
use super::{controller_address, KafkaConfig, PartitionLeadership};
use crate::world::lock::lock;
use crate::world::rpc;
use crate::world::transport::Network;
use crate::world::FaultLog;
use holdfast::ports::{CommittedOffset, PartitionId};
use madsim::time::{timeout, Instant};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How often the controller checks sessions.
const TICK: Duration = Duration::from_millis(20);

/// A leader's request to change one partition's ISR.
#[derive(Clone, Debug)]
pub struct IsrProposal {
    pub partition: PartitionId,
    pub leader_epoch: i32,
    /// The ISR version the proposal starts from.
    pub isr_version: u64,
    pub isr: Vec<usize>,
    /// The incarnation of each proposed member as the leader knows it.
    pub incarnations: Vec<u64>,
}

/// A request to the controller.
#[derive(Clone, Debug)]
pub enum ControllerRequest {
    /// A broker is alive; `incarnation` changes when it restarts.
    Heartbeat {
        broker: usize,
        incarnation: u64,
    },
    /// A leader asks to change a partition's ISR.
    AlterIsr {
        leader: usize,
        proposal: IsrProposal,
    },
    Group(GroupRequest),
}

/// The controller's answer.
#[derive(Clone, Debug)]
pub enum ControllerAnswer {
    Metadata(Vec<PartitionLeadership>),
    /// The partition's state after the request (the ISR changed only if it matches).
    AlterIsr(Option<PartitionLeadership>),
    Group(GroupAnswer),
}

/// A commit the coordinator accepted: the ground truth of committed offsets over time
/// (a client's commit call may return before the coordinator answers, or be fenced).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedCommit {
    /// Virtual time since the world started.
    pub at: Duration,
    pub member: u64,
    pub generation: i32,
    pub partition: PartitionId,
    pub offset: i64,
}

#[derive(Clone, Copy, Debug)]
struct Liveness {
    incarnation: u64,
    last_seen: Instant,
    live: bool,
}

/// The controller's state, shared with the world for inspection.
#[derive(Debug)]
pub struct ControllerState {
    config: KafkaConfig,
    /// Durable: the partition table.
    pub partitions: Vec<PartitionLeadership>,
    /// Durable: committed offsets with metadata, per group.
    pub committed: BTreeMap<String, BTreeMap<PartitionId, CommittedOffset>>,
    /// Every commit the coordinator accepted, in order, per group (inspection only).
    pub accepted: BTreeMap<String, Vec<AcceptedCommit>>,
    brokers: BTreeMap<usize, Liveness>,
    groups: BTreeMap<String, Group>,
    /// Signalled when a group's rebalance completes (a new generation), or its members are
    /// forgotten: wakes the joins held for it.
    groups_settled: Arc<Notify>,
    faults: FaultLog,
}

impl ControllerState {
    /// A fresh cluster: replicas spread round-robin, the first replica leads, all in sync.
    pub fn new(config: KafkaConfig, faults: FaultLog, now: Instant) -> ControllerState {
        let partitions = (0..config.partitions)
            .map(|partition| {
                let replicas: Vec<usize> = (0..config.replication_factor)
                    .map(|offset| (partition as usize + offset) % config.brokers)
                    .collect();
                PartitionLeadership {
                    partition,
                    leader: Some(replicas[0]),
                    leader_epoch: 0,
                    isr: replicas.clone(),
                    isr_version: 0,
                    replicas,
                }
            })
            .collect();
        // Every broker starts alive with an unknown incarnation (0), adopted on first contact.
        let brokers = (0..config.brokers)
            .map(|broker| {
                let liveness = Liveness {
                    incarnation: 0,
                    last_seen: now,
                    live: true,
                };
                (broker, liveness)
            })
            .collect();
        ControllerState {
            config,
            partitions,
            committed: BTreeMap::new(),
            accepted: BTreeMap::new(),
            brokers,
            groups: BTreeMap::new(),
            groups_settled: Arc::new(Notify::new()),
            faults,
        }
    }

    /// A controller restart: volatile state is gone (group membership, not generations);
    /// brokers get a fresh session, counted from when their next heartbeat can arrive: a
    /// heartbeat sent to the dead controller waits out its request timeout first, which is
    /// longer than the session, so a session counted from the restart declared every live
    /// broker dead (and elected onto a broker that had lost its unflushed log meanwhile).
    fn restart(&mut self, now: Instant) {
        self.coordinator_failover();
        let grace = self.config.request_timeout;
        for liveness in self.brokers.values_mut() {
            liveness.last_seen = now + grace;
        }
    }

    /// The group coordinator moves (its broker failed): members are forgotten and rejoin;
    /// generations and committed offsets are durable.
    pub fn coordinator_failover(&mut self) {
        for group in self.groups.values_mut() {
            group.forget_members();
        }
        self.groups_settled.notify_waiters();
    }

    /// Every group's generation together: it moves whenever a rebalance completes.
    fn generations(&self) -> i64 {
        self.groups
            .values()
            .map(|g| i64::from(g.generation()))
            .sum()
    }

    /// Handles a request, and wakes the held joins if it completed a rebalance.
    fn answer(&mut self, request: ControllerRequest, now: Instant) -> ControllerAnswer {
        let before = self.generations();
        let answer = self.handle(request, now);
        if self.generations() != before {
            self.groups_settled.notify_waiters();
        }
        answer
    }

    fn heartbeat(&mut self, broker: usize, incarnation: u64, now: Instant) {
        debug_assert_ne!(incarnation, 0);
        let previous = self.brokers.get(&broker).copied();
        let same = |p: &Liveness| p.incarnation == incarnation || p.incarnation == 0;
        if let Some(previous) = previous {
            if previous.live && !same(&previous) {
                // It restarted faster than its session expired: its old self is dead.
                self.set_live(broker, false, now);
            }
        }
        self.brokers.insert(
            broker,
            Liveness {
                incarnation,
                last_seen: now,
                live: previous.is_some_and(|p| p.live && same(&p)),
            },
        );
        if !self.brokers[&broker].live {
            self.set_live(broker, true, now);
        }
    }

    fn set_live(&mut self, broker: usize, live: bool, now: Instant) {
        if let Some(liveness) = self.brokers.get_mut(&broker) {
            liveness.live = live;
        }
        self.faults.note(
            now,
            format!(
                "controller: broker {broker} {}",
                if live { "registered" } else { "dead" }
            ),
        );
        self.elect_all(now);
    }

    fn is_live(&self, broker: usize) -> bool {
        self.brokers
            .get(&broker)
            .is_some_and(|liveness| liveness.live)
    }

    /// Drops dead brokers from ISRs (never emptying one) and elects leaders where needed.
    fn elect_all(&mut self, now: Instant) {
        let live: Vec<bool> = (0..self.config.brokers).map(|b| self.is_live(b)).collect();
        let unclean = self.config.unclean_election;
        for state in &mut self.partitions {
            let before = state.clone();
            let live_isr: Vec<usize> = state.isr.iter().copied().filter(|b| live[*b]).collect();
            let leader_live = state.leader.is_some_and(|leader| live[leader]);
            if leader_live {
                if !live_isr.is_empty() && live_isr != state.isr {
                    state.isr = live_isr;
                    state.isr_version += 1;
                }
            } else if let Some(&leader) = live_isr.first() {
                state.leader = Some(leader);
                state.leader_epoch += 1;
                if live_isr != state.isr {
                    state.isr = live_isr;
                    state.isr_version += 1;
                }
            } else if let Some(&leader) = state.replicas.iter().find(|b| unclean && live[**b]) {
                state.leader = Some(leader);
                state.leader_epoch += 1;
                state.isr = vec![leader];
                state.isr_version += 1;
            } else if state.leader.is_some() {
                // Offline: the ISR keeps its last member, who alone may lead cleanly.
                state.leader = None;
            }
            if *state != before && state.leader != before.leader {
                self.faults.note(
                    now,
                    format!(
                        "controller: partition {} leader {:?} -> {:?} (epoch {}, isr {:?}{})",
                        state.partition,
                        before.leader,
                        state.leader,
                        state.leader_epoch,
                        state.isr,
                        if state.isr.len() == 1 && !before.isr.contains(&state.isr[0]) {
                            ", unclean"
                        } else {
                            ""
                        }
                    ),
                );
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        let before = self.generations();
        self.expire_brokers(now);
        let (session, partitions) = (self.config.session_timeout, self.config.partitions);
        for (name, group) in &mut self.groups {
            for member in group.tick(now, session, partitions) {
                self.faults.note(
                    now,
                    format!("coordinator: group {name} evicted member {member} (session timeout)"),
                );
            }
        }
        if self.generations() != before {
            self.groups_settled.notify_waiters();
        }
    }

    fn expire_brokers(&mut self, now: Instant) {
        let timeout = self.config.broker_session_timeout;
        let expired: Vec<usize> = self
            .brokers
            .iter()
            .filter(|(_, l)| l.live && now.saturating_duration_since(l.last_seen) > timeout)
            .map(|(broker, _)| *broker)
            .collect();
        for broker in expired {
            self.set_live(broker, false, now);
        }
    }

    /// Applies a leader's ISR change if it is the current leader, starts from the current
    /// ISR version, and every member it adds is alive in the incarnation the leader saw
    /// (KIP-903: a follower that restarted since cannot be re-added on old progress).
    fn alter_isr(&mut self, leader: usize, proposal: IsrProposal) -> Option<PartitionLeadership> {
        let index = usize::try_from(proposal.partition).ok()?;
        let state = self.partitions.get(index)?;
        let current = state.leader == Some(leader)
            && state.leader_epoch == proposal.leader_epoch
            && state.isr_version == proposal.isr_version;
        let additions_alive = proposal
            .isr
            .iter()
            .zip(&proposal.incarnations)
            .filter(|(member, _)| !state.isr.contains(member))
            .all(|(member, incarnation)| {
                self.brokers
                    .get(member)
                    .is_some_and(|l| l.live && l.incarnation == *incarnation)
            });
        let state = self.partitions.get_mut(index)?;
        if current && additions_alive && proposal.isr.contains(&leader) && state.isr != proposal.isr
        {
            debug_assert_eq!(proposal.isr.len(), proposal.incarnations.len());
            state.isr = proposal.isr;
            state.isr_version += 1;
        }
        Some(state.clone())
    }

    fn group(&mut self, request: GroupRequest, now: Instant) -> GroupAnswer {
        let (session, partitions) = (self.config.session_timeout, self.config.partitions);
        match request {
            GroupRequest::Join { group, member } => self
                .groups
                .entry(group)
                .or_default()
                .join(member, now, session, partitions),
            GroupRequest::Heartbeat {
                group,
                member,
                generation,
            } => self
                .groups
                .entry(group)
                .or_default()
                .heartbeat(member, generation, now),
            GroupRequest::Commit {
                group,
                member,
                generation,
                offsets,
            } => {
                let state = self.groups.entry(group.clone()).or_default();
                match state.check_commit(member, generation, &offsets) {
                    Ok(()) => {
                        let at = self.faults.elapsed(now);
                        let accepted = self.accepted.entry(group.clone()).or_default();
                        accepted.extend(offsets.iter().map(|commit| AcceptedCommit {
                            at,
                            member,
                            generation,
                            partition: commit.partition,
                            offset: commit.offset,
                        }));
                        let committed = self.committed.entry(group).or_default();
                        store_commits(committed, &offsets, self.config.commit_metadata_kept);
                        GroupAnswer::Committed
                    }
                    Err(reason) => GroupAnswer::Fenced(reason),
                }
            }
            GroupRequest::Committed { group, partitions } => {
                let committed = self.committed.get(&group).cloned().unwrap_or_default();
                let offsets = match partitions {
                    None => committed.into_iter().collect(),
                    Some(wanted) => wanted
                        .into_iter()
                        .filter_map(|p| committed.get(&p).map(|c| (p, c.clone())))
                        .collect(),
                };
                GroupAnswer::Offsets(offsets)
            }
        }
    }

    fn handle(&mut self, request: ControllerRequest, now: Instant) -> ControllerAnswer {
        match request {
            ControllerRequest::Heartbeat {
                broker,
                incarnation,
            } => {
                self.heartbeat(broker, incarnation, now);
                ControllerAnswer::Metadata(self.partitions.clone())
            }
            ControllerRequest::AlterIsr { leader, proposal } => {
                ControllerAnswer::AlterIsr(self.alter_isr(leader, proposal))
            }
            ControllerRequest::Group(request) => ControllerAnswer::Group(self.group(request, now)),
        }
    }
}

/// The controller node's main task (its madsim `init`).
pub async fn run(state: Arc<Mutex<ControllerState>>, network: Network) {
    lock(&state).restart(Instant::now());
    let endpoint = network.bind(controller_address());
    let ticker = state.clone();
    madsim::task::spawn(async move {
        loop {
            madsim::time::sleep(TICK).await;
            lock(&ticker).tick(Instant::now());
        }
    });
    rpc::serve(endpoint, move |request: ControllerRequest| {
        let join = match &request {
            ControllerRequest::Group(GroupRequest::Join { group, .. }) => Some(group.clone()),
            _ => None,
        };
        let (answer, generations) = {
            let mut controller = lock(&state);
            let answer = controller.answer(request, Instant::now());
            (answer, controller.generations())
        };
        let state = state.clone();
        async move {
            Some(match (join, answer) {
                (Some(group), ControllerAnswer::Group(GroupAnswer::Pending { member })) => {
                    hold_join(&state, group, member, generations).await
                }
                (_, answer) => answer,
            })
        }
    })
    .await;
}

/// Holds a join that must wait for its group's rebalance, as Kafka's coordinator holds a
/// JoinGroup until every member rejoined: answered once a rebalance completes (or members
/// are forgotten), or still pending after half the request timeout, so the client asks again.
async fn hold_join(
    state: &Mutex<ControllerState>,
    group: String,
    member: u64,
    generations: i64,
) -> ControllerAnswer {
    let (settled, hold) = {
        let controller = lock(state);
        // A rebalance may have completed before this task first ran.
        let unchanged = controller.generations() == generations;
        let settled = unchanged.then(|| controller.groups_settled.clone());
        (settled, controller.config.request_timeout / 2)
    };
    if let Some(settled) = settled {
        let _ = timeout(hold, settled.notified()).await;
    }
    let request = ControllerRequest::Group(GroupRequest::Join {
        group,
        member: Some(member),
    });
    lock(state).answer(request, Instant::now())
}

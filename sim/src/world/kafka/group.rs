//! The consumer-group coordinator: membership, generations, eager rebalances with range
//! assignment, session timeouts and committed offsets. Pure: time is passed in.

use holdfast::ports::{CommittedOffset, OffsetCommit, PartitionId};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A request to the coordinator.
#[derive(Clone, Debug)]
pub enum GroupRequest {
    /// Join (or rejoin) the group; `member` is `None` for a new member.
    Join { group: String, member: Option<u64> },
    Heartbeat {
        group: String,
        member: u64,
        generation: i32,
    },
    Commit {
        group: String,
        member: u64,
        generation: i32,
        offsets: Vec<OffsetCommit>,
    },
    /// Committed offsets of these partitions (all partitions with a commit if `None`).
    Committed {
        group: String,
        partitions: Option<Vec<PartitionId>>,
    },
}

/// The coordinator's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupAnswer {
    /// The member is in the current generation and owns these partitions.
    Joined {
        member: u64,
        generation: i32,
        partitions: Vec<PartitionId>,
    },
    /// A rebalance is under way: join again shortly.
    Pending {
        member: u64,
    },
    /// Heartbeat accepted, nothing changed.
    Stable,
    /// A rebalance started: revoke everything and rejoin.
    Rebalance,
    /// The member was evicted (session timeout): rejoin as a new member.
    UnknownMember,
    Committed,
    Fenced(String),
    Offsets(Vec<(PartitionId, CommittedOffset)>),
}

#[derive(Clone, Debug)]
struct Rebalancing {
    deadline: Instant,
    joined: BTreeSet<u64>,
}

/// One group's state. The generation (and the member-id counter) is durable, as Kafka keeps
/// it in `__consumer_offsets`; membership is not: a coordinator that restarts or fails over
/// forgets every member, which must rejoin into a later generation.
#[derive(Clone, Debug, Default)]
pub struct Group {
    members: BTreeMap<u64, Instant>,
    generation: i32,
    assignment: BTreeMap<u64, Vec<PartitionId>>,
    rebalancing: Option<Rebalancing>,
    next_member: u64,
}

impl Group {
    /// The current generation.
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// Live members and what they own.
    pub fn assignment(&self) -> &BTreeMap<u64, Vec<PartitionId>> {
        &self.assignment
    }

    /// A coordinator restart or failover: every member is forgotten (their heartbeats and
    /// commits are refused as unknown, so they rejoin), the generation goes on.
    pub fn forget_members(&mut self) {
        self.members.clear();
        self.assignment.clear();
        self.rebalancing = None;
    }

    /// Handles a join: registers the member, starts a rebalance if it is new, and answers
    /// with its assignment once every member has rejoined (or the others timed out).
    pub fn join(
        &mut self,
        member: Option<u64>,
        now: Instant,
        session_timeout: Duration,
        partitions: i32,
    ) -> GroupAnswer {
        let member = match member {
            Some(known) if self.members.contains_key(&known) => known,
            _ => {
                self.next_member += 1;
                let fresh = self.next_member + (u64::from(self.generation.unsigned_abs()) << 32);
                self.members.insert(fresh, now);
                self.start_rebalance(now, session_timeout);
                fresh
            }
        };
        self.members.insert(member, now);
        if self.rebalancing.is_none() && !self.assignment.contains_key(&member) {
            self.start_rebalance(now, session_timeout);
        }
        if let Some(rebalancing) = &mut self.rebalancing {
            rebalancing.joined.insert(member);
        }
        self.try_complete(now, partitions);
        match self.assignment.get(&member) {
            Some(owned) if self.rebalancing.is_none() => GroupAnswer::Joined {
                member,
                generation: self.generation,
                partitions: owned.clone(),
            },
            _ => GroupAnswer::Pending { member },
        }
    }

    /// Handles a heartbeat.
    pub fn heartbeat(&mut self, member: u64, generation: i32, now: Instant) -> GroupAnswer {
        if !self.members.contains_key(&member) {
            return GroupAnswer::UnknownMember;
        }
        self.members.insert(member, now);
        if self.rebalancing.is_some() || generation != self.generation {
            return GroupAnswer::Rebalance;
        }
        GroupAnswer::Stable
    }

    /// Checks that `member` is in the group under the current `generation`, as Kafka's
    /// coordinator does (during a rebalance the previous generation still counts, so members
    /// can commit on revoke). Like Kafka's, it does not check that the member owns the
    /// partitions it commits: a late commit of a partition that moved is the client's to
    /// avoid.
    pub fn check_commit(
        &self,
        member: u64,
        generation: i32,
        _offsets: &[OffsetCommit],
    ) -> Result<(), String> {
        if !self.members.contains_key(&member) {
            return Err(format!("member {member} is not in the group"));
        }
        if generation != self.generation {
            return Err(format!(
                "generation {generation} is stale (current {})",
                self.generation
            ));
        }
        Ok(())
    }

    /// Evicts members whose session expired and completes overdue rebalances.
    pub fn tick(&mut self, now: Instant, session_timeout: Duration, partitions: i32) -> Vec<u64> {
        let expired: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(**seen) > session_timeout)
            .map(|(member, _)| *member)
            .collect();
        for member in &expired {
            self.members.remove(member);
            if let Some(rebalancing) = &mut self.rebalancing {
                rebalancing.joined.remove(member);
            }
        }
        if !expired.is_empty() {
            self.start_rebalance(now, session_timeout);
        }
        self.try_complete(now, partitions);
        expired
    }

    fn start_rebalance(&mut self, now: Instant, session_timeout: Duration) {
        if self.rebalancing.is_none() {
            self.rebalancing = Some(Rebalancing {
                deadline: now + session_timeout,
                joined: BTreeSet::new(),
            });
        }
    }

    fn try_complete(&mut self, now: Instant, partitions: i32) {
        let Some(rebalancing) = &self.rebalancing else {
            return;
        };
        let everyone = self.members.keys().all(|m| rebalancing.joined.contains(m));
        if !everyone && now < rebalancing.deadline {
            return;
        }
        let joined = rebalancing.joined.clone();
        // Members that did not rejoin in time are out (Kafka's rebalance timeout).
        self.members.retain(|member, _| joined.contains(member));
        self.generation += 1;
        self.assignment = range_assignment(self.members.keys().copied(), partitions);
        self.rebalancing = None;
        debug_assert!(
            self.assignment.values().map(Vec::len).sum::<usize>() as i32 == partitions
                || self.members.is_empty()
        );
    }
}

/// Kafka's range assignor: sorted members each take a contiguous run of partitions, the
/// first ones one more when the split is uneven.
pub fn range_assignment(
    members: impl Iterator<Item = u64>,
    partitions: i32,
) -> BTreeMap<u64, Vec<PartitionId>> {
    let mut members: Vec<u64> = members.collect();
    members.sort_unstable();
    let mut assignment = BTreeMap::new();
    if members.is_empty() {
        return assignment;
    }
    let count = members.len() as i32;
    let (share, extra) = (partitions / count, partitions % count);
    let mut next = 0;
    for (index, member) in members.into_iter().enumerate() {
        let take = share + i32::from((index as i32) < extra);
        assignment.insert(member, (next..next + take).collect());
        next += take;
    }
    debug_assert_eq!(next, partitions);
    assignment
}

/// Stores commits (the durable part of the coordinator: `__consumer_offsets`), with their
/// metadata if `metadata_kept`.
pub fn store_commits(
    committed: &mut BTreeMap<PartitionId, CommittedOffset>,
    offsets: &[OffsetCommit],
    metadata_kept: bool,
) {
    for commit in offsets {
        committed.insert(
            commit.partition,
            CommittedOffset {
                offset: commit.offset,
                metadata: metadata_kept.then(|| commit.metadata.clone()),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(partition: PartitionId) -> Vec<OffsetCommit> {
        vec![OffsetCommit {
            partition,
            offset: 1,
            metadata: String::new(),
        }]
    }

    fn joined(answer: GroupAnswer) -> (u64, i32, Vec<PartitionId>) {
        match answer {
            GroupAnswer::Joined {
                member,
                generation,
                partitions,
            } => (member, generation, partitions),
            other => panic!("expected Joined, got {other:?}"),
        }
    }

    /// Goal: the generation fences commits, and only the generation (as in Kafka). Method: a
    /// second member joins; the first rejoins; the first's commit with the old generation is
    /// refused, while one during the rebalance with the old generation is accepted, and so is
    /// one under the new generation for a partition it no longer owns.
    #[test]
    fn a_stale_generation_is_fenced() {
        let (now, session) = (Instant::now(), Duration::from_secs(1));
        let mut group = Group::default();
        let (first, generation_one, owned) = joined(group.join(None, now, session, 4));
        assert_eq!(owned, vec![0, 1, 2, 3]);
        let GroupAnswer::Pending { member: second } = group.join(None, now, session, 4) else {
            panic!("the second member waits for the first to rejoin");
        };
        assert_eq!(
            group.heartbeat(first, generation_one, now),
            GroupAnswer::Rebalance
        );
        assert_eq!(
            group.check_commit(first, generation_one, &commit(3)),
            Ok(())
        );
        let (_, generation_two, owned) = joined(group.join(Some(first), now, session, 4));
        assert_eq!(owned, vec![0, 1]);
        assert_eq!(generation_two, generation_one + 1);
        assert!(group
            .check_commit(first, generation_one, &commit(0))
            .is_err());
        assert_eq!(
            group.check_commit(first, generation_two, &commit(3)),
            Ok(())
        );
        assert_eq!(
            group.check_commit(first, generation_two, &commit(1)),
            Ok(())
        );
        let (_, _, owned) = joined(group.join(Some(second), now, session, 4));
        assert_eq!(owned, vec![2, 3]);
    }

    /// Goal: a silent member is evicted after the session timeout and the survivor gets all.
    #[test]
    fn session_timeout_evicts_and_reassigns() {
        let (start, session) = (Instant::now(), Duration::from_secs(1));
        let mut group = Group::default();
        let (first, _, _) = joined(group.join(None, start, session, 4));
        let GroupAnswer::Pending { member: second } = group.join(None, start, session, 4) else {
            panic!("pending");
        };
        joined(group.join(Some(first), start, session, 4));
        joined(group.join(Some(second), start, session, 4));
        let later = start + Duration::from_millis(1500);
        let generation = group.generation();
        assert_eq!(
            group.heartbeat(first, generation, later - Duration::from_millis(600)),
            GroupAnswer::Stable
        );
        assert_eq!(group.tick(later, session, 4), vec![second]);
        assert_eq!(
            group.heartbeat(second, generation, later),
            GroupAnswer::UnknownMember
        );
        let (_, _, owned) = joined(group.join(Some(first), later, session, 4));
        assert_eq!(owned, vec![0, 1, 2, 3]);
    }

    #[test]
    fn range_assignment_covers_every_partition_once() {
        let assignment = range_assignment([3, 1, 2].into_iter(), 7);
        assert_eq!(assignment[&1], vec![0, 1, 2]);
        assert_eq!(assignment[&2], vec![3, 4]);
        assert_eq!(assignment[&3], vec![5, 6]);
    }
}

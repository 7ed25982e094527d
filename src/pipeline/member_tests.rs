//! The member loop's back-pressure round, against a client whose pause state is visible and
//! whose resumes can fail.

use super::*;
use crate::offsets::Limits;
use crate::pipeline::progress::FromCommit;
use crate::ports::{NoProbe, Polled as LogPolled};
use std::collections::{BTreeSet, VecDeque};

/// A client answering polls from a script; it keeps its pauses across revokes (as
/// librdkafka does), fails the first `pause_failures` pauses, `resume_failures` resumes and
/// `commit_failures` commits (the last for an outage), and keeps the commits it took.
#[derive(Default)]
struct PausingLog {
    script: VecDeque<LogPolled>,
    paused: BTreeSet<PartitionId>,
    pause_failures: u32,
    resume_failures: u32,
    commit_failures: u32,
    committed: Vec<(PartitionId, i64)>,
}

fn refused() -> PortError {
    PortError::Rejected {
        service: "kafka",
        detail: "Local: Unknown partition".into(),
    }
}

impl EventLog for PausingLog {
    async fn poll(&mut self, _: usize, _: Duration) -> Result<LogPolled, PortError> {
        Ok(self.script.pop_front().unwrap_or_default())
    }

    async fn commit(&mut self, commits: &[OffsetCommit], _: CommitMode) -> Result<(), PortError> {
        if self.commit_failures > 0 {
            self.commit_failures -= 1;
            return Err(PortError::Unavailable {
                service: "kafka",
                detail: "Broker: Coordinator not available".into(),
            });
        }
        let taken = commits
            .iter()
            .map(|commit| (commit.partition, commit.offset));
        self.committed.extend(taken);
        Ok(())
    }

    async fn pause(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        if self.pause_failures > 0 {
            self.pause_failures -= 1;
            return Err(refused());
        }
        self.paused.extend(partitions);
        Ok(())
    }

    async fn resume(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        if self.resume_failures > 0 {
            self.resume_failures -= 1;
            return Err(refused());
        }
        for partition in partitions {
            self.paused.remove(partition);
        }
        Ok(())
    }
}

fn member(log: PausingLog, in_flight_max: usize) -> Member<PausingLog> {
    let config = MemberConfig {
        batch_size: 10,
        poll_timeout: Duration::from_millis(1),
        revoke_grace: Duration::from_millis(1),
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(1),
        jitter_seed: 1,
    };
    let limits = Limits {
        in_flight_max,
        ..Limits::default()
    };
    let tracker = SharedTracker::new(limits);
    Member::new(config, log, tracker, Arc::new(Metrics::new()))
}

fn assigned(partition: PartitionId) -> LogPolled {
    LogPolled {
        commits_answered: Vec::new(),
        rebalances: vec![Rebalance::Assigned {
            partition,
            committed: None,
            generation: 1,
        }],
        records: Vec::new(),
    }
}

fn record(partition: PartitionId, offset: i64) -> Record {
    Record {
        partition,
        offset,
        key: None,
        payload: bytes::Bytes::new(),
        headers: Vec::new(),
    }
}

/// Goal: a partition still paused in the client when it is assigned, whose resume then
/// fails, is resumed by a later back-pressure round although it holds nothing; and the round
/// reports work waiting exactly while it does. Method: one assignment with one failing
/// resume; then rounds until the client shows it unpaused.
#[tokio::test]
async fn a_paused_partition_whose_resume_failed_is_resumed_later() {
    let log = PausingLog {
        script: VecDeque::from([assigned(3)]),
        paused: BTreeSet::from([3]),
        resume_failures: 1,
        ..PausingLog::default()
    };
    let mut member = member(log, 100);
    member.poll(&NoProbe, &FromCommit).await;
    assert!(
        member.log.paused.contains(&3),
        "the first resume was to fail"
    );
    assert!(
        member.retry_held(|_, _| {}).await,
        "a paused partition is waiting"
    );
    assert!(!member.log.paused.contains(&3), "never resumed");
    assert!(
        !member.retry_held(|_, _| {}).await,
        "nothing waits any more"
    );
}

/// Goal: a record the tracker has no room for is held and its partition paused; the round
/// reports it waiting until the tracker admits it, then resumes the partition. Method: a
/// tracker of one record in flight, two records polled; the second is admitted only after
/// the first is acked.
#[tokio::test]
async fn a_held_record_waits_for_room_then_its_partition_resumes() {
    let log = PausingLog {
        script: VecDeque::from([assigned(0)]),
        ..PausingLog::default()
    };
    let mut member = member(log, 1);
    member.poll(&NoProbe, &FromCommit).await;
    let mut admitted = Vec::new();
    member
        .offer(vec![record(0, 0), record(0, 1)], |ticket, _| {
            admitted.push(ticket)
        })
        .await;
    assert_eq!(admitted.len(), 1);
    assert!(member.log.paused.contains(&0));
    assert!(member.retry_held(|ticket, _| admitted.push(ticket)).await);
    assert_eq!(admitted.len(), 1, "admitted beyond the tracker's room");
    let first = admitted[0];
    assert!(member.tracker().ack_all(&[first]).is_empty());
    assert!(member.retry_held(|ticket, _| admitted.push(ticket)).await);
    assert_eq!(admitted.len(), 2);
    assert!(
        !member.log.paused.contains(&0),
        "not resumed once the backlog cleared"
    );
    assert!(!member.retry_held(|_, _| {}).await);
}

/// Goal: a refused pause is asked again, so back-pressure holds: records keep being held
/// while the tracker is full, and the client ends up paused. Method: a tracker of one record
/// in flight and a client that refuses the first pause; three records polled, then one
/// back-pressure round.
#[tokio::test]
async fn a_refused_pause_is_asked_again() {
    let log = PausingLog {
        script: VecDeque::from([assigned(0)]),
        pause_failures: 1,
        ..PausingLog::default()
    };
    let mut member = member(log, 1);
    member.poll(&NoProbe, &FromCommit).await;
    let records = vec![record(0, 0), record(0, 1), record(0, 2)];
    member.offer(records, |_, _| {}).await;
    assert!(
        !member.log.paused.contains(&0),
        "the first pause was to fail"
    );
    assert!(member.retry_held(|_, _| {}).await);
    assert!(
        member.log.paused.contains(&0),
        "the refused pause was never asked again"
    );
}

/// Goal: the records in flight are counted over every owned partition, so that a drain waits
/// for all of them before its final commit. Method: partitions 2 and 5 assigned, records
/// offered to both, then to 5 alone acked.
#[tokio::test]
async fn records_in_flight_count_over_every_owned_partition() {
    let mut polled = assigned(2);
    polled.rebalances.extend(assigned(5).rebalances);
    let log = PausingLog {
        script: VecDeque::from([polled]),
        ..PausingLog::default()
    };
    let mut member = member(log, 100);
    member.poll(&NoProbe, &FromCommit).await;
    let mut admitted = Vec::new();
    let records = vec![record(2, 0), record(5, 0), record(5, 1)];
    member
        .offer(records, |ticket, _| admitted.push(ticket))
        .await;
    assert_eq!(member.in_flight(), 3);
    let fives: Vec<Ticket> = admitted
        .iter()
        .filter(|t| t.partition == 5)
        .copied()
        .collect();
    assert!(member.tracker().ack_all(&fives).is_empty());
    assert_eq!(
        member.in_flight(),
        1,
        "partition 2's record is still in flight"
    );
}

/// Goal: an offset commit that fails for an outage is counted, and the next commit round
/// sends the same offset again instead of taking it as committed. Method: three records of
/// partition 4 acked; the first commit round meets an unavailable coordinator, the second
/// does not.
#[tokio::test]
async fn a_commit_failed_for_an_outage_is_sent_again_by_the_next_round() {
    let log = PausingLog {
        script: VecDeque::from([assigned(4)]),
        commit_failures: 1,
        ..PausingLog::default()
    };
    let mut member = member(log, 100);
    member.poll(&NoProbe, &FromCommit).await;
    let mut admitted = Vec::new();
    let records = vec![record(4, 0), record(4, 1), record(4, 2)];
    member
        .offer(records, |ticket, _| admitted.push(ticket))
        .await;
    assert!(member.tracker().ack_all(&admitted).is_empty());
    member.commit_changed(CommitMode::Sync, &NoProbe).await;
    assert!(
        member.log.committed.is_empty(),
        "the first commit was to fail"
    );
    assert_eq!(member.metrics.commit_failures.get(), 1);
    assert_eq!(member.metrics.commits.get(), 0);
    member.commit_changed(CommitMode::Sync, &NoProbe).await;
    assert_eq!(
        member.log.committed,
        vec![(4, 3)],
        "the failed commit was not sent again"
    );
    assert_eq!(member.metrics.commits.get(), 1);
    member.commit_changed(CommitMode::Sync, &NoProbe).await;
    assert_eq!(
        member.log.committed.len(),
        1,
        "an unchanged offset was committed again"
    );
}

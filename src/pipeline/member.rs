//! One consumer-group member's loop, shared by the consumer and the compensator: poll (with
//! backoff on failure), follow rebalances, track every polled record (holding it back and
//! pausing its partition while the tracker is full), and commit what the tracker reports
//! finished. What happens to a tracked record is the owner's business: it is handed to the
//! `admitted` callback, and acked to the tracker when its work is done.

use super::metrics::Metrics;
use super::partition::PartitionState;
use super::progress::Resume;
use super::retry::Backoff;
use crate::offsets::{CommitSnapshot, SharedTracker, Ticket, TrackError, Tracked};
use crate::ports::{
    CommitMode, CommittedOffset, EventLog, FaultPoint, OffsetCommit, PartitionId, PortError, Probe,
    Rebalance, Record,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long an owned partition's unchanged commit point goes without being committed again.
/// Re-committing it heals the group's offset after a late commit of the partition's previous
/// owner (see [`PartitionState::commit_due`]); the Java client's auto-commit likewise commits
/// every position at every interval.
pub(crate) const COMMIT_REFRESH: Duration = Duration::from_secs(5);

/// How a member polls and gives partitions up.
#[derive(Clone, Debug)]
pub(super) struct MemberConfig {
    pub batch_size: usize,
    pub poll_timeout: Duration,
    /// How long a revoke waits for the partitions' records in flight before committing.
    pub revoke_grace: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub jitter_seed: u64,
}

/// What one poll brought.
pub(super) struct Polled {
    pub records: Vec<Record>,
    pub revoked: Vec<Revoked>,
}

/// A partition given up, and how many of its records were still in flight (abandoned to the
/// next owner) when it was.
pub(super) struct Revoked {
    pub partition: PartitionId,
    pub abandoned: usize,
}

/// The member loop's state: the log, the tracker and one [`PartitionState`] per owned
/// partition.
pub(super) struct Member<L> {
    config: MemberConfig,
    log: L,
    tracker: SharedTracker,
    metrics: Arc<Metrics>,
    partitions: BTreeMap<PartitionId, PartitionState>,
    backoff: Backoff,
    /// Records polled and commits answered, over the member's life.
    pub polled: u64,
    pub commits: u64,
}

impl<L: EventLog> Member<L> {
    pub fn new(
        config: MemberConfig,
        log: L,
        tracker: SharedTracker,
        metrics: Arc<Metrics>,
    ) -> Member<L> {
        let backoff = Member::<L>::fresh_backoff(&config);
        Member {
            config,
            log,
            tracker,
            metrics,
            partitions: BTreeMap::new(),
            backoff,
            polled: 0,
            commits: 0,
        }
    }

    fn fresh_backoff(config: &MemberConfig) -> Backoff {
        Backoff::new(
            config.backoff_initial,
            config.backoff_max,
            config.jitter_seed,
        )
    }

    pub fn tracker(&self) -> &SharedTracker {
        &self.tracker
    }

    /// Polls one batch and applies its rebalance events (an assigned partition resumes where
    /// `resume` says); a failed poll is retried after a backoff (it returns nothing).
    pub async fn poll(&mut self, probe: &impl Probe, resume: &impl Resume) -> Polled {
        self.metrics.polls.add(1);
        match self
            .log
            .poll(self.config.batch_size, self.config.poll_timeout)
            .await
        {
            Ok(polled) => {
                self.backoff = Member::<L>::fresh_backoff(&self.config);
                let revoked = self.rebalance(polled.rebalances, probe, resume).await;
                Polled {
                    records: polled.records,
                    revoked,
                }
            }
            Err(error) => {
                crate::reach!("member.poll_failed");
                tracing::warn!(%error, "poll failed; retrying");
                self.metrics.retries_outage.add(1);
                tokio::time::sleep(self.backoff.next_delay()).await;
                Polled {
                    records: Vec::new(),
                    revoked: Vec::new(),
                }
            }
        }
    }

    /// Tracks polled records in poll order and hands each new one to `admitted`. A record the
    /// tracker has no room for is held, with everything after it of its partition, and the
    /// partition is paused until [`Member::retry_held`] admits them.
    pub async fn offer(&mut self, records: Vec<Record>, mut admitted: impl FnMut(Ticket, Record)) {
        if records.is_empty() {
            return;
        }
        self.metrics.polled.add(records.len() as u64);
        self.polled += records.len() as u64;
        let mut records = records.into_iter();
        // Records of the current run that `track_run` tracked and that are not handed over
        // yet, and their epoch.
        let (mut run_tracked, mut run_epoch) = (0usize, 0u64);
        while let Some(record) = records.next() {
            let Some(state) = self.partitions.get_mut(&record.partition) else {
                // A record of a partition this member does not own (a fetch that raced a
                // revoke): the owner handles it; no state, gauge or probe verdict for it here.
                crate::reach!("member.record_skipped");
                self.metrics.stale_skipped.add(1);
                tracing::debug!(
                    partition = record.partition,
                    offset = record.offset,
                    "record of a partition not owned skipped"
                );
                continue;
            };
            state.note_polled(record.offset);
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
                self.hand_over(ticket, record, &mut admitted);
            } else if let Some(record) = self.track(record, &mut admitted) {
                self.hold(record).await;
            }
        }
    }

    /// Tracks one record and hands it over; gives it back if the tracker is full.
    fn track(
        &mut self,
        record: Record,
        admitted: &mut impl FnMut(Ticket, Record),
    ) -> Option<Record> {
        match self.tracker.track(record.partition, record.offset) {
            Ok((ticket, Tracked::New)) => {
                self.hand_over(ticket, record, admitted);
                None
            }
            Ok((_, Tracked::AlreadyDone)) => {
                self.metrics.finished_skipped.add(1);
                None
            }
            Err(TrackError::Full { .. }) => Some(record),
            Err(error) => {
                // Redelivered below what this epoch already tracks, or a partition we no
                // longer own: already handled (or someone else's), so skipping loses nothing.
                crate::reach!("member.record_skipped");
                self.metrics.stale_skipped.add(1);
                tracing::debug!(%error, partition = record.partition, offset = record.offset, "record skipped");
                None
            }
        }
    }

    fn hand_over(
        &mut self,
        ticket: Ticket,
        record: Record,
        admitted: &mut impl FnMut(Ticket, Record),
    ) {
        if let Some(state) = self.partitions.get_mut(&record.partition) {
            state.note_admitted(record.offset, record.key.clone());
        }
        admitted(ticket, record);
    }

    async fn hold(&mut self, record: Record) {
        crate::reach!("member.tracker_full");
        let partition = record.partition;
        self.partitions
            .entry(partition)
            .or_default()
            .held
            .push_back(record);
        self.pause_holding(partition).await;
    }

    /// Pauses a partition that holds records, unless the client already is. Counted paused
    /// only once the client is: a refused pause is asked again at the next back-pressure
    /// round, or back-pressure is lost and the held queue grows without bound.
    async fn pause_holding(&mut self, partition: PartitionId) {
        let wanted = self
            .partitions
            .get(&partition)
            .is_some_and(|state| !state.held.is_empty() && !state.paused);
        if !wanted {
            return;
        }
        match self.log.pause(&[partition]).await {
            Ok(()) => {
                if let Some(state) = self.partitions.get_mut(&partition) {
                    state.paused = true;
                }
            }
            Err(error) => {
                crate::reach!("member.pause_failed");
                tracing::warn!(%error, partition, "pause failed");
            }
        }
    }

    /// Re-offers held records, oldest first, and resumes a partition whose backlog cleared.
    /// Returns true when some partition held records or was paused.
    pub async fn retry_held(&mut self, mut admitted: impl FnMut(Ticket, Record)) -> bool {
        let waiting: Vec<PartitionId> = self
            .partitions
            .iter()
            .filter(|(_, state)| !state.held.is_empty() || state.paused)
            .map(|(partition, _)| *partition)
            .collect();
        for &partition in &waiting {
            while let Some(record) = self
                .partitions
                .get_mut(&partition)
                .and_then(|state| state.held.pop_front())
            {
                if let Some(record) = self.track(record, &mut admitted) {
                    if let Some(state) = self.partitions.get_mut(&partition) {
                        state.held.push_front(record);
                    }
                    break;
                }
            }
            self.pause_holding(partition).await;
            let resume = self
                .partitions
                .get(&partition)
                .is_some_and(|state| state.held.is_empty() && state.paused);
            if resume {
                if let Err(error) = self.log.resume(&[partition]).await {
                    crate::reach!("member.resume_failed");
                    tracing::warn!(%error, partition, "resume failed");
                } else if let Some(state) = self.partitions.get_mut(&partition) {
                    state.paused = false;
                }
            }
        }
        !waiting.is_empty()
    }

    /// Applies one poll's rebalance events in order; each run of consecutive revocations is
    /// handled together (one grace period, one commit), so that giving up many partitions
    /// costs what giving up one does and the member rejoins within the rebalance timeout.
    async fn rebalance(
        &mut self,
        changes: Vec<Rebalance>,
        probe: &impl Probe,
        resume: &impl Resume,
    ) -> Vec<Revoked> {
        let mut revoked = Vec::new();
        let mut pending = Vec::new();
        for change in changes {
            match change {
                Rebalance::Revoked { partition } => pending.push(partition),
                Rebalance::Assigned {
                    partition,
                    committed,
                    generation,
                } => {
                    let run = std::mem::take(&mut pending);
                    revoked.extend(self.revoke(&run, probe, resume).await);
                    let group_offset = committed.as_ref().map(|c| c.offset);
                    let start = resume.resume(partition, generation, committed).await;
                    self.assign(partition, group_offset, start).await;
                }
            }
        }
        revoked.extend(self.revoke(&pending, probe, resume).await);
        revoked
    }

    /// Takes `partition` over, tracking from `start`; `committed` is the group's offset (a
    /// start further along is committed to the group at the next round).
    async fn assign(
        &mut self,
        partition: PartitionId,
        committed: Option<i64>,
        start: Option<CommittedOffset>,
    ) {
        let assignment = self.tracker.assign(partition, start.as_ref());
        tracing::info!(
            partition,
            epoch = assignment.epoch,
            start = ?assignment.start_offset,
            already_done = assignment.restore.already_done,
            "partition assigned"
        );
        let mut state = PartitionState::assigned(committed);
        // A partition paused for back-pressure and then revoked may come back still paused in
        // the client (librdkafka keeps the pause on the partition object): its new state starts
        // unpaused, so the client must be too, or it is never fetched again.
        if let Err(error) = self.log.resume(&[partition]).await {
            // Counted paused: the next round of `retry_held` resumes it again.
            crate::reach!("member.resume_failed");
            tracing::warn!(%error, partition, "resume of an assigned partition failed");
            state.paused = true;
        }
        self.partitions.insert(partition, state);
    }

    /// Gives partitions up: waits one shared grace period for their records in flight, then
    /// commits what finished, in one commit.
    async fn revoke(
        &mut self,
        partitions: &[PartitionId],
        probe: &impl Probe,
        resume: &impl Resume,
    ) -> Vec<Revoked> {
        if partitions.is_empty() {
            return Vec::new();
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
        resume.released(&self.tracker, partitions).await;
        let mut snapshots = Vec::new();
        let mut revoked = Vec::with_capacity(partitions.len());
        for &partition in partitions {
            let abandoned = self.tracker.in_flight(partition);
            snapshots.extend(self.tracker.revoke(partition));
            self.partitions.remove(&partition);
            self.metrics.remove_partition(partition);
            tracing::info!(partition, abandoned, "partition revoked");
            revoked.push(Revoked {
                partition,
                abandoned,
            });
        }
        if !snapshots.is_empty() {
            self.commit(snapshots, CommitMode::Sync, probe).await;
        }
        revoked
    }

    /// Every partition this member owns.
    pub fn owned(&self) -> Vec<PartitionId> {
        self.partitions.keys().copied().collect()
    }

    /// Commits every owned partition's snapshot that moved since its last commit, carries
    /// finished offsets above its point, or was last committed [`COMMIT_REFRESH`] ago.
    pub async fn commit_changed(&mut self, mode: CommitMode, probe: &impl Probe) {
        let now = Instant::now();
        let changed: Vec<CommitSnapshot> = self
            .tracker
            .snapshots()
            .into_iter()
            .filter(|snapshot| {
                self.partitions
                    .get(&snapshot.partition)
                    .is_some_and(|state| state.commit_due(snapshot.offset, now, COMMIT_REFRESH))
                    || !snapshot.metadata.is_empty()
            })
            .collect();
        if !changed.is_empty() {
            self.commit(changed, mode, probe).await;
        }
    }

    async fn commit(
        &mut self,
        snapshots: Vec<CommitSnapshot>,
        mode: CommitMode,
        probe: &impl Probe,
    ) {
        let offsets: Vec<OffsetCommit> = snapshots.into_iter().map(OffsetCommit::from).collect();
        probe.at(FaultPoint::BeforeOffsetCommit).await;
        match self.log.commit(&offsets, mode).await {
            Ok(()) => {
                self.metrics.commits.add(1);
                self.commits += 1;
                for commit in &offsets {
                    if let Some(state) = self.partitions.get_mut(&commit.partition) {
                        state.note_committed(commit.offset, commit.partition, Instant::now());
                    }
                }
                probe.at(FaultPoint::AfterOffsetCommit).await;
            }
            Err(PortError::Fenced { detail, .. }) => {
                crate::reach!("member.commit_fenced");
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
    pub fn detect_stalls(&mut self, stall_after: Duration) {
        let now = Instant::now();
        for (partition, state) in self.partitions.iter_mut() {
            let progress = self.tracker.progress(*partition);
            let point = progress.and_then(|progress| progress.point);
            let in_flight = progress.map_or(0, |progress| progress.in_flight);
            if state.observe_point(point, in_flight, now, stall_after) {
                crate::reach!("member.stalled");
                self.metrics.stalls.add(1);
                tracing::warn!(
                    partition,
                    stuck_offset = ?point,
                    stuck_key = ?state.stuck_key(point),
                    in_flight,
                    "commit point stalled"
                );
            }
            self.metrics
                .set_partition(*partition, state.gauges(in_flight));
        }
    }

    /// Records in flight over every owned partition.
    pub fn in_flight(&self) -> usize {
        self.tracker
            .assigned()
            .into_iter()
            .map(|partition| self.tracker.in_flight(partition))
            .sum()
    }
}

#[cfg(test)]
#[path = "member_tests.rs"]
mod tests;

//! loom model checks of `SharedTracker` (invariants I1, I3, I5 of `docs/design.md`).
//!
//! Method: a few threads ack, snapshot and revoke concurrently; loom runs every interleaving
//! (bounded by `LOOM_MAX_PREEMPTIONS`). A worker raises its `started` flag before it acks, so
//! a snapshot that claims an offset whose ack had not started has read a state that never
//! existed: that is a torn or false snapshot. Run with `LOOM_MAX_PREEMPTIONS=2 cargo loom`.
#![cfg(loom)]

use holdfast::offsets::{
    AckError, CommitSnapshot, Limits, PartitionTracker, SharedTracker, Ticket, Tracked, Tracker,
};
use holdfast::ports::CommittedOffset;
use holdfast::testkit::planted::PlantedBug;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;

const PARTITION: i32 = 0;

fn tracker_with(
    offsets: std::ops::Range<i64>,
    planted: Option<PlantedBug>,
) -> (SharedTracker, Vec<Ticket>) {
    let policy = PlantedBug::commit_policy(planted);
    let shared = SharedTracker::from(Tracker::with_policy(Limits::default(), policy));
    shared.assign(
        PARTITION,
        Some(&CommittedOffset {
            offset: offsets.start,
            metadata: None,
        }),
    );
    let tickets = offsets
        .map(|o| shared.track(PARTITION, o).unwrap().0)
        .collect();
    (shared, tickets)
}

/// Every offset the snapshot claims finished (below its offset, or in its metadata), from
/// `first` up to `end`.
fn claimed(snapshot: &CommitSnapshot, first: i64, end: i64) -> Vec<i64> {
    let mut claimed: Vec<i64> = (first..snapshot.offset.min(end)).collect();
    let committed = CommittedOffset {
        offset: snapshot.offset,
        metadata: Some(snapshot.metadata.clone()),
    };
    let (mut restored, report) = PartitionTracker::restore(&committed, Limits::default());
    assert_eq!(report.metadata_ignored, None);
    for offset in snapshot.offset..end {
        if restored.track(offset).unwrap() == Tracked::AlreadyDone {
            claimed.push(offset);
        }
    }
    claimed
}

fn started_flags(n: usize) -> Arc<Vec<AtomicBool>> {
    Arc::new((0..n).map(|_| AtomicBool::new(false)).collect())
}

/// Goal: a snapshot racing with acks never claims an offset whose ack had not started, and
/// its offset and metadata come from one state.
fn ack_racing_with_snapshot(planted: Option<PlantedBug>) {
    loom::model(move || {
        let (shared, tickets) = tracker_with(0..3, planted);
        let started = started_flags(3);
        let workers: Vec<_> = [2usize, 0]
            .into_iter()
            .map(|i| {
                let (shared, started, ticket) = (shared.clone(), started.clone(), tickets[i]);
                thread::spawn(move || {
                    started[i].store(true, Ordering::SeqCst);
                    shared.ack(ticket).unwrap();
                })
            })
            .collect();
        let snapshot = shared.snapshot(PARTITION).unwrap();
        for offset in claimed(&snapshot, 0, 3) {
            assert!(
                started[offset as usize].load(Ordering::SeqCst),
                "I1/I5: {snapshot:?} claims unfinished {offset}"
            );
        }
        for worker in workers {
            worker.join().unwrap();
        }
        let last = shared.snapshot(PARTITION).unwrap();
        assert_eq!(last.offset, 1);
        assert_eq!(claimed(&last, 0, 3), vec![0, 2]);
    });
}

/// The model checks run with the tracker's debug assertions compiled in (`cargo loom` builds
/// with the `sim` profile): every interleaving also checks the tracker's own invariants.
#[test]
fn debug_assertions_are_compiled_into_the_model_checked_build() {
    let on = std::hint::black_box(cfg!(debug_assertions));
    assert!(on, "build loom checks with `--profile sim`");
}

#[test]
fn ack_racing_with_snapshot_never_claims_unfinished() {
    ack_racing_with_snapshot(None);
}

/// Goal: the check above can fail: the planted "acked + 1" rule is caught.
#[test]
fn planted_commit_acked_plus_one_is_caught() {
    let caught =
        std::panic::catch_unwind(|| ack_racing_with_snapshot(Some(PlantedBug::CommitAckedPlusOne)));
    assert!(caught.is_err(), "the planted bug went unnoticed");
}

/// Goal: an ack racing with revoke and re-assignment either lands before the revoke (and is
/// in its final snapshot) or is refused as stale; it never moves the new owner's watermark.
#[test]
fn ack_racing_with_revoke_is_fenced() {
    loom::model(|| {
        let (shared, tickets) = tracker_with(0..2, None);
        let worker = {
            let (shared, ticket) = (shared.clone(), tickets[0]);
            thread::spawn(move || shared.ack(ticket))
        };
        let last = shared.revoke(PARTITION).unwrap();
        let committed = CommittedOffset {
            offset: last.offset,
            metadata: Some(last.metadata.clone()),
        };
        let assignment = shared.assign(PARTITION, Some(&committed));
        let (mine, tracked) = shared.track(PARTITION, committed.offset).unwrap();
        assert_eq!(tracked, Tracked::New);
        let result = worker.join().unwrap();
        match result {
            Ok(()) => assert_eq!(
                last.offset, 1,
                "an ack before the revoke is in its snapshot"
            ),
            Err(AckError::StaleEpoch { epoch, current, .. }) => {
                assert_eq!(last.offset, 0, "a refused ack is not in the snapshot");
                assert_eq!(epoch, tickets[0].epoch);
                // Refused between the revoke and the new assignment, or after it.
                assert!(current.is_none() || current == Some(assignment.epoch));
            }
            Err(other) => panic!("unexpected {other}"),
        }
        // I3: the new owner's watermark is its own: its record is still unfinished.
        assert_eq!(shared.snapshot(PARTITION).unwrap().offset, committed.offset);
        assert_eq!(shared.in_flight(PARTITION), 1);
        shared.ack(mine).unwrap();
        assert_eq!(
            shared.snapshot(PARTITION).unwrap().offset,
            committed.offset + 1
        );
    });
}

/// Goal: a worker's batch of acks (one lock) racing with revoke lands whole before the
/// revoke, and is then in its final snapshot, or is refused whole as stale; either way the new
/// owner's watermark does not move.
#[test]
fn batch_ack_racing_with_revoke_lands_whole_or_not_at_all() {
    loom::model(|| {
        let (shared, tickets) = tracker_with(0..3, None);
        let worker = {
            let (shared, batch) = (shared.clone(), vec![tickets[2], tickets[0]]);
            thread::spawn(move || shared.ack_all(&batch))
        };
        let last = shared.revoke(PARTITION).unwrap();
        let committed = CommittedOffset {
            offset: last.offset,
            metadata: Some(last.metadata.clone()),
        };
        shared.assign(PARTITION, Some(&committed));
        let refused = worker.join().unwrap();
        match refused.len() {
            0 => assert_eq!(claimed(&last, 0, 3), vec![0, 2], "{last:?}"),
            2 => {
                assert_eq!(claimed(&last, 0, 3), Vec::<i64>::new(), "{last:?}");
                assert!(refused
                    .iter()
                    .all(|(_, error)| matches!(error, AckError::StaleEpoch { .. })));
            }
            _ => panic!("a batch split by the revoke: {refused:?}"),
        }
        // I3: the new owner tracks from the committed offset; nothing of it is finished.
        assert_eq!(shared.snapshot(PARTITION).unwrap().offset, committed.offset);
        assert_eq!(shared.in_flight(PARTITION), 0);
    });
}

/// Goal: two concurrent ackers lose no ack and end at the right watermark.
#[test]
fn two_concurrent_ackers() {
    loom::model(|| {
        let (shared, tickets) = tracker_with(10..13, None);
        let workers: Vec<_> = [1usize, 0]
            .into_iter()
            .map(|i| {
                let (shared, ticket) = (shared.clone(), tickets[i]);
                thread::spawn(move || shared.ack(ticket).unwrap())
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        assert_eq!(shared.in_flight(PARTITION), 1);
        assert_eq!(shared.snapshot(PARTITION).unwrap().offset, 12);
        shared.ack(tickets[2]).unwrap();
        assert_eq!(shared.snapshot(PARTITION).unwrap().offset, 13);
    });
}

use super::*;

fn limits(in_flight_max: usize, span_max: u64) -> Limits {
    Limits {
        in_flight_max,
        span_max,
        metadata_budget_bytes: 4096,
    }
}

#[test]
fn nothing_known_until_first_track() {
    let mut t = PartitionTracker::new(Limits::default());
    assert_eq!(t.commit_point(), None);
    assert_eq!(t.ack(0), Err(AckError::NotTracked { offset: 0 }));
    assert_eq!(t.encode_metadata(), "");
    t.track(42).unwrap();
    assert_eq!(t.commit_point(), Some(42));
    assert_eq!(t.lowest_unfinished(), Some(42));
}

#[test]
fn starting_at_commits_start_until_tracked() {
    let mut t = PartitionTracker::starting_at(100, Limits::default());
    assert_eq!(t.commit_point(), Some(100));
    assert_eq!(t.lowest_unfinished(), None);
    assert!(matches!(
        t.track(99),
        Err(TrackError::Backwards {
            offset: 99,
            next: 100
        })
    ));
    t.track(105).unwrap(); // 100..105 compacted away
    assert_eq!(t.commit_point(), Some(105));
}

#[test]
fn out_of_order_acks_advance_only_past_finished() {
    let mut t = PartitionTracker::new(Limits::default());
    for o in 0..10 {
        t.track(o).unwrap();
    }
    for o in (1..10).rev() {
        t.ack(o).unwrap();
        assert_eq!(t.commit_point(), Some(0));
    }
    t.ack(0).unwrap();
    assert_eq!(t.commit_point(), Some(10));
    assert_eq!(t.in_flight(), 0);
}

#[test]
fn gaps_count_as_finished() {
    let mut t = PartitionTracker::new(Limits::default());
    t.track(0).unwrap();
    t.track(5).unwrap();
    t.track(200).unwrap();
    t.ack(0).unwrap();
    assert_eq!(t.commit_point(), Some(5));
    t.ack(5).unwrap();
    assert_eq!(t.commit_point(), Some(200));
    assert_eq!(t.ack(3), Err(AckError::AlreadyAcked { offset: 3 }));
    t.ack(200).unwrap();
    assert_eq!(t.commit_point(), Some(201));
}

#[test]
fn double_ack_and_untracked_ack_are_refused_without_change() {
    let mut t = PartitionTracker::starting_at(10, Limits::default());
    t.track(10).unwrap();
    t.track(11).unwrap();
    t.ack(11).unwrap();
    assert_eq!(t.ack(11), Err(AckError::AlreadyAcked { offset: 11 }));
    assert_eq!(t.ack(12), Err(AckError::NotTracked { offset: 12 }));
    assert_eq!(t.ack(9), Err(AckError::NotTracked { offset: 9 }));
    assert_eq!(t.in_flight(), 1);
    assert_eq!(t.commit_point(), Some(10));
    t.ack(10).unwrap();
    assert_eq!(t.ack(10), Err(AckError::AlreadyAcked { offset: 10 }));
}

#[test]
fn backwards_and_repeated_track_are_refused() {
    let mut t = PartitionTracker::new(Limits::default());
    t.track(5).unwrap();
    assert!(matches!(t.track(5), Err(TrackError::Backwards { .. })));
    assert!(matches!(t.track(4), Err(TrackError::Backwards { .. })));
    assert!(matches!(
        t.track(i64::MAX),
        Err(TrackError::Backwards { .. })
    ));
    assert_eq!(t.in_flight(), 1);
}

#[test]
fn full_by_count_then_recovers() {
    let mut t = PartitionTracker::new(limits(3, 1000));
    for o in 0..3 {
        t.track(o).unwrap();
    }
    assert!(matches!(
        t.track(3),
        Err(TrackError::Full { in_flight: 3, .. })
    ));
    t.ack(1).unwrap();
    assert_eq!(t.track(3), Ok(Tracked::New));
}

#[test]
fn track_run_takes_what_the_fast_path_admits() {
    let mut t = PartitionTracker::starting_at(0, limits(10, 1000));
    assert_eq!(t.track_run(1, 5), 0, "not the next offset");
    assert_eq!(t.track_run(0, 4), 4);
    assert_eq!(t.track_run(4, 20), 6, "stops at the in-flight limit");
    assert_eq!(t.in_flight(), 10);
    assert!(matches!(t.track(10), Err(TrackError::Full { .. })));
    assert_eq!(t.ack_all([3, 7]), vec![]);
    // A batch of acks makes room for as many tracks; single acks above the watermark
    // leave it to a count, which `track` makes.
    assert_eq!(t.track_run(10, 20), 2);
    t.ack(5).unwrap();
    assert_eq!(t.track_run(12, 20), 0);
    assert_eq!(t.track(12), Ok(Tracked::New));
    assert_eq!(t.next_offset(), Some(13));
    assert_eq!(t.track_run(13, 0), 0);
    // Restored metadata pending: every offset must go through `track`.
    let committed = CommittedOffset {
        offset: t.commit_point().unwrap_or(0),
        metadata: Some(t.encode_metadata()),
    };
    let (mut r, report) = PartitionTracker::restore(&committed, limits(10, 1000));
    assert_eq!(report.already_done, 3);
    assert_eq!(r.track_run(0, 5), 0);
    assert_eq!(r.track(0), Ok(Tracked::New));
}

#[test]
fn ack_all_equals_acks_one_by_one() {
    // Goal: the batch form changes the state and refuses exactly as single acks do, in
    // both the count-free and the counting mode. Method: offset 100 stays stuck and gaps
    // widen the span; each round tracks until full, then acks in one batch (the watermark's
    // own record, records lingering from earlier rounds, double acks within and across
    // batches, untracked offsets above and below); states and refusals are compared.
    for (in_flight_max, span_max) in [(10_000, 100_000), (21, 100_000)] {
        let mut single = PartitionTracker::starting_at(100, limits(in_flight_max, span_max));
        let mut batch = single.clone();
        let (mut next, mut lingering, mut counted) = (100, Vec::new(), false);
        for round in 0..60 {
            let first = next;
            while next < first + 100 {
                let tracked = single.track(next);
                assert_eq!(batch.track(next), tracked);
                if tracked.is_err() {
                    break;
                }
                // A gap after every fifth record widens the span (gaps are refused acks).
                next += if next % 5 == 0 { 20 } else { 1 };
                counted |= single.counting();
            }
            // Every third record lingers a round; offset 100 until the last round.
            let mut acks: Vec<i64> = (first..next).filter(|o| o % 3 != 0 && *o != 100).collect();
            acks.reverse();
            acks.append(&mut lingering);
            lingering.extend((first..next).filter(|&o| o % 3 == 0));
            acks.extend([
                first + 1,
                next - 1,
                next,
                99,
                next + 1000,
                i64::MIN,
                i64::MAX,
            ]);
            if round == 59 {
                acks.push(100);
            }
            let expected: Vec<AckError> =
                acks.iter().filter_map(|&o| single.ack(o).err()).collect();
            assert!(!expected.is_empty());
            assert_eq!(
                batch.ack_all(acks.iter().copied()),
                expected,
                "round {round}"
            );
            assert_eq!(batch.commit_point(), single.commit_point());
            assert_eq!(batch.in_flight(), single.in_flight());
            assert_eq!(batch.encode_metadata(), single.encode_metadata());
            assert_eq!(batch.room_end, single.room_end);
            if single.counting() {
                assert_eq!(batch.track_limit, single.track_limit);
            } else {
                // A batch raises the limit by the records it acked; single acks do not.
                assert!(batch.track_limit >= single.track_limit);
            }
            counted |= single.counting();
        }
        assert_eq!(counted, in_flight_max == 21, "counting mode reached");
        assert!(single.commit_point() > Some(1000));
    }
}

#[test]
fn full_by_span_with_one_stuck_record() {
    let mut t = PartitionTracker::new(limits(1000, 100));
    t.track(0).unwrap(); // stuck
    for o in 1..100 {
        t.track(o).unwrap();
        t.ack(o).unwrap();
    }
    assert_eq!(t.in_flight(), 1);
    assert!(matches!(
        t.track(100),
        Err(TrackError::Full { span: 101, .. })
    ));
    assert_eq!(t.commit_point(), Some(0));
    t.ack(0).unwrap();
    assert_eq!(t.commit_point(), Some(100));
    assert_eq!(t.track(100), Ok(Tracked::New));
}

#[test]
fn count_limit_holds_when_the_span_exceeds_it() {
    // Goal: with a stuck record and a span far above `in_flight_max`, the limit is still
    // exact (the fast path's room is counted, not guessed). Method: fill to the limit
    // through consecutive offsets and through gaps, check Full at exactly the limit.
    let mut t = PartitionTracker::new(limits(10, 1000));
    t.track(0).unwrap(); // stuck
    for o in 1..500 {
        t.track(o).unwrap();
        t.ack(o).unwrap();
    }
    for o in 500..509 {
        assert_eq!(t.track(o), Ok(Tracked::New));
    }
    assert_eq!(t.in_flight(), 10);
    assert!(matches!(
        t.track(509),
        Err(TrackError::Full { in_flight: 10, .. })
    ));
    assert!(matches!(
        t.track(600),
        Err(TrackError::Full { in_flight: 10, .. })
    ));
    t.ack(503).unwrap();
    assert_eq!(t.track(520), Ok(Tracked::New)); // a gap: 509..520 finished
    assert!(matches!(t.track(521), Err(TrackError::Full { .. })));
    t.ack(0).unwrap();
    assert_eq!(t.commit_point(), Some(500));
    assert_eq!(t.track(521), Ok(Tracked::New));
    assert!(matches!(
        t.track(522),
        Err(TrackError::Full { in_flight: 10, .. })
    ));
    assert_eq!(t.in_flight(), 10);
}

#[test]
fn at_the_limit_with_records_lingering_the_count_is_kept() {
    // Goal: with the count at the limit and a span far wider than the room (one record
    // stuck, the others acked at random among those in flight), the tracker keeps an
    // exact count instead of counting the ring on every track, refuses exactly at the
    // limit, and stops counting once the span alone proves room again. Method: a seeded
    // random walk against the list of offsets in flight, checked at every step (debug
    // builds also check the kept count against the ring after every call).
    let (counted_steps, _) = walk_at_the_limit(0, 20_000);
    assert!(
        counted_steps > 10_000,
        "the count was kept on {counted_steps} steps only"
    );
}

#[test]
fn at_the_limit_near_the_last_offset_stays_exact() {
    // The kept limit wraps within `in_flight_max` of i64::MAX; tracks there must take the
    // exact slow path, never admit one too many, and stop at i64::MAX - 1.
    let start = i64::MAX - 3_000;
    let (counted_steps, next) = walk_at_the_limit(start, 20_000);
    assert!(
        counted_steps > 1_000,
        "counted on {counted_steps} steps only"
    );
    assert_eq!(next, i64::MAX, "the walk should reach the last offset");
}

/// The random walk of the two tests above, from `start`, for `steps` steps or until the
/// next offset would be i64::MAX (which has no next offset to commit). Returns the steps
/// on which the tracker kept a count, and the next offset at the end.
fn walk_at_the_limit(start: i64, steps: usize) -> (usize, i64) {
    const LIMIT: usize = 8;
    let mut t = PartitionTracker::new(limits(LIMIT, 1 << 16));
    t.track(start).unwrap(); // stuck until the end
    let mut in_flight: Vec<i64> = Vec::new();
    let mut rng = crate::rng::SplitMix::new(7);
    let mut next = start + 1;
    let mut counted_steps = 0;
    for step in 0..steps {
        if next == i64::MAX {
            assert!(matches!(t.track(next), Err(TrackError::Backwards { .. })));
            break;
        }
        if in_flight.len() + 1 < LIMIT {
            assert_eq!(t.track(next), Ok(Tracked::New), "step {step}");
            in_flight.push(next);
            next += 1;
        } else {
            let refused = t.track(next);
            assert!(
                matches!(
                    refused,
                    Err(TrackError::Full {
                        in_flight: LIMIT,
                        ..
                    })
                ),
                "step {step}: {refused:?}"
            );
            let pick = (rng.next_u64() % in_flight.len() as u64) as usize;
            t.ack(in_flight.swap_remove(pick)).unwrap();
        }
        assert_eq!(t.in_flight(), in_flight.len() + 1, "step {step}");
        assert_eq!(t.commit_point(), Some(start));
        counted_steps += usize::from(t.counting());
    }
    t.ack(start).unwrap();
    assert_eq!(
        t.commit_point(),
        in_flight.iter().min().copied().or(Some(next))
    );
    for offset in in_flight.drain(..) {
        t.ack(offset).unwrap();
    }
    assert_eq!(t.in_flight(), 0);
    assert_eq!(t.commit_point(), Some(next));
    if next < i64::MAX {
        assert_eq!(t.track(next), Ok(Tracked::New));
        assert!(!t.counting(), "the span proves room: no count kept");
    }
    (counted_steps, next)
}

#[test]
fn ring_wraps_many_times() {
    let mut t = PartitionTracker::new(limits(64, 128));
    let mut next = 0;
    for round in 0..500i64 {
        let batch: Vec<i64> = (0..40).map(|i| next + i * (1 + round % 2)).collect();
        for &o in &batch {
            t.track(o).unwrap();
        }
        for &o in batch.iter().rev() {
            t.ack(o).unwrap();
        }
        next = batch[39] + 1;
        assert_eq!(t.commit_point(), Some(next));
    }
}

#[test]
fn metadata_round_trip_skips_done_records() {
    let mut t = PartitionTracker::starting_at(1000, Limits::default());
    for o in 1000..1010 {
        t.track(o).unwrap();
    }
    for o in [1002, 1003, 1007] {
        t.ack(o).unwrap();
    }
    let committed = CommittedOffset {
        offset: t.commit_point().unwrap(),
        metadata: Some(t.encode_metadata()),
    };
    let (mut r, report) = PartitionTracker::restore(&committed, Limits::default());
    assert_eq!(
        report,
        RestoreReport {
            already_done: 3,
            metadata_ignored: None
        }
    );
    // Before re-polling, the restored tracker writes the same metadata back.
    assert_eq!(r.encode_metadata(), committed.metadata.clone().unwrap());
    let mut redo = Vec::new();
    for o in 1000..1010 {
        if r.track(o).unwrap() == Tracked::New {
            redo.push(o);
        }
    }
    assert_eq!(redo, vec![1000, 1001, 1004, 1005, 1006, 1008, 1009]);
    for o in redo {
        r.ack(o).unwrap();
    }
    assert_eq!(r.commit_point(), Some(1010));
    assert_eq!(r.ack(1002), Err(AckError::AlreadyAcked { offset: 1002 }));
}

#[test]
fn budget_fallback_degrades_to_at_least_once() {
    let mut t = PartitionTracker::starting_at(
        0,
        Limits {
            metadata_budget_bytes: 20,
            ..Limits::default()
        },
    );
    for o in 0..200 {
        t.track(o).unwrap();
    }
    for o in (1..200).step_by(2) {
        t.ack(o).unwrap();
    }
    assert_eq!(t.encode_metadata(), "");
    let committed = CommittedOffset {
        offset: 0,
        metadata: Some(String::new()),
    };
    let (mut r, report) = PartitionTracker::restore(&committed, Limits::default());
    assert_eq!(report.already_done, 0);
    for o in 0..200 {
        assert_eq!(r.track(o), Ok(Tracked::New));
    }
}

#[test]
fn foreign_metadata_is_ignored_with_report() {
    let committed = CommittedOffset {
        offset: 5,
        metadata: Some("{\"owner\":\"java\"}".into()),
    };
    let (mut r, report) = PartitionTracker::restore(&committed, Limits::default());
    assert_eq!(report.already_done, 0);
    assert!(report.metadata_ignored.is_some());
    assert_eq!(r.commit_point(), Some(5));
    assert_eq!(r.track(5), Ok(Tracked::New));
}

#[test]
fn metadata_for_another_offset_is_ignored() {
    let mut t = PartitionTracker::starting_at(0, Limits::default());
    t.track(0).unwrap();
    t.track(1).unwrap();
    t.ack(1).unwrap();
    let committed = CommittedOffset {
        offset: 1,
        metadata: Some(t.encode_metadata()),
    };
    let (_, report) = PartitionTracker::restore(&committed, Limits::default());
    assert!(report.metadata_ignored.unwrap().contains("base offset"));
}

#[test]
fn restored_done_records_past_a_full_span_are_safe() {
    let mut t = PartitionTracker::starting_at(0, Limits::default());
    for o in 0..300 {
        t.track(o).unwrap();
    }
    for o in 1..300 {
        t.ack(o).unwrap();
    }
    let committed = CommittedOffset {
        offset: 0,
        metadata: Some(t.encode_metadata()),
    };
    // The new owner has a smaller span: it keeps only what fits, and redoes the rest.
    let (mut r, report) = PartitionTracker::restore(&committed, limits(10, 100));
    assert_eq!(report.already_done, 99);
    assert_eq!(r.track(0), Ok(Tracked::New));
    for o in 1..100 {
        assert_eq!(r.track(o), Ok(Tracked::AlreadyDone));
    }
    assert!(matches!(r.track(100), Err(TrackError::Full { .. })));
    r.ack(0).unwrap();
    assert_eq!(r.track(100), Ok(Tracked::New));
}

//! Track + ack cost per record: the ring-of-bits `PartitionTracker` against the seed's
//! `SortedSetTracker`, with 500, 10,000 and 100,000 records in flight.
//!
//! Method: each iteration tracks one window of consecutive offsets, then acks all of them in
//! a pre-shuffled order (seeded `SmallRng`), so `window` records are in flight at the peak and
//! acks arrive in random order. The tracker state carries over between iterations (offsets
//! keep increasing, the ring keeps wrapping). Throughput is per record (one track + one ack).
//!
//! That method has `window` records in flight only at the peak: while the acks drain the
//! window, half as many are in flight on average. The `steady` groups hold the count at
//! `window`: after filling the window, each step tracks the next offset and acks one record
//! drawn uniformly from those in flight (so old records linger and the span from the oldest
//! to the newest grows well past `window`), for `STEADY_STEPS_PER_WINDOW * window` steps;
//! then the rest are acked in random order. The ack order is computed before timing, as a
//! list of offsets relative to the iteration's first, so both trackers run the same sequence
//! and the timed loop does no bookkeeping of its own.
//!
//! The ring runs each sequence twice: a `track` and an `ack` call per record, and through the
//! batch forms the pipeline calls (`track_run` per poll, `ack_all` per half batch; see
//! `POLL` and `ACK_BATCH`). The sorted set has no cheaper batch form (every record is a tree
//! node and a map entry), so it runs per record.
//!
//! Inputs are opaque to the compiler without `black_box` on every call: the offsets tracked
//! come from a slice (as a poll's records would), the offsets acked from the precomputed
//! order. `black_box` on every argument (the method until 2026-11-26) sent each offset
//! through the stack and made the loop reload its own state around each call: about 10% of
//! the ring's measured time at 500 in flight (docs/offsets.md).
//!
//! Each method runs twice: groups named `..._cpu` measure the benchmark thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`), which leaves out the time the thread spends descheduled when
//! other jobs share the machine's cores; the others measure wall time.

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use holdfast::offsets::{Limits, PartitionTracker};
use holdfast::testkit::{CommitRule, SortedSetTracker};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::Duration;

const WINDOWS: [usize; 3] = [500, 10_000, 100_000];
/// Steady steps per iteration of the `steady` groups, as a multiple of the window: 16 makes
/// the fill and the final drain about 6% of the records.
const STEADY_STEPS_PER_WINDOW: usize = 16;

/// Records per poll in the batch forms: the seed's batch of 500.
const POLL: usize = 500;
/// Acks per `ack_all` in the batch forms: a worker acks its batch (at most 500, the
/// pipeline's `batch_size`) in two halves.
const ACK_BATCH: usize = 250;

/// Tracks offsets `base + first ..` for `count` records the way the poll loop does: polls
/// of `POLL` records, each a `track_run`, and where a run stops, `track` for that record
/// and a new run from the next. Returns the number refused.
fn track_all(ring: &mut PartitionTracker, base: i64, first: usize, count: usize) -> usize {
    let mut refused = 0;
    let mut offset = base + first as i64;
    let end = offset + count as i64;
    while offset < end {
        let poll_end = end.min(offset + POLL as i64);
        while offset < poll_end {
            offset += ring.track_run(offset, (poll_end - offset) as usize) as i64;
            if offset < poll_end {
                refused += usize::from(ring.track(offset).is_err());
                offset += 1;
            }
        }
    }
    refused
}

/// The ack order of one iteration: `window` offsets tracked first, then `steps` steps that
/// each track one offset and ack one drawn uniformly from those in flight, then the rest acked
/// in random order. Entry `s` is the offset acked at step `s` (relative to the iteration's
/// first offset); with no steps it is a shuffle of the window.
fn ack_order(window: usize, steps: usize) -> Vec<u32> {
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let mut in_flight: Vec<u32> = (0..window as u32).collect();
    let mut acks = Vec::with_capacity(window + steps);
    for step in 0..steps {
        in_flight.push((window + step) as u32);
        let pick = rng.random_range(0..in_flight.len());
        acks.push(in_flight.swap_remove(pick));
    }
    in_flight.shuffle(&mut rng);
    acks.extend(in_flight);
    acks
}

fn track_and_ack_wall(c: &mut Criterion) {
    track_and_ack::<_, 0>(c, "track_ack");
    track_and_ack::<_, STEADY_STEPS_PER_WINDOW>(c, "steady");
}

fn track_and_ack_cpu(c: &mut Criterion<ThreadCpuTime>) {
    track_and_ack::<_, 0>(c, "track_ack_cpu");
    track_and_ack::<_, STEADY_STEPS_PER_WINDOW>(c, "steady_cpu");
}

/// With `STEPS` = 0, the peak method; otherwise `STEPS` windows of steady steps. A constant,
/// so that the peak method's loops compile as if the steady loop were not there (with a
/// runtime count of steps they measured 30-50% slower).
fn track_and_ack<M: Measurement, const STEPS: usize>(c: &mut Criterion<M>, name: &str) {
    let mut group = c.benchmark_group(name);
    if STEPS > 0 {
        // An iteration at 100,000 in flight takes about a second for the sorted set.
        group.sample_size(10);
    }
    for window in WINDOWS {
        let steps = STEPS * window;
        let acks = ack_order(window, steps);
        let records = acks.len();
        // The offsets polled in one iteration, relative to its first: read from memory like
        // a poll's records, so the compiler cannot assume they are consecutive.
        let polled: Vec<u32> = (0..records as u32).collect();
        group.throughput(Throughput::Elements(records as u64));

        let limits = Limits {
            // Steady: one over the window, so the tracker runs at its limit throughout.
            in_flight_max: window + usize::from(steps > 0),
            // Steady: old records linger, so the span is bounded by the iteration only.
            span_max: records as u64,
            metadata_budget_bytes: 4096,
        };
        let mut ring = PartitionTracker::starting_at(0, limits);
        let mut base_next: i64 = 0;
        group.bench_function(BenchmarkId::new("PartitionTracker", window), |b| {
            b.iter(|| {
                // Results are consumed by counting refusals (there are none); black-boxing
                // each whole `Result` would measure stack spills of the error type instead.
                // `assert!` rather than `assert_eq!`: the latter takes the count's address,
                // and `black_box` must then assume it is read, so the count would be stored
                // to memory on every call (both trackers' loops alike). `base` is a local for
                // the same reason: a captured one is reloaded after every store to the ring.
                let mut refused = 0u32;
                let base = base_next;
                for &polled in &polled[..window] {
                    refused += u32::from(ring.track(base + i64::from(polled)).is_err());
                }
                for (&polled, &acked) in polled[window..].iter().zip(&acks[..steps]) {
                    refused += u32::from(ring.track(base + i64::from(polled)).is_err());
                    refused += u32::from(ring.ack(base + i64::from(acked)).is_err());
                }
                for &acked in &acks[steps..] {
                    refused += u32::from(ring.ack(base + i64::from(acked)).is_err());
                }
                base_next = base + records as i64;
                assert!(refused == 0, "a track or ack was refused");
                black_box(ring.commit_point())
            })
        });

        // The same sequence through the batch forms the pipeline uses: the poll loop tracks
        // each poll's run of consecutive offsets with one `track_run`, workers ack with
        // `ack_all`. Steps go in groups of `ACK_BATCH`: the group's tracks, then its acks (each
        // ack still draws from records tracked at or before its step), so up to `ACK_BATCH`
        // more are in flight than in the per-record loop, and the limit is raised by as much.
        let batch_limits = Limits {
            in_flight_max: window + if steps > 0 { ACK_BATCH } else { 0 },
            ..limits
        };
        let mut ring = PartitionTracker::starting_at(0, batch_limits);
        let mut base_next: i64 = 0;
        group.bench_function(BenchmarkId::new("PartitionTracker_batch", window), |b| {
            b.iter(|| {
                let base = base_next;
                let mut refused = track_all(&mut ring, base, 0, window);
                for (group, acked) in acks[..steps].chunks(ACK_BATCH).enumerate() {
                    let first = window + group * ACK_BATCH;
                    refused += track_all(&mut ring, base, first, acked.len());
                    refused += ring
                        .ack_all(acked.iter().map(move |&a| base + i64::from(a)))
                        .len();
                }
                for acked in acks[steps..].chunks(ACK_BATCH) {
                    refused += ring
                        .ack_all(acked.iter().map(move |&a| base + i64::from(a)))
                        .len();
                }
                base_next = base + records as i64;
                assert!(refused == 0, "a track or ack was refused");
                black_box(ring.commit_point())
            })
        });

        let mut seed = SortedSetTracker::starting_at(0, CommitRule::Watermark);
        let mut base_next: i64 = 0;
        let mut msg_ids: Vec<u64> = Vec::with_capacity(records);
        group.bench_function(BenchmarkId::new("SortedSetTracker", window), |b| {
            b.iter(|| {
                msg_ids.clear();
                let mut refused = 0u32;
                let base = base_next;
                for &polled in &polled[..window] {
                    msg_ids.push(seed.track(base + i64::from(polled)));
                }
                for (&polled, &acked) in polled[window..].iter().zip(&acks[..steps]) {
                    msg_ids.push(seed.track(base + i64::from(polled)));
                    refused += u32::from(!seed.ack(msg_ids[acked as usize]));
                }
                for &acked in &acks[steps..] {
                    refused += u32::from(!seed.ack(msg_ids[acked as usize]));
                }
                base_next = base + records as i64;
                assert!(refused == 0, "a track or ack was refused");
                black_box(seed.commit_point())
            })
        });
    }
    group.finish();
}

/// CPU time of the calling thread.
struct ThreadCpuTime;

#[cfg(target_os = "linux")]
fn thread_cpu_time() -> Duration {
    #[repr(C)]
    struct Timespec {
        seconds: i64,
        nanoseconds: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, time: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut time = Timespec {
        seconds: 0,
        nanoseconds: 0,
    };
    // SAFETY: `time` is a valid, exclusively borrowed timespec for the call's duration.
    let status = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut time) };
    assert_eq!(status, 0, "clock_gettime failed");
    Duration::new(time.seconds as u64, time.nanoseconds as u32)
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_time() -> Duration {
    // No portable thread clock: fall back to a monotonic clock.
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

static WALL_TIME: WallTime = WallTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_time()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu_time().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Values are nanoseconds, as for wall time.
        WALL_TIME.formatter()
    }
}

criterion_group!(wall, track_and_ack_wall);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = track_and_ack_cpu
}
criterion_main!(wall, cpu);

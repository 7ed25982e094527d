//! Track + ack cost per record: the ring-of-bits `PartitionTracker` against the seed's
//! `SortedSetTracker`, with 500, 10,000 and 100,000 records in flight.
//!
//! Method: each iteration tracks one window of consecutive offsets, then acks all of them in
//! a pre-shuffled order (seeded `SmallRng`), so `window` records are in flight at the peak and
//! acks arrive in random order. The tracker state carries over between iterations (offsets
//! keep increasing, the ring keeps wrapping). Throughput is per record (one track + one ack).
//!
//! Two groups run the same code: `track_ack` measures wall time; `track_ack_cpu` measures the
//! benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), which leaves out the time the
//! thread spends descheduled when other jobs share the machine's cores.

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use holdfast::offsets::{CommitRule, Limits, PartitionTracker, SortedSetTracker};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::hint::black_box;
use std::time::Duration;

const WINDOWS: [usize; 3] = [500, 10_000, 100_000];

fn shuffled(window: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..window as u32).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(0x5eed));
    order
}

fn track_and_ack_wall(c: &mut Criterion) {
    track_and_ack(c, "track_ack");
}

fn track_and_ack_cpu(c: &mut Criterion<ThreadCpuTime>) {
    track_and_ack(c, "track_ack_cpu");
}

fn track_and_ack<M: Measurement>(c: &mut Criterion<M>, name: &str) {
    let mut group = c.benchmark_group(name);
    for window in WINDOWS {
        let order = shuffled(window);
        group.throughput(Throughput::Elements(window as u64));

        let limits = Limits {
            max_in_flight: window,
            max_span: window as u64,
            metadata_budget_bytes: 4096,
        };
        let mut ring = PartitionTracker::starting_at(0, limits);
        let mut base: i64 = 0;
        group.bench_function(BenchmarkId::new("PartitionTracker", window), |b| {
            b.iter(|| {
                // Results are consumed by counting refusals (there are none); black-boxing
                // each whole `Result` would measure stack spills of the error type instead.
                // `assert!` rather than `assert_eq!`: the latter takes the count's address,
                // and `black_box` must then assume it is read, so the count would be stored
                // to memory on every call (both trackers' loops alike).
                let mut refused = 0u32;
                for i in 0..window as i64 {
                    refused += u32::from(ring.track(black_box(base + i)).is_err());
                }
                for &i in &order {
                    refused += u32::from(ring.ack(black_box(base + i64::from(i))).is_err());
                }
                base += window as i64;
                assert!(refused == 0, "a track or ack was refused");
                black_box(ring.commit_point())
            })
        });

        let mut seed = SortedSetTracker::starting_at(0, CommitRule::Watermark);
        let mut base: i64 = 0;
        let mut msg_ids: Vec<u64> = Vec::with_capacity(window);
        group.bench_function(BenchmarkId::new("SortedSetTracker", window), |b| {
            b.iter(|| {
                msg_ids.clear();
                let mut refused = 0u32;
                for i in 0..window as i64 {
                    msg_ids.push(seed.track(black_box(base + i)));
                }
                for &i in &order {
                    refused += u32::from(!seed.ack(black_box(msg_ids[i as usize])));
                }
                base += window as i64;
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

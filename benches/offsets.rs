//! Track + ack cost per record: the ring-of-bits `PartitionTracker` against the seed's
//! `SortedSetTracker`, with 500, 10,000 and 100,000 records in flight.
//!
//! Method: each iteration tracks one window of consecutive offsets, then acks all of them in
//! a pre-shuffled order (seeded `SmallRng`), so `window` records are in flight at the peak and
//! acks arrive in random order. The tracker state carries over between iterations (offsets
//! keep increasing, the ring keeps wrapping). Throughput is per record (one track + one ack).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use holdfast::offsets::{CommitRule, Limits, PartitionTracker, SortedSetTracker};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::hint::black_box;

const WINDOWS: [usize; 3] = [500, 10_000, 100_000];

fn shuffled(window: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..window as u32).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(0x5eed));
    order
}

fn track_and_ack(c: &mut Criterion) {
    let mut group = c.benchmark_group("track_ack");
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
                let mut refused = 0u32;
                for i in 0..window as i64 {
                    refused += u32::from(ring.track(black_box(base + i)).is_err());
                }
                for &i in &order {
                    refused += u32::from(ring.ack(black_box(base + i64::from(i))).is_err());
                }
                base += window as i64;
                assert_eq!(refused, 0);
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
                assert_eq!(refused, 0);
                black_box(seed.commit_point())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, track_and_ack);
criterion_main!(benches);

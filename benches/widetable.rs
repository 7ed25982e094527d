//! Events per second of the wide-table merge: `OrderRow::apply` over realistic order
//! lifecycles delivered out of order with redeliveries, and `OrderRow::fold` over a whole
//! batch of interleaved orders.
//!
//! Run: `cargo bench --bench widetable -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use holdfast::event::{EventKind, OrderEvent};
use holdfast::widetable::OrderRow;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::hint::black_box;

const ORDERS: usize = 10_000;
const SEED: u64 = 0x5eed;
const POLL_RECORDS: usize = 500;

/// One order's lifecycle: created, paid, one or two bills, shipped, received, completed, and a
/// partial refund for one order in ten; one event in ten is delivered twice; the order's events
/// arrive shuffled (the worst case for an arrival-order design, the normal case for holdfast).
fn lifecycle(order: usize, rng: &mut SmallRng) -> Vec<OrderEvent> {
    let order_id = format!("order-{order:06}");
    let user_id = format!("user-{:05}", order % 5_000);
    let mut kinds = vec![
        EventKind::Created,
        EventKind::Paid,
        EventKind::Billed,
        EventKind::Shipped,
        EventKind::Received,
        EventKind::Completed,
    ];
    if rng.random_bool(0.5) {
        kinds.push(EventKind::Billed);
    }
    if rng.random_bool(0.1) {
        kinds.push(EventKind::Refunded);
    }
    let start_ms = 1_700_000_000_000 + order as i64 * 1_000;
    let mut events: Vec<OrderEvent> = kinds
        .into_iter()
        .enumerate()
        .map(|(step, kind)| OrderEvent {
            event_id: format!("{order_id}-{step}"),
            order_id: order_id.clone(),
            user_id: user_id.clone(),
            kind,
            amount_minor: kind
                .carries_amount()
                .then(|| rng.random_range(100..100_000)),
            event_time_ms: start_ms + step as i64 * 60_000,
            payload: bytes::Bytes::new(),
        })
        .collect();
    let redelivered: Vec<OrderEvent> = events
        .iter()
        .filter(|_| rng.random_bool(0.1))
        .cloned()
        .collect();
    events.extend(redelivered);
    events.shuffle(rng);
    events
}

fn workload() -> Vec<Vec<OrderEvent>> {
    let mut rng = SmallRng::seed_from_u64(SEED);
    (0..ORDERS)
        .map(|order| lifecycle(order, &mut rng))
        .collect()
}

fn bench_apply(criterion: &mut Criterion) {
    let orders = workload();
    let events: usize = orders.iter().map(Vec::len).sum();
    let mut group = criterion.benchmark_group("widetable");
    group.throughput(Throughput::Elements(events as u64));
    group.bench_function("apply_lifecycles", |bencher| {
        bencher.iter(|| {
            let mut changed = 0usize;
            for order in &orders {
                let mut row = OrderRow::new(&order[0].order_id, "");
                for event in order {
                    changed += usize::from(row.apply(black_box(event)));
                }
                black_box(&row);
            }
            changed
        })
    });
    // Interleave orders the way a partition delivers them.
    let mut interleaved: Vec<OrderEvent> = orders.into_iter().flatten().collect();
    interleaved.shuffle(&mut SmallRng::seed_from_u64(SEED + 1));
    group.bench_function("fold_interleaved_all", |bencher| {
        bencher.iter(|| OrderRow::fold(black_box(&interleaved)))
    });
    group.finish();
    // One poll's worth: the pipeline folds batches of a few hundred records.
    let mut group = criterion.benchmark_group("widetable_poll");
    let batch = &interleaved[..POLL_RECORDS];
    group.throughput(Throughput::Elements(POLL_RECORDS as u64));
    group.bench_function("fold_interleaved_500", |bencher| {
        bencher.iter(|| OrderRow::fold(black_box(batch)))
    });
    group.finish();
}

criterion_group!(benches, bench_apply);
criterion_main!(benches);

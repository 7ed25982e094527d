//! Property tests of the wide-table merge (invariants I6 and I7 of docs/design.md): any
//! permutation with any duplication of the same events gives the same rows; the merge is a
//! join-semilattice; the derived status never regresses; and the planted arrival-order merge is
//! caught by the same permutation property.

use holdfast::event::{EventKind, OrderEvent};
use holdfast::testkit::planted::PlantedBug;
use holdfast::widetable::OrderRow;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};

/// An event drawn from small pools, so that conflicts (same column, same event id, equal
/// times) are common rather than rare.
fn event(orders: &'static [&'static str]) -> impl Strategy<Value = OrderEvent> {
    (
        0..6u8,
        proptest::sample::select(orders),
        proptest::sample::select(&["", "u1", "u2"][..]),
        proptest::sample::select(&EventKind::ALL[..]),
        0..1_000i64,
        0..4i64,
    )
        .prop_map(
            |(event_number, order_id, user_id, kind, amount_minor, event_time_ms)| OrderEvent {
                event_id: format!("e{event_number}"),
                order_id: order_id.to_owned(),
                user_id: user_id.to_owned(),
                kind,
                amount_minor: kind.carries_amount().then_some(amount_minor),
                event_time_ms,
                payload: bytes::Bytes::new(),
            },
        )
}

/// A multiset of events and a delivery of it: shuffled, with some events delivered again.
fn events_and_delivery() -> impl Strategy<Value = (Vec<OrderEvent>, Vec<OrderEvent>)> {
    (vec(event(&["o1", "o2"]), 1..14), vec(any::<Index>(), 0..10)).prop_flat_map(
        |(events, repeats)| {
            let mut delivered = events.clone();
            delivered.extend(repeats.iter().map(|index| index.get(&events).clone()));
            (Just(events), Just(delivered).prop_shuffle())
        },
    )
}

fn rows_with(events: &[OrderEvent], planted: Option<PlantedBug>) -> Vec<OrderRow> {
    let mut rows = std::collections::BTreeMap::<String, OrderRow>::new();
    for each in events {
        let row = rows
            .entry(each.order_id.clone())
            .or_insert_with(|| OrderRow::new(&each.order_id, ""));
        (PlantedBug::schema(planted).merge)(row, each);
    }
    rows.into_values().collect()
}

fn row_of(events: &[OrderEvent]) -> OrderRow {
    let mut row = OrderRow::default();
    for each in events {
        row.apply(each);
    }
    row
}

fn merged(left: &OrderRow, right: &OrderRow) -> OrderRow {
    let mut row = left.clone();
    row.merge(right);
    row
}

proptest! {
    #![proptest_config(Config::with_cases(512))]

    /// I6: the rows depend on the set of events only.
    #[test]
    fn any_permutation_with_duplicates_gives_the_same_rows((events, delivered) in events_and_delivery()) {
        prop_assert_eq!(OrderRow::fold(&events), OrderRow::fold(&delivered));
        prop_assert_eq!(rows_with(&events, None), OrderRow::fold(&events));
    }

    /// Merge is commutative, associative and idempotent, and applying events is the same as
    /// merging the rows they make (apply is the join with a one-event row).
    #[test]
    fn merge_is_a_join_semilattice(
        first in vec(event(&["o1"]), 0..6),
        second in vec(event(&["o1"]), 0..6),
        third in vec(event(&["o1"]), 0..6),
    ) {
        let (a, b, c) = (row_of(&first), row_of(&second), row_of(&third));
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        prop_assert_eq!(merged(&a, &a), a.clone());
        prop_assert_eq!(merged(&a, &OrderRow::default()), a.clone());
        let all: Vec<OrderEvent> = first.iter().chain(&second).chain(&third).cloned().collect();
        prop_assert_eq!(merged(&merged(&a, &b), &c), row_of(&all));
    }

    /// apply reports a change exactly when the row changed.
    #[test]
    fn apply_reports_change_exactly(events in vec(event(&["o1"]), 1..12)) {
        let mut row = OrderRow::default();
        for each in &events {
            let before = row.clone();
            let changed = row.apply(each);
            prop_assert_eq!(changed, row != before);
            prop_assert!(!row.apply(each), "applying the same event twice changes nothing");
        }
    }

    /// I7: adding an event never lowers the status, in any delivery order.
    #[test]
    fn status_never_regresses((_, delivered) in events_and_delivery()) {
        let mut row = OrderRow::default();
        let mut status_before = None;
        for each in delivered.iter().filter(|each| each.order_id == "o1") {
            row.apply(each);
            let status = row.status();
            prop_assert!(status >= status_before, "{:?} after {:?}", status, status_before);
            prop_assert!(status.is_some());
            status_before = status;
        }
    }
}

/// Goal: the permutation property is strong enough to catch the planted arrival-order merge.
/// Method: run the same property with the bug planted under a deterministic runner and require
/// that it finds a counterexample; the unplanted run over the same inputs must pass.
#[test]
fn permutation_property_catches_merge_by_arrival() {
    let property = |planted: Option<PlantedBug>| {
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases: 512,
                failure_persistence: None,
                ..Config::default()
            },
            proptest::test_runner::TestRng::deterministic_rng(
                proptest::test_runner::RngAlgorithm::ChaCha,
            ),
        );
        runner.run(&events_and_delivery(), move |(events, delivered)| {
            prop_assert_eq!(rows_with(&events, planted), rows_with(&delivered, planted));
            Ok(())
        })
    };
    assert!(property(None).is_ok());
    let caught = property(Some(PlantedBug::MergeByArrival));
    assert!(
        caught.is_err(),
        "the planted merge must violate order independence"
    );
    println!("counterexample for MergeByArrival: {caught:?}");
}

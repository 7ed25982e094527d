//! Unit tests of the wide-table merge.

use super::*;

fn event(event_id: &str, kind: EventKind, at_ms: i64) -> OrderEvent {
    OrderEvent {
        event_id: event_id.into(),
        order_id: "o-1".into(),
        user_id: "u-1".into(),
        kind,
        amount_minor: kind.carries_amount().then_some(1000),
        event_time_ms: at_ms,
        payload: bytes::Bytes::new(),
    }
}

fn with_amount(mut event: OrderEvent, amount_minor: i64) -> OrderEvent {
    event.amount_minor = Some(amount_minor);
    event
}

fn lifecycle() -> Vec<OrderEvent> {
    vec![
        event("e1", EventKind::Created, 10),
        event("e2", EventKind::Paid, 20),
        event("e3", EventKind::Billed, 25),
        event("e4", EventKind::Shipped, 30),
        event("e5", EventKind::Received, 40),
        event("e6", EventKind::Completed, 50),
    ]
}

fn row_of(events: &[OrderEvent]) -> OrderRow {
    let mut row = OrderRow::new("o-1", "");
    for each in events {
        row.apply(each);
    }
    row
}

/// Goal: an event sets only its own column group. Method: apply one of each kind to empty
/// rows and check exactly one status is present.
#[test]
fn apply_sets_only_its_own_column() {
    for kind in EventKind::ALL {
        let mut row = OrderRow::new("o-1", "u-1");
        assert!(row.apply(&event("e", kind, 5)));
        for other in EventKind::ALL {
            assert_eq!(row.has(other), other == kind, "{kind} set {other}");
        }
        assert_eq!(row.status(), Some(kind));
    }
}

/// Goal: apply reports change exactly. Method: new event -> true, the same again -> false.
#[test]
fn apply_reports_whether_the_row_changed() {
    let mut row = OrderRow::new("o-1", "u-1");
    let paid = event("e2", EventKind::Paid, 20);
    assert!(row.apply(&paid));
    assert!(!row.apply(&paid));
    // A later paid event loses the conflict: no change.
    assert!(!row.apply(&event("e9", EventKind::Paid, 99)));
    // An earlier one wins.
    assert!(row.apply(&event("e0", EventKind::Paid, 1)));
    assert_eq!(
        row.paid.as_ref().map(|stamp| stamp.event_id.as_str()),
        Some("e0")
    );
}

/// Goal: the documented conflict rule. Method: two events for one column in both orders;
/// equal times fall to the smaller event id.
#[test]
fn conflict_rule_is_smallest_time_then_event_id() {
    let early = event("z", EventKind::Shipped, 10);
    let late = event("a", EventKind::Shipped, 11);
    let tie = event("b", EventKind::Shipped, 10);
    for order in [
        [&early, &late, &tie],
        [&tie, &late, &early],
        [&late, &tie, &early],
    ] {
        let mut row = OrderRow::new("o-1", "u-1");
        for each in order {
            row.apply(each);
        }
        assert_eq!(row.shipped, Some(Stamp::of(&tie)));
    }
}

/// Goal: bills and refunds keep one entry per event id. Method: two partial refunds, one
/// duplicated.
#[test]
fn repeating_kinds_keep_every_event() {
    let first = with_amount(event("r1", EventKind::Refunded, 60), 300);
    let second = with_amount(event("r2", EventKind::Refunded, 70), 200);
    let row = row_of(&[first.clone(), second, first]);
    assert_eq!(row.refunds.len(), 2);
    assert_eq!(row.refunded_minor(), 500);
    let bills = row_of(&[
        with_amount(event("b1", EventKind::Billed, 1), 5),
        with_amount(event("b2", EventKind::Billed, 2), 7),
    ]);
    assert_eq!(bills.billed_minor(), 12);
}

/// Goal: user id is a lattice too. Method: empty is the identity; the smaller non-empty wins.
#[test]
fn user_id_is_the_smallest_non_empty() {
    let mut row = OrderRow::new("o-1", "");
    let mut late = event("e1", EventKind::Created, 1);
    late.user_id = "u-9".into();
    let mut early = event("e2", EventKind::Paid, 2);
    early.user_id = "u-2".into();
    row.apply(&late);
    assert_eq!(row.user_id, "u-9");
    row.apply(&early);
    assert_eq!(row.user_id, "u-2");
    row.apply(&late);
    assert_eq!(row.user_id, "u-2");
}

/// Goal: the merge laws on a concrete case. Method: split a lifecycle into rows and merge in
/// several groupings and orders.
#[test]
fn merge_is_commutative_associative_idempotent() {
    let events = lifecycle();
    let left = row_of(&events[..3]);
    let middle = row_of(&events[2..5]);
    let right = row_of(&events[4..]);
    let mut left_then_right = left.clone();
    left_then_right.merge(&middle);
    left_then_right.merge(&right);
    let mut right_then_left = right.clone();
    right_then_left.merge(&middle);
    right_then_left.merge(&left);
    assert_eq!(left_then_right, right_then_left);
    assert_eq!(left_then_right, row_of(&events));
    let mut twice = left_then_right.clone();
    twice.merge(&left_then_right);
    assert_eq!(twice, left_then_right);
    let mut into_empty = OrderRow::default();
    into_empty.merge(&left_then_right);
    assert_eq!(into_empty, left_then_right);
}

/// Goal: fold groups by order and sorts by order id. Method: interleave two orders.
#[test]
fn fold_gives_one_row_per_order_sorted() {
    let mut other = event("x1", EventKind::Created, 5);
    other.order_id = "o-0".into();
    let events = [
        event("e1", EventKind::Created, 1),
        other,
        event("e2", EventKind::Paid, 2),
    ];
    let rows = OrderRow::fold(&events);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].order_id, "o-0");
    assert_eq!(rows[1].order_id, "o-1");
    assert_eq!(rows[1].status(), Some(EventKind::Paid));
    assert_eq!(rows[1].user_id, "u-1");
    assert!(OrderRow::fold(&[]).is_empty());
}

/// Goal: the status follows rank, not arrival. Method: deliver a lifecycle backwards; the
/// status is Completed from the first event on and never drops.
#[test]
fn status_uses_rank_and_never_regresses() {
    let mut row = OrderRow::new("o-1", "u-1");
    assert_eq!(row.status(), None);
    for each in lifecycle().iter().rev() {
        row.apply(each);
        assert_eq!(row.status(), Some(EventKind::Completed));
    }
    row.apply(&event("c", EventKind::Cancelled, 5));
    assert_eq!(row.status(), Some(EventKind::Cancelled));
}

/// Goal: each anomaly is flagged exactly when its story holds, and data is kept. Method:
/// one row per anomaly plus a clean lifecycle.
#[test]
fn anomalies_are_flagged_and_data_kept() {
    assert!(row_of(&lifecycle()).anomalies().is_empty());

    let refund = with_amount(event("r", EventKind::Refunded, 5), 10);
    let row = row_of(std::slice::from_ref(&refund));
    assert_eq!(row.anomalies(), vec![Anomaly::RefundedNeverPaid]);
    assert_eq!(row.refunds.len(), 1);

    let paid = with_amount(event("p", EventKind::Paid, 1), 8);
    assert_eq!(
        row_of(&[paid, refund]).anomalies(),
        vec![Anomaly::RefundsExceedPaid {
            paid_minor: 8,
            refunded_minor: 10
        }]
    );
    assert_eq!(
        row_of(&[event("c", EventKind::Completed, 5)]).anomalies(),
        vec![Anomaly::CompletedNeverShipped]
    );
    let backwards = [
        event("s", EventKind::Shipped, 50),
        event("c", EventKind::Completed, 40),
    ];
    let row = row_of(&backwards);
    assert_eq!(row.anomalies(), vec![Anomaly::CompletedBeforeShipped]);
    assert!(row.shipped.is_some() && row.completed.is_some());
    assert_eq!(
        row_of(&[event("r", EventKind::Received, 5)]).anomalies(),
        vec![Anomaly::ReceivedNeverShipped]
    );
    assert_eq!(
        row_of(&[
            event("x", EventKind::Cancelled, 5),
            event("s", EventKind::Shipped, 6)
        ])
        .anomalies(),
        vec![Anomaly::ShippedAfterCancelled]
    );
    // Shipped before the cancellation is not flagged.
    assert!(row_of(&[
        event("s", EventKind::Shipped, 4),
        event("x", EventKind::Cancelled, 5)
    ])
    .anomalies()
    .is_empty());
    let mut both = lifecycle();
    both.push(event("x", EventKind::Cancelled, 60));
    assert_eq!(
        row_of(&both).anomalies(),
        vec![Anomaly::CompletedAndCancelled]
    );
}

/// Goal: each anomaly's boundary belongs to the well-behaved side: a full refund, and a
/// completion or cancellation in the same millisecond as the shipment, are not anomalies.
#[test]
fn anomaly_boundaries_are_not_anomalies() {
    let paid = with_amount(event("p", EventKind::Paid, 1), 10);
    let full_refund = with_amount(event("r", EventKind::Refunded, 2), 10);
    assert!(row_of(&[paid, full_refund]).anomalies().is_empty());
    let same_time = [
        event("s", EventKind::Shipped, 40),
        event("c", EventKind::Completed, 40),
    ];
    assert!(row_of(&same_time).anomalies().is_empty());
    let shipped_as_cancelled = [
        event("s", EventKind::Shipped, 5),
        event("x", EventKind::Cancelled, 5),
    ];
    assert!(row_of(&shipped_as_cancelled).anomalies().is_empty());
}

/// Goal: a row reflects an event when its column holds the event's claim or one the rule
/// prefers, and not otherwise. Method: a payment and an earlier and a later rival.
#[test]
fn reflects_the_claim_kept_and_what_it_beats() {
    let paid = event("p2", EventKind::Paid, 20);
    let row = row_of(std::slice::from_ref(&paid));
    assert!(row.reflects(&paid));
    assert!(row.reflects(&event("p3", EventKind::Paid, 21)));
    assert!(!row.reflects(&event("p1", EventKind::Paid, 19)));
    assert!(!row.reflects(&event("s", EventKind::Shipped, 30)));
    let refund = with_amount(event("r", EventKind::Refunded, 5), 10);
    let row = row_of(std::slice::from_ref(&refund));
    assert!(row.reflects(&refund));
    assert!(row.reflects(&with_amount(event("r", EventKind::Refunded, 5), 11)));
    assert!(!row.reflects(&with_amount(event("r", EventKind::Refunded, 4), 10)));
    assert!(!row.reflects(&with_amount(event("r2", EventKind::Refunded, 5), 10)));
}

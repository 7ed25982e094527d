//! The wide table: one column group per order status, merged as a join-semilattice.
//!
//! Applying an event sets only its own column group. Every column is combined with a join that
//! is commutative, associative and idempotent, so any permutation of the same events, with any
//! duplication, gives the same row. That is what lets holdfast apply events in whatever order
//! Kafka (and redelivery) hands them over.
//!
//! Conflict rule: when two *different* events claim the same single-valued column (two `paid`
//! events for one order), the one with the smaller `(at_ms, event_id)` wins; ties on both fall
//! to the smaller amount. The earliest business time is the natural answer to "when was it
//! paid", and the event id makes the rule total, so it never depends on arrival order.
//!
//! The derived status ([`OrderRow::status`]) is the highest-ranked status with a column set,
//! using the rank of [`EventKind`]'s declaration order. A row only ever gains columns, so the
//! status never regresses. Rows that tell an impossible story are flagged by
//! [`OrderRow::anomalies`]; their data is kept as it arrived.

use crate::event::{EventKind, OrderEvent};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

/// One status column group: which event set it, when the business says it happened, and the
/// amount where the status carries one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stamp {
    pub event_id: String,
    pub at_ms: i64,
    pub amount_minor: Option<i64>,
}

impl Stamp {
    /// The stamp an event writes into its column.
    pub fn of(event: &OrderEvent) -> Stamp {
        Stamp {
            event_id: event.event_id.clone(),
            at_ms: event.event_time_ms,
            amount_minor: event.amount_minor,
        }
    }

    /// The conflict order: smaller `(at_ms, event_id)` wins; the amount breaks a full tie so
    /// that the order is total (two stamps compare equal only when they are equal).
    pub fn precedence(&self, other: &Stamp) -> Ordering {
        (self.at_ms, &self.event_id, self.amount_minor).cmp(&(
            other.at_ms,
            &other.event_id,
            other.amount_minor,
        ))
    }
}

/// Something a row says that cannot have happened in a well-behaved business process. The row
/// keeps every column regardless; anomalies are a read-only diagnosis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Anomaly {
    /// At least one refund, and no payment.
    RefundedNeverPaid,
    /// The refunds add up to more than the payment.
    RefundsExceedPaid {
        paid_minor: i64,
        refunded_minor: i64,
    },
    /// Completed, and never shipped.
    CompletedNeverShipped,
    /// Completed (by business time) before it was shipped.
    CompletedBeforeShipped,
    /// Received, and never shipped.
    ReceivedNeverShipped,
    /// Shipped (by business time) after it was cancelled.
    ShippedAfterCancelled,
    /// Both completed and cancelled.
    CompletedAndCancelled,
}

/// An order's wide row. Each event sets only its own column group; statuses that legitimately
/// repeat (bills, refunds) keep one entry per event id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct OrderRow {
    pub order_id: String,
    pub user_id: String,
    pub created: Option<Stamp>,
    pub paid: Option<Stamp>,
    pub shipped: Option<Stamp>,
    pub received: Option<Stamp>,
    pub completed: Option<Stamp>,
    pub cancelled: Option<Stamp>,
    pub bills: BTreeMap<String, Stamp>,
    pub refunds: BTreeMap<String, Stamp>,
}

/// Join of two single-valued columns: the stamp with the smaller precedence wins. Returns
/// whether `target` changed.
fn join_stamp(target: &mut Option<Stamp>, candidate: &Stamp) -> bool {
    match target {
        Some(current) if current.precedence(candidate) != Ordering::Greater => false,
        _ => {
            *target = Some(candidate.clone());
            true
        }
    }
}

/// Join of two repeating columns, entry by entry (the same event id twice is one entry; should
/// two different stamps ever share an event id, the precedence rule picks one).
fn join_entries(target: &mut BTreeMap<String, Stamp>, candidate: &Stamp) -> bool {
    match target.get_mut(&candidate.event_id) {
        Some(current) if current.precedence(candidate) != Ordering::Greater => false,
        Some(current) => {
            *current = candidate.clone();
            true
        }
        None => {
            target.insert(candidate.event_id.clone(), candidate.clone());
            true
        }
    }
}

/// Whether `event` beats the stamp in its column under [`Stamp::precedence`], without
/// building a stamp for it.
fn event_wins(current: &Stamp, event: &OrderEvent) -> bool {
    let candidate = (
        event.event_time_ms,
        event.event_id.as_str(),
        event.amount_minor,
    );
    (
        current.at_ms,
        current.event_id.as_str(),
        current.amount_minor,
    ) > candidate
}

/// Join of an identifier: empty is "unknown" (the identity), otherwise the smaller wins.
fn join_id(target: &mut String, candidate: &str) -> bool {
    if candidate.is_empty() || (!target.is_empty() && target.as_str() <= candidate) {
        return false;
    }
    candidate.clone_into(target);
    true
}

impl OrderRow {
    /// An empty row for one order (no status set yet).
    pub fn new(order_id: &str, user_id: &str) -> OrderRow {
        OrderRow {
            order_id: order_id.to_owned(),
            user_id: user_id.to_owned(),
            ..OrderRow::default()
        }
    }

    /// Merges one event into its own column group; returns whether the row changed.
    ///
    /// ```
    /// use holdfast::event::{EventKind, OrderEvent};
    /// use holdfast::widetable::OrderRow;
    /// let paid = OrderEvent {
    ///     event_id: "e-2".into(), order_id: "o-1".into(), user_id: "u-1".into(),
    ///     kind: EventKind::Paid, amount_minor: Some(500), event_time_ms: 20,
    ///     payload: Default::default(),
    /// };
    /// let mut row = OrderRow::new("o-1", "u-1");
    /// assert!(row.apply(&paid));
    /// assert!(!row.apply(&paid)); // a duplicate changes nothing
    /// assert_eq!(row.status(), Some(EventKind::Paid));
    /// ```
    pub fn apply(&mut self, event: &OrderEvent) -> bool {
        debug_assert!(
            self.order_id.is_empty() || self.order_id == event.order_id,
            "event of order {} applied to row {}",
            event.order_id,
            self.order_id
        );
        #[cfg(debug_assertions)]
        let status_before = self.status();
        let mut changed = join_id(&mut self.order_id, &event.order_id);
        changed |= join_id(&mut self.user_id, &event.user_id);
        changed |= match event.kind {
            EventKind::Billed => join_entries(&mut self.bills, &Stamp::of(event)),
            EventKind::Refunded => join_entries(&mut self.refunds, &Stamp::of(event)),
            kind => {
                // Compare before building a stamp: the event id is cloned only when the event
                // wins the column, so a redelivery or a losing duplicate does not allocate.
                let column = self.single_column(kind);
                match column {
                    Some(current) if !event_wins(current, event) => false,
                    _ => {
                        *column = Some(Stamp::of(event));
                        true
                    }
                }
            }
        };
        #[cfg(debug_assertions)]
        debug_assert!(self.status() >= status_before, "the status never regresses");
        debug_assert!(self.has(event.kind), "an applied event's column is set");
        changed
    }

    /// The column of a kind that happens at most once per order.
    fn single_column(&mut self, kind: EventKind) -> &mut Option<Stamp> {
        match kind {
            EventKind::Created => &mut self.created,
            EventKind::Paid => &mut self.paid,
            EventKind::Shipped => &mut self.shipped,
            EventKind::Received => &mut self.received,
            EventKind::Completed => &mut self.completed,
            EventKind::Cancelled => &mut self.cancelled,
            EventKind::Billed | EventKind::Refunded => {
                unreachable!("repeating kinds are kept per event id, not in a single column")
            }
        }
    }

    /// Joins another row of the same order into this one: commutative, associative and
    /// idempotent, column by column.
    pub fn merge(&mut self, other: &OrderRow) {
        debug_assert!(
            self.order_id.is_empty()
                || other.order_id.is_empty()
                || self.order_id == other.order_id,
            "rows of orders {} and {} merged",
            self.order_id,
            other.order_id
        );
        join_id(&mut self.order_id, &other.order_id);
        join_id(&mut self.user_id, &other.user_id);
        let columns = [
            (&mut self.created, &other.created),
            (&mut self.paid, &other.paid),
            (&mut self.shipped, &other.shipped),
            (&mut self.received, &other.received),
            (&mut self.completed, &other.completed),
            (&mut self.cancelled, &other.cancelled),
        ];
        for (target, source) in columns {
            if let Some(stamp) = source {
                join_stamp(target, stamp);
            }
        }
        for stamp in other.bills.values() {
            join_entries(&mut self.bills, stamp);
        }
        for stamp in other.refunds.values() {
            join_entries(&mut self.refunds, stamp);
        }
    }

    /// Folds events into one row per order id, sorted by order id.
    pub fn fold<'a>(events: impl IntoIterator<Item = &'a OrderEvent>) -> Vec<OrderRow> {
        // A hash map and one sort at the end: cheaper than an ordered map for large batches.
        let mut rows: HashMap<&'a str, OrderRow> = HashMap::new();
        for event in events {
            rows.entry(event.order_id.as_str())
                .or_insert_with(|| OrderRow::new(&event.order_id, ""))
                .apply(event);
        }
        let mut rows: Vec<OrderRow> = rows.into_values().collect();
        rows.sort_unstable_by(|left, right| left.order_id.cmp(&right.order_id));
        rows
    }

    /// Whether the row shows the event's effect: its column (or entry) holds the event's
    /// claim or one that wins over it under [`Stamp::precedence`], which the rule keeps.
    pub fn reflects(&self, event: &OrderEvent) -> bool {
        let current = match event.kind {
            EventKind::Billed => self.bills.get(&event.event_id),
            EventKind::Refunded => self.refunds.get(&event.event_id),
            EventKind::Created => self.created.as_ref(),
            EventKind::Paid => self.paid.as_ref(),
            EventKind::Shipped => self.shipped.as_ref(),
            EventKind::Received => self.received.as_ref(),
            EventKind::Completed => self.completed.as_ref(),
            EventKind::Cancelled => self.cancelled.as_ref(),
        };
        current.is_some_and(|stamp| !event_wins(stamp, event))
    }

    /// Whether the row has a column set for `kind`.
    pub fn has(&self, kind: EventKind) -> bool {
        match kind {
            EventKind::Created => self.created.is_some(),
            EventKind::Paid => self.paid.is_some(),
            EventKind::Billed => !self.bills.is_empty(),
            EventKind::Shipped => self.shipped.is_some(),
            EventKind::Received => self.received.is_some(),
            EventKind::Completed => self.completed.is_some(),
            EventKind::Refunded => !self.refunds.is_empty(),
            EventKind::Cancelled => self.cancelled.is_some(),
        }
    }

    /// The order's state: the highest-ranked status with a column set (rank = the declaration
    /// order of [`EventKind`]). `None` for a row with no status. Because a row only gains
    /// columns, adding an event never lowers it.
    pub fn status(&self) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .rev()
            .find(|&kind| self.has(kind))
    }

    /// Sum of the amounts of the refunds, saturating (amounts are never negative).
    pub fn refunded_minor(&self) -> i64 {
        self.refunds
            .values()
            .filter_map(|stamp| stamp.amount_minor)
            .fold(0, i64::saturating_add)
    }

    /// Sum of the amounts of the bills, saturating.
    pub fn billed_minor(&self) -> i64 {
        self.bills
            .values()
            .filter_map(|stamp| stamp.amount_minor)
            .fold(0, i64::saturating_add)
    }

    /// Every anomaly the row shows, in a stable order. Empty for a well-behaved order.
    pub fn anomalies(&self) -> Vec<Anomaly> {
        let mut found = Vec::new();
        match &self.paid {
            None if !self.refunds.is_empty() => found.push(Anomaly::RefundedNeverPaid),
            Some(paid) => {
                let paid_minor = paid.amount_minor.unwrap_or(0);
                let refunded_minor = self.refunded_minor();
                if refunded_minor > paid_minor {
                    found.push(Anomaly::RefundsExceedPaid {
                        paid_minor,
                        refunded_minor,
                    });
                }
            }
            None => {}
        }
        match (&self.completed, &self.shipped) {
            (Some(_), None) => found.push(Anomaly::CompletedNeverShipped),
            (Some(completed), Some(shipped)) if completed.at_ms < shipped.at_ms => {
                found.push(Anomaly::CompletedBeforeShipped)
            }
            _ => {}
        }
        if self.received.is_some() && self.shipped.is_none() {
            found.push(Anomaly::ReceivedNeverShipped);
        }
        if let (Some(shipped), Some(cancelled)) = (&self.shipped, &self.cancelled) {
            if shipped.at_ms > cancelled.at_ms {
                found.push(Anomaly::ShippedAfterCancelled);
            }
        }
        if self.completed.is_some() && self.cancelled.is_some() {
            found.push(Anomaly::CompletedAndCancelled);
        }
        found
    }
}

#[cfg(test)]
mod tests;

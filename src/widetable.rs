//! The wide table: one column group per order status, merged as a join-semilattice.
//!
//! (Being written: merge, the derived status view and anomaly flags.)

use std::collections::BTreeMap;

/// One status column group: which event set it, when the business says it happened, and the
/// amount where the status carries one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stamp {
    pub event_id: String,
    pub at_ms: i64,
    pub amount_minor: Option<i64>,
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

//! The end-to-end check: compare what the store holds with what producers saw acknowledged.
//!
//! Used by `holdfast verify`, the tests and the simulator's checker. An event whose send was
//! attempted but never acknowledged is indeterminate (its ack may have been lost after the
//! broker stored it): it may be applied or not, but at most once.

use crate::event::OrderEvent;
use crate::idempotency::IdempotencyKey;
use crate::widetable::OrderRow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What producers sent.
#[derive(Clone, Debug, Default)]
pub struct GroundTruth {
    /// Every event whose send was attempted (acknowledged or not), repeats allowed.
    pub attempted: Vec<OrderEvent>,
    /// Keys of the events a producer saw acknowledged.
    pub acknowledged: BTreeSet<IdempotencyKey>,
}

impl GroundTruth {
    /// Records one send attempt and whether it was acknowledged.
    pub fn record(&mut self, event: &OrderEvent, acknowledged: bool) {
        if acknowledged {
            self.acknowledged.insert(IdempotencyKey::of(event));
        }
        self.attempted.push(event.clone());
    }
}

/// What the store holds.
#[derive(Clone, Debug, Default)]
pub struct StoreView {
    /// How many times each key was applied (the unique key makes this at most 1).
    pub applications: BTreeMap<IdempotencyKey, u32>,
    pub rows: BTreeMap<String, OrderRow>,
}

/// The verdict, with the offending keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Distinct acknowledged keys.
    pub acknowledged: usize,
    /// Distinct acknowledged keys applied.
    pub applied: usize,
    pub dead_lettered: usize,
    pub pending: usize,
    /// Acknowledged, yet neither applied, dead-lettered nor pending: lost.
    pub missing: Vec<IdempotencyKey>,
    /// Applied more than once: a doubled effect.
    pub applied_twice: Vec<(IdempotencyKey, u32)>,
    /// Applied but never sent by any producer.
    pub unexpected: Vec<IdempotencyKey>,
    /// Orders whose stored row differs from the merge of their applied events.
    pub row_mismatches: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is missing, nothing doubled, nothing invented and every row is right.
    pub fn passed(&self) -> bool {
        self.missing.is_empty()
            && self.applied_twice.is_empty()
            && self.unexpected.is_empty()
            && self.row_mismatches.is_empty()
    }

    /// acknowledged = applied + dead-lettered + pending, counted over acknowledged keys.
    pub fn conservation_holds(&self) -> bool {
        self.acknowledged == self.applied + self.dead_lettered + self.pending
    }
}

/// Compares the store with the ground truth. `dead_lettered` and `pending` are keys that went
/// to the dead-letter topic or still wait in the compensator.
pub fn verify(
    truth: &GroundTruth,
    store: &StoreView,
    dead_lettered: &BTreeSet<IdempotencyKey>,
    pending: &BTreeSet<IdempotencyKey>,
) -> VerifyReport {
    let mut by_key: BTreeMap<IdempotencyKey, &OrderEvent> = BTreeMap::new();
    for event in &truth.attempted {
        by_key.entry(IdempotencyKey::of(event)).or_insert(event);
    }
    let mut report = VerifyReport {
        acknowledged: truth.acknowledged.len(),
        ..VerifyReport::default()
    };
    for key in &truth.acknowledged {
        if store.applications.get(key).is_some_and(|count| *count > 0) {
            report.applied += 1;
        } else if dead_lettered.contains(key) {
            report.dead_lettered += 1;
        } else if pending.contains(key) {
            report.pending += 1;
        } else {
            report.missing.push(key.clone());
        }
    }
    let mut applied_events: Vec<&OrderEvent> = Vec::new();
    for (key, count) in &store.applications {
        if *count > 1 {
            report.applied_twice.push((key.clone(), *count));
        }
        match by_key.get(key) {
            Some(event) if *count > 0 => applied_events.push(event),
            Some(_) => {}
            None => report.unexpected.push(key.clone()),
        }
    }
    let expected: BTreeMap<String, OrderRow> = OrderRow::fold(applied_events)
        .into_iter()
        .map(|row| (row.order_id.clone(), row))
        .collect();
    let orders: BTreeSet<&String> = expected.keys().chain(store.rows.keys()).collect();
    for order_id in orders {
        if expected.get(order_id) != store.rows.get(order_id) {
            report.row_mismatches.push(order_id.clone());
        }
    }
    debug_assert!(report.applied <= report.acknowledged);
    report
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(out, "acknowledged   {}", self.acknowledged)?;
        writeln!(out, "applied        {}", self.applied)?;
        writeln!(out, "dead-lettered  {}", self.dead_lettered)?;
        writeln!(out, "pending        {}", self.pending)?;
        writeln!(
            out,
            "conservation   {}",
            if self.conservation_holds() {
                "holds"
            } else {
                "BROKEN"
            }
        )?;
        let show =
            |keys: &mut dyn Iterator<Item = String>| keys.take(5).collect::<Vec<_>>().join(", ");
        writeln!(
            out,
            "missing        {} {}",
            self.missing.len(),
            show(&mut self.missing.iter().map(key_text))
        )?;
        writeln!(
            out,
            "applied twice  {} {}",
            self.applied_twice.len(),
            show(
                &mut self
                    .applied_twice
                    .iter()
                    .map(|(key, count)| format!("{}x{count}", key_text(key)))
            )
        )?;
        writeln!(
            out,
            "unexpected     {} {}",
            self.unexpected.len(),
            show(&mut self.unexpected.iter().map(key_text))
        )?;
        writeln!(
            out,
            "row mismatches {} {}",
            self.row_mismatches.len(),
            show(&mut self.row_mismatches.iter().cloned())
        )?;
        write!(
            out,
            "verdict        {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

fn key_text(key: &IdempotencyKey) -> String {
    String::from_utf8_lossy(&key.to_bytes()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Workload, WorkloadConfig};

    fn truth_and_store(orders: usize) -> (GroundTruth, StoreView, Vec<OrderEvent>) {
        let workload = Workload::generate(&WorkloadConfig {
            orders,
            ..WorkloadConfig::default()
        })
        .unwrap();
        let events = workload.distinct_events();
        let mut truth = GroundTruth::default();
        for event in &events {
            truth.record(event, true);
        }
        let mut store = StoreView::default();
        for event in &events {
            store.applications.insert(IdempotencyKey::of(event), 1);
        }
        store.rows = OrderRow::fold(&events)
            .into_iter()
            .map(|row| (row.order_id.clone(), row))
            .collect();
        (truth, store, events)
    }

    #[test]
    fn a_faithful_store_passes() {
        let (truth, store, _) = truth_and_store(50);
        let report = verify(&truth, &store, &BTreeSet::new(), &BTreeSet::new());
        assert!(report.passed(), "{report}");
        assert!(report.conservation_holds());
        assert_eq!(report.applied, report.acknowledged);
    }

    #[test]
    fn finds_missing_doubled_unexpected_and_wrong_rows() {
        let (truth, mut store, events) = truth_and_store(50);
        let lost = IdempotencyKey::of(&events[0]);
        store.applications.remove(&lost);
        let doubled = IdempotencyKey::of(&events[1]);
        store.applications.insert(doubled.clone(), 2);
        let mut invented = events[2].clone();
        invented.order_id = "never-sent".to_owned();
        store.applications.insert(IdempotencyKey::of(&invented), 1);
        let report = verify(&truth, &store, &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(report.missing, vec![lost]);
        assert_eq!(report.applied_twice, vec![(doubled, 2)]);
        assert_eq!(report.unexpected, vec![IdempotencyKey::of(&invented)]);
        // The lost event's order row still holds its effect, so it differs from the fold.
        assert!(report.row_mismatches.contains(&events[0].order_id));
        assert!(!report.passed());
        assert!(!report.conservation_holds());
    }

    #[test]
    fn dead_letters_and_pending_count_toward_conservation_and_unacknowledged_may_be_absent() {
        let (mut truth, mut store, events) = truth_and_store(20);
        let parked = IdempotencyKey::of(&events[0]);
        let waiting = IdempotencyKey::of(&events[1]);
        for key in [&parked, &waiting] {
            store.applications.remove(key);
        }
        store.rows = OrderRow::fold(events.iter().filter(|e| {
            let key = IdempotencyKey::of(e);
            key != parked && key != waiting
        }))
        .into_iter()
        .map(|row| (row.order_id.clone(), row))
        .collect();
        // An event sent without an acknowledgement may be missing without failing the check.
        let mut unacked = events[2].clone();
        unacked.event_id = "late".to_owned();
        unacked.order_id = "unacked-order".to_owned();
        truth.record(&unacked, false);
        let report = verify(
            &truth,
            &store,
            &BTreeSet::from([parked]),
            &BTreeSet::from([waiting]),
        );
        assert!(report.passed(), "{report}");
        assert!(report.conservation_holds());
        assert_eq!((report.dead_lettered, report.pending), (1, 1));
    }
}

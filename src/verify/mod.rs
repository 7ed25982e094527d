//! The end-to-end check: compare what the store holds with what producers sent.
//!
//! Used by `holdfast verify`, the tests and the simulator's checker. It judges by the model in
//! [`reference`](mod@reference), written apart from the code it checks: events are identified by their
//! content, never by the production idempotency key, and the expected rows come from the
//! conflict rule restated there, never from the production merge.
//!
//! An event whose send was attempted but never acknowledged is indeterminate (its
//! acknowledgement may have been lost after the broker stored it): it may show in the store or
//! not, but its claim is a legitimate one.

pub mod reference;

pub use reference::Fact;

use crate::event::{EventKind, OrderEvent};
use crate::widetable::OrderRow;
use reference::{
    expected_rows, holds_exactly, read_payload, reflected, row_faults, stored_slots, RowFault,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What producers sent.
#[derive(Clone, Debug, Default)]
pub struct GroundTruth {
    /// Every event whose send was attempted (acknowledged or not), repeats allowed.
    pub attempted: Vec<OrderEvent>,
    /// The events a producer saw acknowledged, by content.
    pub acknowledged: BTreeSet<Fact>,
}

impl GroundTruth {
    /// Records one send attempt and whether it was acknowledged.
    pub fn record(&mut self, event: &OrderEvent, acknowledged: bool) {
        if acknowledged {
            self.acknowledged.insert(Fact::of(event));
        }
        self.attempted.push(event.clone());
    }

    /// The business keys of the acknowledged events (by the checker's own rule): how many
    /// applications a pipeline that loses nothing makes, rivals under one key counting once.
    pub fn acknowledged_keys(&self) -> BTreeSet<String> {
        self.acknowledged
            .iter()
            .map(|fact| Fact::business_key(&fact.order_id, fact.kind, &fact.event_id))
            .collect()
    }
}

/// One application the store recorded (PostgreSQL: a row of `holdfast_keys`; the simulated
/// and in-memory stores: their application log).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Application {
    pub order_id: String,
    pub kind: EventKind,
    pub event_id: String,
}

impl Application {
    /// The application of an event.
    pub fn of(event: &OrderEvent) -> Application {
        Application {
            order_id: event.order_id.clone(),
            kind: event.kind,
            event_id: event.event_id.clone(),
        }
    }
}

/// What the store holds.
#[derive(Clone, Debug, Default)]
pub struct StoreView {
    /// Every application, in any order; more than one per business key is a doubled effect.
    pub ledger: Vec<Application>,
    pub rows: BTreeMap<String, OrderRow>,
}

/// The verdict, with the offending events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Distinct acknowledged events.
    pub acknowledged: usize,
    /// Acknowledged events whose effect the store's rows show.
    pub applied: usize,
    /// Acknowledged events found on the dead-letter topic.
    pub dead_lettered: usize,
    /// Acknowledged events the caller says still wait (the compensator's pending list).
    pub pending: usize,
    /// Acknowledged, yet neither applied, dead-lettered nor pending: lost.
    pub missing: Vec<Fact>,
    /// Business keys the store applied more than once: a doubled effect.
    pub applied_twice: Vec<(String, u32)>,
    /// Applications or row contents that no producer ever sent.
    pub unexpected: Vec<String>,
    /// Row claims whose business key the ledger does not hold: an effect stored without the
    /// unique key that must guard it, in the same transaction, against a second application.
    pub unkeyed: Vec<String>,
    /// Rows whose contents break the conflict rule (a claim kept although a sent one precedes
    /// it).
    pub row_mismatches: Vec<String>,
    /// Valid events (decodable, sent by a producer) found on the dead-letter topic.
    pub dead_lettered_valid: Vec<Fact>,
    /// Events both in the store's rows and on the dead-letter topic.
    pub applied_and_dead_lettered: Vec<Fact>,
}

impl VerifyReport {
    /// True when nothing is missing, doubled, invented, wrongly merged or wrongly
    /// dead-lettered, and the independent counts add up.
    pub fn passed(&self) -> bool {
        self.missing.is_empty()
            && self.applied_twice.is_empty()
            && self.unexpected.is_empty()
            && self.row_mismatches.is_empty()
            && self.unkeyed.is_empty()
            && self.dead_lettered_valid.is_empty()
            && self.applied_and_dead_lettered.is_empty()
            && self.conservation_holds()
    }

    /// acknowledged = applied + dead-lettered + pending, each counted from its own source
    /// (the rows, the dead-letter topic, the caller's pending list): an event counted twice
    /// or not at all breaks it.
    pub fn conservation_holds(&self) -> bool {
        self.acknowledged == self.applied + self.dead_lettered + self.pending
    }
}

/// Compares the store with the ground truth. `dead_letters` are the payloads on the
/// dead-letter topic; `pending` the events that still wait in the compensator.
pub fn verify(
    truth: &GroundTruth,
    store: &StoreView,
    dead_letters: &[Vec<u8>],
    pending: &BTreeSet<Fact>,
) -> VerifyReport {
    let attempted: BTreeSet<Fact> = truth.attempted.iter().map(Fact::of).collect();
    let dead: BTreeSet<Fact> = dead_letters
        .iter()
        .filter_map(|payload| read_payload(payload))
        .filter(|fact| attempted.contains(fact))
        .collect();
    let mut report = VerifyReport {
        acknowledged: truth.acknowledged.len(),
        dead_lettered_valid: dead.iter().cloned().collect(),
        ..VerifyReport::default()
    };
    for fact in &truth.acknowledged {
        let applied = reflected(&store.rows, fact);
        let dead_lettered = dead.contains(fact);
        let pending = pending.contains(fact);
        report.applied += usize::from(applied);
        report.dead_lettered += usize::from(dead_lettered);
        report.pending += usize::from(pending);
        if !(applied || dead_lettered || pending) {
            report.missing.push(fact.clone());
        }
    }
    report.applied_and_dead_lettered = dead
        .iter()
        .filter(|fact| holds_exactly(&store.rows, fact))
        .cloned()
        .collect();
    let applications = check_ledger(&attempted, &store.ledger, &mut report);
    report.unkeyed = unkeyed_claims(&store.rows, &applications);
    let expected = expected_rows(&attempted, &truth.acknowledged);
    for (order_id, row) in &store.rows {
        for fault in row_faults(order_id, row, expected.get(order_id.as_str())) {
            match fault {
                RowFault::Unexpected(text) => report.unexpected.push(text),
                RowFault::Mismatch(text) => report.row_mismatches.push(text),
            }
        }
    }
    report
}

/// The row claims whose business key no application in the ledger has (`applications`:
/// the ledger's count per business key).
fn unkeyed_claims(
    rows: &BTreeMap<String, OrderRow>,
    applications: &BTreeMap<String, u32>,
) -> Vec<String> {
    let mut unkeyed = Vec::new();
    for (order_id, row) in rows {
        for (slot, stamp) in stored_slots(row) {
            let entry = slot.entry.as_deref().unwrap_or_default();
            if !applications.contains_key(&Fact::business_key(order_id, slot.kind, entry)) {
                unkeyed.push(format!(
                    "{order_id}/{}/{entry} holds {} without its key",
                    slot.kind.as_str(),
                    stamp.event_id
                ));
            }
        }
    }
    unkeyed
}

/// Counts applications per business key (at most one each) and finds applications of events
/// no producer sent; returns the count per business key.
fn check_ledger(
    attempted: &BTreeSet<Fact>,
    ledger: &[Application],
    report: &mut VerifyReport,
) -> BTreeMap<String, u32> {
    let sent: BTreeSet<(&str, EventKind, &str)> = attempted
        .iter()
        .map(|fact| (fact.order_id.as_str(), fact.kind, fact.event_id.as_str()))
        .collect();
    let mut per_key: BTreeMap<String, u32> = BTreeMap::new();
    for application in ledger {
        let key = Fact::business_key(
            &application.order_id,
            application.kind,
            &application.event_id,
        );
        *per_key.entry(key).or_default() += 1;
        let identity = (
            application.order_id.as_str(),
            application.kind,
            application.event_id.as_str(),
        );
        if !sent.contains(&identity) {
            report.unexpected.push(format!(
                "applied {}/{}/{}, which no producer sent",
                application.order_id,
                application.kind.as_str(),
                application.event_id
            ));
        }
    }
    report.applied_twice = (per_key.iter())
        .filter(|(_, count)| **count > 1)
        .map(|(key, count)| (key.clone(), *count))
        .collect();
    per_key
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |items: &mut dyn Iterator<Item = String>| {
            let items: Vec<String> = items.collect();
            let shown: Vec<&str> = items.iter().take(5).map(String::as_str).collect();
            format!("{} {}", items.len(), shown.join(", "))
        };
        writeln!(out, "acknowledged   {}", self.acknowledged)?;
        writeln!(out, "applied        {}", self.applied)?;
        writeln!(out, "dead-lettered  {}", self.dead_lettered)?;
        writeln!(out, "pending        {}", self.pending)?;
        let conservation = if self.conservation_holds() {
            "holds"
        } else {
            "BROKEN"
        };
        writeln!(out, "conservation   {conservation}")?;
        writeln!(
            out,
            "missing        {}",
            show(&mut self.missing.iter().map(Fact::text))
        )?;
        let twice = &mut self
            .applied_twice
            .iter()
            .map(|(key, n)| format!("{key} x{n}"));
        writeln!(out, "applied twice  {}", show(twice))?;
        writeln!(
            out,
            "unexpected     {}",
            show(&mut self.unexpected.iter().cloned())
        )?;
        writeln!(
            out,
            "unkeyed        {}",
            show(&mut self.unkeyed.iter().cloned())
        )?;
        writeln!(
            out,
            "row mismatches {}",
            show(&mut self.row_mismatches.iter().cloned())
        )?;
        let valid = &mut self.dead_lettered_valid.iter().map(Fact::text);
        writeln!(out, "dead-lettered valid        {}", show(valid))?;
        let both = &mut self.applied_and_dead_lettered.iter().map(Fact::text);
        writeln!(out, "applied and dead-lettered  {}", show(both))?;
        write!(
            out,
            "verdict        {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

#[cfg(test)]
mod tests;

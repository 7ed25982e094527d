//! The checker's own model of what the store must hold, written apart from the code it checks.
//!
//! Nothing here calls the production key derivation ([`crate::idempotency`]), the merge
//! ([`crate::widetable::OrderRow::apply`] and friends) or the decoder: an event is identified
//! by the producer's own truth (its content), the conflict rule of docs/widetable.md is stated
//! again in a few plain lines, and a payload is read by [`read_payload`], a second, small
//! reading of the wire format. A bug in the production code therefore shows as a disagreement
//! instead of being repeated by the judge. It is simple on purpose.

use crate::event::{EventKind, OrderEvent};
use crate::widetable::{OrderRow, Stamp};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// One produced event, identified by everything the producer put in it (not by its
/// idempotency key, and not by its bytes: a re-encoding is the same fact).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fact {
    pub order_id: String,
    pub kind: EventKind,
    pub event_id: String,
    pub user_id: String,
    pub at_ms: i64,
    pub amount_minor: Option<i64>,
}

impl Fact {
    /// The fact an event states.
    pub fn of(event: &OrderEvent) -> Fact {
        Fact {
            order_id: event.order_id.clone(),
            kind: event.kind,
            event_id: event.event_id.clone(),
            user_id: event.user_id.clone(),
            at_ms: event.event_time_ms,
            amount_minor: event.amount_minor,
        }
    }

    /// Where the fact lives in its order's row: its status column, or its entry of a status
    /// that repeats (bills and refunds keep one entry per event id).
    pub fn slot(&self) -> Slot {
        match self.kind {
            EventKind::Billed | EventKind::Refunded => Slot {
                kind: self.kind,
                entry: Some(self.event_id.clone()),
            },
            kind => Slot { kind, entry: None },
        }
    }

    /// The business key the store's unique key must be equivalent to: one application per
    /// order and status, per event id for the statuses that repeat.
    pub fn business_key(order_id: &str, kind: EventKind, event_id: &str) -> String {
        let entry = match kind {
            EventKind::Billed | EventKind::Refunded => event_id,
            _ => "",
        };
        format!("{order_id}/{}/{entry}", kind.as_str())
    }

    /// Readable form for reports.
    pub fn text(&self) -> String {
        format!(
            "{}/{}/{}@{}{}",
            self.order_id,
            self.kind.as_str(),
            self.event_id,
            self.at_ms,
            self.amount_minor
                .map(|amount| format!("/{amount}"))
                .unwrap_or_default()
        )
    }

    fn rank(&self) -> (i64, &str, Option<i64>) {
        (self.at_ms, self.event_id.as_str(), self.amount_minor)
    }
}

/// A column of a row, or one entry of a repeating column.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    pub kind: EventKind,
    pub entry: Option<String>,
}

impl Slot {
    fn text(&self) -> String {
        match &self.entry {
            Some(entry) => format!("{}[{entry}]", self.kind.as_str()),
            None => self.kind.as_str().to_owned(),
        }
    }
}

/// docs/widetable.md's conflict rule: of two different claims on one slot, the smaller
/// `(at_ms, event_id, amount)` wins, an absent amount first.
fn rank_of(stamp: &Stamp) -> (i64, &str, Option<i64>) {
    (stamp.at_ms, stamp.event_id.as_str(), stamp.amount_minor)
}

/// What a stored row holds in `slot`, read field by field.
pub fn stored<'a>(row: &'a OrderRow, slot: &Slot) -> Option<&'a Stamp> {
    let single = |column: &'a Option<Stamp>| column.as_ref();
    match (slot.kind, &slot.entry) {
        (EventKind::Created, None) => single(&row.created),
        (EventKind::Paid, None) => single(&row.paid),
        (EventKind::Shipped, None) => single(&row.shipped),
        (EventKind::Received, None) => single(&row.received),
        (EventKind::Completed, None) => single(&row.completed),
        (EventKind::Cancelled, None) => single(&row.cancelled),
        (EventKind::Billed, Some(id)) => row.bills.get(id),
        (EventKind::Refunded, Some(id)) => row.refunds.get(id),
        _ => None,
    }
}

/// Every slot a stored row has set, with its stamp.
pub fn stored_slots(row: &OrderRow) -> Vec<(Slot, &Stamp)> {
    let mut slots = Vec::new();
    let singles = [
        (EventKind::Created, &row.created),
        (EventKind::Paid, &row.paid),
        (EventKind::Shipped, &row.shipped),
        (EventKind::Received, &row.received),
        (EventKind::Completed, &row.completed),
        (EventKind::Cancelled, &row.cancelled),
    ];
    for (kind, column) in singles {
        if let Some(stamp) = column {
            slots.push((Slot { kind, entry: None }, stamp));
        }
    }
    for (kind, entries) in [
        (EventKind::Billed, &row.bills),
        (EventKind::Refunded, &row.refunds),
    ] {
        for (id, stamp) in entries {
            let slot = Slot {
                kind,
                entry: Some(id.clone()),
            };
            slots.push((slot, stamp));
        }
    }
    slots
}

/// Whether the row shows the fact's effect: its slot holds the fact itself or a claim that
/// wins over it (which the rule says must stay).
pub fn reflected(rows: &BTreeMap<String, OrderRow>, fact: &Fact) -> bool {
    rows.get(&fact.order_id)
        .is_some_and(|row| reflected_in(row, fact))
}

/// [`reflected`], in the fact's own row.
pub fn reflected_in(row: &OrderRow, fact: &Fact) -> bool {
    stored(row, &fact.slot())
        .is_some_and(|stamp| rank_of(stamp).cmp(&fact.rank()) != Ordering::Greater)
}

/// Whether the row holds exactly this fact in its slot.
pub fn holds_exactly(rows: &BTreeMap<String, OrderRow>, fact: &Fact) -> bool {
    rows.get(&fact.order_id)
        .and_then(|row| stored(row, &fact.slot()))
        .is_some_and(|stamp| rank_of(stamp) == fact.rank())
}

/// What the checker expects of one order's row: per slot, the winning acknowledged claim, and
/// every claim any producer attempted (a send without an acknowledgement may or may not have
/// reached the log, so its claim may legitimately win).
#[derive(Debug, Default)]
pub struct ExpectedRow<'a> {
    pub winners: BTreeMap<Slot, &'a Fact>,
    pub attempted: BTreeMap<Slot, Vec<&'a Fact>>,
    /// The smallest non-empty acknowledged user id, and every attempted one.
    pub user_winner: Option<&'a str>,
    pub users: Vec<&'a str>,
}

/// The reference model: the expected rows of every order any producer attempted.
pub fn expected_rows<'a>(
    attempted: impl IntoIterator<Item = &'a Fact>,
    acknowledged: impl IntoIterator<Item = &'a Fact>,
) -> BTreeMap<&'a str, ExpectedRow<'a>> {
    let mut rows: BTreeMap<&str, ExpectedRow<'a>> = BTreeMap::new();
    for fact in attempted {
        let row = rows.entry(fact.order_id.as_str()).or_default();
        row.attempted.entry(fact.slot()).or_default().push(fact);
        row.users.push(fact.user_id.as_str());
    }
    for fact in acknowledged {
        let row = rows.entry(fact.order_id.as_str()).or_default();
        let winner = row.winners.entry(fact.slot()).or_insert(fact);
        if fact.rank() < winner.rank() {
            *winner = fact;
        }
        if !fact.user_id.is_empty()
            && row
                .user_winner
                .is_none_or(|user| fact.user_id.as_str() < user)
        {
            row.user_winner = Some(fact.user_id.as_str());
        }
    }
    rows
}

/// What is wrong with a stored row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowFault {
    /// The row holds something no producer sent.
    Unexpected(String),
    /// The row keeps a claim although a sent, acknowledged one precedes it.
    Mismatch(String),
}

/// Compares one stored row with its expectation; returns what is wrong, or nothing.
pub fn row_faults(order_id: &str, row: &OrderRow, expected: Option<&ExpectedRow>) -> Vec<RowFault> {
    let Some(expected) = expected else {
        return vec![RowFault::Unexpected(format!(
            "{order_id}: a row for an order no producer sent"
        ))];
    };
    let mut faults = Vec::new();
    if row.order_id != order_id {
        faults.push(RowFault::Unexpected(format!(
            "{order_id}: the row names order {:?}",
            row.order_id
        )));
    }
    if !expected.users.contains(&row.user_id.as_str()) {
        faults.push(RowFault::Unexpected(format!(
            "{order_id}: user {:?} was never sent",
            row.user_id
        )));
    } else if expected
        .user_winner
        .is_some_and(|winner| row.user_id.as_str() > winner)
    {
        faults.push(RowFault::Mismatch(format!(
            "{order_id}: user {:?} although {:?} precedes it",
            row.user_id, expected.user_winner
        )));
    }
    for (slot, stamp) in stored_slots(row) {
        let claims = expected
            .attempted
            .get(&slot)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if !claims.iter().any(|fact| fact.rank() == rank_of(stamp)) {
            faults.push(RowFault::Unexpected(format!(
                "{order_id}: {} holds {stamp:?}, which no producer sent",
                slot.text()
            )));
        }
        if let Some(winner) = expected.winners.get(&slot) {
            if rank_of(stamp) > winner.rank() {
                faults.push(RowFault::Mismatch(format!(
                    "{order_id}: {} holds {} although {} precedes it",
                    slot.text(),
                    stamp.event_id,
                    winner.text()
                )));
            }
        }
    }
    faults
}

/// The checker's second reading of the wire format (docs/pipeline.md): a JSON object with
/// exactly the fields `v` (1), `event_id`, `order_id`, `user_id` (non-empty, at most 128
/// bytes, no NUL: PostgreSQL text cannot hold one), `kind` (a known status), `amount_minor`
/// (present, and not negative, exactly for paid, billed and refunded) and `event_time_ms`,
/// each once, in at most 64 KiB. `None` for anything else: such a record must be
/// dead-lettered, never applied.
pub fn read_payload(payload: &[u8]) -> Option<Fact> {
    if payload.is_empty() || payload.len() > 64 * 1024 {
        return None;
    }
    // A derived struct would also take its fields from a JSON array, in order.
    if payload.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let wire: Shape = serde_json::from_slice(payload).ok()?;
    if wire.v != 1 {
        return None;
    }
    let id = |id: Cow<'_, str>| {
        (!id.is_empty() && id.len() <= 128 && !id.contains('\u{0}')).then(|| id.into_owned())
    };
    let kind = EventKind::ALL
        .into_iter()
        .find(|kind| kind.as_str() == wire.kind)?;
    let carries = matches!(
        kind,
        EventKind::Paid | EventKind::Billed | EventKind::Refunded
    );
    if carries != wire.amount_minor.is_some() || wire.amount_minor.is_some_and(|a| a < 0) {
        return None;
    }
    Some(Fact {
        order_id: id(wire.order_id)?,
        kind,
        event_id: id(wire.event_id)?,
        user_id: id(wire.user_id)?,
        at_ms: wire.event_time_ms,
        amount_minor: wire.amount_minor,
    })
}

/// The object [`read_payload`] accepts, field by field (serde refuses a field it does not
/// name and a field given twice). Text borrows from the payload where it has no escapes.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Shape<'a> {
    v: u64,
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    order_id: Cow<'a, str>,
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    amount_minor: Option<i64>,
    event_time_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(event_id: &str, kind: EventKind, at_ms: i64, amount: Option<i64>) -> Fact {
        Fact {
            order_id: "o".into(),
            kind,
            event_id: event_id.into(),
            user_id: "u".into(),
            at_ms,
            amount_minor: amount,
        }
    }

    fn row_with_paid(event_id: &str, at_ms: i64) -> BTreeMap<String, OrderRow> {
        let mut row = OrderRow {
            order_id: "o".into(),
            user_id: "u".into(),
            ..OrderRow::default()
        };
        row.paid = Some(Stamp {
            event_id: event_id.into(),
            at_ms,
            amount_minor: Some(5),
        });
        BTreeMap::from([("o".to_owned(), row)])
    }

    #[test]
    fn a_fact_is_reflected_by_itself_or_by_a_claim_that_wins_over_it() {
        let rows = row_with_paid("e2", 10);
        assert!(reflected(&rows, &fact("e2", EventKind::Paid, 10, Some(5))));
        assert!(reflected(&rows, &fact("e3", EventKind::Paid, 11, Some(5))));
        assert!(!reflected(&rows, &fact("e1", EventKind::Paid, 9, Some(5))));
        assert!(!reflected(&rows, &fact("e9", EventKind::Created, 1, None)));
        assert!(holds_exactly(
            &rows,
            &fact("e2", EventKind::Paid, 10, Some(5))
        ));
        assert!(!holds_exactly(
            &rows,
            &fact("e3", EventKind::Paid, 11, Some(5))
        ));
    }

    #[test]
    fn a_row_keeping_the_later_of_two_conflicting_claims_is_a_fault() {
        let early = fact("e1", EventKind::Paid, 9, Some(5));
        let late = fact("e2", EventKind::Paid, 10, Some(5));
        let facts = [early.clone(), late.clone()];
        let expected = expected_rows(&facts, &facts);
        let rows = row_with_paid("e2", 10);
        let faults = row_faults("o", &rows["o"], expected.get("o"));
        assert_eq!(faults.len(), 1, "{faults:?}");
        let rows = row_with_paid("e1", 9);
        let expected = expected_rows(&facts, [&late]);
        // The earlier claim was sent but never acknowledged: it may win.
        assert!(row_faults("o", &rows["o"], expected.get("o")).is_empty());
    }

    #[test]
    fn the_second_reading_refuses_what_the_wire_format_refuses() {
        let good = br#"{"v":1,"event_id":"e","order_id":"o","user_id":"u","kind":"paid","amount_minor":100,"event_time_ms":7}"#;
        assert_eq!(
            read_payload(good),
            Some(fact("e", EventKind::Paid, 7, Some(100)))
        );
        let escaped = br#" {"event_time_ms":-5,"v":1,"event_id":"e\u0031","order_id":"o","user_id":"u","kind":"created","amount_minor":null}"#;
        assert_eq!(
            read_payload(escaped),
            Some(fact("e1", EventKind::Created, -5, None))
        );
        for bad in [
            &br#"[1,"e","o","u","paid",100,1700000000000]"#[..],
            br#"{"v":2,"event_id":"e","order_id":"o","user_id":"u","kind":"paid","amount_minor":1,"event_time_ms":0}"#,
            br#"{"v":1,"event_id":"","order_id":"o","user_id":"u","kind":"created","event_time_ms":0}"#,
            br#"{"v":1,"event_id":"e","order_id":"o","user_id":"u","kind":"created","amount_minor":1,"event_time_ms":0}"#,
            br#"{"v":1,"event_id":"e","order_id":"o","user_id":"u","kind":"paid","event_time_ms":0}"#,
            br#"{"v":1,"event_id":"e","order_id":"o","user_id":"u","kind":"paid","amount_minor":-1,"event_time_ms":0}"#,
            br#"{"v":1,"event_id":"e","order_id":"o","user_id":"u","kind":"lost","event_time_ms":0}"#,
            br#"{"v":1,"event_id":"e","order_id":"o","user_id":"u","kind":"created","event_time_ms":0,"x":1}"#,
            br#"{"v":1,"event_id":"e","order_id":"o","user_id":"u","kind":"created","event_time_ms":0,"v":1}"#,
            br#"{"v":1.0,"event_id":"e","order_id":"o","user_id":"u","kind":"created","event_time_ms":0}"#,
            br#"{"v":1,"event_id":"e","order_id":"o","user_id":"u","kind":"created","event_time_ms":null}"#,
            br#"{"v":1,"event_id":"e","order_id":"o","user_id":7,"kind":"created","event_time_ms":0}"#,
            br#"{"v":1,"event_id":"e","order_id":"o\u0000","user_id":"u","kind":"created","event_time_ms":0}"#,
            br#"{"v":1,"event_id":"e","order_id":"o","kind":"created","event_time_ms":0}"#,
            br#" [1,"e","o","u","created",null,0]"#,
            b"",
            b"null",
        ] {
            assert_eq!(read_payload(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn business_keys_separate_repeating_entries_only() {
        assert_eq!(
            Fact::business_key("o", EventKind::Paid, "e1"),
            Fact::business_key("o", EventKind::Paid, "e2")
        );
        assert_ne!(
            Fact::business_key("o", EventKind::Refunded, "e1"),
            Fact::business_key("o", EventKind::Refunded, "e2")
        );
    }
}

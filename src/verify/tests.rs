//! Each check of [`verify`] fails when what it guards is broken: the tests break one thing at a
//! time in a faithful store and name the finding.

use super::*;
use crate::widetable::Stamp;
use crate::workload::{Workload, WorkloadConfig};

/// A ground truth of `orders` orders, every event acknowledged, and the store that applied
/// them all once.
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
    let store = faithful_store(&events);
    (truth, store, events)
}

/// The store a correct pipeline leaves: one application per business key, the rows the
/// production merge gives.
fn faithful_store(events: &[OrderEvent]) -> StoreView {
    let mut keys = BTreeSet::new();
    let ledger = events
        .iter()
        .filter(|event| {
            keys.insert(Fact::business_key(
                &event.order_id,
                event.kind,
                &event.event_id,
            ))
        })
        .map(Application::of)
        .collect();
    StoreView {
        ledger,
        rows: OrderRow::fold(events)
            .into_iter()
            .map(|row| (row.order_id.clone(), row))
            .collect(),
    }
}

fn no_letters() -> Vec<Vec<u8>> {
    Vec::new()
}

#[test]
fn a_faithful_store_passes() {
    let (truth, store, _) = truth_and_store(50);
    let report = verify(&truth, &store, &no_letters(), &BTreeSet::new());
    assert!(report.passed(), "{report}");
    assert_eq!(report.applied, report.acknowledged);
}

#[test]
fn a_lost_event_is_missing_and_breaks_conservation() {
    let (truth, mut store, events) = truth_and_store(20);
    let created = events
        .iter()
        .find(|e| e.kind == EventKind::Created)
        .unwrap();
    store.rows.get_mut(&created.order_id).unwrap().created = None;
    store.ledger.retain(|a| *a != Application::of(created));
    let report = verify(&truth, &store, &no_letters(), &BTreeSet::new());
    assert_eq!(report.missing, vec![Fact::of(created)]);
    assert!(!report.conservation_holds());
    assert!(!report.passed());
}

#[test]
fn a_doubled_application_is_found_in_the_ledger() {
    let (truth, mut store, events) = truth_and_store(20);
    store.ledger.push(Application::of(&events[3]));
    let report = verify(&truth, &store, &no_letters(), &BTreeSet::new());
    assert_eq!(report.applied_twice.len(), 1, "{report}");
    assert!(!report.passed());
}

/// Goal: a row claim whose business key the ledger lacks (a status column, a bill's entry) is
/// found and fails the verdict, though the rows alone account for every event. Method: a
/// faithful store with two keys taken out of its ledger.
#[test]
fn a_row_claim_without_its_key_is_unkeyed() {
    let (truth, mut store, events) = truth_and_store(40);
    let of_kind = |kind| events.iter().find(|e| e.kind == kind).unwrap();
    let (paid, bill) = (of_kind(EventKind::Paid), of_kind(EventKind::Billed));
    for lost in [paid, bill] {
        let key = |a: &Application| Fact::business_key(&a.order_id, a.kind, &a.event_id);
        let lost = key(&Application::of(lost));
        store.ledger.retain(|a| key(a) != lost);
    }
    let report = verify(&truth, &store, &no_letters(), &BTreeSet::new());
    let paid_key = format!("{}/paid/ holds {}", paid.order_id, paid.event_id);
    let bill_key = format!("{0}/billed/{1} holds {1}", bill.order_id, bill.event_id);
    for expected in [paid_key, bill_key] {
        assert!(
            report.unkeyed.iter().any(|u| u.starts_with(&expected)),
            "{expected}: {report}"
        );
    }
    assert_eq!(report.unkeyed.len(), 2, "{report}");
    assert!(report.missing.is_empty() && report.conservation_holds());
    assert!(report.to_string().contains("unkeyed        2 "), "{report}");
    assert!(!report.passed());
}

#[test]
fn an_invented_event_is_unexpected_in_the_ledger_and_in_the_rows() {
    let (truth, mut store, events) = truth_and_store(20);
    let mut invented = events[2].clone();
    invented.order_id = "never-sent".to_owned();
    store.ledger.push(Application::of(&invented));
    store.rows.insert(
        "never-sent".to_owned(),
        OrderRow::fold([&invented]).remove(0),
    );
    let report = verify(&truth, &store, &no_letters(), &BTreeSet::new());
    assert_eq!(report.unexpected.len(), 2, "{report}");
}

#[test]
fn a_row_claim_no_producer_sent_is_unexpected() {
    let (truth, mut store, events) = truth_and_store(20);
    let paid = events.iter().find(|e| e.kind == EventKind::Paid).unwrap();
    let row = store.rows.get_mut(&paid.order_id).unwrap();
    // An earlier time than any sent: the stamp wins the rule, yet nobody sent it.
    row.paid.as_mut().unwrap().at_ms -= 1;
    let report = verify(&truth, &store, &no_letters(), &BTreeSet::new());
    assert_eq!(report.unexpected.len(), 1, "{report}");
    let named = format!("{}: paid holds ", paid.order_id);
    assert!(report.unexpected[0].starts_with(&named), "{report}");
}

/// Goal: a finding names its slot and the facts in the form the docs give,
/// `order/kind/event@time[/amount]`, a repeating slot with its entry. Method: a bill's
/// column given a later rival's claim, and a fact read back.
#[test]
fn findings_name_the_slot_and_the_fact() {
    let (mut truth, mut store, events) = truth_and_store(40);
    let bill = events.iter().find(|e| e.kind == EventKind::Billed).unwrap();
    let amount = bill.amount_minor.unwrap();
    let fact = Fact::of(bill);
    let text = format!(
        "{}/billed/{}@{}/{amount}",
        bill.order_id, bill.event_id, bill.event_time_ms
    );
    assert_eq!(fact.text(), text);
    let created = events
        .iter()
        .find(|e| e.kind == EventKind::Created)
        .unwrap();
    let created_text = format!(
        "{}/created/{}@{}",
        created.order_id, created.event_id, created.event_time_ms
    );
    assert_eq!(Fact::of(created).text(), created_text);

    let mut later = bill.clone();
    later.event_time_ms += 1;
    truth.record(&later, true);
    let row = store.rows.get_mut(&bill.order_id).unwrap();
    row.bills.insert(bill.event_id.clone(), Stamp::of(&later));
    let report = verify(&truth, &store, &no_letters(), &BTreeSet::new());
    let expected = format!(
        "{}: billed[{}] holds {} although {text} precedes it",
        bill.order_id, bill.event_id, bill.event_id
    );
    assert_eq!(report.row_mismatches, vec![expected], "{report}");
}

/// The shape an independent client found: two different events claim one status; the row
/// must keep the smaller `(at_ms, event_id)` whatever arrived first.
#[test]
fn a_row_keeping_the_later_of_two_conflicting_events_is_a_mismatch() {
    let (mut truth, mut store, events) = truth_and_store(20);
    let paid = events.iter().find(|e| e.kind == EventKind::Paid).unwrap();
    let mut earlier = paid.clone();
    earlier.event_id = format!("{}-rival", paid.event_id);
    earlier.event_time_ms -= 1;
    truth.record(&earlier, true);
    let report = verify(&truth, &store, &no_letters(), &BTreeSet::new());
    assert_eq!(report.row_mismatches.len(), 1, "{report}");
    assert_eq!(report.missing, vec![Fact::of(&earlier)]);
    // The same store with the rival's claim in the column passes.
    store.rows.get_mut(&paid.order_id).unwrap().paid = Some(Stamp::of(&earlier));
    let report = verify(&truth, &store, &no_letters(), &BTreeSet::new());
    assert!(report.passed(), "{report}");
}

#[test]
fn a_dead_lettered_valid_event_fails_even_when_accounted_for() {
    let (truth, mut store, events) = truth_and_store(20);
    let shipped = events
        .iter()
        .find(|e| e.kind == EventKind::Shipped)
        .unwrap();
    store.rows.get_mut(&shipped.order_id).unwrap().shipped = None;
    store.ledger.retain(|a| *a != Application::of(shipped));
    let letters = vec![shipped.encode()];
    let report = verify(&truth, &store, &letters, &BTreeSet::new());
    assert!(report.missing.is_empty(), "{report}");
    assert!(report.conservation_holds(), "{report}");
    assert_eq!(report.dead_lettered_valid, vec![Fact::of(shipped)]);
    assert!(!report.passed());
}

#[test]
fn an_event_applied_and_dead_lettered_breaks_conservation() {
    let (truth, store, events) = truth_and_store(20);
    let letters = vec![events[0].encode()];
    let report = verify(&truth, &store, &letters, &BTreeSet::new());
    assert_eq!(report.applied_and_dead_lettered, vec![Fact::of(&events[0])]);
    assert!(!report.conservation_holds(), "{report}");
}

#[test]
fn malformed_dead_letters_and_unacknowledged_sends_are_no_fault() {
    let (mut truth, store, events) = truth_and_store(20);
    let mut unacked = events[2].clone();
    unacked.event_id = "late".to_owned();
    unacked.order_id = "unacked-order".to_owned();
    truth.record(&unacked, false);
    let letters = vec![b"not json".to_vec(), br#"[1,"e","o"]"#.to_vec()];
    let report = verify(&truth, &store, &letters, &BTreeSet::new());
    assert!(report.passed(), "{report}");
}

#[test]
fn pending_events_count_toward_conservation() {
    let (truth, mut store, events) = truth_and_store(20);
    let created = events
        .iter()
        .find(|e| e.kind == EventKind::Created)
        .unwrap();
    store.rows.get_mut(&created.order_id).unwrap().created = None;
    let report = verify(
        &truth,
        &store,
        &no_letters(),
        &BTreeSet::from([Fact::of(created)]),
    );
    assert!(report.passed(), "{report}");
    assert_eq!(report.pending, 1);
}

/// The checker's reading of the wire format agrees with the decoder on everything the
/// workload sends, valid and malformed.
#[test]
fn the_second_reading_agrees_with_the_decoder_on_the_workload() {
    let workload = Workload::generate(&WorkloadConfig {
        orders: 300,
        malformed_ratio: 0.2,
        ..WorkloadConfig::default()
    })
    .unwrap();
    for message in &workload.messages {
        let decoded = OrderEvent::decode(&message.payload)
            .ok()
            .map(|e| Fact::of(&e));
        assert_eq!(
            reference::read_payload(&message.payload),
            decoded,
            "{}",
            String::from_utf8_lossy(&message.payload)
        );
    }
}

/// `acknowledged_keys` is how many applications a pipeline that loses nothing makes (the
/// simulator's expected ledger size): one per business key, rivals under one key once.
#[test]
fn acknowledged_keys_are_the_business_keys_a_faithful_store_applies() {
    let (truth, store, events) = truth_and_store(50);
    let applied: BTreeSet<String> = store
        .ledger
        .iter()
        .map(|application| {
            Fact::business_key(
                &application.order_id,
                application.kind,
                &application.event_id,
            )
        })
        .collect();
    assert_eq!(truth.acknowledged_keys(), applied);
    assert_eq!(applied.len(), store.ledger.len());
    assert!(
        applied.len() < events.len(),
        "the workload has rivals under one key, which count once"
    );
}

/// The report is what `holdfast verify` prints: its counts, each finding with the offending
/// events, and the verdict.
#[test]
fn the_printed_report_names_the_counts_the_findings_and_the_verdict() {
    let (truth, mut store, events) = truth_and_store(20);
    let passing = verify(&truth, &store, &no_letters(), &BTreeSet::new()).to_string();
    assert!(passing.contains(&format!("acknowledged   {}", truth.acknowledged.len())));
    assert!(passing.contains("conservation   holds"));
    assert!(passing.ends_with("verdict        PASS"), "{passing}");
    let created = events
        .iter()
        .find(|e| e.kind == EventKind::Created)
        .unwrap();
    store.rows.get_mut(&created.order_id).unwrap().created = None;
    let failing = verify(&truth, &store, &no_letters(), &BTreeSet::new()).to_string();
    assert!(failing.contains("conservation   BROKEN"), "{failing}");
    let missing = format!(
        "missing        1 {}/created/{}@{}",
        created.order_id, created.event_id, created.event_time_ms
    );
    assert!(failing.contains(&missing), "{failing}");
    assert!(failing.ends_with("verdict        FAIL"), "{failing}");
}

/// Goal: the row keeps the smallest non-empty user id of the acknowledged events (an empty one
/// means "unknown"), whatever the production merge does. Method: a rival of a stored event
/// under a smaller user id, then under an empty one.
#[test]
fn the_row_keeps_the_smallest_user_id_sent() {
    let (mut truth, mut store, events) = truth_and_store(20);
    let created = events
        .iter()
        .find(|e| e.kind == EventKind::Created)
        .unwrap();
    let mut unknown = created.clone();
    unknown.user_id = String::new();
    truth.record(&unknown, true);
    let report = verify(&truth, &store, &no_letters(), &BTreeSet::new());
    assert!(report.passed(), "an unknown user won: {report}");

    // Carried by an event that the checker meets after the created one (its facts are
    // ordered by kind), so that the smaller user must replace the one met first.
    let later = events
        .iter()
        .find(|e| e.order_id == created.order_id && e.kind != EventKind::Created)
        .unwrap();
    let mut smaller = later.clone();
    smaller.user_id = format!("0{}", created.user_id);
    truth.record(&smaller, true);
    let report = verify(&truth, &store, &no_letters(), &BTreeSet::new());
    let expected = format!(
        "{}: user {:?} although {:?} precedes it",
        created.order_id,
        store.rows[&created.order_id].user_id,
        Some(&smaller.user_id)
    );
    assert_eq!(report.row_mismatches, vec![expected], "{report}");
    store.rows.get_mut(&created.order_id).unwrap().user_id = smaller.user_id.clone();
    let report = verify(&truth, &store, &no_letters(), &BTreeSet::new());
    assert!(report.passed(), "{report}");
}

/// Goal: the second reading keeps the wire format's edges on its own: a payload of exactly
/// 64 KiB is read and one byte more is not; an amount of zero is an amount, a negative one
/// is refused; an empty payload is nothing. Method: an encoded event padded with blanks.
#[test]
fn the_second_reading_keeps_the_edges_of_the_format() {
    let (_, _, events) = truth_and_store(20);
    let paid = events.iter().find(|e| e.kind == EventKind::Paid).unwrap();
    let padded = |size_bytes: usize| {
        let mut payload = paid.encode();
        let close = payload.pop();
        assert_eq!(close, Some(b'}'));
        payload.resize(size_bytes - 1, b' ');
        payload.push(b'}');
        payload
    };
    assert_eq!(
        reference::read_payload(&padded(64 * 1024)),
        Some(Fact::of(paid))
    );
    assert_eq!(reference::read_payload(&padded(64 * 1024 + 1)), None);
    assert_eq!(reference::read_payload(b""), None);
    for (amount, read) in [(0, true), (-1, false)] {
        let mut edited = paid.clone();
        edited.amount_minor = Some(amount);
        let fact = reference::read_payload(&edited.encode());
        assert_eq!(fact.is_some(), read, "amount {amount}");
    }
}

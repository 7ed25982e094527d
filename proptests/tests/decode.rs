//! Property tests of the event decoder: it never panics on arbitrary bytes or on mutations of
//! valid events, everything it accepts is valid, encode/decode round-trips, and the checker's own
//! reading of the wire format accepts exactly what the decoder accepts.

use holdfast::event::{EventKind, OrderEvent, ID_BYTES_MAX};
use holdfast::verify::reference::{read_payload, Fact};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

fn valid_event() -> impl Strategy<Value = OrderEvent> {
    (
        "[a-zA-Z0-9:_-]{1,40}",
        "\\PC{1,30}",
        "[a-z0-9]{1,20}",
        proptest::sample::select(&EventKind::ALL[..]),
        0..=i64::MAX,
        any::<i64>(),
    )
        .prop_map(
            |(event_id, order_id, user_id, kind, amount_minor, event_time_ms)| OrderEvent {
                event_id,
                order_id,
                user_id,
                kind,
                amount_minor: kind.carries_amount().then_some(amount_minor),
                event_time_ms,
                payload: bytes::Bytes::new(),
            },
        )
}

/// One edit of an encoded event.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip(at, byte)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        any::<Index>().prop_map(Mutation::Remove),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match mutation {
        Mutation::Flip(at, byte) => {
            let at = at.index(bytes.len());
            bytes[at] ^= byte;
        }
        Mutation::Insert(at, byte) => bytes.insert(at.index(bytes.len() + 1), *byte),
        Mutation::Remove(at) => {
            bytes.remove(at.index(bytes.len()));
        }
        Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len())),
    }
}

/// Whatever the decoder accepts satisfies the domain's rules.
fn assert_valid(event: &OrderEvent) -> Result<(), TestCaseError> {
    for id in [&event.event_id, &event.order_id, &event.user_id] {
        prop_assert!(!id.is_empty());
        prop_assert!(id.len() <= ID_BYTES_MAX);
    }
    prop_assert_eq!(event.amount_minor.is_some(), event.kind.carries_amount());
    prop_assert!(event.amount_minor.is_none_or(|amount| amount >= 0));
    Ok(())
}

proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(2048))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..600)) {
        if let Ok(event) = OrderEvent::decode(&bytes) {
            assert_valid(&event)?;
        }
    }

    #[test]
    fn mutated_valid_events_never_panic(event in valid_event(), mutations in vec(mutation(), 1..6)) {
        let mut bytes = event.encode();
        for each in &mutations {
            mutate(&mut bytes, each);
        }
        if let Ok(decoded) = OrderEvent::decode(&bytes) {
            assert_valid(&decoded)?;
            prop_assert_eq!(decoded.payload, bytes);
        }
    }

    /// Only the object form is an event: serde's sequence form of the same fields (which
    /// serde reads into a struct unless told not to), and other JSON values, are refused.
    #[test]
    fn only_a_json_object_is_an_event(event in valid_event()) {
        let sequence = serde_json::json!([
            1,
            event.event_id,
            event.order_id,
            event.user_id,
            event.kind.as_str(),
            event.amount_minor,
            event.event_time_ms
        ]);
        for other in [sequence, serde_json::Value::Null, serde_json::json!("text")] {
            let bytes = other.to_string().into_bytes();
            prop_assert!(OrderEvent::decode(&bytes).is_err(), "{}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn encode_decode_round_trips(event in valid_event()) {
        let bytes = event.encode();
        let decoded = OrderEvent::decode(&bytes).map_err(|error| TestCaseError::fail(error.to_string()))?;
        prop_assert_eq!(&decoded.payload, &bytes);
        prop_assert_eq!(OrderEvent { payload: bytes::Bytes::new(), ..decoded }, event);
    }
}

/// One edit of an encoded event at the level of its JSON object.
#[derive(Clone, Debug)]
enum FieldEdit {
    Drop(Index),
    Repeat(Index),
    Replace(Index, &'static str),
    Unknown,
    Swap(Index, Index),
}

/// Values a field may be given: the wrong type, the edges of each rule, escapes.
const VALUES: [&str; 17] = [
    "null",
    "0",
    "-1",
    "1",
    "1.0",
    "9223372036854775808",
    "true",
    "[]",
    "{}",
    "\"\"",
    "\"x\"",
    "\"\\u0000\"",
    "\"\\u0031\"",
    "\"paid\"",
    "\"created\"",
    "\"billed\"",
    "\"ccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\"",
];

fn field_edit() -> impl Strategy<Value = FieldEdit> {
    prop_oneof![
        any::<Index>().prop_map(FieldEdit::Drop),
        any::<Index>().prop_map(FieldEdit::Repeat),
        (any::<Index>(), proptest::sample::select(&VALUES[..]))
            .prop_map(|(at, value)| FieldEdit::Replace(at, value)),
        Just(FieldEdit::Unknown),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| FieldEdit::Swap(a, b)),
    ]
}

/// The event's fields as (name, JSON text) pairs, sorted by name (serde_json's map order).
fn fields_of(event: &OrderEvent) -> Vec<(String, String)> {
    let encoded: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&event.encode()).expect("an encoded event is a JSON object");
    encoded
        .into_iter()
        .map(|(name, value)| (name, value.to_string()))
        .collect()
}

fn edit(fields: &mut Vec<(String, String)>, edit: &FieldEdit) {
    if fields.is_empty() {
        return;
    }
    match edit {
        FieldEdit::Drop(at) => {
            fields.remove(at.index(fields.len()));
        }
        FieldEdit::Repeat(at) => {
            let field = fields[at.index(fields.len())].clone();
            fields.push(field);
        }
        FieldEdit::Replace(at, value) => {
            let at = at.index(fields.len());
            fields[at].1 = (*value).to_owned();
        }
        FieldEdit::Unknown => fields.push(("note".to_owned(), "1".to_owned())),
        FieldEdit::Swap(a, b) => {
            let (a, b) = (a.index(fields.len()), b.index(fields.len()));
            fields.swap(a, b);
        }
    }
}

fn object_of(fields: &[(String, String)]) -> Vec<u8> {
    let members: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("{:?}:{value}", name))
        .collect();
    format!("{{{}}}", members.join(",")).into_bytes()
}

proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(4096))]

    /// The checker's second reading of the wire format (`verify::reference::read_payload`,
    /// written apart from the decoder) accepts exactly what the decoder accepts, and reads
    /// the same fact: where they disagreed, the checker would excuse a decoder bug or report
    /// a correct run as broken.
    #[test]
    fn the_checker_reads_what_the_decoder_reads(
        event in valid_event(),
        edits in vec(field_edit(), 0..4),
        mutations in vec(mutation(), 0..2),
    ) {
        let mut fields = fields_of(&event);
        for each in &edits {
            edit(&mut fields, each);
        }
        let mut bytes = object_of(&fields);
        for each in &mutations {
            mutate(&mut bytes, each);
        }
        let decoded = OrderEvent::decode(&bytes).ok().map(|event| Fact::of(&event));
        prop_assert_eq!(decoded, read_payload(&bytes), "{}", String::from_utf8_lossy(&bytes));
    }
}

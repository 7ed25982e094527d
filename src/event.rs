//! Order events and their versioned JSON wire format.
//!
//! Decoding is the one place where untrusted bytes enter holdfast, so it returns a typed
//! [`DecodeError`] for every way input can be bad and never panics.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The wire format version this build writes and the only one it reads.
pub const WIRE_VERSION: u32 = 1;

/// Largest encoded event accepted, in bytes. Kafka's default `message.max.bytes` is about 1 MiB;
/// an order event is a few hundred bytes, so anything near the limit is a producer bug.
pub const PAYLOAD_BYTES_MAX: usize = 64 * 1024;

/// Longest identifier (event, order or user id) accepted, in bytes.
pub const ID_BYTES_MAX: usize = 128;

/// What happened to an order. The declaration order is the lifecycle rank used by
/// [`crate::widetable`] to derive an order's state; it never depends on arrival order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Paid,
    Billed,
    Shipped,
    Received,
    Completed,
    Refunded,
    Cancelled,
}

impl EventKind {
    /// Every kind, in rank order.
    pub const ALL: [EventKind; 8] = [
        EventKind::Created,
        EventKind::Paid,
        EventKind::Billed,
        EventKind::Shipped,
        EventKind::Received,
        EventKind::Completed,
        EventKind::Refunded,
        EventKind::Cancelled,
    ];

    /// The stable lowercase name used on the wire, in idempotency keys and in SQL columns.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Paid => "paid",
            EventKind::Billed => "billed",
            EventKind::Shipped => "shipped",
            EventKind::Received => "received",
            EventKind::Completed => "completed",
            EventKind::Refunded => "refunded",
            EventKind::Cancelled => "cancelled",
        }
    }

    /// Parses the wire name; `None` for anything else.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// Kinds that legitimately happen more than once per order (partial refunds, split bills).
    /// Their idempotency key carries the event id, or the seed's `order id + status` rule
    /// would drop real money.
    pub fn repeats(self) -> bool {
        matches!(self, EventKind::Billed | EventKind::Refunded)
    }

    /// Kinds that carry an amount in minor units.
    pub fn carries_amount(self) -> bool {
        matches!(
            self,
            EventKind::Paid | EventKind::Billed | EventKind::Refunded
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One fact about one order, as decoded from a Kafka record.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OrderEvent {
    /// Unique per produced event (not per delivery: a producer retry keeps it).
    pub event_id: String,
    pub order_id: String,
    pub user_id: String,
    pub kind: EventKind,
    /// Amount in minor currency units, for kinds that carry one; never negative.
    pub amount_minor: Option<i64>,
    /// When the business says it happened, in milliseconds since the Unix epoch.
    pub event_time_ms: i64,
    /// The bytes exactly as received, kept for dead letters and re-publishing (shared with
    /// the record it came from, not copied).
    pub payload: Bytes,
}

/// The JSON shape on the wire. Kept apart from [`OrderEvent`] so that the domain type never
/// exists in a state the decoder would have refused.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEvent {
    v: u32,
    event_id: String,
    order_id: String,
    user_id: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    amount_minor: Option<i64>,
    event_time_ms: i64,
}

/// Every way an encoded event can be refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is empty")]
    Empty,
    #[error("payload is {size_bytes} bytes, over the limit of {limit_bytes}")]
    Oversize {
        size_bytes: usize,
        limit_bytes: usize,
    },
    #[error("payload is not valid JSON for an order event: {detail}")]
    NotJson { detail: String },
    #[error("payload is not a JSON object (an event is an object with named fields)")]
    NotAnObject,
    #[error("field `{field}` is missing")]
    MissingField { field: String },
    #[error("wire version {found} is not supported (this build reads version {WIRE_VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("unknown event kind `{kind}`")]
    UnknownKind { kind: String },
    #[error("field `{field}` is empty")]
    EmptyId { field: &'static str },
    #[error("field `{field}` is {size_bytes} bytes, over the limit of {ID_BYTES_MAX}")]
    IdTooLong {
        field: &'static str,
        size_bytes: usize,
    },
    #[error("field `{field}` contains a NUL character, which PostgreSQL text cannot hold")]
    NulInId { field: &'static str },
    #[error("amount {amount_minor} is negative")]
    NegativeAmount { amount_minor: i64 },
    #[error("event kind `{kind}` requires an amount")]
    MissingAmount { kind: EventKind },
    #[error("event kind `{kind}` does not carry an amount")]
    UnexpectedAmount { kind: EventKind },
}

impl OrderEvent {
    /// Encodes the event in the current wire format (the payload field is not part of it).
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireEvent {
            v: WIRE_VERSION,
            event_id: self.event_id.clone(),
            order_id: self.order_id.clone(),
            user_id: self.user_id.clone(),
            kind: self.kind.as_str().to_owned(),
            amount_minor: self.amount_minor,
            event_time_ms: self.event_time_ms,
        };
        // Serializing a struct of strings and integers into memory cannot fail.
        serde_json::to_vec(&wire).expect("an in-memory JSON encode of plain fields cannot fail")
    }

    /// Decodes and validates one encoded event; a copy of `payload` is kept as the event's
    /// raw bytes.
    pub fn decode(payload: &[u8]) -> Result<OrderEvent, DecodeError> {
        OrderEvent::decode_shared(&Bytes::copy_from_slice(payload))
    }

    /// [`OrderEvent::decode`] of a record's payload, which the event then shares.
    pub fn decode_shared(payload: &Bytes) -> Result<OrderEvent, DecodeError> {
        if payload.is_empty() {
            return Err(DecodeError::Empty);
        }
        if payload.len() > PAYLOAD_BYTES_MAX {
            return Err(DecodeError::Oversize {
                size_bytes: payload.len(),
                limit_bytes: PAYLOAD_BYTES_MAX,
            });
        }
        // serde would also read a struct from its sequence form (`[1, "e", ...]`): only the
        // object form with named fields is an event.
        let first = payload
            .iter()
            .find(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'));
        if first != Some(&b'{') {
            return Err(DecodeError::NotAnObject);
        }
        let wire: WireEvent = serde_json::from_slice(payload).map_err(classify_json_error)?;
        if wire.v != WIRE_VERSION {
            return Err(DecodeError::UnsupportedVersion { found: wire.v });
        }
        check_id("event_id", &wire.event_id)?;
        check_id("order_id", &wire.order_id)?;
        check_id("user_id", &wire.user_id)?;
        let kind = EventKind::parse(&wire.kind).ok_or(DecodeError::UnknownKind {
            kind: wire.kind.clone(),
        })?;
        match (kind.carries_amount(), wire.amount_minor) {
            (true, None) => return Err(DecodeError::MissingAmount { kind }),
            (false, Some(_)) => return Err(DecodeError::UnexpectedAmount { kind }),
            (_, Some(amount_minor)) if amount_minor < 0 => {
                return Err(DecodeError::NegativeAmount { amount_minor })
            }
            _ => {}
        }
        Ok(OrderEvent {
            event_id: wire.event_id,
            order_id: wire.order_id,
            user_id: wire.user_id,
            kind,
            amount_minor: wire.amount_minor,
            event_time_ms: wire.event_time_ms,
            payload: payload.clone(),
        })
    }
}

fn check_id(field: &'static str, value: &str) -> Result<(), DecodeError> {
    if value.is_empty() {
        return Err(DecodeError::EmptyId { field });
    }
    if value.len() > ID_BYTES_MAX {
        return Err(DecodeError::IdTooLong {
            field,
            size_bytes: value.len(),
        });
    }
    // The store would refuse it on every attempt: refused here, it is dead-lettered at once
    // as malformed instead of after `record_attempts_max` failed transactions.
    if value.contains('\0') {
        return Err(DecodeError::NulInId { field });
    }
    Ok(())
}

fn classify_json_error(error: serde_json::Error) -> DecodeError {
    let detail = error.to_string();
    // serde reports a missing field as "missing field `name` at line L column C".
    if let Some(rest) = detail.strip_prefix("missing field `") {
        if let Some(end) = rest.find('`') {
            return DecodeError::MissingField {
                field: rest[..end].to_owned(),
            };
        }
    }
    DecodeError::NotJson { detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paid() -> OrderEvent {
        OrderEvent {
            event_id: "e-1".into(),
            order_id: "o-1".into(),
            user_id: "u-1".into(),
            kind: EventKind::Paid,
            amount_minor: Some(1250),
            event_time_ms: 1_700_000_000_000,
            payload: Bytes::new(),
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let event = paid();
        let bytes = event.encode();
        let decoded = OrderEvent::decode(&bytes).expect("a freshly encoded event decodes");
        assert_eq!(decoded.payload, bytes);
        assert_eq!(
            OrderEvent {
                payload: Bytes::new(),
                ..decoded
            },
            event
        );
    }

    #[test]
    fn every_bad_input_has_its_own_error() {
        type Case = (&'static [u8], fn(&DecodeError) -> bool);
        let cases: Vec<Case> = vec![
            (b"", |e| matches!(e, DecodeError::Empty)),
            (b"{not json", |e| matches!(e, DecodeError::NotJson { .. })),
            (b"not json", |e| matches!(e, DecodeError::NotAnObject)),
            (
                br#"[1,"e","o","u","paid",100,1700000000000]"#,
                |e| matches!(e, DecodeError::NotAnObject),
            ),
            (b"  \n[]", |e| matches!(e, DecodeError::NotAnObject)),
            (b"null", |e| matches!(e, DecodeError::NotAnObject)),
            (br#"{"v":1}"#, |e| matches!(e, DecodeError::MissingField { .. })),
            (
                br#"{"v":2,"event_id":"e","order_id":"o","user_id":"u","kind":"paid","amount_minor":1,"event_time_ms":0}"#,
                |e| matches!(e, DecodeError::UnsupportedVersion { found: 2 }),
            ),
            (
                br#"{"v":1,"event_id":"e","order_id":"o","user_id":"u","kind":"teleported","event_time_ms":0}"#,
                |e| matches!(e, DecodeError::UnknownKind { .. }),
            ),
            (
                br#"{"v":1,"event_id":"","order_id":"o","user_id":"u","kind":"created","event_time_ms":0}"#,
                |e| matches!(e, DecodeError::EmptyId { field: "event_id" }),
            ),
            (
                br#"{"v":1,"event_id":"e","order_id":"o\u0000","user_id":"u","kind":"created","event_time_ms":0}"#,
                |e| matches!(e, DecodeError::NulInId { field: "order_id" }),
            ),
            (
                br#"{"v":1,"event_id":"e","order_id":"o","user_id":"u","kind":"paid","amount_minor":-5,"event_time_ms":0}"#,
                |e| matches!(e, DecodeError::NegativeAmount { amount_minor: -5 }),
            ),
            (
                br#"{"v":1,"event_id":"e","order_id":"o","user_id":"u","kind":"paid","event_time_ms":0}"#,
                |e| matches!(e, DecodeError::MissingAmount { .. }),
            ),
            (
                br#"{"v":1,"event_id":"e","order_id":"o","user_id":"u","kind":"created","amount_minor":3,"event_time_ms":0}"#,
                |e| matches!(e, DecodeError::UnexpectedAmount { .. }),
            ),
        ];
        for (input, is_expected) in cases {
            let error = OrderEvent::decode(input).expect_err("bad input must be refused");
            assert!(
                is_expected(&error),
                "{:?} gave {error:?}",
                String::from_utf8_lossy(input)
            );
        }
        let oversize = vec![b' '; PAYLOAD_BYTES_MAX + 1];
        assert!(matches!(
            OrderEvent::decode(&oversize),
            Err(DecodeError::Oversize { .. })
        ));
    }

    /// A refusal names the kind by its wire name (the reason a dead letter carries).
    #[test]
    fn refusals_name_the_kind_by_its_wire_name() {
        let error = OrderEvent::decode(
            br#"{"v":1,"event_id":"e","order_id":"o","user_id":"u","kind":"refunded","event_time_ms":0}"#,
        )
        .expect_err("a refund without an amount is refused");
        assert_eq!(
            error.to_string(),
            "event kind `refunded` requires an amount"
        );
    }

    /// An amount may be zero (a free order is paid for with nothing); only below zero is it
    /// refused.
    #[test]
    fn a_zero_amount_is_an_amount() {
        let event = OrderEvent {
            amount_minor: Some(0),
            ..paid()
        };
        let decoded = OrderEvent::decode(&event.encode()).expect("a zero amount decodes");
        assert_eq!(decoded.amount_minor, Some(0));
    }

    /// The limits are the documented ones (64 KiB a payload, 128 bytes an id), spelled out
    /// here rather than taken from the constants, so that a wrong constant shows.
    #[test]
    fn limits_are_64_kib_a_payload_and_128_bytes_an_id() {
        let padded = |length: usize| {
            let mut bytes = paid().encode().to_vec();
            bytes.resize(length, b' ');
            bytes
        };
        assert!(OrderEvent::decode(&padded(65_536)).is_ok());
        assert!(matches!(
            OrderEvent::decode(&padded(65_537)),
            Err(DecodeError::Oversize {
                size_bytes: 65_537,
                limit_bytes: 65_536
            })
        ));
        let with_id = |id: &str| OrderEvent {
            event_id: id.to_owned(),
            ..paid()
        };
        let longest = "e".repeat(128);
        assert!(OrderEvent::decode(&with_id(&longest).encode()).is_ok());
        let too_long = "e".repeat(129);
        assert!(matches!(
            OrderEvent::decode(&with_id(&too_long).encode()),
            Err(DecodeError::IdTooLong { .. })
        ));
    }
}

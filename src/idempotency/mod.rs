//! The idempotency protocol: key = order id + status (plus the event id for statuses that
//! legitimately repeat); the cache pre-filters, the store's unique key is the guarantee.

pub mod memory;
pub mod protocol;

use crate::event::{EventKind, OrderEvent};

/// The idempotency key of one event.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey {
    pub order_id: String,
    pub kind: EventKind,
    /// The event id, only for kinds that repeat ([`EventKind::repeats`]).
    pub discriminator: Option<String>,
}

impl IdempotencyKey {
    /// The key of an event: the seed's `order id + status`, plus the event id where the status
    /// may legitimately happen more than once.
    pub fn of(event: &OrderEvent) -> IdempotencyKey {
        IdempotencyKey {
            order_id: event.order_id.clone(),
            kind: event.kind,
            discriminator: event.kind.repeats().then(|| event.event_id.clone()),
        }
    }

    /// A stable, unambiguous byte form (the prefix of the Redis key, and in logs):
    /// `hf1:<status>:<order id length>:<order id>[:<event id>]`. The length prefix keeps an
    /// order id containing `:` from colliding with another key.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.byte_len_max());
        self.write_bytes(&mut bytes);
        bytes
    }

    /// Appends [`IdempotencyKey::to_bytes`] to `out`. Written piece by piece, not through
    /// `format!`: every event of every batch needs its key twice (cache check and write).
    fn write_bytes(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"hf1:");
        out.extend_from_slice(self.kind.as_str().as_bytes());
        push_counted(out, &self.order_id);
        if let Some(discriminator) = &self.discriminator {
            out.push(b':');
            out.extend_from_slice(discriminator.as_bytes());
        }
    }

    /// An upper bound of the byte form's length (the numbers at their widest).
    fn byte_len_max(&self) -> usize {
        let discriminator = self.discriminator.as_ref().map_or(0, |d| d.len() + 1);
        4 + self.kind.as_str().len() + 22 + self.order_id.len() + discriminator
    }
}

/// `:<length>:<text>`: the length prefix keeps a text containing `:` from colliding.
fn push_counted(out: &mut Vec<u8>, text: &str) {
    out.push(b':');
    out.extend_from_slice(itoa::Buffer::new().format(text.len()).as_bytes());
    out.push(b':');
    out.extend_from_slice(text.as_bytes());
}

/// What the dedup cache remembers: one event's content under its idempotency key. The cache
/// may skip only a redelivery of content the store already has; a different event under the
/// same key (another event id, time, amount or user) must reach the store, whose transaction
/// resolves it by the conflict rule of [`crate::widetable`] whatever the arrival order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryKey {
    pub key: IdempotencyKey,
    pub event_id: String,
    pub user_id: String,
    pub at_ms: i64,
    pub amount_minor: Option<i64>,
}

impl DeliveryKey {
    /// The delivery key of an event.
    pub fn of(event: &OrderEvent) -> DeliveryKey {
        DeliveryKey {
            key: IdempotencyKey::of(event),
            event_id: event.event_id.clone(),
            user_id: event.user_id.clone(),
            at_ms: event.event_time_ms,
            amount_minor: event.amount_minor,
        }
    }

    /// The Redis key: [`IdempotencyKey::to_bytes`], then `:<event id length>:<event id>:<user
    /// id length>:<user id>:<at_ms>:<amount or ->`. The length prefixes keep ids containing
    /// `:` from colliding.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Four numbers of at most 20 digits and their six separators.
        let mut bytes = Vec::with_capacity(
            self.key.byte_len_max() + self.event_id.len() + self.user_id.len() + 86,
        );
        self.key.write_bytes(&mut bytes);
        push_counted(&mut bytes, &self.event_id);
        push_counted(&mut bytes, &self.user_id);
        let mut number = itoa::Buffer::new();
        bytes.push(b':');
        bytes.extend_from_slice(number.format(self.at_ms).as_bytes());
        bytes.push(b':');
        match self.amount_minor {
            Some(amount) => bytes.extend_from_slice(number.format(amount).as_bytes()),
            None => bytes.push(b'-'),
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn event(event_id: &str, order_id: &str, kind: EventKind, amount: Option<i64>) -> OrderEvent {
        OrderEvent {
            event_id: event_id.into(),
            order_id: order_id.into(),
            user_id: "u:1".into(),
            kind,
            amount_minor: amount,
            event_time_ms: 1_700,
            payload: bytes::Bytes::new(),
        }
    }

    /// Goal: the byte forms are exactly the documented ones (they are the Redis keys, shared
    /// with every running consumer). Method: a single-valued and a repeating status, spelled
    /// out.
    #[test]
    fn byte_forms_are_the_documented_ones() {
        let paid = event("e-1", "o-123", EventKind::Paid, Some(500));
        let refund = event("evt-9", "o-123", EventKind::Refunded, Some(20));
        let created = event("e:0", "o:1", EventKind::Created, None);
        let mut early = event("e-2", "o-7", EventKind::Refunded, Some(-3));
        early.event_time_ms = -1_700;
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
        assert_eq!(
            text(IdempotencyKey::of(&paid).to_bytes()),
            "hf1:paid:5:o-123"
        );
        assert_eq!(
            text(IdempotencyKey::of(&refund).to_bytes()),
            "hf1:refunded:5:o-123:evt-9"
        );
        assert_eq!(
            text(DeliveryKey::of(&paid).to_bytes()),
            "hf1:paid:5:o-123:3:e-1:3:u:1:1700:500"
        );
        assert_eq!(
            text(DeliveryKey::of(&created).to_bytes()),
            "hf1:created:3:o:1:3:e:0:3:u:1:1700:-"
        );
        assert_eq!(
            text(DeliveryKey::of(&early).to_bytes()),
            "hf1:refunded:3:o-7:e-2:3:e-2:3:u:1:-1700:-3"
        );
    }

    /// Goal: a rival (another id, time, amount or user under the same key) has another
    /// delivery key, a verbatim redelivery the same one. Method: vary one field at a time.
    #[test]
    fn a_rival_is_another_delivery_and_a_redelivery_is_not() {
        let paid = event("e-1", "o-1", EventKind::Paid, Some(500));
        let same = DeliveryKey::of(&paid.clone());
        assert_eq!(DeliveryKey::of(&paid), same);
        let mut rivals = vec![paid.clone(), paid.clone(), paid.clone(), paid.clone()];
        rivals[0].event_id = "e-2".into();
        rivals[1].event_time_ms += 1;
        rivals[2].amount_minor = Some(501);
        rivals[3].user_id = "u:2".into();
        for rival in &rivals {
            assert_eq!(IdempotencyKey::of(rival), IdempotencyKey::of(&paid));
            assert_ne!(DeliveryKey::of(rival), same);
            assert_ne!(DeliveryKey::of(rival).to_bytes(), same.to_bytes());
        }
    }
}

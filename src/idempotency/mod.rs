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
        let mut text = format!(
            "hf1:{}:{}:{}",
            self.kind.as_str(),
            self.order_id.len(),
            self.order_id
        );
        if let Some(discriminator) = &self.discriminator {
            text.push(':');
            text.push_str(discriminator);
        }
        text.into_bytes()
    }
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
        let mut bytes = self.key.to_bytes();
        let amount = self
            .amount_minor
            .map_or_else(|| "-".to_owned(), |amount| amount.to_string());
        bytes.extend_from_slice(
            format!(
                ":{}:{}:{}:{}:{}:{amount}",
                self.event_id.len(),
                self.event_id,
                self.user_id.len(),
                self.user_id,
                self.at_ms
            )
            .as_bytes(),
        );
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

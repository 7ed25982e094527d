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

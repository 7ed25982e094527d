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

    /// A stable, unambiguous byte form (used as the Redis key and in logs):
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

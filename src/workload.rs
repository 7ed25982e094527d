//! The workload generator: realistic order lifecycles, deterministic from a seed.
//!
//! Lifecycles include bills, partial refunds and cancellations; the stream interleaves orders,
//! delivers some events of an order out of order, repeats some events verbatim (what a
//! producer retry or a compensator re-send looks like to the consumer), sends rival events
//! (a second event claiming a status an order already has, with another id and time, or a
//! bill or refund id reused with another amount: what producers really send) and mixes in
//! malformed messages. Every message is keyed by its order id. Used by `holdfast produce`, the
//! simulator and the tests, so that all of them talk about the same kind of traffic.

use crate::event::{EventKind, OrderEvent};
use crate::rng::SplitMix;
use crate::verify::GroundTruth;
use bytes::Bytes;
use std::collections::VecDeque;

/// Shape of a generated workload. Ratios are probabilities in `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadConfig {
    pub seed: u64,
    pub orders: usize,
    pub users: usize,
    /// Share of events sent a second time, later in the stream.
    pub duplicate_ratio: f64,
    /// Share of orders with two of their events swapped.
    pub reorder_ratio: f64,
    /// Share of malformed messages among all messages.
    pub malformed_ratio: f64,
    pub cancel_ratio: f64,
    pub refund_ratio: f64,
    /// Share of guest orders bound to an account after creation: their later events carry
    /// the account's user id, so the row's user id depends on the merge rule, not arrival.
    pub rebind_ratio: f64,
    /// Share of orders with a rival event: another event claiming one of its statuses (a new
    /// event id and another time), or for a bill or refund the same event id with another
    /// amount and time. The row must keep the claim the conflict rule picks, whatever the
    /// arrival order.
    pub conflict_ratio: f64,
    /// Event time of the first event, in milliseconds since the Unix epoch.
    pub start_ms: i64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            seed: 1,
            orders: 1000,
            users: 100,
            duplicate_ratio: 0.05,
            reorder_ratio: 0.2,
            malformed_ratio: 0.01,
            cancel_ratio: 0.1,
            refund_ratio: 0.15,
            rebind_ratio: 0.05,
            conflict_ratio: 0.05,
            start_ms: 1_767_225_600_000,
        }
    }
}

/// A workload configuration the generator refuses.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum WorkloadError {
    #[error("`{field}` must be within [0, 1], got {value}")]
    RatioOutOfRange { field: &'static str, value: f64 },
    #[error("`{field}` must be at least 1")]
    Zero { field: &'static str },
}

/// One message to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The order id's bytes: every producer keys by order id.
    pub key: Vec<u8>,
    pub payload: Bytes,
    /// The event the payload encodes; `None` for a deliberately malformed message.
    pub event: Option<OrderEvent>,
}

/// A generated stream of messages.
#[derive(Clone, Debug)]
pub struct Workload {
    pub messages: Vec<Message>,
}

impl WorkloadConfig {
    pub fn validate(&self) -> Result<(), WorkloadError> {
        for (field, value) in [
            ("duplicate_ratio", self.duplicate_ratio),
            ("reorder_ratio", self.reorder_ratio),
            ("malformed_ratio", self.malformed_ratio),
            ("cancel_ratio", self.cancel_ratio),
            ("refund_ratio", self.refund_ratio),
            ("rebind_ratio", self.rebind_ratio),
            ("conflict_ratio", self.conflict_ratio),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(WorkloadError::RatioOutOfRange { field, value });
            }
        }
        if self.orders == 0 {
            return Err(WorkloadError::Zero { field: "orders" });
        }
        if self.users == 0 {
            return Err(WorkloadError::Zero { field: "users" });
        }
        Ok(())
    }
}

impl Workload {
    /// Generates the workload of `config`; the same config always gives the same messages.
    pub fn generate(config: &WorkloadConfig) -> Result<Workload, WorkloadError> {
        config.validate()?;
        let mut rng = SplitMix::new(config.seed);
        let mut pending: VecDeque<VecDeque<OrderEvent>> = VecDeque::new();
        let mut next_order = 0usize;
        let mut delayed: VecDeque<(usize, Message)> = VecDeque::new();
        let mut messages = Vec::new();
        // A window of concurrently active orders, so that orders interleave.
        const ACTIVE_ORDERS: usize = 16;
        loop {
            while pending.len() < ACTIVE_ORDERS && next_order < config.orders {
                pending.push_back(lifecycle(config, &mut rng, next_order));
                next_order += 1;
            }
            if pending.is_empty() {
                break;
            }
            let index = rng.below(pending.len());
            let event = match pending[index].pop_front() {
                Some(event) => event,
                None => continue,
            };
            if pending[index].is_empty() {
                pending.remove(index);
            }
            if rng.chance(config.malformed_ratio) {
                messages.push(malformed(&mut rng, &event));
            }
            let message = Message {
                key: event.order_id.as_bytes().to_vec(),
                payload: event.payload.clone(),
                event: Some(event),
            };
            if rng.chance(config.duplicate_ratio) {
                let due = messages.len() + 1 + rng.below(64);
                delayed.push_back((due, message.clone()));
            }
            messages.push(message);
            while delayed
                .front()
                .is_some_and(|(due, _)| *due <= messages.len())
            {
                if let Some((_, repeat)) = delayed.pop_front() {
                    messages.push(repeat);
                }
            }
        }
        messages.extend(delayed.into_iter().map(|(_, message)| message));
        Ok(Workload { messages })
    }

    /// What publishing every message amounts to when each one is acknowledged: the ground
    /// truth and the counts of valid and malformed messages.
    pub fn published(&self) -> Published {
        let mut published = Published::default();
        for message in &self.messages {
            match &message.event {
                Some(event) => {
                    published.truth.record(event, true);
                    published.valid += 1;
                }
                None => published.malformed += 1,
            }
        }
        published
    }

    /// The distinct valid events (first occurrence of each, by content: a rival that reuses
    /// an event id is distinct), in stream order.
    pub fn distinct_events(&self) -> Vec<OrderEvent> {
        let mut seen = std::collections::HashSet::new();
        self.messages
            .iter()
            .filter_map(|message| message.event.as_ref())
            .filter(|event| seen.insert(*event))
            .cloned()
            .collect()
    }
}

/// A workload once all of it is published and acknowledged ([`Workload::published`]).
#[derive(Debug, Default)]
pub struct Published {
    /// Every valid event, acknowledged.
    pub truth: GroundTruth,
    /// Valid events published (duplicates included).
    pub valid: usize,
    /// Malformed messages published.
    pub malformed: usize,
}

/// One order's events in business order, possibly with two of them swapped.
fn lifecycle(config: &WorkloadConfig, rng: &mut SplitMix, index: usize) -> VecDeque<OrderEvent> {
    let order_id = format!("o{:x}-{index}", config.seed);
    let account_id = format!("u{}", index % config.users);
    let rebound = rng.chance(config.rebind_ratio);
    let mut user_id = if rebound {
        format!("guest-{index}")
    } else {
        account_id.clone()
    };
    let mut at_ms = config.start_ms + (index as i64) * 1_000;
    let mut events = Vec::new();
    let mut push = |kind: EventKind, amount: Option<i64>, at_ms: i64, user_id: &str| {
        let mut event = OrderEvent {
            event_id: format!("{order_id}-{}", events.len()),
            order_id: order_id.clone(),
            user_id: user_id.to_owned(),
            kind,
            amount_minor: amount,
            event_time_ms: at_ms,
            payload: Bytes::new(),
        };
        event.payload = event.encode().into();
        events.push(event);
    };
    let total = 100 + rng.below(100_000) as i64;
    push(EventKind::Created, None, at_ms, &user_id);
    at_ms += 1 + rng.below(60_000) as i64;
    user_id = account_id;
    let cancelled_early = rng.chance(config.cancel_ratio / 2.0);
    if cancelled_early {
        push(EventKind::Cancelled, None, at_ms, &user_id);
        return finish(config, rng, index, events);
    }
    push(EventKind::Paid, Some(total), at_ms, &user_id);
    if rng.chance(0.3) {
        let first = total / 2;
        at_ms += 1 + rng.below(1_000) as i64;
        push(EventKind::Billed, Some(first), at_ms, &user_id);
        at_ms += 1 + rng.below(1_000) as i64;
        push(EventKind::Billed, Some(total - first), at_ms, &user_id);
    }
    if rng.chance(config.cancel_ratio / 2.0) {
        at_ms += 1 + rng.below(60_000) as i64;
        push(EventKind::Cancelled, None, at_ms, &user_id);
        at_ms += 1 + rng.below(60_000) as i64;
        push(EventKind::Refunded, Some(total), at_ms, &user_id);
        return finish(config, rng, index, events);
    }
    for kind in [EventKind::Shipped, EventKind::Received] {
        at_ms += 1 + rng.below(3_600_000) as i64;
        push(kind, None, at_ms, &user_id);
    }
    if rng.chance(config.refund_ratio) {
        let parts = 1 + rng.below(2);
        for _ in 0..parts {
            at_ms += 1 + rng.below(600_000) as i64;
            push(EventKind::Refunded, Some(1 + total / 10), at_ms, &user_id);
        }
    }
    at_ms += 1 + rng.below(600_000) as i64;
    push(EventKind::Completed, None, at_ms, &user_id);
    finish(config, rng, index, events)
}

/// With `conflict_ratio`, a rival of one of the order's events, at a random place. It draws
/// from its own stream, so a workload without rivals is the same as before they existed.
fn add_rival(config: &WorkloadConfig, index: usize, events: &mut Vec<OrderEvent>) {
    let mut rng = SplitMix::new(config.seed ^ (index as u64).rotate_left(32) ^ 0x7269_7661_6c73);
    if events.is_empty() || !rng.chance(config.conflict_ratio) {
        return;
    }
    let mut rival = events[rng.below(events.len())].clone();
    if !rival.kind.repeats() {
        rival.event_id = format!("{}-rival", rival.event_id);
    }
    // Earlier or later than the original, so either may win the column.
    rival.event_time_ms += rng.below(120_001) as i64 - 60_000;
    if let Some(amount) = rival.amount_minor.as_mut() {
        *amount += 1 + rng.below(100) as i64;
    }
    rival.payload = rival.encode().into();
    let at = rng.below(events.len() + 1);
    events.insert(at, rival);
}

/// The order's events as sent: a rival added (sometimes), two events swapped (sometimes).
fn finish(
    config: &WorkloadConfig,
    rng: &mut SplitMix,
    index: usize,
    mut events: Vec<OrderEvent>,
) -> VecDeque<OrderEvent> {
    add_rival(config, index, &mut events);
    if events.len() >= 2 && rng.chance(config.reorder_ratio) {
        let first = rng.below(events.len());
        let second = rng.below(events.len());
        events.swap(first, second);
    }
    events.into()
}

/// A malformed message of a random kind, keyed like the event it sits next to.
fn malformed(rng: &mut SplitMix, near: &OrderEvent) -> Message {
    let payload: Vec<u8> = match rng.below(7) {
        0 => b"{\"v\":1,\"event_id\":".to_vec(),
        1 => format!(
            "{{\"v\":1,\"event_id\":\"bad-{0}\",\"order_id\":\"{1}\",\"user_id\":\"u\",\"kind\":\"teleported\",\"event_time_ms\":0}}",
            rng.next_u64(),
            near.order_id
        )
        .into_bytes(),
        2 => format!(
            "{{\"v\":1,\"event_id\":\"bad-{0}\",\"order_id\":\"{1}\",\"user_id\":\"u\",\"kind\":\"paid\",\"amount_minor\":-5,\"event_time_ms\":0}}",
            rng.next_u64(),
            near.order_id
        )
        .into_bytes(),
        3 => format!("{{\"v\":1,\"order_id\":\"{}\"}}", near.order_id).into_bytes(),
        // A NUL in an id: valid JSON, but no PostgreSQL text column can hold it.
        4 => format!(
            "{{\"v\":1,\"event_id\":\"bad-{0}\",\"order_id\":\"{1}\",\"user_id\":\"u\\u0000x\",\"kind\":\"created\",\"event_time_ms\":0}}",
            rng.next_u64(),
            near.order_id
        )
        .into_bytes(),
        // serde's sequence form of the event's fields: not an object, not an event.
        5 => format!(
            "[1,\"bad-{0}\",\"{1}\",\"u\",\"paid\",100,1700000000000]",
            rng.next_u64(),
            near.order_id
        )
        .into_bytes(),
        _ => format!(
            "{{\"v\":1,\"event_id\":\"\",\"order_id\":\"{}\",\"user_id\":\"u\",\"kind\":\"created\",\"event_time_ms\":0}}",
            near.order_id
        )
        .into_bytes(),
    };
    Message {
        key: near.order_id.as_bytes().to_vec(),
        payload: payload.into(),
        event: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let config = WorkloadConfig {
            orders: 50,
            ..WorkloadConfig::default()
        };
        let a = Workload::generate(&config).unwrap();
        let b = Workload::generate(&config).unwrap();
        assert_eq!(a.messages, b.messages);
        let c = Workload::generate(&WorkloadConfig { seed: 2, ..config }).unwrap();
        assert_ne!(a.messages, c.messages);
    }

    /// Every valid message decodes to its event; every malformed one is refused, and each
    /// form the generator knows is sent, so that the consumer's dead-letter path meets each
    /// refusal.
    #[test]
    fn every_valid_message_decodes_to_its_event_and_malformed_ones_do_not() {
        let config = WorkloadConfig {
            orders: 300,
            malformed_ratio: 0.1,
            ..WorkloadConfig::default()
        };
        let workload = Workload::generate(&config).unwrap();
        let mut refusals = HashSet::new();
        for message in &workload.messages {
            match &message.event {
                Some(event) => {
                    assert_eq!(OrderEvent::decode(&message.payload).as_ref(), Ok(event));
                    assert_eq!(message.key, event.order_id.as_bytes());
                }
                None => {
                    let refusal = OrderEvent::decode(&message.payload).unwrap_err();
                    refusals.insert(std::mem::discriminant(&refusal));
                }
            }
        }
        // Truncated JSON, an unknown kind, a negative amount, a missing field, a NUL in an id,
        // an array, an empty id.
        assert_eq!(refusals.len(), 7, "not every malformed form was sent");
    }

    #[test]
    fn has_duplicates_disorder_and_rivals_only_where_asked() {
        let config = WorkloadConfig {
            orders: 400,
            ..WorkloadConfig::default()
        };
        let rivals = |config: &WorkloadConfig| {
            let distinct = Workload::generate(config).unwrap().distinct_events();
            let keys: HashSet<_> = distinct
                .iter()
                .map(crate::idempotency::IdempotencyKey::of)
                .collect();
            distinct.len() - keys.len()
        };
        // Rivals share a key with another event; without them no two events do.
        assert!(rivals(&config) > 5, "{} rivals", rivals(&config));
        let calm = WorkloadConfig {
            conflict_ratio: 0.0,
            ..config.clone()
        };
        assert_eq!(rivals(&calm), 0);
        let config = calm;
        let workload = Workload::generate(&config).unwrap();
        let events: Vec<&OrderEvent> = workload
            .messages
            .iter()
            .filter_map(|m| m.event.as_ref())
            .collect();
        let distinct = workload.distinct_events();
        assert!(events.len() > distinct.len(), "no duplicate was generated");
        // Distinct events never share an idempotency key: one key, one effect.
        let keys: HashSet<_> = distinct
            .iter()
            .map(crate::idempotency::IdempotencyKey::of)
            .collect();
        assert_eq!(keys.len(), distinct.len());
        // Some order's events arrive out of business order.
        let mut last: HashMap<&str, i64> = HashMap::new();
        let mut out_of_order = 0;
        for event in &distinct {
            let previous = last.insert(&event.order_id, event.event_time_ms);
            if previous.is_some_and(|p| p > event.event_time_ms) {
                out_of_order += 1;
            }
        }
        assert!(out_of_order > 0, "no event arrived out of order");
        for kind in [
            EventKind::Refunded,
            EventKind::Cancelled,
            EventKind::Billed,
            EventKind::Completed,
        ] {
            assert!(distinct.iter().any(|e| e.kind == kind), "no {kind} event");
        }
    }

    /// Goal: a workload has exactly the orders asked for, and its verbatim repeats come later
    /// in the stream, some of them well after their original (a retry or a re-send, not an
    /// echo). Method: 400 orders; order ids counted, each repeat's distance from its first
    /// copy measured.
    #[test]
    fn has_the_orders_asked_and_repeats_come_later() {
        let workload = Workload::generate(&WorkloadConfig {
            orders: 400,
            ..WorkloadConfig::default()
        })
        .unwrap();
        let orders: HashSet<&str> = (workload.messages.iter())
            .filter_map(|m| m.event.as_ref().map(|e| e.order_id.as_str()))
            .collect();
        assert_eq!(orders.len(), 400);
        let mut first: HashMap<&[u8], usize> = HashMap::new();
        let mut distances = Vec::new();
        for (index, message) in workload.messages.iter().enumerate() {
            if message.event.is_some() {
                if let Some(&at) = first.get(&message.payload[..]) {
                    distances.push(index - at);
                } else {
                    first.insert(&message.payload[..], index);
                }
            }
        }
        assert!(!distances.is_empty(), "no repeat");
        let farthest = distances.iter().max().copied().unwrap_or(0);
        // Delayed by 1 to 64 messages when it was queued, and never held back longer.
        assert!(farthest > 16, "every repeat within {farthest} messages");
        assert!(
            farthest <= 80,
            "a repeat {farthest} messages after its original"
        );
    }

    /// Goal: publishing a whole workload counts every valid and every malformed message and
    /// acknowledges each distinct event. Method: counts against the messages themselves.
    #[test]
    fn published_counts_every_message_and_acknowledges_each_event() {
        let workload = Workload::generate(&WorkloadConfig {
            orders: 200,
            malformed_ratio: 0.05,
            ..WorkloadConfig::default()
        })
        .unwrap();
        let published = workload.published();
        let malformed = workload
            .messages
            .iter()
            .filter(|m| m.event.is_none())
            .count();
        assert!(malformed > 0, "no malformed message");
        assert_eq!(published.malformed, malformed);
        assert_eq!(published.valid, workload.messages.len() - malformed);
        assert_eq!(published.truth.attempted.len(), published.valid);
        assert_eq!(
            published.truth.acknowledged.len(),
            workload.distinct_events().len()
        );
    }

    /// The index `lifecycle` gave an order, read back from its id.
    fn order_index(order_id: &str) -> usize {
        order_id.rsplit('-').next().unwrap().parse().unwrap()
    }

    /// Goal: without disorder, each order's events arrive in business order, each 1 ms to an
    /// hour after the one before, from `start_ms` plus a second per order, and a payment is
    /// at least 100 minor units. Method: a workload with no reordering, rivals or repeats,
    /// read back per order.
    #[test]
    fn lifecycles_run_forward_in_time_from_the_start() {
        let config = WorkloadConfig {
            orders: 300,
            reorder_ratio: 0.0,
            conflict_ratio: 0.0,
            duplicate_ratio: 0.0,
            ..WorkloadConfig::default()
        };
        let workload = Workload::generate(&config).unwrap();
        let mut last: HashMap<&str, i64> = HashMap::new();
        for event in workload.messages.iter().filter_map(|m| m.event.as_ref()) {
            match last.insert(&event.order_id, event.event_time_ms) {
                // The longest step of a lifecycle is an hour (shipped, received).
                Some(previous) => assert!(
                    (1..=3_600_000).contains(&(event.event_time_ms - previous)),
                    "{event:?} {previous}"
                ),
                None => {
                    assert_eq!(event.kind, EventKind::Created);
                    let index = order_index(&event.order_id) as i64;
                    assert_eq!(event.event_time_ms, config.start_ms + index * 1_000);
                }
            }
            if event.kind == EventKind::Paid {
                assert!(event.amount_minor.is_some_and(|amount| amount >= 100));
            }
        }
        assert_eq!(last.len(), 300);
    }

    /// Goal: each order takes one of the lifecycles the module promises, at about the rates
    /// asked: created then cancelled; or paid (in two bills of its halves, sometimes), then
    /// cancelled and refunded in full; or paid, shipped, received, refunded a tenth once or
    /// twice (sometimes) and completed. A guest order's later events carry the account's
    /// user id. Method: 2,000 orders without disorder, rivals, repeats or malformed
    /// messages, read back per order and counted by shape.
    #[test]
    fn lifecycles_take_the_business_shapes_at_their_rates() {
        let config = WorkloadConfig {
            orders: 2_000,
            reorder_ratio: 0.0,
            conflict_ratio: 0.0,
            duplicate_ratio: 0.0,
            malformed_ratio: 0.0,
            ..WorkloadConfig::default()
        };
        let workload = Workload::generate(&config).unwrap();
        let mut orders: HashMap<&str, Vec<&OrderEvent>> = HashMap::new();
        for event in workload.messages.iter().filter_map(|m| m.event.as_ref()) {
            orders.entry(&event.order_id).or_default().push(event);
        }
        assert_eq!(orders.len(), config.orders);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for events in orders.values() {
            for shape in lifecycle_shape(&config, events) {
                *counts.entry(shape).or_default() += 1;
            }
        }
        // (shape, expected share of all orders)
        let paid = 1.0 - config.cancel_ratio / 2.0;
        let shipped = paid * (1.0 - config.cancel_ratio / 2.0);
        for (shape, share) in [
            ("cancelled unpaid", config.cancel_ratio / 2.0),
            ("billed", paid * 0.3),
            ("cancelled paid", paid * config.cancel_ratio / 2.0),
            ("completed", shipped),
            ("refunded", shipped * config.refund_ratio),
            ("refunded twice", shipped * config.refund_ratio / 2.0),
            ("guest", config.rebind_ratio),
        ] {
            let expected = share * config.orders as f64;
            let seen = counts.get(shape).copied().unwrap_or(0) as f64;
            assert!(
                (expected * 0.6..=expected * 1.4).contains(&seen),
                "{seen} orders {shape}, about {expected} expected"
            );
        }
    }

    /// The shapes one order's events take (see the test above); panics on any other.
    fn lifecycle_shape(config: &WorkloadConfig, events: &[&OrderEvent]) -> Vec<&'static str> {
        use EventKind::*;
        let order = &events[0].order_id;
        let index = order_index(order);
        let account = format!("u{}", index % config.users);
        let mut shapes = Vec::new();
        for (position, event) in events.iter().enumerate() {
            assert_eq!(event.event_id, format!("{order}-{position}"));
            if position == 0 && event.user_id == format!("guest-{index}") {
                shapes.push("guest");
            } else {
                assert_eq!(event.user_id, account, "{event:?}");
            }
            assert_eq!(event.amount_minor.is_some(), event.kind.carries_amount());
        }
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        if kinds == [Created, Cancelled] {
            shapes.push("cancelled unpaid");
            return shapes;
        }
        assert_eq!(kinds[..2], [Created, Paid], "{kinds:?}");
        let total = events[1].amount_minor.unwrap();
        assert!((100..100_100).contains(&total), "{total}");
        let mut rest = &events[2..];
        if rest[0].kind == Billed {
            let bills = [rest[0].amount_minor, rest[1].amount_minor];
            assert_eq!(bills, [Some(total / 2), Some(total - total / 2)]);
            shapes.push("billed");
            rest = &rest[2..];
        }
        let rest: Vec<(EventKind, Option<i64>)> =
            rest.iter().map(|e| (e.kind, e.amount_minor)).collect();
        let tenth = Some(1 + total / 10);
        let (shipped, refunds, completed) = ((Shipped, None), (Refunded, tenth), (Completed, None));
        if rest == [(Cancelled, None), (Refunded, Some(total))] {
            shapes.push("cancelled paid");
        } else if rest == [shipped, (Received, None), completed] {
            shapes.push("completed");
        } else if rest == [shipped, (Received, None), refunds, completed] {
            shapes.extend(["completed", "refunded"]);
        } else if rest == [shipped, (Received, None), refunds, refunds, completed] {
            shapes.extend(["completed", "refunded", "refunded twice"]);
        } else {
            panic!("{order}: {kinds:?} {rest:?}");
        }
        shapes
    }

    /// Goal: a rival claims a status its order already has, within a minute before or after
    /// the original, so that either may win: a new event id for a single-valued status, the
    /// same id with another valid amount for a bill or a refund. Method: every order of a
    /// workload given a rival, each rival matched with its original.
    #[test]
    fn rivals_claim_a_status_again_a_minute_either_side() {
        let workload = Workload::generate(&WorkloadConfig {
            orders: 500,
            conflict_ratio: 1.0,
            duplicate_ratio: 0.0,
            reorder_ratio: 0.0,
            malformed_ratio: 0.0,
            ..WorkloadConfig::default()
        })
        .unwrap();
        let events: Vec<&OrderEvent> = (workload.messages.iter())
            .filter_map(|m| m.event.as_ref())
            .collect();
        let (mut earlier, mut later, mut rivals) = (0, 0, 0);
        for rival in &events {
            let original_id = match rival.event_id.strip_suffix("-rival") {
                Some(original_id) => original_id,
                None if rival.kind.repeats() => rival.event_id.as_str(),
                None => continue,
            };
            // The original of a bill's or refund's rival is the same id with another amount.
            let Some(original) = events.iter().find(|e| {
                e.event_id == original_id
                    && (!rival.kind.repeats() || e.amount_minor != rival.amount_minor)
            }) else {
                continue;
            };
            rivals += 1;
            assert_eq!(original.kind, rival.kind, "{rival:?}");
            assert_eq!(rival.kind.repeats(), rival.event_id == original.event_id);
            if let Some(amount) = rival.amount_minor {
                assert!(amount > 0, "{rival:?}");
            }
            let shift = rival.event_time_ms - original.event_time_ms;
            assert!(shift.abs() <= 60_000, "{rival:?} {shift}");
            // A bill's or a refund's pair cannot tell its rival from its original.
            if !rival.kind.repeats() {
                earlier += usize::from(shift < 0);
                later += usize::from(shift > 0);
            }
        }
        // A bill's or a refund's pair is counted both ways.
        assert!(rivals >= 500, "{rivals} rivals");
        assert!(
            earlier > 50 && later > 50,
            "{earlier} earlier, {later} later"
        );
    }

    #[test]
    fn refuses_bad_ratios_and_empty_workloads() {
        let config = WorkloadConfig {
            duplicate_ratio: 1.5,
            ..WorkloadConfig::default()
        };
        assert!(matches!(
            Workload::generate(&config),
            Err(WorkloadError::RatioOutOfRange {
                field: "duplicate_ratio",
                ..
            })
        ));
        let config = WorkloadConfig {
            orders: 0,
            ..WorkloadConfig::default()
        };
        assert_eq!(
            Workload::generate(&config).err(),
            Some(WorkloadError::Zero { field: "orders" })
        );
    }
}

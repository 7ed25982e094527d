//! One batch in one transaction: the key insert, then the pipelined upserts of the folded rows.

use super::read::key_of;
use super::{port_error, Session, SINGLE_KINDS};
use crate::event::{EventKind, OrderEvent};
use crate::idempotency::IdempotencyKey;
use crate::ports::{ApplyOutcome, PortError, ProgressWrite};
use crate::widetable::{OrderRow, Stamp};
use std::collections::{BTreeMap, HashSet};

/// The key columns of an idempotency key: `''` stands for "no discriminator".
pub(super) fn key_columns(key: &IdempotencyKey) -> (&str, &'static str, &str) {
    (
        &key.order_id,
        key.kind.as_str(),
        key.discriminator.as_deref().unwrap_or(""),
    )
}

/// One batch, one transaction: the keys first (the unique key decides what is new), then
/// every event of the batch joined into its order's row, and the partitions' progress
/// written under `scope` (a fenced write rolls the whole transaction back).
pub(super) async fn apply_in(
    session: &mut Session,
    events: &[OrderEvent],
    progress: &[ProgressWrite],
    scope: &str,
) -> Result<Vec<ApplyOutcome>, PortError> {
    let keys: Vec<IdempotencyKey> = events.iter().map(IdempotencyKey::of).collect();
    // A key met again later in the batch is a duplicate of its first occurrence, as in
    // the in-memory store; only first occurrences go to the database.
    let mut seen: HashSet<&IdempotencyKey> = HashSet::with_capacity(keys.len());
    let first: Vec<bool> = keys.iter().map(|key| seen.insert(key)).collect();
    let columns = KeyColumns::of(&keys, &first, events);

    let Session {
        client,
        insert_keys,
        upsert_orders,
        upsert_bills,
        upsert_refunds,
        write_progress,
    } = session;
    let transaction = client
        .transaction()
        .await
        .map_err(|error| port_error(&error))?;
    let inserted = transaction
        .query(&*insert_keys, &columns.parameters())
        .await
        .map_err(|error| port_error(&error))?;
    let mut new_keys: HashSet<IdempotencyKey> = HashSet::with_capacity(inserted.len());
    for row in &inserted {
        new_keys.insert(key_of(row)?);
    }
    let outcomes = outcomes(&keys, &first, &new_keys);
    let upserts = async {
        if events.is_empty() {
            return Ok(());
        }
        let upserts = [&*upsert_orders, &*upsert_bills, &*upsert_refunds];
        upsert_rows(&transaction, upserts, events).await
    };
    let progress_written = super::progress::write(&transaction, write_progress, scope, progress);
    // Dropping the transaction on an error rolls it back.
    tokio::try_join!(upserts, progress_written)?;
    transaction
        .commit()
        .await
        .map_err(|error| port_error(&error))?;
    Ok(outcomes)
}

/// The key insert's parameters: the first occurrence of each key of the batch.
struct KeyColumns<'a> {
    order_ids: Vec<&'a str>,
    statuses: Vec<&'static str>,
    discriminators: Vec<&'a str>,
    event_ids: Vec<&'a str>,
}

impl<'a> KeyColumns<'a> {
    fn of(keys: &'a [IdempotencyKey], first: &[bool], events: &'a [OrderEvent]) -> Self {
        let mut columns = KeyColumns {
            order_ids: Vec::new(),
            statuses: Vec::new(),
            discriminators: Vec::new(),
            event_ids: Vec::new(),
        };
        for (index, key) in keys.iter().enumerate().filter(|(index, _)| first[*index]) {
            let (order_id, status, discriminator) = key_columns(key);
            columns.order_ids.push(order_id);
            columns.statuses.push(status);
            columns.discriminators.push(discriminator);
            columns.event_ids.push(events[index].event_id.as_str());
        }
        columns
    }

    fn parameters(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 4] {
        [
            &self.order_ids,
            &self.statuses,
            &self.discriminators,
            &self.event_ids,
        ]
    }
}

/// Applied for the first occurrence of a key the insert reported new; every other event is a
/// duplicate.
fn outcomes(
    keys: &[IdempotencyKey],
    first: &[bool],
    new_keys: &HashSet<IdempotencyKey>,
) -> Vec<ApplyOutcome> {
    let outcomes: Vec<ApplyOutcome> = keys
        .iter()
        .zip(first)
        .map(|(key, &first)| {
            if first && new_keys.contains(key) {
                ApplyOutcome::Applied
            } else {
                ApplyOutcome::Duplicate
            }
        })
        .collect();
    debug_assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == ApplyOutcome::Applied)
            .count(),
        new_keys.len(),
        "each new key applies one event"
    );
    outcomes
}

/// Joins the batch's events into their rows: the orders, bills and refunds upserts, issued
/// together so that the client pipelines them on the connection.
async fn upsert_rows(
    transaction: &tokio_postgres::Transaction<'_>,
    [upsert_orders, upsert_bills, upsert_refunds]: [&tokio_postgres::Statement; 3],
    events: &[OrderEvent],
) -> Result<(), PortError> {
    let partial = OrderRow::fold(events);
    let orders = OrderColumns::of(&partial);
    let bills = EntryColumns::of(&partial, |row| &row.bills);
    let refunds = EntryColumns::of(&partial, |row| &row.refunds);
    let order_parameters = orders.parameters();
    let orders_done = transaction.execute(upsert_orders, &order_parameters);
    let bills_done = async {
        if bills.order_ids.is_empty() {
            return Ok(0);
        }
        transaction.execute(upsert_bills, &bills.parameters()).await
    };
    let refunds_done = async {
        if refunds.order_ids.is_empty() {
            return Ok(0);
        }
        transaction
            .execute(upsert_refunds, &refunds.parameters())
            .await
    };
    tokio::try_join!(orders_done, bills_done, refunds_done).map_err(|error| port_error(&error))?;
    Ok(())
}

/// The wide-row upsert's parameters, one array per column.
pub(super) struct OrderColumns<'a> {
    order_ids: Vec<&'a str>,
    user_ids: Vec<&'a str>,
    /// One entry per single-valued kind, in [`SINGLE_KINDS`] order.
    stamps: Vec<StampColumns<'a>>,
}

/// One single-valued status's column group as arrays: event ids, times, amounts (`None`
/// where the order's partial row has no such status).
pub(super) type StampColumns<'a> = (Vec<Option<&'a str>>, Vec<Option<i64>>, Vec<Option<i64>>);

impl<'a> OrderColumns<'a> {
    pub(super) fn of(rows: &'a [OrderRow]) -> OrderColumns<'a> {
        let mut columns = OrderColumns {
            order_ids: rows.iter().map(|row| row.order_id.as_str()).collect(),
            user_ids: rows.iter().map(|row| row.user_id.as_str()).collect(),
            stamps: Vec::with_capacity(SINGLE_KINDS.len()),
        };
        for kind in SINGLE_KINDS {
            let stamps = rows.iter().map(|row| single(row, kind));
            columns.stamps.push((
                stamps
                    .clone()
                    .map(|stamp| stamp.map(|s| s.event_id.as_str()))
                    .collect(),
                stamps.clone().map(|stamp| stamp.map(|s| s.at_ms)).collect(),
                stamps
                    .map(|stamp| stamp.and_then(|s| s.amount_minor))
                    .collect(),
            ));
        }
        columns
    }

    pub(super) fn parameters(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        let mut parameters: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&self.order_ids, &self.user_ids];
        for (events, times, amounts) in &self.stamps {
            parameters.push(events);
            parameters.push(times);
            parameters.push(amounts);
        }
        parameters
    }
}

/// The stamp of a single-valued column.
pub(super) fn single(row: &OrderRow, kind: EventKind) -> Option<&Stamp> {
    match kind {
        EventKind::Created => row.created.as_ref(),
        EventKind::Paid => row.paid.as_ref(),
        EventKind::Shipped => row.shipped.as_ref(),
        EventKind::Received => row.received.as_ref(),
        EventKind::Completed => row.completed.as_ref(),
        EventKind::Cancelled => row.cancelled.as_ref(),
        EventKind::Billed | EventKind::Refunded => None,
    }
}

pub(super) fn single_mut(row: &mut OrderRow, kind: EventKind) -> Option<&mut Option<Stamp>> {
    match kind {
        EventKind::Created => Some(&mut row.created),
        EventKind::Paid => Some(&mut row.paid),
        EventKind::Shipped => Some(&mut row.shipped),
        EventKind::Received => Some(&mut row.received),
        EventKind::Completed => Some(&mut row.completed),
        EventKind::Cancelled => Some(&mut row.cancelled),
        EventKind::Billed | EventKind::Refunded => None,
    }
}

/// A repeating status's upsert parameters.
pub(super) struct EntryColumns<'a> {
    order_ids: Vec<&'a str>,
    event_ids: Vec<&'a str>,
    times: Vec<i64>,
    amounts: Vec<Option<i64>>,
}

impl<'a> EntryColumns<'a> {
    pub(super) fn of(
        rows: &'a [OrderRow],
        entries: impl Fn(&'a OrderRow) -> &'a BTreeMap<String, Stamp>,
    ) -> EntryColumns<'a> {
        let mut columns = EntryColumns {
            order_ids: Vec::new(),
            event_ids: Vec::new(),
            times: Vec::new(),
            amounts: Vec::new(),
        };
        for row in rows {
            for stamp in entries(row).values() {
                columns.order_ids.push(&row.order_id);
                columns.event_ids.push(&stamp.event_id);
                columns.times.push(stamp.at_ms);
                columns.amounts.push(stamp.amount_minor);
            }
        }
        columns
    }

    pub(super) fn parameters(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 4] {
        [&self.order_ids, &self.event_ids, &self.times, &self.amounts]
    }
}

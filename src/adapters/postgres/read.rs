//! Reading rows and keys back in one read-only snapshot.

use super::batch::single_mut;
use super::{port_error, SINGLE_KINDS};
use crate::adapters::{rejected, STORE};
use crate::event::EventKind;
use crate::idempotency::IdempotencyKey;
use crate::ports::PortError;
use crate::widetable::{OrderRow, Stamp};
use std::collections::BTreeMap;
use tokio_postgres::{Client, IsolationLevel, Row};

pub(super) fn key_of(row: &Row) -> Result<IdempotencyKey, PortError> {
    let status: &str = row.try_get(1).map_err(|error| port_error(&error))?;
    let kind = EventKind::parse(status)
        .ok_or_else(|| rejected(STORE, format!("unknown status {status:?} in holdfast_keys")))?;
    let discriminator: String = row.try_get(2).map_err(|error| port_error(&error))?;
    Ok(IdempotencyKey {
        order_id: row.try_get(0).map_err(|error| port_error(&error))?,
        kind,
        discriminator: kind.repeats().then_some(discriminator),
    })
}

/// Reads wide rows (all, or those of `order_ids`) with their bills and refunds, in one
/// read-only snapshot so that a concurrent commit is seen whole or not at all.
pub(super) async fn load_rows(
    client: &mut Client,
    order_ids: Option<&[String]>,
) -> Result<BTreeMap<String, OrderRow>, PortError> {
    let map = |error: tokio_postgres::Error| port_error(&error);
    let transaction = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(map)?;
    let [orders_sql, bills_sql, refunds_sql] = select_statements();
    let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&order_ids];
    let (orders, bills, refunds) = tokio::try_join!(
        transaction.query(&orders_sql, &parameters),
        transaction.query(&bills_sql, &parameters),
        transaction.query(&refunds_sql, &parameters),
    )
    .map_err(map)?;
    transaction.commit().await.map_err(map)?;

    let mut rows = BTreeMap::new();
    for record in &orders {
        let row = order_row(record)?;
        rows.insert(row.order_id.clone(), row);
    }
    for (records, refunds) in [(&bills, false), (&refunds, true)] {
        for record in records {
            add_entry(&mut rows, record, refunds)?;
        }
    }
    Ok(rows)
}

/// The selects of the orders, bills and refunds, each filtered by the order ids in `$1`
/// (all rows when it is NULL).
fn select_statements() -> [String; 3] {
    let filter = "WHERE $1::text[] IS NULL OR order_id = ANY($1)";
    let stamp_columns: Vec<String> = SINGLE_KINDS
        .iter()
        .map(|kind| {
            let name = kind.as_str();
            format!("{name}_event, {name}_at, {name}_amount")
        })
        .collect();
    [
        format!(
            "SELECT order_id, user_id, {} FROM holdfast_orders {filter}",
            stamp_columns.join(", ")
        ),
        format!("SELECT order_id, event_id, at_ms, amount FROM holdfast_bills {filter}"),
        format!("SELECT order_id, event_id, at_ms, amount FROM holdfast_refunds {filter}"),
    ]
}

/// A wide row from its `holdfast_orders` record (without its bills and refunds).
fn order_row(record: &Row) -> Result<OrderRow, PortError> {
    let map = |error: tokio_postgres::Error| port_error(&error);
    let id: String = record.try_get(0).map_err(map)?;
    let mut row = OrderRow::new(&id, &record.try_get::<_, String>(1).map_err(map)?);
    for (index, kind) in SINGLE_KINDS.into_iter().enumerate() {
        let base = 2 + 3 * index;
        let event_id: Option<String> = record.try_get(base).map_err(map)?;
        let at_ms: Option<i64> = record.try_get(base + 1).map_err(map)?;
        let amount_minor: Option<i64> = record.try_get(base + 2).map_err(map)?;
        if let (Some(event_id), Some(at_ms), Some(column)) =
            (event_id, at_ms, single_mut(&mut row, kind))
        {
            *column = Some(Stamp {
                event_id,
                at_ms,
                amount_minor,
            });
        }
    }
    Ok(row)
}

/// Adds a bill (or, with `refunds`, a refund) record to its order's row; an entry without a
/// row is refused.
fn add_entry(
    rows: &mut BTreeMap<String, OrderRow>,
    record: &Row,
    refunds: bool,
) -> Result<(), PortError> {
    let map = |error: tokio_postgres::Error| port_error(&error);
    let id: String = record.try_get(0).map_err(map)?;
    let stamp = Stamp {
        event_id: record.try_get(1).map_err(map)?,
        at_ms: record.try_get(2).map_err(map)?,
        amount_minor: record.try_get(3).map_err(map)?,
    };
    let Some(row) = rows.get_mut(&id) else {
        return Err(rejected(
            STORE,
            format!("entry {} of order {id} has no wide row", stamp.event_id),
        ));
    };
    let entries = if refunds {
        &mut row.refunds
    } else {
        &mut row.bills
    };
    entries.insert(stamp.event_id.clone(), stamp);
    Ok(())
}

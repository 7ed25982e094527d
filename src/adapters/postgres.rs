//! The order store on PostgreSQL: the unique key is the idempotency guarantee, and the wide
//! row is merged by SQL whose result does not depend on arrival order.
//!
//! One batch is one transaction of at most five round trips, whatever its size: `BEGIN`, one
//! `INSERT ... ON CONFLICT DO NOTHING RETURNING` of every distinct key (arrays through
//! `UNNEST`), then, pipelined, one upsert each for the wide rows, the bills and the refunds of
//! every event of the batch, and `COMMIT`. Events whose key was already there are joined too:
//! the join is idempotent, so a redelivery changes nothing, and a different event under the
//! same key wins its column only when the conflict rule says so, whatever arrived first. The
//! events of one batch are first folded per order with [`OrderRow::fold`] (a join-semilattice,
//! so folding part of the events first changes nothing) and the SQL joins that partial row
//! into the stored one with the same rule as [`OrderRow::merge`]: for each column the smaller
//! `(at_ms, event_id, amount)` wins, the user id is the smallest non-empty one. See
//! docs/services.md.
//!
//! Connections: a few clients, each behind an async mutex and used by one call at a time.
//! A client whose connection closed (PostgreSQL restarted) is replaced by the next call;
//! the call that met the closure fails as [`PortError::Unavailable`] and the pipeline
//! retries it.

use super::{rejected, unavailable, AdapterError, STORE};
use crate::event::{EventKind, OrderEvent};
use crate::idempotency::IdempotencyKey;
use crate::ports::{ApplyOutcome, OrderStore, PortError};
use crate::verify::Application;
use crate::widetable::{OrderRow, Stamp};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, Config, IsolationLevel, NoTls, Row, Statement};

/// The schema, created when missing. Text columns use the "C" collation so that SQL compares
/// ids byte by byte, exactly as Rust's `String` ordering does (the merge rule relies on it).
/// Amounts are never negative (the decoder refuses them); the checks make the database say
/// so too.
pub const SCHEMA: &str = include_str!("schema.sql");

/// The single-valued status columns of the wide table, in [`EventKind`] order.
const SINGLE_KINDS: [EventKind; 6] = [
    EventKind::Created,
    EventKind::Paid,
    EventKind::Shipped,
    EventKind::Received,
    EventKind::Completed,
    EventKind::Cancelled,
];

/// How many connections a store opens by default: enough for a few concurrent batches.
pub const CONNECTIONS_DEFAULT: usize = 4;
/// How long one call may take before it counts as an outage (its connection is dropped, so
/// the server rolls the transaction back).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Serializes concurrent schema creation across processes (any constant works).
const SCHEMA_LOCK: i64 = 0x686f_6c64_6661_7374;

/// A connected client and its prepared statements.
struct Session {
    client: Client,
    insert_keys: Statement,
    upsert_orders: Statement,
    upsert_bills: Statement,
    upsert_refunds: Statement,
}

/// An [`OrderStore`] on PostgreSQL. Clones share the connections.
#[derive(Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    slots: Vec<Mutex<Option<Session>>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PostgresStore")
            .field("connections", &self.shared.slots.len())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects with [`CONNECTIONS_DEFAULT`] connections; see [`PostgresStore::connect_with`].
    pub async fn connect(url: &str) -> Result<PostgresStore, AdapterError> {
        PostgresStore::connect_with(url, CONNECTIONS_DEFAULT).await
    }

    /// Connects to `url` (a libpq key-value string such as `host=127.0.0.1 port=5432
    /// user=postgres dbname=holdfast`, or a `postgresql://` URL), creates the schema if it is
    /// missing, and keeps up to `connections` (at least 1) connections, opened on demand.
    pub async fn connect_with(
        url: &str,
        connections: usize,
    ) -> Result<PostgresStore, AdapterError> {
        let mut config: Config =
            url.parse()
                .map_err(|error: tokio_postgres::Error| AdapterError::Config {
                    service: STORE,
                    detail: error.to_string(),
                })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives_idle(Duration::from_secs(10));
        let client = open(&config).await.map_err(|error| AdapterError::Connect {
            service: STORE,
            detail: error.to_string(),
        })?;
        create_schema(&client)
            .await
            .map_err(|error| AdapterError::Setup {
                service: STORE,
                detail: error.to_string(),
            })?;
        let session = Session::prepare(client)
            .await
            .map_err(|error| AdapterError::Setup {
                service: STORE,
                detail: error.to_string(),
            })?;
        let mut slots: Vec<Mutex<Option<Session>>> =
            (0..connections.max(1)).map(|_| Mutex::new(None)).collect();
        slots[0] = Mutex::new(Some(session));
        Ok(PostgresStore {
            shared: Arc::new(Shared {
                config,
                slots,
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// A free connection (or the next one in turn, waited for), reconnected if it was closed.
    async fn session(&self) -> Result<MutexGuard<'_, Option<Session>>, PortError> {
        let slots = &self.shared.slots;
        let start = self.shared.next.fetch_add(1, Ordering::Relaxed) % slots.len();
        let free =
            (0..slots.len()).find_map(|step| slots[(start + step) % slots.len()].try_lock().ok());
        let mut guard = match free {
            Some(guard) => guard,
            None => slots[start].lock().await,
        };
        if guard
            .as_ref()
            .is_some_and(|session| session.client.is_closed())
        {
            *guard = None;
        }
        if guard.is_none() {
            let reconnect = async {
                let client = open(&self.shared.config).await?;
                Session::prepare(client).await
            };
            // A server that accepts the connection but never answers is an outage too.
            let session = tokio::time::timeout(CALL_TIMEOUT, reconnect)
                .await
                .map_err(|_| unavailable(STORE, format!("no session within {CALL_TIMEOUT:?}")))?
                .map_err(|error| port_error(&error))?;
            *guard = Some(session);
        }
        Ok(guard)
    }

    /// Runs `call` on a session under [`CALL_TIMEOUT`]; after an outage the session is dropped
    /// so that the next call reconnects.
    async fn with_session<T, F>(&self, call: F) -> Result<T, PortError>
    where
        F: for<'s> FnOnce(&'s mut Session) -> CallFuture<'s, T>,
    {
        let mut guard = self.session().await?;
        let Some(session) = guard.as_mut() else {
            return Err(unavailable(STORE, "no session after connecting"));
        };
        let result = match tokio::time::timeout(CALL_TIMEOUT, call(session)).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(
                STORE,
                format!("no answer within {CALL_TIMEOUT:?}"),
            )),
        };
        if result.as_ref().is_err_and(PortError::is_outage) {
            *guard = None;
        }
        result
    }

    /// Every applied key with its application count (always 1: the primary key forbids more),
    /// for `holdfast verify` and the tests.
    pub async fn applications(&self) -> Result<BTreeMap<IdempotencyKey, u32>, PortError> {
        self.with_session(|session| {
            Box::pin(async move {
                let rows = session
                    .client
                    .query(
                        "SELECT order_id, status, discriminator FROM holdfast_keys",
                        &[],
                    )
                    .await
                    .map_err(|error| port_error(&error))?;
                let mut applications = BTreeMap::new();
                for row in rows {
                    *applications.entry(key_of(&row)?).or_insert(0) += 1;
                }
                Ok(applications)
            })
        })
        .await
    }

    /// Every application the key table records (order, status, the event id that claimed
    /// it), for the checker in [`crate::verify`].
    pub async fn ledger(&self) -> Result<Vec<Application>, PortError> {
        self.with_session(|session| {
            Box::pin(async move {
                let rows = session
                    .client
                    .query("SELECT order_id, status, event_id FROM holdfast_keys", &[])
                    .await
                    .map_err(|error| port_error(&error))?;
                let mut ledger = Vec::with_capacity(rows.len());
                for row in rows {
                    let status: &str = row.try_get(1).map_err(|error| port_error(&error))?;
                    let kind = EventKind::parse(status).ok_or_else(|| {
                        rejected(STORE, format!("unknown status {status:?} in holdfast_keys"))
                    })?;
                    ledger.push(Application {
                        order_id: row.try_get(0).map_err(|error| port_error(&error))?,
                        kind,
                        event_id: row.try_get(2).map_err(|error| port_error(&error))?,
                    });
                }
                Ok(ledger)
            })
        })
        .await
    }

    /// Every wide row by order id, read in one consistent snapshot.
    pub async fn rows(&self) -> Result<BTreeMap<String, OrderRow>, PortError> {
        self.with_session(|session| Box::pin(load_rows(&mut session.client, None)))
            .await
    }
}

/// The boxed future a [`PostgresStore::with_session`] call runs.
type CallFuture<'s, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, PortError>> + Send + 's>>;

/// Opens one connection and drives it on its own task.
async fn open(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "postgres connection ended");
        }
    });
    Ok(client)
}

async fn create_schema(client: &Client) -> Result<(), tokio_postgres::Error> {
    // CREATE ... IF NOT EXISTS races with itself across connections; the lock serializes it.
    client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA} COMMIT;"
        ))
        .await
}

impl Session {
    async fn prepare(client: Client) -> Result<Session, tokio_postgres::Error> {
        let insert_keys = client.prepare(INSERT_KEYS).await?;
        let upsert_orders = client.prepare(&upsert_orders_sql()).await?;
        let upsert_bills = client
            .prepare(&upsert_entries_sql("holdfast_bills"))
            .await?;
        let upsert_refunds = client
            .prepare(&upsert_entries_sql("holdfast_refunds"))
            .await?;
        Ok(Session {
            client,
            insert_keys,
            upsert_orders,
            upsert_bills,
            upsert_refunds,
        })
    }
}

const INSERT_KEYS: &str = "\
INSERT INTO holdfast_keys (order_id, status, discriminator, event_id) \
SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
ON CONFLICT DO NOTHING \
RETURNING order_id, status, discriminator";

/// `(at, event, amount)` of `new` sorts before that of `old` under [`Stamp::precedence`].
/// An absent amount sorts first, as `None` does in Rust; `new_event`/`old_event` NULL means
/// the column is unset.
fn wins_sql(new: &str, old: &str, prefix: &str) -> String {
    let tuple = |side: &str| {
        format!(
            "({side}.{prefix}at, {side}.{prefix}event, {side}.{prefix}amount IS NOT NULL, \
             COALESCE({side}.{prefix}amount, 0))"
        )
    };
    format!(
        "({new}.{prefix}event IS NOT NULL AND ({old}.{prefix}event IS NULL OR {} < {}))",
        tuple(new),
        tuple(old)
    )
}

/// The wide-row upsert: one row per order, each column group joined with the precedence rule.
fn upsert_orders_sql() -> String {
    let mut columns = vec!["order_id".to_owned(), "user_id".to_owned()];
    let mut types = vec!["text", "text"];
    let mut sets = vec!["user_id = CASE WHEN EXCLUDED.user_id <> '' AND \
                         (cur.user_id = '' OR EXCLUDED.user_id < cur.user_id) \
                         THEN EXCLUDED.user_id ELSE cur.user_id END"
        .to_owned()];
    for kind in SINGLE_KINDS {
        let prefix = format!("{}_", kind.as_str());
        let wins = wins_sql("EXCLUDED", "cur", &prefix);
        for (field, sql_type) in [("event", "text"), ("at", "bigint"), ("amount", "bigint")] {
            let column = format!("{prefix}{field}");
            sets.push(format!(
                "{column} = CASE WHEN {wins} THEN EXCLUDED.{column} ELSE cur.{column} END"
            ));
            columns.push(column);
            types.push(sql_type);
        }
    }
    let parameters: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(index, sql_type)| format!("${}::{sql_type}[]", index + 1))
        .collect();
    format!(
        "INSERT INTO holdfast_orders AS cur ({}) SELECT * FROM UNNEST({}) \
         ON CONFLICT (order_id) DO UPDATE SET {}",
        columns.join(", "),
        parameters.join(", "),
        sets.join(", ")
    )
}

/// The upsert of a repeating status (bills, refunds): one entry per event id; should one
/// event id ever come with two different stamps, the precedence rule picks the same one
/// whatever the order.
fn upsert_entries_sql(table: &str) -> String {
    let wins = "((EXCLUDED.at_ms, EXCLUDED.amount IS NOT NULL, COALESCE(EXCLUDED.amount, 0)) \
                < (cur.at_ms, cur.amount IS NOT NULL, COALESCE(cur.amount, 0)))";
    format!(
        "INSERT INTO {table} AS cur (order_id, event_id, at_ms, amount) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[]) \
         ON CONFLICT (order_id, event_id) DO UPDATE SET \
         at_ms = CASE WHEN {wins} THEN EXCLUDED.at_ms ELSE cur.at_ms END, \
         amount = CASE WHEN {wins} THEN EXCLUDED.amount ELSE cur.amount END"
    )
}

/// Maps a client error: a closed or broken connection, a server shutting down or not
/// accepting connections, exhausted resources, or a transient conflict (serialization
/// failure, deadlock) is an outage, retried without limit; any other server error refused
/// this one request.
fn port_error(error: &tokio_postgres::Error) -> PortError {
    if error.is_closed() {
        return unavailable(STORE, error);
    }
    if let Some(db_error) = error.as_db_error() {
        let code = db_error.code().code();
        let outage = code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P")
            || code == "40001"
            || code == "40P01";
        let detail = format!("{} ({code})", db_error.message());
        return if outage {
            unavailable(STORE, detail)
        } else {
            rejected(STORE, detail)
        };
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return unavailable(STORE, error);
        }
        source = cause.source();
    }
    rejected(STORE, error)
}

/// The key columns of an idempotency key: `''` stands for "no discriminator".
fn key_columns(key: &IdempotencyKey) -> (&str, &'static str, &str) {
    (
        &key.order_id,
        key.kind.as_str(),
        key.discriminator.as_deref().unwrap_or(""),
    )
}

fn key_of(row: &Row) -> Result<IdempotencyKey, PortError> {
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

impl OrderStore for PostgresStore {
    async fn apply_batch(&self, events: &[OrderEvent]) -> Result<Vec<ApplyOutcome>, PortError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let events = events.to_vec();
        self.with_session(move |session| Box::pin(apply_in(session, events)))
            .await
    }

    async fn load_rows(
        &self,
        order_ids: &[String],
    ) -> Result<BTreeMap<String, OrderRow>, PortError> {
        if order_ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let order_ids = order_ids.to_vec();
        self.with_session(move |session| {
            Box::pin(async move { load_rows(&mut session.client, Some(&order_ids)).await })
        })
        .await
    }
}

/// One batch, one transaction.
async fn apply_in(
    session: &mut Session,
    events: Vec<OrderEvent>,
) -> Result<Vec<ApplyOutcome>, PortError> {
    let keys: Vec<IdempotencyKey> = events.iter().map(IdempotencyKey::of).collect();
    // A key met again later in the batch is a duplicate of its first occurrence, as in
    // the in-memory store; only first occurrences go to the database.
    let mut seen: HashSet<&IdempotencyKey> = HashSet::with_capacity(keys.len());
    let first: Vec<bool> = keys.iter().map(|key| seen.insert(key)).collect();
    let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (index, key) in keys.iter().enumerate().filter(|(index, _)| first[*index]) {
        let (order_id, status, discriminator) = key_columns(key);
        columns.0.push(order_id);
        columns.1.push(status);
        columns.2.push(discriminator);
        columns.3.push(events[index].event_id.as_str());
    }

    let transaction = session
        .client
        .transaction()
        .await
        .map_err(|error| port_error(&error))?;
    let inserted = transaction
        .query(
            &session.insert_keys,
            &[&columns.0, &columns.1, &columns.2, &columns.3],
        )
        .await
        .map_err(|error| port_error(&error))?;
    let mut new_keys: HashSet<IdempotencyKey> = HashSet::with_capacity(inserted.len());
    for row in &inserted {
        new_keys.insert(key_of(row)?);
    }
    let outcomes: Vec<ApplyOutcome> = keys
        .iter()
        .zip(&first)
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

    if !events.is_empty() {
        let partial = OrderRow::fold(&events);
        let orders = OrderColumns::of(&partial);
        let bills = EntryColumns::of(&partial, |row| &row.bills);
        let refunds = EntryColumns::of(&partial, |row| &row.refunds);
        // Issued together: the client pipelines them on the connection.
        let order_parameters = orders.parameters();
        let orders_done = transaction.execute(&session.upsert_orders, &order_parameters);
        let bills_done = async {
            if bills.order_ids.is_empty() {
                return Ok(0);
            }
            transaction
                .execute(&session.upsert_bills, &bills.parameters())
                .await
        };
        let refunds_done = async {
            if refunds.order_ids.is_empty() {
                return Ok(0);
            }
            transaction
                .execute(&session.upsert_refunds, &refunds.parameters())
                .await
        };
        tokio::try_join!(orders_done, bills_done, refunds_done)
            .map_err(|error| port_error(&error))?;
    }
    transaction
        .commit()
        .await
        .map_err(|error| port_error(&error))?;
    Ok(outcomes)
}

/// The wide-row upsert's parameters, one array per column.
struct OrderColumns<'a> {
    order_ids: Vec<&'a str>,
    user_ids: Vec<&'a str>,
    /// One entry per single-valued kind, in [`SINGLE_KINDS`] order.
    stamps: Vec<StampColumns<'a>>,
}

/// One single-valued status's column group as arrays: event ids, times, amounts (`None`
/// where the order's partial row has no such status).
type StampColumns<'a> = (Vec<Option<&'a str>>, Vec<Option<i64>>, Vec<Option<i64>>);

impl<'a> OrderColumns<'a> {
    fn of(rows: &'a [OrderRow]) -> OrderColumns<'a> {
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

    fn parameters(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
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
fn single(row: &OrderRow, kind: EventKind) -> Option<&Stamp> {
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

fn single_mut(row: &mut OrderRow, kind: EventKind) -> Option<&mut Option<Stamp>> {
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
struct EntryColumns<'a> {
    order_ids: Vec<&'a str>,
    event_ids: Vec<&'a str>,
    times: Vec<i64>,
    amounts: Vec<Option<i64>>,
}

impl<'a> EntryColumns<'a> {
    fn of(
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

    fn parameters(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 4] {
        [&self.order_ids, &self.event_ids, &self.times, &self.amounts]
    }
}

/// Reads wide rows (all, or those of `order_ids`) with their bills and refunds, in one
/// read-only snapshot so that a concurrent commit is seen whole or not at all.
async fn load_rows(
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
    let filter = "WHERE $1::text[] IS NULL OR order_id = ANY($1)";
    let mut stamp_columns = Vec::new();
    for kind in SINGLE_KINDS {
        let name = kind.as_str();
        stamp_columns.push(format!("{name}_event, {name}_at, {name}_amount"));
    }
    let orders_sql = format!(
        "SELECT order_id, user_id, {} FROM holdfast_orders {filter}",
        stamp_columns.join(", ")
    );
    let bills_sql =
        format!("SELECT order_id, event_id, at_ms, amount FROM holdfast_bills {filter}");
    let refunds_sql =
        format!("SELECT order_id, event_id, at_ms, amount FROM holdfast_refunds {filter}");
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
        rows.insert(id, row);
    }
    for (records, refunds) in [(&bills, false), (&refunds, true)] {
        for record in records {
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
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the upsert's placeholders and the arrays bound to them line up (a mismatch would
    /// only show as a server error at run time). Method: count both for a one-row batch.
    #[test]
    fn order_upsert_parameters_match_its_placeholders() {
        let sql = upsert_orders_sql();
        let rows = vec![OrderRow::new("o1", "u1")];
        let count = OrderColumns::of(&rows).parameters().len();
        assert_eq!(count, 2 + 3 * SINGLE_KINDS.len());
        assert!(sql.contains(&format!("${count}::")));
        assert!(!sql.contains(&format!("${}::", count + 1)));
        for kind in SINGLE_KINDS {
            assert!(sql.contains(&format!("{}_event = CASE", kind.as_str())));
        }
    }

    /// Goal: the key columns round-trip through the `''` stand-in for "no discriminator".
    /// Method: map keys of a single and a repeating kind to columns.
    #[test]
    fn key_columns_use_empty_for_no_discriminator() {
        let single = IdempotencyKey {
            order_id: "o".into(),
            kind: EventKind::Paid,
            discriminator: None,
        };
        let repeating = IdempotencyKey {
            order_id: "o".into(),
            kind: EventKind::Refunded,
            discriminator: Some("e9".into()),
        };
        assert_eq!(key_columns(&single), ("o", "paid", ""));
        assert_eq!(key_columns(&repeating), ("o", "refunded", "e9"));
    }
}

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
//! Connections: a `deadpool-postgres` pool of a few clients, each used by one call at a time,
//! with the statements prepared once per connection (`prepare_cached`). A connection that
//! closed (PostgreSQL restarted) is replaced when the pool hands it out again; the call that
//! met the closure fails as [`PortError::Unavailable`] and the pipeline retries it. A call
//! that timed out takes its connection out of the pool (dropping it makes the server roll the
//! transaction back).
//!
//! Here: connections, sessions and the port; `sql` builds the statements, `batch` runs a
//! batch's transaction, `read` reads rows and keys back.

mod batch;
mod progress;
mod read;
mod sql;

use super::{rejected, unavailable, with_causes, AdapterError, STORE};
use crate::event::{EventKind, OrderEvent};
use crate::idempotency::IdempotencyKey;
use crate::ports::{
    ApplyOutcome, CommittedOffset, OrderStore, PartitionId, PortError, ProgressWrite,
};
use crate::verify::Application;
use crate::widetable::OrderRow;
use batch::apply_in;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use read::{key_of, load_rows};
use sql::{upsert_entries_sql, upsert_orders_sql, INSERT_KEYS};
use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;
use tokio_postgres::{Client, Config, NoTls, Statement};

/// The schema, created when missing. Text columns use the "C" collation so that SQL compares
/// ids byte by byte, exactly as Rust's `String` ordering does (the merge rule relies on it).
/// Amounts are never negative (the decoder refuses them); the checks make the database say
/// so too.
pub const SCHEMA: &str = include_str!("../schema.sql");

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
/// How long the server lets one of the store's sessions sit idle inside a transaction before
/// it ends the session, rolling the transaction back and releasing its locks. The store sends
/// a transaction's statements back to back, so only a frozen or cut-off client waits this
/// long; without the limit, the locks of a member frozen before its commit (its socket still
/// open) would stall the next owner of its partitions for as long as the member stays frozen.
const IDLE_IN_TRANSACTION_MAX: Duration = Duration::from_secs(10);
/// Serializes concurrent schema creation across processes (any constant works).
const SCHEMA_LOCK: i64 = 0x686f_6c64_6661_7374;

/// A pooled client and its prepared statements.
struct Session {
    client: Object,
    insert_keys: Statement,
    upsert_orders: Statement,
    upsert_bills: Statement,
    upsert_refunds: Statement,
    write_progress: Statement,
}

/// An [`OrderStore`] on PostgreSQL. Clones share the connections.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// Names this consumer's progress rows (`progress = store`): its group and topic.
    scope: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PostgresStore")
            .field("connections", &self.pool.status().max_size)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Where `url` points, without its password: hosts, ports, database and user.
    pub fn describe_address(url: &str) -> String {
        let Ok(config) = url.parse::<Config>() else {
            return "(an unreadable address)".into();
        };
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
            .map(|(host, port)| match host {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
            })
            .collect();
        format!(
            "{}/{} (user {})",
            hosts.join(","),
            config.get_dbname().unwrap_or("?"),
            config.get_user().unwrap_or("?")
        )
    }

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
        limit_idle_transactions(&mut config);
        let client = open(&config).await.map_err(|error| {
            let detail = with_causes(&error);
            match port_error(&error) {
                PortError::Unavailable { .. } => AdapterError::Unavailable {
                    service: STORE,
                    detail,
                },
                _ => AdapterError::Connect {
                    service: STORE,
                    detail,
                },
            }
        })?;
        create_schema(&client)
            .await
            .map_err(|error| AdapterError::Setup {
                service: STORE,
                detail: with_causes(&error),
            })?;
        drop(client);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(connections.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CALL_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|error| AdapterError::Setup {
                service: STORE,
                detail: error.to_string(),
            })?;
        Ok(PostgresStore {
            pool,
            scope: String::new(),
        })
    }

    /// The store writing and claiming progress rows under `scope` (the consumer group and
    /// topic, so that several consumers can share one database).
    pub fn with_progress_scope(mut self, scope: impl Into<String>) -> PostgresStore {
        self.scope = scope.into();
        self
    }

    /// A pooled connection (opened if the pool has none free) with its statements.
    async fn session(&self) -> Result<Session, PortError> {
        let client = self.pool.get().await.map_err(|error| pool_error(&error))?;
        Session::prepare(client)
            .await
            .map_err(|error| port_error(&error))
    }

    /// Runs `call` on a session under [`CALL_TIMEOUT`]; after an outage the connection is
    /// taken out of the pool, so that the next call opens a fresh one.
    async fn with_session<T>(
        &self,
        call: impl AsyncFnOnce(&mut Session) -> Result<T, PortError>,
    ) -> Result<T, PortError> {
        let mut session = self.session().await?;
        let result = match tokio::time::timeout(CALL_TIMEOUT, call(&mut session)).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(
                STORE,
                format!("no answer within {CALL_TIMEOUT:?}"),
            )),
        };
        if result.as_ref().is_err_and(PortError::is_outage) {
            drop(Object::take(session.client));
        }
        result
    }

    /// Every applied key with its application count (always 1: the primary key forbids more),
    /// for `holdfast verify` and the tests.
    pub async fn applications(&self) -> Result<BTreeMap<IdempotencyKey, u32>, PortError> {
        self.with_session(async |session| {
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
        .await
    }

    /// Every application the key table records (order, status, the event id that claimed
    /// it), for the checker in [`crate::verify`].
    pub async fn ledger(&self) -> Result<Vec<Application>, PortError> {
        self.with_session(async |session| {
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
        .await
    }

    /// Every wide row by order id, read in one consistent snapshot.
    pub async fn rows(&self) -> Result<BTreeMap<String, OrderRow>, PortError> {
        self.with_session(async |session| load_rows(&mut session.client, None).await)
            .await
    }
}

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

/// The upserts' SQL, built once: a session looks its statements up by their text every batch.
static UPSERT_ORDERS: LazyLock<String> = LazyLock::new(upsert_orders_sql);
static UPSERT_BILLS: LazyLock<String> = LazyLock::new(|| upsert_entries_sql("holdfast_bills"));
static UPSERT_REFUNDS: LazyLock<String> = LazyLock::new(|| upsert_entries_sql("holdfast_refunds"));

impl Session {
    /// The statements come from the connection's cache after its first call.
    async fn prepare(client: Object) -> Result<Session, tokio_postgres::Error> {
        let insert_keys = client.prepare_cached(INSERT_KEYS).await?;
        let upsert_orders = client.prepare_cached(&UPSERT_ORDERS).await?;
        let upsert_bills = client.prepare_cached(&UPSERT_BILLS).await?;
        let upsert_refunds = client.prepare_cached(&UPSERT_REFUNDS).await?;
        let write_progress = client.prepare_cached(progress::WRITE).await?;
        Ok(Session {
            client,
            insert_keys,
            upsert_orders,
            upsert_bills,
            upsert_refunds,
            write_progress,
        })
    }
}

/// Maps a pool error: waiting for a connection too long is an outage, as is every failure to
/// open one; a server error while opening is classified as [`port_error`] does.
fn pool_error(error: &PoolError) -> PortError {
    match error {
        PoolError::Backend(error) => port_error(error),
        other => unavailable(STORE, other),
    }
}

/// Adds [`IDLE_IN_TRANSACTION_MAX`] to the sessions' options, unless the address sets its own
/// `idle_in_transaction_session_timeout`.
fn limit_idle_transactions(config: &mut Config) {
    let options = config.get_options().unwrap_or_default();
    if options.contains("idle_in_transaction_session_timeout") {
        return;
    }
    let limit = format!(
        "-c idle_in_transaction_session_timeout={}",
        IDLE_IN_TRANSACTION_MAX.as_millis()
    );
    let options = match options {
        "" => limit,
        options => format!("{options} {limit}"),
    };
    config.options(&options);
}

/// Maps a client error: a closed or broken connection, a server shutting down or not
/// accepting connections, a session the server ended, exhausted resources, or a transient
/// conflict (serialization failure, deadlock) is an outage, retried without limit; any other
/// server error refused this one request.
fn port_error(error: &tokio_postgres::Error) -> PortError {
    if error.is_closed() {
        return unavailable(STORE, error);
    }
    if let Some(db_error) = error.as_db_error() {
        let code = db_error.code().code();
        let detail = format!("{} ({code})", db_error.message());
        return if is_outage_code(code) {
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

/// Whether a server error's SQLSTATE `code` is an outage: a connection exception (08), the
/// server out of resources (53), shutting down or not accepting connections (57P), a
/// transient conflict (serialization failure 40001, deadlock 40P01), or a session the server
/// ended while it sat idle in its transaction (25P03: the client was frozen, see
/// `IDLE_IN_TRANSACTION_MAX`); a fresh session may succeed.
fn is_outage_code(code: &str) -> bool {
    ["08", "53", "57P"]
        .iter()
        .any(|class| code.starts_with(class))
        || ["40001", "40P01", "25P03"].contains(&code)
}

impl OrderStore for PostgresStore {
    async fn apply_batch(
        &self,
        events: &[OrderEvent],
        progress: &[ProgressWrite],
    ) -> Result<Vec<ApplyOutcome>, PortError> {
        if events.is_empty() && progress.is_empty() {
            return Ok(Vec::new());
        }
        self.with_session(async |session| apply_in(session, events, progress, &self.scope).await)
            .await
    }

    async fn claim_progress(
        &self,
        partition: PartitionId,
        owner: i32,
    ) -> Result<Option<CommittedOffset>, PortError> {
        self.with_session(async |session| {
            progress::claim(&session.client, &self.scope, partition, owner).await
        })
        .await
    }

    async fn load_rows(
        &self,
        order_ids: &[String],
    ) -> Result<BTreeMap<String, OrderRow>, PortError> {
        if order_ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        self.with_session(async |session| load_rows(&mut session.client, Some(order_ids)).await)
            .await
    }
}

#[cfg(test)]
mod tests;

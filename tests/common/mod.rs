//! Helpers shared by the integration tests against the real services (each test binary that
//! needs them declares `mod common;` and uses what it needs).
#![allow(dead_code)]

pub mod freezer;
pub mod kafka;

use holdfast::adapters::PostgresStore;

/// A service address from `.services/env`; a missing one is a failure, never a skip.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run scripts/services-up, then `source .services/env`")
    })
}

/// Files and directories a test writes under the temporary directory (truth files, recorded
/// histories): removed when the test passes, kept when it fails so that they can be read.
pub struct Scratch(pub Vec<std::path::PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for the failure: {:?}", self.0);
            return;
        }
        for path in &self.0 {
            let _ = std::fs::remove_dir_all(path);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Empties Redis, as a restart without persistence would.
pub async fn flushall(url: &str) {
    let mut connection = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut connection)
        .await
        .unwrap();
}

/// A store in a fresh PostgreSQL schema of its own, so that tests never see each other's rows.
pub async fn fresh_store(schema: &str) -> PostgresStore {
    fresh_store_with(schema, holdfast::adapters::postgres::CONNECTIONS_DEFAULT).await
}

/// [`fresh_store`] with `connections` connections.
pub async fn fresh_store_with(schema: &str, connections: usize) -> PostgresStore {
    let url = env("HOLDFAST_POSTGRES_URL");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| panic!("cannot reach PostgreSQL at {url:?}: {error}"));
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};"
        ))
        .await
        .unwrap();
    PostgresStore::connect_with(
        &format!("{url} options='-c search_path={schema}'"),
        connections,
    )
    .await
    .unwrap()
}

/// Runs `scripts/services-up` with `args` on a blocking thread, so that the consumer keeps
/// running (and meets the outage) meanwhile.
pub async fn services_up(args: &'static [&'static str]) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services-up");
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&script).args(args).status()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "scripts/services-up {args:?} failed");
}

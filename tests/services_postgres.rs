//! The PostgreSQL order store against a real PostgreSQL (started by `scripts/services-up`; the
//! connection string comes from `HOLDFAST_POSTGRES_URL`). A missing variable is a failure,
//! never a skip. Each test works in a schema of its own, recreated at its start.
//!
//! The reference for every answer is the in-memory store: the adapter must behave exactly like
//! `MemoryStore`, batch by batch.

mod common;

use common::freezer::Freezer;
use common::{env, fresh_store, fresh_store_with};
use holdfast::adapters::PostgresStore;
use holdfast::event::{EventKind, OrderEvent};
use holdfast::idempotency::memory::MemoryStore;
use holdfast::idempotency::IdempotencyKey;
use holdfast::ports::{ApplyOutcome, OrderStore, PortError};
use holdfast::widetable::OrderRow;
use holdfast::workload::{Workload, WorkloadConfig};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio::sync::RwLock;

/// One order's row, through the batched read the compensator uses.
async fn load_row(store: &impl OrderStore, order_id: &str) -> Result<Option<OrderRow>, PortError> {
    Ok(store
        .load_rows(&[order_id.to_string()])
        .await?
        .remove(order_id))
}

/// The restart test takes this for writing; the others for reading.
static SERVICE: RwLock<()> = RwLock::const_new(());

fn event(event_id: &str, order_id: &str, kind: EventKind, at_ms: i64) -> OrderEvent {
    OrderEvent {
        event_id: event_id.into(),
        order_id: order_id.into(),
        user_id: format!("u-{event_id}"),
        kind,
        amount_minor: kind.carries_amount().then_some(100 + at_ms),
        event_time_ms: at_ms,
        payload: bytes::Bytes::new(),
    }
}

/// Every valid event of a workload with duplicates and disorder, as delivered (repeats kept).
fn workload_events(seed: u64, orders: usize) -> Vec<OrderEvent> {
    let config = WorkloadConfig {
        seed,
        orders,
        duplicate_ratio: 0.2,
        reorder_ratio: 0.3,
        rebind_ratio: 0.2,
        ..WorkloadConfig::default()
    };
    Workload::generate(&config)
        .unwrap()
        .messages
        .into_iter()
        .filter_map(|message| message.event)
        .collect()
}

/// Same keys, different event ids, times and user ids: which one wins depends only on the
/// merge rule for repeating kinds, and on arrival for single ones (the key admits one).
fn with_conflicts(mut events: Vec<OrderEvent>, rng: &mut SmallRng) -> Vec<OrderEvent> {
    let extra: Vec<OrderEvent> = events
        .iter()
        .filter(|_| rng.random_bool(0.05))
        .map(|original| OrderEvent {
            event_id: format!("{}-again", original.event_id),
            user_id: format!("{}x", original.user_id),
            event_time_ms: original.event_time_ms - 5,
            ..original.clone()
        })
        .collect();
    events.extend(extra);
    events
}

/// Splits events into batches of random sizes.
fn batches(events: &[OrderEvent], rng: &mut SmallRng) -> Vec<Vec<OrderEvent>> {
    let mut batches = Vec::new();
    let mut rest = events;
    while !rest.is_empty() {
        let size = rng.random_range(1..=60).min(rest.len());
        batches.push(rest[..size].to_vec());
        rest = &rest[size..];
    }
    batches
}

/// Goal: the adapter gives exactly the in-memory store's answers, and the stored rows are the
/// fold of the applied events. Method: a workload with duplicates, disorder and same-key
/// conflicts, shuffled, cut into random batches, some batches applied twice; both stores get
/// the same batches; outcomes, keys and rows are compared.
#[tokio::test]
async fn shuffled_batches_match_the_in_memory_store_and_the_fold() {
    let _shared = SERVICE.read().await;
    let store = fresh_store("hf_test_shuffled").await;
    let memory = MemoryStore::new();
    let mut rng = SmallRng::seed_from_u64(7);
    let mut events = with_conflicts(workload_events(3, 400), &mut rng);
    events.shuffle(&mut rng);
    let mut applied_total = 0;
    for batch in batches(&events, &mut rng) {
        let repeats = if rng.random_bool(0.1) { 2 } else { 1 };
        for _ in 0..repeats {
            let outcomes = store.apply_batch(&batch, &[]).await.unwrap();
            assert_eq!(outcomes, memory.apply_batch(&batch, &[]).await.unwrap());
            applied_total += outcomes
                .iter()
                .filter(|outcome| **outcome == ApplyOutcome::Applied)
                .count();
        }
    }
    let applications = store.applications().await.unwrap();
    assert_eq!(applications, memory.applications());
    assert_eq!(applications.len(), applied_total, "each key applied once");
    assert!(applications.values().all(|&count| count == 1));
    let rows = store.rows().await.unwrap();
    assert_eq!(rows, memory.rows());
    // Every event, applied or a rival joined under a held key, is in the rows.
    let folded = OrderRow::fold(events.iter());
    assert_eq!(rows.values().cloned().collect::<Vec<_>>(), folded);
    let mut asked: Vec<String> = folded
        .iter()
        .step_by(37)
        .map(|row| row.order_id.clone())
        .collect();
    let expected: BTreeMap<String, OrderRow> = folded
        .iter()
        .step_by(37)
        .map(|row| (row.order_id.clone(), row.clone()))
        .collect();
    asked.push("no-such-order".into());
    assert_eq!(store.load_rows(&asked).await.unwrap(), expected);
    assert!(store.load_rows(&[]).await.unwrap().is_empty());
}

/// Goal: the wide row does not depend on arrival order when batches commit concurrently.
/// Method: the same events (rivals under one key among them) cut into batches, applied by four
/// tasks at once (outages such as a deadlock are retried, as the pipeline would); the rows
/// must equal the fold of every event, and every key must be applied once.
#[tokio::test]
async fn concurrent_batches_merge_to_the_fold() {
    let _shared = SERVICE.read().await;
    let store = fresh_store("hf_test_concurrent").await;
    let mut rng = SmallRng::seed_from_u64(11);
    let mut events = workload_events(5, 300);
    events.shuffle(&mut rng);
    let all = batches(&events, &mut rng);
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let store = store.clone();
        let mine: Vec<Vec<OrderEvent>> = all.iter().skip(worker).step_by(4).cloned().collect();
        tasks.push(tokio::spawn(async move {
            let mut applied = Vec::new();
            for batch in mine {
                let outcomes = loop {
                    match store.apply_batch(&batch, &[]).await {
                        Ok(outcomes) => break outcomes,
                        Err(error) if error.is_outage() => continue,
                        Err(error) => panic!("{error}"),
                    }
                };
                applied.extend(
                    batch
                        .into_iter()
                        .zip(outcomes)
                        .filter(|(_, outcome)| *outcome == ApplyOutcome::Applied)
                        .map(|(event, _)| event),
                );
            }
            applied
        }));
    }
    let mut applied = Vec::new();
    for task in tasks {
        applied.extend(task.await.unwrap());
    }
    let distinct: std::collections::BTreeSet<IdempotencyKey> =
        events.iter().map(IdempotencyKey::of).collect();
    assert_eq!(
        applied.len(),
        distinct.len(),
        "every key applied exactly once"
    );
    let rows = store.rows().await.unwrap();
    assert_eq!(
        rows.into_values().collect::<Vec<_>>(),
        OrderRow::fold(events.iter())
    );
}

/// Goal: an in-batch repeat of a key is applied once, and a rival (another event id under the
/// same key) still reaches the row by the conflict rule, whatever its place in the batch;
/// repeating kinds with different event ids are not duplicates. Method: one batch, compared
/// with the in-memory store and checked by hand.
#[tokio::test]
async fn in_batch_repeats_apply_once_and_rivals_join_by_the_rule() {
    let _shared = SERVICE.read().await;
    let store = fresh_store("hf_test_in_batch").await;
    let memory = MemoryStore::new();
    let paid = event("e2", "o1", EventKind::Paid, 20);
    let mut paid_retry = paid.clone();
    paid_retry.event_id = "e2-retry".into();
    paid_retry.event_time_ms = 1;
    let batch = vec![
        event("e1", "o1", EventKind::Created, 10),
        paid.clone(),
        paid.clone(),
        paid_retry,
        event("r1", "o1", EventKind::Refunded, 30),
        event("r2", "o1", EventKind::Refunded, 31),
        event("r1", "o1", EventKind::Refunded, 30),
    ];
    use ApplyOutcome::*;
    let expected = vec![
        Applied, Applied, Duplicate, Duplicate, Applied, Applied, Duplicate,
    ];
    assert_eq!(store.apply_batch(&batch, &[]).await.unwrap(), expected);
    assert_eq!(memory.apply_batch(&batch, &[]).await.unwrap(), expected);
    let row = load_row(&store, "o1").await.unwrap().unwrap();
    assert_eq!(
        row.paid.as_ref().unwrap().event_id,
        "e2-retry",
        "the earlier rival wins although it came later"
    );
    assert_eq!(row.refunds.len(), 2);
    assert_eq!(row.user_id, "u-e1", "the smallest non-empty user id");
    assert_eq!(Some(&row), memory.rows().get("o1"));
}

/// Goal: a batch that fails mid-way commits nothing, is a rejection (not an outage), and
/// leaves the store usable. Method: a batch whose last event violates a column constraint
/// (a negative amount, which the wide-row merge writes after the keys were inserted), and one
/// whose id holds a NUL byte (refused by the server's text type).
#[tokio::test]
async fn a_failed_batch_commits_nothing() {
    let _shared = SERVICE.read().await;
    let store = fresh_store("hf_test_rollback").await;
    let good = event("e1", "o1", EventKind::Created, 1);
    let mut negative = event("e2", "o2", EventKind::Paid, 2);
    negative.amount_minor = Some(-5);
    let error = store
        .apply_batch(&[good.clone(), negative], &[])
        .await
        .unwrap_err();
    assert!(matches!(error, PortError::Rejected { .. }), "{error}");
    let mut nul = event("e3", "o3\0", EventKind::Created, 3);
    nul.user_id = "u".into();
    let error = store
        .apply_batch(&[good.clone(), nul], &[])
        .await
        .unwrap_err();
    assert!(matches!(error, PortError::Rejected { .. }), "{error}");
    assert!(
        store.applications().await.unwrap().is_empty(),
        "no key of a rolled-back batch is there"
    );
    assert_eq!(load_row(&store, "o1").await.unwrap(), None);
    assert_eq!(
        store.apply_batch(&[good], &[]).await.unwrap(),
        vec![ApplyOutcome::Applied]
    );
}

/// Goal: the store survives a PostgreSQL restart: calls during it fail as outages, later
/// calls reconnect, committed data is kept. Method: apply, restart with
/// `scripts/services-up --restart postgres`, apply again until it succeeds. One connection, so
/// that the call after the restart must replace the very connection the restart broke.
#[tokio::test]
async fn reconnects_after_a_postgres_restart() {
    let _exclusive = SERVICE.write().await;
    let store = fresh_store_with("hf_test_restart", 1).await;
    let first = event("e1", "o1", EventKind::Created, 1);
    store
        .apply_batch(std::slice::from_ref(&first), &[])
        .await
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services-up");
    let status = Command::new(&script)
        .args(["--restart", "postgres"])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{} --restart postgres failed",
        script.display()
    );
    let second = event("e2", "o1", EventKind::Paid, 2);
    let mut outages = 0;
    let outcomes = loop {
        match store
            .apply_batch(&[first.clone(), second.clone()], &[])
            .await
        {
            Ok(outcomes) => break outcomes,
            Err(error) => {
                assert!(error.is_outage(), "a restart is an outage: {error}");
                outages += 1;
                assert!(outages < 100, "no answer 10 s after the restart: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(
        outcomes,
        vec![ApplyOutcome::Duplicate, ApplyOutcome::Applied]
    );
    // The broken connection is either seen closed before use (no error) or fails one call.
    assert!(outages <= 1, "{outages} failed calls after the restart");
    let row = load_row(&store, "o1").await.unwrap().unwrap();
    assert_eq!(row, OrderRow::fold([&first, &second])[0]);
}

/// Goal: the SQL merge itself is the join of `OrderRow`, not "first writer wins": when a key
/// is removed behind the store's back (a restore, a rebuild by replay) and another event of
/// the same key arrives, the smaller `(at_ms, event_id)` wins the column whatever the arrival
/// order, and a bill's entry keeps its smaller stamp. Method: apply, delete the key row with
/// raw SQL, apply a competitor; compare with the fold of all events, for both arrival orders.
#[tokio::test]
async fn the_sql_merge_is_the_row_join_whatever_the_arrival_order() {
    let _shared = SERVICE.read().await;
    let late_paid = event("p-late", "o1", EventKind::Paid, 30);
    let early_paid = event("p-early", "o1", EventKind::Paid, 10);
    let tie_paid = event("p-a", "o1", EventKind::Paid, 10); // same time, smaller event id
    let bill = event("b1", "o1", EventKind::Billed, 50);
    let mut earlier_bill = bill.clone();
    earlier_bill.event_time_ms = 40;
    earlier_bill.amount_minor = Some(7);
    let events = [late_paid, early_paid, tie_paid, bill, earlier_bill];
    let expected = OrderRow::fold(events.iter()).remove(0);
    assert_eq!(expected.paid.as_ref().unwrap().event_id, "p-a");
    assert_eq!(expected.bills["b1"].at_ms, 40);

    let url = env("HOLDFAST_POSTGRES_URL");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    for (round, order) in [[0, 1, 2, 3, 4], [4, 2, 0, 3, 1], [2, 4, 1, 0, 3]]
        .iter()
        .enumerate()
    {
        let schema = format!("hf_test_join_{round}");
        let store = fresh_store(&schema).await;
        for &index in order {
            let outcomes = store
                .apply_batch(&events[index..=index], &[])
                .await
                .unwrap();
            assert_eq!(outcomes, vec![ApplyOutcome::Applied]);
            // Forget every key, so that the next event of the same key is merged again.
            client
                .batch_execute(&format!("DELETE FROM {schema}.holdfast_keys"))
                .await
                .unwrap();
        }
        let row = load_row(&store, "o1").await.unwrap().unwrap();
        assert_eq!(row, expected, "arrival order {order:?}");
    }
}

/// Goal: while PostgreSQL is down every call is an outage, never a rejection (an outage must
/// not dead-letter anything), and the same store works again once it is back. Method:
/// `scripts/services-up --stop postgres`, call every method, `scripts/services-up`, retry.
#[tokio::test]
async fn a_stopped_postgres_is_an_outage_then_recovers() {
    let _exclusive = SERVICE.write().await;
    let store = fresh_store("hf_test_stopped").await;
    let created = event("e1", "o1", EventKind::Created, 1);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services-up");
    assert!(Command::new(&script)
        .args(["--stop", "postgres"])
        .status()
        .unwrap()
        .success());
    let applied = store.apply_batch(std::slice::from_ref(&created), &[]).await;
    let loaded = load_row(&store, "o1").await;
    // Start again before asserting, so that a failure leaves the services up.
    assert!(Command::new(&script).status().unwrap().success());
    for error in [applied.unwrap_err(), loaded.unwrap_err()] {
        assert!(error.is_outage(), "{error}");
    }
    assert_eq!(
        store
            .apply_batch(std::slice::from_ref(&created), &[])
            .await
            .unwrap(),
        vec![ApplyOutcome::Applied]
    );
}

/// Goal: a database that does not exist is refused at once with the server's own message,
/// not taken for an outage to wait out. Method: connect to the running server, naming a
/// database it does not have.
#[tokio::test]
async fn a_wrong_database_is_refused_with_the_servers_message() {
    let url = env("HOLDFAST_POSTGRES_URL");
    let wrong = url.replace("dbname=holdfast", "dbname=hf_no_such_db");
    assert_ne!(
        wrong, url,
        "the test expects a key-value URL naming dbname=holdfast"
    );
    let Err(error) = PostgresStore::connect(&wrong).await else {
        panic!("a missing database is accepted");
    };
    assert!(!error.is_unavailable(), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("hf_no_such_db") && text.contains("does not exist"),
        "{text}"
    );
}

/// Goal: `holdfast` started while PostgreSQL is down waits for it (logging its attempts) and
/// carries on once it is back, instead of failing at once. Method: stop PostgreSQL, start
/// `holdfast verify`, start PostgreSQL 3 s later; the command must get past start-up (its
/// verdict on this shared database does not matter here).
#[tokio::test]
async fn the_command_line_waits_for_a_postgres_that_comes_back() {
    let _exclusive = SERVICE.write().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services-up");
    assert!(Command::new(&script)
        .args(["--stop", "postgres"])
        .status()
        .unwrap()
        .success());
    let child = Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args([
            "verify",
            "--truth",
            "/dev/null",
            "--connect-timeout-s",
            "60",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(Command::new(&script).status().unwrap().success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not answering yet"), "{stderr}");
    assert!(stderr.contains("connected"), "{stderr}");
    assert_ne!(output.status.code(), Some(2), "{stderr}");
}

/// Goal: a user the server does not know is refused at once with the server's own message.
/// Method: connect to the running server as a role it does not have.
#[tokio::test]
async fn an_unknown_user_is_refused_with_the_servers_message() {
    let url = env("HOLDFAST_POSTGRES_URL");
    let Some(at) = url.find("user=") else {
        panic!("the test expects a key-value URL naming a user: {url}");
    };
    let end = url[at..].find(' ').map_or(url.len(), |space| at + space);
    let wrong = format!("{}user=hf_no_such_role{}", &url[..at], &url[end..]);
    let Err(error) = PostgresStore::connect(&wrong).await else {
        panic!("an unknown role is accepted");
    };
    assert!(!error.is_unavailable(), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("hf_no_such_role") && text.contains("does not exist"),
        "{text}"
    );
}

/// One progress write of partition `partition` by generation `owner`, at `offset`.
fn progress(partition: i32, owner: i32, offset: i64) -> holdfast::ports::ProgressWrite {
    holdfast::ports::ProgressWrite {
        partition,
        owner,
        progress: holdfast::ports::CommittedOffset {
            offset,
            metadata: Some(format!("hf:{offset}")),
        },
    }
}

/// Whether a call was refused as fenced (`Some(true)`), answered (`Some(false)`), or failed
/// otherwise (`None`).
fn fenced<T>(result: &Result<T, PortError>) -> Option<bool> {
    match result {
        Ok(_) => Some(false),
        Err(PortError::Fenced { .. }) => Some(true),
        Err(_) => None,
    }
}

/// Goal: the PostgreSQL progress rows behave as the in-memory store's: a claim returns what
/// was stored and is refused to an earlier generation; a transaction writing under a
/// generation that no longer holds the row (or one that never claimed it) commits nothing,
/// not even its events; a write behind the stored point keeps the stored progress; rows are
/// kept apart by scope. Method: one sequence of claims and transactions on both stores,
/// answer by answer.
#[tokio::test]
async fn progress_rows_are_claimed_and_fenced_by_generation() {
    let _shared = SERVICE.read().await;
    let store = fresh_store("hf_test_progress")
        .await
        .with_progress_scope("g/orders");
    let memory = MemoryStore::new();
    let e = |id: &str| event(id, &format!("o-{id}"), EventKind::Created, 1);
    for (step, (claim, batch)) in [
        (Some((0, 1)), None),
        (None, Some((e("e1"), vec![progress(0, 1, 5)]))),
        (Some((0, 1)), None),
        (None, Some((e("e2"), vec![progress(0, 1, 3)]))),
        (Some((0, 2)), None),
        (None, Some((e("e3"), vec![progress(0, 1, 8)]))),
        (Some((0, 1)), None),
        (
            None,
            Some((e("e4"), vec![progress(0, 2, 9), progress(1, 2, 1)])),
        ),
        (None, Some((e("e5"), vec![progress(0, 2, 9)]))),
        (Some((0, 2)), None),
    ]
    .into_iter()
    .enumerate()
    {
        if let Some((partition, owner)) = claim {
            let real = store.claim_progress(partition, owner).await;
            let reference = memory.claim_progress(partition, owner).await;
            assert_eq!(fenced(&real), fenced(&reference), "step {step}: {real:?}");
            if let (Ok(real), Ok(reference)) = (real, reference) {
                assert_eq!(real, reference, "step {step}");
            }
        }
        if let Some((event, writes)) = batch {
            let real = store
                .apply_batch(std::slice::from_ref(&event), &writes)
                .await;
            let reference = memory
                .apply_batch(std::slice::from_ref(&event), &writes)
                .await;
            assert_eq!(fenced(&real), fenced(&reference), "step {step}: {real:?}");
            let applied = load_row(&store, &event.order_id).await.unwrap().is_some();
            assert_eq!(
                applied,
                real.is_ok(),
                "step {step}: a fenced batch committed"
            );
        }
    }
    let stored = store.claim_progress(0, 2).await.unwrap();
    assert_eq!(stored.map(|p| p.offset), Some(9));
    // The refusal names the partitions fenced, not those still held.
    let writes = [progress(0, 2, 10), progress(5, 2, 1)];
    match store.apply_batch(&[e("e6")], &writes).await {
        Err(PortError::Fenced { detail, .. }) => {
            assert!(detail.contains("partitions [5] "), "{detail}")
        }
        other => panic!("a write to an unclaimed partition: {other:?}"),
    }
    // The same database under another scope: no row yet, so any generation may claim.
    let other = store.clone().with_progress_scope("h/orders");
    assert_eq!(other.claim_progress(0, 1).await.unwrap(), None);
    assert_eq!(
        store
            .claim_progress(0, 1)
            .await
            .map_err(|e| fenced::<()>(&Err(e))),
        Err(Some(true))
    );
}

/// Goal: a member frozen inside its transaction, after its progress write and before its
/// commit (SIGSTOP, a paused machine), does not stall the partition's next owner: the server
/// ends the silent session and releases its locks, so the next owner's claim is answered;
/// the thawed member's commit fails as an outage, its batch committed nothing, and its retry
/// is fenced. Method: the frozen member's store reaches PostgreSQL through a relay that holds
/// back its `COMMIT`.
#[tokio::test]
async fn a_member_frozen_before_its_commit_does_not_stall_the_next_owner() {
    let _shared = SERVICE.read().await;
    let schema = "hf_test_frozen";
    let next_owner = fresh_store(schema).await.with_progress_scope("g/orders");
    let url = env("HOLDFAST_POSTGRES_URL");
    let config: tokio_postgres::Config = url.parse().unwrap();
    let port = config.get_ports()[0];
    let freezer = Freezer::start(format!("127.0.0.1:{port}")).await;
    let relayed = url.replace(&format!("host=127.0.0.1 port={port}"), &freezer.address);
    assert_ne!(
        relayed, url,
        "the relay needs a `host=127.0.0.1 port=…` address"
    );
    let frozen =
        PostgresStore::connect_with(&format!("{relayed} options='-c search_path={schema}'"), 1)
            .await
            .unwrap()
            .with_progress_scope("g/orders");
    assert_eq!(frozen.claim_progress(0, 1).await.unwrap(), None);

    freezer.arm();
    let e1 = event("e1", "o-frozen", EventKind::Created, 1);
    let batch = tokio::spawn({
        let (frozen, e1) = (frozen.clone(), e1.clone());
        async move { frozen.apply_batch(&[e1], &[progress(0, 1, 5)]).await }
    });
    tokio::time::timeout(Duration::from_secs(10), freezer.frozen())
        .await
        .expect("the batch never reached its commit");
    let started = std::time::Instant::now();
    let claimed = next_owner.claim_progress(0, 2).await;
    eprintln!("the next owner's claim took {:?}", started.elapsed());
    assert_eq!(
        claimed.unwrap(),
        None,
        "the frozen batch's progress was not committed"
    );

    freezer.thaw();
    let committed = batch.await.unwrap();
    assert!(
        matches!(committed, Err(PortError::Unavailable { .. })),
        "the frozen member's commit: {committed:?}"
    );
    assert_eq!(load_row(&next_owner, "o-frozen").await.unwrap(), None);
    let retried = frozen.apply_batch(&[e1], &[progress(0, 1, 5)]).await;
    assert_eq!(fenced(&retried), Some(true), "the retry: {retried:?}");
}

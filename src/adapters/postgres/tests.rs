use super::batch::{key_columns, OrderColumns};
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

/// Goal: every session gets the idle-in-transaction limit, after the address's own options,
/// and an address that sets its own limit keeps it. Method: the options of three addresses.
#[test]
fn sessions_limit_idle_transactions_unless_the_address_does() {
    let options = |url: &str| {
        let mut config: Config = url.parse().unwrap();
        limit_idle_transactions(&mut config);
        config.get_options().map(str::to_string)
    };
    let limit = "-c idle_in_transaction_session_timeout=10000";
    assert_eq!(options("host=h").as_deref(), Some(limit));
    assert_eq!(
        options("host=h options='-c search_path=s'"),
        Some(format!("-c search_path=s {limit}"))
    );
    let own = "-c idle_in_transaction_session_timeout=0";
    assert_eq!(
        options(&format!("host=h options='{own}'")).as_deref(),
        Some(own)
    );
}

/// Goal: a server error is an outage (retried without limit) exactly for the classes that a
/// fresh session or a later try can cure, and a refusal for everything else. Method: codes
/// from each class, and their neighbours that must stay refusals.
#[test]
fn sqlstates_are_outages_only_for_what_a_retry_cures() {
    let outages = [
        "08000", "08006", "08P01", "53100", "53200", "53300", "57P01", "57P03", "40001", "40P01",
        "25P03",
    ];
    for code in outages {
        assert!(is_outage_code(code), "{code} is an outage");
    }
    let refusals = [
        "23505", "23503", "42P01", "42703", "22P02", "40002", "40003", "25P02", "25001", "57014",
        "28P01", "3D000", "XX000",
    ];
    for code in refusals {
        assert!(!is_outage_code(code), "{code} is a refusal");
    }
}

/// Goal: an address is described by hosts, ports, database and user, never its password,
/// in both of libpq's forms. Method: a key-value string, a URL with two hosts, and nonsense.
#[test]
fn addresses_are_described_without_passwords() {
    let described =
        PostgresStore::describe_address("host=db port=6432 user=app password=hunter2 dbname=o");
    assert_eq!(described, "db:6432/o (user app)");
    let described =
        PostgresStore::describe_address("postgresql://app:hunter2@a:1,b/orders?sslmode=disable");
    assert_eq!(described, "a:1,b:5432/orders (user app)");
    assert_eq!(
        PostgresStore::describe_address("host=db port=notaport"),
        "(an unreadable address)"
    );
}

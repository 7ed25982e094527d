//! The SQL of a batch: the key insert and the upserts that join rows by the conflict rule.

use super::SINGLE_KINDS;

pub(super) const INSERT_KEYS: &str = "\
INSERT INTO holdfast_keys (order_id, status, discriminator, event_id) \
SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
ON CONFLICT DO NOTHING \
RETURNING order_id, status, discriminator";

/// `(at, event, amount)` of `new` sorts before that of `old` under [`Stamp::precedence`].
/// An absent amount sorts first, as `None` does in Rust; `new_event`/`old_event` NULL means
/// the column is unset.
pub(super) fn wins_sql(new: &str, old: &str, prefix: &str) -> String {
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
pub(super) fn upsert_orders_sql() -> String {
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
pub(super) fn upsert_entries_sql(table: &str) -> String {
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

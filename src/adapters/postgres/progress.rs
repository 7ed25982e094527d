//! `progress = store` on PostgreSQL: a claim per assignment, a fenced write per transaction.

use super::port_error;
use crate::ports::{CommittedOffset, PartitionId, PortError, ProgressWrite};
use deadpool_postgres::Object;
use tokio_postgres::Statement;

/// Claims a partition's row for a generation unless a later one holds it; returns the stored
/// progress, or no row when refused.
pub(super) const CLAIM: &str = "\
INSERT INTO holdfast_progress AS cur (scope, partition, owner) VALUES ($1, $2, $3) \
ON CONFLICT (scope, partition) DO UPDATE SET owner = EXCLUDED.owner \
WHERE cur.owner <= EXCLUDED.owner \
RETURNING next_offset, finished";

/// Writes each partition's progress where the row is still claimed by the writer's
/// generation, keeping a stored point that is further along; returns the rows it matched.
pub(super) const WRITE: &str = "\
UPDATE holdfast_progress AS cur SET \
next_offset = CASE WHEN cur.next_offset IS NULL OR cur.next_offset <= u.next_offset \
THEN u.next_offset ELSE cur.next_offset END, \
finished = CASE WHEN cur.next_offset IS NULL OR cur.next_offset <= u.next_offset \
THEN u.finished ELSE cur.finished END \
FROM UNNEST($2::int[], $3::int[], $4::bigint[], $5::text[]) AS u(partition, owner, next_offset, finished) \
WHERE cur.scope = $1 AND cur.partition = u.partition AND cur.owner = u.owner \
RETURNING cur.partition";

pub(super) fn fenced(detail: String) -> PortError {
    PortError::Fenced {
        service: super::STORE,
        detail,
    }
}

/// Runs [`CLAIM`]: the stored progress, or [`PortError::Fenced`].
pub(super) async fn claim(
    client: &Object,
    scope: &str,
    partition: PartitionId,
    owner: i32,
) -> Result<Option<CommittedOffset>, PortError> {
    let statement = client
        .prepare_cached(CLAIM)
        .await
        .map_err(|error| port_error(&error))?;
    let rows = client
        .query(&statement, &[&scope, &partition, &owner])
        .await
        .map_err(|error| port_error(&error))?;
    let Some(row) = rows.first() else {
        return Err(fenced(format!(
            "partition {partition} of {scope:?} is claimed by a generation after {owner}"
        )));
    };
    let offset: Option<i64> = row.try_get(0).map_err(|error| port_error(&error))?;
    let finished: Option<String> = row.try_get(1).map_err(|error| port_error(&error))?;
    Ok(offset.map(|offset| CommittedOffset {
        offset,
        metadata: finished,
    }))
}

/// Runs [`WRITE`] inside a batch's transaction: [`PortError::Fenced`] (and the caller rolls
/// back) unless every partition's row is still claimed by its write's owner.
pub(super) async fn write(
    transaction: &tokio_postgres::Transaction<'_>,
    statement: &Statement,
    scope: &str,
    writes: &[ProgressWrite],
) -> Result<(), PortError> {
    if writes.is_empty() {
        return Ok(());
    }
    let partitions: Vec<i32> = writes.iter().map(|write| write.partition).collect();
    let owners: Vec<i32> = writes.iter().map(|write| write.owner).collect();
    let offsets: Vec<i64> = writes.iter().map(|write| write.progress.offset).collect();
    let finished: Vec<Option<&str>> = writes
        .iter()
        .map(|write| write.progress.metadata.as_deref())
        .collect();
    let matched = transaction
        .query(
            statement,
            &[&scope, &partitions, &owners, &offsets, &finished],
        )
        .await
        .map_err(|error| port_error(&error))?;
    if matched.len() != writes.len() {
        let mut fenced_partitions = partitions.clone();
        for row in &matched {
            let partition: i32 = row.try_get(0).map_err(|error| port_error(&error))?;
            fenced_partitions.retain(|p| *p != partition);
        }
        return Err(fenced(format!(
            "partitions {fenced_partitions:?} of {scope:?} are claimed by a later generation"
        )));
    }
    Ok(())
}

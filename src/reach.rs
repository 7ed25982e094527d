//! Reach points: names on the branches that handle a failure, a refusal or a limit, so that
//! the simulator can say which of them its histories ever took (FoundationDB's `CODE_PROBE`,
//! Antithesis's "sometimes" assertions).
//!
//! A point is a `tracing` event at TRACE level on the target [`TARGET`], with the field
//! `point`. Nothing branches on it: in production it costs the callsite's cached "not
//! interested" check, like any disabled log line; the simulator installs a subscriber that
//! counts the points each history reached and fails a sweep that never reached a declared
//! one. [`POINTS`] declares them all; a test keeps it equal to the `reach!` calls in `src/`.

/// The `tracing` target of every reach point.
pub const TARGET: &str = "holdfast::reach";

/// Marks a reach point: `reach!("tracker.full")`. The name must be declared in [`POINTS`].
#[macro_export]
macro_rules! reach {
    ($point:literal) => {
        ::tracing::trace!(target: "holdfast::reach", point = $point)
    };
}

/// Every reach point of the library, with what taking it means.
pub const POINTS: &[(&str, &str)] = &[
    ("member.poll_failed", "a poll failed and is retried with backoff"),
    (
        "member.tracker_full",
        "the tracker refused a record (full): held, partition paused",
    ),
    (
        "member.pause_failed",
        "the client refused to pause a partition whose records are held: retried at the next back-pressure round",
    ),
    (
        "member.resume_failed",
        "the client refused to resume a partition: retried at the next back-pressure round",
    ),
    (
        "member.record_skipped",
        "a polled record below the assignment's tracking or of a partition no longer owned was skipped",
    ),
    (
        "consumer.revoke_abandoned",
        "a revoke gave up records still in flight after the grace period",
    ),
    (
        "member.commit_fenced",
        "an offset commit was refused: the partitions moved to another member",
    ),
    (
        "member.stalled",
        "a partition's commit point stood still past stall_after with work in flight",
    ),
    (
        "tracker.in_flight_full",
        "a partition tracker refused a record: in_flight_max records unfinished",
    ),
    (
        "tracker.span_full",
        "a partition tracker refused a record: span_max offsets from the lowest unfinished",
    ),
    (
        "metadata.over_budget",
        "the finished offsets did not fit the metadata budget: committed without them",
    ),
    (
        "progress.claim_retry",
        "a progress claim on assignment failed for an outage and is retried",
    ),
    (
        "progress.claim_fenced",
        "a progress claim was refused: a later generation holds the partition (a zombie's late assignment)",
    ),
    (
        "worker.store_fenced",
        "a batch's transaction was refused as fenced: its partition's progress row belongs to a later generation",
    ),
    (
        "worker.ack_stale",
        "a worker's ack was refused: the partition was revoked while it worked",
    ),
    (
        "worker.dropped_revoked",
        "a worker dropped queued records of a partition revoked since their poll",
    ),
    (
        "worker.store_unavailable",
        "a store transaction failed for an outage and the batch is retried",
    ),
    (
        "worker.dead_letter_retry",
        "a dead-letter publish failed and is retried",
    ),
    (
        "protocol.cache_lookup_failed",
        "the cache lookup failed: the batch is deduplicated by the store alone",
    ),
    (
        "protocol.cache_write_failed",
        "the cache write after the store commit failed",
    ),
    (
        "compensator.check_failed",
        "a compensation check (the main group's offsets or the store) failed and is retried",
    ),
    ("compensator.resent", "the compensator re-sent an event whose effect is missing"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Every `reach!("name")` call under `dir`, recursively.
    fn calls(dir: &Path, found: &mut BTreeSet<String>) {
        let entries = std::fs::read_dir(dir).expect("src is readable");
        for entry in entries.map(|entry| entry.expect("a directory entry").path()) {
            if entry.is_dir() {
                calls(&entry, found);
            } else if entry.extension().is_some_and(|ext| ext == "rs")
                && !entry.ends_with("reach.rs")
            {
                let text = std::fs::read_to_string(&entry).expect("a source file is UTF-8");
                for piece in text.split("reach!(\"").skip(1) {
                    let name = piece.split('"').next().unwrap_or_default();
                    found.insert(name.to_owned());
                }
            }
        }
    }

    #[test]
    fn the_declared_points_are_exactly_the_marked_ones() {
        let mut marked = BTreeSet::new();
        calls(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut marked,
        );
        let declared: BTreeSet<String> =
            POINTS.iter().map(|(name, _)| (*name).to_owned()).collect();
        assert_eq!(declared.len(), POINTS.len(), "a point is declared twice");
        assert_eq!(marked, declared, "reach! calls and POINTS differ");
    }
}

//! Counting reach points: which failure, refusal and limit branches of the library, and which
//! faults of the models, a history took.
//!
//! The library marks its branches with `holdfast::reach!` (a `tracing` event on the target
//! `holdfast::reach`, see `holdfast::reach`); the simulator marks every fault it injects the
//! same way, with the names in [`FAULTS`]. [`install`] sets a process-wide subscriber that is
//! interested in that target only and counts per thread: a seed runs on one thread, in its
//! own madsim runtime, so [`take`] after a run returns that run's counts. A minimal subscriber
//! of its own rather than `tracing-subscriber`: it needs no span bookkeeping, and counting is
//! all it does.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Once;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{span, Event, Metadata, Subscriber};

/// Every fault the simulator injects, as a reach point.
pub const FAULTS: &[(&str, &str)] = &[
    (
        "fault.consumer_crash",
        "a consumer or compensator killed and restarted",
    ),
    (
        "fault.crash_at_point",
        "a consumer killed at a named point of the protocol",
    ),
    ("fault.broker_crash", "one broker killed and restarted"),
    ("fault.all_brokers_crash", "every broker killed at once"),
    (
        "fault.redis_restart",
        "Redis restarted (no persistence: every key lost)",
    ),
    ("fault.redis_flushall", "Redis FLUSHALL"),
    ("fault.postgres_crash", "PostgreSQL killed and restarted"),
    (
        "fault.clog",
        "a service cut off from the network for a while",
    ),
    (
        "fault.zombie_member",
        "a member cut off from the coordinator past its session, still reaching brokers and store",
    ),
    (
        "fault.member_pause",
        "a member frozen past its session timeout, then resumed",
    ),
    (
        "fault.member_pause_at_assignment",
        "a member frozen past its session right after it learned of an assignment (a zombie's late assignment)",
    ),
    (
        "fault.member_pause_at_commit",
        "a member frozen past its session between a transaction's statements and its commit",
    ),
    (
        "fault.dead_letters_down",
        "the dead-letter topic refusing every publish for a while",
    ),
    (
        "fault.coordinator_failover",
        "the group coordinator failed over: every member forgotten at once",
    ),
    (
        "fault.client_control_refused",
        "a consumer client refused a pause or a resume",
    ),
    (
        "fault.controller_crash",
        "the controller killed and restarted",
    ),
    (
        "fault.controller_cut_off",
        "the controller cut off from every node past the brokers' session",
    ),
    (
        "fault.metadata_dropped",
        "the coordinator drops commit metadata, as nisshi does: restarts redo what is above a commit",
    ),
];

/// Events of the models that only a fault brings about, as reach points.
pub const MODEL_EVENTS: &[(&str, &str)] = &[(
    "model.store_idle_transaction_ended",
    "the database ended a transaction left idle before its commit, releasing its locks",
)];

thread_local! {
    static COUNTS: RefCell<BTreeMap<String, u64>> = const { RefCell::new(BTreeMap::new()) };
}

/// Every declared point: the library's, the simulator's faults and the models' events.
pub fn declared() -> Vec<(&'static str, &'static str)> {
    holdfast::reach::POINTS
        .iter()
        .chain(FAULTS)
        .chain(MODEL_EVENTS)
        .copied()
        .collect()
}

/// Installs the counting subscriber for the whole process (once; later calls do nothing).
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Fails only if another global subscriber was set first; then points go uncounted
        // and a sweep says so by failing on unreached points.
        let _ = tracing::subscriber::set_global_default(Counter);
    });
}

/// This thread's counts since the last call, and a fresh start.
pub fn take() -> BTreeMap<String, u64> {
    COUNTS.with(|counts| std::mem::take(&mut *counts.borrow_mut()))
}

struct Counter;

struct PointName(Option<String>);

impl Visit for PointName {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "point" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl Subscriber for Counter {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.enabled(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == holdfast::reach::TARGET
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut name = PointName(None);
        event.record(&mut name);
        if let Some(name) = name.0 {
            COUNTS.with(|counts| *counts.borrow_mut().entry(name).or_default() += 1);
        }
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_points_of_this_thread_only() {
        install();
        take();
        holdfast::reach!("fault.redis_flushall");
        holdfast::reach!("fault.redis_flushall");
        std::thread::spawn(|| holdfast::reach!("fault.clog"))
            .join()
            .unwrap();
        assert_eq!(
            take(),
            BTreeMap::from([("fault.redis_flushall".to_owned(), 2)])
        );
        assert!(take().is_empty());
    }

    #[test]
    fn the_declared_faults_and_model_events_are_exactly_the_marked_ones() {
        let mut marked = std::collections::BTreeSet::new();
        let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("reach.rs")
                {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for piece in text.split("reach!(\"").skip(1) {
                        marked.insert(piece.split('"').next().unwrap_or_default().to_owned());
                    }
                }
            }
        }
        let declared: std::collections::BTreeSet<String> = FAULTS
            .iter()
            .chain(MODEL_EVENTS)
            .map(|(name, _)| (*name).to_owned())
            .collect();
        assert_eq!(marked, declared);
    }
}

//! Counters and gauges of one consumer, rendered in the Prometheus text format.
//!
//! Counters are atomics bumped from worker tasks; per-partition gauges are written by the
//! poll loop. Nothing here does I/O: an adapter serves [`Metrics::render_prometheus`].

use super::histogram::Histogram;
use crate::ports::PartitionId;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// One monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, amount: u64) {
        self.0.fetch_add(amount, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the poll loop knows about one owned partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionGauges {
    pub in_flight: u64,
    /// The last committed offset (the next offset to read).
    pub committed: Option<i64>,
    /// The highest offset polled so far.
    pub polled: Option<i64>,
    /// True while the commit point has not moved for `stall_after` with work in flight.
    pub stalled: bool,
}

/// Records polled and not yet committed in one partition (polled + 1 - committed).
fn lag(gauges: &PartitionGauges) -> Option<i64> {
    match (gauges.polled, gauges.committed) {
        (Some(polled), Some(committed)) => Some((polled + 1 - committed).max(0)),
        (Some(polled), None) => Some(polled + 1),
        _ => None,
    }
}

/// What [`Metrics::health`] reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// [`Metrics::polls`] now.
    pub polls: u64,
    /// Partitions owned.
    pub owned: usize,
    /// Owned partitions whose commit point is stalled.
    pub stalled: Vec<PartitionId>,
    /// The largest lag (records polled and not committed) over the owned partitions.
    pub lag_max: i64,
}

/// Reads one count from a partition's counters.
type CounterReader = fn(&PartitionCounters) -> u64;

/// Reads one gauge's value from a partition's gauges.
type GaugeReader = fn(&PartitionGauges) -> Option<i64>;

/// All metrics of one consumer (or compensator) process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Polls the member loop made, answered or failed: a count that stops means a stuck loop.
    pub polls: Counter,
    pub polled: Counter,
    pub applied: Counter,
    pub duplicates_cache: Counter,
    pub duplicates_batch: Counter,
    pub duplicates_store: Counter,
    pub dead_letters: Counter,
    pub retries_outage: Counter,
    pub retries_rejected: Counter,
    pub cache_degraded_batches: Counter,
    pub commits: Counter,
    pub commit_failures: Counter,
    pub stalls: Counter,
    /// Records dropped unprocessed because their partition was revoked while they waited.
    pub dropped_revoked: Counter,
    /// Records polled again that a previous owner had finished (restored progress): skipped
    /// without touching the services.
    pub finished_skipped: Counter,
    /// Records skipped as not this member's to process: below what its assignment already
    /// tracks (a re-fetch), or of a partition it no longer owns.
    pub stale_skipped: Counter,
    /// Batches whose transaction the store refused as fenced (`progress = store`: a later
    /// generation holds the partition); their records are left to the new owner.
    pub batches_fenced: Counter,
    pub batches: Counter,
    /// How long a worker took over a batch, from its start to its acks.
    pub batch_duration: Histogram,
    /// How long the store took over one transaction (answered or failed).
    pub store_duration: Histogram,
    partitions: Mutex<BTreeMap<PartitionId, PartitionGauges>>,
    /// Per partition counts, kept across revokes, as counters are.
    counted: Mutex<BTreeMap<PartitionId, PartitionCounters>>,
}

/// What one partition's records came to, over the process's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionCounters {
    /// Events dropped as already applied (by the cache, within a batch or by the store).
    pub redelivered: u64,
    /// Records sent to the dead-letter topic.
    pub dead_letters: u64,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Records one finished batch.
    pub fn observe_batch(&self, latency_us: u64) {
        self.batches.add(1);
        self.batch_duration.observe(latency_us);
    }

    /// Counts `events` of `partition` dropped as already applied.
    pub fn note_redelivered(&self, partition: PartitionId, events: u64) {
        self.count(partition, |counters| counters.redelivered += events);
    }

    /// Counts a record of `partition` sent to the dead-letter topic.
    pub fn note_dead_letter(&self, partition: PartitionId) {
        self.dead_letters.add(1);
        self.count(partition, |counters| counters.dead_letters += 1);
    }

    fn count(&self, partition: PartitionId, change: impl FnOnce(&mut PartitionCounters)) {
        if let Ok(mut counted) = self.counted.lock() {
            change(counted.entry(partition).or_default());
        }
    }

    /// What `partition`'s records came to so far.
    pub fn partition_counters(&self, partition: PartitionId) -> PartitionCounters {
        let counted = self.counted.lock();
        counted.map_or_else(
            |_| PartitionCounters::default(),
            |map| map.get(&partition).copied().unwrap_or_default(),
        )
    }

    /// Replaces the gauges of one partition.
    pub fn set_partition(&self, partition: PartitionId, gauges: PartitionGauges) {
        if let Ok(mut partitions) = self.partitions.lock() {
            partitions.insert(partition, gauges);
        }
    }

    /// Forgets a partition that is no longer owned.
    pub fn remove_partition(&self, partition: PartitionId) {
        if let Ok(mut partitions) = self.partitions.lock() {
            partitions.remove(&partition);
        }
    }

    pub fn partition(&self, partition: PartitionId) -> Option<PartitionGauges> {
        self.partitions
            .lock()
            .ok()
            .and_then(|partitions| partitions.get(&partition).cloned())
    }

    /// Every owned partition's gauges, copied out of the lock.
    fn partitions_now(&self) -> BTreeMap<PartitionId, PartitionGauges> {
        self.partitions
            .lock()
            .map(|partitions| partitions.clone())
            .unwrap_or_default()
    }

    /// What health probes judge by, read at once.
    pub fn health(&self) -> Health {
        let partitions = self.partitions_now();
        Health {
            polls: self.polls.get(),
            owned: partitions.len(),
            stalled: partitions
                .iter()
                .filter(|(_, gauges)| gauges.stalled)
                .map(|(partition, _)| *partition)
                .collect(),
            lag_max: partitions.values().filter_map(lag).max().unwrap_or(0),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        for (name, help, counter) in self.counters() {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.get()
            );
        }
        self.batch_duration.render(
            &mut out,
            "holdfast_batch_duration_seconds",
            "How long a worker took over a batch, from its start to its acks.",
        );
        self.store_duration.render(
            &mut out,
            "holdfast_store_transaction_duration_seconds",
            "How long the store took over one transaction, answered or failed.",
        );
        self.render_partition_counters(&mut out);
        let partitions = self.partitions_now();
        for (name, help, read) in PARTITION_GAUGES {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (partition, gauge) in &partitions {
                if let Some(value) = read(gauge) {
                    let _ = writeln!(out, "{name}{{partition=\"{partition}\"}} {value}");
                }
            }
        }
        out
    }

    fn render_partition_counters(&self, out: &mut String) {
        let counted = self.counted.lock().map(|map| map.clone());
        let counted = counted.unwrap_or_default();
        for (name, help, read) in PARTITION_COUNTERS {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (partition, counters) in &counted {
                let _ = writeln!(
                    out,
                    "{name}{{partition=\"{partition}\"}} {}",
                    read(counters)
                );
            }
        }
    }

    /// Every counter with its name and help text: a data table, one entry per counter, longer
    /// than a function should be only because it lists them all.
    fn counters(&self) -> [(&'static str, &'static str, &Counter); 18] {
        [
            (
                "holdfast_polls_total",
                "Polls the member loop made, answered or failed.",
                &self.polls,
            ),
            (
                "holdfast_records_polled_total",
                "Records returned by polls.",
                &self.polled,
            ),
            (
                "holdfast_events_applied_total",
                "Events whose effect the store committed.",
                &self.applied,
            ),
            (
                "holdfast_duplicates_cache_total",
                "Events dropped by the cache pre-filter.",
                &self.duplicates_cache,
            ),
            (
                "holdfast_duplicates_batch_total",
                "Events dropped as repeats within one batch.",
                &self.duplicates_batch,
            ),
            (
                "holdfast_duplicates_store_total",
                "Events the store's unique key refused as already applied.",
                &self.duplicates_store,
            ),
            (
                "holdfast_dead_letters_total",
                "Records sent to the dead-letter topic.",
                &self.dead_letters,
            ),
            (
                "holdfast_retries_outage_total",
                "Retries because a service was unavailable.",
                &self.retries_outage,
            ),
            (
                "holdfast_retries_rejected_total",
                "Retries because a service rejected a batch.",
                &self.retries_rejected,
            ),
            (
                "holdfast_cache_degraded_batches_total",
                "Batches deduplicated by the store alone because the cache failed.",
                &self.cache_degraded_batches,
            ),
            (
                "holdfast_commits_total",
                "Offset commits sent.",
                &self.commits,
            ),
            (
                "holdfast_commit_failures_total",
                "Offset commits that failed.",
                &self.commit_failures,
            ),
            (
                "holdfast_stalls_total",
                "Times a partition's commit point was reported stalled.",
                &self.stalls,
            ),
            (
                "holdfast_records_dropped_revoked_total",
                "Records dropped unprocessed because their partition was revoked while they waited (the next owner redoes them).",
                &self.dropped_revoked,
            ),
            (
                "holdfast_records_finished_skipped_total",
                "Records polled again that a previous owner had finished (from the restored progress), skipped without processing.",
                &self.finished_skipped,
            ),
            (
                "holdfast_records_stale_skipped_total",
                "Records skipped as not this member's to process: below what its assignment already tracks, or of a partition it no longer owns.",
                &self.stale_skipped,
            ),
            (
                "holdfast_batches_fenced_total",
                "Batches whose transaction the store refused because a later group generation holds the partition's progress (left to the new owner).",
                &self.batches_fenced,
            ),
            (
                "holdfast_batches_total",
                "Batches processed by workers.",
                &self.batches,
            ),
        ]
    }
}

/// The per-partition counters with their names and help texts.
const PARTITION_COUNTERS: [(&str, &str, CounterReader); 2] = [
    (
        "holdfast_events_redelivered_total",
        "Events dropped as already applied (cache, batch or store), per partition.",
        |c| c.redelivered,
    ),
    (
        "holdfast_partition_dead_letters_total",
        "Records sent to the dead-letter topic, per partition.",
        |c| c.dead_letters,
    ),
];

/// The per-partition gauges with their names and help texts.
const PARTITION_GAUGES: [(&str, &str, GaugeReader); 5] = [
    (
        "holdfast_in_flight",
        "Records tracked and not yet finished.",
        |g| i64::try_from(g.in_flight).ok(),
    ),
    (
        "holdfast_committed_offset",
        "Last committed offset (next to read).",
        |g| g.committed,
    ),
    ("holdfast_polled_offset", "Highest offset polled.", |g| {
        g.polled
    }),
    (
        "holdfast_lag_records",
        "Polled but not committed records (polled + 1 - committed).",
        lag,
    ),
    (
        "holdfast_stalled",
        "1 while the partition's commit point is stalled.",
        |g| Some(i64::from(g.stalled)),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_partition_gauges() {
        let metrics = Metrics::new();
        metrics.applied.add(3);
        metrics.observe_batch(250);
        metrics.set_partition(
            2,
            PartitionGauges {
                in_flight: 4,
                committed: Some(10),
                polled: Some(19),
                stalled: true,
            },
        );
        let text = metrics.render_prometheus();
        assert!(text.contains("holdfast_events_applied_total 3\n"));
        assert!(text.contains("holdfast_batches_total 1\n"));
        assert!(text.contains("holdfast_batch_duration_seconds_bucket{le=\"0.00025\"} 1\n"));
        assert!(text.contains("holdfast_batch_duration_seconds_count 1\n"));
        assert!(text.contains("holdfast_store_transaction_duration_seconds_count 0\n"));
        assert!(text.contains("holdfast_in_flight{partition=\"2\"} 4\n"));
        assert!(text.contains("holdfast_lag_records{partition=\"2\"} 10\n"));
        assert!(text.contains("holdfast_stalled{partition=\"2\"} 1\n"));
        metrics.remove_partition(2);
        assert!(!metrics.render_prometheus().contains("partition=\"2\""));
    }

    #[test]
    fn health_reads_polls_owned_stalled_and_the_largest_backlog() {
        let metrics = Metrics::new();
        assert_eq!(metrics.health(), Health::default());
        metrics.polls.add(7);
        let gauges = |committed, polled, stalled| PartitionGauges {
            in_flight: 0,
            committed,
            polled,
            stalled,
        };
        metrics.set_partition(1, gauges(Some(10), Some(19), false));
        metrics.set_partition(3, gauges(None, Some(4), true));
        metrics.set_partition(5, gauges(Some(30), Some(20), true));
        metrics.set_partition(6, gauges(Some(3), None, false));
        let health = metrics.health();
        assert_eq!(
            health,
            Health {
                polls: 7,
                owned: 4,
                stalled: vec![3, 5],
                lag_max: 10,
            }
        );
    }

    /// Goal: a partition with nothing committed yet lags by everything polled from it
    /// (offsets 0 to the last polled). Method: one such partition, read through the health
    /// answer and the rendering.
    #[test]
    fn a_partition_never_committed_lags_by_everything_polled() {
        let metrics = Metrics::new();
        metrics.set_partition(
            3,
            PartitionGauges {
                in_flight: 5,
                committed: None,
                polled: Some(4),
                stalled: false,
            },
        );
        assert_eq!(metrics.health().lag_max, 5);
        let text = metrics.render_prometheus();
        assert!(
            text.contains("holdfast_lag_records{partition=\"3\"} 5\n"),
            "{text}"
        );
    }

    /// Goal: the Grafana dashboard in docs/ queries only metrics that exist. Method: every
    /// `holdfast_*` name in its queries appears in a rendering with one partition.
    #[test]
    fn the_dashboard_queries_only_rendered_metrics() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/grafana-dashboard.json"))
                .expect("the dashboard is JSON");
        let metrics = Metrics::new();
        metrics.set_partition(0, PartitionGauges::default());
        metrics.note_redelivered(0, 1);
        let rendered = metrics.render_prometheus();
        let panels = dashboard["panels"].as_array().expect("panels");
        let mut names = 0;
        for target in panels
            .iter()
            .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        {
            let expr = target["expr"].as_str().expect("a query");
            for (at, _) in expr.match_indices("holdfast_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    rendered.contains(&name),
                    "{name} is not a metric:\n{rendered}"
                );
                names += 1;
            }
        }
        assert!(names >= 15, "only {names} metric names in the dashboard");
    }
}

//! What records the pipeline's doings into the run's history, without changing them: the sink
//! the library's recording wrappers write to, the dead-letter sink, and the crash probe.

use crate::checker::{Invariant, Violation};
use crate::history::{History, Step};
use crate::world::lock::lock;
use crate::world::World;
use holdfast::check::record::{Seen, Sink};
use holdfast::pipeline::Metrics;
use holdfast::ports::{
    CommitMode, Delivery, FaultPoint, OutboundMessage, PartitionId, PortError, Probe, Publisher,
};
use holdfast::verify::reference;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Virtual milliseconds since the run started.
pub fn now_ms(start: madsim::time::Instant) -> u64 {
    u64::try_from(
        madsim::time::Instant::now()
            .saturating_duration_since(start)
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// What every observer shares.
#[derive(Clone)]
pub struct Observers {
    pub history: History,
    pub start: madsim::time::Instant,
    pub world: World,
    pub dead_letters: DeadLetters,
    /// Violations found while the run goes on.
    pub online: Arc<Mutex<Vec<Violation>>>,
    /// Per partition, the offset below which every record was already checked finished.
    pub checked: Arc<Mutex<BTreeMap<PartitionId, i64>>>,
    /// Faults the harness injected (crashes, outages, clogs, flushes): not the restarts and
    /// heals that end them, nor the models' own events.
    pub injected: Arc<AtomicU32>,
    /// The workload producer's `publish` calls per payload digest.
    pub publishes: Arc<Mutex<BTreeMap<u64, u32>>>,
    /// Every consumer incarnation's metrics (what each skipped as finished before).
    pub metrics: Arc<Mutex<Vec<Arc<Metrics>>>>,
}

impl Observers {
    pub fn at(&self) -> u64 {
        now_ms(self.start)
    }

    /// A commit of `offset` says every record below it is finished: check that now, against
    /// the store and the dead letters, before anything else can mend it.
    fn check_commit(&self, member: &str, partition: PartitionId, offset: i64) {
        let from = lock(&self.checked).get(&partition).copied().unwrap_or(0);
        if offset <= from {
            return;
        }
        let mut unfinished = Vec::new();
        for (record_offset, record) in self.world.partition_range(partition, from, offset) {
            // Judged by the checker's own reading of the payload and of the row, so that a
            // decoder or merge bug cannot excuse itself.
            let finished = reference::read_payload(&record.payload)
                .is_some_and(|fact| self.world.store_reflects(&fact))
                || self.dead_letters.contains(partition, record_offset);
            if !finished {
                unfinished.push(record_offset);
            }
        }
        if unfinished.is_empty() {
            lock(&self.checked).insert(partition, offset);
        } else {
            lock(&self.online).push(Violation {
                invariant: Invariant::CommitPastUnfinished,
                detail: format!(
                    "{member} committed p{partition}={offset} at {}ms with {} unfinished below it, first @{:?}",
                    self.at(),
                    unfinished.len(),
                    unfinished.first()
                ),
            });
        }
    }
}

/// One member's steps into the run's history, at virtual time; every commit the client
/// accepted is checked at once against what is finished (the recording wrappers are the
/// library's, `holdfast::check::record`).
pub struct MemberSink {
    pub member: String,
    pub observers: Observers,
}

impl Sink for MemberSink {
    fn record(&self, seen: Vec<Seen>) {
        let steps = seen.into_iter().map(|seen| seen.step(&self.member));
        self.observers.history.extend(self.observers.at(), steps);
    }

    fn commit_accepted(&self, partition: PartitionId, offset: i64, _mode: CommitMode) {
        self.observers.check_commit(&self.member, partition, offset);
    }
}

/// The dead-letter topic: durable, shared by every consumer incarnation.
#[derive(Clone, Default)]
pub struct DeadLetters {
    letters: Arc<Mutex<Letters>>,
    /// While set, every publish fails as an outage (a fault).
    down: Arc<AtomicBool>,
}

/// The letters and, kept beside them so that a commit check never re-parses every letter,
/// their source coordinates.
#[derive(Default)]
struct Letters {
    messages: Vec<OutboundMessage>,
    coordinates: BTreeSet<(PartitionId, i64)>,
}

/// (source partition, source offset) a dead letter names in its headers.
fn source_coordinates(letter: &OutboundMessage) -> Option<(PartitionId, i64)> {
    let header = |name| {
        holdfast::pipeline::dead_letter::header(&letter.headers, name)
            .and_then(|v| v.parse::<i64>().ok())
    };
    Some((
        header(holdfast::pipeline::dead_letter::HEADER_SOURCE_PARTITION)? as PartitionId,
        header(holdfast::pipeline::dead_letter::HEADER_SOURCE_OFFSET)?,
    ))
}

impl DeadLetters {
    /// Whether a dead letter names this source record.
    pub fn contains(&self, partition: PartitionId, offset: i64) -> bool {
        lock(&self.letters)
            .coordinates
            .contains(&(partition, offset))
    }

    /// The payload of every dead letter, in publish order.
    pub fn payloads(&self) -> Vec<Vec<u8>> {
        (lock(&self.letters).messages.iter())
            .map(|letter| letter.payload.to_vec())
            .collect()
    }

    pub fn len(&self) -> usize {
        lock(&self.letters).messages.len()
    }

    /// Takes the topic down (every publish fails as an outage) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Records dead letters and their source coordinates in the history.
pub struct DeadLetterSink {
    pub letters: DeadLetters,
    pub observers: Observers,
}

impl Publisher for DeadLetterSink {
    async fn publish(&self, message: OutboundMessage) -> Result<Delivery, PortError> {
        if self.letters.down.load(Ordering::SeqCst) {
            return Err(PortError::Unavailable {
                service: "dead letters",
                detail: "the dead-letter topic is down (injected)".into(),
            });
        }
        let source = source_coordinates(&message);
        let (partition, offset) = source.unwrap_or((-1, -1));
        self.observers.history.push(
            self.observers.at(),
            Step::DeadLettered { partition, offset },
        );
        let mut letters = lock(&self.letters.letters);
        if let Some(source) = source {
            letters.coordinates.insert(source);
        }
        letters.messages.push(message);
        Ok(Delivery {
            partition: 0,
            offset: letters.messages.len() as i64 - 1,
        })
    }
}

/// Crashes the consumer at the `hit`-th pass of a fault point: the probe freezes its node and
/// asks the supervisor to kill and restart it, so the crash lands exactly in that window.
pub struct CrashProbe {
    pub plan: Option<(FaultPoint, u32)>,
    /// Slow workers: up to this many milliseconds of delay before each store call, so that
    /// batches finish out of order.
    pub slow_ms: u64,
    pub hits: Arc<AtomicU32>,
    pub fired: Arc<AtomicBool>,
    pub consumer: usize,
    pub crashes: mpsc::UnboundedSender<(usize, FaultPoint)>,
}

impl Probe for CrashProbe {
    async fn at(&self, point: FaultPoint) {
        if point == FaultPoint::AfterCacheCheck && self.slow_ms > 0 {
            // One batch in three stalls: enough for acks to finish out of order, without
            // throttling the whole run.
            use madsim::rand::Rng;
            let mut rng = madsim::rand::thread_rng();
            if rng.gen_bool(1.0 / 3.0) {
                let delay = rng.gen_range(0..=self.slow_ms);
                madsim::time::sleep(Duration::from_millis(delay)).await;
            }
        }
        let Some((planned, hit)) = self.plan else {
            return;
        };
        if planned != point || self.fired.load(Ordering::SeqCst) {
            return;
        }
        if self.hits.fetch_add(1, Ordering::SeqCst) + 1 == hit {
            self.fired.store(true, Ordering::SeqCst);
            let _ = self.crashes.send((self.consumer, point));
            std::future::pending::<()>().await;
        }
    }
}

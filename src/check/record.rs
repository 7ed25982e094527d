//! Recording a real run's history for the checker (`--history DIR`): each process appends
//! the steps it sees to a file of its own in the directory, one JSON line `[unix_ms, step]` per
//! step. A thread of its own formats and writes them through a buffer; the pipeline only sends
//! each step down a channel. The wrappers record what the ports did: polls and rebalances
//! ([`RecordingLog`]), store outcomes ([`RecordingStore`]), dead letters
//! ([`RecordingPublisher`]).

use super::history::{digest, Step};
use crate::event::OrderEvent;
use crate::pipeline::dead_letter::{header, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION};
use crate::ports::{
    ApplyOutcome, CommitMode, CommittedOffset, Delivery, EventLog, OffsetCommit, OrderStore,
    OutboundMessage, PartitionId, Polled, PortError, ProgressWrite, Publisher, Rebalance,
};
use crate::widetable::OrderRow;
use std::collections::BTreeMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The extension of history files.
const EXTENSION: &str = "history";

/// Sends steps to the writer thread. Clones share the file.
#[derive(Clone, Debug)]
pub struct Recorder {
    member: String,
    sender: mpsc::Sender<(u64, Step)>,
}

/// Owns the writer thread: [`Writing::finish`] (or dropping every [`Recorder`] and then this)
/// flushes the file.
#[derive(Debug)]
pub struct Writing {
    thread: Option<std::thread::JoinHandle<std::io::Result<u64>>>,
    path: PathBuf,
}

impl Recorder {
    /// Creates `dir` if needed and a file `<label>-<pid>.history` in it; `label` names this
    /// process's steps as a member (`run`, `produce`, ...).
    pub fn create(dir: &Path, label: &str) -> std::io::Result<(Recorder, Writing)> {
        std::fs::create_dir_all(dir)?;
        let member = format!("{label}-{}", std::process::id());
        let path = dir.join(format!("{member}.{EXTENSION}"));
        let file = std::fs::File::create(&path)?;
        let (sender, receiver) = mpsc::channel::<(u64, Step)>();
        let thread = std::thread::Builder::new()
            .name("history".into())
            .spawn(move || write_steps(file, receiver))?;
        let recorder = Recorder { member, sender };
        let writing = Writing {
            thread: Some(thread),
            path,
        };
        Ok((recorder, writing))
    }

    /// This process's name in the history.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// Records `step` now. A writer that failed drops it (the run goes on; `check` reports a
    /// history it cannot read).
    pub fn record(&self, step: Step) {
        let _ = self.sender.send((now_ms(), step));
    }
}

impl Writing {
    /// Waits until every step sent by the dropped recorders is written; returns how many.
    pub fn finish(mut self) -> std::io::Result<u64> {
        match self.thread.take().map(|thread| thread.join()) {
            Some(Ok(written)) => written,
            Some(Err(_)) => Err(std::io::Error::other("the history writer panicked")),
            None => Ok(0),
        }
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn write_steps(file: std::fs::File, receiver: mpsc::Receiver<(u64, Step)>) -> std::io::Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 16, file);
    let mut written = 0;
    loop {
        // Flush when the stream pauses, so that a killed process leaves most of its steps.
        let (at_ms, step) = match receiver.recv_timeout(Duration::from_millis(200)) {
            Ok(item) => item,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                out.flush()?;
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        serde_json::to_writer(&mut out, &(at_ms, &step))?;
        out.write_all(b"\n")?;
        written += 1;
    }
    out.flush()?;
    Ok(written)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Every step of every history file in `dir`, in time order (a stable sort, so one process's
/// steps keep their order within a millisecond). A line cut off by a kill ends its file.
pub fn read_dir(dir: &Path) -> Result<Vec<(u64, Step)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let mut steps = Vec::new();
    for entry in entries {
        let path = entry.map_err(|error| error.to_string())?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(EXTENSION) {
            continue;
        }
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut lines = std::io::BufReader::new(file).lines().enumerate().peekable();
        while let Some((number, line)) = lines.next() {
            let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
            match serde_json::from_str::<(u64, Step)>(&line) {
                Ok(step) => steps.push(step),
                // The last line of a killed process may be cut off anywhere.
                Err(_) if lines.peek().is_none() => break,
                Err(_) => {
                    let at = format!("{}:{}", path.display(), number + 1);
                    return Err(format!("{at}: not a history step"));
                }
            }
        }
    }
    steps.sort_by_key(|(at_ms, _)| *at_ms);
    Ok(steps)
}

/// Where the recording wrappers put what they saw: a real run's [`Recorder`] (its file, wall
/// clock), or the simulator's history (virtual time, with its online checks).
pub trait Sink: Send + Sync {
    /// The member the steps name.
    fn member(&self) -> &str;
    /// Records `step` now.
    fn record(&self, step: Step);
    /// The client accepted a commit of `offset` (under [`CommitMode::Sync`], the coordinator
    /// stored it).
    fn commit_accepted(&self, partition: PartitionId, offset: i64, mode: CommitMode);
}

impl Sink for Recorder {
    fn member(&self) -> &str {
        Recorder::member(self)
    }

    fn record(&self, step: Step) {
        Recorder::record(self, step);
    }

    /// Only a synchronous commit's answer is known here; the asynchronous ones' answers are
    /// the client's to log.
    fn commit_accepted(&self, partition: PartitionId, offset: i64, mode: CommitMode) {
        if mode == CommitMode::Sync {
            self.record(Step::Committed {
                member: self.member.clone(),
                partition,
                offset,
            });
        }
    }
}

/// An [`EventLog`] that records rebalances, polled records and accepted commits.
pub struct RecordingLog<L, K> {
    pub inner: L,
    pub sink: K,
}

impl<L: EventLog, K: Sink> EventLog for RecordingLog<L, K> {
    async fn poll(&mut self, records_max: usize, timeout: Duration) -> Result<Polled, PortError> {
        let polled = self.inner.poll(records_max, timeout).await?;
        let member = self.sink.member().to_owned();
        for change in &polled.rebalances {
            self.sink.record(match change {
                Rebalance::Assigned { partition, .. } => Step::Assigned {
                    member: member.clone(),
                    partition: *partition,
                },
                Rebalance::Revoked { partition } => Step::Revoked {
                    member: member.clone(),
                    partition: *partition,
                },
            });
        }
        for record in &polled.records {
            self.sink.record(Step::Polled {
                member: member.clone(),
                partition: record.partition,
                offset: record.offset,
                digest: digest(&record.payload),
            });
        }
        Ok(polled)
    }

    async fn commit(
        &mut self,
        offsets: &[OffsetCommit],
        mode: CommitMode,
    ) -> Result<(), PortError> {
        self.inner.commit(offsets, mode).await?;
        for commit in offsets {
            self.sink.record(Step::CommitSent {
                member: self.sink.member().to_owned(),
                partition: commit.partition,
                offset: commit.offset,
            });
            self.sink
                .commit_accepted(commit.partition, commit.offset, mode);
        }
        Ok(())
    }

    async fn pause(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        self.inner.pause(partitions).await
    }

    async fn resume(&mut self, partitions: &[PartitionId]) -> Result<(), PortError> {
        self.inner.resume(partitions).await
    }
}

/// An [`OrderStore`] that records what each committed transaction did with its events.
pub struct RecordingStore<S, K> {
    pub inner: S,
    pub sink: K,
}

impl<S: OrderStore, K: Sink> OrderStore for RecordingStore<S, K> {
    async fn apply_batch(
        &self,
        events: &[OrderEvent],
        progress: &[ProgressWrite],
    ) -> Result<Vec<ApplyOutcome>, PortError> {
        let outcomes = self.inner.apply_batch(events, progress).await?;
        for (event, outcome) in events.iter().zip(&outcomes) {
            self.sink.record(Step::Stored {
                member: self.sink.member().to_owned(),
                event_id: event.event_id.clone(),
                applied: *outcome == ApplyOutcome::Applied,
            });
        }
        Ok(outcomes)
    }

    async fn load_rows(
        &self,
        order_ids: &[String],
    ) -> Result<BTreeMap<String, OrderRow>, PortError> {
        self.inner.load_rows(order_ids).await
    }

    async fn claim_progress(
        &self,
        partition: PartitionId,
        owner: i32,
    ) -> Result<Option<CommittedOffset>, PortError> {
        self.inner.claim_progress(partition, owner).await
    }
}

/// A dead-letter [`Publisher`] that records each acknowledged letter's source record.
pub struct RecordingPublisher<P, K> {
    pub inner: P,
    pub sink: K,
}

impl<P: Publisher, K: Sink> Publisher for RecordingPublisher<P, K> {
    async fn publish(&self, message: OutboundMessage) -> Result<Delivery, PortError> {
        let source =
            |name| header(&message.headers, name).and_then(|value| value.parse::<i64>().ok());
        let source = source(HEADER_SOURCE_PARTITION).zip(source(HEADER_SOURCE_OFFSET));
        let delivery = self.inner.publish(message).await?;
        if let Some((partition, offset)) = source {
            self.sink.record(Step::DeadLettered {
                partition: partition as PartitionId,
                offset,
            });
        }
        Ok(delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn polled(member: &str, offset: i64) -> Step {
        Step::Polled {
            member: member.into(),
            partition: 1,
            offset,
            digest: digest(b"x"),
        }
    }

    /// Goal: what two processes record reads back merged in time order, each one's steps in
    /// its own order; a line a kill cut off ends its file quietly, a damaged line in the middle
    /// is refused. Method: two recorders in one directory, then a file cut by hand.
    #[test]
    fn histories_read_back_merged_and_a_cut_line_is_tolerated() {
        let dir = std::env::temp_dir().join(format!("hf-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (first, first_writing) = Recorder::create(&dir, "a").unwrap();
        let (second, second_writing) = Recorder::create(&dir, "b").unwrap();
        assert_ne!(first.member(), second.member());
        first.record(polled("a", 1));
        first.record(polled("a", 2));
        second.record(polled("b", 7));
        drop((first, second));
        assert_eq!(first_writing.finish().unwrap(), 2);
        assert_eq!(second_writing.finish().unwrap(), 1);
        let steps: Vec<Step> = read_dir(&dir)
            .unwrap()
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        assert_eq!(steps.len(), 3);
        let own: Vec<&Step> = steps
            .iter()
            .filter(|s| matches!(s, Step::Polled { member, .. } if member == "a"))
            .collect();
        assert_eq!(own, vec![&polled("a", 1), &polled("a", 2)]);
        let cut = dir.join(format!("cut.{EXTENSION}"));
        std::fs::write(
            &cut,
            "[5,{\"step\":\"fault\",\"description\":\"x\"}]\n[6,{\"step\":\"fau",
        )
        .unwrap();
        assert_eq!(read_dir(&dir).unwrap().len(), 4);
        std::fs::write(&cut, "[6,{\"step\":\"fault\",\"description\":\"x\"}\n").unwrap();
        assert_eq!(read_dir(&dir).unwrap().len(), 3);
        std::fs::write(&cut, "[5,{\"step\":\"nonsense\"}]\n[6,{}]\n").unwrap();
        assert!(read_dir(&dir).unwrap_err().contains("not a history step"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

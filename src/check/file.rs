//! A real run's history on disk (`--history DIR`): each process writes what it saw to a file of
//! its own, `<label>-<pid>.history`, in a line format made to be cheap to write and easy to read
//! by eye:
//!
//! ```text
//! holdfast-history 1 run-4242      the header: format version, the member
//! @1764835200123                   the wall-clock time (ms) of the lines below, when it changes
//! a 3 7                            assigned p3 in group generation 7
//! p 3 500 9f3a61c2d0e4b857         polled p3@500, payload digest (hex)
//! s 1 o17-PAID-2                   stored: 1 applied, 0 found already there; the event id
//! c 3 501                          commit sent: p3, next offset 501
//! C 3 501                          commit answered by the coordinator
//! r 3                              revoked p3
//! d 3 502                          the record p3@502 went to the dead-letter topic
//! n 1 3 88 o17-PAID-2              sent: 1 acknowledged at p3@88 (`- -` when not), the event id
//! ```
//!
//! The pipeline hands each poll's, transaction's or commit's lines to a writer thread in one
//! message; the thread formats them through a buffer. A killed process loses only what was not
//! flushed: a last line without its newline is dropped, never misread.

use super::history::Step;
use super::record::{Seen, Sink};
use crate::ports::{CommitMode, PartitionId};
use std::fmt::Write as _;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The extension of history files.
const EXTENSION: &str = "history";
/// The first word of every history file, then the format's version.
const HEADER: &str = "holdfast-history 1";

/// Sends what this process saw to the writer thread. Clones share the file.
#[derive(Clone, Debug)]
pub struct Recorder {
    member: String,
    sender: mpsc::Sender<(u64, Vec<Seen>)>,
    /// Whether commits are recorded: the checker judges one group's commits, so a process of
    /// another group (the compensator) leaves its own out.
    commits: bool,
}

/// Owns the writer thread: [`Writing::finish`] (after every [`Recorder`] is dropped) flushes
/// the file.
#[derive(Debug)]
pub struct Writing {
    thread: Option<std::thread::JoinHandle<std::io::Result<u64>>>,
    path: PathBuf,
}

impl Recorder {
    /// Creates `dir` if needed and a file `<label>-<pid>.history` in it; `label` names this
    /// process's steps as a member (`run`, `produce`, `compensate`).
    pub fn create(dir: &Path, label: &str) -> std::io::Result<(Recorder, Writing)> {
        std::fs::create_dir_all(dir)?;
        let member = format!("{label}-{}", std::process::id());
        let path = dir.join(format!("{member}.{EXTENSION}"));
        let mut file = BufWriter::with_capacity(1 << 16, std::fs::File::create(&path)?);
        writeln!(file, "{HEADER} {member}")?;
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("history".into())
            .spawn(move || write_lines(file, receiver))?;
        let recorder = Recorder {
            member,
            sender,
            commits: true,
        };
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

    /// Leaves this process's commits out: they are another group's than the one judged.
    pub fn without_commits(self) -> Recorder {
        Recorder {
            commits: false,
            ..self
        }
    }
}

impl Sink for Recorder {
    /// A writer that failed drops what it is sent (the run goes on; `check` reports a history
    /// it cannot read).
    fn record(&self, mut seen: Vec<Seen>) {
        if !self.commits {
            seen.retain(|s| !matches!(s, Seen::CommitSent { .. } | Seen::Committed { .. }));
        }
        if !seen.is_empty() {
            let _ = self.sender.send((now_ms(), seen));
        }
    }

    /// Only a synchronous commit's answer is known when the call returns; asynchronous ones'
    /// come with a later poll ([`crate::ports::Polled::commits_answered`]).
    fn commit_accepted(&self, partition: PartitionId, offset: i64, mode: CommitMode) {
        if mode == CommitMode::Sync {
            self.record(vec![Seen::Committed { partition, offset }]);
        }
    }
}

impl Writing {
    /// Waits until everything sent by the dropped recorders is written; returns how many
    /// steps.
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

fn write_lines(
    mut out: BufWriter<std::fs::File>,
    receiver: mpsc::Receiver<(u64, Vec<Seen>)>,
) -> std::io::Result<u64> {
    let (mut written, mut time_ms) = (0, None);
    let mut line = String::with_capacity(128);
    loop {
        // Flush when the stream pauses, so that a killed process leaves most of its steps.
        let (at_ms, seen) = match receiver.recv_timeout(Duration::from_millis(200)) {
            Ok(item) => item,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                out.flush()?;
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if time_ms != Some(at_ms) {
            writeln!(out, "@{at_ms}")?;
            time_ms = Some(at_ms);
        }
        for item in &seen {
            line.clear();
            format_line(&mut line, item);
            out.write_all(line.as_bytes())?;
            written += 1;
        }
    }
    out.flush()?;
    Ok(written)
}

/// Appends one line, newline included.
fn format_line(line: &mut String, seen: &Seen) {
    let _ = match seen {
        Seen::Polled {
            partition,
            offset,
            digest,
        } => writeln!(line, "p {partition} {offset} {digest:x}"),
        Seen::Stored { event_id, applied } => {
            writeln!(line, "s {} {}", u8::from(*applied), escape(event_id))
        }
        Seen::Assigned {
            partition,
            generation,
        } => writeln!(line, "a {partition} {generation}"),
        Seen::Revoked { partition } => writeln!(line, "r {partition}"),
        Seen::CommitSent { partition, offset } => writeln!(line, "c {partition} {offset}"),
        Seen::Committed { partition, offset } => writeln!(line, "C {partition} {offset}"),
        Seen::DeadLettered { partition, offset } => writeln!(line, "d {partition} {offset}"),
        Seen::Sent {
            event_id,
            acknowledged,
            delivered,
        } => match delivered {
            Some((partition, offset)) => writeln!(
                line,
                "n {} {partition} {offset} {}",
                u8::from(*acknowledged),
                escape(event_id)
            ),
            None => writeln!(
                line,
                "n {} - - {}",
                u8::from(*acknowledged),
                escape(event_id)
            ),
        },
    };
}

/// Reads one line (without its newline) back.
fn parse_line(line: &str) -> Option<Seen> {
    let (kind, rest) = line.split_once(' ')?;
    let seen = match kind {
        "p" => {
            let (partition, rest) = rest.split_once(' ')?;
            let (offset, digest) = rest.split_once(' ')?;
            Seen::Polled {
                partition: partition.parse().ok()?,
                offset: offset.parse().ok()?,
                digest: u64::from_str_radix(digest, 16).ok()?,
            }
        }
        "s" => {
            let (applied, event_id) = rest.split_once(' ')?;
            Seen::Stored {
                applied: flag(applied)?,
                event_id: unescape(event_id)?,
            }
        }
        "a" => {
            let (partition, generation) = position(rest)?;
            Seen::Assigned {
                partition,
                generation: i32::try_from(generation).ok()?,
            }
        }
        "r" => Seen::Revoked {
            partition: rest.parse().ok()?,
        },
        "c" => {
            let (partition, offset) = position(rest)?;
            Seen::CommitSent { partition, offset }
        }
        "C" => {
            let (partition, offset) = position(rest)?;
            Seen::Committed { partition, offset }
        }
        "d" => {
            let (partition, offset) = position(rest)?;
            Seen::DeadLettered { partition, offset }
        }
        "n" => parse_sent(rest)?,
        _ => return None,
    };
    Some(seen)
}

fn flag(text: &str) -> Option<bool> {
    match text {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// `<partition> <offset>`.
fn position(text: &str) -> Option<(PartitionId, i64)> {
    let (partition, offset) = text.split_once(' ')?;
    Some((partition.parse().ok()?, offset.parse().ok()?))
}

/// `<acknowledged> <partition|-> <offset|-> <event id>`.
fn parse_sent(rest: &str) -> Option<Seen> {
    let (acknowledged, rest) = rest.split_once(' ')?;
    let (partition, rest) = rest.split_once(' ')?;
    let (offset, event_id) = rest.split_once(' ')?;
    let delivered = match (partition, offset) {
        ("-", "-") => None,
        _ => Some((partition.parse().ok()?, offset.parse().ok()?)),
    };
    Some(Seen::Sent {
        event_id: unescape(event_id)?,
        acknowledged: flag(acknowledged)?,
        delivered,
    })
}

/// An event id as one line's last field: ids are any text but NUL, so a line break (and the
/// escape character itself) is written escaped.
fn escape(id: &str) -> std::borrow::Cow<'_, str> {
    if !id.contains(['\\', '\n', '\r']) {
        return id.into();
    }
    let escaped = id.replace('\\', "\\\\");
    escaped.replace('\n', "\\n").replace('\r', "\\r").into()
}

fn unescape(field: &str) -> Option<String> {
    if !field.contains('\\') {
        return Some(field.to_owned());
    }
    let mut id = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        id.push(if c != '\\' {
            c
        } else {
            match chars.next()? {
                'n' => '\n',
                'r' => '\r',
                '\\' => '\\',
                _ => return None,
            }
        });
    }
    Some(id)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Every step of every history file in `dir`, in time order (a stable sort, so one process's
/// steps keep their order within a millisecond).
pub fn read_dir(dir: &Path) -> Result<Vec<(u64, Step)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let mut steps = Vec::new();
    for entry in entries {
        let path = entry.map_err(|error| error.to_string())?.path();
        if path.extension().and_then(|e| e.to_str()) == Some(EXTENSION) {
            read_file(&path, &mut steps).map_err(|error| format!("{}{error}", path.display()))?;
        }
    }
    steps.sort_by_key(|(at_ms, _)| *at_ms);
    Ok(steps)
}

/// Appends one file's steps; an error names the line (`:N: ...`).
fn read_file(path: &Path, steps: &mut Vec<(u64, Step)>) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|error| format!(": {error}"))?;
    let mut lines = Lines {
        reader: std::io::BufReader::new(file),
        line: String::new(),
        number: 0,
    };
    if !lines.next()? {
        return Ok(());
    }
    let member = match lines
        .line
        .strip_prefix(HEADER)
        .and_then(|m| m.strip_prefix(' '))
    {
        Some(member) if !member.is_empty() => member.to_owned(),
        _ => {
            return Err(format!(
                ":1: not a history file (no `{HEADER} <member>` header)"
            ))
        }
    };
    let mut time_ms = None;
    while lines.next()? {
        let (line, number) = (&lines.line, lines.number);
        if let Some(at) = line.strip_prefix('@') {
            let at_ms = at.parse::<u64>();
            time_ms = Some(at_ms.map_err(|_| format!(":{number}: bad time `{line}`"))?);
            continue;
        }
        let (Some(at_ms), Some(seen)) = (time_ms, parse_line(line)) else {
            return Err(format!(":{number}: not a history step: `{line}`"));
        };
        steps.push((at_ms, seen.step(&member)));
    }
    Ok(())
}

/// A history file's lines, numbered from 1.
struct Lines {
    reader: std::io::BufReader<std::fs::File>,
    line: String,
    number: usize,
}

impl Lines {
    /// Reads the next whole line into `line`, without its newline; false at the end of the
    /// file, or at a last line a kill cut off (no newline), which ends the file before it.
    fn next(&mut self) -> Result<bool, String> {
        self.line.clear();
        self.number += 1;
        let number = self.number;
        self.reader
            .read_line(&mut self.line)
            .map_err(|error| format!(":{number}: {error}"))?;
        Ok(self.line.pop() == Some('\n'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Seen> {
        vec![
            Seen::Assigned {
                partition: 3,
                generation: 7,
            },
            Seen::Polled {
                partition: 3,
                offset: 500,
                digest: u64::MAX - 7,
            },
            Seen::Stored {
                event_id: "o17-PAID-2".into(),
                applied: true,
            },
            Seen::Stored {
                event_id: "id with spaces".into(),
                applied: false,
            },
            Seen::Stored {
                event_id: "line\nbreak\r and \\n".into(),
                applied: true,
            },
            Seen::CommitSent {
                partition: 3,
                offset: 501,
            },
            Seen::Committed {
                partition: 3,
                offset: 501,
            },
            Seen::DeadLettered {
                partition: 3,
                offset: 502,
            },
            Seen::Revoked { partition: 3 },
            Seen::Sent {
                event_id: "o17-PAID-2".into(),
                acknowledged: true,
                delivered: Some((3, 88)),
            },
            Seen::Sent {
                event_id: "o18 CREATED".into(),
                acknowledged: false,
                delivered: None,
            },
        ]
    }

    /// Goal: every kind of line reads back as what was written.
    #[test]
    fn every_line_reads_back() {
        for seen in every_kind() {
            let mut line = String::new();
            format_line(&mut line, &seen);
            assert!(line.ends_with('\n'));
            assert_eq!(parse_line(line.trim_end_matches('\n')), Some(seen));
        }
        for bad in [
            "p 3 500",
            "p 3 500 zz",
            "s 2 x",
            "x 1",
            "c 3",
            "n 1 3 x e",
            "a",
        ] {
            assert_eq!(parse_line(bad), None, "{bad}");
        }
    }

    /// Goal: what two processes record reads back merged in time order, each one's steps in
    /// its own order and under its own name; a line a kill cut off ends its file quietly
    /// (even when what is left would parse), a damaged line in the middle is refused. Method:
    /// two recorders in one directory, then files written by hand.
    #[test]
    fn histories_read_back_merged_and_a_cut_line_is_tolerated() {
        let dir = scratch_dir("history");
        let (first, first_writing) = Recorder::create(&dir, "a").unwrap();
        let (second, second_writing) = Recorder::create(&dir, "b").unwrap();
        assert_ne!(first.member(), second.member());
        first.record(every_kind());
        second.record(vec![Seen::Assigned {
            partition: 1,
            generation: 2,
        }]);
        let (first_member, second_member) = (first.member().to_owned(), second.member().to_owned());
        drop((first, second));
        assert_eq!(first_writing.finish().unwrap(), every_kind().len() as u64);
        assert_eq!(second_writing.finish().unwrap(), 1);
        let steps = read_steps(&dir);
        assert_eq!(steps.len(), every_kind().len() + 1);
        let own: Vec<Step> = every_kind()
            .into_iter()
            .map(|seen| seen.step(&first_member))
            .collect();
        assert_eq!(
            steps.iter().filter(|s| own.contains(s)).count(),
            own.len(),
            "{steps:?}"
        );
        assert!(steps.contains(
            &Seen::Assigned {
                partition: 1,
                generation: 2,
            }
            .step(&second_member)
        ));
        let cut = dir.join(format!("cut.{EXTENSION}"));
        std::fs::write(&cut, format!("{HEADER} k\n@5\na 1 2\np 1 7 ab")).unwrap();
        assert_eq!(read_dir(&dir).unwrap().len(), every_kind().len() + 2);
        std::fs::write(&cut, format!("{HEADER} k\n@5\nnonsense\na 1 2\n")).unwrap();
        assert!(read_dir(&dir).unwrap_err().contains("not a history step"));
        std::fs::write(&cut, "a 1 2\n").unwrap();
        assert!(read_dir(&dir).unwrap_err().contains("not a history file"));
        std::fs::write(&cut, format!("{HEADER} k\na 1 2\n")).unwrap();
        assert!(read_dir(&dir).unwrap_err().contains("not a history step"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The steps of every history file in `dir`, without their times.
    fn read_steps(dir: &Path) -> Vec<Step> {
        read_dir(dir).unwrap().into_iter().map(|(_, s)| s).collect()
    }

    /// An empty directory of this test process's own under the system's temporary one.
    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Goal: a recorder of another group (the compensator's) writes no commit lines, and a
    /// commit's answer is recorded when the call returned it (synchronous) and only then.
    /// Method: one recorder of each kind in one directory, both sent every kind of step and
    /// commit answers of both modes.
    #[test]
    fn commits_are_recorded_for_the_judged_group_and_answers_when_synchronous() {
        let dir = scratch_dir("history-commits");
        let (run, run_writing) = Recorder::create(&dir, "run").unwrap();
        let (other, other_writing) = Recorder::create(&dir, "compensate").unwrap();
        let other = other.without_commits();
        let (run_member, other_member) = (run.member().to_owned(), other.member().to_owned());
        run.commit_accepted(2, 9, CommitMode::Sync);
        run.commit_accepted(2, 10, CommitMode::Async);
        other.record(every_kind());
        other.commit_accepted(1, 5, CommitMode::Sync);
        drop((run, other));
        assert_eq!(run_writing.finish().unwrap(), 1);
        assert_eq!(
            other_writing.finish().unwrap(),
            every_kind().len() as u64 - 2
        );
        let steps = read_steps(&dir);
        let answered = Seen::Committed {
            partition: 2,
            offset: 9,
        };
        assert!(steps.contains(&answered.step(&run_member)), "{steps:?}");
        let others: Vec<Step> = every_kind()
            .into_iter()
            .filter(|s| !matches!(s, Seen::CommitSent { .. } | Seen::Committed { .. }))
            .map(|seen| seen.step(&other_member))
            .collect();
        assert_eq!(steps.len(), 1 + others.len(), "{steps:?}");
        assert!(others.iter().all(|step| steps.contains(step)), "{steps:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Goal: steps carry the wall-clock time they were recorded at (the checker orders the
    /// processes' files by it).
    #[test]
    fn steps_carry_the_wall_clock_time() {
        let dir = scratch_dir("history-time");
        let before_ms = now_ms();
        let (recorder, writing) = Recorder::create(&dir, "run").unwrap();
        recorder.record(every_kind());
        drop(recorder);
        writing.finish().unwrap();
        let after_ms = now_ms();
        let times: Vec<u64> = read_dir(&dir)
            .unwrap()
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(times.len(), every_kind().len());
        assert!(
            before_ms > 1_700_000_000_000,
            "not a wall clock: {before_ms}"
        );
        assert!(
            times.iter().all(|t| (before_ms..=after_ms).contains(t)),
            "{times:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Goal: a file that cannot be read is refused naming its line; a header without a member
    /// is no header. Method: files written by hand, each damaged at a known line.
    #[test]
    fn a_damaged_file_is_refused_naming_the_line() {
        let dir = scratch_dir("history-damaged");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("damaged.{EXTENSION}"));
        let cases: [(&[u8], &str); 5] = [
            (
                b"holdfast-history 1 k\n@5\na 1 2\nnonsense\n",
                ":4: not a history step",
            ),
            (b"holdfast-history 1 k\n@x5\na 1 2\n", ":2: bad time"),
            (b"holdfast-history 1 k\n@5\n\xff\xfe\n", ":3: "),
            (
                b"holdfast-history 1 \n@5\na 1 2\n",
                ":1: not a history file",
            ),
            (b"holdfast-history 1\n@5\na 1 2\n", ":1: not a history file"),
        ];
        for (content, error) in cases {
            std::fs::write(&path, content).unwrap();
            let refused = read_dir(&dir).unwrap_err();
            assert!(refused.contains(error), "{refused} lacks {error}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

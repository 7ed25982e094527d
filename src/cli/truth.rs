//! The ground-truth file `holdfast produce` writes and `holdfast verify` reads: one JSON object
//! per send of a valid event, `{"acknowledged": bool, "partition": i32|null, "offset":
//! i64|null, "payload": "<the event's JSON>"}`. Malformed messages are not listed: they have
//! no effect to check (the consumer dead-letters them).

use holdfast::event::OrderEvent;
use holdfast::verify::GroundTruth;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;

/// One line of the file.
#[derive(Debug, Serialize, Deserialize)]
pub struct TruthLine {
    pub acknowledged: bool,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub payload: String,
}

/// Writes lines to a file, buffered.
pub struct TruthWriter {
    out: std::io::BufWriter<std::fs::File>,
}

impl TruthWriter {
    pub fn create(path: &Path) -> Result<TruthWriter, String> {
        let file = std::fs::File::create(path)
            .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
        Ok(TruthWriter {
            out: std::io::BufWriter::new(file),
        })
    }

    pub fn write(&mut self, line: &TruthLine) -> Result<(), String> {
        let text = serde_json::to_string(line).map_err(|error| error.to_string())?;
        writeln!(self.out, "{text}").map_err(|error| format!("cannot write the truth: {error}"))
    }

    /// Flushes and syncs: the file is the record of what the broker acknowledged.
    pub fn finish(mut self) -> Result<(), String> {
        self.out
            .flush()
            .map_err(|error| format!("cannot write the truth: {error}"))?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|error| format!("cannot sync the truth: {error}"))
    }
}

/// Reads a truth file into a [`GroundTruth`].
pub fn read(path: &Path) -> Result<GroundTruth, String> {
    read_with_lines(path).map(|(truth, _)| truth)
}

/// Reads a truth file into a [`GroundTruth`] and its lines, in file order.
pub fn read_with_lines(path: &Path) -> Result<(GroundTruth, Vec<TruthLine>), String> {
    let file = std::fs::File::open(path)
        .map_err(|error| format!("cannot open {}: {error}", path.display()))?;
    let mut truth = GroundTruth::default();
    let mut lines = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(|error| format!("{}:{number}: {error}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let entry: TruthLine = serde_json::from_str(&line)
            .map_err(|error| format!("{}:{number}: not a truth line: {error}", path.display()))?;
        let event = OrderEvent::decode(entry.payload.as_bytes())
            .map_err(|error| format!("{}:{number}: bad event: {error}", path.display()))?;
        truth.record(&event, entry.acknowledged);
        lines.push(entry);
    }
    Ok((truth, lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a truth file is read back line for line, and a line that is not a truth line is
    /// refused naming the file and its line number. Method: a written file, then one with a
    /// bad second line.
    #[test]
    fn reads_what_was_written_and_names_a_bad_line() {
        let path = std::env::temp_dir().join(format!("holdfast-{}.truth", std::process::id()));
        let mut writer = TruthWriter::create(&path).unwrap();
        let event = r#"{"v":1,"event_id":"e1","order_id":"o1","user_id":"u1","kind":"created","event_time_ms":5}"#;
        let line = TruthLine {
            acknowledged: true,
            partition: Some(3),
            offset: Some(9),
            payload: event.to_owned(),
        };
        writer.write(&line).unwrap();
        writer.finish().unwrap();
        let (truth, lines) = read_with_lines(&path).unwrap();
        assert_eq!((truth.acknowledged.len(), lines.len()), (1, 1));
        assert_eq!((lines[0].partition, lines[0].offset), (Some(3), Some(9)));
        std::fs::write(
            &path,
            format!("{}\nnot json\n", serde_json::to_string(&line).unwrap()),
        )
        .unwrap();
        let refused = read_with_lines(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        let named = format!("{}:2: not a truth line", path.display());
        assert!(refused.starts_with(&named), "{refused}");
    }
}

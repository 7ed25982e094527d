//! The `holdfast` binary's embedded commands, which need no service: `workload` prints the
//! seeded stream the library generates, `demo` runs the pipeline through crash cycles and
//! verifies it, `completions` prints a shell script; a reader that stops early is no error.

use holdfast::workload::{Workload, WorkloadConfig};
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

fn holdfast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Runs `holdfast` with `args`; its stdout, after asserting it exited 0 with nothing on stderr.
fn stdout_of(args: &[&str]) -> String {
    let output = holdfast(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?}: {stderr}");
    assert!(stderr.is_empty(), "{args:?}: {stderr}");
    String::from_utf8(output.stdout).expect("stdout is UTF-8")
}

fn generated(orders: usize, seed: u64) -> Workload {
    Workload::generate(&WorkloadConfig {
        orders,
        seed,
        ..WorkloadConfig::default()
    })
    .expect("a valid workload")
}

/// Goal: `holdfast workload` prints, one JSON object per line, exactly the messages the
/// library generates for the seed and the orders asked, in order. Method: two seeds' lines
/// parsed and compared message by message with `Workload::generate`.
#[test]
fn the_workload_command_prints_the_seeded_stream_as_json_lines() {
    for seed in [5, 6] {
        let printed = stdout_of(&["workload", "--orders", "40", "--seed", &seed.to_string()]);
        let expected = generated(40, seed).messages;
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines.len(), expected.len(), "seed {seed}");
        for (line, message) in lines.iter().zip(&expected) {
            let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let text = |field: &str| value[field].as_str().map(str::as_bytes);
            assert_eq!(text("key"), Some(&message.key[..]), "{line}");
            assert_eq!(text("payload"), Some(&message.payload[..]), "{line}");
        }
    }
}

/// Goal: a reader that stops reading (`holdfast workload | head -1`) ends the command quietly
/// with success, not with a broken-pipe error. Method: a workload far larger than a pipe's
/// buffer, one line read, the pipe closed.
#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(["workload", "--orders", "20000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut first = String::new();
    let stdout = child.stdout.take().expect("piped");
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("a line");
    assert!(first.starts_with("{\"key\":"), "{first}");
    let output = child.wait_with_output().expect("it ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(stderr.is_empty(), "{stderr}");
}

/// Goal: `holdfast demo` publishes the seeded workload, kills consumers mid-flight, catches
/// up with a clean run and prints a passing verification that accounts for every event.
/// Method: the counts it prints against the library's own workload.
#[test]
fn the_demo_survives_its_crash_cycles_and_verifies_every_event() {
    let printed = stdout_of(&["demo", "--orders", "300", "--seed", "9", "--crashes", "4"]);
    let workload = generated(300, 9);
    let published = workload.published();
    let distinct = published.truth.acknowledged.len();
    for line in [
        format!(
            "published {} messages ({distinct} distinct events)",
            workload.messages.len()
        ),
        "4 consumers killed mid-flight after ".to_owned(),
        format!("acknowledged   {distinct}\n"),
        format!("applied        {distinct}\n"),
        "conservation   holds".to_owned(),
        "verdict        PASS".to_owned(),
    ] {
        assert!(printed.contains(&line), "`{line}` not in:\n{printed}");
    }
    let count = |suffix: &str| -> usize {
        (printed.split([';', ','].as_slice()))
            .find_map(|part| part.trim().strip_suffix(suffix))
            .and_then(|count| count.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("`{suffix}` not counted in:\n{printed}"))
    };
    // The killed consumers did some of the work: the clean run redelivers what they left.
    assert!(count(" applications") > 0);
    // Crashes may dead-letter a malformed message again, never less than once.
    let dead_letters = count(" dead letters (malformed input)");
    assert!(published.malformed > 0 && dead_letters >= published.malformed);
}

/// Goal: `holdfast completions` prints a completion script that knows the subcommands.
#[test]
fn completions_name_the_subcommands() {
    let script = stdout_of(&["completions", "bash"]);
    for command in ["demo", "workload", "completions"] {
        assert!(script.contains(command), "`{command}` not in the script");
    }
}

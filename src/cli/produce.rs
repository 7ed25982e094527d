//! `holdfast produce`: publishes a generated workload keyed by order id and writes the ground
//! truth of what the broker acknowledged.
//!
//! Messages are queued in workload order with many in flight (librdkafka keeps queue order
//! within a partition); every delivery report is awaited. Failed deliveries are re-sent in
//! further rounds, up to `--retries`; what still fails is reported and written to the truth
//! as not acknowledged (indeterminate: it may have been stored).

use super::args::ProduceArgs;
use super::config::Settings;
use super::truth::{TruthLine, TruthWriter};
use super::{block_on, reach_brokers};
use holdfast::adapters::KafkaPublisher;
use holdfast::check::file::Recorder;
use holdfast::check::record::{Seen, Sink};
use holdfast::ports::{Delivery, OutboundMessage, PortError};
use holdfast::workload::{Workload, WorkloadConfig};
use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Deliveries awaited at most at once.
const IN_FLIGHT_MAX: usize = 10_000;

type Pending = Pin<Box<dyn Future<Output = Result<Delivery, PortError>> + Send>>;

pub fn main(args: ProduceArgs) -> Result<ExitCode, String> {
    let resolved = args.kafka.settings(Settings::default())?;
    let settings = resolved.kafka_settings()?;
    let wait = resolved.connect_timeout();
    let topic = resolved.topic();
    let ProduceArgs {
        orders,
        seed,
        truth: truth_path,
        retries,
        history,
        ..
    } = args;
    let config = WorkloadConfig {
        orders,
        seed,
        ..WorkloadConfig::default()
    };
    let workload = Workload::generate(&config).map_err(|error| error.to_string())?;
    let publisher = KafkaPublisher::connect(&settings).map_err(|error| error.to_string())?;
    block_on(async move {
        reach_brokers(&settings, Some(&topic), wait).await?;
        let started = Instant::now();
        let messages: Vec<OutboundMessage> = workload
            .messages
            .iter()
            .map(|message| OutboundMessage {
                topic: topic.clone(),
                key: message.key.clone(),
                payload: message.payload.clone(),
                headers: Vec::new(),
            })
            .collect();
        let sent = send_with_retries(&publisher, &messages, retries).await;
        let counts = write_truth(&truth_path, &workload, &sent.outcomes)?;
        if let Some(dir) = &history {
            record_sends(dir, &workload, &sent.outcomes)?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "sent {} messages ({} valid events, {} malformed) to {topic}: \
             acknowledged {}, failed {}, re-sent {}; {elapsed:.2}s, {:.0} messages/s",
            messages.len(),
            counts.valid,
            counts.malformed,
            counts.acknowledged,
            sent.failed,
            sent.resent,
            messages.len() as f64 / elapsed.max(1e-9)
        );
        println!("ground truth: {}", truth_path.display());
        Ok(if sent.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// What the rounds of sending achieved.
struct Sent {
    /// Per message, its acknowledgement (`None`: never acknowledged).
    outcomes: Vec<Option<Delivery>>,
    failed: usize,
    resent: usize,
}

/// Sends every message, then re-sends the ones not acknowledged in up to `retries` further
/// rounds, each after a longer pause.
async fn send_with_retries(
    publisher: &KafkaPublisher,
    messages: &[OutboundMessage],
    retries: u64,
) -> Sent {
    let mut outcomes: Vec<Option<Delivery>> = vec![None; messages.len()];
    let bar = crate::progress_bar(messages.len() as u64, "messages acknowledged");
    let mut resent = 0usize;
    let mut waiting: Vec<usize> = (0..messages.len()).collect();
    for round in 0..=retries {
        if round > 0 {
            resent += waiting.len();
            bar.println(format!(
                "round {round}: re-sending {} failed messages",
                waiting.len()
            ));
            tokio::time::sleep(Duration::from_millis(500 * round)).await;
        }
        send_round(publisher, messages, &waiting, &mut outcomes, &bar).await;
        waiting.retain(|index| outcomes[*index].is_none());
        if waiting.is_empty() {
            break;
        }
    }
    bar.finish_and_clear();
    Sent {
        outcomes,
        failed: waiting.len(),
        resent,
    }
}

/// What the truth file holds.
struct TruthCounts {
    valid: usize,
    malformed: usize,
    acknowledged: usize,
}

/// Writes one truth line per valid event: its payload and whether (and where) the broker
/// acknowledged it. Malformed messages are counted, not written.
fn write_truth(
    path: &Path,
    workload: &Workload,
    outcomes: &[Option<Delivery>],
) -> Result<TruthCounts, String> {
    let mut truth = TruthWriter::create(path)?;
    let mut counts = TruthCounts {
        valid: 0,
        malformed: 0,
        acknowledged: 0,
    };
    for (message, outcome) in workload.messages.iter().zip(outcomes) {
        counts.acknowledged += usize::from(outcome.is_some());
        let Some(event) = &message.event else {
            counts.malformed += 1;
            continue;
        };
        counts.valid += 1;
        let payload = std::str::from_utf8(&event.payload)
            .map_err(|_| "an event payload is not UTF-8".to_owned())?
            .to_owned();
        truth.write(&TruthLine {
            acknowledged: outcome.is_some(),
            partition: outcome.map(|delivery| delivery.partition),
            offset: outcome.map(|delivery| delivery.offset),
            payload,
        })?;
    }
    truth.finish()?;
    Ok(counts)
}

/// Records each valid event's send as it ended: acknowledged (and where) or not.
fn record_sends(
    dir: &Path,
    workload: &Workload,
    outcomes: &[Option<Delivery>],
) -> Result<(), String> {
    let (recorder, writing) = Recorder::create(dir, "produce")
        .map_err(|error| format!("history in {}: {error}", dir.display()))?;
    let sends = workload.messages.iter().zip(outcomes);
    let seen = sends.filter_map(|(message, outcome)| {
        Some(Seen::Sent {
            event_id: message.event.as_ref()?.event_id.clone(),
            acknowledged: outcome.is_some(),
            delivered: outcome.map(|delivery| (delivery.partition, delivery.offset)),
        })
    });
    recorder.record(seen.collect());
    drop(recorder);
    let written = writing.finish().map_err(|error| error.to_string())?;
    tracing::info!(written, "history written");
    Ok(())
}

/// Sends the messages at `indices` in order, keeping up to [`IN_FLIGHT_MAX`] in flight, and
/// records each acknowledgement in `outcomes`.
async fn send_round(
    publisher: &KafkaPublisher,
    messages: &[OutboundMessage],
    indices: &[usize],
    outcomes: &mut [Option<Delivery>],
    bar: &indicatif::ProgressBar,
) {
    let mut in_flight: VecDeque<(usize, Pending)> = VecDeque::new();
    let mut last_error: Option<PortError> = None;
    for &index in indices {
        loop {
            match publisher.enqueue(&messages[index]) {
                Ok(pending) => {
                    in_flight.push_back((index, Box::pin(pending)));
                    break;
                }
                Err(error) => {
                    // The local queue is full (or the producer refuses): make room by waiting
                    // for the oldest delivery; with nothing in flight, the send failed.
                    match in_flight.pop_front() {
                        Some(oldest) => settle(oldest, outcomes, &mut last_error, bar).await,
                        None => {
                            last_error = Some(error);
                            break;
                        }
                    }
                }
            }
        }
        if in_flight.len() >= IN_FLIGHT_MAX {
            if let Some(oldest) = in_flight.pop_front() {
                settle(oldest, outcomes, &mut last_error, bar).await;
            }
        }
    }
    while let Some(oldest) = in_flight.pop_front() {
        settle(oldest, outcomes, &mut last_error, bar).await;
    }
    if let Some(error) = last_error {
        eprintln!("some deliveries failed; last error: {error}");
    }
}

async fn settle(
    (index, pending): (usize, Pending),
    outcomes: &mut [Option<Delivery>],
    last_error: &mut Option<PortError>,
    bar: &indicatif::ProgressBar,
) {
    match pending.await {
        Ok(delivery) => {
            outcomes[index] = Some(delivery);
            bar.inc(1);
        }
        Err(error) => *last_error = Some(error),
    }
}

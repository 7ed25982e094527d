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

/// Queues one message and hands back its delivery report to await (the producer's
/// callback): `KafkaPublisher`, or in the tests a publisher that fails on purpose.
trait Enqueue {
    fn enqueue(&self, message: &OutboundMessage) -> Result<Pending, PortError>;
}

impl Enqueue for KafkaPublisher {
    fn enqueue(&self, message: &OutboundMessage) -> Result<Pending, PortError> {
        let pending = KafkaPublisher::enqueue(self, message)?;
        Ok(Box::pin(pending))
    }
}

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
    publisher: &impl Enqueue,
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
    publisher: &impl Enqueue,
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
                    in_flight.push_back((index, pending));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// A publisher whose deliveries of some payloads fail a set number of times (an outage
    /// during the delivery), and which refuses to queue the payloads of `refused`.
    #[derive(Default)]
    struct Flaky {
        failures_left: Mutex<BTreeMap<Vec<u8>, u32>>,
        refused: Vec<Vec<u8>>,
        enqueued: Mutex<Vec<Vec<u8>>>,
    }

    impl Enqueue for Flaky {
        fn enqueue(&self, message: &OutboundMessage) -> Result<Pending, PortError> {
            let payload = message.payload.to_vec();
            let unavailable = |detail: &str| PortError::Unavailable {
                service: "kafka",
                detail: detail.to_owned(),
            };
            if self.refused.contains(&payload) {
                return Err(unavailable("queue full"));
            }
            let mut enqueued = self.enqueued.lock().unwrap();
            let offset = enqueued.len() as i64;
            enqueued.push(payload.clone());
            let mut failures_left = self.failures_left.lock().unwrap();
            let fails = failures_left.get_mut(&payload).is_some_and(|left| {
                let fails = *left > 0;
                *left = left.saturating_sub(1);
                fails
            });
            let delivery = Delivery {
                partition: 0,
                offset,
            };
            let outcome = if fails {
                Err(unavailable("delivery timed out"))
            } else {
                Ok(delivery)
            };
            Ok(Box::pin(async move { outcome }))
        }
    }

    fn messages(count: usize) -> Vec<OutboundMessage> {
        (0..count)
            .map(|index| OutboundMessage {
                topic: "orders".into(),
                key: vec![b'k'],
                payload: format!("m{index}").into_bytes().into(),
                headers: Vec::new(),
            })
            .collect()
    }

    fn flaky(failures: &[(usize, u32)]) -> Flaky {
        let failures_left = failures
            .iter()
            .map(|&(index, times)| (format!("m{index}").into_bytes(), times))
            .collect();
        Flaky {
            failures_left: Mutex::new(failures_left),
            ..Flaky::default()
        }
    }

    /// Goal: failed deliveries are sent again, only they, in further rounds, until each is
    /// acknowledged or the retries run out; what never was is reported failed and left
    /// unacknowledged. Method: five messages, one failing once and one twice, sent with two
    /// retries, with one, and with none failing, in paused time.
    #[tokio::test(start_paused = true)]
    async fn failed_deliveries_are_sent_again_until_the_retries_run_out() {
        let messages = messages(5);
        let publisher = flaky(&[(1, 1), (3, 2)]);
        let started = tokio::time::Instant::now();
        let sent = send_with_retries(&publisher, &messages, 2).await;
        // Each round waits longer than the one before: 0.5 s, then 1 s.
        assert_eq!(started.elapsed(), Duration::from_millis(1_500));
        assert_eq!((sent.failed, sent.resent), (0, 3));
        assert!(sent.outcomes.iter().all(Option::is_some));
        let enqueued = publisher.enqueued.lock().unwrap().clone();
        let again: Vec<&[u8]> = enqueued[5..].iter().map(Vec::as_slice).collect();
        assert_eq!(again, [&b"m1"[..], b"m3", b"m3"]);
        // The acknowledgement says where the send that succeeded was written.
        assert_eq!(sent.outcomes[3].map(|d| d.offset), Some(7));

        // Nothing failed: no further round, and no pause.
        let started = tokio::time::Instant::now();
        let sent = send_with_retries(&flaky(&[]), &messages, 3).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!((sent.failed, sent.resent), (0, 0));

        let publisher = flaky(&[(1, 1), (3, 2)]);
        let sent = send_with_retries(&publisher, &messages, 1).await;
        assert_eq!((sent.failed, sent.resent), (1, 2));
        let acknowledged: Vec<bool> = sent.outcomes.iter().map(Option::is_some).collect();
        assert_eq!(acknowledged, [true, true, true, false, true]);
    }

    /// Goal: a message the producer will not even queue, with nothing in flight to wait for,
    /// fails without stopping the others. Method: the middle one of three refused.
    #[tokio::test(start_paused = true)]
    async fn a_message_that_cannot_be_queued_fails_alone() {
        let messages = messages(3);
        let publisher = Flaky {
            refused: vec![b"m1".to_vec()],
            ..Flaky::default()
        };
        let sent = send_with_retries(&publisher, &messages, 0).await;
        assert_eq!((sent.failed, sent.resent), (1, 0));
        let acknowledged: Vec<bool> = sent.outcomes.iter().map(Option::is_some).collect();
        assert_eq!(acknowledged, [true, false, true]);
    }
}

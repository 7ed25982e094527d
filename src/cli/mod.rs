//! The commands that run against the real services (`run`, `produce`, `compensate`,
//! `verify`, `create-topic`), built with the `kafka` feature.
//!
//! Each command parses its flags with [`Flags`], builds a multi-threaded runtime and calls
//! into the library: the adapters in `holdfast::adapters` and the pipeline in
//! `holdfast::pipeline`. Addresses default to the environment `scripts/services-up` writes.

mod compensate;
mod flags;
mod metrics_http;
mod produce;
mod run;
mod truth;
mod verify;

use flags::Flags;
use holdfast::adapters::KafkaSettings;
use std::future::Future;
use std::process::ExitCode;

/// Usage of the service commands.
pub const USAGE: &str =
    "  run           consume --topic with the pipeline (Kafka + Redis + PostgreSQL) until SIGINT or
                SIGTERM: --brokers --topic (orders) --group (holdfast) --redis --postgres
                --dlq (orders.dlq) --batch (500) --workers (8) --commit-ms (1000)
                --metrics 127.0.0.1:PORT
  produce       publish a generated workload and write the ground truth: --orders N (1000)
                --seed N (1) --truth FILE (required) --retries N (5) --brokers --topic
  compensate    re-send events whose effect is missing: --group (holdfast-compensator)
                --main-group (holdfast) --delay-ms (30000) --check-ms (5000) --attempts (3)
                --for-s SECONDS (until a signal) --brokers --topic --dlq --postgres
  verify        compare PostgreSQL with the ground truth; exit 1 on failure: --truth FILE
                --postgres --brokers --dlq
  create-topic  --topic NAME --partitions N (8) --brokers
  Every Kafka command also takes --set KEY=VALUE (a librdkafka property, repeatable) and
  --allow-unsafe (accept settings that can lose or double events). Defaults for --brokers,
  --redis and --postgres: $HOLDFAST_KAFKA_BROKERS, $HOLDFAST_REDIS_URL, $HOLDFAST_POSTGRES_URL.";

/// Runs a service command; `None` if `command` is not one.
pub fn main(command: &str, args: &[String]) -> Option<Result<ExitCode, String>> {
    let result = match command {
        "run" => Flags::parse(args, run::FLAGS).and_then(run::main),
        "produce" => Flags::parse(args, produce::FLAGS).and_then(produce::main),
        "compensate" => Flags::parse(args, compensate::FLAGS).and_then(compensate::main),
        "verify" => Flags::parse(args, verify::FLAGS).and_then(verify::main),
        "create-topic" => Flags::parse(args, CREATE_TOPIC_FLAGS).and_then(create_topic),
        _ => return None,
    };
    Some(result)
}

/// Flags every Kafka command takes.
const KAFKA_FLAGS: &[&str] = &["--brokers", "--topic", "--set", "--allow-unsafe"];

const CREATE_TOPIC_FLAGS: &[&str] = &["--partitions"];

fn create_topic(flags: Flags) -> Result<ExitCode, String> {
    let settings = kafka_settings(&flags)?;
    let topic = flags.text("--topic", "orders");
    let partitions = i32::try_from(flags.number("--partitions", 8)?)
        .map_err(|_| "--partitions is too large".to_owned())?;
    block_on(async {
        holdfast::adapters::create_topic(&settings, &topic, partitions)
            .await
            .map_err(|error| error.to_string())?;
        println!("topic {topic}: {partitions} partitions");
        Ok(ExitCode::SUCCESS)
    })
}

/// The broker settings from `--brokers` (or `$HOLDFAST_KAFKA_BROKERS`), `--set` and
/// `--allow-unsafe`; refused here, before anything connects, if unsafe.
fn kafka_settings(flags: &Flags) -> Result<KafkaSettings, String> {
    let brokers = flags.address("--brokers", "HOLDFAST_KAFKA_BROKERS")?;
    let mut overrides = Vec::new();
    for assignment in flags.all("--set") {
        let (name, value) = assignment
            .split_once('=')
            .ok_or_else(|| format!("--set expects KEY=VALUE, got `{assignment}`"))?;
        overrides.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let settings = KafkaSettings {
        brokers,
        overrides,
        allow_unsafe: flags.switch("--allow-unsafe"),
    };
    settings.validate().map_err(|error| error.to_string())?;
    Ok(settings)
}

/// Runs `future` on a multi-threaded runtime with I/O, timers and signals.
fn block_on<F: Future<Output = Result<ExitCode, String>>>(future: F) -> Result<ExitCode, String> {
    tokio_real::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?
        .block_on(future)
}

/// Resolves on SIGINT or SIGTERM.
async fn terminated() {
    use tokio_real::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio_real::select! {
                _ = tokio_real::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops");
            let _ = tokio_real::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The usage paragraph of `command`: its line and the indented lines that follow it.
    fn paragraph(command: &str) -> String {
        let mut lines = USAGE
            .lines()
            .skip_while(|line| !line.starts_with(&format!("  {command} ")));
        let first = lines.next().unwrap_or_default();
        let rest = lines.take_while(|line| line.starts_with("                "));
        std::iter::once(first)
            .chain(rest)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_usage_lists_every_flag_of_every_command() {
        let commands = [
            ("run", run::FLAGS),
            ("produce", produce::FLAGS),
            ("compensate", compensate::FLAGS),
            ("verify", verify::FLAGS),
            ("create-topic", CREATE_TOPIC_FLAGS),
        ];
        for (command, flags) in commands {
            let text = paragraph(command);
            let words: Vec<&str> = text.split_whitespace().collect();
            for flag in flags {
                assert!(
                    words.contains(flag),
                    "`holdfast --help` does not list {flag} under {command}:\n{text}"
                );
            }
        }
        for flag in KAFKA_FLAGS {
            assert!(USAGE.contains(flag), "{flag} is not in the usage");
        }
    }
}

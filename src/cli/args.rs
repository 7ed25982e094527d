//! The service commands' flags. Every address and secret falls back to a `HOLDFAST_*`
//! environment variable (what `scripts/services-up` writes to `.services/env`); their values
//! are never printed by `--help`.

use clap::{Args, Subcommand};
use holdfast::pipeline::{CompensatorConfig, ConsumerConfig};
use std::path::PathBuf;

/// Where the addresses come from when no flag gives them.
const ADDRESSES: &str = "Addresses not given as flags come from HOLDFAST_KAFKA_BROKERS, \
HOLDFAST_REDIS_URL and HOLDFAST_POSTGRES_URL; scripts/services-up writes them to .services/env \
(`source .services/env`).";

/// The commands that run against Kafka, Redis and PostgreSQL.
#[derive(Debug, Subcommand)]
#[command(after_help = ADDRESSES)]
pub enum ServiceCommand {
    /// Consume the topic with the pipeline (Kafka, Redis, PostgreSQL) until SIGINT or SIGTERM,
    /// then drain and commit.
    #[command(after_help = ADDRESSES)]
    Run(RunArgs),
    /// Publish a generated workload keyed by order id and write the ground truth of what the
    /// broker acknowledged.
    #[command(after_help = ADDRESSES)]
    Produce(ProduceArgs),
    /// Re-send events whose effect is missing (its own consumer group).
    #[command(after_help = ADDRESSES)]
    Compensate(CompensateArgs),
    /// Compare PostgreSQL and the dead-letter topic with the ground truth; exit 1 on failure.
    #[command(after_help = ADDRESSES)]
    Verify(VerifyArgs),
    /// Create a topic.
    #[command(after_help = ADDRESSES)]
    CreateTopic(CreateTopicArgs),
}

/// Flags every Kafka command takes.
#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Bootstrap brokers, host:port[,host:port...].
    #[arg(long, env = "HOLDFAST_KAFKA_BROKERS", value_name = "LIST")]
    pub brokers: String,
    #[arg(long, default_value = "orders")]
    pub topic: String,
    /// A librdkafka property applied to every client (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = key_value)]
    pub overrides: Vec<(String, String)>,
    /// Accept settings that can lose or double events (auto-commit, acks other than all,
    /// producer idempotence off).
    #[arg(long)]
    pub allow_unsafe: bool,
    /// Seconds to wait at start for a service that does not answer yet (each one is retried,
    /// with the attempts logged, before the command gives up naming it).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub connect_timeout_s: u64,
}

impl KafkaArgs {
    pub fn connect_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.connect_timeout_s)
    }
}

fn key_value(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got `{text}`"))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

/// Where the store is.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The PostgreSQL URL (the store).
    #[arg(
        long,
        env = "HOLDFAST_POSTGRES_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub postgres: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The consumer group.
    #[arg(long, default_value = "holdfast")]
    pub group: String,
    /// The Redis URL (the deduplication pre-filter).
    #[arg(
        long,
        env = "HOLDFAST_REDIS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub redis: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The dead-letter topic.
    #[arg(long, default_value_t = ConsumerConfig::default().dead_letter_topic)]
    pub dlq: String,
    /// Records per poll and per worker batch.
    #[arg(long, default_value_t = ConsumerConfig::default().batch_size)]
    pub batch: usize,
    /// Worker tasks.
    #[arg(long, default_value_t = ConsumerConfig::default().concurrency)]
    pub workers: usize,
    /// Milliseconds between offset commits.
    #[arg(long, default_value_t = ConsumerConfig::default().commit_interval.as_millis() as u64)]
    pub commit_ms: u64,
    /// Serve the operations endpoint on this address (host:port): /metrics (Prometheus),
    /// /livez and /readyz.
    #[arg(long, value_name = "ADDRESS")]
    pub metrics: Option<String>,
    /// /readyz answers 503 while a partition has more polled, uncommitted records than this.
    #[arg(long, default_value_t = 10_000, value_name = "RECORDS")]
    pub ready_backlog_max: i64,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Orders in the generated workload.
    #[arg(long, default_value_t = 1000)]
    pub orders: usize,
    /// The workload's seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write the ground truth (JSON lines).
    #[arg(long, value_name = "FILE")]
    pub truth: PathBuf,
    /// Rounds of re-sending what was not acknowledged.
    #[arg(long, default_value_t = 5)]
    pub retries: u64,
}

#[derive(Debug, Args)]
pub struct CompensateArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The compensator's own consumer group.
    #[arg(long, default_value = "holdfast-compensator")]
    pub group: String,
    /// The group whose effects are checked.
    #[arg(long, default_value_t = CompensatorConfig::default().main_group)]
    pub main_group: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The dead-letter topic.
    #[arg(long, default_value_t = CompensatorConfig::default().dead_letter_topic)]
    pub dlq: String,
    /// Milliseconds an event waits before its effect is checked.
    #[arg(long, default_value_t = CompensatorConfig::default().delay.as_millis() as u64)]
    pub delay_ms: u64,
    /// Milliseconds between checks.
    #[arg(long, default_value_t = CompensatorConfig::default().check_interval.as_millis() as u64)]
    pub check_ms: u64,
    /// Re-sends before an event is dead-lettered.
    #[arg(long, default_value_t = CompensatorConfig::default().attempts_max)]
    pub attempts: u32,
    /// Stop after this many seconds (default: at SIGINT or SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    pub for_s: Option<u64>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The ground truth `holdfast produce` wrote.
    #[arg(long, value_name = "FILE")]
    pub truth: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The dead-letter topic.
    #[arg(long, default_value_t = ConsumerConfig::default().dead_letter_topic)]
    pub dlq: String,
}

#[derive(Debug, Args)]
pub struct CreateTopicArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ServiceCommand,
    }

    fn parse(args: &[&str]) -> Result<ServiceCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("holdfast").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    /// Goal: flags parse to typed values, `--set` repeats, and bad input is an error that
    /// names the flag. Method: one good command line, then one fault at a time.
    #[test]
    fn flags_parse_and_bad_input_names_the_flag() {
        let base = ["run", "--brokers", "b:1", "--redis", "r", "--postgres", "p"];
        let good = [
            &base[..],
            &["--set", "a=1", "--set", "b = 2", "--allow-unsafe"],
        ]
        .concat();
        let Ok(ServiceCommand::Run(run)) = parse(&good) else {
            panic!("a good command line is refused");
        };
        assert_eq!(
            run.kafka.overrides,
            [("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert!(run.kafka.allow_unsafe);
        assert_eq!(run.batch, ConsumerConfig::default().batch_size);
        assert_eq!(run.commit_ms, 1000);
        for (extra, named) in [
            (&["--bogus", "1"][..], "--bogus"),
            (&["--batch", "x"][..], "--batch"),
            (&["--batch"][..], "--batch"),
            (&["--set", "novalue"][..], "--set"),
        ] {
            let error = parse(&[&base[..], extra].concat()).unwrap_err().to_string();
            assert!(error.contains(named), "{extra:?}: {error}");
        }
        let error = parse(&["produce", "--brokers", "b"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--truth"), "{error}");
    }

    /// Goal: a password in an address given by the environment never shows in `--help`.
    #[test]
    fn help_hides_the_values_of_secret_addresses() {
        use clap::CommandFactory;
        let mut command = Cli::command();
        let help = command
            .find_subcommand_mut("run")
            .expect("run exists")
            .render_long_help()
            .to_string();
        assert!(help.contains("HOLDFAST_POSTGRES_URL"), "{help}");
        assert!(!help.contains("HOLDFAST_POSTGRES_URL="), "{help}");
        assert!(!help.contains("HOLDFAST_REDIS_URL="), "{help}");
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

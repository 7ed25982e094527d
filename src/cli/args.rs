//! The service commands' flags. Each command's flags are the top layer of its configuration
//! ([`super::config`]): a flag wins over the environment, which wins over the config file,
//! which wins over the defaults. Every address and secret falls back to a `HOLDFAST_*`
//! environment variable (what `scripts/services-up` writes to `.services/env`); their values
//! are never printed by `--help`.

use super::config::{CompensatorSection, ConsumerSection, Property, Settings};
use clap::{Args, Subcommand};
use holdfast::pipeline::ProgressMode;
use std::path::PathBuf;

/// Where values come from when no flag gives them.
const SOURCES: &str = "A flag wins over the environment, which wins over the config file \
(--config or HOLDFAST_CONFIG; the key is named in [brackets]), which wins over the defaults; \
`holdfast config` prints the result. Addresses not given as flags come from \
HOLDFAST_KAFKA_BROKERS, HOLDFAST_REDIS_URL and HOLDFAST_POSTGRES_URL; scripts/services-up \
writes them to .services/env (`source .services/env`).";

/// The commands that run against Kafka, Redis and PostgreSQL.
#[derive(Debug, Subcommand)]
#[command(after_help = SOURCES)]
pub enum ServiceCommand {
    /// Consume the topic with the pipeline (Kafka, Redis, PostgreSQL) until SIGINT or SIGTERM,
    /// then drain and commit.
    #[command(after_help = SOURCES)]
    Run(RunArgs),
    /// Publish a generated workload keyed by order id and write the ground truth of what the
    /// broker acknowledged.
    #[command(after_help = SOURCES)]
    Produce(ProduceArgs),
    /// Re-send events whose effect is missing (its own consumer group).
    #[command(after_help = SOURCES)]
    Compensate(CompensateArgs),
    /// Compare PostgreSQL and the dead-letter topic with the ground truth; exit 1 on failure.
    #[command(after_help = SOURCES)]
    Verify(VerifyArgs),
    /// Judge a run's recorded history (`run --history DIR`) with the simulator's checker, over
    /// the final topic, PostgreSQL and the dead-letter topic; exit 1 on any violation.
    #[command(after_help = SOURCES)]
    Check(CheckArgs),
    /// Create a topic.
    #[command(after_help = SOURCES)]
    CreateTopic(CreateTopicArgs),
    /// Print the configuration the service commands would use (the config file, the
    /// environment and these flags over the defaults), secrets masked, as TOML.
    #[command(after_help = SOURCES)]
    Config(ConfigArgs),
}

/// Flags every Kafka command takes.
#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// A TOML config file (docs/holdfast.toml is the example with every key).
    #[arg(long, env = "HOLDFAST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Bootstrap brokers, host:port[,host:port...] [brokers].
    #[arg(long, env = "HOLDFAST_KAFKA_BROKERS", value_name = "LIST")]
    pub brokers: Option<String>,
    /// The topic [topic; default orders].
    #[arg(long)]
    pub topic: Option<String>,
    /// A librdkafka property applied to every client (repeatable) [kafka table].
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = key_value)]
    pub overrides: Vec<(String, String)>,
    /// Accept settings that can lose or double events (auto-commit, acks other than all,
    /// producer idempotence off) [allow_unsafe].
    #[arg(long)]
    pub allow_unsafe: bool,
    /// Seconds to wait at start for a service that does not answer yet (each one is retried,
    /// with the attempts logged, before the command gives up naming it) [connect_timeout_s;
    /// default 30].
    #[arg(long, value_name = "SECONDS")]
    pub connect_timeout_s: Option<u64>,
}

impl KafkaArgs {
    /// The config file with the flags over it (this layer and `more`, the command's own).
    pub fn settings(&self, more: Settings) -> Result<Settings, String> {
        let flags = Settings {
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
            connect_timeout_s: self.connect_timeout_s,
            allow_unsafe: self.allow_unsafe.then_some(true),
            kafka: (self.overrides.iter())
                .map(|(name, value)| (name.clone(), Property::Text(value.clone())))
                .collect(),
            ..Settings::default()
        };
        Ok(Settings::load(self.config.as_deref())?
            .overlay(flags)
            .overlay(more))
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
    /// The PostgreSQL URL (the store) [postgres].
    #[arg(
        long,
        env = "HOLDFAST_POSTGRES_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub postgres: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The consumer group [consumer.group; default holdfast].
    #[arg(long)]
    pub group: Option<String>,
    /// The Redis URL (the deduplication pre-filter) [redis].
    #[arg(
        long,
        env = "HOLDFAST_REDIS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub redis: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The dead-letter topic [dead_letter_topic; default orders.dlq].
    #[arg(long)]
    pub dlq: Option<String>,
    /// Records per poll and per worker batch [consumer.batch_size; default 500].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Worker tasks [consumer.concurrency; default 8].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Milliseconds between offset commits [consumer.commit_interval_ms; default 1000].
    #[arg(long)]
    pub commit_ms: Option<u64>,
    /// Where partitions' progress is kept: kafka (the commits' metadata) or store (the
    /// database, in each batch's transaction, fenced per generation) [consumer.progress;
    /// default kafka].
    #[arg(long, value_name = "MODE")]
    pub progress: Option<ProgressMode>,
    /// Serve the operations endpoint on this address (host:port): /metrics (Prometheus),
    /// /livez and /readyz [consumer.metrics].
    #[arg(long, value_name = "ADDRESS")]
    pub metrics: Option<String>,
    /// /readyz answers 503 while a partition has more polled, uncommitted records than this
    /// [consumer.ready_backlog_max; default 10000].
    #[arg(long, value_name = "RECORDS")]
    pub ready_backlog_max: Option<i64>,
    /// Record this process's history (polls, rebalances, commits, store outcomes, dead
    /// letters) to a file of its own in DIR, for `holdfast check`.
    #[arg(long, value_name = "DIR")]
    pub history: Option<PathBuf>,
}

impl RunArgs {
    pub fn settings(&self) -> Result<Settings, String> {
        self.kafka.settings(Settings {
            redis: self.redis.clone(),
            postgres: self.store.postgres.clone(),
            dead_letter_topic: self.dlq.clone(),
            consumer: ConsumerSection {
                group: self.group.clone(),
                batch_size: self.batch,
                concurrency: self.workers,
                commit_interval_ms: self.commit_ms,
                progress: self.progress,
                metrics: self.metrics.clone(),
                ready_backlog_max: self.ready_backlog_max,
                ..ConsumerSection::default()
            },
            ..Settings::default()
        })
    }
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
    /// Record every send's outcome (acknowledged, and where) to a file of its own in DIR,
    /// for `holdfast check`.
    #[arg(long, value_name = "DIR")]
    pub history: Option<PathBuf>,
    /// Rounds of re-sending what was not acknowledged.
    #[arg(long, default_value_t = 5)]
    pub retries: u64,
}

#[derive(Debug, Args)]
pub struct CompensateArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The compensator's own consumer group [compensator.group; default
    /// holdfast-compensator].
    #[arg(long)]
    pub group: Option<String>,
    /// The group whose effects are checked [compensator.main_group; default consumer.group].
    #[arg(long)]
    pub main_group: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The dead-letter topic [dead_letter_topic; default orders.dlq].
    #[arg(long)]
    pub dlq: Option<String>,
    /// Milliseconds an event waits before its effect is checked [compensator.delay_ms;
    /// default 30000].
    #[arg(long)]
    pub delay_ms: Option<u64>,
    /// Milliseconds between checks [compensator.check_interval_ms; default 5000].
    #[arg(long)]
    pub check_ms: Option<u64>,
    /// Re-sends before an event is dead-lettered [compensator.attempts_max; default 3].
    #[arg(long)]
    pub attempts: Option<u32>,
    /// Stop after this many seconds (default: at SIGINT or SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    pub for_s: Option<u64>,
    /// Record this process's polls, rebalances and dead letters (not its own group's
    /// commits) to a file of its own in DIR, for `holdfast check`.
    #[arg(long, value_name = "DIR")]
    pub history: Option<PathBuf>,
}

impl CompensateArgs {
    pub fn settings(&self) -> Result<Settings, String> {
        self.kafka.settings(Settings {
            postgres: self.store.postgres.clone(),
            dead_letter_topic: self.dlq.clone(),
            compensator: CompensatorSection {
                group: self.group.clone(),
                main_group: self.main_group.clone(),
                delay_ms: self.delay_ms,
                check_interval_ms: self.check_ms,
                attempts_max: self.attempts,
                ..CompensatorSection::default()
            },
            ..Settings::default()
        })
    }
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
    /// The dead-letter topic [dead_letter_topic; default orders.dlq].
    #[arg(long)]
    pub dlq: Option<String>,
}

impl VerifyArgs {
    pub fn settings(&self) -> Result<Settings, String> {
        self.kafka.settings(Settings {
            postgres: self.store.postgres.clone(),
            dead_letter_topic: self.dlq.clone(),
            ..Settings::default()
        })
    }
}

/// `verify`'s flags and the histories to judge.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub verify: VerifyArgs,
    /// The directory the runs recorded their histories in.
    #[arg(long, value_name = "DIR")]
    pub history: PathBuf,
}

#[derive(Debug, Args)]
pub struct CreateTopicArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The Redis URL [redis].
    #[arg(
        long,
        env = "HOLDFAST_REDIS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub redis: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

impl ConfigArgs {
    pub fn settings(&self) -> Result<Settings, String> {
        self.kafka.settings(Settings {
            redis: self.redis.clone(),
            postgres: self.store.postgres.clone(),
            ..Settings::default()
        })
    }
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
        assert_eq!(run.batch, None);
        let settings = run.settings().unwrap();
        assert_eq!(settings.consumer_config().unwrap().batch_size, 500);
        let Ok(ServiceCommand::Run(run)) = parse(&[&base[..], &["--commit-ms", "7"]].concat())
        else {
            panic!("--commit-ms is refused");
        };
        assert_eq!(run.commit_ms, Some(7));
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

    /// Goal: every flag of the service commands sets the key its help names. Method: each
    /// command line with every flag at a value of its own, its layer against the one expected.
    #[test]
    fn every_flag_sets_the_key_it_names() {
        let line = |text: &'static str| text.split_whitespace().collect::<Vec<_>>();
        let kafka = "--brokers b:1 --topic t --set client.id=c --allow-unsafe \
            --connect-timeout-s 3 --postgres p";
        let run = line(
            "run --group g --redis r --dlq d --batch 4 --workers 5 --commit-ms 6 \
            --progress store --metrics m:7 --ready-backlog-max 8",
        );
        let Ok(ServiceCommand::Run(args)) = parse(&[run, line(kafka)].concat()) else {
            panic!("run's flags are refused");
        };
        let common = Settings {
            brokers: Some("b:1".into()),
            topic: Some("t".into()),
            postgres: Some("p".into()),
            connect_timeout_s: Some(3),
            allow_unsafe: Some(true),
            kafka: [("client.id".to_owned(), Property::Text("c".into()))].into(),
            ..Settings::default()
        };
        let expected = Settings {
            redis: Some("r".into()),
            dead_letter_topic: Some("d".into()),
            consumer: ConsumerSection {
                group: Some("g".into()),
                batch_size: Some(4),
                concurrency: Some(5),
                commit_interval_ms: Some(6),
                progress: Some(ProgressMode::Store),
                metrics: Some("m:7".into()),
                ready_backlog_max: Some(8),
                ..ConsumerSection::default()
            },
            ..common.clone()
        };
        assert_eq!(args.settings().unwrap(), expected);

        let compensate = line(
            "compensate --group h --main-group g --dlq e --delay-ms 9 \
            --check-ms 10 --attempts 11",
        );
        let Ok(ServiceCommand::Compensate(args)) = parse(&[compensate, line(kafka)].concat())
        else {
            panic!("compensate's flags are refused");
        };
        let expected = Settings {
            dead_letter_topic: Some("e".into()),
            compensator: CompensatorSection {
                group: Some("h".into()),
                main_group: Some("g".into()),
                delay_ms: Some(9),
                check_interval_ms: Some(10),
                attempts_max: Some(11),
                ..CompensatorSection::default()
            },
            ..common.clone()
        };
        assert_eq!(args.settings().unwrap(), expected);

        let verify = line("verify --truth f --dlq v");
        let Ok(ServiceCommand::Verify(args)) = parse(&[verify, line(kafka)].concat()) else {
            panic!("verify's flags are refused");
        };
        let expected = Settings {
            dead_letter_topic: Some("v".into()),
            ..common.clone()
        };
        assert_eq!(args.settings().unwrap(), expected);
        let config = line("config --redis r");
        let Ok(ServiceCommand::Config(args)) = parse(&[config, line(kafka)].concat()) else {
            panic!("config's flags are refused");
        };
        let expected = Settings {
            redis: Some("r".into()),
            ..common
        };
        assert_eq!(args.settings().unwrap(), expected);
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

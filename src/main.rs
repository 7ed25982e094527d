//! The `holdfast` command line.
//!
//! `holdfast demo` runs the whole pipeline embedded (in-memory log, cache and store) through
//! crash cycles and prints the end-to-end verification; `holdfast workload` prints a generated
//! workload. With the `kafka` feature (on by default), `run`, `produce`, `compensate`,
//! `verify` and `create-topic` work against Kafka, Redis and PostgreSQL (`cli`). Flags are
//! parsed by `clap`. The simulation suite is `cargo sim`.

#[cfg(all(feature = "kafka", not(any(madsim, loom))))]
mod cli;

use clap::{Args, CommandFactory, Parser, Subcommand};
use holdfast::idempotency::memory::{MemoryCache, MemoryStore};
use holdfast::memlog::{MemoryBroker, MemoryLog};
use holdfast::pipeline::{Consumer, ConsumerConfig, Metrics, Services};
use holdfast::ports::NoProbe;
use holdfast::verify::{verify, Application, StoreView};
use holdfast::workload::{Workload, WorkloadConfig};
use std::collections::BTreeSet;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOPIC: &str = "orders";
const GROUP: &str = "holdfast";

/// Loses no order event and applies none twice: the pipeline embedded or against Kafka,
/// Redis and PostgreSQL. The seeded simulation suite is `cargo sim` (see README.md).
#[derive(Debug, Parser)]
#[command(name = "holdfast", version)]
struct Cli {
    /// How the service commands write their logs to stderr (RUST_LOG filters them).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event (tracing-subscriber's JSON format).
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline embedded (in-memory log, cache, store) through crash cycles and verify
    /// the result.
    Demo(DemoArgs),
    /// Print a generated workload, one JSON object (key, payload) per line.
    Workload(WorkloadArgs),
    #[cfg(all(feature = "kafka", not(any(madsim, loom))))]
    #[command(flatten)]
    Service(Box<cli::args::ServiceCommand>),
    /// Print a completion script for a shell.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
struct WorkloadArgs {
    /// Orders in the generated workload.
    #[arg(long, default_value_t = 1000)]
    orders: usize,
    /// The workload's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Args)]
struct DemoArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Consumer incarnations killed mid-flight before the clean run.
    #[arg(long, default_value_t = 10)]
    crashes: u32,
    /// Records per poll and per worker batch.
    #[arg(long, default_value_t = ConsumerConfig::default().batch_size)]
    batch: usize,
    /// Worker tasks.
    #[arg(long, default_value_t = ConsumerConfig::default().concurrency)]
    workers: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    // Only the service commands install a log subscriber.
    let (result, logging) = match cli.command {
        Command::Demo(args) => (demo(args), false),
        Command::Workload(args) => (print_workload(&args), false),
        #[cfg(all(feature = "kafka", not(any(madsim, loom))))]
        Command::Service(command) => {
            init_logs(format);
            (cli::main(*command), true)
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "holdfast", &mut script);
            (write_stdout(|out| out.write_all(&script)), false)
        }
    };
    match result {
        Ok(code) => code,
        // With JSON logs the failure is one more JSON event, so that stderr stays parseable.
        Err(message) if logging && format == LogFormat::Json => {
            tracing::error!(error = %message, "holdfast failed");
            ExitCode::from(2)
        }
        Err(message) => {
            eprintln!("holdfast: {message}");
            ExitCode::from(2)
        }
    }
}

/// A progress bar on stderr over `len` units of `what`; hidden when stderr is not a terminal.
fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    let template = format!("[{{bar:30}}] {{pos}}/{{len}} {what}  {{elapsed}}");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("#>-"));
    }
    bar
}

/// Moves `bar` with the events the demo's consumer applied until aborted.
async fn follow(bar: indicatif::ProgressBar, metrics: Arc<Metrics>) {
    loop {
        bar.set_position(metrics.applied.get());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs go to stderr; RUST_LOG filters them (default: info).
#[cfg(all(feature = "kafka", not(any(madsim, loom))))]
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => logs.json().try_init(),
    };
}

fn workload(args: &WorkloadArgs) -> Result<Workload, String> {
    Workload::generate(&WorkloadConfig {
        seed: args.seed,
        orders: args.orders,
        ..WorkloadConfig::default()
    })
    .map_err(|error| error.to_string())
}

fn print_workload(args: &WorkloadArgs) -> Result<ExitCode, String> {
    let workload = workload(args)?;
    write_stdout(|out| {
        workload.messages.iter().try_for_each(|message| {
            let line = serde_json::json!({
                "key": String::from_utf8_lossy(&message.key),
                "payload": String::from_utf8_lossy(&message.payload),
            });
            writeln!(out, "{line}")
        })
    })
}

/// Writes to stdout, buffered; a reader that stopped reading (`holdfast workload | head`) is
/// not an error.
fn write_stdout(
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<ExitCode, String> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match write(&mut out).and_then(|()| out.flush()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(error) => Err(error.to_string()),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

fn demo(options: DemoArgs) -> Result<ExitCode, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    runtime.block_on(run_demo(options))
}

async fn run_demo(options: DemoArgs) -> Result<ExitCode, String> {
    let started = Instant::now();
    let workload = workload(&options.workload)?;
    let broker = MemoryBroker::new(TOPIC, 8);
    let truth = broker
        .publish_workload(TOPIC, &workload)
        .await
        .map_err(|error| format!("publish failed: {error}"))?
        .truth;
    println!(
        "published {} messages ({} distinct events) to {TOPIC}",
        workload.messages.len(),
        truth.acknowledged.len()
    );
    let store = MemoryStore::new();
    let metrics = Arc::new(Metrics::new());
    let demo = DemoConsumers {
        broker: &broker,
        cache: MemoryCache::new(),
        store: store.clone(),
        metrics: Arc::clone(&metrics),
        config: ConsumerConfig {
            batch_size: options.batch,
            concurrency: options.workers,
            commit_interval: Duration::from_millis(5),
            poll_timeout: Duration::from_millis(5),
            ..ConsumerConfig::default()
        },
    };
    let killed = demo.crash_cycles(options.crashes).await?;
    let applied_before_clean_run = metrics.applied.get();
    let running = demo.start(demo.config.jitter_seed)?.spawn();
    let bar = progress_bar(truth.acknowledged.len() as u64, "events applied");
    let ticker = tokio::spawn(follow(bar.clone(), Arc::clone(&metrics)));
    // Generous: the embedded pipeline applies tens of thousands of events a second; a stuck
    // run ends with an error that says how far the group got instead of hanging.
    let limit = Duration::from_secs(60)
        .saturating_add(Duration::from_millis(options.workload.orders as u64));
    let caught_up = broker
        .wait_caught_up(TOPIC, GROUP, Duration::from_millis(5), limit)
        .await;
    ticker.abort();
    bar.finish_and_clear();
    caught_up?;
    running
        .stop()
        .await
        .map_err(|error| format!("consumer task failed: {error}"))?;
    let view = StoreView {
        ledger: store.applied_events().iter().map(Application::of).collect(),
        rows: store.rows(),
    };
    let report = verify(&truth, &view, &[], &BTreeSet::new());
    println!(
        "{killed} consumers killed mid-flight after {applied_before_clean_run} applications, then a clean run; {} dead letters (malformed input), {} duplicate deliveries dropped, {:.2}s",
        metrics.dead_letters.get(),
        metrics.duplicates_cache.get() + metrics.duplicates_batch.get() + metrics.duplicates_store.get(),
        started.elapsed().as_secs_f64()
    );
    println!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The demo's consumers: every incarnation shares the broker, the cache, the store and the
/// metrics, as restarted processes share the real services.
struct DemoConsumers<'a> {
    broker: &'a MemoryBroker,
    cache: MemoryCache,
    store: MemoryStore,
    metrics: Arc<Metrics>,
    config: ConsumerConfig,
}

type DemoConsumer = Consumer<MemoryLog, MemoryCache, MemoryStore, MemoryBroker, NoProbe>;

impl DemoConsumers<'_> {
    fn start(&self, jitter_seed: u64) -> Result<DemoConsumer, String> {
        let services = Services {
            cache: self.cache.clone(),
            store: self.store.clone(),
            dead_letters: self.broker.clone(),
            probe: NoProbe,
        };
        let config = ConsumerConfig {
            jitter_seed,
            ..self.config.clone()
        };
        Consumer::new(
            config,
            self.broker.consumer(TOPIC, GROUP),
            services,
            Arc::clone(&self.metrics),
        )
        .map_err(|error| format!("bad consumer configuration: {error}"))
    }

    /// Each incarnation is killed after a few milliseconds, mid-flight; returns how many were.
    async fn crash_cycles(&self, crashes: u32) -> Result<u32, String> {
        let mut killed = 0;
        for cycle in 0..crashes {
            let running = self.start(u64::from(cycle))?.spawn();
            tokio::time::sleep(Duration::from_millis(2)).await;
            running.abort().await;
            killed += 1;
        }
        Ok(killed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Goal: the embedded commands take typed flags with the documented defaults.
    #[test]
    fn demo_flags_parse_with_defaults() {
        let cli = Cli::try_parse_from(["holdfast", "demo", "--orders", "7"]).expect("parses");
        let Command::Demo(args) = cli.command else {
            panic!("not the demo: {cli:?}");
        };
        assert_eq!((args.workload.orders, args.workload.seed), (7, 1));
        assert_eq!((args.crashes, args.batch, args.workers), (10, 500, 8));
        assert!(Cli::try_parse_from(["holdfast", "demo", "--orders", "-1"]).is_err());
    }
}

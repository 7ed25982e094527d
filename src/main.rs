//! The `holdfast` command line.
//!
//! `holdfast demo` runs the whole pipeline embedded (in-memory log, cache and store) through
//! crash cycles and prints the end-to-end verification; `holdfast workload` prints a generated
//! workload. With the `kafka` feature, `run`, `produce`, `compensate`, `verify` and
//! `create-topic` work against Kafka, Redis and PostgreSQL (`cli`). The simulation suite is
//! `cargo sim`.

#[cfg(all(feature = "kafka", not(any(madsim, loom))))]
mod cli;

use holdfast::idempotency::memory::{MemoryCache, MemoryStore};
use holdfast::memlog::{MemoryBroker, MemoryLog};
use holdfast::pipeline::{Consumer, ConsumerConfig, Metrics, Services};
use holdfast::ports::NoProbe;
use holdfast::verify::{verify, Application, StoreView};
use holdfast::workload::{Workload, WorkloadConfig};
use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: holdfast <command> [options]
  demo       run the pipeline embedded (in-memory log, cache, store) through crash cycles
             and verify the result: --orders N (1000) --seed N (1) --crashes N (10)
             --batch N (500) --workers N (8)
  workload   print a generated workload, one JSON object per line (key, payload):
             --orders N (1000) --seed N (1)
  help       this text
Against Kafka, Redis and PostgreSQL (the default build; see docs/services.md):";

/// The service commands, compiled only with the `kafka` feature.
const SERVICE_COMMANDS: [&str; 5] = ["run", "produce", "compensate", "verify", "create-topic"];

const TOPIC: &str = "orders";
const GROUP: &str = "holdfast";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `holdfast COMMAND --help` asks for the usage, whatever the command.
    if args.iter().any(|arg| arg == "-h" || arg == "--help") {
        println!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let result = match args.first().map(String::as_str) {
        Some("demo") => options(&args[1..]).and_then(demo),
        Some("workload") => options(&args[1..]).and_then(print_workload),
        Some("help" | "-h" | "--help") | None => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Some(command) if SERVICE_COMMANDS.contains(&command) => {
            service_command(command, &args[1..])
        }
        Some(other) => Err(format!("unknown command `{other}`\n{}", usage())),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("holdfast: {message}");
            ExitCode::from(2)
        }
    }
}

fn usage() -> String {
    #[cfg(all(feature = "kafka", not(any(madsim, loom))))]
    let services = cli::USAGE;
    #[cfg(not(all(feature = "kafka", not(any(madsim, loom)))))]
    let services =
        "  (not in this build: it was built with --no-default-features; rebuild without it)";
    format!("{USAGE}\n{services}\nThe seeded simulation suite is `cargo sim` (see README.md).")
}

#[cfg(all(feature = "kafka", not(any(madsim, loom))))]
fn service_command(command: &str, args: &[String]) -> Result<ExitCode, String> {
    // Logs go to stderr; RUST_LOG filters them (default: info).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    cli::main(command, args).unwrap_or_else(|| Err(format!("unknown command `{command}`")))
}

#[cfg(not(all(feature = "kafka", not(any(madsim, loom)))))]
fn service_command(command: &str, _args: &[String]) -> Result<ExitCode, String> {
    Err(format!(
        "`{command}` needs the kafka feature (on by default; this build was made without it)"
    ))
}

/// Options shared by the commands.
struct Options {
    orders: usize,
    seed: u64,
    crashes: u32,
    batch: usize,
    workers: usize,
}

fn options(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        orders: 1000,
        seed: 1,
        crashes: 10,
        batch: 500,
        workers: 8,
    };
    let mut index = 0;
    while index < args.len() {
        let flag = args[index].as_str();
        let value = args
            .get(index + 1)
            .ok_or_else(|| format!("{flag} needs a value"))?;
        let number = value
            .parse::<u64>()
            .map_err(|_| format!("{flag} expects a non-negative integer, got `{value}`"))?;
        match flag {
            "--orders" => options.orders = number as usize,
            "--seed" => options.seed = number,
            "--crashes" => options.crashes = number as u32,
            "--batch" => options.batch = number as usize,
            "--workers" => options.workers = number as usize,
            _ => return Err(format!("unknown option `{flag}`\n{USAGE}")),
        }
        index += 2;
    }
    Ok(options)
}

fn workload(options: &Options) -> Result<Workload, String> {
    Workload::generate(&WorkloadConfig {
        seed: options.seed,
        orders: options.orders,
        ..WorkloadConfig::default()
    })
    .map_err(|error| error.to_string())
}

fn print_workload(options: Options) -> Result<ExitCode, String> {
    use std::io::Write;
    let workload = workload(&options)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = workload.messages.iter().try_for_each(|message| {
        let line = serde_json::json!({
            "key": String::from_utf8_lossy(&message.key),
            "payload": String::from_utf8_lossy(&message.payload),
        });
        writeln!(out, "{line}")
    });
    match written.and_then(|()| out.flush()) {
        // The reader stopped reading (`holdfast workload | head`): not an error.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(error) => Err(error.to_string()),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

fn demo(options: Options) -> Result<ExitCode, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    runtime.block_on(run_demo(options))
}

async fn run_demo(options: Options) -> Result<ExitCode, String> {
    let started = Instant::now();
    let workload = workload(&options)?;
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
    demo.crash_cycles(options.crashes).await?;
    let running = demo.start(demo.config.jitter_seed)?.spawn();
    // Generous: the embedded pipeline applies tens of thousands of events a second; a stuck
    // run ends with an error that says how far the group got instead of hanging.
    let limit =
        Duration::from_secs(60).saturating_add(Duration::from_millis(options.orders as u64));
    broker
        .wait_caught_up(TOPIC, GROUP, Duration::from_millis(5), limit)
        .await?;
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
        "{} crash cycles, then a clean run; {} dead letters (malformed input), {} duplicate deliveries dropped, {:.2}s",
        options.crashes,
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

    /// Each incarnation is killed after a few milliseconds, mid-flight.
    async fn crash_cycles(&self, crashes: u32) -> Result<(), String> {
        for cycle in 0..crashes {
            let running = self.start(u64::from(cycle))?.spawn();
            tokio::time::sleep(Duration::from_millis(2)).await;
            running.abort().await;
        }
        Ok(())
    }
}

//! The commands that run against the real services (`run`, `produce`, `compensate`,
//! `verify`, `create-topic`), built with the `kafka` feature.
//!
//! Each command takes its flags ([`args`]) over the config file ([`config`]), builds a
//! multi-threaded runtime and calls into the library: the adapters in `holdfast::adapters` and the pipeline in `holdfast::pipeline`.
//! Addresses default to the environment `scripts/services-up` writes.

pub mod args;
mod check;
mod compensate;
mod config;
mod ops_http;
mod produce;
mod run;
mod startup;
mod truth;
mod verify;

use args::{ConfigArgs, CreateTopicArgs, ServiceCommand};
use config::Settings;
use holdfast::adapters::KafkaSettings;
use std::future::Future;
use std::process::ExitCode;

/// Runs a service command.
pub fn main(command: ServiceCommand) -> Result<ExitCode, String> {
    match command {
        ServiceCommand::Run(args) => run::main(args),
        ServiceCommand::Produce(args) => produce::main(args),
        ServiceCommand::Compensate(args) => compensate::main(args),
        ServiceCommand::Verify(args) => verify::main(args),
        ServiceCommand::Check(args) => check::main(args),
        ServiceCommand::CreateTopic(args) => create_topic(args),
        ServiceCommand::Config(args) => print_config(args),
    }
}

/// `holdfast config`: the effective configuration as TOML, secrets masked.
fn print_config(args: ConfigArgs) -> Result<ExitCode, String> {
    let effective = args.settings()?.effective()?;
    let text = toml::to_string(&effective).map_err(|error| error.to_string())?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn create_topic(args: CreateTopicArgs) -> Result<ExitCode, String> {
    let resolved = args.kafka.settings(Settings::default())?;
    let settings = resolved.kafka_settings()?;
    let wait = resolved.connect_timeout();
    let (topic, partitions) = (resolved.topic(), args.partitions);
    block_on(async {
        reach_brokers(&settings, None, wait).await?;
        holdfast::adapters::create_topic(&settings, &topic, partitions)
            .await
            .map_err(|error| error.to_string())?;
        println!("topic {topic}: {partitions} partitions");
        Ok(ExitCode::SUCCESS)
    })
}

/// Waits (see [`startup`]) until the brokers answer and, given a `topic`, hold it.
async fn reach_brokers(
    settings: &KafkaSettings,
    topic: Option<&str>,
    wait: std::time::Duration,
) -> Result<(), String> {
    startup::connect("kafka", &settings.brokers, wait, || {
        // Each attempt may take its share of the wait, at most 10 s.
        holdfast::adapters::probe_brokers(
            settings,
            topic,
            wait.min(std::time::Duration::from_secs(10)),
        )
    })
    .await
}

/// Connects to PostgreSQL under the start-up policy ([`startup`]).
async fn connect_store(
    url: &str,
    wait: std::time::Duration,
) -> Result<holdfast::adapters::PostgresStore, String> {
    use holdfast::adapters::PostgresStore;
    let address = PostgresStore::describe_address(url);
    startup::connect("postgresql", &address, wait, || PostgresStore::connect(url)).await
}

/// Runs `future` on a multi-threaded runtime with I/O, timers and signals.
fn block_on<F: Future<Output = Result<ExitCode, String>>>(future: F) -> Result<ExitCode, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?
        .block_on(future)
}

/// Resolves on SIGINT or SIGTERM.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

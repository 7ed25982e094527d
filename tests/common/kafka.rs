//! Helpers for the tests against the real Kafka-protocol broker: fresh topics, the ends of a
//! topic, waiting for a group to commit them, and driving the `holdfast` binary.

use super::env;
use holdfast::adapters::kafka::{create_topic, KafkaGroupOffsets, KafkaSettings};
use holdfast::ports::{GroupOffsets, PartitionId};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Partitions of every test topic.
pub const PARTITIONS: i32 = 8;

/// A name no earlier run used (topics and groups outlive a test on the broker).
pub fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("hf-{name}-{nanos}")
}

/// A fresh topic and dead-letter topic on the broker.
pub struct Topics {
    pub settings: KafkaSettings,
    pub topic: String,
    pub dead_letters: String,
}

/// Creates a fresh topic with [`PARTITIONS`] partitions and its one-partition dead-letter topic.
pub async fn topics(name: &str) -> Topics {
    let settings = KafkaSettings::new(env("HOLDFAST_KAFKA_BROKERS"));
    let topic = unique(name);
    let dead_letters = format!("{topic}.dlq");
    create_topic(&settings, &topic, PARTITIONS).await.unwrap();
    create_topic(&settings, &dead_letters, 1).await.unwrap();
    Topics {
        settings,
        topic,
        dead_letters,
    }
}

/// The end offset (high watermark) of every non-empty partition of `topic`, asked of the
/// broker: the truth file does not list malformed messages, so it cannot say where a
/// partition ends.
pub async fn partition_ends(topic: &str) -> BTreeMap<PartitionId, i64> {
    let brokers = env("HOLDFAST_KAFKA_BROKERS");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "holdfast-test-ends")
            .create()
            .unwrap();
        let timeout = Duration::from_secs(30);
        let mut ends = BTreeMap::new();
        for partition in 0..PARTITIONS {
            let (low, high) = reader.fetch_watermarks(&topic, partition, timeout).unwrap();
            if high > low {
                ends.insert(partition, high);
            }
        }
        ends
    })
    .await
    .unwrap()
}

/// Waits (at most `limit`) until `group` committed the end of every partition in `ends`.
pub async fn wait_caught_up(
    topics: &Topics,
    group: &str,
    ends: &BTreeMap<PartitionId, i64>,
    limit: Duration,
) {
    let offsets = KafkaGroupOffsets::connect(&topics.settings, &topics.topic).unwrap();
    let deadline = Instant::now() + limit;
    loop {
        // The broker may be restarting: an error is one more reason to wait.
        let committed = committed(&offsets, group, ends).await;
        match &committed {
            Ok(committed) if at_ends(committed, ends) => return,
            Ok(committed) => assert!(
                Instant::now() < deadline,
                "group {group} did not catch up: committed {committed:?}, ends {ends:?}"
            ),
            Err(error) => assert!(Instant::now() < deadline, "group {group}: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `group` has committed the end of every partition now (an error reads as no).
pub async fn caught_up(
    offsets: &KafkaGroupOffsets,
    group: &str,
    ends: &BTreeMap<PartitionId, i64>,
) -> bool {
    committed(offsets, group, ends)
        .await
        .is_ok_and(|committed| at_ends(&committed, ends))
}

async fn committed(
    offsets: &KafkaGroupOffsets,
    group: &str,
    ends: &BTreeMap<PartitionId, i64>,
) -> Result<Vec<Option<i64>>, String> {
    let partitions: Vec<PartitionId> = ends.keys().copied().collect();
    offsets
        .committed(group, &partitions)
        .await
        .map_err(|error| error.to_string())
}

fn at_ends(committed: &[Option<i64>], ends: &BTreeMap<PartitionId, i64>) -> bool {
    committed.len() == ends.len()
        && committed
            .iter()
            .zip(ends.values())
            .all(|(committed, end)| *committed == Some(*end))
}

/// One HTTP GET of a metrics endpoint; the whole response.
pub fn scrape(address: &str) -> String {
    try_scrape(address).unwrap_or_else(|error| panic!("scraping {address}: {error}"))
}

/// [`scrape`], or the error (the endpoint may not be listening yet).
pub fn try_scrape(address: &str) -> std::io::Result<String> {
    http_get(address, "/metrics")
}

/// One HTTP GET of `path` on the operations endpoint at `address`; the whole response.
pub fn http_get(address: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: holdfast\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// The value of the unlabelled metric `name` in a scraped response.
pub fn metric(scraped: &str, name: &str) -> Option<u64> {
    scraped.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The partitions a scraped consumer currently owns (it keeps gauges only for those).
pub fn owned_partitions(scraped: &str) -> Vec<PartitionId> {
    scraped
        .lines()
        .filter_map(|line| line.strip_prefix("holdfast_in_flight{partition=\""))
        .filter_map(|rest| rest.split('"').next()?.parse().ok())
        .collect()
}

/// Records in flight over every partition of a scraped consumer (the gauge
/// [`owned_partitions`] reads the labels of).
pub fn in_flight_total(scraped: &str) -> u64 {
    scraped
        .lines()
        .filter_map(|line| line.strip_prefix("holdfast_in_flight{"))
        .filter_map(|rest| rest.rsplit(' ').next()?.trim().parse::<u64>().ok())
        .sum()
}

/// A free loopback address for a metrics endpoint (bound and released).
pub fn free_address() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

/// Runs the `holdfast` binary to completion; returns its stdout, panicking on failure.
pub fn holdfast(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "holdfast {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Starts `holdfast` with `args` in the background (stdout piped, stderr discarded).
pub fn spawn_holdfast(args: &[&str]) -> Spawned {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Spawned { child: Some(child) }
}

/// A spawned `holdfast`, killed when dropped unless it was handed on: a test that panics
/// must not leave a consumer running against the shared broker (it would disturb every later
/// test and benchmark).
pub struct Spawned {
    child: Option<std::process::Child>,
}

impl Spawned {
    /// The child, no longer killed on drop.
    pub fn into_child(mut self) -> std::process::Child {
        self.child.take().expect("a spawned child until handed on")
    }
}

impl std::ops::Deref for Spawned {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        self.child
            .as_ref()
            .expect("a spawned child until handed on")
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        self.child
            .as_mut()
            .expect("a spawned child until handed on")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends SIGTERM to `child` and waits for it; returns its stdout, panicking unless it drained
/// and exited cleanly.
pub fn terminate(child: Spawned) -> String {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.into_child().wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("stopped:"), "{stdout}");
    stdout
}

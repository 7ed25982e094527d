//! Where the broker is, holdfast's client defaults, and the refusal of unsafe overrides.

use super::LOG;
use crate::adapters::AdapterError;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

/// Where the broker is and how the clients are configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `bootstrap.servers`: `host:port[,host:port...]`.
    pub brokers: String,
    /// librdkafka properties applied on top of holdfast's defaults, to every client.
    pub overrides: Vec<(String, String)>,
    /// Accept overrides that can lose or double events (auto commit, weak acks, idempotence
    /// off). Off by default: such settings are refused.
    pub allow_unsafe: bool,
}

/// Consumer defaults: offsets are committed only by the pipeline, a new group starts at the
/// beginning, end of partition is not an event.
const CONSUMER_DEFAULTS: [(&str, &str); 5] = [
    ("enable.auto.commit", "false"),
    ("auto.offset.reset", "earliest"),
    ("enable.partition.eof", "false"),
    // A member that vanished without leaving is replaced within seconds, not 45.
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "1000"),
];

/// Producer defaults: every in-sync replica acknowledges, retries cannot duplicate or reorder,
/// keys land where a Java producer puts them, no compression (the test broker mishandles it).
pub(super) const PRODUCER_DEFAULTS: [(&str, &str); 6] = [
    ("acks", "all"),
    ("enable.idempotence", "true"),
    ("compression.type", "none"),
    ("linger.ms", "5"),
    ("partitioner", "murmur2_random"),
    ("message.timeout.ms", "30000"),
];

impl KafkaSettings {
    /// Settings for `brokers` with holdfast's defaults.
    pub fn new(brokers: impl Into<String>) -> KafkaSettings {
        KafkaSettings {
            brokers: brokers.into(),
            ..KafkaSettings::default()
        }
    }

    /// Refuses settings that break the guarantees, unless `allow_unsafe`.
    pub fn validate(&self) -> Result<(), AdapterError> {
        if self.brokers.trim().is_empty() {
            return Err(config_error("no brokers given"));
        }
        if self.allow_unsafe {
            return Ok(());
        }
        for (name, value) in &self.overrides {
            let value = value.trim().to_ascii_lowercase();
            let refusal = match name.trim() {
                "enable.auto.commit" if value != "false" => Some(
                    "enable.auto.commit would commit offsets of records not yet processed (loss)",
                ),
                "acks" | "request.required.acks" if value != "all" && value != "-1" => {
                    Some("acks other than all lets the broker lose acknowledged events")
                }
                "enable.idempotence" if value != "true" => {
                    Some("enable.idempotence=false lets producer retries duplicate and reorder")
                }
                _ => None,
            };
            if let Some(reason) = refusal {
                return Err(config_error(format!(
                    "refusing unsafe setting {name}={value}: {reason} (override with allow_unsafe, `--allow-unsafe` on the command line)"
                )));
            }
        }
        Ok(())
    }

    pub(super) fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (name, value) in defaults {
            config.set(*name, *value);
        }
        for (name, value) in &self.overrides {
            config.set(name, value);
        }
        config
    }

    pub(super) fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.client_config(&CONSUMER_DEFAULTS);
        config.set("group.id", group);
        config
    }
}

pub(super) fn config_error(detail: impl ToString) -> AdapterError {
    AdapterError::Config {
        service: LOG,
        detail: detail.to_string(),
    }
}

pub(super) fn connect_error(error: &KafkaError) -> AdapterError {
    AdapterError::Connect {
        service: LOG,
        detail: error.to_string(),
    }
}

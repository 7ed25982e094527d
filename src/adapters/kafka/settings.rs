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
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("auto.offset.reset", "earliest"),
    ("enable.partition.eof", "false"),
    // A member that vanished without leaving is replaced within seconds, not 45.
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "1000"),
];

/// Producer defaults: every in-sync replica acknowledges, retries cannot duplicate or reorder,
/// keys land where a Java producer puts them, no compression (the test broker mishandles it).
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
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

    /// Refuses settings that break the guarantees, unless `allow_unsafe`: an unsafe override,
    /// and a producer or consumer configuration, as built, that lacks a guarantee.
    pub fn validate(&self) -> Result<(), AdapterError> {
        if self.brokers.trim().is_empty() {
            return Err(config_error("no brokers given"));
        }
        if self.allow_unsafe {
            return Ok(());
        }
        for (name, value) in &self.overrides {
            let value = value.trim().to_ascii_lowercase();
            if let Some(reason) = unsafe_reason(name.trim(), &value) {
                return Err(config_error(format!(
                    "refusing unsafe setting {name}={value}: {reason} (override with allow_unsafe, `--allow-unsafe` on the command line)"
                )));
            }
        }
        self.producer_config()?;
        self.consumer_config("holdfast")?;
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

    /// The producer's configuration, refused unless it carries every producer guarantee.
    pub(super) fn producer_config(&self) -> Result<ClientConfig, AdapterError> {
        self.guarded(self.client_config(PRODUCER_DEFAULTS), &PRODUCER_GUARANTEES)
    }

    /// A consumer's configuration for `group`, refused unless it commits only by hand.
    pub(super) fn consumer_config(&self, group: &str) -> Result<ClientConfig, AdapterError> {
        let mut config = self.client_config(CONSUMER_DEFAULTS);
        config.set("group.id", group);
        self.guarded(config, &CONSUMER_GUARANTEES)
    }

    /// Checks the configuration a client is about to be built with, so that a default lost
    /// or weakened is refused like an unsafe override (librdkafka's own defaults are
    /// `enable.auto.commit=true` and `enable.idempotence=false`).
    fn guarded(
        &self,
        config: ClientConfig,
        guarantees: &[Guarantee],
    ) -> Result<ClientConfig, AdapterError> {
        if self.allow_unsafe {
            return Ok(config);
        }
        for (name, accepted, reason) in guarantees {
            let value = config
                .get(name)
                .map(|value| value.trim().to_ascii_lowercase());
            if !value
                .as_deref()
                .is_some_and(|value| accepted.contains(&value))
            {
                return Err(config_error(format!(
                    "the client configuration has {name}={}, not {}: {reason}",
                    value.as_deref().unwrap_or("(librdkafka's default)"),
                    accepted[0]
                )));
            }
        }
        Ok(config)
    }
}

/// A setting every client of one kind must carry: its name, the values that keep the
/// guarantee, and what is lost without it.
type Guarantee = (&'static str, &'static [&'static str], &'static str);

const PRODUCER_GUARANTEES: [Guarantee; 2] = [
    ("acks", &["all", "-1"], ACKS_REASON),
    ("enable.idempotence", &["true"], IDEMPOTENCE_REASON),
];

const CONSUMER_GUARANTEES: [Guarantee; 1] =
    [("enable.auto.commit", &["false"], AUTO_COMMIT_REASON)];

const AUTO_COMMIT_REASON: &str =
    "enable.auto.commit would commit offsets of records not yet processed (loss)";
const ACKS_REASON: &str = "acks other than all lets the broker lose acknowledged events";
const IDEMPOTENCE_REASON: &str =
    "enable.idempotence=false lets producer retries duplicate and reorder";

/// Why an override named `name` with (lower-cased) `value` breaks a guarantee, if it does:
/// the guarantees' own table, with librdkafka's alias of `acks`.
fn unsafe_reason(name: &str, value: &str) -> Option<&'static str> {
    let name = match name {
        "request.required.acks" => "acks",
        name => name,
    };
    let guarantee = PRODUCER_GUARANTEES
        .iter()
        .chain(&CONSUMER_GUARANTEES)
        .find(|(guaranteed, _, _)| *guaranteed == name)?;
    let (_, accepted, reason) = guarantee;
    (!accepted.contains(&value)).then_some(*reason)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the clients are built with the guarantees, whatever librdkafka's own defaults.
    /// Method: read the built producer and consumer configurations back.
    #[test]
    fn built_clients_carry_the_guarantees() {
        let settings = KafkaSettings::new("127.0.0.1:1");
        let producer = settings.producer_config().unwrap();
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("bootstrap.servers"), Some("127.0.0.1:1"));
        let consumer = settings.consumer_config("g").unwrap();
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(consumer.get("group.id"), Some("g"));
    }

    /// Goal: a configuration missing or weakening a guarantee is refused with its name,
    /// unless unsafe settings are allowed, and an allowed override reaches the client.
    /// Method: the guard on bare and weakened configurations.
    #[test]
    fn a_configuration_without_a_guarantee_is_refused() {
        let mut settings = KafkaSettings::new("127.0.0.1:1");
        let error = settings
            .guarded(ClientConfig::new(), &PRODUCER_GUARANTEES)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("acks=(librdkafka's default), not all"),
            "{error}"
        );
        let mut weak = ClientConfig::new();
        weak.set("acks", "-1").set("enable.idempotence", "false");
        let error = settings
            .guarded(weak, &PRODUCER_GUARANTEES)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("enable.idempotence=false, not true"),
            "{error}"
        );
        let mut auto = ClientConfig::new();
        auto.set("enable.auto.commit", "TRUE");
        assert!(settings.guarded(auto, &CONSUMER_GUARANTEES).is_err());

        settings.allow_unsafe = true;
        settings.overrides = vec![("enable.auto.commit".into(), "true".into())];
        assert!(settings
            .guarded(ClientConfig::new(), &PRODUCER_GUARANTEES)
            .is_ok());
        let consumer = settings.consumer_config("g").unwrap();
        assert_eq!(consumer.get("enable.auto.commit"), Some("true"));
    }
}

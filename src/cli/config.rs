//! One configuration for every service command: a TOML file (`--config`, or
//! `HOLDFAST_CONFIG`), the environment and the flags, merged in that order over the library's
//! defaults (a flag wins over the environment, which wins over the file). Unknown keys are
//! errors; `holdfast config` prints the result with secrets masked. `docs/holdfast.toml` is
//! the example, with every key at its default.
//!
//! The file mirrors the flags: a layer is a [`Settings`] with some keys set, and the flags of
//! a command become one more layer, so the merge is written once.

use holdfast::adapters::KafkaSettings;
use holdfast::offsets::Limits;
use holdfast::pipeline::{CompensatorConfig, ConsumerConfig, ProgressMode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub const TOPIC_DEFAULT: &str = "orders";
pub const COMPENSATOR_GROUP_DEFAULT: &str = "holdfast-compensator";
pub const CONNECT_TIMEOUT_S_DEFAULT: u64 = 30;
pub const READY_BACKLOG_MAX_DEFAULT: i64 = 10_000;

/// Every key of the configuration; `None` is "not set in this layer".
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Bootstrap brokers, host:port[,host:port...].
    pub brokers: Option<String>,
    pub topic: Option<String>,
    /// The Redis URL (the deduplication pre-filter).
    pub redis: Option<String>,
    /// The PostgreSQL URL (the store).
    pub postgres: Option<String>,
    pub dead_letter_topic: Option<String>,
    pub connect_timeout_s: Option<u64>,
    pub allow_unsafe: Option<bool>,
    #[serde(default)]
    pub consumer: ConsumerSection,
    #[serde(default)]
    pub compensator: CompensatorSection,
    /// librdkafka properties under their own names, for every client.
    #[serde(default)]
    pub kafka: BTreeMap<String, Property>,
}

/// `holdfast run`: the consumer group and every [`ConsumerConfig`] field.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSection {
    pub group: Option<String>,
    pub batch_size: Option<usize>,
    pub concurrency: Option<usize>,
    pub commit_interval_ms: Option<u64>,
    pub poll_timeout_ms: Option<u64>,
    pub record_attempts_max: Option<u32>,
    pub backoff_initial_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub stall_after_ms: Option<u64>,
    pub revoke_grace_ms: Option<u64>,
    pub drain_timeout_ms: Option<u64>,
    pub cache_ttl_s: Option<u64>,
    pub jitter_seed: Option<u64>,
    /// Where partitions' progress is kept: `kafka` (commit metadata) or `store` (the
    /// database, in each batch's transaction).
    pub progress: Option<ProgressMode>,
    pub in_flight_max: Option<usize>,
    pub span_max: Option<u64>,
    pub metadata_budget_bytes: Option<usize>,
    /// Where the operations endpoint listens (none by default).
    pub metrics: Option<String>,
    pub ready_backlog_max: Option<i64>,
}

/// `holdfast compensate`: its own group and every [`CompensatorConfig`] field.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompensatorSection {
    pub group: Option<String>,
    /// The group whose effects are checked (default: `consumer.group`).
    pub main_group: Option<String>,
    pub delay_ms: Option<u64>,
    pub check_interval_ms: Option<u64>,
    pub attempts_max: Option<u32>,
    pub batch_size: Option<usize>,
    pub poll_timeout_ms: Option<u64>,
    pub in_flight_max: Option<usize>,
    pub span_max: Option<u64>,
    pub metadata_budget_bytes: Option<usize>,
}

/// A librdkafka property's value as TOML writes it; librdkafka takes them all as text.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Property {
    Text(String),
    Integer(i64),
    Flag(bool),
}

impl Property {
    fn text(&self) -> String {
        match self {
            Property::Text(text) => text.clone(),
            Property::Integer(number) => number.to_string(),
            Property::Flag(flag) => flag.to_string(),
        }
    }
}

/// Sets each field of `$base` that `$top` sets.
macro_rules! overlay {
    ($base:expr, $top:expr; $($field:ident),+ $(,)?) => {
        $(if $top.$field.is_some() { $base.$field = $top.$field; })+
    };
}

impl Settings {
    /// The file at `path`, or an empty layer without one; errors name the file and, for a
    /// bad key or value, its line.
    pub fn load(path: Option<&Path>) -> Result<Settings, String> {
        let Some(path) = path else {
            return Ok(Settings::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("config file {}: {error}", path.display()))?;
        Settings::parse(&text).map_err(|error| format!("config file {}: {error}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Settings, String> {
        toml::from_str(text).map_err(|error| error.to_string())
    }

    /// This layer with `top` over it: every key `top` sets wins.
    pub fn overlay(mut self, top: Settings) -> Settings {
        overlay!(self, top; brokers, topic, redis, postgres, dead_letter_topic,
            connect_timeout_s, allow_unsafe);
        let (base, top_consumer) = (&mut self.consumer, top.consumer);
        overlay!(base, top_consumer; group, batch_size, concurrency, commit_interval_ms,
            poll_timeout_ms, record_attempts_max, backoff_initial_ms, backoff_max_ms,
            stall_after_ms, revoke_grace_ms, drain_timeout_ms, cache_ttl_s, jitter_seed, progress,
            in_flight_max, span_max, metadata_budget_bytes, metrics, ready_backlog_max);
        let (base, top_compensator) = (&mut self.compensator, top.compensator);
        overlay!(base, top_compensator; group, main_group, delay_ms, check_interval_ms,
            attempts_max, batch_size, poll_timeout_ms, in_flight_max, span_max,
            metadata_budget_bytes);
        self.kafka.extend(top.kafka);
        self
    }

    pub fn topic(&self) -> String {
        self.topic.clone().unwrap_or_else(|| TOPIC_DEFAULT.into())
    }

    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| ConsumerConfig::default().dead_letter_topic)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_s.unwrap_or(CONNECT_TIMEOUT_S_DEFAULT))
    }

    pub fn group(&self) -> String {
        self.consumer
            .group
            .clone()
            .unwrap_or_else(|| CompensatorConfig::default().main_group)
    }

    pub fn compensator_group(&self) -> String {
        let group = self.compensator.group.as_deref();
        group.unwrap_or(COMPENSATOR_GROUP_DEFAULT).into()
    }

    pub fn ready_backlog_max(&self) -> i64 {
        let set = self.consumer.ready_backlog_max;
        set.unwrap_or(READY_BACKLOG_MAX_DEFAULT)
    }

    /// A required address: an error says every place it can come from.
    fn required(
        value: &Option<String>,
        key: &str,
        flag: &str,
        env: &str,
    ) -> Result<String, String> {
        value.clone().ok_or_else(|| {
            format!("no {key} given: pass {flag}, set {env}, or set `{key}` in the config file")
        })
    }

    /// The store's address, required.
    pub fn postgres_url(&self) -> Result<String, String> {
        let env = "HOLDFAST_POSTGRES_URL";
        Settings::required(&self.postgres, "postgres", "--postgres", env)
    }

    /// The cache's address, required.
    pub fn redis_url(&self) -> Result<String, String> {
        Settings::required(&self.redis, "redis", "--redis", "HOLDFAST_REDIS_URL")
    }

    /// The broker settings, refused here, before anything connects, if unsafe.
    pub fn kafka_settings(&self) -> Result<KafkaSettings, String> {
        let brokers = Settings::required(
            &self.brokers,
            "brokers",
            "--brokers",
            "HOLDFAST_KAFKA_BROKERS",
        )?;
        let settings = KafkaSettings {
            brokers,
            overrides: (self.kafka.iter())
                .map(|(name, value)| (name.clone(), value.text()))
                .collect(),
            allow_unsafe: self.allow_unsafe.unwrap_or(false),
        };
        settings.validate().map_err(|error| error.to_string())?;
        Ok(settings)
    }

    /// The consumer's configuration: the defaults with every key set, validated.
    pub fn consumer_config(&self) -> Result<ConsumerConfig, String> {
        let mut config = ConsumerConfig::default();
        let set = &self.consumer;
        let ms =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
        config.batch_size = set.batch_size.unwrap_or(config.batch_size);
        config.concurrency = set.concurrency.unwrap_or(config.concurrency);
        config.commit_interval = ms(set.commit_interval_ms, config.commit_interval);
        config.poll_timeout = ms(set.poll_timeout_ms, config.poll_timeout);
        config.record_attempts_max = set
            .record_attempts_max
            .unwrap_or(config.record_attempts_max);
        config.backoff_initial = ms(set.backoff_initial_ms, config.backoff_initial);
        config.backoff_max = ms(set.backoff_max_ms, config.backoff_max);
        config.stall_after = ms(set.stall_after_ms, config.stall_after);
        config.revoke_grace = ms(set.revoke_grace_ms, config.revoke_grace);
        config.drain_timeout = ms(set.drain_timeout_ms, config.drain_timeout);
        config.cache_ttl = set
            .cache_ttl_s
            .map_or(config.cache_ttl, Duration::from_secs);
        config.jitter_seed = set.jitter_seed.unwrap_or(config.jitter_seed);
        config.progress = set.progress.unwrap_or(config.progress);
        config.limits = limits(set.in_flight_max, set.span_max, set.metadata_budget_bytes);
        config.dead_letter_topic = self.dead_letter_topic();
        config
            .validate()
            .map_err(|error| format!("bad consumer configuration: {error}"))?;
        Ok(config)
    }

    /// The compensator's configuration: the defaults with every key set.
    pub fn compensator_config(&self) -> Result<CompensatorConfig, String> {
        let mut config = CompensatorConfig::default();
        let set = &self.compensator;
        let ms =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
        config.main_group = set.main_group.clone().unwrap_or_else(|| self.group());
        config.topic = self.topic();
        config.dead_letter_topic = self.dead_letter_topic();
        config.delay = ms(set.delay_ms, config.delay);
        config.check_interval = ms(set.check_interval_ms, config.check_interval);
        config.attempts_max = set.attempts_max.unwrap_or(config.attempts_max);
        config.batch_size = set.batch_size.unwrap_or(config.batch_size);
        config.poll_timeout = ms(set.poll_timeout_ms, config.poll_timeout);
        config.limits = limits(set.in_flight_max, set.span_max, set.metadata_budget_bytes);
        if self.compensator_group() == config.main_group {
            return Err("the compensator needs its own group, not the main group".into());
        }
        Ok(config)
    }

    /// Every key with the value a command would use (defaults filled in), secrets masked:
    /// what `holdfast config` prints.
    pub fn effective(&self) -> Result<Settings, String> {
        let consumer = self.consumer_config()?;
        let compensator = self.compensator_config()?;
        Ok(Settings {
            brokers: self.brokers.clone(),
            topic: Some(self.topic()),
            redis: self.redis.as_deref().map(mask_url),
            postgres: self.postgres.as_deref().map(mask_url),
            dead_letter_topic: Some(self.dead_letter_topic()),
            connect_timeout_s: Some(self.connect_timeout().as_secs()),
            allow_unsafe: Some(self.allow_unsafe.unwrap_or(false)),
            consumer: ConsumerSection::of(&consumer, self),
            compensator: CompensatorSection::of(&compensator, self),
            kafka: (self.kafka.iter())
                .map(|(name, value)| (name.clone(), mask_property(name, value)))
                .collect(),
        })
    }
}

fn limits(in_flight_max: Option<usize>, span_max: Option<u64>, budget: Option<usize>) -> Limits {
    let default = Limits::default();
    Limits {
        in_flight_max: in_flight_max.unwrap_or(default.in_flight_max),
        span_max: span_max.unwrap_or(default.span_max),
        metadata_budget_bytes: budget.unwrap_or(default.metadata_budget_bytes),
    }
}

fn millis(duration: Duration) -> Option<u64> {
    u64::try_from(duration.as_millis()).ok()
}

impl ConsumerSection {
    fn of(config: &ConsumerConfig, settings: &Settings) -> ConsumerSection {
        ConsumerSection {
            group: Some(settings.group()),
            batch_size: Some(config.batch_size),
            concurrency: Some(config.concurrency),
            commit_interval_ms: millis(config.commit_interval),
            poll_timeout_ms: millis(config.poll_timeout),
            record_attempts_max: Some(config.record_attempts_max),
            backoff_initial_ms: millis(config.backoff_initial),
            backoff_max_ms: millis(config.backoff_max),
            stall_after_ms: millis(config.stall_after),
            revoke_grace_ms: millis(config.revoke_grace),
            drain_timeout_ms: millis(config.drain_timeout),
            cache_ttl_s: Some(config.cache_ttl.as_secs()),
            jitter_seed: Some(config.jitter_seed),
            progress: Some(config.progress),
            in_flight_max: Some(config.limits.in_flight_max),
            span_max: Some(config.limits.span_max),
            metadata_budget_bytes: Some(config.limits.metadata_budget_bytes),
            metrics: settings.consumer.metrics.clone(),
            ready_backlog_max: Some(settings.ready_backlog_max()),
        }
    }
}

impl CompensatorSection {
    fn of(config: &CompensatorConfig, settings: &Settings) -> CompensatorSection {
        CompensatorSection {
            group: Some(settings.compensator_group()),
            main_group: Some(config.main_group.clone()),
            delay_ms: millis(config.delay),
            check_interval_ms: millis(config.check_interval),
            attempts_max: Some(config.attempts_max),
            batch_size: Some(config.batch_size),
            poll_timeout_ms: millis(config.poll_timeout),
            in_flight_max: Some(config.limits.in_flight_max),
            span_max: Some(config.limits.span_max),
            metadata_budget_bytes: Some(config.limits.metadata_budget_bytes),
        }
    }
}

const MASK: &str = "***";

/// `url` with its password replaced: `scheme://user:***@host`, `password=***` in a URL's
/// query or in a PostgreSQL key-value string.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return mask_pairs(url, ' ');
    };
    let (address, query) = match rest.split_once('?') {
        Some((address, query)) => (address, Some(mask_pairs(query, '&'))),
        None => (rest, None),
    };
    let address = match address.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{user}:{MASK}@{host}"),
            None => address.to_owned(),
        },
        None => address.to_owned(),
    };
    match query {
        Some(query) => format!("{scheme}://{address}?{query}"),
        None => format!("{scheme}://{address}"),
    }
}

/// `key=value` pairs split by `separator`, with the value of `password` masked.
fn mask_pairs(text: &str, separator: char) -> String {
    let pairs = text
        .split(separator)
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.trim().eq_ignore_ascii_case("password") => {
                format!("{key}={MASK}")
            }
            _ => pair.to_owned(),
        });
    pairs.collect::<Vec<_>>().join(&separator.to_string())
}

/// A librdkafka property's value, masked when its name says it is a secret.
fn mask_property(name: &str, value: &Property) -> Property {
    let secret = ["password", "secret", "sasl.oauthbearer.config"];
    if secret.iter().any(|word| name.contains(word)) {
        Property::Text(MASK.into())
    } else {
        value.clone()
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

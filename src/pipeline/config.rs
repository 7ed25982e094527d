//! Consumer configuration and its validation.

use crate::offsets::Limits;
use std::time::Duration;

/// Everything the consumer loop needs to know. [`ConsumerConfig::default`] is the production
/// default; [`ConsumerConfig::validate`] refuses combinations that would stall or lose data.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Records asked for per poll (the seed's 500).
    pub batch_size: usize,
    /// Worker tasks. Records of one order id always go to the same worker, in poll order.
    pub concurrency: usize,
    /// Bounds of the offset tracker (in flight, span, metadata bytes).
    pub limits: Limits,
    /// How often finished offsets are committed asynchronously.
    pub commit_interval: Duration,
    /// How long one poll waits for the first record.
    pub poll_timeout: Duration,
    /// Attempts for a batch the services rejected before it is split and the failing event
    /// dead-lettered. Outages are retried without limit and never count here.
    pub record_attempts_max: u32,
    /// First retry delay; doubles per attempt with jitter, up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long a commit point may stay put while its partition has work in flight before it
    /// is reported as stalled.
    pub stall_after: Duration,
    /// How long a revoked partition's in-flight work may take to finish before it is
    /// abandoned (the next owner redoes it; the store's unique key absorbs the repeat).
    pub revoke_grace: Duration,
    /// How long shutdown waits for in-flight work before the final commit.
    pub drain_timeout: Duration,
    /// TTL of the cache's idempotency keys.
    pub cache_ttl: Duration,
    /// Where undecodable and poisoned records go.
    pub dead_letter_topic: String,
    /// Seed of the retry jitter (deterministic, so that simulations replay).
    pub jitter_seed: u64,
    /// Where a partition's progress is kept for the next owner.
    pub progress: ProgressMode,
}

/// Where a partition's progress (commit point and finished offsets above it) is kept.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ProgressMode {
    /// In the group's offset commits, the finished offsets as commit metadata (within the
    /// broker's metadata budget, and only where the broker keeps metadata).
    #[default]
    Kafka,
    /// Also in the store, in the same transaction as the effects, fenced by the generation
    /// that claimed the partition; a new owner resumes from the later of it and the commit.
    Store,
}

impl std::fmt::Display for ProgressMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProgressMode::Kafka => "kafka",
            ProgressMode::Store => "store",
        })
    }
}

impl std::str::FromStr for ProgressMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "kafka" => Ok(ProgressMode::Kafka),
            "store" => Ok(ProgressMode::Store),
            other => Err(format!("unknown progress mode `{other}` (kafka or store)")),
        }
    }
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            batch_size: 500,
            concurrency: 8,
            limits: Limits::default(),
            commit_interval: Duration::from_millis(1000),
            poll_timeout: Duration::from_millis(100),
            record_attempts_max: 5,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            stall_after: Duration::from_secs(60),
            revoke_grace: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            cache_ttl: Duration::from_secs(7 * 24 * 3600),
            dead_letter_topic: "orders.dlq".to_owned(),
            jitter_seed: 0x5eed,
            progress: ProgressMode::Kafka,
        }
    }
}

/// A configuration the consumer refuses to run with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("`{field}` must be at least {min}, got {value}")]
    TooSmall {
        field: &'static str,
        min: u64,
        value: u64,
    },
    #[error("`batch_size` ({batch_size}) exceeds the tracker's `in_flight_max` ({in_flight_max}): a full batch could never be tracked")]
    BatchOverWindow {
        batch_size: usize,
        in_flight_max: usize,
    },
    #[error("`backoff_initial` ({initial:?}) exceeds `backoff_max` ({max:?})")]
    BackoffInverted { initial: Duration, max: Duration },
    #[error("`dead_letter_topic` is empty: bad records would have nowhere to go")]
    NoDeadLetterTopic,
}

impl ConsumerConfig {
    /// Checks the configuration; the consumer calls this before it starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let at_least = |field, value: u64, min| {
            if value < min {
                Err(ConfigError::TooSmall { field, min, value })
            } else {
                Ok(())
            }
        };
        at_least("batch_size", self.batch_size as u64, 1)?;
        at_least("concurrency", self.concurrency as u64, 1)?;
        at_least(
            "record_attempts_max",
            u64::from(self.record_attempts_max),
            1,
        )?;
        at_least("commit_interval_ms", millis(self.commit_interval), 1)?;
        at_least("limits.in_flight_max", self.limits.in_flight_max as u64, 1)?;
        if self.batch_size > self.limits.in_flight_max {
            return Err(ConfigError::BatchOverWindow {
                batch_size: self.batch_size,
                in_flight_max: self.limits.in_flight_max,
            });
        }
        if self.backoff_initial > self.backoff_max {
            return Err(ConfigError::BackoffInverted {
                initial: self.backoff_initial,
                max: self.backoff_max,
            });
        }
        if self.dead_letter_topic.is_empty() {
            return Err(ConfigError::NoDeadLetterTopic);
        }
        Ok(())
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(ConsumerConfig::default().validate(), Ok(()));
    }

    #[test]
    fn refuses_zero_batch_and_zero_workers() {
        let config = ConsumerConfig {
            batch_size: 0,
            ..ConsumerConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::TooSmall {
                field: "batch_size",
                ..
            })
        ));
        let config = ConsumerConfig {
            concurrency: 0,
            ..ConsumerConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::TooSmall {
                field: "concurrency",
                ..
            })
        ));
    }

    #[test]
    fn refuses_a_batch_larger_than_the_window() {
        let mut config = ConsumerConfig::default();
        config.limits.in_flight_max = 100;
        assert_eq!(
            config.validate(),
            Err(ConfigError::BatchOverWindow {
                batch_size: 500,
                in_flight_max: 100
            })
        );
    }

    #[test]
    fn refuses_inverted_backoff_and_missing_dead_letter_topic() {
        let config = ConsumerConfig {
            backoff_initial: Duration::from_secs(10),
            ..ConsumerConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::BackoffInverted { .. })
        ));
        let config = ConsumerConfig {
            dead_letter_topic: String::new(),
            ..ConsumerConfig::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::NoDeadLetterTopic));
    }

    /// Goal: each limit's boundary is on the accepting side: a batch as large as the window,
    /// equal backoffs and a 1 ms commit interval are fine; a zero interval is not.
    #[test]
    fn limits_accept_their_boundary_and_refuse_a_zero_commit_interval() {
        let mut config = ConsumerConfig {
            backoff_initial: Duration::from_secs(5),
            backoff_max: Duration::from_secs(5),
            commit_interval: Duration::from_millis(1),
            ..ConsumerConfig::default()
        };
        config.limits.in_flight_max = config.batch_size;
        assert_eq!(config.validate(), Ok(()));
        config.commit_interval = Duration::ZERO;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::TooSmall {
                field: "commit_interval_ms",
                ..
            })
        ));
    }
}

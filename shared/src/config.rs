//! Settings both binaries share. Every setting is a command-line flag with an
//! environment variable of the `SCORES_` prefix behind it, and a default that
//! works with the local stack (`./deploy/local up`); `--help` lists them all.

use std::str::FromStr;

use crate::domain::rules::{
    DEFAULT_ACCOUNT_PATTERN, DEFAULT_GRADE_MAX, DEFAULT_GRADE_MIN, DEFAULT_TEXT_MAX_CHARS,
};
use crate::domain::{RulesError, ValidationRules};
use crate::telemetry::LogFormat;

/// Where the event log is.
#[derive(clap::Args, Clone, Debug)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "SCORES_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// The topic holding `ScoreSubmitted` events.
    #[arg(long, env = "SCORES_TOPIC", default_value = "score-events")]
    pub topic: String,

    /// Partitions of the topic when it has to be created (the projector can
    /// run up to this many instances in parallel).
    #[arg(long, env = "SCORES_TOPIC_PARTITIONS", default_value_t = 3)]
    pub topic_partitions: i32,

    /// Replication factor of the topic when it has to be created (3 on a
    /// production cluster, 1 on the single local broker).
    #[arg(long, env = "SCORES_TOPIC_REPLICATION", default_value_t = 1)]
    pub topic_replication: i32,

    /// Extra librdkafka settings, `key=value`, comma separated; they override
    /// the defaults (for example `security.protocol=ssl`).
    #[arg(
        long = "kafka-option",
        env = "SCORES_KAFKA_OPTIONS",
        // It may hold credentials (sasl.password, ssl.key.password).
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub kafka_options: Vec<KeyValue>,
}

/// The validation rules, configurable so that both binaries agree.
#[derive(clap::Args, Clone, Debug)]
pub struct ValidationArgs {
    /// Regular expression an account number (phone number) must match.
    #[arg(long, env = "SCORES_ACC_NBR_PATTERN", default_value = DEFAULT_ACCOUNT_PATTERN)]
    pub acc_nbr_pattern: String,

    /// Lowest accepted grade.
    #[arg(long, env = "SCORES_GRADE_MIN", default_value_t = DEFAULT_GRADE_MIN, allow_negative_numbers = true)]
    pub grade_min: i32,

    /// Highest accepted grade.
    #[arg(long, env = "SCORES_GRADE_MAX", default_value_t = DEFAULT_GRADE_MAX, allow_negative_numbers = true)]
    pub grade_max: i32,

    /// Maximum characters in each comment.
    #[arg(long, env = "SCORES_TEXT_MAX_CHARS", default_value_t = DEFAULT_TEXT_MAX_CHARS)]
    pub text_max_chars: usize,
}

impl ValidationArgs {
    /// The rule set these settings describe.
    ///
    /// # Errors
    ///
    /// When the pattern does not compile or the grade range is empty.
    pub fn rules(&self) -> Result<ValidationRules, RulesError> {
        ValidationRules::new(
            &self.acc_nbr_pattern,
            self.grade_min,
            self.grade_max,
            self.text_max_chars,
        )
    }
}

impl Default for ValidationArgs {
    fn default() -> Self {
        Self {
            acc_nbr_pattern: DEFAULT_ACCOUNT_PATTERN.to_owned(),
            grade_min: DEFAULT_GRADE_MIN,
            grade_max: DEFAULT_GRADE_MAX,
            text_max_chars: DEFAULT_TEXT_MAX_CHARS,
        }
    }
}

/// How the binaries log. The level comes from `RUST_LOG` (default `info`).
#[derive(clap::Args, Clone, Debug)]
pub struct LogArgs {
    /// `json`, `text`, or `auto` (text on a terminal, JSON otherwise).
    #[arg(long, env = "SCORES_LOG_FORMAT", default_value = "auto")]
    pub log_format: LogFormat,
}

/// A `key=value` pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

impl FromStr for KeyValue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => Ok(Self {
                key: key.trim().to_owned(),
                value: value.trim().to_owned(),
            }),
            _ => Err(format!("expected key=value, got {s:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_value_pair_parses() {
        let kv: KeyValue = "linger.ms=5".parse().unwrap();
        assert_eq!(
            kv,
            KeyValue {
                key: "linger.ms".into(),
                value: "5".into()
            }
        );
    }

    #[test]
    fn a_pair_without_equals_sign_is_refused() {
        assert!("linger.ms".parse::<KeyValue>().is_err());
        assert!("=5".parse::<KeyValue>().is_err());
    }
}

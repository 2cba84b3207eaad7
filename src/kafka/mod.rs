//! The Kafka pipeline (`trailspike run`, `trailspike demo`): the
//! detection engine between an input topic, an alerts topic and a
//! dead-letter topic, with the delivery guarantees of SPEC.md section 7.
//!
//! - [`source`]: the consumer, and where each partition resumes;
//! - [`sink`]: the producer of alerts and dead letters, and their
//!   acknowledgements;
//! - [`readback`]: after a crash, which queued alerts already reached the
//!   alerts topic;
//! - [`pipeline`]: the loop that ties them to the engine and the store.
//!
//! Scaled out (`scale_out.enabled`), instead of `pipeline`:
//!
//! - [`repartition`]: the input re-keyed by ARN onto an internal topic;
//! - [`changelog`]: the internal topics, and state restored from the
//!   changelog;
//! - [`scaled`]: the loop of one instance among several, its two stages
//!   (split, count), their transactions and rebalances.

pub mod changelog;
pub mod pipeline;
pub mod readback;
pub mod repartition;
pub mod scaled;
pub mod sink;
pub mod source;

use std::fmt;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::ClientContext;
use rdkafka::{ClientConfig, TopicPartitionList};

use crate::config::KafkaConfig;

/// A librdkafka call that failed, named after the operation: the Kafka
/// variant of each driver's error.
#[derive(Debug, thiserror::Error)]
#[error("kafka: {operation} failed: {source}")]
pub struct KafkaFailure {
    pub operation: &'static str,
    #[source]
    pub source: rdkafka::error::KafkaError,
}

/// Maps a librdkafka error to `E`'s Kafka variant, naming `operation`.
pub fn failed<E: From<KafkaFailure>>(
    operation: &'static str,
) -> impl FnOnce(rdkafka::error::KafkaError) -> E {
    move |source| KafkaFailure { operation, source }.into()
}

/// `topic/partition@offset`, built only when a log line needs it.
pub struct KafkaOrigin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for KafkaOrigin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| d.as_millis() as i64)
}

/// Settings shared by every client: the brokers, then the user's
/// pass-through properties.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in kafka.librdkafka_properties() {
        config.set(key, value);
    }
    config
}

/// [`client_config`] plus the consumer-only properties.
pub fn consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = client_config(kafka);
    for (key, value) in kafka.consumer_librdkafka_properties() {
        config.set(key, value);
    }
    config
}

/// [`client_config`] plus the producer-only properties.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = client_config(kafka);
    for (key, value) in kafka.producer_librdkafka_properties() {
        config.set(key, value);
    }
    config
}

/// Applies settings trailspike depends on for correctness; the user's
/// properties cannot turn these off.
fn require(config: &mut ClientConfig, settings: &[(&str, &str)]) {
    for (key, value) in settings {
        config.set(*key, *value);
    }
}

/// Sets defaults that the user's properties may override.
fn default_to(config: &mut ClientConfig, settings: &[(&str, &str)]) {
    for (key, value) in settings {
        if config.get(key).is_none() {
            config.set(*key, *value);
        }
    }
}

/// The context of a short-lived reader that reads partitions to their
/// end (restoring state, reading alerts back): it learns of each end from
/// `poll`, so librdkafka's copy of the same news is not an error.
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(
            error,
            KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
                | KafkaError::PartitionEOF(_)
        );
        if !end_of_partition {
            tracing::warn!(%error, reason, "kafka reader error");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// What a rebalance asks of the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rebalance {
    Assign,
    Revoke,
}

/// How a consumer's group hands partitions over, known from the
/// consumer's own settings.
///
/// librdkafka can tell too (`rd_kafka_rebalance_protocol`), but asking it
/// from a rebalance callback while the consumer closes can block forever
/// (librdkafka issue 4041), so the callbacks never ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebalanceMode {
    /// Only the partitions that move are assigned or revoked.
    Cooperative,
    /// Every rebalance revokes everything and assigns anew.
    Eager,
}

impl RebalanceMode {
    /// The mode `config` gives its consumer: the new group protocol
    /// (KIP-848) is always incremental; under the classic one, librdkafka
    /// refuses to mix cooperative and eager assignors, so naming
    /// `cooperative-sticky` at all makes the group cooperative.
    pub fn of(config: &ClientConfig) -> RebalanceMode {
        let next_generation = config
            .get("group.protocol")
            .is_some_and(|protocol| protocol.trim().eq_ignore_ascii_case("consumer"));
        let cooperative_assignor = config
            .get("partition.assignment.strategy")
            .is_some_and(|names| {
                names
                    .split(',')
                    .any(|name| name.trim() == "cooperative-sticky")
            });
        if next_generation || cooperative_assignor {
            RebalanceMode::Cooperative
        } else {
            RebalanceMode::Eager
        }
    }
}

/// Hands a rebalance's partitions to librdkafka in the group's mode:
/// incrementally when cooperative, whole otherwise.
fn apply_rebalance<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    mode: RebalanceMode,
    change: Rebalance,
    tpl: &TopicPartitionList,
) -> KafkaResult<()> {
    match (change, mode) {
        (Rebalance::Assign, RebalanceMode::Cooperative) => {
            consumer.incremental_assign(tpl)
        }
        (Rebalance::Assign, RebalanceMode::Eager) => consumer.assign(tpl),
        (Rebalance::Revoke, RebalanceMode::Cooperative) => {
            consumer.incremental_unassign(tpl)
        }
        (Rebalance::Revoke, RebalanceMode::Eager) => consumer.unassign(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_with(settings: &[(&str, &str)]) -> RebalanceMode {
        let mut config = ClientConfig::new();
        for (key, value) in settings {
            config.set(*key, *value);
        }
        RebalanceMode::of(&config)
    }

    #[test]
    fn the_rebalance_mode_follows_the_assignor_and_the_group_protocol() {
        assert_eq!(mode_with(&[]), RebalanceMode::Eager);
        assert_eq!(
            mode_with(&[("partition.assignment.strategy", "range,roundrobin")]),
            RebalanceMode::Eager
        );
        assert_eq!(
            mode_with(&[("partition.assignment.strategy", "cooperative-sticky")]),
            RebalanceMode::Cooperative
        );
        assert_eq!(
            mode_with(&[(
                "partition.assignment.strategy",
                " range , cooperative-sticky"
            )]),
            RebalanceMode::Cooperative
        );
        assert_eq!(
            mode_with(&[("group.protocol", "consumer")]),
            RebalanceMode::Cooperative
        );
        assert_eq!(
            mode_with(&[("group.protocol", "classic")]),
            RebalanceMode::Eager
        );
    }
}

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

pub mod pipeline;
pub mod readback;
pub mod sink;
pub mod source;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

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

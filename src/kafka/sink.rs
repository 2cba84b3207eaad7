//! The producer of alerts and dead letters, and scaled out also of the
//! internal topics.
//!
//! Idempotent with `acks=all`, so a retry inside librdkafka never writes a
//! message twice. Deliveries come back on a channel that the pipeline
//! drains: an acknowledged alert leaves the outbox; a dead letter that
//! could not be written stops the pipeline before its offset is saved.
//! Scaled out ([`Sink::create_transactional`]) everything is written in
//! transactions, and a failed message fails its transaction's commit.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::config::KafkaConfig;
use crate::engine::DeadLetter;
use crate::metrics::Metrics;

use super::{default_to, producer_config, require};

/// Dead-letter headers; part of the documented output.
pub const HEADER_REASON: &str = "trailspike.reason";
pub const HEADER_DETAIL: &str = "trailspike.detail";
pub const HEADER_TOPIC: &str = "trailspike.source.topic";
pub const HEADER_PARTITION: &str = "trailspike.source.partition";
pub const HEADER_OFFSET: &str = "trailspike.source.offset";
pub const HEADER_RECORD_INDEX: &str = "trailspike.source.record_index";
/// On the repartition topic: marks a progress marker, whose value is the
/// highest event time (Unix seconds) its source partition has reached.
pub const HEADER_PROGRESS: &str = "trailspike.progress";

/// Longest `trailspike.detail` header; parser messages can quote input.
const DETAIL_MAX_BYTES: usize = 512;

/// What a delivery report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// The alert with this outbox sequence number.
    Alert(u64),
    DeadLetter,
    /// A write to this partition of the changelog.
    Changelog(i32),
    /// Anything else written in a transaction: its commit reports failure.
    InTransaction,
}

/// A delivery report: the message's offset, or the broker's or
/// librdkafka's error.
pub type Delivery = (Delivered, Result<i64, String>);

pub struct SinkContext {
    deliveries: Sender<Delivery>,
    metrics: Arc<Metrics>,
    /// librdkafka's statistics are totals since start; the counters take
    /// the difference from the last report.
    last_totals: Mutex<(u64, u64)>,
}

impl ClientContext for SinkContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka producer error");
    }

    fn stats(&self, statistics: Statistics) {
        let errors = statistics.brokers.values().map(|b| b.txerrs).sum::<u64>();
        let retries = statistics
            .brokers
            .values()
            .map(|b| b.txretries)
            .sum::<u64>();
        let mut last = self.last_totals.lock().unwrap_or_else(|p| p.into_inner());
        self.metrics
            .producer_errors
            .inc_by(errors.saturating_sub(last.0));
        self.metrics
            .producer_retries
            .inc_by(retries.saturating_sub(last.1));
        *last = (errors.max(last.0), retries.max(last.1));
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Delivered>;

    fn delivery(&self, result: &DeliveryResult<'_>, what: Self::DeliveryOpaque) {
        let outcome = result
            .as_ref()
            .map(|message| message.offset())
            .map_err(|(e, _)| e.to_string());
        // The receiver lives as long as the pipeline; after it is gone
        // nobody waits for this report.
        let _ = self.deliveries.send((*what, outcome));
    }
}

/// Where a dead letter came from.
pub struct SourceRef<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
}

pub struct Sink {
    producer: ThreadedProducer<SinkContext>,
    alerts_topic: String,
    dead_letter_topic: String,
}

/// A message for [`Sink::send_to`].
pub struct Outgoing<'a> {
    pub topic: &'a str,
    /// `None` lets the partitioner choose by key.
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    /// `None` is a tombstone.
    pub payload: Option<&'a [u8]>,
    pub timestamp_ms: Option<i64>,
    pub headers: Option<OwnedHeaders>,
    pub what: Delivered,
}

impl Sink {
    pub fn create(
        kafka: &KafkaConfig,
        metrics: Arc<Metrics>,
    ) -> KafkaResult<(Sink, Receiver<Delivery>)> {
        let mut config = producer_config(kafka);
        require(
            &mut config,
            &[
                // Never give up on an alert or a dead letter: while the
                // broker is away they wait, and checkpoints wait with them.
                ("message.timeout.ms", "0"),
            ],
        );
        Self::build(config, kafka, metrics)
    }

    /// A producer whose writes are transactions under `transactional_id`,
    /// partitioning by key as Kafka's Java clients do, so that every
    /// instance (and any other client) puts one ARN in one partition.
    /// Call [`Sink::init_transactions`] before anything else.
    pub fn create_transactional(
        kafka: &KafkaConfig,
        transactional_id: &str,
        metrics: Arc<Metrics>,
    ) -> KafkaResult<(Sink, Receiver<Delivery>)> {
        let mut config = producer_config(kafka);
        let timeout = crate::config::DEFAULT_TRANSACTION_TIMEOUT_MS.to_string();
        default_to(&mut config, &[("transaction.timeout.ms", timeout.as_str())]);
        require(
            &mut config,
            &[
                ("transactional.id", transactional_id),
                ("partitioner", "murmur2_random"),
            ],
        );
        Self::build(config, kafka, metrics)
    }

    fn build(
        mut config: rdkafka::ClientConfig,
        kafka: &KafkaConfig,
        metrics: Arc<Metrics>,
    ) -> KafkaResult<(Sink, Receiver<Delivery>)> {
        default_to(
            &mut config,
            &[
                // Alerts are few; send them promptly.
                ("linger.ms", "5"),
                // Room for dead-lettering the largest input message.
                ("message.max.bytes", "16777216"),
                // Feeds the producer error and retry counters.
                ("statistics.interval.ms", "5000"),
            ],
        );
        require(
            &mut config,
            &[("enable.idempotence", "true"), ("acks", "all")],
        );
        let (sender, receiver) = mpsc::channel();
        let producer = config.create_with_context(SinkContext {
            deliveries: sender,
            metrics,
            last_totals: Mutex::new((0, 0)),
        })?;
        let sink = Sink {
            producer,
            alerts_topic: kafka.alerts_topic.clone(),
            dead_letter_topic: kafka.dead_letter_topic.clone(),
        };
        Ok((sink, receiver))
    }

    /// Queues an alert, keyed by its ARN.
    pub fn send_alert(&self, seq: u64, key: &str, payload: &str) -> KafkaResult<()> {
        self.send_alert_as(Delivered::Alert(seq), key, payload)
    }

    /// Queues an alert that reports back as `what`.
    pub fn send_alert_as(
        &self,
        what: Delivered,
        key: &str,
        payload: &str,
    ) -> KafkaResult<()> {
        let _span = tracing::info_span!("produce_alert", ?what, user = key).entered();
        let record = BaseRecord::with_opaque_to(&self.alerts_topic, Box::new(what))
            .key(key.as_bytes())
            .payload(payload.as_bytes());
        self.send(record)
    }

    /// Queues any message.
    pub fn send_to(&self, message: Outgoing<'_>) -> KafkaResult<()> {
        let mut record =
            BaseRecord::with_opaque_to(message.topic, Box::new(message.what));
        record.partition = message.partition;
        record.key = message.key;
        record.payload = message.payload;
        record.timestamp = message.timestamp_ms;
        record.headers = message.headers;
        self.send(record)
    }

    /// Queues a dead letter: the payload unchanged, the reason and origin
    /// in headers.
    pub fn send_dead_letter(
        &self,
        letter: &DeadLetter<'_>,
        from: &SourceRef<'_>,
    ) -> KafkaResult<()> {
        self.send_dead_letter_as(Delivered::DeadLetter, letter, from)
    }

    /// Queues a dead letter that reports back as `what`.
    pub fn send_dead_letter_as(
        &self,
        what: Delivered,
        letter: &DeadLetter<'_>,
        from: &SourceRef<'_>,
    ) -> KafkaResult<()> {
        let partition = from.partition.to_string();
        let offset = from.offset.to_string();
        let index = letter.record_index.map(|i| i.to_string());
        let mut headers = OwnedHeaders::new()
            .insert(header(HEADER_REASON, letter.reason.as_str()))
            .insert(header(
                HEADER_DETAIL,
                truncate_utf8(&letter.detail, DETAIL_MAX_BYTES),
            ))
            .insert(header(HEADER_TOPIC, from.topic))
            .insert(header(HEADER_PARTITION, &partition))
            .insert(header(HEADER_OFFSET, &offset));
        if let Some(index) = &index {
            headers = headers.insert(header(HEADER_RECORD_INDEX, index));
        }
        let mut record =
            BaseRecord::with_opaque_to(&self.dead_letter_topic, Box::new(what))
                .payload(letter.payload)
                .headers(headers);
        if let Some(key) = from.key {
            record = record.key(key);
        }
        self.send(record)
    }

    fn send(
        &self,
        mut record: BaseRecord<'_, [u8], [u8], Box<Delivered>>,
    ) -> KafkaResult<()> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                // The local queue is full: wait for deliveries to drain it.
                Err((
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    /// Waits until every queued message is acknowledged or `timeout` ends.
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.flush(timeout)
    }

    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Fences any earlier producer with the same transactional id and
    /// aborts what it left open.
    pub fn init_transactions(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.init_transactions(timeout)
    }

    pub fn begin_transaction(&self) -> KafkaResult<()> {
        self.producer.begin_transaction()
    }

    /// Makes committing `offsets` for the group part of the transaction.
    pub fn send_offsets_to_transaction(
        &self,
        offsets: &rdkafka::TopicPartitionList,
        group: &rdkafka::consumer::ConsumerGroupMetadata,
        timeout: Duration,
    ) -> KafkaResult<()> {
        self.producer
            .send_offsets_to_transaction(offsets, group, timeout)
    }

    /// Waits until every message of the transaction is acknowledged,
    /// then commits it.
    pub fn commit_transaction(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.commit_transaction(timeout)
    }

    pub fn abort_transaction(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.abort_transaction(timeout)
    }
}

pub fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

fn truncate_utf8(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

//! After a crash, the outbox may hold alerts that did reach the alerts
//! topic: the broker acknowledged them, but the process died before the
//! acknowledgement was made durable. Sending those again would duplicate
//! them, so on start the tail of the alerts topic is read back, from the
//! time the oldest of them was queued, and every `alertId` found there is
//! dropped from the outbox instead of being re-sent.
//!
//! This is sound because trailspike stamps an entry before producing it,
//! so every copy of it on the topic has a later message timestamp, and
//! because one ARN's alerts come from one instance at a time.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Offset;

use crate::config::KafkaConfig;

use super::{consumer_config, require, ReaderContext};

/// Slack for the broker's timestamp of a message written right after it
/// was queued.
const CLOCK_SLACK_MS: i64 = 1_000;

/// Which of `wanted` are on the alerts topic in messages written at or
/// after `since_ms` (wall-clock milliseconds).
pub fn already_on_topic(
    kafka: &KafkaConfig,
    since_ms: i64,
    wanted: &HashSet<String>,
    timeout: Duration,
) -> KafkaResult<HashSet<String>> {
    let mut config = consumer_config(kafka);
    require(
        &mut config,
        &[
            ("group.id", &format!("{}-readback", kafka.group_id)),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
        ],
    );
    let consumer: BaseConsumer<ReaderContext> =
        config.create_with_context(ReaderContext)?;
    let topic = kafka.alerts_topic.as_str();
    let ends = match end_offsets(&consumer, topic, timeout) {
        Ok(ends) => ends,
        // Nothing was ever produced: the topic does not exist yet.
        Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition)) => {
            return Ok(HashSet::new())
        }
        Err(error) => return Err(error),
    };
    let starts =
        start_offsets(&consumer, topic, &ends, since_ms - CLOCK_SLACK_MS, timeout)?;
    read_ids(&consumer, topic, starts, &ends, wanted, timeout)
}

/// The end offset of every partition of `topic`.
fn end_offsets(
    consumer: &BaseConsumer<ReaderContext>,
    topic: &str,
    timeout: Duration,
) -> KafkaResult<BTreeMap<i32, i64>> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut ends = BTreeMap::new();
    for topic_metadata in metadata.topics() {
        if let Some(error) = topic_metadata.error() {
            return Err(KafkaError::MetadataFetch(error.into()));
        }
        for partition in topic_metadata.partitions() {
            let (_, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
            ends.insert(partition.id(), high);
        }
    }
    Ok(ends)
}

fn start_offsets(
    consumer: &BaseConsumer<ReaderContext>,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    since_ms: i64,
    timeout: Duration,
) -> KafkaResult<TopicPartitionList> {
    let mut query = TopicPartitionList::new();
    for &partition in ends.keys() {
        query.add_partition_offset(topic, partition, Offset::Offset(since_ms))?;
    }
    let found = consumer.offsets_for_times(query, timeout)?;
    let mut starts = TopicPartitionList::new();
    for element in found.elements() {
        // `End` means no message at or after that time in the partition.
        if let Offset::Offset(offset) = element.offset() {
            if offset < ends[&element.partition()] {
                starts.add_partition_offset(
                    topic,
                    element.partition(),
                    element.offset(),
                )?;
            }
        }
    }
    Ok(starts)
}

fn read_ids(
    consumer: &BaseConsumer<ReaderContext>,
    topic: &str,
    starts: TopicPartitionList,
    ends: &BTreeMap<i32, i64>,
    wanted: &HashSet<String>,
    timeout: Duration,
) -> KafkaResult<HashSet<String>> {
    let mut found = HashSet::new();
    let mut remaining: HashSet<i32> =
        starts.elements().iter().map(|e| e.partition()).collect();
    if remaining.is_empty() {
        return Ok(found);
    }
    consumer.assign(&starts)?;
    let deadline = Instant::now() + timeout;
    while !remaining.is_empty() {
        if Instant::now() >= deadline {
            return Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        let message = match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                remaining.remove(&partition);
                continue;
            }
            Some(Err(error)) => return Err(error),
            Some(Ok(message)) => message,
        };
        if message.offset() + 1 >= ends[&message.partition()] {
            remaining.remove(&message.partition());
        }
        let id = message.payload().and_then(crate::ocsf::alert_id_in);
        if let Some(id) = id.filter(|id| wanted.contains(id)) {
            found.insert(id);
        }
    }
    tracing::debug!(topic, found = found.len(), "alerts topic read back");
    Ok(found)
}

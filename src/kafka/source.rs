//! The consumer of the input topic.
//!
//! Offsets live in the state store, next to the windows they produced, so
//! a partition resumes where its state ends, not where the group's
//! committed offset (written later, for lag monitoring) happens to be.
//! The rebalance callback sets each newly assigned partition's starting
//! offset from [`Positions`] before assigning it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset};

use crate::config::KafkaConfig;
use crate::metrics::Metrics;
use crate::window::SourceId;

use super::{
    apply_rebalance, consumer_config, default_to, require, Rebalance, RebalanceMode,
};

/// Assignment changes seen by the rebalance callback, for the pipeline
/// loop to apply to the engine after `poll` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignmentChange {
    Assigned(Vec<SourceId>),
    Revoked(Vec<SourceId>),
}

/// The next offset to read of each partition this process has state for.
/// The loop updates it as it processes messages; the rebalance callback
/// reads it.
#[derive(Debug, Default)]
pub struct Positions {
    next: Mutex<BTreeMap<SourceId, i64>>,
}

impl Positions {
    pub fn new(initial: BTreeMap<SourceId, i64>) -> Positions {
        Positions {
            next: Mutex::new(initial),
        }
    }

    pub fn get(&self, partition: SourceId) -> Option<i64> {
        self.lock().get(&partition).copied()
    }

    pub fn set(&self, partition: SourceId, next_offset: i64) {
        self.lock().insert(partition, next_offset);
    }

    pub fn snapshot(&self) -> BTreeMap<SourceId, i64> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SourceId, i64>> {
        // A panic while holding this lock cannot leave the map half
        // updated (each operation is one insert or read), so poisoning
        // carries no information here.
        self.next
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct SourceContext {
    topic: String,
    mode: RebalanceMode,
    metrics: Arc<Metrics>,
    pub positions: Positions,
    changes: Mutex<Vec<AssignmentChange>>,
    assigned: Mutex<BTreeSet<SourceId>>,
}

impl SourceContext {
    pub fn new(
        topic: &str,
        mode: RebalanceMode,
        positions: Positions,
        metrics: Arc<Metrics>,
    ) -> SourceContext {
        SourceContext {
            topic: topic.to_string(),
            mode,
            metrics,
            positions,
            changes: Mutex::new(Vec::new()),
            assigned: Mutex::new(BTreeSet::new()),
        }
    }

    /// Assignment changes since the last call.
    pub fn take_changes(&self) -> Vec<AssignmentChange> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn assigned(&self) -> BTreeSet<SourceId> {
        self.assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<SourceId> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|element| element.partition())
            .collect()
    }

    fn record(&self, change: AssignmentChange) {
        let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        match &change {
            AssignmentChange::Assigned(partitions) => assigned.extend(partitions),
            AssignmentChange::Revoked(partitions) => {
                for partition in partitions {
                    assigned.remove(partition);
                }
            }
        }
        drop(assigned);
        self.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(change);
    }

    fn resume_from_state(&self, tpl: &mut TopicPartitionList) {
        for partition in self.partitions(tpl) {
            if let Some(next) = self.positions.get(partition) {
                if let Err(error) =
                    tpl.set_partition_offset(&self.topic, partition, Offset::Offset(next))
                {
                    tracing::error!(partition, next, %error, "cannot set resume offset");
                }
            }
        }
    }
}

impl ClientContext for SourceContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka consumer error");
    }

    fn stats(&self, statistics: Statistics) {
        let assigned = self.assigned();
        report_consumer_lag(&self.metrics, &statistics, &self.topic, |partition| {
            assigned.contains(&partition)
        });
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.resume_from_state(tpl);
                let partitions = self.partitions(tpl);
                tracing::info!(?partitions, "partitions assigned");
                self.record(AssignmentChange::Assigned(partitions));
                apply_rebalance(consumer, self.mode, Rebalance::Assign, tpl)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions = self.partitions(tpl);
                tracing::info!(?partitions, "partitions revoked");
                self.record(AssignmentChange::Revoked(partitions));
                apply_rebalance(consumer, self.mode, Rebalance::Revoke, tpl)
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed; dropping the assignment");
                let partitions = self.partitions(tpl);
                self.record(AssignmentChange::Revoked(partitions));
                consumer.unassign()
            }
        };
        if let Err(error) = result {
            tracing::error!(%error, "applying the assignment failed");
        }
    }
}

/// Publishes the consumer lag of `topic`'s partitions that `assigned`
/// accepts, from librdkafka's statistics.
pub fn report_consumer_lag(
    metrics: &Metrics,
    statistics: &Statistics,
    topic: &str,
    assigned: impl Fn(SourceId) -> bool,
) {
    let Some(topic) = statistics.topics.get(topic) else {
        return;
    };
    for (&partition, stats) in &topic.partitions {
        // librdkafka reports -1 until it knows both ends.
        if assigned(partition) && stats.consumer_lag >= 0 {
            metrics
                .consumer_lag_messages
                .with_label_values(&[&partition.to_string()])
                .set(stats.consumer_lag);
        }
    }
}

pub type Source = BaseConsumer<SourceContext>;

/// Creates the consumer and subscribes it to the input topic.
pub fn create(
    kafka: &KafkaConfig,
    positions: Positions,
    metrics: Arc<Metrics>,
) -> KafkaResult<Source> {
    let mut config = consumer_config(kafka);
    default_to(
        &mut config,
        &[
            // Records from before the first deployment are history: read
            // them, so a new group builds baselines from what is retained.
            ("auto.offset.reset", "earliest"),
            // Unaffected partitions keep working through a rebalance.
            ("partition.assignment.strategy", "cooperative-sticky"),
            // Lets /metrics report consumer lag per partition.
            ("statistics.interval.ms", "5000"),
            // librdkafka stops fetching a partition whose prefetch queue
            // is full for this long (default 1 s). Catching up, trailspike
            // drains a full queue in a fraction of that, then waited out
            // the rest: it took twice as long to read a backlog as with
            // 10 ms (BENCHMARKS.md).
            ("fetch.queue.backoff.ms", "10"),
        ],
    );
    require(
        &mut config,
        &[
            ("group.id", kafka.group_id.as_str()),
            // Offsets are committed by the pipeline after the state that
            // depends on them is durable, never in the background.
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
        ],
    );
    let mode = RebalanceMode::of(&config);
    let context = SourceContext::new(&kafka.input_topic, mode, positions, metrics);
    let consumer: Source = config.create_with_context(context)?;
    consumer.subscribe(&[&kafka.input_topic])?;
    Ok(consumer)
}

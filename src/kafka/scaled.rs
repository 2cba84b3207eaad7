//! The loop of `trailspike run` with `scale_out.enabled`: one instance of
//! several in a consumer group, sharing the work as Kafka Streams
//! applications do, with Kafka itself as the coordinator.
//!
//! Each instance runs both stages on one consumer, subscribed to the input
//! topic and to `<group_id>-repartition`, so the group spreads the
//! partitions of both over the instances (cooperative-sticky by default):
//!
//! 1. input partitions are split and re-keyed by ARN onto the repartition
//!    topic ([`super::repartition`]);
//! 2. each repartition partition is a task with its own engine (open
//!    windows, watermark) and its own sled tree (baselines, incidents),
//!    whose every write also goes to its partition of
//!    `<group_id>-changelog` ([`super::changelog`]).
//!
//! Exactly once: one transactional producer per instance writes the
//! repartitioned records, the progress markers, dead letters, changelog
//! writes and alerts, and commits the consumed offsets of both topics in
//! the same transaction, at every checkpoint. Only after the commit are a
//! checkpoint's writes applied to the local trees. Readers of the alerts
//! topic must use `isolation.level=read_committed`.
//!
//! Rebalances: before partitions are revoked, the rebalance callback
//! commits the transaction, so their new owner starts exactly where this
//! instance stopped; before partitions are assigned, it restores each
//! task's tree from the changelog. A partition lost without a revoke (the
//! session expired) aborts the transaction instead, and its new owner
//! starts from the last commit. The transactional id is stable per
//! `state.dir`, so a restarted instance fences its previous incarnation
//! and aborts what it left open at once; an instance that never returns
//! leaves its transaction to expire after `transaction.timeout.ms`.
//!
//! A transaction that fails to commit (other than by a timeout, which is
//! retried) stops the instance with an error: its windows and baselines
//! in memory are ahead of what was committed, and a restart resumes from
//! the last commit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message, OwnedHeaders};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset};

use crate::config::{Config, ConfigError};
use crate::engine::{DeadLetter, Engine, Intake};
use crate::metrics::{Metrics, StateRestore};
use crate::store::{ChangelogPosition, Prepared, StateStore, StoreError};
use crate::tuning::Tuning;
use crate::window::FastMap;

use super::changelog::{self, ChangelogError, InternalTopics};
use super::pipeline::{Health, RunOptions, TuningWatch};
use super::repartition::{Forward, Repartitioner};
use super::sink::{
    self, Delivered, Delivery, Outgoing, Sink, SourceRef, HEADER_OFFSET,
    HEADER_PARTITION, HEADER_PROGRESS, HEADER_RECORD_INDEX,
};
use super::source::report_consumer_lag;
use super::{
    apply_rebalance, consumer_config, default_to, now_ms, require, KafkaOrigin, Rebalance,
};

/// Most messages handled between two looks at signals and timers.
const MAX_BATCH: usize = 2_000;
/// Least time between two checkpoints that close windows (see the
/// single-instance pipeline: catching up, nearly every batch makes a
/// window ready).
const MIN_CLOSE_GAP: Duration = Duration::from_secs(1);
/// How long one transactional call may wait for the broker before it is
/// retried (commit) or fails (the rest).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// The sled key, in the database's default tree, of this state
/// directory's instance id.
const INSTANCE_ID_KEY: &[u8] = b"instance_id";

#[derive(Debug, thiserror::Error)]
pub enum ScaledError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Changelog(#[from] ChangelogError),
    #[error("kafka: {operation} failed: {source}")]
    Kafka {
        operation: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error(
        "--stop-at-end does not apply with scale_out.enabled: the end of the \
         repartition topic moves while other instances feed it; stop with SIGTERM"
    )]
    StopAtEnd,
    #[error("the rebalance callback left no group metadata to commit with")]
    NoGroupMetadata,
}

fn kafka(operation: &'static str) -> impl FnOnce(KafkaError) -> ScaledError {
    move |source| ScaledError::Kafka { operation, source }
}

/// Runs one instance until `shutdown` is set, then commits and leaves the
/// group.
pub fn run(
    config: &Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: Arc<AtomicBool>,
    options: RunOptions,
) -> Result<(), ScaledError> {
    if options.stop_at_end {
        return Err(ScaledError::StopAtEnd);
    }
    let topics = changelog::ensure_topics(config)?;
    let db = StateStore::open_database(&config.state.dir)?;
    let transactional_id = format!("{}-{}", config.kafka.group_id, instance_id(&db)?);
    let (sink, deliveries) =
        Sink::create_transactional(&config.kafka, &transactional_id, metrics.clone())
            .map_err(kafka("creating the transactional producer"))?;
    sink.init_transactions(TRANSACTION_TIMEOUT)
        .map_err(kafka("initialising transactions"))?;
    tracing::info!(
        transactional_id,
        repartition_topic = topics.repartition,
        changelog_topic = topics.changelog,
        "scaled out: joining the group"
    );
    let instance = Arc::new(Mutex::new(Instance {
        tuning: Tuning::from_config(config)?,
        config: config.clone(),
        topics: topics.clone(),
        db,
        sink,
        deliveries,
        repartitioner: Repartitioner::new(Intake::new(config, metrics.clone())),
        tasks: BTreeMap::new(),
        input_partitions: 0,
        positions: BTreeMap::new(),
        changelog_next: FastMap::default(),
        in_transaction: false,
        since_commit: 0,
        last_commit: Instant::now(),
        metrics: metrics.clone(),
        health: health.clone(),
        failed: None,
    }));
    let consumer = create_consumer(config, &topics, instance.clone(), metrics.clone())?;
    lock(&instance).input_partitions = input_partitions(&consumer, config)?;
    health.state_loaded.store(true, Ordering::Relaxed);
    health.broker_reachable.store(true, Ordering::Relaxed);
    let mut rules = options.reload.as_ref().map(TuningWatch::new);
    let mut last_report = Instant::now();
    while !shutdown.load(Ordering::Relaxed) {
        if let Some(tuning) = rules.as_mut().and_then(|r| r.poll(config, &metrics)) {
            lock(&instance).set_tuning(tuning);
        }
        poll_batch(&consumer, &instance)?;
        let mut instance = lock(&instance);
        if let Some(error) = instance.failed.take() {
            return Err(error);
        }
        if instance.checkpoint_due() {
            let group = consumer
                .group_metadata()
                .ok_or(ScaledError::NoGroupMetadata)?;
            instance.commit(&group)?;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            instance.report_progress(&consumer);
        }
    }
    stop(consumer, &instance)
}

/// Commits what is pending, then leaves the group; the revoke that
/// leaving brings finds nothing left to commit.
fn stop(
    consumer: BaseConsumer<ScaledContext>,
    instance: &Mutex<Instance>,
) -> Result<(), ScaledError> {
    tracing::info!("stopping: committing and leaving the group");
    if let Some(group) = consumer.group_metadata() {
        lock(instance).commit(&group)?;
    }
    consumer.unsubscribe();
    // Closing serves the revoke callback; the instance's lock is free.
    drop(consumer);
    if let Some(error) = lock(instance).failed.take() {
        return Err(error);
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

fn lock(instance: &Mutex<Instance>) -> MutexGuard<'_, Instance> {
    // A panic while the lock is held ends the process (the pipeline thread
    // is the only user besides the rebalance callback, which it runs).
    instance
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Handles the messages available now, waiting briefly for the first.
/// The lock is taken per message, never across `poll`, which may run the
/// rebalance callback.
fn poll_batch(
    consumer: &BaseConsumer<ScaledContext>,
    instance: &Mutex<Instance>,
) -> Result<(), ScaledError> {
    let mut timeout = Duration::from_millis(100);
    for _ in 0..MAX_BATCH {
        match consumer.poll(timeout) {
            None => break,
            Some(Ok(message)) => lock(instance).handle(&message)?,
            Some(Err(error)) => {
                tracing::warn!(%error, "consume failed; librdkafka retries");
                break;
            }
        }
        timeout = Duration::ZERO;
    }
    Ok(())
}

/// The input topic's partition count, before the first rebalance needs it.
fn input_partitions(
    consumer: &BaseConsumer<ScaledContext>,
    config: &Config,
) -> Result<i32, ScaledError> {
    let topic = config.kafka.input_topic.as_str();
    let metadata = consumer
        .fetch_metadata(Some(topic), TRANSACTION_TIMEOUT)
        .map_err(kafka("reading the input topic's metadata"))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len() as i32);
    tracing::info!(topic, partitions, "input topic");
    Ok(partitions)
}

/// This state directory's instance id, made once: the transactional id
/// stays the same across restarts, so a restart fences its predecessor.
fn instance_id(db: &sled::Db) -> Result<String, ScaledError> {
    if let Some(id) = db.get(INSTANCE_ID_KEY).map_err(StoreError::from)? {
        return Ok(String::from_utf8_lossy(&id).into_owned());
    }
    let id = format!("{:016x}", rand::random::<u64>());
    db.insert(INSTANCE_ID_KEY, id.as_bytes())
        .map_err(StoreError::from)?;
    db.flush().map_err(StoreError::from)?;
    Ok(id)
}

fn create_consumer(
    config: &Config,
    topics: &InternalTopics,
    instance: Arc<Mutex<Instance>>,
    metrics: Arc<Metrics>,
) -> Result<BaseConsumer<ScaledContext>, ScaledError> {
    let kafka_config = &config.kafka;
    let mut client = consumer_config(kafka_config);
    default_to(
        &mut client,
        &[
            ("auto.offset.reset", "earliest"),
            // Unaffected partitions keep working through a rebalance.
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("fetch.queue.backoff.ms", "10"),
            // Lets /metrics report consumer lag per input partition.
            ("statistics.interval.ms", "5000"),
        ],
    );
    require(
        &mut client,
        &[
            ("group.id", kafka_config.group_id.as_str()),
            // Offsets are committed in the transactions, never otherwise.
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            // Records of aborted transactions were never repartitioned.
            ("isolation.level", "read_committed"),
        ],
    );
    let context = ScaledContext {
        input_topic: kafka_config.input_topic.clone(),
        repartition_topic: topics.repartition.clone(),
        instance,
        metrics,
    };
    let consumer: BaseConsumer<ScaledContext> = client
        .create_with_context(context)
        .map_err(kafka("creating the consumer"))?;
    consumer
        .subscribe(&[&kafka_config.input_topic, &topics.repartition])
        .map_err(kafka("subscribing"))?;
    Ok(consumer)
}

/// One partition of the repartition topic: its engine and its tree.
struct Task {
    engine: Engine,
    store: StateStore,
}

/// Which topic a consumed partition belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Input,
    Repartition,
}

/// Everything the loop and the rebalance callback share.
struct Instance {
    config: Config,
    topics: InternalTopics,
    db: sled::Db,
    sink: Sink,
    deliveries: Receiver<Delivery>,
    repartitioner: Repartitioner,
    tasks: BTreeMap<i32, Task>,
    /// Partitions of the input topic, each of which a task waits for.
    input_partitions: i32,
    /// The tuning in force, for tasks assigned after a reload.
    tuning: Tuning,
    /// The next offset of each partition consumed, committed with each
    /// transaction.
    positions: BTreeMap<(Stage, i32), i64>,
    /// The changelog offset after this instance's last delivered write to
    /// each partition; at most the true end, which is what a restore
    /// needs (reading again is harmless, skipping is not).
    changelog_next: FastMap<i32, i64>,
    in_transaction: bool,
    since_commit: usize,
    last_commit: Instant,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// The first error of the rebalance callback, which cannot return it.
    failed: Option<ScaledError>,
}

impl Instance {
    fn handle(&mut self, message: &BorrowedMessage<'_>) -> Result<(), ScaledError> {
        self.begin_transaction()?;
        let stage = if message.topic() == self.topics.repartition {
            self.count(message)?;
            Stage::Repartition
        } else {
            self.split(message)?;
            Stage::Input
        };
        self.positions
            .insert((stage, message.partition()), message.offset() + 1);
        self.since_commit += 1;
        Ok(())
    }

    /// Stage 1: one input message's calls onto the repartition topic.
    fn split(&mut self, message: &BorrowedMessage<'_>) -> Result<(), ScaledError> {
        let arrival_ms = message.timestamp().to_millis().unwrap_or_else(now_ms);
        let from = SourceRef {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key(),
        };
        let origin = KafkaOrigin {
            topic: from.topic,
            partition: from.partition,
            offset: from.offset,
        };
        let (sink, metrics) = (&self.sink, &self.metrics);
        let repartition_topic = self.topics.repartition.as_str();
        let failure = std::cell::Cell::new(None);
        let mut forward = |call: Forward<'_>| {
            let outgoing = Outgoing {
                topic: repartition_topic,
                partition: None,
                key: Some(call.arn.as_bytes()),
                payload: Some(call.record),
                timestamp_ms: Some(arrival_ms),
                headers: Some(origin_headers(&from, call.record_index)),
                what: Delivered::InTransaction,
            };
            if let Err(error) = sink.send_to(outgoing) {
                failure.set(Some(error));
            }
        };
        let mut dead_letter = |letter: DeadLetter<'_>| match sink.send_dead_letter_as(
            Delivered::InTransaction,
            &letter,
            &from,
        ) {
            Ok(()) => metrics.dead_lettered(letter.reason),
            Err(error) => failure.set(Some(error)),
        };
        let payload = message.payload().unwrap_or_default();
        self.repartitioner.split(
            from.partition,
            payload,
            arrival_ms / 1000,
            &origin,
            &mut forward,
            &mut dead_letter,
        );
        let failure = failure.into_inner();
        failure.map_or(Ok(()), |e| Err(kafka("queueing a repartitioned record")(e)))
    }

    /// Stage 2: one repartitioned call (or progress marker) into its task.
    fn count(&mut self, message: &BorrowedMessage<'_>) -> Result<(), ScaledError> {
        let partition = message.partition();
        let Some(task) = self.tasks.get_mut(&partition) else {
            tracing::warn!(partition, "a record of a partition with no task; skipped");
            return Ok(());
        };
        let origin = ForwardedOrigin::read(message);
        let now = now_ms();
        let (Some(source), Some(offset)) = (origin.partition, origin.offset) else {
            if let (Some(source), Some(event_time)) = (origin.partition, origin.progress)
            {
                task.engine.windows_mut().progress(source, event_time, now);
            } else {
                tracing::warn!(
                    partition,
                    offset = message.offset(),
                    "repartitioned message without its origin headers; skipped"
                );
            }
            return Ok(());
        };
        let from = SourceRef {
            topic: &self.config.kafka.input_topic,
            partition: source,
            offset,
            key: None,
        };
        let log_origin = KafkaOrigin {
            topic: from.topic,
            partition: source,
            offset,
        };
        let (sink, metrics) = (&self.sink, &self.metrics);
        let mut failure = None;
        let mut dead_letter = |letter: DeadLetter<'_>| {
            let letter = DeadLetter {
                record_index: letter.record_index.or(origin.record_index),
                ..letter
            };
            match sink.send_dead_letter_as(Delivered::InTransaction, &letter, &from) {
                Ok(()) => metrics.dead_lettered(letter.reason),
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        };
        let arrival_unix = message.timestamp().to_millis().unwrap_or(now) / 1000;
        let payload = message.payload().unwrap_or_default();
        task.engine.process_record(
            source,
            payload,
            arrival_unix,
            now,
            &log_origin,
            &mut dead_letter,
        );
        failure.map_or(Ok(()), |e| Err(kafka("queueing a dead letter")(e)))
    }

    fn begin_transaction(&mut self) -> Result<(), ScaledError> {
        if !self.in_transaction {
            self.sink
                .begin_transaction()
                .map_err(kafka("beginning a transaction"))?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Whether a checkpoint is due: input handled and the checkpoint
    /// interval over, or a window ready to close.
    fn checkpoint_due(&mut self) -> bool {
        let since = self.last_commit.elapsed();
        let now = now_ms();
        let ready = self.tasks.values_mut().any(|task| {
            task.engine.windows_mut().advance_watermark(now);
            task.engine.windows().has_ready()
        });
        (self.since_commit > 0 && since >= self.config.state.checkpoint_interval)
            || (ready && since >= MIN_CLOSE_GAP)
    }

    /// Closes ready windows and commits everything since the last commit
    /// in one transaction, then applies the state writes to the trees.
    fn commit(&mut self, group: &ConsumerGroupMetadata) -> Result<(), ScaledError> {
        self.last_commit = Instant::now();
        let now = now_ms();
        let has_ready = self.tasks.values_mut().any(|task| {
            task.engine.windows_mut().advance_watermark(now);
            task.engine.windows().has_ready()
        });
        if !self.in_transaction && self.since_commit == 0 && !has_ready {
            return Ok(());
        }
        self.begin_transaction()?;
        let prepared = self.write_checkpoints(now)?;
        self.send_markers()?;
        let offsets = self.offsets()?;
        if offsets.count() > 0 {
            self.sink
                .send_offsets_to_transaction(&offsets, group, TRANSACTION_TIMEOUT)
                .map_err(kafka("adding offsets to the transaction"))?;
        }
        self.commit_transaction()?;
        self.take_changelog_offsets();
        let mut alerts = 0;
        for (partition, prepared) in prepared {
            alerts += prepared.alerts.len();
            if let Some(task) = self.tasks.get(&partition) {
                let position =
                    self.changelog_next
                        .get(&partition)
                        .map(|&next| ChangelogPosition {
                            next,
                            synced_ms: now,
                        });
                task.store.apply(prepared, position)?;
            }
        }
        for _ in 0..alerts {
            self.metrics.alert_produced();
        }
        self.metrics.checkpoints.inc();
        let baselines: u64 = self.tasks.values().map(|t| t.store.baseline_count()).sum();
        self.metrics.baseline_arns.set(baselines as i64);
        if let Ok(bytes) = self.db.size_on_disk() {
            self.metrics.state_size_bytes.set(bytes as i64);
        }
        self.since_commit = 0;
        Ok(())
    }

    /// Each task's checkpoint (ready windows closed, open windows and the
    /// watermark) written to its changelog partition, its alerts queued.
    fn write_checkpoints(
        &mut self,
        now: i64,
    ) -> Result<Vec<(i32, Prepared)>, ScaledError> {
        let mut all = Vec::with_capacity(self.tasks.len());
        let changelog = self.topics.changelog.as_str();
        for (&partition, task) in &mut self.tasks {
            let mut changes = task.store.changes();
            task.engine.close_ready(&mut changes, now)?;
            task.engine.checkpoint(&mut changes, &|_| None)?;
            let prepared = changes.prepare()?;
            for (key, value) in &prepared.writes {
                let outgoing = Outgoing {
                    topic: changelog,
                    partition: Some(partition),
                    key: Some(key),
                    payload: value.as_deref(),
                    timestamp_ms: None,
                    headers: None,
                    what: Delivered::Changelog(partition),
                };
                self.sink
                    .send_to(outgoing)
                    .map_err(kafka("queueing a changelog write"))?;
            }
            for alert in &prepared.alerts {
                self.sink
                    .send_alert_as(Delivered::InTransaction, &alert.key, &alert.payload)
                    .map_err(kafka("queueing an alert"))?;
            }
            all.push((partition, prepared));
        }
        Ok(all)
    }

    /// Every moved input partition's progress, to every repartition
    /// partition.
    fn send_markers(&mut self) -> Result<(), ScaledError> {
        for (source, event_time) in self.repartitioner.take_markers() {
            let source = source.to_string();
            let event_time = event_time.to_string();
            for partition in 0..self.config.scale_out.partitions {
                let headers = OwnedHeaders::new()
                    .insert(sink_header(HEADER_PARTITION, &source))
                    .insert(sink_header(HEADER_PROGRESS, &event_time));
                let outgoing = Outgoing {
                    topic: &self.topics.repartition,
                    partition: Some(partition),
                    key: None,
                    payload: None,
                    timestamp_ms: None,
                    headers: Some(headers),
                    what: Delivered::InTransaction,
                };
                self.sink
                    .send_to(outgoing)
                    .map_err(kafka("queueing a progress marker"))?;
            }
        }
        Ok(())
    }

    fn offsets(&self) -> Result<TopicPartitionList, ScaledError> {
        let mut offsets = TopicPartitionList::new();
        for (&(stage, partition), &next) in &self.positions {
            let topic = match stage {
                Stage::Input => &self.config.kafka.input_topic,
                Stage::Repartition => &self.topics.repartition,
            };
            offsets
                .add_partition_offset(topic, partition, Offset::Offset(next))
                .map_err(kafka("listing offsets"))?;
        }
        Ok(offsets)
    }

    /// Commits, retrying while the broker does not answer in time.
    fn commit_transaction(&mut self) -> Result<(), ScaledError> {
        loop {
            match self.sink.commit_transaction(TRANSACTION_TIMEOUT) {
                Ok(()) => break,
                Err(KafkaError::Transaction(error)) if error.is_retriable() => {
                    tracing::warn!(%error, "transaction commit timed out; retrying");
                    self.health.broker_reachable.store(false, Ordering::Relaxed);
                }
                Err(error) => return Err(kafka("committing a transaction")(error)),
            }
        }
        self.in_transaction = false;
        self.metrics.transaction_ended(true);
        self.health.broker_reachable.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Notes the changelog offsets the deliveries so far reached.
    fn take_changelog_offsets(&mut self) {
        while let Ok((what, outcome)) = self.deliveries.try_recv() {
            if let (Delivered::Changelog(partition), Ok(offset)) = (what, outcome) {
                let next = self.changelog_next.entry(partition).or_insert(offset + 1);
                *next = (*next).max(offset + 1);
            }
        }
    }

    /// Restores the tasks of newly assigned repartition partitions from
    /// the changelog.
    fn assign(&mut self, partitions: &[(String, i32)]) -> Result<(), ScaledError> {
        for (topic, partition) in partitions {
            if *topic != self.topics.repartition || self.tasks.contains_key(partition) {
                continue;
            }
            let task = self.restore_task(*partition)?;
            self.tasks.insert(*partition, task);
        }
        Ok(())
    }

    fn restore_task(&mut self, partition: i32) -> Result<Task, ScaledError> {
        let started = Instant::now();
        let store = StateStore::partition(&self.db, &self.config.state.dir, partition)?;
        let restored = changelog::restore(&self.config, &self.topics, partition, &store)?;
        self.changelog_next.remove(&partition);
        let mut engine = Engine::new(&self.config, self.metrics.clone())?;
        engine.set_tuning(self.tuning.clone());
        engine.spill_to(&store)?;
        let now = now_ms();
        engine.restore(&store, now)?;
        // Every input partition holds the task's watermark until it has
        // delivered (a record or a marker) or gone idle, as SPEC.md
        // section 2 asks: one heard from first must not close windows
        // that the others' records still fall in.
        for source in 0..self.input_partitions {
            engine.windows_mut().add_source(source, now);
        }
        self.metrics.state_restored(&StateRestore {
            partition,
            from_offset: restored.from_offset,
            writes: restored.writes,
            cleared: restored.cleared,
            baselines: store.baseline_count(),
            open_window_arns: engine.windows().open_arn_windows(),
            watermark: engine.windows().watermark(),
            seconds: started.elapsed().as_secs_f64(),
        });
        Ok(Task { engine, store })
    }

    /// Drops what this instance kept of revoked partitions. Their trees
    /// stay on disk: if they come back, restoring reads only what was
    /// written meanwhile.
    fn revoke(&mut self, partitions: &[(String, i32)]) {
        for (topic, partition) in partitions {
            if *topic == self.topics.repartition {
                self.tasks.remove(partition);
                self.positions.remove(&(Stage::Repartition, *partition));
            } else {
                self.repartitioner.forget(*partition);
                self.positions.remove(&(Stage::Input, *partition));
            }
        }
    }

    /// The assignment was lost (the session expired): others own it now
    /// and start from the last commit, so what this instance did since
    /// is dropped, and its transaction aborted.
    fn abandon(&mut self, partitions: &[(String, i32)]) {
        if self.in_transaction {
            if let Err(error) = self.sink.abort_transaction(TRANSACTION_TIMEOUT) {
                tracing::error!(%error, "aborting the transaction failed");
            }
            self.in_transaction = false;
            self.metrics.transaction_ended(false);
        }
        self.since_commit = 0;
        self.revoke(partitions);
    }

    fn set_tuning(&mut self, tuning: Tuning) {
        for task in self.tasks.values_mut() {
            task.engine.set_tuning(tuning.clone());
        }
        self.tuning = tuning;
    }

    /// Publishes the lowest watermark over the tasks, and readiness.
    fn report_progress(&self, consumer: &BaseConsumer<ScaledContext>) {
        let health = &self.health;
        let now_unix = now_ms() / 1000;
        let slowest = self
            .tasks
            .values()
            .min_by_key(|task| task.engine.windows().watermark());
        if let Some(task) = slowest {
            task.engine.report_progress(now_unix);
        }
        self.metrics.partition_tasks.set(self.tasks.len() as i64);
        let assigned = consumer
            .assignment()
            .is_ok_and(|assignment| assignment.count() > 0);
        health
            .partitions_assigned
            .store(assigned, Ordering::Relaxed);
        let ready = health.not_ready_reasons().is_empty();
        self.metrics.ready.set(i64::from(ready));
    }
}

/// The headers stage 1 puts on each repartitioned record, read back.
#[derive(Debug, Default)]
struct ForwardedOrigin {
    partition: Option<i32>,
    offset: Option<i64>,
    record_index: Option<usize>,
    progress: Option<i64>,
}

impl ForwardedOrigin {
    fn read(message: &BorrowedMessage<'_>) -> ForwardedOrigin {
        let mut origin = ForwardedOrigin::default();
        let Some(headers) = message.headers() else {
            return origin;
        };
        for header in headers.iter() {
            let value = header.value.and_then(|v| std::str::from_utf8(v).ok());
            let Some(value) = value else { continue };
            match header.key {
                HEADER_PARTITION => origin.partition = value.parse().ok(),
                HEADER_OFFSET => origin.offset = value.parse().ok(),
                HEADER_RECORD_INDEX => origin.record_index = value.parse().ok(),
                HEADER_PROGRESS => origin.progress = value.parse().ok(),
                _ => {}
            }
        }
        origin
    }
}

/// Where a repartitioned record came from, in its headers, so that a late
/// record's dead letter names its input message.
fn origin_headers(from: &SourceRef<'_>, record_index: Option<usize>) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(3)
        .insert(sink_header(HEADER_PARTITION, &from.partition.to_string()))
        .insert(sink_header(HEADER_OFFSET, &from.offset.to_string()));
    if let Some(index) = record_index {
        headers = headers.insert(sink_header(HEADER_RECORD_INDEX, &index.to_string()));
    }
    headers
}

fn sink_header<'a>(
    key: &'a str,
    value: &'a str,
) -> rdkafka::message::Header<'a, &'a str> {
    sink::header(key, value)
}

/// The consumer's context: rebalances run on the instance.
struct ScaledContext {
    input_topic: String,
    repartition_topic: String,
    instance: Arc<Mutex<Instance>>,
    metrics: Arc<Metrics>,
}

impl ScaledContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<(String, i32)> {
        tpl.elements()
            .iter()
            .filter(|e| {
                e.topic() == self.input_topic || e.topic() == self.repartition_topic
            })
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect()
    }

    fn on_assign(&self, consumer: &BaseConsumer<Self>, partitions: &[(String, i32)]) {
        let mut instance = lock(&self.instance);
        tracing::info!(?partitions, "partitions assigned");
        // A restore can take longer than transaction.timeout.ms: what is
        // pending is committed first, so no transaction waits on it.
        let committed = match consumer.group_metadata() {
            Some(group) => instance.commit(&group),
            None => Err(ScaledError::NoGroupMetadata),
        };
        if let Err(error) = committed.and_then(|()| instance.assign(partitions)) {
            tracing::error!(%error, "restoring assigned partitions failed");
            instance.failed.get_or_insert(error);
        }
    }

    fn on_revoke(&self, consumer: &BaseConsumer<Self>, partitions: &[(String, i32)]) {
        let mut instance = lock(&self.instance);
        if consumer.assignment_lost() {
            tracing::warn!(
                ?partitions,
                "partitions lost; aborting what was not committed"
            );
            instance.abandon(partitions);
            return;
        }
        tracing::info!(?partitions, "partitions revoked; committing first");
        let committed = match consumer.group_metadata() {
            Some(group) => instance.commit(&group),
            None => Err(ScaledError::NoGroupMetadata),
        };
        match committed {
            Ok(()) => instance.revoke(partitions),
            Err(error) => {
                tracing::error!(%error, "committing before a revoke failed");
                instance.abandon(partitions);
                instance.failed.get_or_insert(error);
            }
        }
    }
}

impl ClientContext for ScaledContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka consumer error");
    }

    fn stats(&self, statistics: Statistics) {
        // librdkafka reports only partitions it fetches, which are the
        // assigned ones.
        report_consumer_lag(&self.metrics, &statistics, &self.input_topic, |_| true);
    }
}

impl ConsumerContext for ScaledContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions = self.partitions(tpl);
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.on_assign(consumer, &partitions);
                apply_rebalance(consumer, Rebalance::Assign, tpl)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.on_revoke(consumer, &partitions);
                apply_rebalance(consumer, Rebalance::Revoke, tpl)
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed; dropping the assignment");
                lock(&self.instance).abandon(&partitions);
                consumer.unassign()
            }
        };
        if let Err(error) = result {
            tracing::error!(%error, "applying the assignment failed");
        }
    }
}

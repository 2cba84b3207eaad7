//! The loop of `trailspike run` with `scale_out.enabled`: one instance of
//! several sharing the work, as Kafka Streams applications do, with
//! Kafka's consumer groups as the coordinator.
//!
//! Each instance runs two stages, each with its own consumer in a group of
//! its own, so that each group spreads its topic's partitions evenly over
//! the instances (cooperative-sticky by default):
//!
//! 1. [`split`]: group `<group_id>` reads the input topic and re-keys every
//!    call by ARN onto `<group_id>-repartition` ([`super::repartition`]);
//! 2. [`count`]: group `<group_id>-detect` reads the repartition topic;
//!    each of its partitions is a task with its own engine (open windows,
//!    watermark) and sled tree (baselines, incidents), whose every write
//!    also goes to its partition of `<group_id>-changelog`
//!    ([`super::changelog`]).
//!
//! Exactly once: each stage has a transactional producer and commits, in
//! one [`Transaction`] per checkpoint, what it wrote (forwarded records and
//! progress markers; changelog writes and alerts; dead letters) with the
//! offsets it consumed. Only after the commit are a checkpoint's writes
//! applied to the local trees. Readers of the alerts topic must use
//! `isolation.level=read_committed`.
//!
//! Rebalances: before partitions are revoked, the rebalance callback
//! commits, so their new owner starts exactly where this instance
//! stopped; before assigned partitions are read, their tasks are restored
//! from the changelog. Partitions lost without a revoke (the session
//! expired) abort instead, and their new owner starts from the last
//! commit. The transactional ids are stable per `state.dir`, so a
//! restarted instance fences its previous incarnation and aborts what it
//! left open at once; an instance that never returns leaves its
//! transactions to expire after `transaction.timeout.ms`.
//!
//! A transaction that fails (a commit that races a rebalance is refused
//! with the group's new generation, for one) is aborted and its stage
//! rewinds to the last commit, as Kafka Streams does with a migrated task:
//! what it holds in memory is rebuilt from what was committed, and every
//! partition it has is read again from the group's committed offset. Only
//! a failed abort (a fenced producer) stops the instance; a commit that
//! times out is retried.

mod count;
mod split;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset};

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::store::{StateStore, StoreError};
use crate::window::FastMap;

use super::changelog::{self, ChangelogError};
use super::pipeline::{Health, RunOptions, TuningWatch};
use super::sink::{Delivered, Delivery, Sink};
use super::source::report_consumer_lag;
use super::{
    apply_rebalance, consumer_config, default_to, failed, require, KafkaFailure,
    Rebalance, RebalanceMode,
};

use count::Count;
use split::Split;

/// Most messages handled between two looks at signals and timers.
const MAX_BATCH: usize = 2_000;
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
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error(
        "--stop-at-end does not apply with scale_out.enabled: the end of the \
         repartition topic moves while other instances feed it; stop with SIGTERM"
    )]
    StopAtEnd,
    #[error("the consumer has no group metadata to commit with")]
    NoGroupMetadata,
}

fn kafka(operation: &'static str) -> impl FnOnce(KafkaError) -> ScaledError {
    failed(operation)
}

/// The consumer group of the counting stage.
pub fn detect_group(config: &Config) -> String {
    format!("{}-detect", config.kafka.group_id)
}

/// Runs one instance until `shutdown` is set, then commits and leaves both
/// groups.
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
    let instance = instance_id(&db)?;
    let open = |stage: &str, topic: &str| {
        let id = format!("{}-{instance}-{stage}", config.kafka.group_id);
        Transaction::open(config, &id, topic, metrics.clone(), health.clone())
    };
    let split = Split::new(config, &topics, open("split", &config.kafka.input_topic)?);
    let split = Arc::new(Mutex::new(split));
    let count = Count::new(config, &topics, db, open("count", &topics.repartition)?)?;
    let count = Arc::new(Mutex::new(count));
    tracing::info!(
        instance,
        repartition_topic = topics.repartition,
        changelog_topic = topics.changelog,
        "scaled out: joining the groups"
    );
    let split_consumer =
        subscribe(config, &config.kafka.group_id, split.clone(), &metrics)?;
    let count_consumer =
        subscribe(config, &detect_group(config), count.clone(), &metrics)?;
    lock(&count).input_partitions = input_partitions(&split_consumer, config)?;
    health.state_loaded.store(true, Ordering::Relaxed);
    health.broker_reachable.store(true, Ordering::Relaxed);
    let mut rules = options.reload.as_ref().map(TuningWatch::new);
    let mut last_report = Instant::now();
    while !shutdown.load(Ordering::Relaxed) {
        if let Some(tuning) = rules.as_mut().and_then(|r| r.poll(config, &metrics)) {
            lock(&count).set_tuning(tuning);
        }
        poll_batch(&split_consumer, &split)?;
        step(&split_consumer, &split)?;
        poll_batch(&count_consumer, &count)?;
        step(&count_consumer, &count)?;
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            report_progress(&health, &metrics, &split_consumer, &count_consumer, &count);
        }
    }
    tracing::info!("stopping: committing and leaving the groups");
    leave(&split_consumer, &split)?;
    leave(&count_consumer, &count)?;
    release_partitions(&split_consumer, &count_consumer);
    // Nothing is left to revoke, so closing only says goodbye.
    drop(split_consumer);
    drop(count_consumer);
    if let Some(error) = lock(&split).transaction().failed.take() {
        return Err(error);
    }
    if let Some(error) = lock(&count).transaction().failed.take() {
        return Err(error);
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// What [`StageContext`] and the loop need of a stage.
trait Stage: Send + 'static {
    const NAME: &'static str;
    fn transaction(&mut self) -> &mut Transaction;
    /// Handles one message inside the open transaction.
    fn handle(&mut self, message: &BorrowedMessage<'_>) -> Result<(), ScaledError>;
    /// Whether a checkpoint is due now.
    fn checkpoint_due(&mut self) -> bool;
    /// Writes the checkpoint and commits it with the offsets consumed;
    /// nothing when there is nothing to write.
    fn commit(&mut self, group: &ConsumerGroupMetadata) -> Result<(), ScaledError>;
    /// Takes up newly assigned partitions (restoring their state).
    fn assigned(&mut self, partitions: &[i32]) -> Result<(), ScaledError>;
    /// Lets go of revoked partitions.
    fn revoked(&mut self, partitions: &[i32]);
    /// Drops what was not committed, from the partitions it keeps.
    fn rebuild(&mut self) -> Result<(), ScaledError>;
}

/// Handles one message; a failure to queue its output aborts the
/// transaction. After an abort, messages are dropped until the rewind,
/// which reads them again.
fn handle_or_abort<S: Stage>(
    stage: &mut S,
    message: &BorrowedMessage<'_>,
) -> Result<(), ScaledError> {
    if stage.transaction().rewind_pending {
        return Ok(());
    }
    let handled = stage
        .transaction()
        .begin()
        .and_then(|()| stage.handle(message));
    match handled {
        Ok(()) => {
            stage
                .transaction()
                .consumed(message.partition(), message.offset());
            Ok(())
        }
        Err(error) => stage.transaction().abort(error),
    }
}

/// Commits; a transaction that fails is aborted and leaves a rewind
/// pending. Only a failed abort is an error.
fn commit_or_abort<S: Stage>(
    stage: &mut S,
    group: &ConsumerGroupMetadata,
) -> Result<(), ScaledError> {
    if stage.transaction().rewind_pending {
        return Ok(());
    }
    match stage.commit(group) {
        Ok(()) => Ok(()),
        Err(error) => stage.transaction().abort(error),
    }
}

/// [`commit_or_abort`] in the consumer's current group generation.
fn commit_now<S: Stage>(
    stage: &mut S,
    consumer: &BaseConsumer<StageContext<S>>,
) -> Result<(), ScaledError> {
    let group = consumer
        .group_metadata()
        .ok_or(ScaledError::NoGroupMetadata)?;
    commit_or_abort(stage, &group)
}

/// Back to the last commit: the stage's memory rebuilt from what was
/// committed, and every partition of `consumer` read again from the
/// group's committed offset.
fn rewind<S: Stage>(
    stage: &mut S,
    consumer: &BaseConsumer<StageContext<S>>,
) -> Result<(), ScaledError> {
    stage.rebuild()?;
    stage.transaction().positions.clear();
    let committed = consumer
        .committed(TRANSACTION_TIMEOUT)
        .map_err(kafka("reading committed offsets"))?;
    let mut seeks = TopicPartitionList::new();
    for element in committed.elements() {
        let offset = match element.offset() {
            Offset::Offset(next) => Offset::Offset(next),
            _ => Offset::Beginning,
        };
        seeks
            .add_partition_offset(element.topic(), element.partition(), offset)
            .map_err(kafka("listing offsets to rewind to"))?;
    }
    let sought = consumer
        .seek_partitions(seeks, TRANSACTION_TIMEOUT)
        .map_err(kafka("rewinding to the committed offsets"))?;
    for element in sought.elements() {
        element
            .error()
            .map_err(kafka("rewinding to the committed offsets"))?;
    }
    stage.transaction().rewind_pending = false;
    tracing::info!(
        stage = S::NAME,
        partitions = sought.count(),
        "rewound to the last commit"
    );
    Ok(())
}

/// After a batch: stops on the rebalance callback's error, commits when a
/// checkpoint is due, and rewinds after an abort.
fn step<S: Stage>(
    consumer: &BaseConsumer<StageContext<S>>,
    stage: &Mutex<S>,
) -> Result<(), ScaledError> {
    let mut stage = lock(stage);
    if let Some(error) = stage.transaction().failed.take() {
        return Err(error);
    }
    if stage.checkpoint_due() {
        commit_now(&mut *stage, consumer)?;
    }
    if stage.transaction().rewind_pending {
        rewind(&mut *stage, consumer)?;
    }
    Ok(())
}

/// Commits what is pending and unsubscribes: the group then revokes
/// every partition, which [`holds_partitions`] serves.
///
/// Partitions are handed back before the consumer is dropped because
/// dropping closes it, and a close that meets a rebalance still to serve
/// can block forever in librdkafka (its issues 4041 and 4884): an instance
/// that stopped one stage while the other's group rebalanced hung there.
fn leave<S: Stage>(
    consumer: &BaseConsumer<StageContext<S>>,
    stage: &Mutex<S>,
) -> Result<(), ScaledError> {
    if let Some(group) = consumer.group_metadata() {
        commit_or_abort(&mut *lock(stage), &group)?;
    }
    consumer.unsubscribe();
    Ok(())
}

/// Serves both stages' revokes after [`leave`] until neither holds a
/// partition, or gives up after [`TRANSACTION_TIMEOUT`].
fn release_partitions(
    split_consumer: &BaseConsumer<StageContext<Split>>,
    count_consumer: &BaseConsumer<StageContext<Count>>,
) {
    let deadline = Instant::now() + TRANSACTION_TIMEOUT;
    loop {
        // Both are polled every round: a group's rebalance waits for
        // every member, this one too.
        let split_held = holds_partitions(split_consumer);
        let count_held = holds_partitions(count_consumer);
        if !split_held && !count_held {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                split_held,
                count_held,
                "partitions still held after leaving the groups; closing anyway"
            );
            break;
        }
    }
}

/// Serves a left group's rebalances; whether partitions are still held.
/// Messages that arrive meanwhile are dropped: their offsets were never
/// committed, so their partitions' next owners read them.
fn holds_partitions<S: Stage>(consumer: &BaseConsumer<StageContext<S>>) -> bool {
    if let Some(Err(error)) = consumer.poll(Duration::from_millis(50)) {
        tracing::debug!(stage = S::NAME, %error, "consume failed while leaving");
    }
    consumer
        .assignment()
        .is_ok_and(|partitions| partitions.count() > 0)
}

fn lock<S>(stage: &Mutex<S>) -> MutexGuard<'_, S> {
    // A panic while the lock is held ends the process (the pipeline thread
    // is the only user besides the rebalance callback, which it runs).
    stage
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Handles the messages available now, waiting briefly for the first.
/// The lock is taken per message, never across `poll`, which may run the
/// rebalance callback.
fn poll_batch<S: Stage>(
    consumer: &BaseConsumer<StageContext<S>>,
    stage: &Mutex<S>,
) -> Result<(), ScaledError> {
    let mut timeout = Duration::from_millis(50);
    for _ in 0..MAX_BATCH {
        match consumer.poll(timeout) {
            None => break,
            Some(Ok(message)) => handle_or_abort(&mut *lock(stage), &message)?,
            Some(Err(error)) => {
                tracing::warn!(stage = S::NAME, %error, "consume failed; librdkafka retries");
                break;
            }
        }
        timeout = Duration::ZERO;
    }
    Ok(())
}

/// Publishes the slowest task's watermark, partitions held, and readiness.
fn report_progress(
    health: &Health,
    metrics: &Metrics,
    split: &BaseConsumer<StageContext<Split>>,
    count_consumer: &BaseConsumer<StageContext<Count>>,
    count: &Mutex<Count>,
) {
    lock(count).report_progress();
    let holds = |assignment: rdkafka::error::KafkaResult<TopicPartitionList>| {
        assignment.is_ok_and(|partitions| partitions.count() > 0)
    };
    let assigned = holds(split.assignment()) || holds(count_consumer.assignment());
    health
        .partitions_assigned
        .store(assigned, Ordering::Relaxed);
    let ready = health.not_ready_reasons().is_empty();
    metrics.ready.set(i64::from(ready));
}

/// This state directory's instance id, made once: the transactional ids
/// stay the same across restarts, so a restart fences its predecessor.
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

/// The input topic's partition count, which every task waits for.
fn input_partitions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
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

/// A consumer of `stage`'s topic in `group`.
fn subscribe<S: Stage>(
    config: &Config,
    group: &str,
    stage: Arc<Mutex<S>>,
    metrics: &Arc<Metrics>,
) -> Result<BaseConsumer<StageContext<S>>, ScaledError> {
    let mut client = consumer_config(&config.kafka);
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
            ("group.id", group),
            // Offsets are committed in the transactions, never otherwise.
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            // Records of aborted transactions were never written.
            ("isolation.level", "read_committed"),
        ],
    );
    let topic = lock(&stage).transaction().topic.clone();
    let context = StageContext {
        topic: topic.clone(),
        mode: RebalanceMode::of(&client),
        report_lag: topic == config.kafka.input_topic,
        stage,
        metrics: metrics.clone(),
    };
    let consumer: BaseConsumer<StageContext<S>> = client
        .create_with_context(context)
        .map_err(kafka("creating a consumer"))?;
    consumer
        .subscribe(&[&topic])
        .map_err(kafka("subscribing"))?;
    Ok(consumer)
}

/// One stage's transactions: its producer, whether one is open, the
/// offsets consumed since the last commit, and whether an abort left a
/// rewind to do.
struct Transaction {
    sink: Sink,
    deliveries: Receiver<Delivery>,
    /// The topic this stage consumes.
    topic: String,
    /// The next offset of each partition consumed.
    positions: BTreeMap<i32, i64>,
    open: bool,
    since_commit: usize,
    last_commit: Instant,
    rewind_pending: bool,
    /// The first error of the rebalance callback, which cannot return it.
    failed: Option<ScaledError>,
    /// The changelog offset after this producer's last delivered write to
    /// each partition: at most the true end, which is what a restore needs
    /// (reading again is harmless, skipping is not).
    changelog_next: FastMap<i32, i64>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Transaction {
    /// A transactional producer under `id`, with its earlier incarnation
    /// fenced and what it left open aborted.
    fn open(
        config: &Config,
        id: &str,
        topic: &str,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Transaction, ScaledError> {
        let (sink, deliveries) =
            Sink::create_transactional(&config.kafka, id, metrics.clone())
                .map_err(kafka("creating a transactional producer"))?;
        sink.init_transactions(TRANSACTION_TIMEOUT)
            .map_err(kafka("initialising transactions"))?;
        tracing::info!(transactional_id = id, topic, "transactions initialised");
        Ok(Transaction {
            sink,
            deliveries,
            topic: topic.to_string(),
            positions: BTreeMap::new(),
            open: false,
            since_commit: 0,
            last_commit: Instant::now(),
            rewind_pending: false,
            failed: None,
            changelog_next: FastMap::default(),
            metrics,
            health,
        })
    }

    fn begin(&mut self) -> Result<(), ScaledError> {
        if !self.open {
            self.sink
                .begin_transaction()
                .map_err(kafka("beginning a transaction"))?;
            self.open = true;
        }
        Ok(())
    }

    fn consumed(&mut self, partition: i32, offset: i64) {
        self.positions.insert(partition, offset + 1);
        self.since_commit += 1;
    }

    /// Whether anything was done since the last commit.
    fn pending(&self) -> bool {
        self.open || self.since_commit > 0
    }

    /// Commits the open transaction with the offsets consumed, retrying
    /// while the broker does not answer in time.
    fn commit(&mut self, group: &ConsumerGroupMetadata) -> Result<(), ScaledError> {
        self.begin()?;
        let mut offsets = TopicPartitionList::new();
        for (&partition, &next) in &self.positions {
            offsets
                .add_partition_offset(&self.topic, partition, Offset::Offset(next))
                .map_err(kafka("listing offsets"))?;
        }
        if offsets.count() > 0 {
            self.sink
                .send_offsets_to_transaction(&offsets, group, TRANSACTION_TIMEOUT)
                .map_err(kafka("adding offsets to the transaction"))?;
        }
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
        self.open = false;
        self.since_commit = 0;
        self.last_commit = Instant::now();
        self.metrics.transaction_ended(true);
        self.health.broker_reachable.store(true, Ordering::Relaxed);
        self.take_deliveries();
        Ok(())
    }

    /// Notes the changelog offsets the deliveries so far reached.
    fn take_deliveries(&mut self) {
        while let Ok((what, outcome)) = self.deliveries.try_recv() {
            if let (Delivered::Changelog(partition), Ok(offset)) = (what, outcome) {
                let next = self.changelog_next.entry(partition).or_insert(offset + 1);
                *next = (*next).max(offset + 1);
            }
        }
    }

    /// Aborts the transaction that `error` failed; the work since the last
    /// commit is redone after the rewind.
    fn abort(&mut self, error: ScaledError) -> Result<(), ScaledError> {
        if matches!(error, ScaledError::Store(_)) {
            // A failing store is fatal, as everywhere else.
            return Err(error);
        }
        tracing::warn!(%error, "transaction failed; aborting and rewinding to the last commit");
        self.sink
            .abort_transaction(TRANSACTION_TIMEOUT)
            .map_err(kafka("aborting a failed transaction"))?;
        self.take_deliveries();
        self.open = false;
        self.since_commit = 0;
        self.metrics.transaction_ended(false);
        self.rewind_pending = true;
        Ok(())
    }
}

/// A stage's consumer context: rebalances run on the stage.
struct StageContext<S> {
    topic: String,
    mode: RebalanceMode,
    /// Consumer lag is published for the input topic's partitions.
    report_lag: bool,
    stage: Arc<Mutex<S>>,
    metrics: Arc<Metrics>,
}

impl<S: Stage> StageContext<S> {
    fn on_assign(&self, consumer: &BaseConsumer<Self>, partitions: &[i32]) {
        let mut stage = lock(&self.stage);
        tracing::info!(
            stage = S::NAME,
            topic = self.topic,
            ?partitions,
            "partitions assigned"
        );
        // A restore can take longer than transaction.timeout.ms: what is
        // pending is committed first, so no transaction waits on it.
        let committed = commit_now(&mut *stage, consumer);
        if let Err(error) = committed.and_then(|()| stage.assigned(partitions)) {
            tracing::error!(stage = S::NAME, %error, "taking up assigned partitions failed");
            stage.transaction().failed.get_or_insert(error);
        }
    }

    fn on_revoke(&self, consumer: &BaseConsumer<Self>, partitions: &[i32]) {
        let mut stage = lock(&self.stage);
        if consumer.assignment_lost() {
            tracing::warn!(
                stage = S::NAME,
                topic = self.topic,
                ?partitions,
                "partitions lost; aborting what was not committed"
            );
            self.abandon(&mut stage, partitions);
            return;
        }
        tracing::info!(
            stage = S::NAME,
            topic = self.topic,
            ?partitions,
            "partitions revoked; committing first"
        );
        if let Err(error) = commit_now(&mut *stage, consumer) {
            tracing::error!(stage = S::NAME, %error, "committing before a revoke failed");
            stage.transaction().failed.get_or_insert(error);
        }
        // Committed or aborted, their new owner starts from the last
        // commit; what this stage keeps is rewound if it was aborted.
        stage.revoked(partitions);
        for partition in partitions {
            stage.transaction().positions.remove(partition);
        }
    }

    /// Others own `partitions` now and start from the last commit: what
    /// was not committed is aborted, and anything kept is rewound.
    fn abandon(&self, stage: &mut S, partitions: &[i32]) {
        let transaction = stage.transaction();
        if transaction.open {
            if let Err(error) = transaction.sink.abort_transaction(TRANSACTION_TIMEOUT) {
                tracing::error!(stage = S::NAME, %error, "aborting the transaction failed");
            }
            transaction.open = false;
            transaction.metrics.transaction_ended(false);
        }
        transaction.since_commit = 0;
        transaction.rewind_pending = true;
        stage.revoked(partitions);
    }
}

impl<S: Stage> ClientContext for StageContext<S> {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(stage = S::NAME, %error, reason, "kafka consumer error");
    }

    fn stats(&self, statistics: Statistics) {
        // librdkafka reports only partitions it fetches, which are the
        // assigned ones.
        if self.report_lag {
            report_consumer_lag(&self.metrics, &statistics, &self.topic, |_| true);
        }
    }
}

impl<S: Stage> ConsumerContext for StageContext<S> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|element| element.partition())
            .collect();
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.on_assign(consumer, &partitions);
                apply_rebalance(consumer, self.mode, Rebalance::Assign, tpl)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.on_revoke(consumer, &partitions);
                apply_rebalance(consumer, self.mode, Rebalance::Revoke, tpl)
            }
            other => {
                tracing::error!(stage = S::NAME, error = ?other, "rebalance failed; dropping the assignment");
                self.abandon(&mut lock(&self.stage), &partitions);
                consumer.unassign()
            }
        };
        if let Err(error) = result {
            tracing::error!(stage = S::NAME, %error, "applying the assignment failed");
        }
    }
}

//! The loop of `trailspike run`: consume, count, checkpoint, alert.
//!
//! Order of effects, which is what makes a crash harmless (SPEC.md
//! section 7):
//!
//! 1. Messages are counted into open windows in memory; bad input is
//!    queued to the dead-letter topic.
//! 2. A checkpoint first waits until every queued dead letter and alert is
//!    acknowledged, then closes the windows the watermark has passed and
//!    writes, in one atomic batch, the updated baselines, the open windows,
//!    the next offset of each partition and the new alerts (the outbox).
//! 3. Only then are the new alerts produced; each leaves the outbox when
//!    the broker acknowledges it.
//! 4. Offsets are committed to the group last, for lag monitoring only:
//!    on start each partition resumes from the offset in the store.
//!
//! A crash anywhere therefore resumes from the last checkpoint: messages
//! after it are read again and counted once, because the state holds
//! nothing of them; dead letters after it are written again (at least
//! once); alerts still in the outbox are read back from the alerts topic
//! (see [`super::readback`]) and re-sent only if missing, so each alert is
//! on the topic exactly once.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::Offset;

use crate::config::{Config, ConfigError};
use crate::engine::{DeadLetter, Engine};
use crate::metrics::Metrics;
use crate::store::{StateStore, StoreError};
use crate::tuning::{Reload, RulesFile, Tuning};
use crate::window::SourceId;

use super::sink::{Delivered, Delivery, Sink, SourceRef};
use super::source::{self, AssignmentChange, Positions, Source};
use super::{failed, now_ms, readback, KafkaFailure, KafkaOrigin};

/// Most messages handled between two looks at signals and timers.
const MAX_BATCH: usize = 2_000;
/// How long a checkpoint waits for the broker to acknowledge what is in
/// flight before it is put off (the broker may be away).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between two checkpoints that close windows. A checkpoint
/// waits for the broker's acknowledgements and writes to disk (tens of
/// milliseconds); when catching up on a backlog, windows become ready
/// with nearly every batch, and checkpointing for each capped throughput
/// at a few tens of thousands of records per second. Closing them a
/// second later changes no result: whether a record is late depends on
/// the watermark, not on when its window was closed.
const MIN_CLOSE_GAP: Duration = Duration::from_secs(1);
/// Longest pause between two attempts to reach the broker at start.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a checkpoint with nothing in flight waits for the broker to
/// answer a metadata request, the evidence `/readyz` needs then.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Least time between two such metadata requests.
const PROBE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error(
        "a dead letter could not be written ({0}); stopping before its offset is saved, \
         so it is retried on restart"
    )]
    DeadLetterFailed(String),
    #[error(
        "alert (outbox entry {seq}) could not be produced ({error}); it stays in the outbox \
         and is sent on restart"
    )]
    AlertFailed { seq: u64, error: String },
    #[error("shutdown did not finish within {0:?}: {1}")]
    ShutdownIncomplete(Duration, &'static str),
}

fn kafka(operation: &'static str) -> impl FnOnce(KafkaError) -> PipelineError {
    failed(operation)
}

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Health {
    pub state_loaded: AtomicBool,
    pub partitions_assigned: AtomicBool,
    pub broker_reachable: AtomicBool,
}

impl Health {
    /// The reasons the process is not ready; empty when it is.
    pub fn not_ready_reasons(&self) -> Vec<&'static str> {
        let checks = [
            (&self.state_loaded, "state not loaded"),
            (&self.partitions_assigned, "no partitions assigned"),
            (&self.broker_reachable, "broker not acknowledging"),
        ];
        checks
            .iter()
            .filter(|(flag, _)| !flag.load(Ordering::Relaxed))
            .map(|(_, reason)| *reason)
            .collect()
    }
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Shut down cleanly once every assigned partition has been read to
    /// its end (the demo and tests; a service runs until signalled).
    pub stop_at_end: bool,
    /// Where the tuning is reloaded from, when run with a config file.
    pub reload: Option<ReloadOptions>,
}

/// The config file to take the tuning from while running.
#[derive(Debug, Clone)]
pub struct ReloadOptions {
    pub config_file: PathBuf,
    /// Set by SIGHUP: reload now, changed or not.
    pub requested: Arc<AtomicBool>,
}

/// Runs the pipeline until `shutdown` is set (or the input is exhausted,
/// with `stop_at_end`), then stops cleanly.
pub fn run(
    config: &Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: Arc<AtomicBool>,
    options: RunOptions,
) -> Result<(), PipelineError> {
    let mut pipeline = Pipeline::start(config, metrics, health, &shutdown)?;
    pipeline.run(&shutdown, &options)?;
    pipeline.stop()
}

struct Pipeline<'c> {
    config: &'c Config,
    engine: Engine,
    store: StateStore,
    sink: Sink,
    deliveries: Receiver<Delivery>,
    consumer: Source,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    last_checkpoint: Instant,
    last_report: Instant,
    /// When the broker last answered the readiness probe, if it did.
    last_probe: Option<Instant>,
}

/// Watches the config file for a new tuning: on SIGHUP, and when it
/// changed, polled every `reload.poll_interval`.
pub(super) struct TuningWatch<'r> {
    file: RulesFile,
    reload: &'r ReloadOptions,
    last_poll: Instant,
}

impl<'r> TuningWatch<'r> {
    pub(super) fn new(reload: &'r ReloadOptions) -> TuningWatch<'r> {
        TuningWatch {
            file: RulesFile::new(&reload.config_file),
            reload,
            last_poll: Instant::now(),
        }
    }

    /// A new tuning to apply from the next window closed on, if the file
    /// changed (or SIGHUP asked); a file that does not load is refused and
    /// the running tuning stays.
    pub(super) fn poll(&mut self, config: &Config, metrics: &Metrics) -> Option<Tuning> {
        let every = config.reload.poll_interval;
        let forced = self.reload.requested.swap(false, Ordering::Relaxed);
        if !forced && (every.is_zero() || self.last_poll.elapsed() < every) {
            return None;
        }
        self.last_poll = Instant::now();
        let path = self.file.path().display().to_string();
        match self.file.reload(forced, config) {
            Reload::Unchanged => None,
            Reload::Loaded {
                tuning,
                needs_restart,
            } => {
                tracing::info!(
                    file = %path,
                    suppress_rules = tuning.suppression.len(),
                    overrides = tuning.overrides.len(),
                    throttle_secs = tuning.throttle_secs,
                    max_alert_age_secs = tuning.max_alert_age_secs,
                    "tuning reloaded; applies from the next window closed"
                );
                if !needs_restart.is_empty() {
                    tracing::warn!(
                        file = %path,
                        sections = ?needs_restart,
                        "these sections changed too and take effect only at a restart"
                    );
                }
                metrics.tuning_reloaded(true);
                Some(*tuning)
            }
            Reload::Refused(error) => {
                tracing::error!(
                    file = %path,
                    %error,
                    "tuning reload refused; the running rules stay"
                );
                metrics.tuning_reloaded(false);
                None
            }
        }
    }
}

impl<'c> Pipeline<'c> {
    fn start(
        config: &'c Config,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        shutdown: &AtomicBool,
    ) -> Result<Pipeline<'c>, PipelineError> {
        let store = StateStore::open(&config.state.dir)?;
        let mut engine = Engine::new(config, metrics.clone())?;
        engine.spill_to(&store)?;
        let progress = engine.restore(&store, now_ms())?;
        let positions: BTreeMap<SourceId, i64> = progress
            .iter()
            .filter_map(|(&partition, p)| p.next_offset.map(|next| (partition, next)))
            .collect();
        tracing::info!(
            dir = %config.state.dir.display(),
            open_window_arns = engine.windows().open_arn_windows(),
            watermark = engine.windows().watermark(),
            ?positions,
            "state loaded"
        );
        metrics.baseline_arns.set(store.baseline_count() as i64);
        let (sink, deliveries) = Sink::create(&config.kafka, metrics.clone())
            .map_err(kafka("creating producer"))?;
        resend_outbox(config, &store, &sink, shutdown)?;
        let consumer =
            source::create(&config.kafka, Positions::new(positions), metrics.clone())
                .map_err(kafka("creating consumer"))?;
        health.state_loaded.store(true, Ordering::Relaxed);
        Ok(Pipeline {
            config,
            engine,
            store,
            sink,
            deliveries,
            consumer,
            metrics,
            health,
            last_checkpoint: Instant::now(),
            last_report: Instant::now(),
            last_probe: None,
        })
    }

    fn run(
        &mut self,
        shutdown: &AtomicBool,
        options: &RunOptions,
    ) -> Result<(), PipelineError> {
        let interval = self.config.state.checkpoint_interval;
        let mut last_end_check = Instant::now();
        let mut rules = options.reload.as_ref().map(TuningWatch::new);
        while !shutdown.load(Ordering::Relaxed) {
            let reloaded = rules
                .as_mut()
                .and_then(|rules| rules.poll(self.config, &self.metrics));
            if let Some(tuning) = reloaded {
                self.engine.set_tuning(tuning);
            }
            let handled = self.poll_batch()?;
            self.apply_assignment_changes();
            self.drain_deliveries()?;
            self.engine.windows_mut().advance_watermark(now_ms());
            self.report_progress();
            let since = self.last_checkpoint.elapsed();
            if (self.engine.windows().has_ready() && since >= MIN_CLOSE_GAP)
                || since >= interval
            {
                self.checkpoint()?;
            }
            let check_end = options.stop_at_end && handled == 0;
            if check_end && last_end_check.elapsed() >= Duration::from_millis(500) {
                last_end_check = Instant::now();
                if self.caught_up() {
                    tracing::info!("input read to its end; stopping");
                    break;
                }
            }
        }
        Ok(())
    }

    /// Publishes event-time progress and readiness, at most once a second.
    fn report_progress(&mut self) {
        if self.last_report.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_report = Instant::now();
        self.engine.report_progress(now_ms() / 1000);
        let ready = self.health.not_ready_reasons().is_empty();
        self.metrics.ready.set(i64::from(ready));
    }

    /// Handles the messages available now, waiting briefly for the first.
    fn poll_batch(&mut self) -> Result<usize, PipelineError> {
        let mut handled = 0;
        let mut timeout = Duration::from_millis(100);
        while handled < MAX_BATCH {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(message)) => {
                    handle_message(
                        &mut self.engine,
                        &self.sink,
                        &self.config.kafka.input_topic,
                        &message,
                    )?;
                    self.consumer
                        .context()
                        .positions
                        .set(message.partition(), message.offset() + 1);
                    handled += 1;
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "consume failed; librdkafka retries");
                    break;
                }
            }
            timeout = Duration::ZERO;
        }
        Ok(handled)
    }

    fn apply_assignment_changes(&mut self) {
        let now = now_ms();
        for change in self.consumer.context().take_changes() {
            match change {
                AssignmentChange::Assigned(partitions) => {
                    for partition in partitions {
                        self.engine.windows_mut().add_source(partition, now);
                    }
                }
                AssignmentChange::Revoked(partitions) => {
                    for partition in partitions {
                        self.engine.windows_mut().remove_source(partition);
                        self.metrics.forget_partition(partition);
                    }
                }
            }
        }
        let assigned = !self.consumer.context().assigned().is_empty();
        self.health
            .partitions_assigned
            .store(assigned, Ordering::Relaxed);
    }

    /// Applies delivery reports: acknowledged alerts leave the outbox; a
    /// failed dead letter or alert stops the pipeline.
    fn drain_deliveries(&mut self) -> Result<(), PipelineError> {
        while let Ok((what, outcome)) = self.deliveries.try_recv() {
            match (what, outcome) {
                (Delivered::Alert(seq), Ok(_)) => {
                    tracing::debug!(seq, "alert acknowledged by the broker");
                    self.store.acknowledge(seq)?;
                    self.metrics.alert_produced();
                }
                (Delivered::DeadLetter, Ok(_)) => {}
                (Delivered::Alert(seq), Err(error)) => {
                    return Err(PipelineError::AlertFailed { seq, error })
                }
                (Delivered::DeadLetter, Err(error)) => {
                    return Err(PipelineError::DeadLetterFailed(error))
                }
                // Only the transactional producer of a scaled-out instance
                // writes these.
                (Delivered::Changelog(_) | Delivered::InTransaction, _) => {}
            }
        }
        Ok(())
    }

    /// Makes the state durable (see the module docs for the order).
    /// Returns false when the broker did not acknowledge what was in
    /// flight in time, in which case nothing was written.
    fn checkpoint(&mut self) -> Result<bool, PipelineError> {
        self.last_checkpoint = Instant::now();
        let in_flight = self.sink.in_flight();
        if let Err(error) = self.sink.flush(FLUSH_TIMEOUT) {
            tracing::warn!(%error, in_flight = self.sink.in_flight(), "broker has not acknowledged; checkpoint put off");
            self.health.broker_reachable.store(false, Ordering::Relaxed);
            self.metrics.checkpoints_deferred.inc();
            return Ok(false);
        }
        let reachable = in_flight > 0 || self.broker_answers();
        self.health
            .broker_reachable
            .store(reachable, Ordering::Relaxed);
        self.drain_deliveries()?;
        let now = now_ms();
        let positions = self.consumer.context().positions.snapshot();
        let mut changes = self.store.changes();
        self.engine.close_ready(&mut changes, now)?;
        self.engine.checkpoint(&mut changes, &|partition| {
            positions.get(&partition).copied()
        })?;
        let queued = changes.commit()?;
        for (seq, entry) in &queued {
            self.sink
                .send_alert(*seq, &entry.key, &entry.payload)
                .map_err(kafka("queueing an alert"))?;
        }
        self.metrics.checkpoints.inc();
        self.metrics
            .baseline_arns
            .set(self.store.baseline_count() as i64);
        if let Ok(bytes) = self.store.size_on_disk() {
            self.metrics.state_size_bytes.set(bytes as i64);
        }
        self.commit_offsets(&positions, CommitMode::Async);
        Ok(true)
    }

    /// Whether the broker answers a metadata request, asked at most once
    /// per [`PROBE_EVERY`]. A flush with nothing in flight succeeds with
    /// no broker at all, so it proves nothing about readiness.
    fn broker_answers(&mut self) -> bool {
        if self.last_probe.is_some_and(|at| at.elapsed() < PROBE_EVERY) {
            return true;
        }
        let topic = self.config.kafka.input_topic.as_str();
        let answered = self
            .consumer
            .fetch_metadata(Some(topic), PROBE_TIMEOUT)
            .is_ok();
        self.last_probe = answered.then(Instant::now);
        answered
    }

    fn commit_offsets(&self, positions: &BTreeMap<SourceId, i64>, mode: CommitMode) {
        let topic = &self.config.kafka.input_topic;
        let mut offsets = TopicPartitionList::new();
        for partition in self.consumer.context().assigned() {
            if let Some(&next) = positions.get(&partition) {
                // Adding to a fresh list with a valid offset cannot fail.
                let _ =
                    offsets.add_partition_offset(topic, partition, Offset::Offset(next));
            }
        }
        if offsets.count() == 0 {
            return;
        }
        if let Err(error) = self.consumer.commit(&offsets, mode) {
            tracing::warn!(%error, "committing offsets to the group failed; lag metrics lag");
        }
    }

    /// Whether every assigned partition has been read to its end and
    /// nothing is waiting to be produced.
    fn caught_up(&self) -> bool {
        let assigned = self.consumer.context().assigned();
        if assigned.is_empty()
            || self.engine.windows().has_ready()
            || self.sink.in_flight() > 0
        {
            return false;
        }
        let topic = &self.config.kafka.input_topic;
        let positions = self.consumer.context().positions.snapshot();
        assigned.iter().all(|&partition| {
            match self
                .consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(2))
            {
                Ok((low, high)) => positions
                    .get(&partition)
                    .map_or(low >= high, |&next| next >= high),
                Err(_) => false,
            }
        })
    }

    /// Saves state, produces what is pending and commits offsets, within
    /// `kafka.shutdown_timeout`.
    fn stop(mut self) -> Result<(), PipelineError> {
        let limit = self.config.kafka.shutdown_timeout;
        let deadline = Instant::now() + limit;
        tracing::info!("stopping: saving state and producing pending alerts");
        while !self.checkpoint()? {
            if Instant::now() >= deadline {
                return Err(PipelineError::ShutdownIncomplete(limit, "state not saved"));
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if self.sink.flush(remaining).is_err() {
            return Err(PipelineError::ShutdownIncomplete(
                limit,
                "alerts not acknowledged; they stay in the outbox and are sent on restart",
            ));
        }
        self.drain_deliveries()?;
        self.store.flush()?;
        let positions = self.consumer.context().positions.snapshot();
        // A synchronous commit has no timeout in librdkafka: against a
        // broker that stopped answering it waits until the process's own
        // stop limit ends it (exit 3). The store already holds these
        // positions, so only the group's view of the lag is left behind.
        self.commit_offsets(&positions, CommitMode::Sync);
        tracing::info!("stopped cleanly");
        Ok(())
    }
}

/// Counts one message; bad input goes to the dead-letter topic.
fn handle_message(
    engine: &mut Engine,
    sink: &Sink,
    topic: &str,
    message: &BorrowedMessage<'_>,
) -> Result<(), PipelineError> {
    let now = now_ms();
    let arrival_unix = message.timestamp().to_millis().unwrap_or(now) / 1000;
    let from = SourceRef {
        topic,
        partition: message.partition(),
        offset: message.offset(),
        key: message.key(),
    };
    let origin = KafkaOrigin {
        topic,
        partition: from.partition,
        offset: from.offset,
    };
    let mut failure = None;
    let metrics = engine.metrics_handle();
    let mut dead_letter =
        |letter: DeadLetter<'_>| match sink.send_dead_letter(&letter, &from) {
            Ok(()) => metrics.dead_lettered(letter.reason),
            Err(error) => failure = Some(error),
        };
    let payload = message.payload().unwrap_or_default();
    engine.process_message(
        from.partition,
        payload,
        arrival_unix,
        now,
        &origin,
        &mut dead_letter,
    );
    match failure {
        Some(error) => Err(kafka("queueing a dead letter")(error)),
        None => Ok(()),
    }
}

/// Produces the alerts a previous run left in the outbox, except those the
/// alerts topic already holds.
fn resend_outbox(
    config: &Config,
    store: &StateStore,
    sink: &Sink,
    shutdown: &AtomicBool,
) -> Result<(), PipelineError> {
    let outbox = store.outbox()?;
    let Some(since_ms) = outbox.iter().map(|(_, entry)| entry.queued_ms).min() else {
        return Ok(());
    };
    let ids: HashSet<String> = outbox
        .iter()
        .filter_map(|(_, e)| alert_id(&e.payload))
        .collect();
    let found = with_backoff("reading back the alerts topic", shutdown, || {
        readback::already_on_topic(&config.kafka, since_ms, &ids, Duration::from_secs(30))
    })?;
    let mut resent = 0;
    for (seq, entry) in &outbox {
        if alert_id(&entry.payload).is_some_and(|id| found.contains(&id)) {
            store.acknowledge(*seq)?;
        } else {
            sink.send_alert(*seq, &entry.key, &entry.payload)
                .map_err(kafka("queueing an alert"))?;
            resent += 1;
        }
    }
    tracing::info!(
        queued = outbox.len(),
        already_on_topic = found.len(),
        resent,
        "outbox recovered"
    );
    Ok(())
}

fn alert_id(payload: &str) -> Option<String> {
    crate::ocsf::alert_id_in(payload.as_bytes())
}

/// Retries `attempt` with exponential backoff until it succeeds or
/// `shutdown` is set.
fn with_backoff<T>(
    operation: &'static str,
    shutdown: &AtomicBool,
    mut attempt: impl FnMut() -> Result<T, KafkaError>,
) -> Result<T, PipelineError> {
    let mut pause = Duration::from_millis(500);
    for tries in 1.. {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(error) if shutdown.load(Ordering::Relaxed) => {
                return Err(kafka(operation)(error))
            }
            Err(error) => {
                tracing::warn!(operation, tries, %error, retry_in = ?pause, "broker unavailable; retrying");
                std::thread::sleep(pause);
                pause = (pause * 2).min(MAX_BACKOFF);
            }
        }
    }
    unreachable!("the retry loop only ends by returning")
}

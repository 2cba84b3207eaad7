//! Scaled out, stage 2: the repartition partitions this instance holds,
//! each a task with its own engine and sled tree, whose writes go to the
//! changelog in the same transaction as its alerts and offsets.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::config::Config;
use crate::engine::{DeadLetter, Engine};
use crate::kafka::changelog::{ChangelogReader, InternalTopics};
use crate::kafka::sink::{
    Delivered, Outgoing, SourceRef, HEADER_OFFSET, HEADER_PARTITION, HEADER_PROGRESS,
    HEADER_RECORD_INDEX,
};
use crate::kafka::{now_ms, KafkaOrigin};
use crate::metrics::StateRestore;
use crate::store::{ChangelogPosition, Prepared, StateStore};
use crate::tuning::Tuning;

use super::{kafka, ScaledError, Stage, Transaction};

/// Least time between two checkpoints that close windows (see the
/// single-instance pipeline: catching up, nearly every batch makes a
/// window ready).
const MIN_CLOSE_GAP: Duration = Duration::from_secs(1);

/// One partition of the repartition topic: its engine and its tree.
struct Task {
    engine: Engine,
    store: StateStore,
}

pub(super) struct Count {
    transaction: Transaction,
    config: Config,
    topics: InternalTopics,
    db: sled::Db,
    tasks: BTreeMap<i32, Task>,
    /// Partitions of the input topic, each of which a task waits for.
    pub(super) input_partitions: i32,
    /// The tuning in force, for tasks assigned after a reload.
    tuning: Tuning,
}

impl Count {
    pub(super) fn new(
        config: &Config,
        topics: &InternalTopics,
        db: sled::Db,
        transaction: Transaction,
    ) -> Result<Count, ScaledError> {
        Ok(Count {
            transaction,
            config: config.clone(),
            topics: topics.clone(),
            db,
            tasks: BTreeMap::new(),
            input_partitions: 0,
            tuning: Tuning::from_config(config)?,
        })
    }

    pub(super) fn set_tuning(&mut self, tuning: Tuning) {
        for task in self.tasks.values_mut() {
            task.engine.set_tuning(tuning.clone());
        }
        self.tuning = tuning;
    }

    /// Publishes the slowest task's watermark and the tasks held.
    pub(super) fn report_progress(&self) {
        let metrics = &self.transaction.metrics;
        metrics.partition_tasks.set(self.tasks.len() as i64);
        let slowest = self
            .tasks
            .values()
            .min_by_key(|task| task.engine.windows().watermark());
        if let Some(task) = slowest {
            task.engine.report_progress(now_ms() / 1000);
        }
    }

    /// Whether any task can close a window now (idle input partitions
    /// let the watermark move without a record).
    fn any_ready(&mut self) -> bool {
        let now = now_ms();
        self.tasks.values_mut().any(|task| {
            task.engine.windows_mut().advance_watermark(now);
            task.engine.windows().has_ready()
        })
    }

    /// Each task's checkpoint (ready windows closed, open windows, the
    /// watermark) queued to its changelog partition, with its alerts.
    fn write_checkpoints(
        &mut self,
        now: i64,
    ) -> Result<Vec<(i32, Prepared)>, ScaledError> {
        let mut all = Vec::with_capacity(self.tasks.len());
        let changelog = self.topics.changelog.as_str();
        let sink = &self.transaction.sink;
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
                sink.send_to(outgoing)
                    .map_err(kafka("queueing a changelog write"))?;
            }
            for alert in &prepared.alerts {
                sink.send_alert_as(Delivered::InTransaction, &alert.key, &alert.payload)
                    .map_err(kafka("queueing an alert"))?;
            }
            all.push((partition, prepared));
        }
        Ok(all)
    }

    /// Applies committed checkpoints to the trees.
    fn apply(&self, prepared: Vec<(i32, Prepared)>, now: i64) -> Result<(), ScaledError> {
        let metrics = &self.transaction.metrics;
        for (partition, prepared) in prepared {
            for _ in &prepared.alerts {
                metrics.alert_produced();
            }
            if let Some(task) = self.tasks.get(&partition) {
                let position =
                    self.transaction
                        .changelog_next
                        .get(&partition)
                        .map(|&next| ChangelogPosition {
                            next,
                            synced_ms: now,
                        });
                task.store.apply(prepared, position)?;
            }
        }
        metrics.checkpoints.inc();
        let baselines: u64 = self.tasks.values().map(|t| t.store.baseline_count()).sum();
        metrics.baseline_arns.set(baselines as i64);
        if let Ok(bytes) = self.db.size_on_disk() {
            metrics.state_size_bytes.set(bytes as i64);
        }
        Ok(())
    }

    /// A task for each of `partitions`, its tree brought up to its
    /// changelog's end first.
    fn restore_tasks(&mut self, partitions: &[i32]) -> Result<(), ScaledError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let reader = ChangelogReader::new(&self.config, &self.topics)?;
        for &partition in partitions {
            let task = self.restore_task(&reader, partition)?;
            self.tasks.insert(partition, task);
        }
        Ok(())
    }

    /// Partition `partition`'s task, its tree brought up to its
    /// changelog's end first.
    fn restore_task(
        &mut self,
        reader: &ChangelogReader,
        partition: i32,
    ) -> Result<Task, ScaledError> {
        let started = Instant::now();
        let store = StateStore::partition(&self.db, &self.config.state.dir, partition)?;
        let restored = reader.restore(partition, &store)?;
        self.transaction.changelog_next.remove(&partition);
        let metrics = self.transaction.metrics.clone();
        let mut engine = Engine::new(&self.config, metrics.clone())?;
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
        metrics.state_restored(&StateRestore {
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
}

impl Stage for Count {
    const NAME: &'static str = "count";

    fn transaction(&mut self) -> &mut Transaction {
        &mut self.transaction
    }

    /// One repartitioned call, or progress marker, into its task.
    fn handle(&mut self, message: &BorrowedMessage<'_>) -> Result<(), ScaledError> {
        let partition = message.partition();
        let Some(task) = self.tasks.get_mut(&partition) else {
            tracing::warn!(partition, "a record of a partition with no task; skipped");
            return Ok(());
        };
        let origin = ForwardedOrigin::read(message);
        let now = now_ms();
        let (Some(source), Some(offset)) = (origin.partition, origin.offset) else {
            match (origin.partition, origin.progress) {
                (Some(source), Some(event_time)) => {
                    task.engine.windows_mut().progress(source, event_time, now)
                }
                _ => tracing::warn!(
                    partition,
                    offset = message.offset(),
                    "repartitioned message without its origin headers; skipped"
                ),
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
        let (sink, metrics) = (&self.transaction.sink, &self.transaction.metrics);
        let failure = Cell::new(None);
        let mut dead_letter = |letter: DeadLetter<'_>| {
            let letter = DeadLetter {
                record_index: letter.record_index.or(origin.record_index),
                ..letter
            };
            match sink.send_dead_letter_as(Delivered::InTransaction, &letter, &from) {
                Ok(()) => metrics.dead_lettered(letter.reason),
                Err(error) => failure.set(Some(error)),
            }
        };
        let arrival_unix = message.timestamp().to_millis().unwrap_or(now) / 1000;
        task.engine.process_record(
            source,
            message.payload().unwrap_or_default(),
            arrival_unix,
            now,
            &log_origin,
            &mut dead_letter,
        );
        match failure.into_inner() {
            Some(error) => Err(kafka("queueing a dead letter")(error)),
            None => Ok(()),
        }
    }

    /// Input handled and the checkpoint interval over, or a window ready
    /// to close.
    fn checkpoint_due(&mut self) -> bool {
        let since = self.transaction.last_commit.elapsed();
        let ready = self.any_ready();
        (self.transaction.pending() && since >= self.config.state.checkpoint_interval)
            || (ready && since >= MIN_CLOSE_GAP)
    }

    /// Closes ready windows and commits everything since the last commit,
    /// then applies the state writes to the trees.
    fn commit(&mut self, group: &ConsumerGroupMetadata) -> Result<(), ScaledError> {
        if !self.transaction.pending() && !self.any_ready() {
            return Ok(());
        }
        let now = now_ms();
        self.transaction.begin()?;
        let prepared = self.write_checkpoints(now)?;
        self.transaction.commit(group)?;
        self.apply(prepared, now)
    }

    fn assigned(&mut self, partitions: &[i32]) -> Result<(), ScaledError> {
        let new: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|partition| !self.tasks.contains_key(partition))
            .collect();
        self.restore_tasks(&new)
    }

    /// Their trees stay on disk: if they come back, restoring reads only
    /// what was written meanwhile.
    fn revoked(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.tasks.remove(partition);
        }
    }

    /// Every task rebuilt from its tree, which holds exactly what was
    /// committed.
    fn rebuild(&mut self) -> Result<(), ScaledError> {
        let partitions: Vec<i32> = self.tasks.keys().copied().collect();
        self.tasks.clear();
        self.restore_tasks(&partitions)
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

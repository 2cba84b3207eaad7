//! The detection as one unit: messages in, closed windows and alerts out.
//! Replay and the Kafka pipeline both drive this; they differ only in
//! where messages come from and where alerts and dead letters go.
//!
//! The engine holds open windows in memory and writes nothing by itself:
//! closing windows and checkpointing add to a [`Changes`] batch that the
//! driver commits, so the driver decides when state becomes durable
//! relative to its offsets.

use std::sync::Arc;
use std::time::Instant;

use crate::alert::Alert;
use crate::config::{Config, ConfigError};
use crate::detect::Detector;
use crate::metrics::{Metrics, Origin};
use crate::ocsf::AlertFormat;
use crate::parse::{
    collapse_session, ApiCall, MessageBody, ParseOptions, RecordOutcome, RejectReason,
};
use crate::store::{Changes, OutboxEntry, SourceProgress, StateStore, StoreError};
use crate::tuning::Tuning;
use crate::window::{Admission, SourceId, Windows};

/// A message or record for the dead-letter topic. `payload` is the exact
/// bytes received: the whole message, or one record of a `Records` batch.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    pub reason: RejectReason,
    pub detail: String,
    pub payload: &'a [u8],
    /// Index in the message's `Records` array, for a batched record.
    pub record_index: Option<usize>,
}

/// What the intake hands on from a message: a call to count, or the event
/// time of a well-formed record that does not count (evidence of how far
/// its source has come).
pub enum Screened<'a> {
    Call(ApiCall<'a>),
    Progress(i64),
}

/// Why the receiver of a [`Screened`] call refuses it (a late record).
pub type Refusal = Option<(RejectReason, String)>;

/// One record that passed the intake: its exact bytes, its index in the
/// message's `Records` array (for a batched record), and what it is.
pub struct Passed<'a> {
    pub raw: &'a [u8],
    pub record_index: Option<usize>,
    pub screened: Screened<'a>,
}

/// Stage 1 as a unit: message bytes to screened records, with bad input
/// sent to the dead-letter topic and counted. The engine counts what it
/// passes; scaled out, the repartitioner forwards it by ARN instead.
#[derive(Clone)]
pub struct Intake {
    parse: ParseOptions,
    max_future_skew_secs: i64,
    /// Count an assumed role's sessions as the role.
    collapse_sessions: bool,
    metrics: Arc<Metrics>,
}

impl Intake {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Intake {
        let detection = &config.detection;
        Intake {
            parse: config.parse_options(),
            max_future_skew_secs: detection.max_future_skew.as_secs() as i64,
            collapse_sessions: detection.collapse_assumed_role_sessions,
            metrics,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Decodes one message and hands each record that passes to `accept`
    /// with its exact bytes. `arrival_unix` is when the message was
    /// written (the Kafka timestamp, or the wall clock for files): records
    /// more than `max_future_skew` ahead of it are rejected, so that one
    /// corrupt time cannot close every window early.
    pub fn process_message(
        &self,
        message: &[u8],
        arrival_unix: i64,
        origin: Origin<'_>,
        accept: &mut dyn FnMut(Passed<'_>) -> Refusal,
        dead_letter: &mut dyn FnMut(DeadLetter<'_>),
    ) {
        let body = match MessageBody::decode(message, &self.parse) {
            Ok(body) => body,
            Err(bad) => {
                return self.reject(
                    bad.reason,
                    bad.detail,
                    message,
                    None,
                    origin,
                    dead_letter,
                )
            }
        };
        let whole_body = body.bytes();
        let mut index = 0;
        let mut bad_records = Vec::new();
        let parsed = body.for_each_record(&self.parse, |raw, outcome| {
            let record_index = (raw.len() != whole_body.len()).then_some(index);
            index += 1;
            // Dead-letter the message as received when it is one record.
            let payload = if record_index.is_none() { message } else { raw };
            let passed = |screened| Passed {
                raw,
                record_index,
                screened,
            };
            if let Some(bad) = self.screen(passed, outcome, arrival_unix, accept) {
                bad_records.push((bad, payload, record_index));
            }
        });
        for ((reason, detail), payload, record_index) in bad_records {
            self.reject(reason, detail, payload, record_index, origin, dead_letter);
        }
        if let Err(bad) = parsed {
            self.reject(bad.reason, bad.detail, message, None, origin, dead_letter);
        }
    }

    /// Passes one parsed record on; returns why it is bad input, if it is.
    fn screen<'r>(
        &self,
        passed: impl FnOnce(Screened<'r>) -> Passed<'r>,
        outcome: RecordOutcome<'r>,
        arrival_unix: i64,
        accept: &mut dyn FnMut(Passed<'_>) -> Refusal,
    ) -> Refusal {
        let event_time = match &outcome {
            RecordOutcome::Call(call) => call.event_time,
            RecordOutcome::Skipped { event_time, .. } => *event_time,
            RecordOutcome::Rejected { reason, detail } => {
                return Some((*reason, detail.clone()))
            }
        };
        if event_time > arrival_unix.saturating_add(self.max_future_skew_secs) {
            let detail = format!(
                "eventTime {event_time} is {}s ahead of the message time {arrival_unix}; \
                 detection.max_future_skew is {}s",
                event_time - arrival_unix,
                self.max_future_skew_secs
            );
            return Some((RejectReason::FutureSkew, detail));
        }
        match outcome {
            RecordOutcome::Call(mut call) => {
                if self.collapse_sessions {
                    collapse_session(&mut call.arn);
                }
                accept(passed(Screened::Call(call)))
            }
            RecordOutcome::Skipped { reason, .. } => {
                self.metrics.skipped(reason);
                accept(passed(Screened::Progress(event_time)))
            }
            RecordOutcome::Rejected { .. } => None,
        }
    }

    fn reject(
        &self,
        reason: RejectReason,
        detail: String,
        payload: &[u8],
        record_index: Option<usize>,
        origin: Origin<'_>,
        dead_letter: &mut dyn FnMut(DeadLetter<'_>),
    ) {
        if reason != RejectReason::Late {
            self.metrics.rejected(reason, &detail, origin);
        }
        dead_letter(DeadLetter {
            reason,
            detail,
            payload,
            record_index,
        });
    }
}

pub struct Engine {
    windows: Windows,
    detector: Detector,
    intake: Intake,
    dead_letter_late: bool,
    format: AlertFormat,
    /// 0 keeps baselines forever.
    baseline_ttl_secs: i64,
    /// Event-time day of the last expiry sweep.
    last_sweep_day: i64,
    max_open_arn_windows: usize,
    metrics: Arc<Metrics>,
}

impl Engine {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Engine, ConfigError> {
        let detection = &config.detection;
        Ok(Engine {
            windows: Windows::new(
                detection.window_spec(),
                detection.idle_timeout.as_millis() as i64,
                detection.dedupe_event_id,
            ),
            detector: Detector {
                thresholds: detection.thresholds(),
                smoothing: detection.smoothing(),
                event_name_cap: config.alerts.event_name_cap,
                tuning: Tuning::from_config(config)?,
                resolve_incidents: config.alerts.resolve_incidents,
            },
            intake: Intake::new(config, metrics.clone()),
            dead_letter_late: detection.dead_letter_late_records,
            format: config.alerts.format,
            baseline_ttl_secs: config.state.baseline_ttl.as_secs() as i64,
            last_sweep_day: i64::MIN,
            max_open_arn_windows: config.state.max_open_arn_windows,
            metrics,
        })
    }

    pub fn windows(&self) -> &Windows {
        &self.windows
    }

    pub fn windows_mut(&mut self) -> &mut Windows {
        &mut self.windows
    }

    /// Replaces the rules that decide which spikes become alerts, from the
    /// next window closed on.
    pub fn set_tuning(&mut self, tuning: Tuning) {
        self.detector.tuning = tuning;
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn metrics_handle(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Counts one message from `source`; see [`Intake::process_message`].
    pub fn process_message(
        &mut self,
        source: SourceId,
        message: &[u8],
        arrival_unix: i64,
        now_ms: i64,
        origin: Origin<'_>,
        dead_letter: &mut dyn FnMut(DeadLetter<'_>),
    ) {
        self.metrics.messages_consumed.inc();
        self.process_record(source, message, arrival_unix, now_ms, origin, dead_letter);
    }

    /// Counts a message already counted as consumed upstream: one record
    /// forwarded by the repartitioner.
    pub fn process_record(
        &mut self,
        source: SourceId,
        message: &[u8],
        arrival_unix: i64,
        now_ms: i64,
        origin: Origin<'_>,
        dead_letter: &mut dyn FnMut(DeadLetter<'_>),
    ) {
        let windows = &mut self.windows;
        let metrics = &self.metrics;
        let dead_letter_late = self.dead_letter_late;
        let mut accept = |passed: Passed<'_>| -> Refusal {
            let call = match passed.screened {
                Screened::Call(call) => call,
                Screened::Progress(event_time) => {
                    windows.progress(source, event_time, now_ms);
                    return None;
                }
            };
            match windows.observe(source, &call, now_ms) {
                Admission::Counted => metrics.records_counted.inc(),
                Admission::DuplicateEventId => {
                    metrics.skipped(crate::parse::SkipReason::DuplicateEventId)
                }
                Admission::Late => {
                    metrics.late(call.event_time, windows.watermark(), origin);
                    if dead_letter_late {
                        return Some((
                            RejectReason::Late,
                            "window already closed".into(),
                        ));
                    }
                }
            }
            None
        };
        self.intake.process_message(
            message,
            arrival_unix,
            origin,
            &mut accept,
            dead_letter,
        );
    }

    /// Closes every window the watermark has passed, updating baselines
    /// in `changes`, and returns the alerts to produce, oldest window first.
    /// `now_ms` stamps the outbox entries.
    pub fn close_ready(
        &mut self,
        changes: &mut Changes<'_>,
        now_ms: i64,
    ) -> Result<Vec<Alert>, StoreError> {
        let closed = self.windows.close_ready()?;
        self.close(closed, changes, now_ms)
    }

    /// Closes every open window: the end of a finite input.
    pub fn close_all(
        &mut self,
        changes: &mut Changes<'_>,
        now_ms: i64,
    ) -> Result<Vec<Alert>, StoreError> {
        let closed = self.windows.close_all()?;
        self.close(closed, changes, now_ms)
    }

    fn close(
        &mut self,
        closed: Vec<crate::window::ClosedWindow>,
        changes: &mut Changes<'_>,
        now_ms: i64,
    ) -> Result<Vec<Alert>, StoreError> {
        let mut alerts = Vec::new();
        for window in closed {
            let _span = tracing::info_span!(
                "close_window",
                window_start = window.start,
                arns = window.arns.len()
            )
            .entered();
            let started = Instant::now();
            let verdicts = self.detector.close(&window, changes, now_ms / 1000)?;
            changes.remove_stored_windows(window.start)?;
            self.metrics
                .windows_already_applied(verdicts.already_applied);
            for (alert, by) in &verdicts.suppressed {
                self.metrics.alert_suppressed(alert, *by);
            }
            for alert in verdicts.alerts {
                self.metrics.spike_detected(&alert);
                changes.enqueue_alert(OutboxEntry {
                    queued_ms: now_ms,
                    key: alert.user.clone(),
                    payload: self.format.render(&alert),
                });
                alerts.push(alert);
            }
            let seconds = started.elapsed().as_secs_f64();
            self.metrics
                .window_closed(window.start, window.arns.len(), seconds);
        }
        self.expire_idle_baselines(changes)?;
        self.report_open_windows();
        Ok(alerts)
    }

    /// Deletes baselines idle for longer than the TTL, once per day of
    /// event time: a scan of every baseline is too dear for every window.
    fn expire_idle_baselines(
        &mut self,
        changes: &mut Changes<'_>,
    ) -> Result<(), StoreError> {
        let watermark = self.windows.watermark();
        let day = watermark.div_euclid(86_400);
        if self.baseline_ttl_secs == 0
            || watermark == i64::MIN
            || day <= self.last_sweep_day
        {
            return Ok(());
        }
        self.last_sweep_day = day;
        let cutoff = watermark - self.baseline_ttl_secs;
        let expired = changes.expire_baselines(cutoff)?;
        self.metrics.baselines_expired(expired, cutoff);
        Ok(())
    }

    /// Publishes how many (window, ARN) entries are open, and where.
    fn report_open_windows(&mut self) {
        let moved = self.windows.take_spill_counts();
        self.metrics.open_windows(
            self.windows.resident_arn_windows(),
            self.windows.spilled_arn_windows(),
            moved,
        );
    }

    /// Publishes the watermark and each source's high-water mark.
    pub fn report_progress(&self, now_unix: i64) {
        let sources = self.windows.sources();
        self.metrics.event_time_progress(
            self.windows.watermark(),
            sources.iter().map(|(&s, clock)| (s, clock.max_event_time)),
            now_unix,
        );
    }

    /// Adds what changed in open windows since the last checkpoint, the
    /// watermark and each source's position to `changes`.
    pub fn checkpoint(
        &mut self,
        changes: &mut Changes<'_>,
        next_offsets: &dyn Fn(SourceId) -> Option<i64>,
    ) -> Result<(), StoreError> {
        for (start, arn, window) in self.windows.take_dirty()? {
            changes.put_window(start, &arn, &window);
        }
        changes.put_watermark(self.windows.watermark());
        for (&source, clock) in self.windows.sources() {
            let progress = SourceProgress {
                next_offset: next_offsets(source),
                max_event_time: clock.max_event_time,
            };
            changes.put_source(source, &progress);
        }
        self.report_open_windows();
        Ok(())
    }

    /// Moves open windows beyond `state.max_open_arn_windows` to `store`'s
    /// spill area, so an ARN flood costs disk rather than memory. Call it
    /// before [`Engine::restore`], so a large checkpoint loads within the
    /// bound too.
    pub fn spill_to(&mut self, store: &StateStore) -> Result<(), StoreError> {
        self.windows
            .spill_to(store.spill()?, self.max_open_arn_windows);
        Ok(())
    }

    /// Loads open windows, the watermark and source high-water marks from
    /// the last checkpoint. Returns each source's saved progress.
    pub fn restore(
        &mut self,
        store: &StateStore,
        now_ms: i64,
    ) -> Result<std::collections::BTreeMap<SourceId, SourceProgress>, StoreError> {
        for entry in store.open_window_entries() {
            let (start, arn, window) = entry?;
            self.windows.restore_window(start, arn, window);
        }
        if let Some(watermark) = store.watermark()? {
            self.windows.restore_watermark(watermark);
        }
        let sources = store.sources()?;
        for (&source, progress) in &sources {
            self.windows
                .restore_source(source, progress.max_event_time, now_ms);
        }
        Ok(sources)
    }
}

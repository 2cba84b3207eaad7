//! Operational events: each has one method here that both counts it in
//! Prometheus and logs it, so a log line and its metric cannot drift
//! apart. Replay reads the same counters for its summary.
//!
//! Names follow Prometheus conventions: one `trailspike_` prefix, base
//! units, `_total` on counters, and no ARN label (ARNs are unbounded).
//! Every labelled counter is created at zero for each of its labels at
//! start, so dashboards and rate() see the series before the first event.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::alert::{Alert, Status, SuppressedBy};
use crate::parse::{RejectReason, SkipReason};
use crate::window::SpillCounts;

/// Where a message came from, for logs: `file.json:12` or
/// `cloudtrail/3@1207`.
pub type Origin<'a> = &'a dyn std::fmt::Display;

pub struct Metrics {
    pub registry: Registry,
    pub messages_consumed: IntCounter,
    pub records_counted: IntCounter,
    pub records_skipped: IntCounterVec,
    pub records_rejected: IntCounterVec,
    pub records_late: IntCounter,
    pub windows_closed: IntCounter,
    pub alerts_produced: IntCounter,
    pub alerts_suppressed: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub window_close_seconds: Histogram,
    pub watermark_seconds: IntGauge,
    pub partition_watermark_seconds: IntGaugeVec,
    pub open_window_arns: IntGauge,
    pub open_window_arns_resident: IntGauge,
    pub open_window_arns_spilled: IntGauge,
    pub open_window_arn_spills: IntCounter,
    pub open_window_arn_reloads: IntCounter,
    pub baseline_arns: IntGauge,
    pub watermark_lag_seconds: IntGauge,
    pub partition_lag_seconds: IntGaugeVec,
    pub consumer_lag_messages: IntGaugeVec,
    pub state_size_bytes: IntGauge,
    pub checkpoints: IntCounter,
    pub checkpoints_deferred: IntCounter,
    pub producer_errors: IntCounter,
    pub producer_retries: IntCounter,
    pub ready: IntGauge,
    pub baseline_updates_skipped: IntCounter,
    pub baselines_expired: IntCounter,
    pub tuning_reloads: IntCounterVec,
    pub tuning_reload_failing: IntGauge,
    pub partition_tasks: IntGauge,
    pub state_restores: IntCounter,
    pub state_restore_writes: IntCounter,
    pub transactions: IntCounterVec,
}

/// What restoring one partition's state from its changelog did.
#[derive(Debug, Clone, Copy)]
pub struct StateRestore {
    pub partition: i32,
    /// Where reading the changelog started.
    pub from_offset: i64,
    pub writes: u64,
    /// The local copy was dropped first (the changelog was recreated or
    /// compacted past it).
    pub cleared: bool,
    pub baselines: u64,
    pub open_window_arns: usize,
    pub watermark: i64,
    pub seconds: f64,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let metrics = Metrics {
            messages_consumed: counter(
                "trailspike_messages_consumed_total",
                "Messages read from the input",
            ),
            records_counted: counter(
                "trailspike_records_counted_total",
                "API calls counted into a window",
            ),
            records_skipped: counter_vec(
                "trailspike_records_skipped_total",
                "Well-formed records not counted, by reason",
                "reason",
                &SkipReason::ALL.map(SkipReason::as_str),
            ),
            records_rejected: counter_vec(
                "trailspike_records_rejected_total",
                "Bad input (messages or records), by reason",
                "reason",
                &RejectReason::bad_input()
                    .map(RejectReason::as_str)
                    .collect::<Vec<_>>(),
            ),
            records_late: counter(
                "trailspike_records_late_total",
                "API calls whose window had already closed",
            ),
            windows_closed: counter("trailspike_windows_closed_total", "Windows closed"),
            alerts_produced: counter(
                "trailspike_alerts_produced_total",
                "Spike alerts produced",
            ),
            alerts_suppressed: counter_vec(
                "trailspike_alerts_suppressed_total",
                "Spikes not alerted, by what suppressed them",
                "by",
                &["rule", "throttle", "stale"],
            ),
            dead_letters: counter_vec(
                "trailspike_dead_letter_messages_total",
                "Messages sent to the dead-letter topic, by reason",
                "reason",
                &RejectReason::ALL.map(RejectReason::as_str),
            ),
            window_close_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "trailspike_window_close_duration_seconds",
                    "Time to close one window: baselines, spike rule, alerts, state",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )
            .unwrap_or_else(|e| unreachable!("static histogram options: {e}")),
            watermark_seconds: gauge(
                "trailspike_watermark_seconds",
                "Event-time watermark, Unix seconds",
            ),
            partition_watermark_seconds: gauge_vec(
                "trailspike_partition_high_water_seconds",
                "Highest event time seen per input partition, Unix seconds",
                "partition",
            ),
            open_window_arns: gauge(
                "trailspike_open_window_arns",
                "(window, ARN) pairs held in open windows, in memory or spilled",
            ),
            open_window_arns_resident: gauge(
                "trailspike_open_window_arns_resident",
                "(window, ARN) pairs of open windows held in memory",
            ),
            open_window_arns_spilled: gauge(
                "trailspike_open_window_arns_spilled",
                "(window, ARN) pairs of open windows moved to the spill area on disk",
            ),
            open_window_arn_spills: counter(
                "trailspike_open_window_arn_spills_total",
                "(window, ARN) pairs moved from memory to the spill area (state.max_open_arn_windows)",
            ),
            open_window_arn_reloads: counter(
                "trailspike_open_window_arn_reloads_total",
                "Spilled (window, ARN) pairs read back into memory by a new record",
            ),
            baseline_arns: gauge("trailspike_baseline_arns", "ARNs with a baseline"),
            watermark_lag_seconds: gauge(
                "trailspike_watermark_lag_seconds",
                "Wall clock minus the event-time watermark",
            ),
            partition_lag_seconds: gauge_vec(
                "trailspike_partition_high_water_lag_seconds",
                "Wall clock minus the highest event time seen, per input partition",
                "partition",
            ),
            consumer_lag_messages: gauge_vec(
                "trailspike_consumer_lag_messages",
                "Messages behind the end of each input partition (librdkafka statistics)",
                "partition",
            ),
            state_size_bytes: gauge(
                "trailspike_state_size_bytes",
                "Size of the state store on disk",
            ),
            checkpoints: counter(
                "trailspike_checkpoints_total",
                "State checkpoints written",
            ),
            checkpoints_deferred: counter(
                "trailspike_checkpoints_deferred_total",
                "Checkpoints put off because the broker had not acknowledged in time",
            ),
            producer_errors: counter(
                "trailspike_producer_errors_total",
                "Produce requests that failed at the broker (librdkafka statistics)",
            ),
            producer_retries: counter(
                "trailspike_producer_retries_total",
                "Produce requests retried (librdkafka statistics)",
            ),
            ready: gauge("trailspike_ready", "1 when /readyz reports ready, else 0"),
            tuning_reloads: counter_vec(
                "trailspike_tuning_reloads_total",
                "Reloads of the tuning (suppress, override, throttle, max_alert_age) from the config file, by result",
                "result",
                &["loaded", "refused"],
            ),
            tuning_reload_failing: gauge(
                "trailspike_tuning_reload_failing",
                "1 while the config file's last reload was refused and older rules are running",
            ),
            baselines_expired: counter(
                "trailspike_baselines_expired_total",
                "Baselines deleted because their ARN was idle longer than state.baseline_ttl",
            ),
            baseline_updates_skipped: counter(
                "trailspike_baseline_updates_skipped_total",
                "ARN windows not applied because the baseline already includes them",
            ),
            partition_tasks: gauge(
                "trailspike_partition_tasks",
                "Partitions of the repartition topic this instance detects on (scale_out)",
            ),
            state_restores: counter(
                "trailspike_state_restores_total",
                "Partitions whose state was restored from the changelog before processing (scale_out)",
            ),
            state_restore_writes: counter(
                "trailspike_state_restore_writes_total",
                "Changelog writes applied while restoring partitions (scale_out)",
            ),
            transactions: counter_vec(
                "trailspike_transactions_total",
                "Kafka transactions ended, by result (scale_out)",
                "result",
                &["committed", "aborted"],
            ),
            registry,
        };
        metrics.register_all();
        metrics
    }

    fn register_all(&self) {
        let collectors: [Box<dyn prometheus::core::Collector>; 36] = [
            Box::new(self.partition_tasks.clone()),
            Box::new(self.state_restores.clone()),
            Box::new(self.state_restore_writes.clone()),
            Box::new(self.transactions.clone()),
            Box::new(self.tuning_reloads.clone()),
            Box::new(self.tuning_reload_failing.clone()),
            Box::new(self.baselines_expired.clone()),
            Box::new(self.baseline_updates_skipped.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
            Box::new(self.messages_consumed.clone()),
            Box::new(self.records_counted.clone()),
            Box::new(self.records_skipped.clone()),
            Box::new(self.records_rejected.clone()),
            Box::new(self.records_late.clone()),
            Box::new(self.windows_closed.clone()),
            Box::new(self.alerts_produced.clone()),
            Box::new(self.alerts_suppressed.clone()),
            Box::new(self.dead_letters.clone()),
            Box::new(self.window_close_seconds.clone()),
            Box::new(self.watermark_seconds.clone()),
            Box::new(self.partition_watermark_seconds.clone()),
            Box::new(self.open_window_arns.clone()),
            Box::new(self.open_window_arns_resident.clone()),
            Box::new(self.open_window_arns_spilled.clone()),
            Box::new(self.open_window_arn_spills.clone()),
            Box::new(self.open_window_arn_reloads.clone()),
            Box::new(self.baseline_arns.clone()),
            Box::new(self.watermark_lag_seconds.clone()),
            Box::new(self.partition_lag_seconds.clone()),
            Box::new(self.consumer_lag_messages.clone()),
            Box::new(self.state_size_bytes.clone()),
            Box::new(self.checkpoints.clone()),
            Box::new(self.checkpoints_deferred.clone()),
            Box::new(self.producer_errors.clone()),
            Box::new(self.producer_retries.clone()),
            Box::new(self.ready.clone()),
        ];
        for collector in collectors {
            // Names are distinct constants; a clash is a bug in this file.
            if let Err(e) = self.registry.register(collector) {
                unreachable!("duplicate metric registration: {e}");
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }

    pub fn skipped(&self, reason: SkipReason) {
        self.records_skipped
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Bad input: counted, and logged with where it came from.
    pub fn rejected(&self, reason: RejectReason, detail: &str, origin: Origin<'_>) {
        self.records_rejected
            .with_label_values(&[reason.as_str()])
            .inc();
        tracing::warn!(%origin, reason = reason.as_str(), detail, "bad input");
    }

    pub fn late(&self, event_time: i64, watermark: i64, origin: Origin<'_>) {
        self.records_late.inc();
        tracing::debug!(%origin, event_time, watermark, "late record");
    }

    pub fn dead_lettered(&self, reason: RejectReason) {
        self.dead_letters
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// The config file was read again for the tuning: `loaded`, or
    /// refused (the reason is logged by the caller with the file).
    pub fn tuning_reloaded(&self, loaded: bool) {
        let result = if loaded { "loaded" } else { "refused" };
        self.tuning_reloads.with_label_values(&[result]).inc();
        self.tuning_reload_failing.set(i64::from(!loaded));
    }

    /// A partition's state was brought up to its changelog's end.
    pub fn state_restored(&self, restore: &StateRestore) {
        self.state_restores.inc();
        self.state_restore_writes.inc_by(restore.writes);
        tracing::info!(
            partition = restore.partition,
            from_offset = restore.from_offset,
            changelog_writes = restore.writes,
            cleared = restore.cleared,
            baselines = restore.baselines,
            open_window_arns = restore.open_window_arns,
            watermark = restore.watermark,
            seconds = restore.seconds,
            "state restored"
        );
    }

    /// A transaction committed, or was aborted (its work is redone by
    /// whoever owns its partitions next).
    pub fn transaction_ended(&self, committed: bool) {
        let result = if committed { "committed" } else { "aborted" };
        self.transactions.with_label_values(&[result]).inc();
    }

    /// An alert reached its destination (the alerts topic, or stdout).
    pub fn alert_produced(&self) {
        self.alerts_produced.inc();
    }

    /// A window closed as a spike (or ended an incident) and its alert is
    /// queued.
    pub fn spike_detected(&self, alert: &Alert) {
        match alert.status {
            Status::New | Status::Ongoing => tracing::info!(
                alert_id = %alert.alert_id,
                incident_id = %alert.incident_id,
                status = ?alert.status,
                user = %alert.user,
                window_start = %alert.window_start,
                calls = alert.number_of_api_calls,
                threshold = alert.threshold,
                z_score = alert.z_score,
                "spike alert"
            ),
            Status::Resolved => tracing::info!(
                alert_id = %alert.alert_id,
                incident_id = %alert.incident_id,
                user = %alert.user,
                window_start = %alert.window_start,
                calls = alert.number_of_api_calls,
                spike_windows = alert.incident_spike_windows,
                "incident resolved"
            ),
        }
    }

    pub fn alert_suppressed(&self, alert: &Alert, by: SuppressedBy) {
        self.alerts_suppressed
            .with_label_values(&[by.as_str()])
            .inc();
        let rule = match by {
            SuppressedBy::Rule(index) => Some(index + 1),
            SuppressedBy::Throttle | SuppressedBy::Stale => None,
        };
        tracing::info!(
            alert_id = %alert.alert_id,
            user = %alert.user,
            window_start = %alert.window_start,
            by = by.as_str(),
            rule,
            "spike suppressed"
        );
    }

    pub fn baselines_expired(&self, count: u64, cutoff: i64) {
        self.baselines_expired.inc_by(count);
        if count > 0 {
            tracing::info!(count, cutoff, "idle baselines expired");
        }
    }

    /// ARN windows skipped because their baselines already include them.
    pub fn windows_already_applied(&self, arns: usize) {
        if arns > 0 {
            self.baseline_updates_skipped.inc_by(arns as u64);
            tracing::info!(arns, "window already in these baselines; not applied again");
        }
    }

    /// Sets the open-window gauges and counts entries moved to and from
    /// the spill area since the last call.
    pub fn open_windows(&self, resident: usize, spilled: usize, moved: SpillCounts) {
        self.open_window_arns.set((resident + spilled) as i64);
        self.open_window_arns_resident.set(resident as i64);
        self.open_window_arns_spilled.set(spilled as i64);
        self.open_window_arn_spills.inc_by(moved.spilled);
        self.open_window_arn_reloads.inc_by(moved.reloaded);
        if moved.spilled > 0 {
            tracing::debug!(
                resident,
                spilled,
                moved_out = moved.spilled,
                moved_in = moved.reloaded,
                "open windows over state.max_open_arn_windows; spilling"
            );
        }
    }

    pub fn window_closed(&self, start: i64, arns: usize, seconds: f64) {
        self.windows_closed.inc();
        self.window_close_seconds.observe(seconds);
        tracing::debug!(window_start = start, arns, seconds, "window closed");
    }

    /// Sets the event-time gauges: the watermark, and each partition's
    /// high-water mark, with their lag behind `now_unix`.
    pub fn event_time_progress(
        &self,
        watermark: i64,
        partitions: impl Iterator<Item = (i32, Option<i64>)>,
        now_unix: i64,
    ) {
        if watermark > i64::MIN {
            self.watermark_seconds.set(watermark);
            self.watermark_lag_seconds
                .set(now_unix.saturating_sub(watermark));
        }
        for (partition, high_water) in partitions {
            let Some(high_water) = high_water else {
                continue;
            };
            let label = partition.to_string();
            self.partition_watermark_seconds
                .with_label_values(&[&label])
                .set(high_water);
            self.partition_lag_seconds
                .with_label_values(&[&label])
                .set(now_unix.saturating_sub(high_water));
        }
    }

    /// Drops the per-partition series of a partition this process no
    /// longer reads, so dashboards do not show a stale value for it.
    pub fn forget_partition(&self, partition: i32) {
        let label = partition.to_string();
        for vec in [
            &self.partition_watermark_seconds,
            &self.partition_lag_seconds,
            &self.consumer_lag_messages,
        ] {
            let _ = vec.remove_label_values(&[&label]);
        }
    }

    /// Counter value for a label, for summaries and tests.
    pub fn count(vec: &IntCounterVec, label: &str) -> u64 {
        vec.with_label_values(&[label]).get()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help)
        .unwrap_or_else(|e| unreachable!("static counter {name}: {e}"))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("static gauge {name}: {e}"))
}

fn gauge_vec(name: &str, help: &str, label: &str) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), &[label])
        .unwrap_or_else(|e| unreachable!("static gauge {name}: {e}"))
}

fn counter_vec(name: &str, help: &str, label: &str, values: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), &[label])
        .unwrap_or_else(|e| unreachable!("static counter {name}: {e}"));
    for value in values {
        vec.with_label_values(&[value]);
    }
    vec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_counters_start_at_zero_and_render() {
        let metrics = Metrics::new();
        let text = metrics.render();
        assert!(text.contains("trailspike_records_skipped_total{reason=\"no_arn\"} 0"));
        assert!(text.contains("trailspike_alerts_suppressed_total{by=\"throttle\"} 0"));
        assert!(text.contains("trailspike_window_close_duration_seconds_bucket"));
    }
}

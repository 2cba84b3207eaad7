//! Stage 4: the spike rule (SPEC.md section 4), and closing a window:
//! update the baseline of every ARN active in it, then judge each against
//! its updated baseline (with the thresholds of its override, if any), then
//! apply suppression, throttling and the catch-up age, and follow each
//! spike's incident.
//!
//! Incidents: a spike in the window right after an ARN's last spike window
//! continues its incident (`ongoing`); any other spike opens one (`new`).
//! The first closed window without the ARN's spike resolves it: it is
//! removed, and with `alerts.resolve_incidents` a `resolved` alert says so.
//! Throttled and stale spikes still continue the incident, unproduced;
//! spikes a rule suppresses are in no incident.

use crate::alert::{Alert, Incident, SpikeFacts, Status, SuppressedBy};
use crate::baseline::{self, Baseline, Smoothing};
use crate::store::{Changes, StoreError};
use crate::summary::KnownApis;
use crate::tuning::Tuning;
use crate::window::{ArnWindow, ClosedWindow};

/// Both comparisons of the rule are strict, as in the original.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub deviation: f64,
    pub data_points: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            deviation: 3.0,
            data_points: 15,
        }
    }
}

impl Thresholds {
    /// The count a window must exceed to be a spike.
    pub fn threshold(&self, updated: &Baseline) -> f64 {
        updated.avg_api_calls + self.deviation * updated.stdev_api_calls
    }

    /// Whether `updated`, the baseline after this window, is a spike.
    pub fn is_spike(&self, updated: &Baseline) -> bool {
        updated.latest_count as f64 > self.threshold(updated)
            && updated.num_data_points > self.data_points
    }
}

/// Everything that decides what a closed window yields.
#[derive(Debug, Clone)]
pub struct Detector {
    /// The thresholds of every ARN without an override.
    pub thresholds: Thresholds,
    pub smoothing: Smoothing,
    pub event_name_cap: usize,
    pub tuning: Tuning,
    /// Produce an alert with status `resolved` when an incident ends.
    pub resolve_incidents: bool,
}

/// What one closed window produced.
#[derive(Debug, Default)]
pub struct Verdicts {
    pub alerts: Vec<Alert>,
    pub suppressed: Vec<(Alert, SuppressedBy)>,
    /// ARNs whose baseline already includes this window (history replayed
    /// twice, or older than an imported baseline): left unchanged.
    pub already_applied: usize,
}

impl Detector {
    /// Updates baselines, known APIs and incidents in `changes` for every
    /// ARN of `window`, and returns its alerts in ARN order (an incident's
    /// resolution before a new incident of the same ARN). `now_unix` is
    /// the wall clock, for `alerts.max_alert_age` only.
    pub fn close(
        &self,
        window: &ClosedWindow,
        changes: &mut Changes<'_>,
        now_unix: i64,
    ) -> Result<Verdicts, StoreError> {
        let mut arns: Vec<&str> = window.arns.keys().map(AsRef::as_ref).collect();
        arns.sort_unstable();
        let closing = Closing {
            window,
            stale: self.is_stale(window.end, now_unix),
            now_unix,
        };
        let mut verdicts = Verdicts::default();
        for arn in arns {
            let activity = &window.arns[arn];
            let (previous, mut known) = changes.baseline_with_apis(arn)?;
            if previous.is_some_and(|b| b.last_window_start >= window.start) {
                verdicts.already_applied += 1;
                continue;
            }
            let mut updated = baseline::update(
                previous.as_ref(),
                activity.count,
                window.start,
                self.smoothing,
            );
            let (thresholds, override_rule) =
                self.tuning.overrides.for_arn(arn, self.thresholds);
            if thresholds.is_spike(&updated) {
                let judged = Judged {
                    arn,
                    activity,
                    thresholds,
                    override_rule,
                    known: &known,
                };
                self.spike(&judged, &closing, &mut updated, changes, &mut verdicts)?;
            }
            known.record_window(activity.event_names.keys().map(AsRef::as_ref));
            changes.set_known_apis(arn, known);
            changes.set_baseline(arn, updated, previous.is_none());
        }
        for (arn, incident) in changes.open_incidents()? {
            if incident.last_spike_window_start < window.start {
                self.resolve(&arn, &incident, &closing, changes, &mut verdicts)?;
            }
        }
        Ok(verdicts)
    }

    /// Whether a window ending at `end` is older than `alerts.max_alert_age`.
    fn is_stale(&self, end: i64, now_unix: i64) -> bool {
        self.tuning.max_alert_age_secs > 0
            && end < now_unix.saturating_sub(self.tuning.max_alert_age_secs)
    }

    /// Decides what `judged`'s spike yields: suppressed by a rule (and in
    /// no incident), or part of an incident, produced unless throttled or
    /// stale. `updated` records the alert for throttling.
    fn spike(
        &self,
        judged: &Judged<'_>,
        closing: &Closing<'_>,
        updated: &mut Baseline,
        changes: &mut Changes<'_>,
        verdicts: &mut Verdicts,
    ) -> Result<(), StoreError> {
        let window = closing.window;
        let arn = judged.arn;
        let suppressing_rule =
            self.tuning
                .suppression
                .matching_rule(arn, window.start, judged.activity);
        if let Some(rule) = suppressing_rule {
            // An open incident resolves at the end of the close, as if this
            // window had no spike.
            let alert = judged.alert(
                window,
                updated,
                Status::New,
                &Incident::open(window.start),
                self.event_name_cap,
            );
            verdicts.suppressed.push((alert, SuppressedBy::Rule(rule)));
            return Ok(());
        }
        let previous_start = window.start - (window.end - window.start);
        let mut incident = match changes.incident(arn)? {
            Some(open) if open.last_spike_window_start == previous_start => open,
            ended => {
                if let Some(ended) = ended {
                    // No window closed since its last spike, or that close
                    // would have resolved it: the window right after that
                    // spike had no records at all, and resolves it.
                    let width = window.end - window.start;
                    let quiet_start = ended.last_spike_window_start + width;
                    let quiet = ClosedWindow {
                        start: quiet_start,
                        end: quiet_start + width,
                        arns: Default::default(),
                    };
                    let resolving = Closing {
                        window: &quiet,
                        stale: self.is_stale(quiet.end, closing.now_unix),
                        now_unix: closing.now_unix,
                    };
                    self.resolve(arn, &ended, &resolving, changes, verdicts)?;
                }
                Incident::open(window.start)
            }
        };
        incident.add_spike(window.start, judged.activity.count);
        let status = if incident.announced {
            Status::Ongoing
        } else {
            Status::New
        };
        let alert = judged.alert(window, updated, status, &incident, self.event_name_cap);
        let throttled = self.tuning.throttle_secs > 0
            && updated
                .last_alert_window_start
                .is_some_and(|last| window.start - last < self.tuning.throttle_secs);
        if throttled {
            verdicts.suppressed.push((alert, SuppressedBy::Throttle));
        } else if closing.stale {
            verdicts.suppressed.push((alert, SuppressedBy::Stale));
        } else {
            incident.announced = true;
            updated.last_alert_window_start = Some(window.start);
            verdicts.alerts.push(alert);
        }
        changes.set_incident(arn, Some(incident));
        Ok(())
    }

    /// Closes `arn`'s `incident` in the closing window, the first without
    /// its spike, producing the resolution if the incident was announced
    /// and resolutions are on. Its explanation is of that window (empty if
    /// the ARN made no call in it).
    fn resolve(
        &self,
        arn: &str,
        incident: &Incident,
        closing: &Closing<'_>,
        changes: &mut Changes<'_>,
        verdicts: &mut Verdicts,
    ) -> Result<(), StoreError> {
        let window = closing.window;
        changes.set_incident(arn, None);
        if !(self.resolve_incidents && incident.announced) {
            return Ok(());
        }
        let (Some(baseline), known) = changes.baseline_with_apis(arn)? else {
            return Ok(());
        };
        let quiet = ArnWindow::default();
        let (thresholds, override_rule) =
            self.tuning.overrides.for_arn(arn, self.thresholds);
        let judged = Judged {
            arn,
            activity: window.arns.get(arn).unwrap_or(&quiet),
            thresholds,
            override_rule,
            known: &known,
        };
        let alert = judged.alert(
            window,
            &baseline,
            Status::Resolved,
            incident,
            self.event_name_cap,
        );
        if closing.stale {
            verdicts.suppressed.push((alert, SuppressedBy::Stale));
        } else {
            verdicts.alerts.push(alert);
        }
        Ok(())
    }
}

/// The window being closed, and whether it is too old to alert for.
struct Closing<'w> {
    window: &'w ClosedWindow,
    stale: bool,
    /// The wall clock, for `alerts.max_alert_age`.
    now_unix: i64,
}

/// An ARN whose window is a spike, and what it was judged by.
struct Judged<'a> {
    arn: &'a str,
    activity: &'a ArnWindow,
    thresholds: Thresholds,
    override_rule: Option<usize>,
    known: &'a KnownApis,
}

impl Judged<'_> {
    fn alert(
        &self,
        window: &ClosedWindow,
        baseline: &Baseline,
        status: Status,
        incident: &Incident,
        event_name_cap: usize,
    ) -> Alert {
        Alert::new(&SpikeFacts {
            arn: self.arn,
            window_start: window.start,
            window_end: window.end,
            window: self.activity,
            baseline,
            thresholds: self.thresholds,
            override_rule: self.override_rule,
            event_name_cap,
            status,
            incident,
            known: self.known,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::{update, Smoothing};

    const WORKED_EXAMPLE: [u64; 17] = [
        10, 12, 9, 11, 10, 13, 8, 10, 11, 12, 9, 10, 11, 10, 12, 10, 40,
    ];

    fn decisions(smoothing: Smoothing) -> Vec<(bool, f64)> {
        let thresholds = Thresholds::default();
        let mut baseline = None;
        let mut seen = Vec::new();
        for (i, &x) in WORKED_EXAMPLE.iter().enumerate() {
            let b = update(baseline.as_ref(), x, i as i64 * 3600, smoothing);
            seen.push((thresholds.is_spike(&b), thresholds.threshold(&b)));
            baseline = Some(b);
        }
        seen
    }

    #[test]
    fn worked_example_spikes_only_in_the_seventeenth_window() {
        for smoothing in [
            Smoothing::Adaptive { cap: 720 },
            Smoothing::Splunk { cap: 720 },
        ] {
            let seen = decisions(smoothing);
            let spikes: Vec<usize> = (0..seen.len()).filter(|&i| seen[i].0).collect();
            assert_eq!(spikes, [16], "{smoothing:?}");
        }
        let adaptive = decisions(Smoothing::Adaptive { cap: 720 });
        assert!(
            (adaptive[15].1 - 14.324265).abs() < 1e-5,
            "{}",
            adaptive[15].1
        );
        assert!(
            (adaptive[16].1 - 33.38675).abs() < 1e-5,
            "{}",
            adaptive[16].1
        );
    }

    #[test]
    fn both_comparisons_are_strict() {
        let t = Thresholds::default();
        let at = |latest_count, num_data_points| Baseline {
            latest_count,
            num_data_points,
            avg_api_calls: 10.0,
            stdev_api_calls: 1.0,
            last_window_start: 0,
            last_alert_window_start: None,
        };
        assert!(!t.is_spike(&at(13, 16)), "count equal to the threshold");
        assert!(t.is_spike(&at(14, 16)));
        assert!(
            !t.is_spike(&at(14, 15)),
            "data points equal to the threshold"
        );
    }
}

//! Stage 4: the spike rule (SPEC.md section 4), and closing a window:
//! update the baseline of every ARN active in it, then judge each against
//! its updated baseline, then apply suppression and throttling.

use crate::alert::{Alert, SpikeFacts, SuppressedBy, Suppression};
use crate::baseline::{self, Baseline, Smoothing};
use crate::store::{Changes, StoreError};
use crate::window::ClosedWindow;

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
    pub thresholds: Thresholds,
    pub smoothing: Smoothing,
    pub event_name_cap: usize,
    /// Event-time seconds after an alert during which an ARN's further
    /// alerts are suppressed; 0 turns throttling off.
    pub throttle_secs: i64,
    pub suppression: Suppression,
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
    /// Updates baselines in `changes` for every ARN of `window` and returns
    /// its alerts in ARN order.
    pub fn close(
        &self,
        window: &ClosedWindow,
        changes: &mut Changes<'_>,
    ) -> Result<Verdicts, StoreError> {
        let mut arns: Vec<&str> = window.arns.keys().map(AsRef::as_ref).collect();
        arns.sort_unstable();
        let mut verdicts = Verdicts::default();
        for arn in arns {
            let activity = &window.arns[arn];
            let previous = changes.baseline(arn)?;
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
            if self.thresholds.is_spike(&updated) {
                let alert = Alert::new(&SpikeFacts {
                    arn,
                    window_start: window.start,
                    window_end: window.end,
                    window: activity,
                    baseline: &updated,
                    thresholds: self.thresholds,
                    event_name_cap: self.event_name_cap,
                });
                match self.suppressed_by(arn, window.start, activity, &updated) {
                    Some(by) => verdicts.suppressed.push((alert, by)),
                    None => {
                        updated.last_alert_window_start = Some(window.start);
                        verdicts.alerts.push(alert);
                    }
                }
            }
            changes.set_baseline(arn, updated, previous.is_none());
        }
        Ok(verdicts)
    }

    fn suppressed_by(
        &self,
        arn: &str,
        window_start: i64,
        activity: &crate::window::ArnWindow,
        updated: &Baseline,
    ) -> Option<SuppressedBy> {
        if let Some(rule) = self.suppression.matching_rule(arn, window_start, activity) {
            return Some(SuppressedBy::Rule(rule));
        }
        let throttled = self.throttle_secs > 0
            && updated
                .last_alert_window_start
                .is_some_and(|last| window_start - last < self.throttle_secs);
        throttled.then_some(SuppressedBy::Throttle)
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

//! Stage 3: the running baseline of each ARN (SPEC.md section 3).
//!
//! Pure arithmetic: the store keeps baselines, this module only says how
//! one window's count changes one. An ARN with no call in a window is
//! never passed here, so it is left exactly as it was.

use serde::{Deserialize, Serialize};

/// The original lookup's columns, plus what alerting needs to remember.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Calls in the most recent window this ARN was active in.
    pub latest_count: u64,
    /// Windows that have updated this baseline (n).
    pub num_data_points: u64,
    pub avg_api_calls: f64,
    pub stdev_api_calls: f64,
    /// Start of the most recent window that updated it, Unix seconds.
    pub last_window_start: i64,
    /// Start of the window of the last alert produced, for throttling and
    /// for telling a continuing spike from a new one.
    pub last_alert_window_start: Option<i64>,
}

/// How the divisor `d` of the update is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Smoothing {
    /// `d = min(n', cap)`: the exact running mean and population standard
    /// deviation for the first `cap` windows, then exponential smoothing.
    Adaptive { cap: u64 },
    /// `d = cap` from the second window on, as the Splunk analytic did.
    Splunk { cap: u64 },
}

impl Smoothing {
    fn divisor(self, new_points: u64) -> f64 {
        let d = match self {
            _ if new_points <= 1 => 1,
            Smoothing::Adaptive { cap } => new_points.min(cap),
            Smoothing::Splunk { cap } => cap,
        };
        d as f64
    }
}

/// Applies one window's count `x` to `previous` (`None` for a new ARN).
pub fn update(
    previous: Option<&Baseline>,
    x: u64,
    window_start: i64,
    smoothing: Smoothing,
) -> Baseline {
    let (n, avg, stdev, last_alert) = match previous {
        Some(b) => (
            b.num_data_points,
            b.avg_api_calls,
            b.stdev_api_calls,
            b.last_alert_window_start,
        ),
        None => (0, 0.0, 0.0, None),
    };
    let new_points = n + 1;
    let d = smoothing.divisor(new_points);
    let count = x as f64;
    let new_avg = avg + (count - avg) / d;
    // Rounding can leave a tiny negative variance when every count so far
    // was equal; the true value there is zero.
    let variance = (stdev * stdev * (d - 1.0) + (count - new_avg) * (count - avg)) / d;
    Baseline {
        latest_count: x,
        num_data_points: new_points,
        avg_api_calls: new_avg,
        stdev_api_calls: variance.max(0.0).sqrt(),
        last_window_start: window_start,
        last_alert_window_start: last_alert,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKED_EXAMPLE: [u64; 17] = [
        10, 12, 9, 11, 10, 13, 8, 10, 11, 12, 9, 10, 11, 10, 12, 10, 40,
    ];

    fn run(counts: &[u64], smoothing: Smoothing) -> Baseline {
        let mut baseline = None;
        for (i, &x) in counts.iter().enumerate() {
            baseline = Some(update(baseline.as_ref(), x, i as i64 * 3600, smoothing));
        }
        baseline.unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 5e-7
    }

    #[test]
    fn worked_example_adaptive_matches_spec() {
        let smoothing = Smoothing::Adaptive { cap: 720 };
        let sixteen = run(&WORKED_EXAMPLE[..16], smoothing);
        assert_eq!(sixteen.num_data_points, 16);
        assert!(close(sixteen.avg_api_calls, 10.5));
        assert!(close(sixteen.stdev_api_calls, 1.274755));
        let all = run(&WORKED_EXAMPLE, smoothing);
        assert!(close(all.avg_api_calls, 12.235294), "{all:?}");
        assert!(close(all.stdev_api_calls, 7.050485), "{all:?}");
    }

    #[test]
    fn worked_example_splunk_matches_spec() {
        let all = run(&WORKED_EXAMPLE, Smoothing::Splunk { cap: 720 });
        assert!(close(all.avg_api_calls, 10.052651), "{all:?}");
        assert!(close(all.stdev_api_calls, 1.135059), "{all:?}");
    }

    #[test]
    fn a_new_arn_starts_at_its_count_with_no_spread() {
        for smoothing in [
            Smoothing::Adaptive { cap: 720 },
            Smoothing::Splunk { cap: 720 },
        ] {
            let b = update(None, 7, 0, smoothing);
            assert_eq!((b.latest_count, b.num_data_points), (7, 1));
            assert_eq!((b.avg_api_calls, b.stdev_api_calls), (7.0, 0.0));
        }
    }

    #[test]
    fn equal_counts_keep_a_zero_deviation() {
        let b = run(&[3; 50], Smoothing::Adaptive { cap: 720 });
        assert_eq!(b.stdev_api_calls, 0.0);
        assert_eq!(b.avg_api_calls, 3.0);
    }
}

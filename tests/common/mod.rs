//! Helpers shared by the integration tests: CloudTrail records built by
//! hand, a replay of them through the library, and a naive model of the
//! SPEC.md baseline that does not reuse the crate's own arithmetic.
//!
//! Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use trailspike::alert::Alert;
use trailspike::config::Config;
use trailspike::metrics::Metrics;
use trailspike::replay;
use trailspike::store::StateStore;

pub const HOUR: i64 = 3600;

/// 2024-05-01T00:00:00Z: long past, so no record trips the future-skew
/// guard, and aligned to every window width the config accepts.
pub const T0: i64 = 1_714_521_600;

/// The SPEC.md section 4 worked example: hourly counts of one ARN.
pub const WORKED_EXAMPLE: [u64; 17] = [
    10, 12, 9, 11, 10, 13, 8, 10, 11, 12, 9, 10, 11, 10, 12, 10, 40,
];

pub const ALICE: &str = "arn:aws:iam::123456789012:user/alice";

/// RFC 3339 text of a Unix time, written independently of the crate.
pub fn iso(unix: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp(unix)
        .expect("a time the tests use")
        .format(&Rfc3339)
        .expect("RFC 3339 formatting")
}

/// Unix seconds of an RFC 3339 time.
pub fn unix_of(text: &str) -> i64 {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::parse(text, &Rfc3339)
        .expect("RFC 3339")
        .unix_timestamp()
}

/// A CloudTrail `AwsApiCall` record with the usual surrounding fields,
/// which the parser must skip.
pub fn api_call(arn: &str, unix: i64, event_name: &str) -> serde_json::Value {
    serde_json::json!({
        "eventVersion": "1.09",
        "userIdentity": {
            "type": "IAMUser",
            "principalId": "AIDAEXAMPLE",
            "arn": arn,
            "accountId": "123456789012",
            "accessKeyId": "AKIAEXAMPLE",
            "userName": arn.rsplit('/').next().unwrap_or(arn),
        },
        "eventTime": iso(unix),
        "eventSource": "s3.amazonaws.com",
        "eventName": event_name,
        "awsRegion": "eu-west-1",
        "sourceIPAddress": "203.0.113.7",
        "userAgent": "aws-cli/2.15.0",
        "requestParameters": {"bucketName": "b", "nested": [1, {"x": null}]},
        "responseElements": null,
        "requestID": "0f0e0d0c",
        "eventID": format!("{arn}-{unix}-{event_name}"),
        "readOnly": true,
        "eventType": "AwsApiCall",
        "managementEvent": true,
        "recipientAccountId": "123456789012",
        "eventCategory": "Management",
    })
}

/// Names used for the calls of a window, so that `uniqueApisCalled` is
/// more than one.
pub const EVENT_NAMES: [&str; 4] =
    ["GetObject", "ListBuckets", "PutObject", "DescribeInstances"];

/// `counts[k]` calls of `arn` in the `k`-th window of `width` seconds
/// from `start`, spread over each window, cycling through `EVENT_NAMES`.
pub fn calls_per_window(
    arn: &str,
    start: i64,
    width: i64,
    counts: &[u64],
) -> Vec<serde_json::Value> {
    let mut records = Vec::new();
    for (k, &count) in counts.iter().enumerate() {
        let window_start = start + k as i64 * width;
        for i in 0..count {
            let offset = (i as i64 * width) / count as i64;
            let name = EVENT_NAMES[i as usize % EVENT_NAMES.len()];
            records.push(api_call(arn, window_start + offset, name));
        }
    }
    records
}

/// Distinct event names `calls_per_window` uses for `count` calls.
pub fn unique_names_for(count: u64) -> u64 {
    count.min(EVENT_NAMES.len() as u64)
}

/// Writes one JSON text per line.
pub fn json_lines(records: &[serde_json::Value]) -> String {
    let mut text = String::new();
    for record in records {
        text.push_str(&record.to_string());
        text.push('\n');
    }
    text
}

/// What one replay produced.
pub struct Replayed {
    pub alerts: Vec<Alert>,
    pub metrics: Arc<Metrics>,
    pub store: StateStore,
}

/// Replays `text` as one input file through `replay::run` with a fresh
/// temporary store.
pub fn replay_text(text: &str, config: &Config) -> Replayed {
    let store = StateStore::temporary().expect("temporary store");
    replay_text_into(text, config, store)
}

/// Replays `text` with `store` as the baseline.
pub fn replay_text_into(text: &str, config: &Config, store: StateStore) -> Replayed {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write input");
    file.flush().expect("flush input");
    let (alerts, metrics) = replay_paths(&[file.path().to_path_buf()], config, &store);
    Replayed {
        alerts,
        metrics,
        store,
    }
}

/// Replays files through `replay::run`, collecting the alerts.
pub fn replay_paths(
    paths: &[PathBuf],
    config: &Config,
    store: &StateStore,
) -> (Vec<Alert>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let mut alerts = Vec::new();
    let mut on_alert = |alert: &Alert| {
        alerts.push(alert.clone());
        Ok(())
    };
    let report = replay::run(paths, config, store, metrics.clone(), &mut on_alert)
        .expect("replay runs");
    assert!(
        report.failures.is_empty(),
        "input failures: {:?}",
        report.failures
    );
    (alerts, metrics)
}

/// The baseline of SPEC.md section 3, computed from its formulas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelBaseline {
    pub latest_count: u64,
    pub n: u64,
    pub avg: f64,
    pub stdev: f64,
}

/// How the model picks the divisor `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelMode {
    /// `d = min(n', S)`.
    Exact,
    /// `d = S` except for a new ARN.
    Splunk,
}

impl ModelBaseline {
    /// Applies one window's count `x`, as the SPEC writes it.
    pub fn update(
        previous: Option<ModelBaseline>,
        x: u64,
        s: u64,
        mode: ModelMode,
    ) -> Self {
        let x = x as f64;
        let Some(p) = previous else {
            return ModelBaseline {
                latest_count: x as u64,
                n: 1,
                avg: x,
                stdev: 0.0,
            };
        };
        let n = p.n + 1;
        let d = match mode {
            ModelMode::Exact => n.min(s),
            ModelMode::Splunk => s,
        } as f64;
        let avg = p.avg + (x - p.avg) / d;
        let variance = (p.stdev * p.stdev * (d - 1.0) + (x - avg) * (x - p.avg)) / d;
        ModelBaseline {
            latest_count: x as u64,
            n,
            avg,
            // Equal counts can leave a rounding residue just below zero.
            stdev: variance.max(0.0).sqrt(),
        }
    }

    /// The SPEC.md section 4 rule against this (updated) baseline.
    pub fn is_spike(&self, deviation: f64, data_points: u64) -> bool {
        self.latest_count as f64 > self.threshold(deviation) && self.n > data_points
    }

    pub fn threshold(&self, deviation: f64) -> f64 {
        self.avg + deviation * self.stdev
    }
}

/// Plain mean and population standard deviation, two-pass.
pub fn mean_and_population_stdev(counts: &[u64]) -> (f64, f64) {
    let n = counts.len() as f64;
    let mean = counts.iter().map(|&c| c as f64).sum::<f64>() / n;
    let squares = counts
        .iter()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>();
    (mean, (squares / n).sqrt())
}

/// `a` and `b` agree to `relative`, measured against the larger of their
/// magnitudes and 1 (so values near zero are compared absolutely).
pub fn close(a: f64, b: f64, relative: f64) -> bool {
    (a - b).abs() <= relative * a.abs().max(b.abs()).max(1.0)
}

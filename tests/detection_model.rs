//! The detection against SPEC.md sections 3 and 4, end to end through
//! `replay::run`: the worked example, model-based properties, and a naive
//! second implementation run over three weeks of generated CloudTrail.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use trailspike::alert::Alert;
use trailspike::baseline::{self, Baseline, Smoothing};
use trailspike::config::Config;
use trailspike::generate::{generate, GenerateArgs};
use trailspike::store::StateStore;

use common::*;

fn worked_example_alerts(config_toml: &str) -> Vec<Alert> {
    let records = calls_per_window(ALICE, T0, HOUR, &WORKED_EXAMPLE);
    let config = Config::from_toml(config_toml).expect("valid config");
    replay_text(&json_lines(&records), &config).alerts
}

/// The alert as a SIEM sees it: its JSON, by the documented field names.
fn alert_json(alert: &Alert) -> Value {
    serde_json::from_str(&alert.to_json()).expect("alert JSON")
}

fn assert_near(json: &Value, field: &str, expected: f64) {
    let actual = json[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} in {json}"));
    assert!(
        (actual - expected).abs() < 1e-5,
        "{field} = {actual}, SPEC says {expected}"
    );
}

#[test]
fn worked_example_alerts_once_in_the_seventeenth_window() {
    let alerts = worked_example_alerts("");
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let json = alert_json(&alerts[0]);
    assert_eq!(json["user"], ALICE);
    assert_eq!(json["windowStart"], iso(T0 + 16 * HOUR));
    assert_eq!(json["windowEnd"], iso(T0 + 17 * HOUR));
    assert_eq!(json["numberOfApiCalls"], 40);
    assert_eq!(json["uniqueApisCalled"], unique_names_for(40));
    assert_eq!(json["numDataPoints"], 17);
    assert_near(&json, "avgApiCalls", 12.235294);
    assert_near(&json, "stdevApiCalls", 7.050485);
    assert_near(&json, "threshold", 33.38675);
}

#[test]
fn worked_example_in_splunk_compat_alerts_with_the_smoothed_baseline() {
    let alerts = worked_example_alerts("[detection]\ncompat = \"splunk\"\n");
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let json = alert_json(&alerts[0]);
    assert_eq!(json["windowStart"], iso(T0 + 16 * HOUR));
    assert_eq!(json["numberOfApiCalls"], 40);
    assert_eq!(json["numDataPoints"], 17);
    assert_near(&json, "avgApiCalls", 10.052651);
    assert_near(&json, "stdevApiCalls", 1.135059);
    assert_near(&json, "threshold", 10.052651 + 3.0 * 1.135059);
}

#[test]
fn worked_example_baseline_after_sixteen_windows_matches_spec_without_alert() {
    let records = calls_per_window(ALICE, T0, HOUR, &WORKED_EXAMPLE[..16]);
    let replayed = replay_text(&json_lines(&records), &Config::default());
    assert!(replayed.alerts.is_empty(), "{:#?}", replayed.alerts);
    let b = replayed.store.baseline(ALICE).unwrap().expect("baseline");
    assert_eq!((b.latest_count, b.num_data_points), (10, 16));
    assert!((b.avg_api_calls - 10.5).abs() < 1e-9, "{b:?}");
    assert!((b.stdev_api_calls - 1.274755).abs() < 1e-6, "{b:?}");
    assert_eq!(replayed.metrics.windows_closed.get(), 16);
}

// ---------------------------------------------------------------------
// Properties against a naive model.

fn apply_all(counts: &[u64], smoothing: Smoothing) -> Vec<Baseline> {
    let mut seen: Vec<Baseline> = Vec::new();
    for (k, &x) in counts.iter().enumerate() {
        let next = baseline::update(seen.last(), x, k as i64 * HOUR, smoothing);
        seen.push(next);
    }
    seen
}

proptest! {
    #[test]
    fn baseline_is_plain_mean_and_population_stdev_while_n_is_at_most_s(
        counts in prop::collection::vec(0u64..1_000_000, 1..80),
        extra_cap in 0u64..700,
    ) {
        let cap = counts.len() as u64 + extra_cap;
        let updated = apply_all(&counts, Smoothing::Adaptive { cap });
        for (k, b) in updated.iter().enumerate() {
            let (mean, stdev) = mean_and_population_stdev(&counts[..=k]);
            prop_assert_eq!(b.num_data_points, k as u64 + 1);
            prop_assert_eq!(b.latest_count, counts[k]);
            prop_assert!(close(b.avg_api_calls, mean, 1e-9), "{} vs {}", b.avg_api_calls, mean);
            prop_assert!(
                close(b.stdev_api_calls, stdev, 1e-9),
                "after {} windows: {} vs {}", k + 1, b.stdev_api_calls, stdev
            );
        }
    }

    #[test]
    fn baseline_follows_the_spec_recurrence_past_s_in_both_modes(
        counts in prop::collection::vec(1u64..10_000, 1..120),
        cap in 1u64..40,
    ) {
        let modes = [
            (Smoothing::Adaptive { cap }, ModelMode::Exact),
            (Smoothing::Splunk { cap }, ModelMode::Splunk),
        ];
        for (smoothing, mode) in modes {
            let mut model = None;
            for (k, b) in apply_all(&counts, smoothing).iter().enumerate() {
                let m = ModelBaseline::update(model, counts[k], cap, mode);
                prop_assert_eq!(b.num_data_points, m.n);
                prop_assert!(close(b.avg_api_calls, m.avg, 1e-12), "{:?} {:?}", b, m);
                prop_assert!(close(b.stdev_api_calls, m.stdev, 1e-12), "{:?} {:?}", b, m);
                model = Some(m);
            }
        }
    }
}

/// Activity of a few ARNs: `counts[arn][window]`, zero meaning idle.
#[derive(Debug, Clone)]
struct Activity {
    counts: Vec<Vec<u64>>,
    seed: u64,
}

fn activity(
    max_arns: usize,
    windows: std::ops::Range<usize>,
) -> impl Strategy<Value = Activity> {
    let idle_or_busy = prop_oneof![2 => Just(0u64), 3 => 1u64..12];
    (1..=max_arns, windows).prop_flat_map(move |(arns, windows)| {
        let row = prop::collection::vec(idle_or_busy.clone(), windows);
        (prop::collection::vec(row, arns), any::<u64>())
            .prop_map(|(counts, seed)| Activity { counts, seed })
    })
}

fn arn_name(index: usize) -> String {
    format!("arn:aws:iam::123456789012:user/u{index}")
}

/// One record per call at a random second of its window, sorted by time.
fn activity_records(activity: &Activity) -> Vec<(i64, Value)> {
    let mut rng = ChaCha8Rng::seed_from_u64(activity.seed);
    let mut records = Vec::new();
    for (a, row) in activity.counts.iter().enumerate() {
        let arn = arn_name(a);
        for (k, &count) in row.iter().enumerate() {
            for i in 0..count {
                let t = T0 + k as i64 * HOUR + rng.gen_range(0..HOUR);
                let name = EVENT_NAMES[(i as usize + a) % EVENT_NAMES.len()];
                records.push((t, api_call(&arn, t, name)));
            }
        }
    }
    records.sort_by_key(|(t, _)| *t);
    records
}

fn lines_of(records: &[(i64, Value)]) -> String {
    let values: Vec<Value> = records.iter().map(|(_, v)| v.clone()).collect();
    json_lines(&values)
}

/// Low thresholds, so that short random histories produce alerts.
fn eager_config() -> Config {
    Config::from_toml(
        "[detection]\ndata_point_threshold = 2\ndeviation_threshold = 1.0\n",
    )
    .expect("valid config")
}

fn all_baselines(store: &StateStore) -> Vec<(String, Baseline)> {
    store
        .baselines()
        .collect::<Result<_, _>>()
        .expect("baselines")
}

/// Adds an ARN that is steady and then spikes in the last window, so
/// that every case has at least one alert to compare.
fn with_spiking_arn(mut activity: Activity) -> Activity {
    let windows = activity.counts[0].len();
    let mut row = vec![4; windows];
    row[windows - 1] = 60;
    activity.counts.push(row);
    activity
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn idle_arns_keep_their_baseline_untouched(activity in activity(4, 1..30)) {
        let replayed = replay_text(&lines_of(&activity_records(&activity)), &Config::default());
        for (a, row) in activity.counts.iter().enumerate() {
            let active: Vec<(usize, u64)> =
                row.iter().copied().enumerate().filter(|&(_, c)| c > 0).collect();
            let stored = replayed.store.baseline(&arn_name(a)).unwrap();
            let Some(&(last_window, last_count)) = active.last() else {
                prop_assert_eq!(stored, None);
                continue;
            };
            let b = stored.expect("an active ARN has a baseline");
            let counts: Vec<u64> = active.iter().map(|&(_, c)| c).collect();
            let (mean, stdev) = mean_and_population_stdev(&counts);
            prop_assert_eq!(b.num_data_points, counts.len() as u64);
            prop_assert_eq!(b.latest_count, last_count);
            prop_assert_eq!(b.last_window_start, T0 + last_window as i64 * HOUR);
            prop_assert!(close(b.avg_api_calls, mean, 1e-9), "{:?} vs {}", b, mean);
            prop_assert!(close(b.stdev_api_calls, stdev, 1e-9), "{:?} vs {}", b, stdev);
        }
    }

    #[test]
    fn shuffling_within_the_allowed_lateness_never_changes_the_alerts(
        activity in activity(4, 4..24).prop_map(with_spiking_arn),
    ) {
        let config = eager_config();
        let lateness = config.detection.allowed_lateness.as_secs() as i64;
        let sorted = activity_records(&activity);
        let shuffled = shuffle_within(&sorted, lateness, activity.seed);
        let expected = replay_text(&lines_of(&sorted), &config);
        let actual = replay_text(&lines_of(&shuffled), &config);
        prop_assert!(!expected.alerts.is_empty());
        prop_assert_eq!(actual.metrics.records_late.get(), 0);
        prop_assert_eq!(&actual.alerts, &expected.alerts);
        prop_assert_eq!(all_baselines(&actual.store), all_baselines(&expected.store));
    }

    #[test]
    fn a_record_past_the_lateness_is_counted_late_and_changes_nothing(
        activity in activity(4, 3..20).prop_map(with_spiking_arn),
        pick in any::<prop::sample::Index>(),
        new_arn in any::<bool>(),
    ) {
        let config = eager_config();
        let lateness = config.detection.allowed_lateness.as_secs() as i64;
        let records = activity_records(&activity);
        let expected = replay_text(&lines_of(&records), &config);

        let max_seen = records.last().map(|(t, _)| *t).expect("records");
        let closed_before = (max_seen - lateness).div_euclid(HOUR) * HOUR;
        let late_time = T0 + pick.index((closed_before - T0) as usize) as i64;
        let arn = if new_arn { "arn:aws:iam::1:user/newcomer".to_string() } else {
            records[pick.index(records.len())].1["userIdentity"]["arn"]
                .as_str().expect("arn").to_string()
        };
        let mut with_late = records.clone();
        with_late.push((late_time, api_call(&arn, late_time, "DeleteBucket")));
        let actual = replay_text(&lines_of(&with_late), &config);

        prop_assert_eq!(actual.metrics.records_late.get(), 1);
        prop_assert_eq!(
            actual.metrics.records_counted.get(),
            expected.metrics.records_counted.get()
        );
        prop_assert_eq!(&actual.alerts, &expected.alerts);
        prop_assert_eq!(all_baselines(&actual.store), all_baselines(&expected.store));
    }
}

/// Shuffles sorted records within consecutive blocks that each span less
/// than `lateness`: every record then arrives while the highest time seen
/// is under its own time plus the lateness, so none can be late.
fn shuffle_within(
    sorted: &[(i64, Value)],
    lateness: i64,
    seed: u64,
) -> Vec<(i64, Value)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let mut out = Vec::with_capacity(sorted.len());
    let mut start = 0;
    while start < sorted.len() {
        let first = sorted[start].0;
        let end = start
            + sorted[start..]
                .iter()
                .take_while(|(t, _)| t - first < lateness)
                .count();
        let mut block = sorted[start..end].to_vec();
        block.shuffle(&mut rng);
        out.extend(block);
        start = end;
    }
    out
}

// ---------------------------------------------------------------------
// A naive second implementation, compared alert for alert.

/// What the reference expects of one alert.
#[derive(Debug, Clone, PartialEq)]
struct ExpectedAlert {
    user: String,
    window_start: i64,
    calls: u64,
    unique: u64,
    baseline: ModelBaseline,
    threshold: f64,
}

/// One counted call, as the SPEC defines counting.
fn counted_call(record: &Value) -> Option<(String, i64, String)> {
    use time::format_description::well_known::Rfc3339;
    let time = record["eventTime"].as_str()?;
    let unix = time::OffsetDateTime::parse(time, &Rfc3339)
        .ok()?
        .unix_timestamp();
    if record["eventType"] != "AwsApiCall" {
        return None;
    }
    let arn = record["userIdentity"]["arn"]
        .as_str()
        .filter(|a| !a.is_empty())?;
    let name = record["eventName"].as_str().unwrap_or("");
    Some((arn.to_string(), unix, name.to_string()))
}

/// Reads every record, groups calls by (ARN, window), then walks each
/// ARN's windows in time order with the SPEC formulas and rule. Returns
/// the alerts and the number of calls counted.
fn reference_alerts(path: &Path, config: &Config) -> (Vec<ExpectedAlert>, u64) {
    let width = config.detection.window.as_secs() as i64;
    let mut windows: BTreeMap<(String, i64), (u64, BTreeSet<String>)> = BTreeMap::new();
    let mut counted = 0;
    let reader = BufReader::new(File::open(path).expect("generated file"));
    for line in reader.lines() {
        let line = line.expect("read generated file");
        if line.trim().is_empty() {
            continue;
        }
        let message: Value = serde_json::from_str(&line).expect("generated JSON");
        let records = match message.get("Records") {
            Some(Value::Array(records)) => records.clone(),
            _ => vec![message],
        };
        for (arn, unix, name) in records.iter().filter_map(counted_call) {
            let entry = windows
                .entry((arn, unix.div_euclid(width) * width))
                .or_default();
            entry.0 += 1;
            entry.1.insert(name);
            counted += 1;
        }
    }
    let detection = &config.detection;
    let mut baselines: BTreeMap<String, ModelBaseline> = BTreeMap::new();
    let mut expected = Vec::new();
    // The map is ordered by ARN, then window start: each ARN's windows in
    // time order, which is all the per-ARN recurrence needs.
    for ((arn, start), (count, names)) in windows {
        let previous = baselines.get(&arn).copied();
        let b =
            ModelBaseline::update(previous, count, detection.smoothing, ModelMode::Exact);
        if b.is_spike(
            detection.deviation_threshold,
            detection.data_point_threshold,
        ) {
            expected.push(ExpectedAlert {
                user: arn.clone(),
                window_start: start,
                calls: count,
                unique: names.len() as u64,
                baseline: b,
                threshold: b.threshold(detection.deviation_threshold),
            });
        }
        baselines.insert(arn, b);
    }
    expected.sort_by(|a, b| (a.window_start, &a.user).cmp(&(b.window_start, &b.user)));
    (expected, counted)
}

fn mismatch(expected: &ExpectedAlert, actual: &Alert) -> Option<String> {
    let same = expected.user == actual.user
        && iso(expected.window_start) == actual.window_start
        && expected.calls == actual.number_of_api_calls
        && expected.unique == actual.unique_apis_called
        && expected.baseline.n == actual.num_data_points
        && close(expected.baseline.avg, actual.avg_api_calls, 1e-9)
        && close(expected.baseline.stdev, actual.stdev_api_calls, 1e-9)
        && close(expected.threshold, actual.threshold, 1e-9);
    (!same).then(|| format!("expected {expected:?}\n  actual {actual:?}"))
}

#[test]
fn naive_reference_agrees_alert_for_alert_over_three_weeks_of_two_thousand_arns() {
    let args = GenerateArgs {
        seed: 20240501,
        start: iso(T0),
        hours: 24 * 21,
        arns: 2000,
        rate_per_hour: 300.0,
        spikes: 12,
        disorder: 0.02,
        ..GenerateArgs::default()
    };
    // About 230 MB of JSON: written to a file, never held twice in memory.
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let mut out = BufWriter::new(file.as_file());
    let generated = generate(&args, &mut out).expect("generate");
    out.flush().expect("flush");
    drop(out);
    let config = Config::default();

    let (expected, counted) = reference_alerts(file.path(), &config);
    let store = StateStore::temporary().expect("store");
    let (alerts, metrics) = replay_paths(&[file.path().to_path_buf()], &config, &store);
    assert_eq!(
        metrics.records_late.get(),
        0,
        "generator disorder stays within lateness"
    );
    assert_eq!(metrics.messages_consumed.get(), generated.records);
    assert_eq!(metrics.records_counted.get(), counted);
    assert!(
        store.baseline_count() >= 2000,
        "{} ARNs",
        store.baseline_count()
    );

    let starts: Vec<i64> = alerts.iter().map(|a| unix_of(&a.window_start)).collect();
    assert!(
        starts.windows(2).all(|w| w[0] <= w[1]),
        "alerts leave oldest window first"
    );
    let mut actual = alerts;
    actual.sort_by_key(|a| (unix_of(&a.window_start), a.user.clone()));

    let differences: Vec<String> = expected
        .iter()
        .zip(&actual)
        .filter_map(|(e, a)| mismatch(e, a))
        .take(5)
        .collect();
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    assert_eq!(
        expected.len(),
        actual.len(),
        "reference alerts {}, replay alerts {}",
        expected.len(),
        actual.len()
    );

    assert!(
        !generated.spikes.is_empty(),
        "the generator injected spikes"
    );
    for spike in &generated.spikes {
        let found = actual.iter().find(|a| {
            a.user == spike.arn && a.window_start == iso(spike.window_start_unix)
        });
        let alert =
            found.unwrap_or_else(|| panic!("injected spike not alerted: {spike:?}"));
        assert_eq!(alert.number_of_api_calls, spike.calls, "{spike:?}");
    }
}

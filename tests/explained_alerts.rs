//! Alerts a responder can act on, through `replay::run`: the explanation
//! of a spike, incidents over consecutive windows, per-ARN overrides,
//! assumed-role sessions counted as their role, the catch-up age, and
//! `baseline show`.

mod common;

use serde_json::{json, Value};

use trailspike::alert::{Alert, Status};
use trailspike::config::Config;
use trailspike::metrics::Metrics;
use trailspike::ocsf::detection_finding;

use common::*;

const BOB: &str = "arn:aws:iam::123456789012:user/bob";
/// The worked example's baseline windows, without its spike.
const USUAL: [u64; 16] = [10, 12, 9, 11, 10, 13, 8, 10, 11, 12, 9, 10, 11, 10, 12, 10];

fn config(toml: &str) -> Config {
    Config::from_toml(toml).expect("valid config")
}

fn usual_then(arn: &str, spikes: &[u64]) -> Vec<Value> {
    let counts: Vec<u64> = USUAL.iter().chain(spikes).copied().collect();
    calls_per_window(arn, T0, HOUR, &counts)
}

/// A call of `arn` at `unix` with the given source IP and error code.
fn call_from(arn: &str, unix: i64, name: &str, ip: &str, error: Option<&str>) -> Value {
    let mut record = api_call(arn, unix, name);
    record["sourceIPAddress"] = json!(ip);
    if let Some(code) = error {
        record["errorCode"] = json!(code);
        record["errorMessage"] = json!("not authorized");
    }
    record
}

/// Records of several ARNs as CloudTrail delivers them: in time order.
fn by_time(mut records: Vec<Value>) -> Vec<Value> {
    records.sort_by_key(|r| unix_of(r["eventTime"].as_str().unwrap_or_default()));
    records
}

fn statuses(alerts: &[Alert]) -> Vec<(Status, i64)> {
    alerts
        .iter()
        .map(|a| (a.status, (unix_of(&a.window_start) - T0) / HOUR))
        .collect()
}

#[test]
fn a_spike_of_never_called_apis_is_explained_and_its_new_apis_marked() {
    let mut records = usual_then(ALICE, &[]);
    let spike = T0 + 16 * HOUR;
    for i in 0..30 {
        let name = EVENT_NAMES[i % EVENT_NAMES.len()];
        records.push(call_from(
            ALICE,
            spike + 60 + i as i64,
            name,
            "203.0.113.7",
            None,
        ));
    }
    for (i, name) in ["StopLogging", "DeleteTrail"]
        .iter()
        .cycle()
        .take(10)
        .enumerate()
    {
        let at = spike + 1000 + i as i64;
        records.push(call_from(
            ALICE,
            at,
            name,
            "198.51.100.9",
            Some("AccessDenied"),
        ));
    }
    let replayed = replay_text(&json_lines(&records), &config(""));
    assert_eq!(replayed.alerts.len(), 1, "{:#?}", replayed.alerts);
    let alert = &replayed.alerts[0];
    assert_eq!((alert.status, alert.number_of_api_calls), (Status::New, 40));
    let z = alert.z_score.expect("a z-score");
    assert!(z > alert.deviation_threshold, "z {z}");
    let expected_z = (40.0 - alert.avg_api_calls) / alert.stdev_api_calls;
    assert!((z - expected_z).abs() < 1e-9);
    let ratio = alert.ratio_to_average.expect("a ratio");
    assert!((ratio - 40.0 / alert.avg_api_calls).abs() < 1e-9);

    let e = &alert.explanation;
    assert_eq!(e.new_event_names, ["DeleteTrail", "StopLogging"]);
    assert_eq!(e.known_apis, EVENT_NAMES.len() as u64);
    let new_in_top: Vec<(&str, u64)> = e
        .top_event_names
        .iter()
        .filter(|n| n.new)
        .map(|n| (n.value.as_str(), n.count))
        .collect();
    // Four usual names of 7 or 8 calls, then the first of the two new ones.
    assert_eq!(new_in_top, [("DeleteTrail", 5)]);
    assert!(e
        .top_event_names
        .iter()
        .filter(|n| !n.new)
        .all(|n| n.count >= 7));
    assert_eq!((e.failed_calls, e.failure_share), (10, 0.25));
    assert_eq!(e.top_error_codes[0].value, "AccessDenied");
    assert_eq!(e.top_error_codes[0].count, 10);
    let ips: Vec<(&str, u64)> = e
        .top_source_ips
        .iter()
        .map(|v| (v.value.as_str(), v.count))
        .collect();
    assert_eq!(ips, [("203.0.113.7", 30), ("198.51.100.9", 10)]);
    assert_eq!(e.top_regions[0].count, 40);
    assert_eq!(e.top_user_agents[0].value, "aws-cli/2.15.0");
    assert_eq!(
        e.first_event_time.as_deref(),
        Some(iso(spike + 60).as_str())
    );
    assert_eq!(
        e.last_event_time.as_deref(),
        Some(iso(spike + 1009).as_str())
    );
    let earliest: Vec<String> = (0..5)
        .map(|i| {
            let name = EVENT_NAMES[i % EVENT_NAMES.len()];
            format!("{ALICE}-{}-{name}", spike + 60 + i as i64)
        })
        .collect();
    assert_eq!(e.sample_event_ids, earliest);
    assert!(!e.approximate);
}

#[test]
fn a_three_window_spike_is_one_incident_new_ongoing_then_resolved() {
    let records = usual_then(ALICE, &[40, 80, 10]);
    let text = json_lines(&records);
    let alerts =
        replay_text(&text, &config("[alerts]\nresolve_incidents = true\n")).alerts;
    assert_eq!(
        statuses(&alerts),
        [
            (Status::New, 16),
            (Status::Ongoing, 17),
            (Status::Resolved, 18)
        ]
    );
    let incident = &alerts[0].incident_id;
    assert_eq!(incident, &alerts[0].alert_id);
    assert!(alerts.iter().all(|a| &a.incident_id == incident));
    let ids: std::collections::BTreeSet<&str> =
        alerts.iter().map(|a| a.alert_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "each message has its own alertId");
    let resolved = &alerts[2];
    assert_eq!(resolved.incident_start, iso(T0 + 16 * HOUR));
    assert_eq!(
        (
            resolved.incident_spike_windows,
            resolved.incident_peak_api_calls
        ),
        (2, 80)
    );
    assert_eq!(resolved.number_of_api_calls, 10);

    let findings: Vec<Value> = alerts.iter().map(detection_finding).collect();
    let activities: Vec<&Value> = findings.iter().map(|f| &f["activity_id"]).collect();
    assert_eq!(activities, [&json!(1), &json!(2), &json!(3)]);
    assert!(findings
        .iter()
        .all(|f| f["finding_info"]["uid"] == json!(incident)));

    // Off by default: the spike windows alert, nothing more.
    let default = replay_text(&text, &config("")).alerts;
    assert_eq!(
        statuses(&default),
        [(Status::New, 16), (Status::Ongoing, 17)]
    );
}

#[test]
fn an_incident_resolves_in_the_first_window_its_arn_is_quiet() {
    let mut records = usual_then(ALICE, &[40]);
    records.extend(calls_per_window(BOB, T0, HOUR, &[5; 19]));
    let alerts = replay_text(
        &json_lines(&by_time(records)),
        &config("[alerts]\nresolve_incidents = true\n"),
    )
    .alerts;
    assert_eq!(
        statuses(&alerts),
        [(Status::New, 16), (Status::Resolved, 17)]
    );
    assert_eq!(alerts[1].number_of_api_calls, 0);
    assert_eq!(alerts[1].explanation.first_event_time, None);
}

#[test]
fn a_window_without_any_record_resolves_the_incident_before_it() {
    let counts: Vec<u64> = USUAL.iter().copied().chain([40, 0, 90]).collect();
    let records = calls_per_window(ALICE, T0, HOUR, &counts);
    let alerts = replay_text(
        &json_lines(&records),
        &config("[alerts]\nresolve_incidents = true\n"),
    )
    .alerts;
    assert_eq!(
        statuses(&alerts),
        [(Status::New, 16), (Status::Resolved, 17), (Status::New, 18)]
    );
    assert_eq!(alerts[1].number_of_api_calls, 0);
    assert_eq!(alerts[1].incident_id, alerts[0].incident_id);
    assert_ne!(alerts[2].incident_id, alerts[0].incident_id);
}

#[test]
fn a_spike_after_a_quiet_window_is_a_new_incident() {
    let records = usual_then(ALICE, &[40, 11, 90]);
    let alerts = replay_text(&json_lines(&records), &config("")).alerts;
    assert_eq!(statuses(&alerts), [(Status::New, 16), (Status::New, 18)]);
    assert_ne!(alerts[0].incident_id, alerts[1].incident_id);
}

#[test]
fn an_override_changes_the_thresholds_of_the_arns_it_matches_only() {
    let mut records = usual_then(ALICE, &[40]);
    records.extend(usual_then(BOB, &[40]));
    let text = json_lines(&by_time(records));
    let overridden = config(
        "[[override]]\narn = \"*:user/alice\"\ndeviation_threshold = 10.0\nreason = \"noisy\"\n",
    );
    let alerts = replay_text(&text, &overridden).alerts;
    let users: Vec<&str> = alerts.iter().map(|a| a.user.as_str()).collect();
    assert_eq!(users, [BOB]);
    assert_eq!(alerts[0].override_rule, None);

    let both = replay_text(&text, &config("")).alerts;
    assert_eq!(both.len(), 2);
    let fewer_points =
        config("[[override]]\narn_regex = \".*bob\"\ndata_point_threshold = 2\n");
    let early: Vec<Alert> = replay_text(&text, &fewer_points)
        .alerts
        .into_iter()
        .filter(|a| a.user == BOB)
        .collect();
    assert_eq!(early.last().map(|a| a.override_rule), Some(Some(1)));
    assert_eq!(early.last().map(|a| a.data_point_threshold), Some(2));
}

#[test]
fn assumed_role_sessions_count_as_their_role_when_collapsed() {
    let role = "arn:aws:sts::123456789012:assumed-role/deploy";
    let counts: Vec<u64> = USUAL.iter().copied().chain([40]).collect();
    let mut records = Vec::new();
    for (k, &count) in counts.iter().enumerate() {
        let session = format!("{role}/gh-run-{k}");
        records.extend(calls_per_window(
            &session,
            T0 + k as i64 * HOUR,
            HOUR,
            &[count],
        ));
    }
    let text = json_lines(&records);
    assert!(replay_text(&text, &config("")).alerts.is_empty());
    let collapsed = replay_text(
        &text,
        &config("[detection]\ncollapse_assumed_role_sessions = true\n"),
    );
    let users: Vec<&str> = collapsed.alerts.iter().map(|a| a.user.as_str()).collect();
    assert_eq!(users, [role]);
    assert!(collapsed.store.baseline(role).unwrap().is_some());
}

#[test]
fn catching_up_counts_old_alerts_without_producing_them() {
    let text = json_lines(&usual_then(ALICE, &[40]));
    let stale = replay_text(&text, &config("[alerts]\nmax_alert_age = \"1day\"\n"));
    assert!(stale.alerts.is_empty(), "{:#?}", stale.alerts);
    assert_eq!(Metrics::count(&stale.metrics.alerts_suppressed, "stale"), 1);
    let baseline = stale.store.baseline(ALICE).unwrap().expect("a baseline");
    assert_eq!(baseline.num_data_points, 17, "the baseline still learns");
    let fresh = replay_text(&text, &config("[alerts]\nmax_alert_age = \"100years\"\n"));
    assert_eq!(fresh.alerts.len(), 1);
}

#[test]
fn throttled_spikes_continue_their_incident_unproduced() {
    let records = usual_then(ALICE, &[40, 80, 10]);
    let throttled = replay_text(
        &json_lines(&records),
        &config("[alerts]\nthrottle = \"4h\"\nresolve_incidents = true\n"),
    );
    assert_eq!(
        statuses(&throttled.alerts),
        [(Status::New, 16), (Status::Resolved, 18)]
    );
    assert_eq!(throttled.alerts[1].incident_spike_windows, 2);
    assert_eq!(
        Metrics::count(&throttled.metrics.alerts_suppressed, "throttle"),
        1
    );
}

#[test]
fn baseline_show_prints_what_the_arn_usually_calls() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("records.jsonl");
    let mut records = calls_per_window(ALICE, T0, HOUR, &USUAL[..4]);
    records.push(api_call(ALICE, T0 + 4 * HOUR - 1, "AssumeRole"));
    records.extend(calls_per_window(ALICE, T0 + 4 * HOUR, HOUR, &USUAL[4..]));
    std::fs::write(&input, json_lines(&records)).unwrap();
    let state = dir.path().join("state");
    let binary = env!("CARGO_BIN_EXE_trailspike");
    let backfill = std::process::Command::new(binary)
        .arg("backfill")
        .arg("--state")
        .arg(&state)
        .arg(&input)
        .output()
        .unwrap();
    assert!(backfill.status.success(), "{backfill:?}");
    let show = std::process::Command::new(binary)
        .args(["baseline", "show", "--state"])
        .arg(&state)
        .arg(ALICE)
        .output()
        .unwrap();
    assert!(show.status.success(), "{show:?}");
    let text = String::from_utf8(show.stdout).unwrap();
    assert!(text.contains("usualApis       5 remembered"), "{text}");
    let lines: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[..4].iter().all(|l| l[1] == "16"),
        "the four usual APIs were called in all 16 windows: {text}"
    );
    assert_eq!(lines[4], ["AssumeRole", "1"], "{text}");
}

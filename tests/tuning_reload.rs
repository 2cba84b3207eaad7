//! Tuning while running, on a real broker: `trailspike run --config FILE`
//! takes a changed override from FILE for the next window it closes,
//! refuses a broken FILE and keeps its rules, and reloads on SIGHUP.
//!
//! Needs `TRAILSPIKE_TEST_BOOTSTRAP` (`scripts/test` sets it).

mod common;
mod kafka_common;
mod reliability_common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use common::{api_call, calls_per_window, ALICE, HOUR, T0};
use kafka_common::{Outgoing, Producer, Settings, Workspace};
use reliability_common::{http_get, metric_sum, trailspike, Process, TestDir};

const TIMEOUT: Duration = Duration::from_secs(90);
const BOB: &str = "arn:aws:iam::123456789012:user/bob";
const USUAL: [u64; 16] = [10, 12, 9, 11, 10, 13, 8, 10, 11, 12, 9, 10, 11, 10, 12, 10];

/// The run's config: the workspace's, polled every 200 ms, with `tuning`
/// (top-level tables such as `[[override]]`) at the end.
fn write_config(workspace: &Workspace, base: &str, tuning: &str) {
    let text = format!("{base}\n[reload]\npoll_interval = \"200ms\"\n\n{tuning}\n");
    std::fs::write(workspace.config_path(), text).expect("writing the config");
}

fn send(workspace: &Workspace, records: &[Value]) {
    let messages: Vec<Outgoing> = records
        .iter()
        .map(|r| Outgoing::to_partition(0, r.to_string()))
        .collect();
    Producer::new(&workspace.input).send(&messages);
}

/// The sum of `name`'s samples, or of one series when `name` includes its
/// labels (`trailspike_tuning_reloads_total{result="loaded"}`).
fn metric(address: SocketAddr, name: &str) -> f64 {
    http_get(address, "/metrics")
        .and_then(|(_, body)| metric_sum(&body, name))
        .unwrap_or(0.0)
}

/// Alice's spike of `calls` in window `k`, and a call of Bob's far enough
/// after it that the window closes.
fn spike_in_window(k: i64, calls: u64) -> Vec<Value> {
    let mut records = calls_per_window(ALICE, T0 + k * HOUR, HOUR, &[calls]);
    records.push(api_call(BOB, T0 + (k + 1) * HOUR + 20 * 60, "GetObject"));
    records
}

#[test]
fn a_reload_changes_the_next_window_and_a_broken_file_is_refused() {
    let dir = TestDir::new("tuning_reload");
    let workspace = Workspace::new("tuning_reload", 1, &Settings::default());
    let base = std::fs::read_to_string(workspace.config_path()).unwrap();
    let muted = "[[override]]\narn = \"*:user/alice\"\ndeviation_threshold = 1000.0\n";
    write_config(&workspace, &base, muted);

    let mut command = trailspike();
    command
        .arg("--config")
        .arg(workspace.config_path())
        .arg("run");
    let mut process = Process::spawn(command, &dir.path().join("run.log"));
    let address = process.metrics_address(TIMEOUT);

    // Window 16 spikes, but the override mutes Alice.
    let mut records = calls_per_window(ALICE, T0, HOUR, &USUAL);
    records.extend(spike_in_window(16, 40));
    send(&workspace, &records);
    process.wait_until("window 16 closes", TIMEOUT, || {
        metric(address, "trailspike_windows_closed_total") >= 17.0
    });
    assert!(
        workspace.read_alerts().is_empty(),
        "the override muted Alice"
    );

    // Without the override, her next spike (window 18) alerts.
    write_config(&workspace, &base, "");
    process.wait_until("the changed file is loaded", TIMEOUT, || {
        metric(
            address,
            "trailspike_tuning_reloads_total{result=\"loaded\"}",
        ) >= 1.0
    });
    let mut quiet_then_spike = calls_per_window(ALICE, T0 + 17 * HOUR, HOUR, &[10]);
    quiet_then_spike.extend(spike_in_window(18, 80));
    send(&workspace, &quiet_then_spike);
    process.wait_until("window 18 alerts", TIMEOUT, || {
        !workspace.read_alerts().is_empty()
    });
    let alerts = workspace.read_alerts();
    assert_eq!(alerts.len(), 1);
    let alert: Value = serde_json::from_str(alerts[0].payload_str()).unwrap();
    assert_eq!(alert["user"], ALICE);
    assert_eq!(alert["windowStart"], common::iso(T0 + 18 * HOUR));

    // A broken file is refused; the running rules (no override) stay, so
    // Alice's next spike still alerts.
    write_config(
        &workspace,
        &base,
        "[[override]]\narn = \"*\"\ndeviation_threshold = \"high\"\n",
    );
    process.wait_until("the broken file is refused", TIMEOUT, || {
        metric(
            address,
            "trailspike_tuning_reloads_total{result=\"refused\"}",
        ) >= 1.0
    });
    assert_eq!(metric(address, "trailspike_tuning_reload_failing"), 1.0);
    assert!(
        process.log().contains("tuning reload refused"),
        "{}",
        process.log_tail()
    );
    let mut more = calls_per_window(ALICE, T0 + 19 * HOUR, HOUR, &[10]);
    more.extend(spike_in_window(20, 200));
    send(&workspace, &more);
    process.wait_until("window 20 alerts under the kept rules", TIMEOUT, || {
        workspace.read_alerts().len() >= 2
    });

    // A fixed file loads (muting Alice again), and SIGHUP reloads it once
    // more although it has not changed since.
    write_config(&workspace, &base, muted);
    process.wait_until("the fixed file is loaded", TIMEOUT, || {
        metric(
            address,
            "trailspike_tuning_reloads_total{result=\"loaded\"}",
        ) >= 2.0
    });
    assert_eq!(metric(address, "trailspike_tuning_reload_failing"), 0.0);
    process.signal("HUP");
    process.wait_until("SIGHUP reloads the unchanged file", TIMEOUT, || {
        metric(
            address,
            "trailspike_tuning_reloads_total{result=\"loaded\"}",
        ) >= 3.0
    });
    let mut last = calls_per_window(ALICE, T0 + 21 * HOUR, HOUR, &[10]);
    last.extend(spike_in_window(22, 600));
    send(&workspace, &last);
    process.wait_until("window 22 closes", TIMEOUT, || {
        metric(address, "trailspike_windows_closed_total") >= 23.0
    });
    assert_eq!(
        workspace.read_alerts().len(),
        2,
        "muted again after the reload"
    );
    process.signal("TERM");
    assert!(process.wait(TIMEOUT).success(), "{}", process.log_tail());
}

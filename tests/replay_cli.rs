//! The `trailspike` binary as a user runs it: `generate`, `replay`,
//! `backfill`, `baseline` and `check-config`, through real processes.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use trailspike::alert::Alert;

use common::*;

/// The binary with a clean environment: no inherited `TRAILSPIKE_*`
/// overrides or log filter can change what a test sees.
fn trailspike() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trailspike"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TRAILSPIKE_") {
            command.env_remove(&key);
        }
    }
    command.env_remove("RUST_LOG");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 stdout")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstderr:\n{}",
        output.status,
        stderr(output)
    );
}

/// Parses stdout as one alert per line, each with the documented schema.
fn alerts_of(output: &Output) -> Vec<Alert> {
    stdout(output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// The number after `label` in the replay summary on stderr.
fn summary_number(stderr: &str, label: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} in the summary:\n{stderr}"));
    let rest = line[label.len()..].trim();
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write test file");
    path
}

fn worked_example_records() -> Vec<Value> {
    calls_per_window(ALICE, T0, HOUR, &WORKED_EXAMPLE)
}

fn replay(inputs: &[&Path]) -> Output {
    run(trailspike().arg("replay").args(inputs))
}

/// The single alert of the worked example, as `replay` prints it.
fn assert_worked_example_alert(output: &Output) {
    assert_success(output);
    let alerts = alerts_of(output);
    assert_eq!(alerts.len(), 1, "{}", stdout(output));
    assert_eq!(alerts[0].user, ALICE);
    assert_eq!(alerts[0].window_start, iso(T0 + 16 * HOUR));
    assert_eq!(alerts[0].number_of_api_calls, 40);
}

#[test]
fn generated_records_replay_to_json_alert_lines_in_window_order_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("records.jsonl");
    let spikes = dir.path().join("spikes.jsonl");
    let generated = run(trailspike()
        .args(["generate", "--seed", "7", "--hours", "96", "--arns", "40"])
        .args([
            "--rate-per-hour",
            "200",
            "--spikes",
            "3",
            "--disorder",
            "0.05",
        ])
        .arg("--output")
        .arg(&records)
        .arg("--spikes-out")
        .arg(&spikes));
    assert_success(&generated);

    let output = replay(&[&records]);
    assert_success(&output);
    let alerts = alerts_of(&output);
    let starts: Vec<i64> = alerts.iter().map(|a| unix_of(&a.window_start)).collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
    for alert in &alerts {
        assert_eq!(
            unix_of(&alert.window_end) - unix_of(&alert.window_start),
            HOUR
        );
    }
    let injected = std::fs::read_to_string(&spikes).unwrap();
    assert_eq!(injected.lines().count(), 3, "{injected}");
    for line in injected.lines() {
        let spike: Value = serde_json::from_str(line).unwrap();
        let start = iso(spike["window_start_unix"].as_i64().unwrap());
        assert!(
            alerts
                .iter()
                .any(|a| a.user == spike["arn"] && a.window_start == start),
            "injected spike not alerted: {line}"
        );
    }

    let summary = stderr(&output);
    assert!(summary_number(&summary, "counted") > 0, "{summary}");
    assert!(
        summary_number(&summary, "windows closed") >= 96,
        "{summary}"
    );
    assert_eq!(
        summary_number(&summary, "alerts") as usize,
        alerts.len(),
        "{summary}"
    );
}

#[test]
fn gzip_input_gives_the_same_alerts_as_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let text = json_lines(&worked_example_records());
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(text.as_bytes()).unwrap();
    let gz = write(dir.path(), "records.jsonl.gz", &encoder.finish().unwrap());
    assert_worked_example_alert(&replay(&[&gz]));
}

#[test]
fn dash_reads_records_from_stdin() {
    let text = json_lines(&worked_example_records());
    let mut child = trailspike()
        .args(["replay", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Written from a thread: the child may fill its stdout pipe before it
    // has read all of its input.
    let feeder = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let output = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert_worked_example_alert(&output);
}

#[test]
fn json_lines_of_records_bodies_give_the_same_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for chunk in worked_example_records().chunks(7) {
        text.push_str(&serde_json::json!({ "Records": chunk }).to_string());
        text.push('\n');
    }
    let path = write(dir.path(), "bodies.jsonl", text.as_bytes());
    assert_worked_example_alert(&replay(&[&path]));
}

#[test]
fn a_pretty_printed_cloudtrail_log_file_gives_the_same_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let body = serde_json::json!({ "Records": worked_example_records() });
    let text = serde_json::to_string_pretty(&body).unwrap();
    assert!(text.lines().count() > 1000, "really pretty-printed");
    let path = write(dir.path(), "log.json", text.as_bytes());
    assert_worked_example_alert(&replay(&[&path]));
}

#[test]
fn a_pretty_printed_log_file_after_a_blank_line_is_still_one_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let body = serde_json::json!({ "Records": worked_example_records() });
    let text = format!("\n{}\n", serde_json::to_string_pretty(&body).unwrap());
    let path = write(dir.path(), "log.json", text.as_bytes());
    let output = replay(&[&path]);
    assert_eq!(
        summary_number(&stderr(&output), "messages"),
        1,
        "{}",
        stderr(&output)
    );
    assert_worked_example_alert(&output);
}

#[test]
fn a_truncated_first_line_loses_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mut text =
        String::from("{\"eventTime\":\"2024-05-01T00:00:00Z\",\"userIdentity\":{\n");
    text.push_str(&json_lines(&worked_example_records()));
    let path = write(dir.path(), "cut.jsonl", text.as_bytes());
    let output = replay(&[&path]);
    let summary = stderr(&output);
    assert_eq!(
        summary_number(&summary, "counted"),
        WORKED_EXAMPLE.iter().sum::<u64>(),
        "{summary}"
    );
    assert!(summary.contains("invalid_json=1"), "{summary}");
    assert_worked_example_alert(&output);
}

#[test]
fn records_split_across_two_files_give_the_same_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let records = worked_example_records();
    let (even, odd): (Vec<_>, Vec<_>) =
        records.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let strip = |half: Vec<(usize, &Value)>| {
        half.into_iter().map(|(_, v)| v.clone()).collect::<Vec<_>>()
    };
    let a = write(dir.path(), "a.jsonl", json_lines(&strip(even)).as_bytes());
    let b = write(dir.path(), "b.jsonl", json_lines(&strip(odd)).as_bytes());
    let output = replay(&[&a, &b]);
    assert_worked_example_alert(&output);
    assert_eq!(summary_number(&stderr(&output), "late"), 0);
}

/// `baseline show` output as field name to value.
fn shown_fields(output: &Output) -> std::collections::BTreeMap<String, String> {
    stdout(output)
        .lines()
        .filter_map(|line| line.split_once(char::is_whitespace))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn backfill_history(dir: &Path) -> PathBuf {
    let history = calls_per_window(ALICE, T0, HOUR, &WORKED_EXAMPLE[..16]);
    let path = write(dir, "history.jsonl", json_lines(&history).as_bytes());
    let state = dir.join("state");
    let output = run(trailspike()
        .arg("backfill")
        .arg("--state")
        .arg(&state)
        .arg(&path));
    assert_success(&output);
    assert_eq!(stdout(&output), "", "backfill prints no alerts");
    state
}

#[test]
fn backfilling_the_same_history_twice_updates_each_window_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = backfill_history(dir.path());
    let again = backfill_history(dir.path());
    assert_eq!(state, again);
    let output = run(trailspike()
        .args(["baseline", "show", "--state"])
        .arg(&state)
        .arg(ALICE));
    assert_success(&output);
    assert_eq!(
        shown_fields(&output)["numDataPoints"],
        "16",
        "{}",
        stdout(&output)
    );
}

#[test]
fn backfill_then_baseline_show_prints_the_spec_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let state = backfill_history(dir.path());
    let output = run(trailspike()
        .args(["baseline", "show", "--state"])
        .arg(&state)
        .arg(ALICE));
    assert_success(&output);
    let fields = shown_fields(&output);
    let number = |name: &str| -> f64 {
        fields
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number {name} in:\n{}", stdout(&output)))
    };
    assert_eq!(number("latestCount"), 10.0);
    assert_eq!(number("numDataPoints"), 16.0);
    assert!((number("avgApiCalls") - 10.5).abs() < 1e-9);
    assert!((number("stdevApiCalls") - 1.274755).abs() < 1e-6);

    let unknown = run(trailspike()
        .args(["baseline", "show", "--state"])
        .arg(&state)
        .arg("arn:nobody"));
    assert!(!unknown.status.success(), "an unknown ARN is not a success");
}

#[test]
fn baseline_export_uses_the_lookup_header_and_import_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let state = backfill_history(dir.path());
    let export = |state: &Path| {
        let output = run(trailspike()
            .args(["baseline", "export", "--state"])
            .arg(state));
        assert_success(&output);
        stdout(&output)
    };
    let csv = export(&state);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("arn,latestCount,numDataPoints,avgApiCalls,stdevApiCalls")
    );
    let row: Vec<&str> = lines.next().expect("one baseline").split(',').collect();
    assert_eq!(row[..3], [ALICE, "10", "16"]);
    assert!((row[3].parse::<f64>().unwrap() - 10.5).abs() < 1e-9);
    assert!((row[4].parse::<f64>().unwrap() - 1.274755).abs() < 1e-6);
    assert_eq!(lines.next(), None);

    let file = write(dir.path(), "baseline.csv", csv.as_bytes());
    let copy = dir.path().join("copy");
    let imported = run(trailspike()
        .args(["baseline", "import", "--state"])
        .arg(&copy)
        .arg(&file));
    assert_success(&imported);
    assert_eq!(export(&copy), csv);
}

#[test]
fn replay_on_a_backfilled_state_alerts_from_the_first_spike_window() {
    let dir = tempfile::tempdir().unwrap();
    let state = backfill_history(dir.path());
    let spike = calls_per_window(ALICE, T0 + 16 * HOUR, HOUR, &[40]);
    let path = write(dir.path(), "spike.jsonl", json_lines(&spike).as_bytes());

    let cold = replay(&[&path]);
    assert_success(&cold);
    assert!(alerts_of(&cold).is_empty(), "no history, no alert");

    let warm = run(trailspike()
        .arg("replay")
        .arg("--state")
        .arg(&state)
        .arg(&path));
    assert_worked_example_alert(&warm);
    let alert = &alerts_of(&warm)[0];
    assert_eq!(alert.num_data_points, 17);
    assert!((alert.avg_api_calls - 12.235294).abs() < 1e-5);
}

#[test]
fn a_missing_input_is_named_and_fails_the_run_while_other_inputs_are_processed() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "good.jsonl",
        json_lines(&worked_example_records()).as_bytes(),
    );
    let missing = dir.path().join("no-such-file.jsonl");
    let output = replay(&[&missing, &good]);
    assert!(!output.status.success(), "a missing input fails the run");
    assert!(
        stderr(&output).contains("no-such-file.jsonl"),
        "{}",
        stderr(&output)
    );
    let alerts = alerts_of(&output);
    assert_eq!(alerts.len(), 1, "the good input is still processed");
    assert_eq!(alerts[0].window_start, iso(T0 + 16 * HOUR));
}

#[test]
fn an_unknown_config_key_fails_at_startup_with_exit_code_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "bad.toml", b"[detection]\nwindw = \"1h\"\n");
    let good = write(
        dir.path(),
        "good.jsonl",
        json_lines(&worked_example_records()).as_bytes(),
    );
    let output = run(trailspike()
        .arg("--config")
        .arg(&config)
        .arg("replay")
        .arg(&good));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("windw"), "{}", stderr(&output));
    assert_eq!(stdout(&output), "", "nothing ran");
}

#[test]
fn environment_override_of_the_window_changes_the_alert_windows() {
    let dir = tempfile::tempdir().unwrap();
    let half_hours = calls_per_window(ALICE, T0, HOUR / 2, &WORKED_EXAMPLE);
    let path = write(
        dir.path(),
        "half-hours.jsonl",
        json_lines(&half_hours).as_bytes(),
    );

    let output = run(trailspike()
        .env("TRAILSPIKE_DETECTION__WINDOW", "30m")
        .arg("replay")
        .arg(&path));
    assert_success(&output);
    let alerts = alerts_of(&output);
    assert_eq!(alerts.len(), 1, "{}", stdout(&output));
    let (start, end) = (
        unix_of(&alerts[0].window_start),
        unix_of(&alerts[0].window_end),
    );
    assert_eq!(end - start, HOUR / 2);
    assert_eq!(start, T0 + 16 * HOUR / 2);

    let hourly = replay(&[&path]);
    assert_success(&hourly);
    assert!(
        alerts_of(&hourly).is_empty(),
        "nine hourly windows are too few to alert"
    );
}

fn check_config_with_password(password: &str) -> Output {
    run(trailspike()
        .env("TRAILSPIKE_KAFKA__PROPERTIES__SASL_PASSWORD", password)
        .env(
            "TRAILSPIKE_KAFKA__PROPERTIES__SASL_USERNAME",
            "svc-trailspike",
        )
        .arg("check-config"))
}

#[test]
fn check_config_redacts_the_sasl_password_from_the_environment() {
    let password = "hunter2-Zq9xV";
    let output = check_config_with_password(password);
    assert_success(&output);
    let shown = stdout(&output);
    assert!(
        !shown.contains(password) && !stderr(&output).contains(password),
        "{shown}"
    );
    assert!(
        shown.contains("svc-trailspike"),
        "other properties are shown:\n{shown}"
    );
    assert!(
        shown.contains("sasl_password"),
        "the key itself is shown:\n{shown}"
    );
}

/// Passwords that the environment provider would read as a number, a
/// boolean, a list or a table rather than as text.
const PASSWORDS_THAT_LOOK_LIKE_VALUES: [(&str, &str); 5] = [
    ("80486753091", "80486753091"),
    ("3.25e7", "32500000"),
    ("true", "bool true"),
    ("[\"pw-Zq9xV\"]", "Zq9xV"),
    ("{pw=\"Zq9xV\"}", "Zq9xV"),
];

#[test]
fn check_config_never_prints_a_sasl_password_that_parses_as_another_type() {
    for (password, as_printed) in PASSWORDS_THAT_LOOK_LIKE_VALUES {
        let output = check_config_with_password(password);
        for (stream, text) in [("stdout", stdout(&output)), ("stderr", stderr(&output))] {
            let leaked = text.contains(password) || text.contains(as_printed);
            assert!(
                !leaked,
                "password {password:?} printed on {stream}:\n{text}"
            );
        }
    }
}

#[test]
fn a_digits_only_sasl_password_from_the_environment_is_accepted() {
    let output = check_config_with_password("80486753091");
    assert_success(&output);
    assert!(
        stdout(&output).contains("sasl_password = \"<redacted>\""),
        "{}",
        stdout(&output)
    );
}

#[test]
fn json_logs_put_each_spike_inside_the_span_of_its_window_close() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "worked.jsonl",
        json_lines(&worked_example_records()).as_bytes(),
    );
    let output = run(trailspike()
        .env("TRAILSPIKE_LOG__FORMAT", "json")
        .env("RUST_LOG", "trailspike=info")
        .arg("replay")
        .arg(&input));
    assert_worked_example_alert(&output);
    let logs = stderr(&output);
    let spike: Value = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["fields"]["message"] == "spike alert")
        .unwrap_or_else(|| panic!("no JSON spike alert line in:\n{logs}"));
    assert_eq!(spike["fields"]["user"], ALICE);
    assert_eq!(spike["span"]["name"], "close_window");
    assert_eq!(spike["span"]["window_start"], T0 + 16 * HOUR);
    assert_eq!(spike["span"]["arns"], 1);
}

/// README's first command: the demo on librdkafka's in-process mock
/// cluster, which needs no broker.
#[test]
fn demo_prints_every_alert_it_produced_and_reads_them_back() {
    let output = run(trailspike()
        .env("TRAILSPIKE_METRICS__LISTEN", "127.0.0.1:0")
        .arg("demo"));
    assert_success(&output);
    let (out, err) = (stdout(&output), stderr(&output));
    let number_before = |text: &str, what: &str| -> usize {
        let end = text
            .find(what)
            .unwrap_or_else(|| panic!("no {what:?} in:\n{text}"));
        let digits: String = text[..end]
            .trim_end()
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.chars().rev().collect::<String>().parse().unwrap()
    };
    let produced = number_before(&err, "alerts produced");
    let read_back = number_before(&err, "alerts read back");
    let printed = out.lines().filter(|l| l.starts_with("SPIKE  arn:")).count();
    let ids = out
        .lines()
        .filter(|l| l.trim_start().starts_with("alertId "))
        .count();
    assert!(
        produced >= 2,
        "the bundled data has two injected spikes:\n{err}"
    );
    assert_eq!(
        (read_back, printed, ids),
        (produced, produced, produced),
        "{out}\n{err}"
    );
    assert_eq!(number_before(&err, "dead-lettered"), 2, "{err}");
    assert!(err.contains("metrics at http://127.0.0.1:"), "{err}");
}

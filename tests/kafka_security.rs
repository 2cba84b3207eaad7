//! `trailspike run` against a broker that takes only TLS with
//! SASL/SCRAM-SHA-512: the same alerts and baselines as the offline
//! replay, the password never printed, a wrong password loud and
//! harmless.
//!
//! trailspike talks only to the SASL_SSL listener (its CA from
//! `TRAILSPIKE_TEST_CA_PEM`); topics are created, filled and read back by
//! the test through the PLAINTEXT one. Needs both listeners from
//! `scripts/kafka/kafka start --sasl-ssl`, which `scripts/test` runs.

mod kafka_common;
mod reliability_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kafka_common::{
    a_day_and_a_half, generate_records, last_event_time, message_count, payloads,
    round_robin, sentinels, Expected, Producer, Settings, Workspace,
};
use reliability_common::{
    http_get, toml_str, trailspike, Process, SaslListener, TestDir,
};

/// Longest a `run --stop-at-end` may take on a busy 2-core machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for a wrong password to show in the log.
const AUTH_FAILURE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a clean stop may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(45);

/// How the password reaches trailspike.
enum PasswordIn {
    /// `sasl.password` in the config file.
    File(String),
    /// `TRAILSPIKE_KAFKA__PROPERTIES__SASL_PASSWORD`.
    Env(String),
}

const PASSWORD_VAR: &str = "TRAILSPIKE_KAFKA__PROPERTIES__SASL_PASSWORD";

/// A config that reaches the broker only through its SASL_SSL listener,
/// for the topics, group and state of `workspace`.
fn sasl_config(
    workspace: &Workspace,
    sasl: &SaslListener,
    password: &PasswordIn,
) -> String {
    let password_line = match password {
        PasswordIn::File(password) => {
            format!("\"sasl.password\" = {}", toml_str(password))
        }
        PasswordIn::Env(_) => String::new(),
    };
    format!(
        r#"[kafka]
bootstrap_servers = {bootstrap}
group_id = {group}
input_topic = {input}
alerts_topic = {alerts}
dead_letter_topic = {dead_letter}
shutdown_timeout = "30s"

[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanisms" = {mechanism}
"sasl.username" = {user}
"ssl.ca.location" = {ca}
{password_line}

[kafka.consumer_properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"

[state]
dir = {state}
checkpoint_interval = "1s"

[metrics]
listen = "127.0.0.1:0"
"#,
        bootstrap = toml_str(&sasl.bootstrap),
        group = toml_str(&workspace.group),
        input = toml_str(&workspace.input),
        alerts = toml_str(&workspace.alerts),
        dead_letter = toml_str(&workspace.dead_letter),
        mechanism = toml_str(&sasl.mechanism),
        user = toml_str(&sasl.user),
        ca = toml_str(&sasl.ca_pem),
        state = toml_str(&workspace.state_dir.display().to_string()),
    )
}

/// Writes the config into `dir` and returns a command that runs
/// trailspike with it and with the password where `password` says.
fn command_with(
    dir: &Path,
    workspace: &Workspace,
    sasl: &SaslListener,
    password: &PasswordIn,
) -> (std::process::Command, PathBuf) {
    let config = dir.join("sasl.toml");
    std::fs::write(&config, sasl_config(workspace, sasl, password))
        .expect("writing config");
    let mut command = trailspike();
    command.arg("--config").arg(&config);
    if let PasswordIn::Env(password) = password {
        command.env(PASSWORD_VAR, password);
    }
    (command, config)
}

#[test]
fn run_over_sasl_ssl_equals_replay_and_never_prints_the_password() {
    let started = Instant::now();
    let sasl = SaslListener::from_env();
    let settings = Settings::default();
    let workspace = Workspace::new("sasl_ssl", 2, &settings);
    let (records, summary) = generate_records(&a_day_and_a_half(11));
    let mut messages = round_robin(&records, &[0, 1]);
    messages.extend(sentinels(last_event_time(&records), &[0, 1]));
    Producer::new(&workspace.input).send(&messages);
    let expected = Expected::replay(&payloads(&messages), &settings.replay_config());
    assert!(
        !summary.spikes.is_empty() && !expected.alerts.is_empty(),
        "the input has alerts, so equality is not between two empty sets"
    );

    let dir = TestDir::new("sasl");
    let password = PasswordIn::Env(sasl.password.clone());
    let (mut command, _) = command_with(dir.path(), &workspace, &sasl, &password);
    // Everything trailspike and librdkafka log at debug, including the
    // configuration and the SASL handshake.
    command
        .env("RUST_LOG", "debug")
        .env(
            "TRAILSPIKE_KAFKA__PROPERTIES__DEBUG",
            "security,broker,conf",
        )
        .args(["run", "--stop-at-end"]);
    let mut process = Process::spawn(command, &dir.path().join("run.log"));
    let status = process.wait(RUN_TIMEOUT);
    assert!(
        status.success(),
        "run over SASL_SSL exited with {status}; its log:\n{}",
        process.log_tail()
    );

    expected.assert_workspace(&workspace);
    let log = process.log();
    assert!(
        log.contains("sasl_ssl://"),
        "librdkafka's debug log shows the SASL_SSL connection"
    );
    assert!(
        log.contains(" DEBUG "),
        "the run logged at debug level, so the check below saw everything"
    );
    assert_never_printed(&log, &sasl.password, "run's stderr at debug level");
    eprintln!(
        "sasl_ssl: {} alerts, {} log bytes checked, {:.1}s",
        expected.alerts.len(),
        log.len(),
        started.elapsed().as_secs_f64()
    );
}

fn assert_never_printed(text: &str, password: &str, what: &str) {
    if let Some(at) = text.find(password) {
        let line = text[..at].lines().count();
        panic!("the SASL password appears in {what}, line {line}");
    }
}

#[test]
fn check_config_redacts_the_password_from_the_file_and_from_the_environment() {
    let sasl = SaslListener::from_env();
    let settings = Settings::default();
    let workspace = Workspace::new("sasl_check_config", 1, &settings);
    let dir = TestDir::new("sasl");
    for password in [
        PasswordIn::File(sasl.password.clone()),
        PasswordIn::Env(sasl.password.clone()),
    ] {
        let (mut command, _) = command_with(dir.path(), &workspace, &sasl, &password);
        let output = command.arg("check-config").output().expect("check-config");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "check-config failed: {stderr}");
        assert_never_printed(&stdout, &sasl.password, "check-config's output");
        assert_never_printed(&stderr, &sasl.password, "check-config's stderr");
        // The key as it was given: `sasl.password` from the file,
        // `sasl_password` from the environment.
        let line = stdout
            .lines()
            .find(|line| line.contains("sasl.password") || line.contains("sasl_password"))
            .unwrap_or_else(|| {
                panic!("check-config shows the password's key:\n{stdout}")
            });
        assert!(line.contains("<redacted>"), "{line}");
    }
}

/// `/readyz` as (status, body), once the process serves it.
fn readiness(process: &mut Process) -> (u16, String) {
    let address = process.metrics_address(Duration::from_secs(30));
    http_get(address, "/readyz").expect("/readyz answers")
}

#[test]
fn a_wrong_password_is_reported_and_nothing_is_consumed_or_produced() {
    let sasl = SaslListener::from_env();
    let settings = Settings::default();
    let workspace = Workspace::new("sasl_wrong_password", 1, &settings);
    let (records, _) = generate_records(&a_day_and_a_half(12));
    let mut messages = round_robin(&records, &[0]);
    messages.extend(sentinels(last_event_time(&records), &[0]));
    Producer::new(&workspace.input).send(&messages);

    let dir = TestDir::new("sasl");
    let wrong = format!("not-{}", sasl.password);
    let (mut command, _) = command_with(
        dir.path(),
        &workspace,
        &sasl,
        &PasswordIn::Env(wrong.clone()),
    );
    command.arg("run");
    let mut process = Process::spawn(command, &dir.path().join("run.log"));
    let log_path = process.log_path().to_path_buf();
    process.wait_until(
        "the log reports the failed authentication at ERROR level",
        AUTH_FAILURE_TIMEOUT,
        || authentication_failure(&read(&log_path)).is_some(),
    );
    let (status, body) = readiness(&mut process);
    assert_eq!(status, 503, "/readyz with a wrong password: {body}");
    assert!(body.contains("no partitions assigned"), "{body}");

    process.signal("TERM");
    let exit = process.wait(STOP_TIMEOUT);
    let log = process.log();
    assert_never_printed(&log, &wrong, "the log of the run with a wrong password");
    assert_eq!(message_count(&workspace.alerts), 0, "no alert produced");
    assert_eq!(message_count(&workspace.dead_letter), 0, "no dead letter");
    assert!(
        workspace.offsets().committed().is_empty(),
        "no offset committed for the group"
    );
    eprintln!(
        "wrong password: exit {exit} after SIGTERM; reported as: {}",
        authentication_failure(&log).unwrap_or_default()
    );
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// The first log line that reports a failed SASL authentication.
fn authentication_failure(log: &str) -> Option<String> {
    log.lines()
        .find(|line| {
            line.contains("uthentication failed")
                || line.contains("SASL authentication error")
        })
        .map(str::to_string)
}

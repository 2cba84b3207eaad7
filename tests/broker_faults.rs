//! Faults of the broker: absent when trailspike starts, stopped and
//! restarted with its data mid-run, frozen (SIGSTOP) mid-run. Each time
//! trailspike must wait, say on `/readyz` why it is not ready, and resume
//! without losing or repeating anything: the alerts and baselines equal
//! the offline replay of the same records. Frozen when trailspike is asked
//! to stop, the stop must still end, with exit code 3, soon after
//! `kafka.shutdown_timeout`.
//!
//! Each test starts a broker of its own (`scripts/kafka/kafka`, with its
//! data in the test's directory), never the shared one, so needs the
//! Kafka jars (`scripts/kafka/kafka install`) but not
//! `TRAILSPIKE_TEST_BOOTSTRAP`. The tests take turns: two extra brokers
//! starting at once on a 2-core machine slow each other into timeouts.

mod kafka_common;
mod reliability_common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kafka_common::{
    generate_records, last_event_time, message_count, payloads, round_robin, sentinels,
    use_broker, Expected, Feed, Outgoing, Producer, Settings, Workspace,
};
use reliability_common::{http_get, metric_sum, trailspike, Broker, Process, TestDir};
use trailspike::generate::GenerateArgs;

/// Longest wait for the pipeline to get somewhere, broker restarts
/// included.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for `/readyz` to change its answer.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a clean stop may take (the config's shutdown_timeout is 30 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(45);

static ONE_BROKER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    // A test that failed while holding the turn leaves nothing behind
    // that the next one shares.
    ONE_BROKER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Two days of a hundred identities, with spikes late enough to alert.
fn two_days(seed: u64) -> GenerateArgs {
    GenerateArgs {
        seed,
        hours: 48,
        arns: 100,
        rate_per_hour: 300.0,
        spikes: 3,
        ..GenerateArgs::default()
    }
}

/// The records over partitions 0, 1 and 2 in turn, then the sentinels
/// that close every window, and what replay makes of them.
fn input(seed: u64, settings: &Settings) -> (Vec<Outgoing>, Expected) {
    let (records, summary) = generate_records(&two_days(seed));
    let mut messages = round_robin(&records, &[0, 1, 2]);
    messages.extend(sentinels(last_event_time(&records), &[0, 1, 2]));
    let expected = Expected::replay(&payloads(&messages), &settings.replay_config());
    for spike in &summary.spikes {
        let id = trailspike::alert::alert_id(&spike.arn, spike.window_start_unix);
        assert!(
            expected.alerts.contains_key(&id),
            "replay alerts on injected spike {spike:?}"
        );
    }
    (messages, expected)
}

/// Frequent checkpoints, so that several fall in each broker outage.
fn settings() -> Settings {
    Settings {
        checkpoint_interval: "200ms".into(),
        ..Settings::default()
    }
}

/// `trailspike run` on `config`, as a [`Process`] whose `/readyz` the
/// test can ask.
fn start(config: &Path, dir: &TestDir, name: &str) -> Process {
    let mut command = trailspike();
    command.arg("--config").arg(config).arg("run");
    Process::spawn(command, &dir.path().join(format!("{name}.log")))
}

fn readyz(address: SocketAddr) -> Option<(u16, String)> {
    http_get(address, "/readyz")
}

/// Waits until `/readyz` answers 503 with `reason` among its reasons;
/// returns the body.
fn wait_not_ready(process: &mut Process, address: SocketAddr, reason: &str) -> String {
    let mut body = String::new();
    process.wait_until(
        &format!("/readyz is 503 naming {reason:?}"),
        READY_TIMEOUT,
        || match readyz(address) {
            Some((503, text)) => {
                body = text;
                body.starts_with("not ready: ") && body.contains(reason)
            }
            _ => false,
        },
    );
    body
}

fn wait_ready(process: &mut Process, address: SocketAddr) {
    process.wait_until("/readyz is 200", READY_TIMEOUT, || {
        matches!(readyz(address), Some((200, _)))
    });
}

/// Waits until the group has committed past every message and every
/// expected alert is on the topic, then stops trailspike with SIGTERM
/// and checks that it exits 0.
fn finish(mut process: Process, workspace: &Workspace, total: i64, alerts: usize) {
    let offsets = workspace.offsets();
    process.wait_until("the whole input is consumed", PROGRESS_TIMEOUT, || {
        offsets.total() >= total
    });
    process.wait_until(
        &format!("{alerts} alerts are on the topic"),
        PROGRESS_TIMEOUT,
        || message_count(&workspace.alerts) >= alerts as i64,
    );
    process.signal("TERM");
    let status = process.wait(STOP_TIMEOUT);
    assert!(
        status.success(),
        "SIGTERM ends trailspike with 0, not {status}; its log:\n{}",
        process.log_tail()
    );
}

#[test]
fn broker_absent_at_start_is_not_ready_then_everything_counts_once_it_is_up() {
    let _turn = take_turn();
    let started = Instant::now();
    let dir = TestDir::new("broker_absent");
    let broker = Broker::start(&dir.path().join("broker"));
    let _own = use_broker(broker.bootstrap());
    let settings = settings();
    // Topics exist (an operator created them), but the broker is down
    // when trailspike starts.
    let workspace = Workspace::new("broker_absent", 3, &settings);
    let (messages, expected) = input(11, &settings);
    broker.stop_keeping_data();

    let mut process = start(workspace.config_path(), &dir, "run");
    let address = process.metrics_address(READY_TIMEOUT);
    let body = wait_not_ready(&mut process, address, "broker not acknowledging");
    assert!(
        !body.contains("state not loaded"),
        "the state loads without a broker: {body:?}"
    );
    // Every answer for the next 5 s says the same: it waits, it does not
    // give up or pretend.
    let waiting_since = Instant::now();
    process.wait_until("5 s without a broker have passed", READY_TIMEOUT, || {
        let answer = readyz(address);
        assert!(
            matches!(&answer, Some((503, text)) if text.contains("broker not acknowledging")),
            "{:?} without a broker /readyz answered {answer:?}",
            waiting_since.elapsed()
        );
        waiting_since.elapsed() >= Duration::from_secs(5)
    });

    broker.restart();
    Producer::new(&workspace.input).send(&messages);
    wait_ready(&mut process, address);
    finish(
        process,
        &workspace,
        messages.len() as i64,
        expected.alerts.len(),
    );

    expected.assert_workspace(&workspace);
    eprintln!(
        "broker absent at start: /readyz said {body:?}; {} alerts, {} baselines, {:.1}s",
        expected.alerts.len(),
        expected.baselines.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn broker_restarted_and_frozen_mid_run_loses_and_repeats_nothing() {
    let _turn = take_turn();
    let started = Instant::now();
    let dir = TestDir::new("broker_restart");
    let broker = Broker::start(&dir.path().join("broker"));
    let _own = use_broker(broker.bootstrap());
    let settings = settings();
    let workspace = Workspace::new("broker_restart", 3, &settings);
    let (messages, expected) = input(12, &settings);
    let total = messages.len() as i64;
    let offsets = workspace.offsets();

    let (data, ends) = messages.split_at(messages.len() - 3);
    let feed = Feed::start(
        &workspace.input,
        data.to_vec(),
        data.len() / 20,
        Duration::from_millis(300),
    );
    let mut process = start(workspace.config_path(), &dir, "run");
    let address = process.metrics_address(READY_TIMEOUT);
    process.wait_until(
        "a quarter of the input is consumed",
        PROGRESS_TIMEOUT,
        || offsets.total() >= total / 4,
    );

    // Stopped with its data, as in a rolling restart.
    broker.stop_keeping_data();
    let stopped = wait_not_ready(&mut process, address, "not ready");
    broker.restart();
    wait_ready(&mut process, address);
    let at_restart = offsets.total();
    // Past where it was at the restart, unless the feed had already ended
    // and all of it was consumed before the restart: then only the end
    // markers, sent below, are left, and `finish` proves that consumption
    // resumed.
    let fed = data.len() as i64;
    process.wait_until("half the input is consumed", PROGRESS_TIMEOUT, || {
        offsets.total() >= (total / 2).max(at_restart + 1).min(fed)
    });

    // Frozen: connections stay open and nothing answers.
    broker.pause();
    let frozen = wait_not_ready(&mut process, address, "not ready");
    broker.resume();
    wait_ready(&mut process, address);

    feed.finish();
    Producer::new(&workspace.input).send(ends);
    finish(process, &workspace, total, expected.alerts.len());

    expected.assert_workspace(&workspace);
    eprintln!(
        "broker restarted and frozen: /readyz said {stopped:?} and {frozen:?}; \
         {} alerts, {} baselines, {:.1}s",
        expected.alerts.len(),
        expected.baselines.len(),
        started.elapsed().as_secs_f64()
    );
}

/// The stop's limit in [`a_stop_the_frozen_broker_cannot_serve_ends_with_3`],
/// short so that the test is.
const SHORT_SHUTDOWN_TIMEOUT: &str = "3s";

/// Starts `config` on a fresh input that keeps arriving, waits until it
/// has consumed some, freezes the broker and sends SIGTERM; returns the
/// exit status, how long the stop took, and the log.
fn stop_with_the_broker_frozen(
    broker: &Broker,
    dir: &TestDir,
    config: &Path,
    name: &str,
    input_topic: &str,
    seed: u64,
) -> (std::process::ExitStatus, Duration, String) {
    let (records, _) = generate_records(&two_days(seed));
    let messages = round_robin(&records, &[0, 1, 2]);
    let chunk = messages.len() / 40;
    let feed = Feed::start(input_topic, messages, chunk, Duration::from_millis(200));
    let mut process = start(config, dir, name);
    let address = process.metrics_address(READY_TIMEOUT);
    // Consumed and, with a checkpoint interval far longer than the test,
    // not yet committed: the stop has work that needs the broker.
    process.wait_until("records are consumed", PROGRESS_TIMEOUT, || {
        http_get(address, "/metrics")
            .and_then(|(_, body)| metric_sum(&body, "trailspike_messages_consumed_total"))
            .is_some_and(|consumed| consumed > 0.0)
    });
    broker.pause();
    process.signal("TERM");
    let stopping = Instant::now();
    let status = process.wait(STOP_TIMEOUT);
    let took = stopping.elapsed();
    broker.resume();
    feed.finish();
    (status, took, process.log())
}

#[test]
fn a_stop_the_frozen_broker_cannot_serve_ends_with_3() {
    let _turn = take_turn();
    let dir = TestDir::new("broker_frozen_stop");
    let broker = Broker::start(&dir.path().join("broker"));
    let _own = use_broker(broker.bootstrap());
    let settings = Settings {
        checkpoint_interval: "20s".into(),
        shutdown_timeout: SHORT_SHUTDOWN_TIMEOUT.into(),
        ..Settings::default()
    };

    // One instance.
    let single = Workspace::new("frozen_stop_single", 3, &settings);
    let (status, took, log) = stop_with_the_broker_frozen(
        &broker,
        &dir,
        single.config_path(),
        "single",
        &single.input,
        21,
    );
    assert_eq!(status.code(), Some(3), "one instance; its log:\n{log}");
    // Where the stop waits decides which limit ends it: the pipeline's
    // own, between checkpoint attempts, or the process's, in a call to
    // librdkafka that waits for the broker (the final offset commit).
    assert!(log.contains("did not finish within"), "it says why: {log}");
    eprintln!(
        "frozen broker, one instance: exit 3 after {:.1}s",
        took.as_secs_f64()
    );

    // Scaled out the stop waits inside librdkafka (committing the open
    // transaction), where only the process's own limit ends it.
    let scaled = Workspace::new("frozen_stop_scaled", 3, &settings);
    let instance = scaled.scaled_instance(0, 3);
    // Room for a transaction open for the whole checkpoint interval.
    let mut config = std::fs::read_to_string(&instance.config_path).expect("the config");
    config.push_str(
        "\n[kafka.producer_properties]\n\"transaction.timeout.ms\" = \"60000\"\n",
    );
    std::fs::write(&instance.config_path, config).expect("writing the config");
    let (status, took, log) = stop_with_the_broker_frozen(
        &broker,
        &dir,
        &instance.config_path,
        "scaled",
        &scaled.input,
        22,
    );
    assert_eq!(status.code(), Some(3), "scaled out; its log:\n{log}");
    assert!(
        log.contains("the stop did not finish within kafka.shutdown_timeout"),
        "the limit says why: {log}"
    );
    eprintln!(
        "frozen broker, scaled out: exit 3 after {:.1}s",
        took.as_secs_f64()
    );
}

//! Scaling out on a real broker (README "Scaling out"): several
//! `trailspike run` processes in one consumer group, on an input topic of
//! six partitions whose records carry no key, checked against the offline
//! replay of the same records and against each other.
//!
//! Each run is over when the committed alerts and the changelog's
//! baselines equal replay's (conditions, polled); the instances are then
//! stopped with SIGTERM and must exit 0, and the alerts topic is read
//! again, `read_committed` as a SIEM would, so a duplicate written during
//! the stop would show.
//!
//! Needs `TRAILSPIKE_TEST_BOOTSTRAP` (`scripts/test` sets it).

mod kafka_common;

use std::time::{Duration, Instant};

use kafka_common::{
    a_day_and_a_half, baseline_differences, baseline_shown, exported_baselines_of,
    generate_records, last_event_time, payloads, read_topic_committed, round_robin,
    sentinels, wait_until, Baselines, Expected, Feed, OffsetWatch, Outgoing, Producer,
    Received, ScaledInstance, Settings, Trailspike, Workspace,
};
use trailspike::generate::GenerateArgs;

const INPUT_PARTITIONS: i32 = 6;
const INTERNAL_PARTITIONS: i32 = 6;
/// Longest a deployment may take to count everything, with a session
/// timeout and a transaction timeout to wait out after a SIGKILL.
const DONE_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest wait for an instance to get somewhere (join, restore).
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest a clean stop may take (the config's shutdown_timeout is 30 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(45);

fn all_partitions() -> Vec<i32> {
    (0..INPUT_PARTITIONS).collect()
}

/// The records, without keys, in turn over the six partitions, then a
/// sentinel on each so that every window closes.
fn with_sentinels(records: &[Vec<u8>]) -> Vec<Outgoing> {
    let mut messages = round_robin(records, &all_partitions());
    messages.extend(sentinels(last_event_time(records), &all_partitions()));
    messages
}

/// A scaled-out deployment under test: its workspace and instances.
/// Running processes are dropped (killed) first, before the workspace
/// that holds their state.
struct Deployment {
    running: Vec<Option<Trailspike>>,
    instances: Vec<ScaledInstance>,
    workspace: Workspace,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for instance in &self.instances {
                eprintln!(
                    "--- instance {}:\n{}",
                    instance.instance,
                    instance.log_tail()
                );
            }
        }
    }
}

impl Deployment {
    fn new(test: &str, count: usize) -> Deployment {
        let workspace = Workspace::new(test, INPUT_PARTITIONS, &Settings::default());
        let instances = (0..count)
            .map(|i| workspace.scaled_instance(i, INTERNAL_PARTITIONS))
            .collect();
        let running = (0..count).map(|_| None).collect();
        Deployment {
            workspace,
            instances,
            running,
        }
    }

    fn start(&mut self, instance: usize) {
        assert!(self.running[instance].is_none(), "instance {instance} runs");
        self.running[instance] = Some(self.instances[instance].start());
    }

    fn start_all(&mut self) {
        for instance in 0..self.instances.len() {
            self.start(instance);
        }
    }

    /// SIGTERM, and a clean exit.
    fn stop(&mut self, instance: usize) {
        let process = self.running[instance].take().expect("a running instance");
        process.terminate();
        let status = process.wait(STOP_TIMEOUT);
        assert!(status.success(), "instance {instance} exited with {status}");
    }

    fn stop_all(&mut self) {
        for instance in 0..self.instances.len() {
            if self.running[instance].is_some() {
                self.stop(instance);
            }
        }
    }

    fn kill(&mut self, instance: usize) {
        let process = self.running[instance].take().expect("a running instance");
        process.kill();
    }

    fn alerts(&self) -> Vec<Received> {
        read_topic_committed(&self.workspace.alerts)
    }

    /// Input offsets the group has committed, summed over partitions.
    fn input_committed(&self) -> i64 {
        OffsetWatch::new(&self.workspace.group, &self.workspace.input).total()
    }

    /// Waits until the committed alerts and the changelog's baselines are
    /// those `expected` holds, while every started instance keeps
    /// running; on a timeout, says how far it got.
    fn wait_until_done(&mut self, expected: &Expected) {
        let deadline = Instant::now() + DONE_TIMEOUT;
        loop {
            self.assert_running();
            let alerts = self.alerts().len();
            let differences = match self.workspace.try_baselines_from_kafka() {
                Ok(baselines) => {
                    baseline_differences(&baselines, &expected.baselines, 1e-9)
                }
                Err(error) => vec![format!("no export yet: {error}")],
            };
            if alerts >= expected.alerts.len() && differences.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not done after {DONE_TIMEOUT:?}: {alerts} of {} alerts committed; \
                 {} baselines differ from replay's, first:\n{}",
                expected.alerts.len(),
                differences.len(),
                differences[..differences.len().min(5)].join("\n"),
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Every instance started and not stopped on purpose still runs.
    fn assert_running(&mut self) {
        for (instance, process) in self.running.iter_mut().enumerate() {
            if let Some(process) = process {
                assert!(process.running(), "instance {instance} exited on its own");
            }
        }
    }

    /// Stops every instance, then checks the alerts topic (read again)
    /// and the baselines against `expected`.
    fn stop_and_check(&mut self, expected: &Expected) {
        self.stop_all();
        expected.assert_alerts(&self.alerts());
        expected.assert_baselines(&self.workspace.baselines_from_kafka());
    }
}

/// Replay's alerts and baselines for `messages`, with at least one alert
/// and one injected spike among them, so no comparison is of empty sets.
fn expect(messages: &[Outgoing], args: &GenerateArgs) -> Expected {
    let expected =
        Expected::replay(&payloads(messages), &Settings::default().replay_config());
    assert!(args.spikes > 0);
    assert!(!expected.alerts.is_empty(), "the records have spikes");
    expected
}

#[test]
fn three_instances_produce_exactly_the_alerts_of_one() {
    let args = a_day_and_a_half(11);
    let (records, _) = generate_records(&args);
    let messages = with_sentinels(&records);
    let expected = expect(&messages, &args);
    let mut one = Deployment::new("scale_one", 1);
    let mut three = Deployment::new("scale_three", 3);
    Producer::new(&one.workspace.input).send(&messages);
    Producer::new(&three.workspace.input).send(&messages);

    one.start_all();
    three.start_all();
    one.wait_until_done(&expected);
    three.wait_until_done(&expected);
    one.stop_and_check(&expected);
    three.stop_and_check(&expected);

    let by_id = |alerts: Vec<Received>| {
        let mut texts: Vec<String> =
            alerts.iter().map(|a| a.payload_str().to_string()).collect();
        texts.sort();
        texts
    };
    assert_eq!(by_id(one.alerts()), by_id(three.alerts()));
    for instance in &three.instances {
        assert!(
            !instance.restored_partitions().is_empty(),
            "instance {} owned partitions of the detection",
            instance.instance
        );
    }
}

/// Records fed in small chunks with pauses, long enough that a fault
/// lands while the input is still arriving.
fn slow_feed(deployment: &Deployment, messages: Vec<Outgoing>) -> Feed {
    Feed::start(
        &deployment.workspace.input,
        messages,
        250,
        Duration::from_millis(250),
    )
}

#[test]
fn killing_one_of_three_mid_stream_loses_and_repeats_nothing() {
    let args = a_day_and_a_half(12);
    let (records, _) = generate_records(&args);
    let messages = with_sentinels(&records);
    let total = messages.len() as i64;
    let expected = expect(&messages, &args);
    let mut deployment = Deployment::new("scale_kill", 3);
    deployment.start_all();
    wait_until(
        "every instance owns partitions of the detection",
        PROGRESS_TIMEOUT,
        || {
            deployment
                .instances
                .iter()
                .all(|instance| !instance.restored_partitions().is_empty())
        },
    );
    let feed = slow_feed(&deployment, messages);

    wait_until("a third of the input committed", PROGRESS_TIMEOUT, || {
        deployment.input_committed() >= total / 3
    });
    assert!(
        deployment.input_committed() < total,
        "the kill must land mid-stream"
    );
    let victim = 1;
    assert!(
        !deployment.instances[victim]
            .restored_partitions()
            .is_empty(),
        "the victim owned repartition partitions"
    );
    let restored_before: usize = [0, 2]
        .iter()
        .map(|&i| deployment.instances[i].restored_partitions().len())
        .sum();
    deployment.kill(victim);
    feed.finish();
    deployment.wait_until_done(&expected);

    let restored_after: usize = [0, 2]
        .iter()
        .map(|&i| deployment.instances[i].restored_partitions().len())
        .sum();
    assert!(
        restored_after > restored_before,
        "the survivors took over the victim's partitions"
    );
    deployment.stop_and_check(&expected);
}

#[test]
fn rolling_restart_of_all_three_loses_and_repeats_nothing() {
    let args = a_day_and_a_half(13);
    let (records, _) = generate_records(&args);
    let messages = with_sentinels(&records);
    let expected = expect(&messages, &args);
    // The sentinels wait until after the restarts: until then the last
    // windows stay open, and the input is not all read.
    let (data, ends) = messages.split_at(records.len());
    let total = data.len() as i64;
    let mut deployment = Deployment::new("scale_rolling", 3);
    deployment.start_all();
    let feed = slow_feed(&deployment, data.to_vec());

    for instance in 0..3 {
        let step = (instance as i64 + 1) * total / 5;
        wait_until("more input committed", PROGRESS_TIMEOUT, || {
            deployment.input_committed() >= step
        });
        let assignments = deployment.instances[instance].assignments();
        deployment.stop(instance);
        deployment.start(instance);
        wait_until(
            "the restarted instance owns partitions again",
            PROGRESS_TIMEOUT,
            || deployment.instances[instance].assignments() > assignments,
        );
    }
    feed.finish();
    Producer::new(&deployment.workspace.input).send(ends);
    deployment.wait_until_done(&expected);
    deployment.stop_and_check(&expected);
}

#[test]
fn a_joining_instance_restores_baselines_from_the_changelog() {
    // Two days: the first 36 hours before the second instance joins, the
    // rest after, so baselines it takes over keep growing.
    let args = GenerateArgs {
        hours: 48,
        ..a_day_and_a_half(14)
    };
    let (records, _) = generate_records(&args);
    let messages = with_sentinels(&records);
    let expected = expect(&messages, &args);
    let split = records.len() * 3 / 4;
    let (before, after) = messages.split_at(split);
    let mut deployment = Deployment::new("scale_join", 2);
    Producer::new(&deployment.workspace.input).send(before);
    deployment.start(0);
    wait_until("the first part committed", PROGRESS_TIMEOUT, || {
        deployment.input_committed() >= split as i64
    });
    wait_until("baselines in the changelog", PROGRESS_TIMEOUT, || {
        deployment.workspace.baselines_from_kafka().len() > 10
    });

    deployment.start(1);
    wait_until(
        "the new instance restored partitions",
        PROGRESS_TIMEOUT,
        || !deployment.instances[1].restored_partitions().is_empty(),
    );
    let joined = deployment.instances[1].logs();
    let restored_writes = joined
        .lines()
        .filter(|line| line.contains("state restored"))
        .any(|line| !line.contains("changelog_writes=0"));
    assert!(
        restored_writes,
        "it read state from the changelog:\n{joined}"
    );
    Producer::new(&deployment.workspace.input).send(after);
    deployment.wait_until_done(&expected);
    deployment.stop_all();
    expected.assert_alerts(&deployment.alerts());

    // The baselines the new instance holds after the move are replay's:
    // their history from before it joined came from the changelog.
    let moved = exported_baselines_of(&deployment.instances[1].state_dir);
    assert!(!moved.is_empty(), "the new instance holds baselines");
    let replayed: Baselines = moved
        .keys()
        .filter_map(|arn| Some((arn.clone(), *expected.baselines.get(arn)?)))
        .collect();
    let differences = baseline_differences(&moved, &replayed, 1e-9);
    assert!(
        differences.is_empty(),
        "moved baselines differ: {differences:#?}"
    );
    let hours_since_the_join = 12;
    let (arn, oldest) = moved
        .iter()
        .max_by_key(|(_, row)| row.num_data_points)
        .expect("moved baselines");
    assert!(
        oldest.num_data_points > hours_since_the_join,
        "some moved baselines hold windows from before the join"
    );
    let shown = baseline_shown(&deployment.instances[1].state_dir, arn);
    let points = format!("numDataPoints   {}", oldest.num_data_points);
    assert!(
        shown.contains(&points),
        "baseline show finds {arn}:\n{shown}"
    );
}

//! The Kafka pipeline on a real broker: `trailspike run` as a process
//! between topics, checked against the offline replay of the same records.
//!
//! Needs `TRAILSPIKE_TEST_BOOTSTRAP` (`scripts/test` sets it); each test
//! has its own topics, group and state directory, so they run in parallel.

mod kafka_common;

use std::time::{Duration, Instant};

use kafka_common::{
    a_day_and_a_half, generate_records, last_event_time, message_count, payloads,
    round_robin, sentinels, Expected, Feed, Outgoing, Producer, Received, Settings,
    Workspace, Written,
};
use trailspike::generate::{GenerateArgs, GenerateSummary};

/// Longest a `run --stop-at-end` may take on a busy 2-core machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for the pipeline to get somewhere.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest a clean stop may take (the config's shutdown_timeout is 30 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(45);

/// Three days of a few hundred identities: tens of thousands of records,
/// dozens of alerts.
fn three_days(seed: u64) -> GenerateArgs {
    GenerateArgs {
        seed,
        hours: 72,
        arns: 300,
        rate_per_hour: 400.0,
        spikes: 6,
        ..GenerateArgs::default()
    }
}

/// The records spread over `partitions` in turn, then a sentinel on each
/// partition so that every window of the records closes.
fn with_sentinels(records: &[Vec<u8>], partitions: &[i32]) -> Vec<Outgoing> {
    let mut messages = round_robin(records, partitions);
    messages.extend(sentinels(last_event_time(records), partitions));
    messages
}

/// Each injected spike is among the expected alerts: the comparison is
/// not between two empty sets.
fn assert_spikes_expected(expected: &Expected, summary: &GenerateSummary) {
    assert!(!summary.spikes.is_empty(), "the generator injected spikes");
    for spike in &summary.spikes {
        let id = trailspike::alert::alert_id(&spike.arn, spike.window_start_unix);
        assert!(
            expected.alerts.contains_key(&id),
            "replay alerts on injected spike {spike:?}"
        );
    }
}

fn report(test: &str, started: Instant, expected: &Expected) {
    eprintln!(
        "{test}: {} alerts, {} baselines, {:.1}s",
        expected.alerts.len(),
        expected.baselines.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn alerts_and_baselines_equal_replay_of_the_same_records() {
    let started = Instant::now();
    let settings = Settings::default();
    let mut workspace = Workspace::new("end_to_end", 3, &settings);
    let (records, summary) = generate_records(&three_days(1));
    let messages = with_sentinels(&records, &[0, 1, 2]);
    Producer::new(&workspace.input).send(&messages);
    let expected = Expected::replay(&payloads(&messages), &settings.replay_config());
    assert_spikes_expected(&expected, &summary);

    workspace.run_to_end(RUN_TIMEOUT);

    expected.assert_workspace(&workspace);
    assert!(
        workspace.read_dead_letters().is_empty(),
        "generated records are all good input"
    );
    report("end to end", started, &expected);
}

/// A message that must reach the dead-letter topic, and how.
struct BadInput {
    /// The message as produced.
    message: Outgoing,
    reason: &'static str,
    /// The dead letter's payload: the message, or one batched record.
    dead_letter: Vec<u8>,
    record_index: Option<usize>,
}

impl BadInput {
    fn whole(payload: &[u8], reason: &'static str) -> BadInput {
        BadInput {
            message: Outgoing::to_partition(0, payload),
            reason,
            dead_letter: payload.to_vec(),
            record_index: None,
        }
    }
}

const FUTURE_ARN: &str = "arn:aws:iam::999999999999:user/from-the-future";

/// One of each kind of bad input that is a whole message; `at` is the
/// event time of the records around them.
fn bad_messages(at: i64) -> Vec<BadInput> {
    let time = trailspike::alert::rfc3339(at);
    let future = serde_json::json!({
        "eventTime": trailspike::alert::rfc3339(at + 86_400),
        "eventType": "AwsApiCall",
        "eventName": "GetObject",
        "userIdentity": {"type": "IAMUser", "arn": FUTURE_ARN},
    })
    .to_string();
    let mut future_message = BadInput::whole(future.as_bytes(), "future_skew");
    // The message time is the records' own time: a day ahead of it is far
    // in the future for the message, though long past for the clock.
    future_message.message.timestamp_ms = Some(at * 1000);
    vec![
        BadInput::whole(
            format!(r#"{{"eventTime":"{time}","eventType":"AwsApiCall","#).as_bytes(),
            "invalid_json",
        ),
        BadInput::whole(b"null", "not_an_object"),
        BadInput::whole(
            format!(
                r#"{{"eventTime":"{time}","eventType":"AwsApiCall","eventName":"GetObject","userIdentity":{{"arn":42}}}}"#
            )
            .as_bytes(),
            "wrong_type",
        ),
        BadInput::whole(
            br#"{"eventType":"AwsApiCall","eventName":"GetObject","userIdentity":{"arn":"arn:aws:iam::123456789012:user/timeless"}}"#,
            "missing_event_time",
        ),
        future_message,
    ]
}

/// A `{"Records": [...]}` body of two good records around a bad one.
fn batch_around_bad_record(first: &[u8], second: &[u8]) -> BadInput {
    let bad_record = r#"{"eventTime":"yesterday","eventType":"AwsApiCall","eventName":"GetObject","userIdentity":{"arn":"arn:aws:iam::123456789012:user/batched"}}"#;
    // Spaces around the records: the dead letter must be the record's
    // exact bytes, not the text between the commas.
    let batch = format!(
        "{{\"Records\": [ {} ,  {bad_record} , {} ]}}",
        String::from_utf8_lossy(first),
        String::from_utf8_lossy(second)
    );
    BadInput {
        message: Outgoing::to_partition(0, batch),
        reason: "bad_event_time",
        dead_letter: bad_record.as_bytes().to_vec(),
        record_index: Some(1),
    }
}

/// Good records with bad input among them, as produced, and the good
/// records alone, as replay reads them.
struct MixedInput {
    messages: Vec<Outgoing>,
    /// What each of `messages` is, when it is bad input.
    bad: Vec<Option<BadInput>>,
    good: Vec<Vec<u8>>,
}

impl MixedInput {
    /// Adds a message on the next partition of 0, 1 and 2.
    fn push(&mut self, mut message: Outgoing, bad: Option<BadInput>) {
        message.partition = Some((self.messages.len() % 3) as i32);
        self.messages.push(message);
        self.bad.push(bad);
    }
}

/// Spreads the bad messages through `records`, and puts the batch in the
/// middle in place of the two good records it carries. Messages go to
/// partitions 0, 1 and 2 in turn; sentinels end each partition.
fn mix_in_bad_input(records: &[Vec<u8>]) -> MixedInput {
    let at = last_event_time(&records[..records.len() / 2]);
    let mut singles = bad_messages(at).into_iter();
    let every = records.len() / 6;
    let batch_at = records.len() / 2 + every / 2;
    let mut mixed = MixedInput {
        messages: Vec::new(),
        bad: Vec::new(),
        good: records.to_vec(),
    };
    for (i, record) in records.iter().enumerate() {
        if i > 0 && i % every == 0 {
            if let Some(input) = singles.next() {
                mixed.push(input.message.clone(), Some(input));
            }
        }
        if i == batch_at {
            let batch = batch_around_bad_record(record, &records[i + 1]);
            mixed.push(batch.message.clone(), Some(batch));
        } else if i != batch_at + 1 {
            mixed.push(Outgoing::to_partition(0, record.clone()), None);
        }
    }
    assert!(singles.next().is_none(), "every bad message placed");
    for sentinel in sentinels(last_event_time(records), &[0, 1, 2]) {
        mixed.good.push(sentinel.payload.clone());
        mixed.messages.push(sentinel);
        mixed.bad.push(None);
    }
    mixed
}

#[test]
fn bad_input_is_dead_lettered_with_its_origin_and_good_records_still_count() {
    let started = Instant::now();
    let settings = Settings::default();
    let mut workspace = Workspace::new("dead_letters", 3, &settings);
    let (records, summary) = generate_records(&a_day_and_a_half(2));
    let input = mix_in_bad_input(&records);
    let written = Producer::new(&workspace.input).send(&input.messages);
    let expected = Expected::replay(&input.good, &settings.replay_config());
    assert_spikes_expected(&expected, &summary);

    workspace.run_to_end(RUN_TIMEOUT);

    let dead_letters = workspace.read_dead_letters();
    let bad: Vec<(&BadInput, Written)> = input
        .bad
        .iter()
        .zip(written)
        .filter_map(|(bad, at)| bad.as_ref().map(|bad| (bad, at)))
        .collect();
    assert_eq!(
        dead_letters.len(),
        bad.len(),
        "one dead letter per bad input: {:#?}",
        dead_letters
            .iter()
            .map(|d| (d.header("trailspike.reason"), d.payload_str()))
            .collect::<Vec<_>>()
    );
    for (input, from) in bad {
        assert_dead_letter(&dead_letters, input, from, &workspace.input);
    }
    expected.assert_alerts(&workspace.read_alerts());
    let baselines = workspace.exported_baselines();
    assert!(
        !baselines.contains_key(FUTURE_ARN),
        "the future record was not counted"
    );
    expected.assert_baselines(&baselines);
    report("dead letters", started, &expected);
}

fn assert_dead_letter(
    dead_letters: &[Received],
    input: &BadInput,
    from: Written,
    topic: &str,
) {
    let found: Vec<&Received> = dead_letters
        .iter()
        .filter(|d| d.payload == input.dead_letter)
        .collect();
    let shown = String::from_utf8_lossy(&input.dead_letter);
    assert_eq!(found.len(), 1, "exactly one dead letter carries {shown}");
    let letter = found[0];
    assert_eq!(
        letter.header("trailspike.reason"),
        Some(input.reason),
        "{shown}"
    );
    assert!(
        letter
            .header("trailspike.detail")
            .is_some_and(|d| !d.is_empty()),
        "{shown} has a detail"
    );
    assert_eq!(letter.header("trailspike.source.topic"), Some(topic));
    assert_eq!(
        letter.header("trailspike.source.partition"),
        Some(from.partition.to_string().as_str()),
        "{shown}"
    );
    assert_eq!(
        letter.header("trailspike.source.offset"),
        Some(from.offset.to_string().as_str()),
        "{shown}"
    );
    assert_eq!(
        letter.header("trailspike.source.record_index"),
        input.record_index.map(|i| i.to_string()).as_deref(),
        "{shown}"
    );
}

/// Settings for the crash tests: frequent checkpoints, so that several
/// land between two kills.
fn crash_settings() -> Settings {
    Settings {
        checkpoint_interval: "200ms".into(),
        ..Settings::default()
    }
}

/// A crash test's input in parts, each produced while one run of the
/// pipeline consumes it, and the sentinels, produced only for the last
/// run: a stop before them always lands mid-stream.
struct CrashInput {
    parts: std::vec::IntoIter<Vec<Outgoing>>,
    sentinels: Vec<Outgoing>,
    expected: Expected,
    total: i64,
}

impl CrashInput {
    fn new(seed: u64, settings: &Settings, parts: usize) -> CrashInput {
        let (records, summary) = generate_records(&three_days(seed));
        let messages = with_sentinels(&records, &[0, 1, 2]);
        let expected = Expected::replay(&payloads(&messages), &settings.replay_config());
        assert_spikes_expected(&expected, &summary);
        let (data, sentinels) = messages.split_at(records.len());
        let parts: Vec<Vec<Outgoing>> = data
            .chunks(data.len().div_ceil(parts))
            .map(<[Outgoing]>::to_vec)
            .collect();
        CrashInput {
            parts: parts.into_iter(),
            sentinels: sentinels.to_vec(),
            expected,
            total: messages.len() as i64,
        }
    }

    /// Starts producing the next part in small steps, so that a pipeline
    /// running meanwhile is busy with it rather than done with it.
    fn feed_next(&mut self, workspace: &Workspace) -> Feed {
        let part = self.parts.next().expect("a part left to feed");
        let step = part.len() / 10;
        Feed::start(&workspace.input, part, step, Duration::from_millis(250))
    }

    /// Produces whatever is left, sentinels last.
    fn produce_rest(&mut self, workspace: &Workspace) {
        let mut rest: Vec<Outgoing> = self.parts.by_ref().flatten().collect();
        rest.append(&mut self.sentinels);
        Producer::new(&workspace.input).send(&rest);
    }
}

/// The "outbox recovered" lines of every run's log, to show in the
/// output what the restarts found.
fn outbox_recoveries(workspace: &Workspace) -> Vec<String> {
    workspace
        .logs()
        .lines()
        .filter(|line| line.contains("outbox recovered"))
        .map(str::to_string)
        .collect()
}

#[test]
fn sigterm_mid_stream_then_restart_loses_and_repeats_nothing() {
    let started = Instant::now();
    let settings = crash_settings();
    let mut workspace = Workspace::new("sigterm", 3, &settings);
    let mut input = CrashInput::new(3, &settings, 2);
    let offsets = workspace.offsets();

    let feed = input.feed_next(&workspace);
    let mut process = workspace.start(false);
    process.wait_until(
        "a quarter of the input is consumed",
        PROGRESS_TIMEOUT,
        || offsets.total() >= input.total / 4,
    );
    process.terminate();
    let status = process.wait(STOP_TIMEOUT);
    assert!(
        status.success(),
        "SIGTERM ends trailspike with 0, not {status}"
    );
    let stopped_at = offsets.total();
    feed.finish();
    input.produce_rest(&workspace);
    workspace.run_to_end(RUN_TIMEOUT);

    input.expected.assert_workspace(&workspace);
    eprintln!(
        "sigterm: stopped at {stopped_at} of {} messages",
        input.total
    );
    report("sigterm", started, &input.expected);
}

/// When a SIGKILL lands, counted from the moment the process started.
#[derive(Debug, Clone, Copy)]
enum KillWhen {
    /// Once the group's committed offsets have advanced by this many
    /// messages: checkpoints happened since the start.
    Consumed(i64),
    /// As soon as one more alert is on the alerts topic: most likely
    /// before its acknowledgement is durable, so the restart has to read
    /// it back instead of sending it again.
    AlertProduced,
}

#[test]
fn sigkill_mid_stream_three_times_loses_and_repeats_nothing() {
    let started = Instant::now();
    let settings = crash_settings();
    let mut workspace = Workspace::new("sigkill", 3, &settings);
    let mut input = CrashInput::new(4, &settings, 4);
    let offsets = workspace.offsets();
    let alerts_topic = workspace.alerts.clone();

    let step = input.total / 8;
    let kills = [
        KillWhen::Consumed(step),
        KillWhen::Consumed(step),
        // Late enough in event time for alerts to be due.
        KillWhen::AlertProduced,
    ];
    for kill in kills {
        let (consumed, alerts) = (offsets.total(), message_count(&alerts_topic));
        let feed = input.feed_next(&workspace);
        let mut process = workspace.start(false);
        process.wait_until(&format!("{kill:?}"), PROGRESS_TIMEOUT, || match kill {
            KillWhen::Consumed(more) => offsets.total() >= consumed + more,
            KillWhen::AlertProduced => message_count(&alerts_topic) > alerts,
        });
        process.kill();
        feed.finish();
    }
    input.produce_rest(&workspace);
    workspace.run_to_end(RUN_TIMEOUT);

    input.expected.assert_workspace(&workspace);
    for line in outbox_recoveries(&workspace) {
        eprintln!("sigkill: {line}");
    }
    report("sigkill", started, &input.expected);
}

#[test]
fn disordered_records_and_an_idle_partition_still_equal_replay() {
    let started = Instant::now();
    let settings = Settings {
        detection: "idle_timeout = \"2s\"".into(),
        ..Settings::default()
    };
    // Partition 3 never receives anything.
    let mut workspace = Workspace::new("idle_partition", 4, &settings);
    let (records, summary) = generate_records(&GenerateArgs {
        // Out of order by up to 10 minutes: within the 15 allowed.
        disorder: 0.2,
        disorder_secs: 600,
        ..three_days(5)
    });
    let messages = with_sentinels(&records, &[0, 1, 2]);
    Producer::new(&workspace.input).send(&messages);
    let expected = Expected::replay(&payloads(&messages), &settings.replay_config());
    assert_spikes_expected(&expected, &summary);
    let total = messages.len() as i64;

    // Plain `run`: the windows must close because partition 3 goes idle,
    // not because the process stops.
    let offsets = workspace.offsets();
    let alerts_topic = workspace.alerts.clone();
    let mut process = workspace.start(false);
    process.wait_until("the whole input is consumed", PROGRESS_TIMEOUT, || {
        offsets.total() >= total
    });
    process.wait_until(
        &format!("{} alerts are on the topic", expected.alerts.len()),
        PROGRESS_TIMEOUT,
        || message_count(&alerts_topic) >= expected.alerts.len() as i64,
    );
    process.terminate();
    let status = process.wait(STOP_TIMEOUT);
    assert!(
        status.success(),
        "SIGTERM ends trailspike with 0, not {status}"
    );

    expected.assert_workspace(&workspace);
    report("idle partition", started, &expected);
}

#[test]
#[ignore = "bug: run --stop-at-end stops before an empty partition goes idle, \
            so it closes no window at all (0 alerts where replay has them)"]
fn stop_at_end_with_an_empty_partition_still_closes_the_windows() {
    let started = Instant::now();
    // The default idle_timeout (1m) outlasts reading this input.
    let settings = Settings::default();
    let mut workspace = Workspace::new("stop_at_end_empty_partition", 4, &settings);
    let (records, summary) = generate_records(&a_day_and_a_half(6));
    let messages = with_sentinels(&records, &[0, 1, 2]);
    Producer::new(&workspace.input).send(&messages);
    let expected = Expected::replay(&payloads(&messages), &settings.replay_config());
    assert_spikes_expected(&expected, &summary);

    // Every partition is read to its end: the three with data up to their
    // sentinels, the fourth is empty. Nothing more can arrive that the
    // empty partition could be waiting for.
    workspace.run_to_end(RUN_TIMEOUT);

    expected.assert_workspace(&workspace);
    report("stop at end, empty partition", started, &expected);
}

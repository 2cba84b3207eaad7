//! Helpers for the tests that run `trailspike` against a real Kafka broker.
//!
//! The broker is found only through `TRAILSPIKE_TEST_BOOTSTRAP`, which
//! `scripts/test` sets after starting a throwaway broker. A test that
//! needs the broker and finds the variable unset fails with instructions;
//! it never skips, so a green run always means the broker was there.
//!
//! - [`Workspace`]: one test's topics, consumer group, state directory,
//!   config file and process logs, all unique to the test run;
//! - [`Producer`], [`read_topic`], [`OffsetWatch`]: the broker side;
//! - [`Trailspike`]: the binary as a child process (SIGTERM, SIGKILL,
//!   waiting for its exit or for a condition while it runs);
//! - [`Expected`]: what the offline replay computes from the same
//!   records, and the comparisons of alerts and baselines against it.
//!
//! Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Offset;
use trailspike::alert::Alert;
use trailspike::config::Config;
use trailspike::generate::{generate, GenerateArgs, GenerateSummary};
use trailspike::metrics::Metrics;
use trailspike::replay;
use trailspike::store::StateStore;

/// The variable that names the broker, `host:port`.
pub const BOOTSTRAP_VAR: &str = "TRAILSPIKE_TEST_BOOTSTRAP";

/// Longest wait for one broker request (metadata, topic creation).
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two looks at a condition that is polled.
const POLL_PAUSE: Duration = Duration::from_millis(50);

thread_local! {
    /// A broker of the test's own that replaces the shared one on this
    /// thread (see [`use_broker`]).
    static OWN_BROKER: std::cell::RefCell<Option<String>> =
        const { std::cell::RefCell::new(None) };
}

/// While the guard lives, every helper called on this thread (topics,
/// producers, readers, offset watches, the config a [`Workspace`] writes)
/// talks to `bootstrap` instead of `TRAILSPIKE_TEST_BOOTSTRAP`: for tests
/// that stop and restart a broker of their own.
pub fn use_broker(bootstrap: &str) -> OwnBrokerGuard {
    OWN_BROKER.with(|own| *own.borrow_mut() = Some(bootstrap.to_string()));
    OwnBrokerGuard(())
}

/// Returns this thread to the shared broker when dropped.
pub struct OwnBrokerGuard(());

impl Drop for OwnBrokerGuard {
    fn drop(&mut self) {
        OWN_BROKER.with(|own| own.borrow_mut().take());
    }
}

/// The broker's bootstrap address. Panics with instructions when
/// `TRAILSPIKE_TEST_BOOTSTRAP` is unset: these tests need a real broker.
pub fn bootstrap() -> String {
    if let Some(own) = OWN_BROKER.with(|own| own.borrow().clone()) {
        return own;
    }
    match std::env::var(BOOTSTRAP_VAR) {
        Ok(servers) if !servers.trim().is_empty() => servers,
        _ => panic!(
            "{BOOTSTRAP_VAR} is not set, and this test needs a real Kafka broker.\n\
             Run the whole suite with `scripts/test`, which starts one, or start one \
             yourself:\n\
             \n    eval \"$(bash scripts/kafka/kafka start)\"\n    \
             cargo test --test <this file>\n    \
             bash scripts/kafka/kafka stop --dir \"$TRAILSPIKE_KAFKA_DIR\"\n"
        ),
    }
}

fn client_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap());
    config
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime")
        .block_on(future)
}

/// Polls `done` until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(POLL_PAUSE);
    }
}

// ------------------------------------------------------------ topics

/// Creates topics with the given partition counts (replication 1) and
/// waits until the broker's metadata shows every partition.
pub fn create_topics(topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = client_config()
        .create()
        .unwrap_or_else(|e| panic!("admin client for {}: {e}", bootstrap()));
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|&(name, partitions)| {
            NewTopic::new(name, partitions, TopicReplication::Fixed(1))
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(BROKER_TIMEOUT));
    let results = block_on(admin.create_topics(&new, &options))
        .unwrap_or_else(|e| panic!("creating topics {topics:?}: {e}"));
    for result in results {
        if let Err((name, code)) = result {
            panic!("creating topic {name}: {code:?}");
        }
    }
    let consumer = metadata_client();
    for &(name, partitions) in topics {
        wait_until(
            &format!("topic {name} shows {partitions} partitions"),
            BROKER_TIMEOUT,
            || partition_ids(&consumer, name).len() == partitions as usize,
        );
    }
}

fn metadata_client() -> BaseConsumer {
    client_config()
        .set("group.id", format!("trailspike-test-meta-{}", suffix()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a metadata client")
}

/// The partitions of `topic` that have a leader, or none while the topic
/// is unknown.
fn partition_ids(consumer: &BaseConsumer, topic: &str) -> Vec<i32> {
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), BROKER_TIMEOUT) else {
        return Vec::new();
    };
    metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions())
        .filter(|p| p.leader() >= 0 && p.error().is_none())
        .map(|p| p.id())
        .collect()
}

/// Low and high watermark of every partition of `topic`.
pub fn watermarks(topic: &str) -> BTreeMap<i32, (i64, i64)> {
    watermarks_with(&metadata_client(), topic)
}

fn watermarks_with(consumer: &BaseConsumer, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    partition_ids(consumer, topic)
        .into_iter()
        .map(|partition| {
            let marks = consumer
                .fetch_watermarks(topic, partition, BROKER_TIMEOUT)
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{partition}: {e}"));
            (partition, marks)
        })
        .collect()
}

/// Messages in `topic` (the sum of high watermarks; topics here are never
/// truncated).
pub fn message_count(topic: &str) -> i64 {
    watermarks(topic).values().map(|&(_, high)| high).sum()
}

fn suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

// ------------------------------------------------------------ producing

/// One message to produce, without a key.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `None` lets the producer's partitioner choose.
    pub partition: Option<i32>,
    pub payload: Vec<u8>,
    /// Message timestamp in milliseconds; the producer's clock if `None`.
    pub timestamp_ms: Option<i64>,
}

impl Outgoing {
    pub fn to_partition(partition: i32, payload: impl Into<Vec<u8>>) -> Outgoing {
        Outgoing {
            partition: Some(partition),
            payload: payload.into(),
            timestamp_ms: None,
        }
    }
}

/// Spreads `payloads` over `partitions` in turn, in order.
pub fn round_robin(payloads: &[Vec<u8>], partitions: &[i32]) -> Vec<Outgoing> {
    payloads
        .iter()
        .zip(partitions.iter().cycle())
        .map(|(payload, &partition)| Outgoing::to_partition(partition, payload.clone()))
        .collect()
}

/// Where the broker wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Written {
    pub partition: i32,
    pub offset: i64,
}

/// An idempotent producer to one topic: order within a partition is kept
/// even across internal retries.
pub struct Producer {
    producer: FutureProducer,
    topic: String,
}

impl Producer {
    pub fn new(topic: &str) -> Producer {
        let producer = client_config()
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap_or_else(|e| panic!("producer to {topic}: {e}"));
        Producer {
            producer,
            topic: topic.to_string(),
        }
    }

    /// Produces `messages` and waits until the broker has acknowledged all
    /// of them; returns where each was written, in the same order.
    pub fn send(&self, messages: &[Outgoing]) -> Vec<Written> {
        block_on(async {
            let mut pending = Vec::with_capacity(messages.len());
            for message in messages {
                let mut record =
                    FutureRecord::<(), [u8]>::to(&self.topic).payload(&message.payload);
                record.partition = message.partition;
                record.timestamp = message.timestamp_ms;
                loop {
                    match self.producer.send_result(record) {
                        Ok(delivery) => {
                            pending.push(delivery);
                            break;
                        }
                        Err((
                            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                            back,
                        )) => {
                            // Deliveries are handled on librdkafka's
                            // threads; the queue drains while we pause.
                            record = back;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err((error, _)) => {
                            panic!("producing to {}: {error}", self.topic)
                        }
                    }
                }
            }
            let mut written = Vec::with_capacity(pending.len());
            for delivery in pending {
                match delivery.await {
                    Ok(Ok(d)) => written.push(Written {
                        partition: d.partition,
                        offset: d.offset,
                    }),
                    Ok(Err((error, _))) => panic!("producing to {}: {error}", self.topic),
                    Err(_) => panic!("producer to {} dropped a delivery", self.topic),
                }
            }
            written
        })
    }
}

/// Produces messages in chunks on a background thread, pausing between
/// chunks, so that a consumer started meanwhile is always mid-stream.
pub struct Feed {
    thread: std::thread::JoinHandle<()>,
}

impl Feed {
    pub fn start(
        topic: &str,
        messages: Vec<Outgoing>,
        chunk: usize,
        pause: Duration,
    ) -> Feed {
        let producer = Producer::new(topic);
        let thread = std::thread::spawn(move || {
            for (i, chunk) in messages.chunks(chunk).enumerate() {
                if i > 0 {
                    std::thread::sleep(pause);
                }
                producer.send(chunk);
            }
        });
        Feed { thread }
    }

    /// Waits until every message is acknowledged by the broker.
    pub fn finish(self) {
        if let Err(panic) = self.thread.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

/// The payloads of `messages`, in order.
pub fn payloads(messages: &[Outgoing]) -> Vec<Vec<u8>> {
    messages.iter().map(|m| m.payload.clone()).collect()
}

// ------------------------------------------------------------ reading

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Received {
    /// The first header called `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .map(|value| std::str::from_utf8(value).expect("a UTF-8 header"))
    }

    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .map(|key| std::str::from_utf8(key).expect("a UTF-8 key"))
    }

    pub fn payload_str(&self) -> &str {
        std::str::from_utf8(&self.payload).expect("a UTF-8 payload")
    }
}

/// Every message in `topic` now, ordered by partition and offset.
pub fn read_topic(topic: &str) -> Vec<Received> {
    let consumer: BaseConsumer = client_config()
        .set("group.id", format!("trailspike-test-reader-{}", suffix()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a reader");
    let mut remaining = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for (partition, (low, high)) in watermarks_with(&consumer, topic) {
        if high > low {
            remaining.insert(partition, high);
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(low))
                .expect("a valid offset");
        }
    }
    consumer.assign(&assignment).expect("assigning partitions");
    let mut received = Vec::new();
    let deadline = Instant::now() + BROKER_TIMEOUT;
    while !remaining.is_empty() {
        assert!(
            Instant::now() < deadline,
            "reading {topic}: partitions {remaining:?} not read to their end"
        );
        let message = match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            Some(Ok(message)) => message,
        };
        if remaining
            .get(&message.partition())
            .is_some_and(|&end| message.offset() + 1 >= end)
        {
            remaining.remove(&message.partition());
        }
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        received.push(Received {
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    received.sort_by_key(|m| (m.partition, m.offset));
    received
}

/// Every message of `topic` that committed transactions (or no
/// transaction) wrote, ordered by partition and offset: what a
/// `read_committed` consumer, such as a SIEM reading a scaled-out
/// deployment's alerts, sees. Each partition is read to its end for such a
/// reader (transaction markers take offsets, so the last message's offset
/// plus one can fall short of the high watermark).
pub fn read_topic_committed(topic: &str) -> Vec<Received> {
    let consumer: BaseConsumer = client_config()
        .set("group.id", format!("trailspike-test-reader-{}", suffix()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .expect("a reader");
    let mut assignment = TopicPartitionList::new();
    for (partition, (low, high)) in watermarks_with(&consumer, topic) {
        if high > low {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(low))
                .expect("a valid offset");
        }
    }
    let mut remaining: std::collections::BTreeSet<i32> = assignment
        .elements()
        .iter()
        .map(|element| element.partition())
        .collect();
    if remaining.is_empty() {
        return Vec::new();
    }
    consumer.assign(&assignment).expect("assigning partitions");
    let mut received = Vec::new();
    let deadline = Instant::now() + BROKER_TIMEOUT;
    while !remaining.is_empty() {
        assert!(
            Instant::now() < deadline,
            "reading {topic} read_committed: partitions {remaining:?} not at their end"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                remaining.remove(&partition);
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            Some(Ok(message)) => received.push(Received {
                partition: message.partition(),
                offset: message.offset(),
                timestamp_ms: message.timestamp().to_millis(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().unwrap_or_default().to_vec(),
                headers: Vec::new(),
            }),
        }
    }
    received.sort_by_key(|m| (m.partition, m.offset));
    received
}

/// Reads a consumer group's committed offsets without joining the group.
pub struct OffsetWatch {
    consumer: BaseConsumer,
    topic: String,
}

impl OffsetWatch {
    pub fn new(group: &str, topic: &str) -> OffsetWatch {
        let consumer = client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("an offset watcher");
        OffsetWatch {
            consumer,
            topic: topic.to_string(),
        }
    }

    /// The committed offset of each partition that has one.
    pub fn committed(&self) -> BTreeMap<i32, i64> {
        let mut query = TopicPartitionList::new();
        for partition in partition_ids(&self.consumer, &self.topic) {
            query.add_partition(&self.topic, partition);
        }
        let Ok(found) = self.consumer.committed_offsets(query, BROKER_TIMEOUT) else {
            return BTreeMap::new();
        };
        found
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some((e.partition(), offset)),
                _ => None,
            })
            .collect()
    }

    /// Messages the group has committed past, over all partitions.
    pub fn total(&self) -> i64 {
        self.committed().values().sum()
    }
}

// ------------------------------------------------------------ the binary

/// `trailspike` running as a child process, its stderr in a log file.
/// Dropping it kills the process if it still runs.
pub struct Trailspike {
    child: Child,
    log: PathBuf,
}

impl Trailspike {
    /// `trailspike --config CONFIG run [--stop-at-end]`.
    pub fn start(config: &Path, log: &Path, stop_at_end: bool) -> Trailspike {
        let mut args = vec!["run"];
        if stop_at_end {
            args.push("--stop-at-end");
        }
        let stderr = File::create(log).expect("a log file");
        let child = binary()
            .arg("--config")
            .arg(config)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting trailspike");
        Trailspike {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks for a clean stop, as an orchestrator does.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// SIGKILL: the process dies wherever it is, and is reaped.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaping the killed process");
    }

    /// Waits for the process to exit by itself.
    pub fn wait(mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "trailspike did not exit within {timeout:?}; its log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL_PAUSE);
        }
    }

    /// Waits for `done` while the process runs; panics, with the log, if
    /// it exits first or `timeout` passes.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut() -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done() {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "trailspike exited ({status}) while waiting until {what}; its log:\n{}",
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting until {what}; log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL_PAUSE);
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log(), 60)
    }

    /// Whether the process has not exited yet.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Trailspike {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `trailspike` binary, with an environment that cannot change what
/// the test asked for: no inherited config overrides or log filter.
fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trailspike"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let config = key.starts_with("TRAILSPIKE_")
            && (key.contains("__") || key == "TRAILSPIKE_CONFIG");
        if config || key == "RUST_LOG" {
            command.env_remove(&*key);
        }
    }
    // Plain text logs, for people and for tests that search them.
    command.env("NO_COLOR", "1");
    command
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ------------------------------------------------------------ one test

/// What a test changes in trailspike's config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Lines of the `[detection]` table, e.g. `idle_timeout = "2s"`; the
    /// replay that computes the expected results uses them too.
    pub detection: String,
    pub checkpoint_interval: String,
    /// `kafka.shutdown_timeout`.
    pub shutdown_timeout: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            detection: String::new(),
            checkpoint_interval: "1s".into(),
            shutdown_timeout: "30s".into(),
        }
    }
}

impl Settings {
    /// The same detection settings for `replay`.
    pub fn replay_config(&self) -> Config {
        Config::from_toml(&format!("[detection]\n{}\n", self.detection))
            .expect("valid detection settings")
    }
}

/// One test's topics, group, state and config, with names no other test
/// or run uses. On a failing test the directory (config, state, logs) is
/// kept and its path printed.
pub struct Workspace {
    pub input: String,
    pub alerts: String,
    pub dead_letter: String,
    pub group: String,
    pub state_dir: PathBuf,
    config_path: PathBuf,
    dir: tempfile::TempDir,
    runs: usize,
}

impl Workspace {
    /// Creates the input topic with `input_partitions`, alerts (two
    /// partitions, so read-back spans several) and dead letters, and
    /// writes the config file.
    pub fn new(test: &str, input_partitions: i32, settings: &Settings) -> Workspace {
        let prefix = format!("trailspike-test-{test}-{}", suffix());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{test}-"))
            .tempdir()
            .expect("a temp dir");
        let workspace = Workspace {
            input: format!("{prefix}-input"),
            alerts: format!("{prefix}-alerts"),
            dead_letter: format!("{prefix}-dead-letter"),
            group: prefix.clone(),
            state_dir: dir.path().join("state"),
            config_path: dir.path().join("trailspike.toml"),
            dir,
            runs: 0,
        };
        create_topics(&[
            (&workspace.input, input_partitions),
            (&workspace.alerts, 2),
            (&workspace.dead_letter, 1),
        ]);
        std::fs::write(&workspace.config_path, workspace.config_toml(settings))
            .expect("writing the config");
        workspace
    }

    fn config_toml(&self, settings: &Settings) -> String {
        let quote = |text: &str| toml::Value::from(text).to_string();
        format!(
            r#"[kafka]
bootstrap_servers = {bootstrap}
group_id = {group}
input_topic = {input}
alerts_topic = {alerts}
dead_letter_topic = {dead_letter}
shutdown_timeout = {shutdown_timeout}

[kafka.consumer_properties]
# A restart after SIGKILL joins the group once the dead member's session
# has expired; the broker's minimum keeps that wait short.
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"

[state]
dir = {state}
checkpoint_interval = {interval}

[metrics]
listen = "127.0.0.1:0"

[log]
format = "text"
level = "info"

[detection]
{detection}
"#,
            bootstrap = quote(&bootstrap()),
            group = quote(&self.group),
            input = quote(&self.input),
            alerts = quote(&self.alerts),
            dead_letter = quote(&self.dead_letter),
            state = quote(&self.state_dir.display().to_string()),
            interval = quote(&settings.checkpoint_interval),
            shutdown_timeout = quote(&settings.shutdown_timeout),
            detection = settings.detection,
        )
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Starts `trailspike run`, logging to `run-N.log` in the workspace.
    pub fn start(&mut self, stop_at_end: bool) -> Trailspike {
        self.runs += 1;
        let log = self.dir.path().join(format!("run-{}.log", self.runs));
        Trailspike::start(&self.config_path, &log, stop_at_end)
    }

    /// `run --stop-at-end` until it exits; panics unless it exits 0.
    pub fn run_to_end(&mut self, timeout: Duration) {
        let process = self.start(true);
        let log = process.log.clone();
        let status = process.wait(timeout);
        assert!(
            status.success(),
            "trailspike run --stop-at-end exited with {status}; its log:\n{}",
            tail(&std::fs::read_to_string(log).unwrap_or_default(), 60)
        );
    }

    /// Every run's log so far, oldest first.
    pub fn logs(&self) -> String {
        (1..=self.runs)
            .map(|run| {
                let log = self.dir.path().join(format!("run-{run}.log"));
                let text = std::fs::read_to_string(log).unwrap_or_default();
                format!("--- run {run}\n{text}")
            })
            .collect()
    }

    pub fn read_alerts(&self) -> Vec<Received> {
        read_topic(&self.alerts)
    }

    pub fn read_dead_letters(&self) -> Vec<Received> {
        read_topic(&self.dead_letter)
    }

    pub fn offsets(&self) -> OffsetWatch {
        OffsetWatch::new(&self.group, &self.input)
    }

    /// Writes the config of scaled-out instance `instance`: this
    /// workspace's config with a state directory of its own and
    /// `[scale_out]` on, with `partitions` partitions of the internal
    /// topics (replicated once: the test broker is one node).
    pub fn scaled_instance(&self, instance: usize, partitions: i32) -> ScaledInstance {
        let state_dir = self.dir.path().join(format!("state-{instance}"));
        let config_path = self.dir.path().join(format!("trailspike-{instance}.toml"));
        let quote =
            |path: &Path| toml::Value::from(path.display().to_string()).to_string();
        let base = std::fs::read_to_string(&self.config_path).expect("the config");
        let own_state = base.replace(
            &format!("dir = {}", quote(&self.state_dir)),
            &format!("dir = {}", quote(&state_dir)),
        );
        assert_ne!(own_state, base, "the config names the state directory");
        let config = format!(
            "{own_state}\n[scale_out]\nenabled = true\npartitions = {partitions}\n\
             replication_factor = 1\n"
        );
        std::fs::write(&config_path, config).expect("writing the config");
        ScaledInstance {
            instance,
            config_path,
            state_dir,
            log_dir: self.dir.path().to_path_buf(),
            runs: 0,
        }
    }

    /// Every baseline of a scaled-out deployment of this workspace's
    /// group, through `baseline export --from-kafka` (its changelog, as
    /// committed; while instances run).
    pub fn baselines_from_kafka(&self) -> Baselines {
        self.try_baselines_from_kafka().unwrap_or_else(|error| {
            panic!("baseline export --from-kafka failed: {error}")
        })
    }

    /// [`Workspace::baselines_from_kafka`], or why the export failed (no
    /// changelog yet, before the first instance has started).
    pub fn try_baselines_from_kafka(&self) -> Result<Baselines, String> {
        let output = binary()
            .arg("--config")
            .arg(&self.config_path)
            .args(["baseline", "export", "--from-kafka"])
            .output()
            .expect("running trailspike baseline export --from-kafka");
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        Ok(parse_baseline_csv(&output.stdout))
    }

    /// The baselines in the state directory, through
    /// `trailspike baseline export`. Only once no process holds the store.
    pub fn exported_baselines(&self) -> Baselines {
        exported_baselines_of(&self.state_dir)
    }
}

/// The baselines in `state_dir`, through `trailspike baseline export`.
/// Only once no process holds the store.
pub fn exported_baselines_of(state_dir: &Path) -> Baselines {
    let output = binary()
        .args(["baseline", "export", "--state"])
        .arg(state_dir)
        .output()
        .expect("running trailspike baseline export");
    assert!(
        output.status.success(),
        "baseline export failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_baseline_csv(&output.stdout)
}

/// What `trailspike baseline show --state STATE_DIR ARN` prints. Only
/// once no process holds the store.
pub fn baseline_shown(state_dir: &Path, arn: &str) -> String {
    let output = binary()
        .args(["baseline", "show", "--state"])
        .arg(state_dir)
        .arg(arn)
        .output()
        .expect("running trailspike baseline show");
    assert!(
        output.status.success(),
        "baseline show failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One scaled-out instance of a [`Workspace`]: its config and state
/// directory, kept across its runs, and a log per run.
pub struct ScaledInstance {
    pub instance: usize,
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    log_dir: PathBuf,
    runs: usize,
}

impl ScaledInstance {
    /// Starts `trailspike run`, logging to `instance-I-run-N.log`.
    pub fn start(&mut self) -> Trailspike {
        self.runs += 1;
        Trailspike::start(&self.config_path, &self.log_path(self.runs), false)
    }

    fn log_path(&self, run: usize) -> PathBuf {
        self.log_dir
            .join(format!("instance-{}-run-{run}.log", self.instance))
    }

    /// Every run's log so far, oldest first.
    pub fn logs(&self) -> String {
        (1..=self.runs)
            .map(|run| {
                let text =
                    std::fs::read_to_string(self.log_path(run)).unwrap_or_default();
                format!("--- instance {} run {run}\n{text}", self.instance)
            })
            .collect()
    }

    /// How many assignments this instance's runs logged that gave it
    /// partitions (of either stage).
    pub fn assignments(&self) -> usize {
        self.logs()
            .lines()
            .filter(|line| line.contains("partitions assigned"))
            .filter(|line| !line.contains("partitions=[]"))
            .count()
    }

    /// The last lines of every run's log.
    pub fn log_tail(&self) -> String {
        tail(&self.logs(), 40)
    }

    /// The partitions whose state this instance's runs restored, in order,
    /// from their `state restored` log lines.
    pub fn restored_partitions(&self) -> Vec<i32> {
        self.logs()
            .lines()
            .filter(|line| line.contains("state restored"))
            .filter_map(|line| {
                let after = line.split("partition=").nth(1)?;
                after.split_whitespace().next()?.parse().ok()
            })
            .collect()
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "kept config, state and logs of the failed test in {}",
                self.dir.path().display()
            );
        }
    }
}

// ------------------------------------------------------------ records

/// A small input that still has alerts: enough history for 16 data
/// points before the spikes.
pub fn a_day_and_a_half(seed: u64) -> GenerateArgs {
    GenerateArgs {
        seed,
        hours: 36,
        arns: 60,
        rate_per_hour: 300.0,
        spikes: 2,
        ..GenerateArgs::default()
    }
}

/// Generated CloudTrail records, one JSON text per element.
pub fn generate_records(args: &GenerateArgs) -> (Vec<Vec<u8>>, GenerateSummary) {
    let mut out = Vec::new();
    let summary = generate(args, &mut out).expect("generating records");
    let records = out
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    (records, summary)
}

/// The latest `eventTime` among `records`, in Unix seconds.
pub fn last_event_time(records: &[Vec<u8>]) -> i64 {
    #[derive(serde::Deserialize)]
    struct EventTime<'a> {
        #[serde(rename = "eventTime")]
        event_time: &'a str,
    }
    records
        .iter()
        .map(|record| {
            let time: EventTime<'_> =
                serde_json::from_slice(record).expect("a record with an eventTime");
            trailspike::parse::parse_event_time(time.event_time)
                .expect("an RFC 3339 time")
        })
        .max()
        .expect("at least one record")
}

/// A record that counts for nothing but moves its partition's watermark
/// to `event_time`: sent to every partition after the data, it lets
/// every window of the data close.
pub fn sentinel(event_time: i64) -> Vec<u8> {
    serde_json::json!({
        "eventTime": trailspike::alert::rfc3339(event_time),
        "eventType": "AwsServiceEvent",
    })
    .to_string()
    .into_bytes()
}

/// One [`sentinel`] per partition, two hours after `last_event_time`.
pub fn sentinels(last_event_time: i64, partitions: &[i32]) -> Vec<Outgoing> {
    partitions
        .iter()
        .map(|&p| Outgoing::to_partition(p, sentinel(last_event_time + 2 * 3600)))
        .collect()
}

// ------------------------------------------------------------ expectations

/// One row of `trailspike baseline export`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BaselineRow {
    pub latest_count: u64,
    pub num_data_points: u64,
    pub avg_api_calls: f64,
    pub stdev_api_calls: f64,
}

pub type Baselines = BTreeMap<String, BaselineRow>;

pub fn parse_baseline_csv(csv_bytes: &[u8]) -> Baselines {
    let mut reader = csv::Reader::from_reader(csv_bytes);
    let header = reader.headers().expect("a CSV header").clone();
    assert_eq!(
        header.iter().collect::<Vec<_>>(),
        [
            "arn",
            "latestCount",
            "numDataPoints",
            "avgApiCalls",
            "stdevApiCalls"
        ]
    );
    reader
        .deserialize::<(String, u64, u64, f64, f64)>()
        .map(|row| {
            let (arn, latest_count, num_data_points, avg, stdev) =
                row.expect("a baseline row");
            let row = BaselineRow {
                latest_count,
                num_data_points,
                avg_api_calls: avg,
                stdev_api_calls: stdev,
            };
            (arn, row)
        })
        .collect()
}

/// What the offline replay makes of the same records.
pub struct Expected {
    /// alertId to the alert's JSON.
    pub alerts: BTreeMap<String, String>,
    pub baselines: Baselines,
}

impl Expected {
    /// Replays `messages` (one JSON text each, in this order, as one
    /// input) with the library's replay, from an empty baseline.
    pub fn replay(messages: &[Vec<u8>], config: &Config) -> Expected {
        let mut file = tempfile::NamedTempFile::new().expect("a temp file");
        for message in messages {
            assert!(!message.contains(&b'\n'), "a message is one line");
            file.write_all(message).expect("writing replay input");
            file.write_all(b"\n").expect("writing replay input");
        }
        file.flush().expect("flushing replay input");
        let store = StateStore::temporary().expect("a temporary store");
        let mut alerts = BTreeMap::new();
        let mut on_alert = |alert: &Alert| {
            let previous = alerts.insert(alert.alert_id.clone(), alert.to_json());
            assert!(previous.is_none(), "replay repeats {}", alert.alert_id);
            Ok(())
        };
        let inputs = [file.path().to_path_buf()];
        let metrics = Arc::new(Metrics::new());
        let report = replay::run(&inputs, config, &store, metrics, &mut on_alert)
            .expect("replay runs");
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        let mut csv = Vec::new();
        store.export_csv(&mut csv).expect("exporting baselines");
        Expected {
            alerts,
            baselines: parse_baseline_csv(&csv),
        }
    }

    /// The alerts topic holds exactly these alerts, each once, keyed by
    /// its ARN, byte for byte as replay wrote them.
    pub fn assert_alerts(&self, on_topic: &[Received]) {
        let mut seen: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
        for message in on_topic {
            let alert: serde_json::Value =
                serde_json::from_slice(&message.payload).expect("an alert is JSON");
            let id = alert["alertId"].as_str().expect("an alertId").to_string();
            assert_eq!(
                message.key_str(),
                alert["user"].as_str(),
                "alert {id} is keyed by its ARN"
            );
            seen.entry(id).or_default().push(message);
        }
        let repeated: Vec<String> = seen
            .iter()
            .filter(|(_, copies)| copies.len() > 1)
            .map(|(id, copies)| {
                let at: Vec<String> = copies
                    .iter()
                    .map(|m| format!("{}@{}", m.partition, m.offset))
                    .collect();
                format!("{id} at {}", at.join(", "))
            })
            .collect();
        let missing: Vec<&String> = self
            .alerts
            .keys()
            .filter(|id| !seen.contains_key(*id))
            .collect();
        let unexpected: Vec<&String> = seen
            .keys()
            .filter(|id| !self.alerts.contains_key(*id))
            .collect();
        assert!(
            repeated.is_empty() && missing.is_empty() && unexpected.is_empty(),
            "alerts topic differs from replay ({} expected, {} on the topic):\n\
             repeated: {repeated:#?}\nmissing: {missing:#?}\nunexpected: {unexpected:#?}",
            self.alerts.len(),
            on_topic.len()
        );
        for (id, copies) in &seen {
            assert_eq!(
                copies[0].payload_str(),
                self.alerts[id],
                "alert {id} differs from replay's"
            );
        }
    }

    /// The same ARNs, equal counts, and averages and deviations equal to
    /// `1e-9` relative.
    pub fn assert_baselines(&self, actual: &Baselines) {
        assert_baselines_match(actual, &self.baselines, 1e-9);
    }

    /// Both of the above, on what `workspace`'s run left: the alerts
    /// topic and the baselines exported from its state.
    pub fn assert_workspace(&self, workspace: &Workspace) {
        self.assert_alerts(&workspace.read_alerts());
        self.assert_baselines(&workspace.exported_baselines());
    }
}

pub fn assert_baselines_match(actual: &Baselines, expected: &Baselines, relative: f64) {
    let differences = baseline_differences(actual, expected, relative);
    assert!(
        differences.is_empty(),
        "{} of {} baselines differ; first ones:\n{}",
        differences.len(),
        expected.len(),
        differences[..differences.len().min(10)].join("\n")
    );
}

/// How `actual` differs from `expected`: missing, unexpected and unequal
/// ARNs (averages and deviations to `relative`), one line each.
pub fn baseline_differences(
    actual: &Baselines,
    expected: &Baselines,
    relative: f64,
) -> Vec<String> {
    let close = |a: f64, b: f64| (a - b).abs() <= relative * a.abs().max(b.abs());
    let mut differences = Vec::new();
    for (arn, want) in expected {
        match actual.get(arn) {
            None => differences.push(format!("missing {arn}")),
            Some(got)
                if got.latest_count != want.latest_count
                    || got.num_data_points != want.num_data_points
                    || !close(got.avg_api_calls, want.avg_api_calls)
                    || !close(got.stdev_api_calls, want.stdev_api_calls) =>
            {
                differences.push(format!("{arn}: got {got:?}, want {want:?}"))
            }
            Some(_) => {}
        }
    }
    for arn in actual.keys().filter(|arn| !expected.contains_key(*arn)) {
        differences.push(format!("unexpected {arn}: {:?}", actual[arn]));
    }
    differences
}

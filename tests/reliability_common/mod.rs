//! Helpers for the reliability tests (`kafka_security`, `store_failures`,
//! `broker_faults`, `crash_soak`), beside the Kafka helpers of
//! `kafka_common`:
//!
//! - [`Process`]: `trailspike` as a child process started from any
//!   [`Command`] (own environment, own flags), its stderr in a file, with
//!   signals, waits on conditions and its metrics endpoint;
//! - [`http_get`], [`metric_sum`]: `/readyz` and `/metrics` without an
//!   HTTP client crate;
//! - [`Broker`]: a Kafka broker of a test's own, driven through
//!   `scripts/kafka/kafka` (start, stop and restart with its data, pause
//!   and resume), for faults that must not touch the shared broker;
//! - [`SaslListener`]: the shared broker's SASL_SSL listener, found
//!   through the variables `scripts/kafka/kafka start --sasl-ssl` prints.
//!
//! Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Pause between two looks at a polled condition.
pub const POLL_PAUSE: Duration = Duration::from_millis(100);

/// `trailspike` with an environment that only the test decides: no
/// inherited log filter, config file or `TRAILSPIKE_SECTION__KEY`
/// override, plain text logs.
pub fn trailspike() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trailspike"));
    for (name, _) in std::env::vars() {
        if name.starts_with("TRAILSPIKE_") && name.contains("__") {
            command.env_remove(name);
        }
    }
    command
        .env_remove("RUST_LOG")
        .env_remove("TRAILSPIKE_CONFIG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// Polls `done` until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(POLL_PAUSE);
    }
}

/// A child process whose stderr goes to a log file. Dropping it kills
/// the process if it still runs.
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with stdout discarded and stderr into `log`.
    pub fn spawn(mut command: Command, log: &Path) -> Process {
        let stderr = File::create(log).expect("creating a log file");
        let child = command
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        Process {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has not exited yet.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal by name (`TERM`, `KILL`, `STOP`...) with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// SIGKILL, and reaps the process.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        self.child.wait().expect("reaping a killed process");
    }

    /// Waits for the process to exit by itself; panics with its log after
    /// `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {timeout:?}; its log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(POLL_PAUSE);
        }
    }

    /// Waits until `done` holds while the process runs; panics, with the
    /// log, if it exits first or `timeout` passes.
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
                    "process exited ({status}) while waiting until {what}; its log:\n{}",
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting until {what}; its log:\n{}",
                self.log_tail()
            );
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
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Where `/metrics` and `/readyz` are served, from the log line that
    /// announces them (configs here listen on port 0).
    pub fn metrics_address(&mut self, timeout: Duration) -> SocketAddr {
        let mut found = None;
        let log = self.log.clone();
        self.wait_until("the metrics server is announced", timeout, || {
            found =
                metrics_address_in(&std::fs::read_to_string(&log).unwrap_or_default());
            found.is_some()
        });
        found.expect("an address")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The address in `serving /metrics ... address=HOST:PORT`.
fn metrics_address_in(log: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|line| line.contains("serving /metrics"))?;
    let at = line.find("address=")? + "address=".len();
    line[at..].split_whitespace().next()?.parse().ok()
}

/// `GET path` over HTTP/1.1: the status code and the body, or `None`
/// when nothing answers.
pub fn http_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_string());
    Some((status, body))
}

/// The sum of every sample of metric `name` (over all its labels) in
/// Prometheus text, or `None` when it has no sample.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += value;
        }
    }
    sum
}

/// A temporary directory for one test's files (configs, logs, state)
/// that is kept, and its path printed, when the test fails.
pub struct TestDir(tempfile::TempDir);

impl TestDir {
    pub fn new(test: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{test}-"))
            .tempdir()
            .expect("a temp dir");
        TestDir(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.disable_cleanup(true);
            eprintln!(
                "kept the failed test's files in {}",
                self.0.path().display()
            );
        }
    }
}

/// A TOML string literal.
pub fn toml_str(text: &str) -> String {
    toml::Value::from(text).to_string()
}

// ------------------------------------------------------------ brokers

/// `scripts/kafka/kafka` of this checkout.
pub fn kafka_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka/kafka")
}

/// Runs `command` to its end with no input; panics with its stderr when
/// it cannot start or fails. Returns its stdout.
pub fn run_checked(command: &mut Command) -> String {
    let shown = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {shown}: {e}"));
    assert!(
        output.status.success(),
        "{shown} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Runs `scripts/kafka/kafka ARGS`. Returns its stdout.
fn kafka_script_run(args: &[&str]) -> String {
    run_checked(Command::new("bash").arg(kafka_script()).args(args))
}

/// `export NAME=VALUE` lines as printed by `scripts/kafka/kafka start`.
fn parse_exports(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// A single-node broker of one test's own, in its own directory and on
/// its own ports; stopped and deleted when dropped.
pub struct Broker {
    dir: PathBuf,
    exports: BTreeMap<String, String>,
}

impl Broker {
    /// Starts a broker in `dir` (which must not exist yet or be empty)
    /// and waits until it answers.
    pub fn start(dir: &Path) -> Broker {
        let dir_text = dir.to_str().expect("a UTF-8 path");
        let exports = parse_exports(&kafka_script_run(&["start", "--dir", dir_text]));
        Broker {
            dir: dir.to_path_buf(),
            exports,
        }
    }

    /// The PLAINTEXT bootstrap address, `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> &str {
        &self.exports["TRAILSPIKE_TEST_BOOTSTRAP"]
    }

    fn dir_text(&self) -> &str {
        self.dir.to_str().expect("a UTF-8 path")
    }

    /// Stops the broker cleanly and keeps its data: its port is closed
    /// until [`Broker::restart`].
    pub fn stop_keeping_data(&self) {
        kafka_script_run(&["stop", "--dir", self.dir_text(), "--keep"]);
    }

    /// Starts the stopped broker again with its data, on the same ports.
    pub fn restart(&self) {
        kafka_script_run(&["restart", "--dir", self.dir_text()]);
    }

    /// SIGSTOP: connections stay open, nothing is answered.
    pub fn pause(&self) {
        kafka_script_run(&["pause", "--dir", self.dir_text()]);
    }

    /// SIGCONT after [`Broker::pause`].
    pub fn resume(&self) {
        kafka_script_run(&["resume", "--dir", self.dir_text()]);
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("broker.log")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(kafka_script())
            .args(["stop", "--dir", self.dir_text()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The shared broker's SASL_SSL listener (`scripts/kafka/kafka start
/// --sasl-ssl`, which `scripts/test` runs).
#[derive(Debug, Clone)]
pub struct SaslListener {
    pub bootstrap: String,
    pub ca_pem: String,
    pub mechanism: String,
    pub user: String,
    pub password: String,
}

impl SaslListener {
    /// Reads the listener from the environment. Panics with instructions
    /// when a variable is unset: these tests never skip.
    pub fn from_env() -> SaslListener {
        let var = |name: &str| match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => value,
            _ => panic!(
                "{name} is not set, and this test needs the test broker's SASL_SSL \
                 listener.\nRun the suite with `scripts/test`, which starts one, or:\n\
                 \n    eval \"$(bash scripts/kafka/kafka start --sasl-ssl)\"\n    \
                 cargo test --test <this file>\n    \
                 bash scripts/kafka/kafka stop --dir \"$TRAILSPIKE_KAFKA_DIR\"\n"
            ),
        };
        SaslListener {
            bootstrap: var("TRAILSPIKE_TEST_SASL_SSL_BOOTSTRAP"),
            ca_pem: var("TRAILSPIKE_TEST_CA_PEM"),
            mechanism: var("TRAILSPIKE_TEST_SASL_MECHANISM"),
            user: var("TRAILSPIKE_TEST_SASL_USER"),
            password: var("TRAILSPIKE_TEST_SASL_PASSWORD"),
        }
    }
}

/// Whether this process runs as root (mounting a tmpfs needs it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?.to_string();
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

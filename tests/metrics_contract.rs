//! The metric names that the Grafana dashboard and the Prometheus rules
//! use must exist in what `trailspike run` serves on `/metrics`, against
//! a real broker. A renamed or missing metric would otherwise show up as
//! an empty panel or an alert that can never fire.
//!
//! Needs `TRAILSPIKE_TEST_BOOTSTRAP` (scripts/test starts a broker and
//! sets it); without it the test fails with instructions.

mod kafka_common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_common::{
    generate_records, round_robin, Outgoing, Producer, Settings, Workspace,
};
use trailspike::generate::GenerateArgs;

/// Files whose metric names are the contract.
const USERS: [&str; 2] = [
    "dashboards/grafana/trailspike.json",
    "dashboards/prometheus/trailspike.rules.yml",
];
/// How long every name may take to appear: the partition gauges need
/// records consumed, the lag gauge a librdkafka statistics tick (5 s).
const APPEAR_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every `trailspike_*` and `process_*` name in the dashboard and rules
/// files: expressions, and the names their descriptions tell the on-call
/// to look at. Histogram series are reduced to their family.
fn referenced_names() -> BTreeSet<String> {
    let pattern = regex::Regex::new(r"\b(?:trailspike|process)_[a-z_]+\b")
        .expect("a valid pattern");
    let mut names = BTreeSet::new();
    for file in USERS {
        let text = std::fs::read_to_string(repo(file))
            .unwrap_or_else(|e| panic!("reading {file}: {e}"));
        for found in pattern.find_iter(&text) {
            names.insert(histogram_family(found.as_str()).to_string());
        }
    }
    names
}

fn histogram_family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// Metric families in a Prometheus text exposition: the `# TYPE` names
/// and the sample names, histogram samples reduced to their family.
fn served_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split(' ').next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        };
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            names.insert(histogram_family(name).to_string());
        }
    }
    names
}

/// A port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding port 0");
    listener.local_addr().expect("local address").port()
}

/// `GET path` over HTTP/1.0; `None` while nothing listens.
fn http_get(address: SocketAddr, path: &str) -> Option<String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&address, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// `trailspike run`, with `metrics.listen` set from the environment,
/// which overrides the workspace's config file.
fn start_trailspike(config: &Path, listen: SocketAddr, log: &Path) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trailspike"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TRAILSPIKE_") && key.contains("__") {
            command.env_remove(key);
        }
    }
    command
        .arg("--config")
        .arg(config)
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove("TRAILSPIKE_CONFIG")
        .env("TRAILSPIKE_METRICS__LISTEN", listen.to_string())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("a log file"))
        .spawn()
        .expect("starting trailspike run")
}

fn log_of(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Scrapes until every wanted name is served; the names still missing
/// at the deadline, with the last scrape.
fn scrape_until_served(
    child: &mut Child,
    address: SocketAddr,
    wanted: &BTreeSet<String>,
    log: &Path,
) -> (BTreeSet<String>, String) {
    let deadline = Instant::now() + APPEAR_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "trailspike exited ({status}) early; its log:\n{}",
                log_of(log)
            );
        }
        let scrape = http_get(address, "/metrics").unwrap_or_default();
        let served = served_names(&scrape);
        let missing: BTreeSet<String> = wanted.difference(&served).cloned().collect();
        if missing.is_empty() || Instant::now() >= deadline {
            return (missing, scrape);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn wait_for_exit(mut child: Child, log: &Path) -> std::process::ExitStatus {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "trailspike did not exit within {EXIT_TIMEOUT:?} of SIGTERM; log:\n{}",
                log_of(log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_metric_the_dashboard_and_alert_rules_use_is_served() {
    let wanted = referenced_names();
    assert!(wanted.len() >= 20, "too few names found: {wanted:?}");

    let workspace = Workspace::new("metrics-contract", 2, &Settings::default());
    let (records, _) = generate_records(&GenerateArgs {
        hours: 30,
        arns: 10,
        rate_per_hour: 15.0,
        spikes: 0,
        ..GenerateArgs::default()
    });
    assert!(records.len() >= 200, "only {} records", records.len());
    let mut messages = round_robin(&records, &[0, 1]);
    messages.push(Outgoing::to_partition(0, b"this is not JSON".to_vec()));
    Producer::new(&workspace.input).send(&messages);

    let listen: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("an address");
    let dir = tempfile::tempdir().expect("a temp dir");
    let log = dir.path().join("trailspike.log");
    let mut child = start_trailspike(workspace.config_path(), listen, &log);
    let (missing, scrape) = scrape_until_served(&mut child, listen, &wanted, &log);
    if !missing.is_empty() {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{} metric(s) used by {USERS:?} are not served on /metrics within \
             {APPEAR_TIMEOUT:?}:\n  {}\nlast scrape:\n{scrape}\ntrailspike log:\n{}",
            missing.len(),
            missing.iter().cloned().collect::<Vec<_>>().join("\n  "),
            log_of(&log)
        );
    }

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(kill.success(), "kill -TERM failed");
    let status = wait_for_exit(child, &log);
    assert!(
        status.success(),
        "trailspike exited with {status} after SIGTERM; log:\n{}",
        log_of(&log)
    );
}

#[test]
fn names_are_read_from_expressions_and_expositions() {
    let exposition = "# HELP trailspike_x_seconds A histogram\n\
                      # TYPE trailspike_x_seconds histogram\n\
                      trailspike_x_seconds_bucket{le=\"1\"} 0\n\
                      trailspike_x_seconds_sum 0\n\
                      trailspike_y_total{reason=\"a\"} 3\n\
                      process_open_fds 9\n";
    let served = served_names(exposition);
    let expected = [
        "process_open_fds",
        "trailspike_x_seconds",
        "trailspike_y_total",
    ];
    assert_eq!(served, expected.map(String::from).into());
    assert_eq!(
        histogram_family("trailspike_x_seconds_count"),
        "trailspike_x_seconds"
    );
    assert_eq!(histogram_family("trailspike_y_total"), "trailspike_y_total");
}

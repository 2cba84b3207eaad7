//! Memory probe, not a test: feeds distinct ARNs into one window through
//! the engine and prints how much memory each open (window, ARN) entry
//! costs, with and without the `state.max_open_arn_windows` bound.
//!
//!     cargo run --release --example arn_flood -- ARNS [MAX_OPEN] [CALLS]
//!
//! `MAX_OPEN` 0 (the default) means unbounded. Each ARN makes `CALLS`
//! calls (default 1), each from a source IP, user agent, region and error
//! code of its own, so from `CALLS` = 12 on every top-values summary of the
//! explanation is full: the worst case of an entry's size.
//! RELIABILITY.md and BENCHMARKS.md have figures.

use std::sync::Arc;

use trailspike::config::Config;
use trailspike::engine::Engine;
use trailspike::metrics::Metrics;
use trailspike::store::StateStore;

/// A few names repeat across every ARN, as they do in CloudTrail.
const EVENT_NAMES: [&str; 4] = [
    "ListBuckets",
    "GetObject",
    "DescribeInstances",
    "AssumeRole",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let arns: usize = args
        .next()
        .ok_or("usage: arn_flood ARNS [MAX_OPEN]")?
        .parse()?;
    let max_open: usize = args.next().map_or(Ok(0), |a| a.parse())?;
    let calls: usize = args.next().map_or(Ok(1), |a| a.parse())?;
    let state = tempfile::tempdir()?;
    let store = StateStore::open(state.path())?;
    let mut config = Config::default();
    if max_open > 0 {
        config.state.max_open_arn_windows = max_open;
    }
    let mut engine = Engine::new(&config, Arc::new(Metrics::new()))?;
    if max_open > 0 {
        engine.spill_to(&store)?;
    }
    let before = memory();
    // 2024-05-01T10:00:00Z onwards, all inside one hour.
    let window_start = 1_714_557_600_i64;
    let arrival = window_start + 7200;
    let mut message = String::new();
    // One ARN's calls together, as a burst: with a bound, each entry is
    // full before it is spilled, instead of coming back for every call.
    for i in 0..arns {
        for call in 0..calls {
            message.clear();
            let second = (i + call) % 3600;
            message.push_str(&format!(
                r#"{{"eventTime":"2024-05-01T10:{:02}:{:02}Z","eventType":"AwsApiCall","eventName":"{}","eventID":"{i:08x}-{call:04x}-4c1e-9f7a-6b2d8e0c5a31","sourceIPAddress":"198.51.{}.{}","userAgent":"aws-cli/2.15.{call} md/Botocore#1.34.{call} ua/2.0 os/linux#6.1.0 md/arch#x86_64 lang/python#3.11.8 md/pyimpl#CPython cfg/retry-mode#standard md/installer#exe","awsRegion":"region-{call}","errorCode":"Error{call}","userIdentity":{{"type":"IAMUser","arn":"arn:aws:iam::123456789012:user/flood-{i:09}"}}}}"#,
                second / 60,
                second % 60,
                EVENT_NAMES[(i + call) % EVENT_NAMES.len()],
                call / 256,
                call % 256,
            ));
            engine.process_message(
                0,
                message.as_bytes(),
                arrival,
                0,
                &"probe",
                &mut |_| {},
            );
        }
    }
    let fed = memory();
    let windows = engine.windows();
    println!(
        "arns={arns} calls_per_arn={calls} max_open={} resident={} spilled={}",
        if max_open == 0 {
            "unbounded".to_string()
        } else {
            max_open.to_string()
        },
        windows.resident_arn_windows(),
        windows.spilled_arn_windows(),
    );
    println!(
        "rss_before_kib={} rss_fed_kib={} peak_fed_kib={} bytes_per_open_arn={:.0}",
        before.rss_kib,
        fed.rss_kib,
        fed.peak_kib,
        (fed.rss_kib - before.rss_kib) as f64 * 1024.0 / arns as f64,
    );
    if std::env::var_os("ARN_FLOOD_SKIP_CLOSE").is_some() {
        return Ok(());
    }
    let mut changes = store.changes();
    engine.close_all(&mut changes, 0)?;
    let detected = memory();
    println!(
        "closed_before_commit: rss_kib={} peak_kib={}",
        detected.rss_kib, detected.peak_kib
    );
    changes.commit()?;
    let closed = memory();
    println!(
        "after_close: rss_kib={} peak_kib={} baselines={}",
        closed.rss_kib,
        closed.peak_kib,
        store.baseline_count()
    );
    Ok(())
}

struct Memory {
    rss_kib: i64,
    peak_kib: i64,
}

/// VmRSS and VmHWM from /proc/self/status (Linux only).
fn memory() -> Memory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss_kib: field("VmRSS:"),
        peak_kib: field("VmHWM:"),
    }
}

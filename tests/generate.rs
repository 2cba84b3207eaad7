//! Properties of `trailspike generate` output, checked on the output bytes
//! alone, as a consumer of the records would see them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufWriter;
use std::time::Instant;

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use trailspike::generate::{generate, GenerateArgs, GenerateSummary};

fn run(args: &GenerateArgs) -> (Vec<u8>, GenerateSummary) {
    let mut out = Vec::new();
    let summary = generate(args, &mut out).expect("generation succeeds");
    (out, summary)
}

fn records(out: &[u8]) -> Vec<Value> {
    out.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).expect("every line is JSON"))
        .collect()
}

fn unix(time: &Value) -> i64 {
    let text = time.as_str().expect("eventTime is a string");
    OffsetDateTime::parse(text, &Rfc3339)
        .expect("eventTime is RFC 3339")
        .unix_timestamp()
}

fn arn(record: &Value) -> Option<&str> {
    record["userIdentity"]["arn"].as_str()
}

fn is_api_call(record: &Value) -> bool {
    record["eventType"] == "AwsApiCall"
}

/// Two weeks at a modest rate: enough history for spikes, quick to check.
fn fortnight() -> GenerateArgs {
    GenerateArgs {
        arns: 60,
        rate_per_hour: 400.0,
        ..GenerateArgs::default()
    }
}

fn day() -> GenerateArgs {
    GenerateArgs {
        hours: 24,
        arns: 50,
        rate_per_hour: 500.0,
        ..GenerateArgs::default()
    }
}

#[test]
fn same_seed_gives_identical_bytes() {
    let (a, _) = run(&day());
    let (b, _) = run(&day());
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

#[test]
fn different_seeds_give_different_bytes() {
    let (a, _) = run(&day());
    let (b, _) = run(&GenerateArgs { seed: 2, ..day() });
    assert_ne!(a, b);
}

#[test]
fn every_line_is_json_and_the_summary_counts_it() {
    let (out, summary) = run(&day());
    let parsed = records(&out);
    assert_eq!(parsed.len() as u64, summary.records);
    assert_eq!(out.len() as u64, summary.bytes);
    assert!(parsed.iter().all(Value::is_object));
}

#[test]
fn event_times_lie_in_the_span_and_in_order_without_disorder() {
    let args = day();
    let start = unix(&Value::from(args.start.clone()));
    let end = start + 24 * 3600;
    let (out, _) = run(&args);
    let times: Vec<i64> = records(&out)
        .iter()
        .map(|r| unix(&r["eventTime"]))
        .collect();
    assert!(times.iter().all(|&t| (start..end).contains(&t)));
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    let first_hour = times.iter().filter(|&&t| t < start + 3600).count();
    assert!(first_hour > 0, "the first hour is covered");
}

#[test]
fn an_unaligned_start_still_bounds_event_times() {
    let args = GenerateArgs {
        start: "2024-05-01T09:30:15+02:00".to_owned(),
        hours: 3,
        ..day()
    };
    let start = unix(&Value::from(args.start.clone()));
    let (out, summary) = run(&args);
    let times: Vec<i64> = records(&out)
        .iter()
        .map(|r| unix(&r["eventTime"]))
        .collect();
    assert!(summary.records > 0);
    assert!(times
        .iter()
        .all(|&t| (start..start + 3 * 3600).contains(&t)));
}

#[test]
fn shares_of_identity_kinds_event_types_and_errors_are_realistic() {
    let (out, _) = run(&fortnight());
    let parsed = records(&out);
    let n = parsed.len() as f64;
    let share = |pred: &dyn Fn(&Value) -> bool| {
        parsed.iter().filter(|r| pred(r)).count() as f64 / n
    };
    let no_arn = share(&|r| arn(r).is_none());
    let invoked_with_arn =
        share(&|r| arn(r).is_some() && r["userIdentity"]["invokedBy"].is_string());
    let api_calls = share(&is_api_call);
    let errors = share(&|r| r["errorCode"].is_string());
    assert!((0.035..0.065).contains(&no_arn), "no arn: {no_arn}");
    assert!(
        (0.01..0.03).contains(&invoked_with_arn),
        "invokedBy: {invoked_with_arn}"
    );
    assert!((0.95..0.99).contains(&api_calls), "AwsApiCall: {api_calls}");
    assert!((0.02..0.045).contains(&errors), "errors: {errors}");
    let types: BTreeSet<&str> = parsed
        .iter()
        .filter_map(|r| r["userIdentity"]["type"].as_str())
        .collect();
    for kind in ["IAMUser", "AssumedRole", "Root", "AWSService"] {
        assert!(types.contains(kind), "{kind} missing from {types:?}");
    }
    let event_types: BTreeSet<&str> = parsed
        .iter()
        .filter_map(|r| r["eventType"].as_str())
        .collect();
    assert!(
        event_types.contains("AwsServiceEvent")
            && event_types.contains("AwsConsoleSignIn")
    );
}

#[test]
fn event_ids_are_unique_and_uuid_shaped() {
    let (out, _) = run(&day());
    let parsed = records(&out);
    let ids: BTreeSet<&str> = parsed
        .iter()
        .filter_map(|r| r["eventID"].as_str())
        .collect();
    assert_eq!(ids.len(), parsed.len());
    for id in ids {
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert!(id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
    }
}

#[test]
fn activity_is_heavy_tailed() {
    let (out, _) = run(&fortnight());
    let mut per_arn: BTreeMap<&str, u64> = BTreeMap::new();
    let parsed = records(&out);
    for r in &parsed {
        if let Some(a) = arn(r) {
            *per_arn.entry(a).or_default() += 1;
        }
    }
    let mut counts: Vec<u64> = per_arn.into_values().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let total: u64 = counts.iter().sum();
    let top_tenth: u64 = counts.iter().take(counts.len() / 10).sum();
    assert!(top_tenth * 2 > total, "the busiest tenth makes most calls");
    let median = counts[counts.len() / 2];
    assert!(
        median * 20 < counts[0],
        "most identities are far quieter than the busiest"
    );
}

#[test]
fn disordered_records_stay_within_disorder_secs() {
    let args = GenerateArgs {
        disorder: 0.1,
        disorder_secs: 120,
        ..day()
    };
    let start = unix(&Value::from(args.start.clone()));
    let (out, _) = run(&args);
    let mut latest = start;
    let mut late = 0;
    let parsed = records(&out);
    for r in &parsed {
        let t = unix(&r["eventTime"]);
        assert!(t >= start);
        assert!(
            t >= latest - 120,
            "{t} lies more than 120 s behind {latest}"
        );
        if t < latest {
            late += 1;
        }
        latest = latest.max(t);
    }
    let share = f64::from(late) / parsed.len() as f64;
    assert!((0.03..0.12).contains(&share), "out of order: {share}");
}

/// Per-ARN hourly `AwsApiCall` counts, by window start.
fn hourly_counts(parsed: &[Value]) -> BTreeMap<&str, BTreeMap<i64, u64>> {
    let mut counts: BTreeMap<&str, BTreeMap<i64, u64>> = BTreeMap::new();
    for r in parsed.iter().filter(|r| is_api_call(r)) {
        if let Some(a) = arn(r) {
            let hour = unix(&r["eventTime"]).div_euclid(3600) * 3600;
            *counts.entry(a).or_default().entry(hour).or_default() += 1;
        }
    }
    counts
}

fn check_spikes(args: &GenerateArgs) {
    let (out, summary) = run(args);
    assert_eq!(
        summary.spikes.len(),
        args.spikes as usize,
        "{:?}",
        summary.spikes
    );
    let parsed = records(&out);
    let counts = hourly_counts(&parsed);
    for spike in &summary.spikes {
        let history = &counts[spike.arn.as_str()];
        assert_eq!(
            history.get(&spike.window_start_unix),
            Some(&spike.calls),
            "{spike:?}"
        );
        let before: Vec<f64> = history
            .range(..spike.window_start_unix)
            .map(|(_, &c)| c as f64)
            .collect();
        assert!(
            before.len() >= 20,
            "{spike:?} has {} hours of history",
            before.len()
        );
        let n = before.len() as f64;
        let mean = before.iter().sum::<f64>() / n;
        let var = before.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let threshold = mean + 3.0 * var.sqrt();
        let calls = spike.calls as f64;
        assert!(calls > 1.2 * threshold, "{spike:?}: threshold {threshold}");
        // The detector's rule counts the spike hour itself in the statistics.
        let all: Vec<f64> = before.iter().copied().chain([calls]).collect();
        let n = all.len() as f64;
        let mean = all.iter().sum::<f64>() / n;
        let var = all.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        assert!(calls > 1.2 * (mean + 3.0 * var.sqrt()), "{spike:?}");
    }
}

#[test]
fn injected_spikes_are_counted_exactly_and_clear_the_threshold() {
    check_spikes(&fortnight());
}

#[test]
fn spikes_survive_disorder_and_a_small_factor() {
    check_spikes(&GenerateArgs {
        spikes: 5,
        spike_factor: 2.0,
        disorder: 0.05,
        seed: 9,
        ..fortnight()
    });
}

#[test]
fn a_short_span_has_no_room_for_spikes() {
    let (_, summary) = run(&GenerateArgs { hours: 20, ..day() });
    assert!(summary.spikes.is_empty(), "{:?}", summary.spikes);
}

#[test]
fn average_record_size_is_about_a_kilobyte() {
    let (out, summary) = run(&fortnight());
    let average = summary.bytes as f64 / summary.records as f64;
    assert!(
        (600.0..1600.0).contains(&average),
        "average {average} bytes"
    );
    assert!(records(&out).len() > 100_000);
}

#[test]
fn record_sizes_vary_widely() {
    let (out, _) = run(&day());
    let sizes: Vec<usize> = out
        .split(|&b| b == b'\n')
        .map(<[u8]>::len)
        .filter(|&l| l > 0)
        .collect();
    let smallest = sizes.iter().min().copied().unwrap_or(0);
    let largest = sizes.iter().max().copied().unwrap_or(0);
    assert!(
        smallest < 1000 && largest > 4 * smallest,
        "sizes {smallest}..{largest}"
    );
}

#[test]
fn limit_stops_after_exactly_that_many_records_as_a_prefix() {
    let (full, _) = run(&day());
    let args = GenerateArgs {
        limit: 777,
        ..day()
    };
    let (cut, summary) = run(&args);
    assert_eq!(summary.records, 777);
    assert_eq!(records(&cut).len(), 777);
    assert!(full.starts_with(&cut));
}

#[test]
fn limit_drops_spikes_it_did_not_reach() {
    let (_, whole) = run(&fortnight());
    let last = whole
        .spikes
        .iter()
        .map(|s| s.window_start_unix)
        .max()
        .unwrap_or(0);
    let (out, summary) = run(&GenerateArgs {
        limit: whole.records / 2,
        ..fortnight()
    });
    let reached = records(&out)
        .iter()
        .map(|r| unix(&r["eventTime"]))
        .max()
        .unwrap_or(0);
    assert!(summary
        .spikes
        .iter()
        .all(|s| s.window_start_unix + 3600 <= reached + 1));
    assert!(summary.spikes.len() < whole.spikes.len() || last < reached);
}

#[test]
fn batches_wrap_records_in_cloudtrail_log_files() {
    let (lines, plain) = run(&day());
    let (out, summary) = run(&GenerateArgs {
        batch: 100,
        ..day()
    });
    assert_eq!(summary.records, plain.records);
    let files = records(&out);
    let mut unpacked = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let batch = file["Records"].as_array().expect("a Records array");
        if i + 1 < files.len() {
            assert_eq!(batch.len(), 100);
        }
        unpacked.extend(batch.iter().cloned());
    }
    assert_eq!(unpacked, records(&lines));
}

#[test]
fn bad_arguments_are_refused() {
    let bad = [
        GenerateArgs {
            start: "yesterday".to_owned(),
            ..day()
        },
        GenerateArgs {
            disorder: 1.5,
            ..day()
        },
        GenerateArgs {
            rate_per_hour: f64::NAN,
            ..day()
        },
        GenerateArgs {
            spike_factor: 0.5,
            ..day()
        },
        GenerateArgs { arns: 0, ..day() },
        GenerateArgs {
            hours: u64::MAX,
            ..day()
        },
    ];
    for args in bad {
        assert!(generate(&args, &mut Vec::new()).is_err(), "{args:?}");
    }
}

/// `cargo test --release --test generate -- --ignored --nocapture`
#[test]
#[ignore = "a benchmark: prints records/s, run it in release"]
fn throughput() {
    let args = GenerateArgs {
        limit: 1_000_000,
        rate_per_hour: 20_000.0,
        ..GenerateArgs::default()
    };
    let mut sink = BufWriter::with_capacity(1 << 20, std::io::sink());
    let started = Instant::now();
    let summary = generate(&args, &mut sink).expect("generation succeeds");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} records, {} bytes ({:.0} B/record) in {secs:.2} s: {:.0} records/s, {:.0} MB/s",
        summary.records,
        summary.bytes,
        summary.bytes as f64 / summary.records as f64,
        summary.records as f64 / secs,
        summary.bytes as f64 / secs / 1e6,
    );
}

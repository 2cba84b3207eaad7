//! Real CloudTrail records: the Stratus Red Team detonation logs (see
//! `tests/data/README.md` for their source and license). The parser must
//! read every real record shape the way serde_json does, and count what
//! SPEC.md section 1 says counts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use serde_json::Value;

use trailspike::config::Config;
use trailspike::parse::{
    MessageBody, ParseOptions, RecordOutcome, RejectReason, SkipReason,
};
use trailspike::store::StateStore;

const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/stratus-red-team_detonation-logs.jsonl.gz"
);

fn lines() -> Vec<String> {
    let file = std::fs::File::open(DATA).expect("tests/data is part of the repository");
    BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .collect::<Result<_, _>>()
        .expect("readable gzip")
}

/// What SPEC.md section 1 makes of a record, read with serde_json.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    Call {
        arn: String,
        event_time: i64,
        event_name: String,
    },
    Skip(SkipReason),
}

fn expected_of(record: &Value) -> Expected {
    use time::format_description::well_known::Rfc3339;
    let text = record["eventTime"]
        .as_str()
        .expect("real records have eventTime");
    let event_time = time::OffsetDateTime::parse(text, &Rfc3339)
        .expect("real eventTime")
        .unix_timestamp();
    if record["eventType"] != "AwsApiCall" {
        return Expected::Skip(SkipReason::NotApiCall);
    }
    match record["userIdentity"]["arn"].as_str() {
        Some(arn) if !arn.is_empty() => Expected::Call {
            arn: arn.to_string(),
            event_time,
            event_name: record["eventName"].as_str().unwrap_or("").to_string(),
        },
        _ => Expected::Skip(SkipReason::NoArn),
    }
}

fn actual_of(outcome: RecordOutcome<'_>) -> Result<Expected, RejectReason> {
    match outcome {
        RecordOutcome::Call(call) => Ok(Expected::Call {
            arn: call.arn.into_owned(),
            event_time: call.event_time,
            event_name: call.event_name.into_owned(),
        }),
        RecordOutcome::Skipped { reason, .. } => Ok(Expected::Skip(reason)),
        RecordOutcome::Rejected { reason, .. } => Err(reason),
    }
}

/// Every outcome of one message, through the crate's parser.
fn parse(message: &[u8]) -> Vec<Result<Expected, RejectReason>> {
    let options = ParseOptions::default();
    let body = MessageBody::decode(message, &options).expect("a usable message");
    let mut outcomes = Vec::new();
    body.for_each_record(&options, |_, outcome| outcomes.push(actual_of(outcome)))
        .expect("a usable message");
    outcomes
}

fn counts_per_arn(outcomes: &[Expected]) -> BTreeMap<&str, u64> {
    let mut counts = BTreeMap::new();
    for outcome in outcomes {
        if let Expected::Call { arn, .. } = outcome {
            *counts.entry(arn.as_str()).or_insert(0) += 1;
        }
    }
    counts
}

#[test]
fn every_real_record_parses_as_serde_json_reads_it() {
    let lines = lines();
    assert_eq!(lines.len(), 310);
    let values: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected: Vec<Expected> = values.iter().map(expected_of).collect();
    let mut actual = Vec::new();
    for line in &lines {
        let outcomes = parse(line.as_bytes());
        assert_eq!(outcomes.len(), 1, "one record per line");
        actual.push(outcomes[0].clone().expect("no real record is rejected"));
    }
    for (i, (e, a)) in expected.iter().zip(&actual).enumerate() {
        assert_eq!(e, a, "record on line {}", i + 1);
    }

    let api_calls = values
        .iter()
        .filter(|v| v["eventType"] == "AwsApiCall")
        .count();
    assert_eq!(api_calls, 309);
    let all_arns: BTreeSet<&str> = values
        .iter()
        .filter_map(|v| v["userIdentity"]["arn"].as_str())
        .collect();
    assert_eq!(all_arns.len(), 41, "distinct ARNs in the file");
    let counted = counts_per_arn(&actual);
    // The 41st ARN signs in to the console once and makes no API call.
    assert_eq!(counted.len(), 40, "distinct ARNs that count");
    assert_eq!(counted.values().sum::<u64>(), 309);
    assert_eq!(counted, counts_per_arn(&expected));
}

#[test]
fn the_records_as_one_gzip_log_file_body_parse_like_the_lines() {
    use std::io::Write;
    let lines = lines();
    let body = format!("{{\"Records\":[\n{}\n]}}", lines.join(",\n"));
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(body.as_bytes()).unwrap();
    let batched = parse(&encoder.finish().unwrap());
    let one_by_one: Vec<_> = lines.iter().flat_map(|l| parse(l.as_bytes())).collect();
    assert_eq!(batched.len(), 310);
    assert_eq!(batched, one_by_one);
}

#[test]
fn replaying_the_real_file_counts_every_call_and_rejects_nothing() {
    let values: Vec<Value> = lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The file concatenates detonations months apart, out of time order:
    // calls whose window closed before they arrive are late (SPEC.md
    // section 2). A naive watermark over the file order says which.
    let lateness = 900;
    let mut max_seen = i64::MIN;
    let (mut on_time, mut late) = (BTreeSet::new(), 0);
    for value in &values {
        let expected = expected_of(value);
        let time = match &expected {
            Expected::Call { event_time, .. } => *event_time,
            Expected::Skip(_) => {
                let text = value["eventTime"].as_str().unwrap();
                common::unix_of(text)
            }
        };
        if let Expected::Call { arn, .. } = &expected {
            if time.div_euclid(common::HOUR) * common::HOUR + common::HOUR
                <= max_seen.saturating_sub(lateness)
            {
                late += 1;
            } else {
                on_time.insert(arn.clone());
            }
        }
        max_seen = max_seen.max(time);
    }

    // The detonations span four months, longer than the default
    // baseline_ttl of 90 days: expiry would delete the baselines of the
    // early ARNs, which is not what this test counts.
    let mut config = Config::default();
    config.state.baseline_ttl = std::time::Duration::ZERO;
    let store = StateStore::temporary().unwrap();
    let (alerts, metrics) = common::replay_paths(&[PathBuf::from(DATA)], &config, &store);
    assert!(alerts.is_empty(), "too short a history to alert");
    assert_eq!(metrics.messages_consumed.get(), 310);
    for reason in RejectReason::ALL {
        let rejected = trailspike::metrics::Metrics::count(
            &metrics.records_rejected,
            reason.as_str(),
        );
        assert_eq!(rejected, 0, "{reason}");
    }
    let skipped = |r: SkipReason| {
        trailspike::metrics::Metrics::count(&metrics.records_skipped, r.as_str())
    };
    assert_eq!(skipped(SkipReason::NotApiCall), 1);
    assert_eq!(skipped(SkipReason::NoArn), 0);
    assert_eq!(metrics.records_late.get(), late);
    assert_eq!(metrics.records_counted.get() + late, 309);
    assert_eq!(store.baseline_count(), on_time.len() as u64);
}

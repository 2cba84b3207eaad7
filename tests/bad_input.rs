//! Bad input through `Engine::process_message` (SPEC.md sections 1 and
//! 2): every kind of bad message is dead-lettered unchanged with its
//! reason and counted, good records that share its batch still count,
//! and nothing panics.

mod common;

use std::io::Write;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};

use trailspike::config::Config;
use trailspike::engine::{DeadLetter, Engine};
use trailspike::metrics::Metrics;
use trailspike::parse::{RejectReason, SkipReason};

use common::*;

/// The message time every test message claims: a day after `T0`.
const ARRIVAL: i64 = T0 + 24 * HOUR;

/// A dead letter, owned so that tests can compare it after the call.
#[derive(Debug, Clone, PartialEq)]
struct Letter {
    reason: RejectReason,
    detail: String,
    payload: Vec<u8>,
    record_index: Option<usize>,
}

struct Harness {
    engine: Engine,
    metrics: Arc<Metrics>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_config(&Config::default())
    }

    fn with_config(config: &Config) -> Harness {
        let metrics = Arc::new(Metrics::new());
        let engine = Engine::new(config, metrics.clone()).expect("engine");
        Harness { engine, metrics }
    }

    /// Feeds one message on source 0 and returns what it dead-lettered.
    fn feed(&mut self, message: &[u8]) -> Vec<Letter> {
        let mut letters = Vec::new();
        let mut collect = |letter: DeadLetter<'_>| {
            letters.push(Letter {
                reason: letter.reason,
                detail: letter.detail,
                payload: letter.payload.to_vec(),
                record_index: letter.record_index,
            })
        };
        self.engine
            .process_message(0, message, ARRIVAL, 0, &"test", &mut collect);
        letters
    }

    fn rejected(&self, reason: RejectReason) -> u64 {
        Metrics::count(&self.metrics.records_rejected, reason.as_str())
    }

    fn skipped(&self) -> u64 {
        SkipReason::ALL
            .iter()
            .map(|r| Metrics::count(&self.metrics.records_skipped, r.as_str()))
            .sum()
    }

    fn watermark(&self) -> i64 {
        self.engine.windows().watermark()
    }
}

fn good_record(unix: i64) -> Value {
    api_call(ALICE, unix, "ListBuckets")
}

/// Asserts that `message` is rejected whole, unchanged, for `reason`.
fn assert_rejected_whole(message: &[u8], reason: RejectReason) {
    let mut harness = Harness::new();
    let letters = harness.feed(message);
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.reason, reason, "{}", letter.detail);
    assert!(
        letter.payload == message,
        "the payload is the message as received"
    );
    assert_eq!(letter.record_index, None);
    assert!(!letter.detail.is_empty());
    assert_eq!(harness.rejected(reason), 1);
    assert_eq!(harness.metrics.messages_consumed.get(), 1);
    assert_eq!(harness.metrics.records_counted.get(), 0);
    assert_eq!(
        harness.watermark(),
        i64::MIN,
        "bad input moves no watermark"
    );
}

/// `good_record` with one field replaced by `value` (or removed).
fn record_with(path: &[&str], value: Option<Value>) -> Vec<u8> {
    let mut record = good_record(T0);
    let (last, parents) = path.split_last().expect("a path");
    let mut target = &mut record;
    for key in parents {
        target = &mut target[*key];
    }
    let object = target.as_object_mut().expect("an object");
    match value {
        Some(value) => object.insert(last.to_string(), value),
        None => object.remove(*last),
    };
    serde_json::to_vec(&record).expect("JSON")
}

#[test]
fn malformed_json_is_dead_lettered_whole_as_invalid_json() {
    let mut text = good_record(T0).to_string();
    text.truncate(text.len() / 2);
    assert_rejected_whole(text.as_bytes(), RejectReason::InvalidJson);
    assert_rejected_whole(
        b"{\"eventTime\":\"2024-05-01T00:00:00Z\",}",
        RejectReason::InvalidJson,
    );
}

#[test]
fn invalid_utf8_is_dead_lettered_whole_as_invalid_utf8() {
    let text = good_record(T0).to_string();
    let in_arn = text.replace("user/alice", "user/al\u{fffd}ce").into_bytes();
    let mut bytes = Vec::new();
    // Replace the three bytes of U+FFFD by one byte that is never UTF-8.
    let marker = "\u{fffd}".as_bytes();
    let at = in_arn.windows(3).position(|w| w == marker).expect("marker");
    bytes.extend_from_slice(&in_arn[..at]);
    bytes.push(0xff);
    bytes.extend_from_slice(&in_arn[at + 3..]);
    assert_rejected_whole(&bytes, RejectReason::InvalidUtf8);
    assert_rejected_whole(b"\xfe\xff\x00{", RejectReason::InvalidUtf8);
}

#[test]
fn wrong_field_types_are_dead_lettered_whole_as_wrong_type() {
    let cases: [(&[&str], Value); 5] = [
        (&["userIdentity", "arn"], json!(123456789012u64)),
        (&["userIdentity", "arn"], json!({"partition": "aws"})),
        (&["eventTime"], json!(1714521600)),
        (&["eventType"], json!(["AwsApiCall"])),
        (&["eventName"], json!(true)),
    ];
    for (path, value) in cases {
        assert_rejected_whole(&record_with(path, Some(value)), RejectReason::WrongType);
    }
}

#[test]
fn missing_or_null_event_time_is_dead_lettered_as_missing_event_time() {
    assert_rejected_whole(
        &record_with(&["eventTime"], None),
        RejectReason::MissingEventTime,
    );
    let null = record_with(&["eventTime"], Some(Value::Null));
    assert_rejected_whole(&null, RejectReason::MissingEventTime);
}

#[test]
fn unparseable_event_time_is_dead_lettered_as_bad_event_time() {
    for text in [
        "yesterday",
        "",
        "2024-13-01T00:00:00Z",
        "2024-05-01 00:00:00",
        "1714521600",
    ] {
        let message = record_with(&["eventTime"], Some(json!(text)));
        assert_rejected_whole(&message, RejectReason::BadEventTime);
    }
}

#[test]
fn empty_message_and_non_objects_are_dead_lettered_whole() {
    assert_rejected_whole(b"", RejectReason::InvalidJson);
    assert_rejected_whole(b"  \n", RejectReason::InvalidJson);
    assert_rejected_whole(b"null", RejectReason::NotAnObject);
    for message in [&b"[]"[..], b"42", b"\"AwsApiCall\"", b"true"] {
        assert_rejected_whole(message, RejectReason::NotAnObject);
    }
    assert_rejected_whole(br#"{"Records":{"a":1}}"#, RejectReason::WrongType);
}

#[test]
fn deep_nesting_anywhere_is_rejected_without_overflowing_the_stack() {
    let opens = "[".repeat(100_000);
    let objects = "{\"a\":".repeat(100_000);
    let time = "\"eventTime\":\"2024-05-01T00:00:00Z\"";
    let messages = [
        opens.clone(),
        objects.clone(),
        format!("{{{time},\"requestParameters\":{opens}"),
        format!("{{{time},\"requestParameters\":{objects}"),
        format!("{{\"eventTime\":{opens}"),
        format!("{{{time},\"userIdentity\":{opens}"),
        format!("{{{time},\"userIdentity\":{{\"arn\":{objects}"),
        format!("{{\"Records\":[{opens}"),
        format!("{{\"Records\":[{{{time},\"x\":{objects}"),
    ];
    for message in messages {
        let mut harness = Harness::new();
        let letters = harness.feed(message.as_bytes());
        assert_eq!(letters.len(), 1, "{}", &message[..60]);
        // A top-level array is refused before it is descended into.
        let expected = match message.as_bytes()[0] {
            b'[' => RejectReason::NotAnObject,
            _ => RejectReason::InvalidJson,
        };
        assert_eq!(letters[0].reason, expected, "{}", letters[0].detail);
        assert!(letters[0].payload == message.as_bytes());
    }
}

#[test]
fn a_ten_megabyte_message_is_rejected_as_too_large_unchanged() {
    let mut record = good_record(T0);
    record["requestParameters"] = json!({ "blob": "x".repeat(10 * 1024 * 1024) });
    let message = serde_json::to_vec(&record).unwrap();
    assert_rejected_whole(&message, RejectReason::TooLarge);

    let mut encoder =
        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&message).unwrap();
    let compressed = encoder.finish().unwrap();
    assert!(
        compressed.len() < 4 * 1024 * 1024,
        "small on the wire, large inside"
    );
    assert_rejected_whole(&compressed, RejectReason::TooLarge);
}

#[test]
fn corrupt_gzip_is_dead_lettered_whole_as_bad_gzip() {
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(good_record(T0).to_string().as_bytes())
        .unwrap();
    let mut compressed = encoder.finish().unwrap();
    let middle = compressed.len() / 2;
    compressed.truncate(middle);
    assert_rejected_whole(&compressed, RejectReason::BadGzip);
}

#[test]
fn a_gzip_record_counts_like_the_plain_one() {
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(good_record(T0).to_string().as_bytes())
        .unwrap();
    let mut harness = Harness::new();
    assert_eq!(harness.feed(&encoder.finish().unwrap()), []);
    assert_eq!(harness.metrics.records_counted.get(), 1);
}

#[test]
fn a_records_batch_counts_its_good_records_and_dead_letters_each_bad_one_exactly() {
    let good = |k: i64| good_record(T0 + k).to_string();
    let missing_time = String::from_utf8(record_with(&["eventTime"], None)).unwrap();
    let numeric_arn = serde_json::to_string_pretty(
        &serde_json::from_slice::<Value>(&record_with(
            &["userIdentity", "arn"],
            Some(json!(7)),
        ))
        .unwrap(),
    )
    .unwrap();
    let bad_time =
        String::from_utf8(record_with(&["eventTime"], Some(json!("soon")))).unwrap();
    let future = good_record(ARRIVAL + 2 * HOUR).to_string();
    let service = json!({
        "eventTime": iso(T0 + 9), "eventType": "AwsServiceEvent",
        "userIdentity": {"type": "AWSService", "invokedBy": "s3.amazonaws.com"}
    })
    .to_string();
    let elements = [
        good(1),
        missing_time,
        good(2),
        numeric_arn,
        "null".to_string(),
        bad_time,
        service,
        future,
        "[1, 2]".to_string(),
        good(3),
    ];
    let separators = [" ,", ",\n  ", " , ", ",\t", ","];
    let mut message = String::from("{\"eventVersion\":\"1.09\", \"Records\" : [ ");
    for (i, element) in elements.iter().enumerate() {
        if i > 0 {
            message.push_str(separators[i % separators.len()]);
        }
        message.push_str(element);
    }
    message.push_str(" ] }");

    let mut harness = Harness::new();
    let letters = harness.feed(message.as_bytes());
    let expected = [
        (1, RejectReason::MissingEventTime),
        (3, RejectReason::WrongType),
        (4, RejectReason::NotAnObject),
        (5, RejectReason::BadEventTime),
        (7, RejectReason::FutureSkew),
        (8, RejectReason::NotAnObject),
    ];
    let seen: Vec<(usize, RejectReason)> = letters
        .iter()
        .map(|l| (l.record_index.expect("an index"), l.reason))
        .collect();
    assert_eq!(seen, expected);
    for letter in &letters {
        let index = letter.record_index.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&letter.payload),
            elements[index],
            "record {index} is dead-lettered with its own exact bytes"
        );
    }
    assert_eq!(harness.metrics.records_counted.get(), 3);
    assert_eq!(
        Metrics::count(&harness.metrics.records_skipped, "not_api_call"),
        1
    );
    assert_eq!(harness.metrics.messages_consumed.get(), 1);
    let rejected: u64 = RejectReason::ALL.iter().map(|&r| harness.rejected(r)).sum();
    assert_eq!(rejected, 6);
}

#[test]
fn a_batch_that_is_not_valid_json_counts_none_of_its_records() {
    let message = format!("{{\"Records\":[{}], \"x\": }}", good_record(T0));
    assert_rejected_whole(message.as_bytes(), RejectReason::InvalidJson);
}

#[test]
fn a_far_future_event_time_is_rejected_and_leaves_the_watermark_alone() {
    let mut harness = Harness::new();
    assert_eq!(
        harness.feed(good_record(T0 + 100).to_string().as_bytes()),
        []
    );
    let watermark = harness.watermark();
    assert_eq!(watermark, T0 + 100 - 900);

    let future = good_record(ARRIVAL + 365 * 24 * HOUR).to_string();
    let letters = harness.feed(future.as_bytes());
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, RejectReason::FutureSkew);
    assert!(letters[0].payload == future.as_bytes());
    assert_eq!(harness.watermark(), watermark);
    let clock = harness.engine.windows().sources()[&0];
    assert_eq!(clock.max_event_time, Some(T0 + 100));
    assert_eq!(harness.rejected(RejectReason::FutureSkew), 1);
    assert_eq!(harness.metrics.records_counted.get(), 1);

    // Just inside the default one hour of skew is fine.
    assert_eq!(
        harness.feed(good_record(ARRIVAL + HOUR).to_string().as_bytes()),
        []
    );
}

#[test]
fn a_far_past_event_time_is_late_and_does_not_move_the_watermark() {
    let mut harness = Harness::new();
    assert_eq!(
        harness.feed(good_record(T0 + 5 * HOUR).to_string().as_bytes()),
        []
    );
    let watermark = harness.watermark();
    let past = good_record(T0 - 30 * 24 * HOUR).to_string();
    assert_eq!(
        harness.feed(past.as_bytes()),
        [],
        "late records are not bad input"
    );
    assert_eq!(harness.metrics.records_late.get(), 1);
    assert_eq!(harness.metrics.records_counted.get(), 1);
    assert_eq!(harness.watermark(), watermark);
    let rejected: u64 = RejectReason::ALL.iter().map(|&r| harness.rejected(r)).sum();
    assert_eq!(rejected, 0);
}

#[test]
fn late_records_are_dead_lettered_when_configured() {
    let config =
        Config::from_toml("[detection]\ndead_letter_late_records = true\n").unwrap();
    let mut harness = Harness::with_config(&config);
    harness.feed(good_record(T0 + 5 * HOUR).to_string().as_bytes());
    let past = good_record(T0).to_string();
    let letters = harness.feed(past.as_bytes());
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, RejectReason::Late);
    assert!(letters[0].payload == past.as_bytes());
    assert_eq!(harness.metrics.records_late.get(), 1);
    assert_eq!(
        harness.rejected(RejectReason::Late),
        0,
        "late is not bad input"
    );
}

// ---------------------------------------------------------------------
// Arbitrary input: no panic, and every message accounted for.

const TIMES: [&str; 7] = [
    "2024-05-01T00:00:00Z",
    "2024-05-01T13:07:42.123Z",
    "2024-05-01T15:07:42+02:00",
    "2030-01-01T00:00:00Z",
    "1999-12-31T23:59:59Z",
    "2024-02-30T00:00:00Z",
    "soon",
];

const WORDS: [&str; 6] = [
    "AwsApiCall",
    "AwsServiceEvent",
    "AwsConsoleSignIn",
    ALICE,
    "",
    "Records",
];

const KEYS: [&str; 9] = [
    "eventTime",
    "eventType",
    "eventName",
    "eventID",
    "userIdentity",
    "arn",
    "invokedBy",
    "Records",
    "requestParameters",
];

fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(TIMES.to_vec()).prop_map(Value::from),
        prop::sample::select(WORDS.to_vec()).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(prop::sample::select(KEYS.to_vec()), inner, 0..4)
                .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
        ]
    })
}

/// Mostly record-shaped objects, with any field sometimes odd.
fn record_like() -> impl Strategy<Value = Value> {
    let time = prop_oneof![4 => prop::sample::select(TIMES.to_vec()).prop_map(Value::from), 1 => any_value()];
    let kind = prop_oneof![4 => Just(Value::from("AwsApiCall")), 1 => any_value()];
    let who = prop_oneof![
        4 => Just(json!({"type": "IAMUser", "arn": ALICE})),
        1 => any_value().prop_map(|arn| json!({"arn": arn})),
        1 => any_value(),
    ];
    (
        prop::option::weighted(0.9, time),
        prop::option::weighted(0.9, kind),
        prop::option::weighted(0.9, who),
        prop::option::of(any_value()),
    )
        .prop_map(|(time, kind, who, extra)| {
            let mut record = serde_json::Map::new();
            let fields = [
                ("eventTime", time),
                ("eventType", kind),
                ("userIdentity", who),
            ];
            for (key, value) in fields {
                if let Some(value) = value {
                    record.insert(key.to_string(), value);
                }
            }
            if let Some(extra) = extra {
                record.insert("requestParameters".to_string(), extra);
            }
            Value::Object(record)
        })
}

#[derive(Debug, Clone)]
enum Damage {
    None,
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, u8),
    Pretty,
    Gzip,
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => Just(Damage::None),
        1 => any::<prop::sample::Index>().prop_map(Damage::Truncate),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Insert(i, b)),
        1 => Just(Damage::Pretty),
        1 => Just(Damage::Gzip),
    ]
}

/// A message and, when it was gzipped, the body inside.
fn json_ish_message() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let value = prop_oneof![
        4 => record_like(),
        2 => prop::collection::vec(prop_oneof![4 => record_like(), 1 => any_value()], 0..5)
            .prop_map(|records| json!({ "Records": records })),
        1 => any_value(),
    ];
    (value, damage()).prop_map(|(value, damage)| {
        let mut text = serde_json::to_vec(&value).expect("JSON");
        match damage {
            Damage::None => {}
            Damage::Truncate(at) => text.truncate(at.index(text.len() + 1)),
            Damage::Insert(at, byte) => text.insert(at.index(text.len() + 1), byte),
            Damage::Pretty => text = serde_json::to_vec_pretty(&value).expect("JSON"),
            Damage::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::new(),
                    flate2::Compression::fast(),
                );
                encoder.write_all(&text).expect("gzip");
                return (encoder.finish().expect("gzip"), text);
            }
        }
        (text.clone(), text)
    })
}

/// How many records a body holds, by serde_json's reading of it. Read
/// lossily: the parser decides records by the structure it reads and does
/// not check UTF-8 in fields it skips, so a stray byte in a top-level
/// field beside `Records` leaves the batch's records to be accounted for
/// one by one (found by this test: `{"Records":[[],null],"eventTime":
/// ["\x80..."]}` gave two record dead letters, not one for the body).
fn records_in(body: &[u8]) -> Option<usize> {
    let text = String::from_utf8_lossy(body);
    match serde_json::from_str::<Value>(&text).ok()? {
        Value::Object(map) => match map.get("Records") {
            Some(Value::Array(records)) => Some(records.len()),
            _ => Some(1),
        },
        _ => None,
    }
}

/// Feeds each message and checks that it was counted, skipped, late or
/// dead-lettered, record by record, with exact payloads.
fn check_accounting(messages: &[(Vec<u8>, Vec<u8>)]) -> Result<(), TestCaseError> {
    let mut harness = Harness::new();
    for (message, body) in messages {
        let before = (
            harness.metrics.records_counted.get(),
            harness.skipped(),
            harness.metrics.records_late.get(),
        );
        let letters = harness.feed(message);
        let accepted = harness.metrics.records_counted.get() - before.0
            + harness.skipped()
            - before.1
            + harness.metrics.records_late.get()
            - before.2;
        for letter in &letters {
            prop_assert!(!letter.detail.is_empty());
            match letter.record_index {
                None => prop_assert!(letter.payload == *message, "whole payload"),
                Some(_) => prop_assert!(
                    body.windows(letter.payload.len().max(1))
                        .any(|w| w == letter.payload),
                    "a record's payload is a slice of its body"
                ),
            }
        }
        let whole =
            letters.len() == 1 && letters[0].record_index.is_none() && accepted == 0;
        if !whole {
            let expected = records_in(body).unwrap_or(1);
            prop_assert_eq!(
                accepted + letters.len() as u64,
                expected as u64,
                "{:?}",
                letters
            );
        }
    }
    prop_assert_eq!(
        harness.metrics.messages_consumed.get(),
        messages.len() as u64
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_every_message_is_accounted_for(
        messages in prop::collection::vec(
            prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| (b.clone(), b)),
            1..10,
        )
    ) {
        check_accounting(&messages)?;
    }

    #[test]
    fn json_ish_messages_never_panic_and_every_record_is_accounted_for(
        messages in prop::collection::vec(json_ish_message(), 1..10)
    ) {
        check_accounting(&messages)?;
    }
}

#[test]
fn invalid_utf8_beside_records_leaves_each_record_accounted_for() {
    let body = b"{\"Records\":[[],null],\"eventTime\":[\"\x802024-05-01T00:00:00Z\",-1]}";
    let accounted = check_accounting(&[(body.to_vec(), body.to_vec())]);
    assert!(accounted.is_ok(), "{accounted:?}");
}

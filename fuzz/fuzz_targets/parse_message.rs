//! Any bytes as a Kafka message: the parser must not panic, and the
//! engine must account for every message and record exactly once.
//!
//! Invariants checked:
//! - a message the parser refuses as a whole hands out no record, is
//!   counted once as rejected and dead-lettered once;
//! - every record handed out lies inside the decoded body, and a counted
//!   call has a non-empty ARN;
//! - through the engine, counted + skipped + late + rejected records equal
//!   the records the parser handed out, and each rejected record is one
//!   dead letter.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use trailspike::config::Config;
use trailspike::engine::Engine;
use trailspike::metrics::Metrics;
use trailspike::parse::{MessageBody, RecordOutcome, RejectReason, SkipReason};

/// Far enough ahead that no record is refused for future skew.
const ARRIVAL_UNIX: i64 = 400_000_000_000;

fuzz_target!(|message: &[u8]| {
    let mut config = Config::default();
    config.input.max_message_bytes = 256 * 1024;
    config.detection.ignore_service_principals = message.first() == Some(&b'{');
    let options = config.parse_options();

    let records = match MessageBody::decode(message, &options) {
        Err(_) => None,
        Ok(body) => {
            let whole = body.bytes().as_ptr_range();
            let mut records = 0u64;
            let parsed = body.for_each_record(&options, |raw, outcome| {
                records += 1;
                let inside = raw.as_ptr_range();
                assert!(whole.start <= inside.start && inside.end <= whole.end);
                if let RecordOutcome::Call(call) = outcome {
                    assert!(!call.arn.is_empty(), "a counted call without an ARN");
                }
            });
            match parsed {
                Ok(()) => Some(records),
                Err(_) => {
                    assert_eq!(records, 0, "a refused message handed out records");
                    None
                }
            }
        }
    };

    let metrics = Arc::new(Metrics::new());
    let Ok(mut engine) = Engine::new(&config, metrics.clone()) else {
        return;
    };
    let mut dead_letters = 0u64;
    engine.process_message(0, message, ARRIVAL_UNIX, 0, &"fuzz", &mut |_| {
        dead_letters += 1;
    });
    let skipped: u64 = SkipReason::ALL
        .iter()
        .map(|r| Metrics::count(&metrics.records_skipped, r.as_str()))
        .sum();
    let rejected: u64 = RejectReason::bad_input()
        .map(|r| Metrics::count(&metrics.records_rejected, r.as_str()))
        .sum();
    let counted = metrics.records_counted.get();
    let late = metrics.records_late.get();
    assert_eq!(metrics.messages_consumed.get(), 1);
    match records {
        None => {
            assert_eq!((counted, skipped, late), (0, 0, 0));
            assert_eq!((rejected, dead_letters), (1, 1));
        }
        Some(records) => {
            assert_eq!(counted + skipped + late + rejected, records);
            assert_eq!(dead_letters, rejected);
        }
    }
});

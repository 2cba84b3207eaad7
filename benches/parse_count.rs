//! The parse + count path on one core: message bytes to per-ARN window
//! counts, on realistic records from `generate` (about 1 KB each).
//!
//!     cargo bench --bench parse_count
//!
//! Criterion prints each group's throughput as elements/s (records) and
//! bytes/s. `parse` is stage 1 alone; `parse_and_count` is what the Kafka
//! pipeline does per message (decode, parse, skip or reject, future-skew
//! guard, count into the window, advance the watermark), through the same
//! `Engine::process_message` that `run` and `replay` call.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use trailspike::config::Config;
use trailspike::engine::{DeadLetter, Engine};
use trailspike::generate::{self, GenerateArgs};
use trailspike::metrics::Metrics;
use trailspike::parse::{MessageBody, ParseOptions, RecordOutcome};

/// Records per iteration: enough for many windows and ARNs, small enough
/// that an iteration stays well under a second.
const RECORDS: u64 = 100_000;

fn generated_messages() -> Vec<Vec<u8>> {
    let args = GenerateArgs {
        hours: 72,
        arns: 2_000,
        rate_per_hour: RECORDS as f64 / 72.0 * 1.2,
        limit: RECORDS,
        ..GenerateArgs::default()
    };
    let mut out = Vec::new();
    generate::generate(&args, &mut out).expect("generating records");
    out.split(|&byte| byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn parse_only(messages: &[Vec<u8>], options: &ParseOptions) -> u64 {
    let mut calls = 0;
    for message in messages {
        let Ok(body) = MessageBody::decode(message, options) else {
            continue;
        };
        let _ = body.for_each_record(options, |_, outcome| {
            if let RecordOutcome::Call(call) = outcome {
                calls += black_box(call.event_time) as u64 & 1;
            }
        });
    }
    calls
}

fn parse_and_count(engine: &mut Engine, messages: &[Vec<u8>], arrival_unix: i64) {
    let origin = "bench";
    let mut ignore = |_: DeadLetter<'_>| {};
    for message in messages {
        engine.process_message(0, message, arrival_unix, 0, &origin, &mut ignore);
    }
}

fn bench_parse_count(c: &mut Criterion) {
    let messages = generated_messages();
    let bytes: usize = messages.iter().map(Vec::len).sum();
    let config = Config::default();
    let options = config.parse_options();
    // Later than every generated record, as the Kafka timestamp would be.
    let arrival_unix = i64::MAX / 2;

    let mut group = c.benchmark_group("cloudtrail");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.bench_function("parse", |b| {
        b.iter(|| parse_only(black_box(&messages), &options))
    });
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("parse_bytes", |b| {
        b.iter(|| parse_only(black_box(&messages), &options))
    });
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.bench_function("parse_and_count", |b| {
        b.iter_batched(
            || Engine::new(&config, Arc::new(Metrics::new())).expect("engine"),
            |mut engine| {
                parse_and_count(&mut engine, black_box(&messages), arrival_unix);
                engine
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_parse_count);
criterion_main!(benches);

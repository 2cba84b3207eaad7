//! A partition's state rebuilt from its changelog is the state that wrote
//! it: the contract scaling out rests on (src/kafka/changelog.rs). The
//! engine counts generated CloudTrail and checkpoints as a scaled-out task
//! does (`Changes::prepare`, then `StateStore::apply`); every checkpoint's
//! writes are kept, as the changelog keeps them, and replayed into an
//! empty store, whole or from where an earlier copy stopped.

use std::sync::Arc;

use trailspike::config::Config;
use trailspike::engine::{DeadLetter, Engine};
use trailspike::generate::{self, GenerateArgs};
use trailspike::metrics::Metrics;
use trailspike::store::{self, ChangelogPosition, StateStore, Write};

fn at(next: usize) -> ChangelogPosition {
    ChangelogPosition {
        next: next as i64,
        synced_ms: 0,
    }
}

/// A day and a half of 40 ARNs with two spikes, and how a run of it
/// checkpointed: every checkpoint's writes in order, the alerts, and the
/// store that applied them.
struct Run {
    changelog: Vec<Vec<Write>>,
    alerts: usize,
    store: StateStore,
}

fn run_with_checkpoints(every_records: usize) -> Run {
    let args = GenerateArgs {
        seed: 7,
        hours: 36,
        arns: 40,
        rate_per_hour: 200.0,
        spikes: 2,
        ..GenerateArgs::default()
    };
    let mut text = Vec::new();
    generate::generate(&args, &mut text).expect("generating records");
    let config = Config::from_toml("[detection]\nidle_timeout = \"1h\"\n").unwrap();
    let mut engine = Engine::new(&config, Arc::new(Metrics::new())).unwrap();
    let store = StateStore::temporary().unwrap();
    let mut run = Run {
        changelog: Vec::new(),
        alerts: 0,
        store,
    };
    let now_ms = 1_900_000_000_000;
    let checkpoint = |engine: &mut Engine, run: &mut Run, close_all: bool| {
        let mut changes = run.store.changes();
        if close_all {
            engine.close_all(&mut changes, now_ms).unwrap();
        } else {
            engine.close_ready(&mut changes, now_ms).unwrap();
        }
        engine.checkpoint(&mut changes, &|_| None).unwrap();
        let prepared = changes.prepare().unwrap();
        run.alerts += prepared.alerts.len();
        run.changelog.push(prepared.writes.clone());
        run.store.apply(prepared, None).unwrap();
    };
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let mut ignore = |_: DeadLetter<'_>| {};
        engine.process_message(
            i as i32 % 3,
            line,
            i64::MAX / 2,
            now_ms,
            &"gen",
            &mut ignore,
        );
        if i % every_records == every_records - 1 {
            checkpoint(&mut engine, &mut run, false);
        }
    }
    checkpoint(&mut engine, &mut run, true);
    run
}

/// Everything a task restores: baselines (CSV, with the lookup's
/// columns), known APIs and incidents per ARN, open windows, the
/// watermark and each source's progress.
fn contents(store: &StateStore) -> String {
    let mut csv = Vec::new();
    store::export_csv(std::slice::from_ref(store), &mut csv).unwrap();
    let mut text = String::from_utf8(csv).unwrap();
    for entry in store.baselines() {
        let (arn, _) = entry.unwrap();
        let known = store.known_apis(&arn).unwrap();
        text.push_str(&format!("known {arn} {:?}\n", known.usual(known.len())));
    }
    for entry in store.incidents() {
        text.push_str(&format!("incident {:?}\n", entry.unwrap()));
    }
    let mut windows = store.open_windows().unwrap();
    windows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    text.push_str(&format!("windows {windows:?}\n"));
    text.push_str(&format!("watermark {:?}\n", store.watermark().unwrap()));
    text.push_str(&format!("sources {:?}\n", store.sources().unwrap()));
    text.push_str(&format!("baseline count {}\n", store.baseline_count()));
    text
}

#[test]
fn a_store_restored_from_every_checkpoints_writes_equals_the_store_that_wrote_them() {
    let run = run_with_checkpoints(500);
    assert!(run.alerts > 0, "the data has spikes: alerts were made");
    assert!(run.changelog.len() > 10, "several checkpoints");
    let restored = StateStore::temporary().unwrap();
    let writes: Vec<Write> = run.changelog.iter().flatten().cloned().collect();
    let next = writes.len();
    restored.apply_changelog(writes, at(next)).unwrap();
    assert!(run.store.baseline_count() > 30);
    assert_eq!(contents(&restored), contents(&run.store));
    assert_eq!(restored.changelog_position().unwrap(), Some(at(next)));
}

#[test]
fn a_copy_that_stopped_part_way_catches_up_from_where_it_stopped() {
    let run = run_with_checkpoints(700);
    let middle = run.changelog.len() / 2;
    let copy = StateStore::temporary().unwrap();
    let first: Vec<Write> = run.changelog[..middle].concat();
    copy.apply_changelog(first, at(middle)).unwrap();
    assert_ne!(
        contents(&copy),
        contents(&run.store),
        "half way is not the end"
    );
    // Reading again from before where the copy stopped is harmless.
    let rest: Vec<Write> = run.changelog[middle - 1..].concat();
    copy.apply_changelog(rest, at(run.changelog.len())).unwrap();
    assert_eq!(contents(&copy), contents(&run.store));
}

#[test]
fn a_cleared_copy_restores_whole_again() {
    let run = run_with_checkpoints(900);
    let copy = StateStore::temporary().unwrap();
    copy.apply_changelog(run.changelog[0].clone(), at(1))
        .unwrap();
    copy.clear().unwrap();
    assert_eq!(copy.baseline_count(), 0);
    assert!(copy.open_windows().unwrap().is_empty());
    copy.apply_changelog(run.changelog.concat(), at(5)).unwrap();
    assert_eq!(contents(&copy), contents(&run.store));
}

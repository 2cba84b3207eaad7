//! `state.max_open_arn_windows`: an engine that keeps at most three open
//! (window, ARN) entries in memory and spills the rest yields exactly what
//! an unbounded engine yields, for random input with disorder, late
//! records, duplicate event ids, several sources, checkpoints and
//! restarts. Compared: every alert, every baseline, the open windows each
//! checkpoint makes durable, and the counters.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;

use trailspike::config::Config;
use trailspike::engine::Engine;
use trailspike::metrics::Metrics;
use trailspike::store::StateStore;

const HOUR: i64 = 3600;
const T0: i64 = 1_714_521_600;
const ARRIVAL: i64 = T0 + 1_000 * HOUR;
const NAMES: [&str; 3] = ["ListBuckets", "GetObject", "AssumeRole"];

#[derive(Debug, Clone)]
enum Step {
    Record {
        source: i32,
        /// Minutes after T0, so a few records share each window.
        minute: i64,
        arn: u8,
        name: usize,
        id: u8,
    },
    /// Makes open windows durable, as the pipeline does on its timer.
    Checkpoint,
    /// Checkpoints, drops the engine and starts a new one from the store.
    /// (The store stays open: sled releases its lock asynchronously.)
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => (0i32..2, 0i64..600, 0u8..10, 0usize..NAMES.len(), 0u8..6).prop_map(
            |(source, minute, arn, name, id)| Step::Record { source, minute, arn, name, id }
        ),
        1 => Just(Step::Checkpoint),
        1 => Just(Step::Restart),
    ]
}

/// One open (window, ARN) entry as a checkpoint made it durable: window
/// start, ARN, count, and the event names seen.
type DurableEntry = (i64, String, u64, Vec<String>);

/// One engine with its own store on disk, and what it has produced.
struct Run {
    config: Config,
    _dir: tempfile::TempDir,
    store: StateStore,
    engine: Option<Engine>,
    alerts: Vec<String>,
    /// Open windows as durable after each checkpoint.
    checkpoints: Vec<Vec<DurableEntry>>,
    counted: u64,
    late: u64,
    spilled: u64,
}

impl Run {
    fn new(config: Config) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut run = Run {
            config,
            _dir: dir,
            store,
            engine: None,
            alerts: Vec::new(),
            checkpoints: Vec::new(),
            counted: 0,
            late: 0,
            spilled: 0,
        };
        run.open();
        run
    }

    fn open(&mut self) {
        let mut engine = Engine::new(&self.config, Arc::new(Metrics::new())).unwrap();
        engine.spill_to(&self.store).unwrap();
        engine.restore(&self.store, 0).unwrap();
        self.engine = Some(engine);
    }

    fn parts(&mut self) -> (&StateStore, &mut Engine) {
        (&self.store, self.engine.as_mut().unwrap())
    }

    fn record(&mut self, source: i32, message: &[u8]) {
        let (store, engine) = self.parts();
        engine.process_message(source, message, ARRIVAL, 0, &"model", &mut |_| {});
        let mut changes = store.changes();
        let alerts = engine.close_ready(&mut changes, 0).unwrap();
        changes.commit().unwrap();
        self.alerts.extend(alerts.iter().map(|a| a.to_json()));
    }

    fn checkpoint(&mut self) {
        let (store, engine) = self.parts();
        let mut changes = store.changes();
        let alerts = engine.close_ready(&mut changes, 0).unwrap();
        engine.checkpoint(&mut changes, &|_| None).unwrap();
        changes.commit().unwrap();
        let durable = store
            .open_windows()
            .unwrap()
            .into_iter()
            .map(|(start, arn, w)| {
                let names: BTreeSet<String> =
                    w.event_names.keys().map(|n| n.to_string()).collect();
                (start, arn.to_string(), w.count, names.into_iter().collect())
            })
            .collect();
        self.checkpoints.push(durable);
        self.alerts.extend(alerts.iter().map(|a| a.to_json()));
    }

    fn restart(&mut self) {
        self.checkpoint();
        self.take_counters();
        self.engine = None;
        self.open();
    }

    fn take_counters(&mut self) {
        let metrics = self.engine.as_ref().unwrap().metrics();
        self.counted += metrics.records_counted.get();
        self.late += metrics.records_late.get();
        self.spilled += metrics.open_window_arn_spills.get();
    }

    fn finish(mut self) -> Finished {
        let (store, engine) = self.parts();
        let mut changes = store.changes();
        let alerts = engine.close_all(&mut changes, 0).unwrap();
        changes.commit().unwrap();
        let baselines = store
            .baselines()
            .map(|entry| {
                let (arn, b) = entry.unwrap();
                format!("{arn} {b:?}")
            })
            .collect();
        self.alerts.extend(alerts.iter().map(|a| a.to_json()));
        self.take_counters();
        Finished {
            alerts: self.alerts,
            baselines,
            checkpoints: self.checkpoints,
            counted: self.counted,
            late: self.late,
            spilled: self.spilled,
        }
    }
}

#[derive(Debug, PartialEq)]
struct Finished {
    alerts: Vec<String>,
    baselines: Vec<String>,
    checkpoints: Vec<Vec<DurableEntry>>,
    counted: u64,
    late: u64,
    /// Not compared: only the bounded run spills.
    spilled: u64,
}

/// Alerts from the first windows on, so the comparison covers them.
fn config(dedupe: bool, max_open: usize) -> Config {
    let mut config = Config::default();
    config.detection.data_point_threshold = 0;
    config.detection.deviation_threshold = 0.5;
    config.detection.dedupe_event_id = dedupe;
    config.state.max_open_arn_windows = max_open;
    config
}

fn message(minute: i64, arn: u8, name: usize, id: u8) -> Vec<u8> {
    let record = json!({
        "eventTime": time::OffsetDateTime::from_unix_timestamp(T0 + minute * 60)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
        "eventType": "AwsApiCall",
        "eventName": NAMES[name],
        "eventID": format!("id-{id}"),
        "userIdentity": {"type": "IAMUser", "arn": format!("arn:aws:iam::1:user/u{arn}")},
    });
    record.to_string().into_bytes()
}

fn run_both(steps: &[Step], dedupe: bool) -> (Finished, Finished) {
    let mut unbounded = Run::new(config(dedupe, usize::MAX));
    let mut bounded = Run::new(config(dedupe, 3));
    for step in steps {
        for run in [&mut unbounded, &mut bounded] {
            match *step {
                Step::Record {
                    source,
                    minute,
                    arn,
                    name,
                    id,
                } => run.record(source, &message(minute, arn, name, id)),
                Step::Checkpoint => run.checkpoint(),
                Step::Restart => run.restart(),
            }
        }
    }
    (unbounded.finish(), bounded.finish())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_bound_of_three_open_entries_changes_no_result(
        steps in prop::collection::vec(step(), 1..120),
        dedupe in any::<bool>(),
    ) {
        let (unbounded, mut bounded) = run_both(&steps, dedupe);
        prop_assert_eq!(unbounded.spilled, 0);
        bounded.spilled = 0;
        prop_assert_eq!(unbounded, bounded);
    }
}

#[test]
fn ten_arns_in_one_window_spill_and_still_alert_identically() {
    let mut steps = Vec::new();
    for window in 0..8i64 {
        for arn in 0..10u8 {
            // Counts that jump in later windows for some ARNs, so spikes.
            let calls = 1 + (window * i64::from(arn)) % 7;
            for call in 0..calls {
                steps.push(Step::Record {
                    source: 0,
                    minute: window * 60 + call,
                    arn,
                    name: (call % 3) as usize,
                    id: call as u8,
                });
            }
        }
    }
    let (unbounded, mut bounded) = run_both(&steps, false);
    assert!(bounded.spilled > 0, "the bounded run never spilled");
    assert!(!unbounded.alerts.is_empty(), "nothing to compare");
    bounded.spilled = 0;
    assert_eq!(unbounded, bounded);
}

//! The crash soak: trailspike on a long generated stream, killed with
//! SIGKILL at random moments and restarted each time; at the end the
//! alerts topic must hold every expected alert exactly once and the
//! baselines must equal those of an uninterrupted run (and of the
//! offline replay).
//!
//! Two tests: a short one in the suite, and the long one, ignored, that
//! `scripts/crash-soak` runs with its parameters from the environment:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `TRAILSPIKE_SOAK_KILLS` | SIGKILLs | 25 |
//! | `TRAILSPIKE_SOAK_HOURS` | hours of generated CloudTrail | 168 |
//! | `TRAILSPIKE_SOAK_ARNS` | identities | 300 |
//! | `TRAILSPIKE_SOAK_SEED` | seed of the records and of the kill moments | from the clock |
//!
//! Each kill lands while a part of the input is being produced: the input
//! is split into one part per run, and each run is killed a random time
//! (seeded, printed) after it has been assigned its partitions.
//!
//! Needs `TRAILSPIKE_TEST_BOOTSTRAP` (`scripts/test` sets it).

mod kafka_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka_common::{
    generate_records, last_event_time, payloads, round_robin, sentinels, Baselines,
    Expected, Feed, Outgoing, Producer, Received, Settings, Workspace,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trailspike::generate::GenerateArgs;

/// Longest a run may take to get assigned its partitions (a restart
/// after SIGKILL waits out the dead member's 6 s session).
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest the final `run --stop-at-end` may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Kills land up to this long after the partitions are assigned.
const MAX_KILL_DELAY: Duration = Duration::from_millis(3_000);
/// How long producing one part takes: ten steps this far apart.
const FEED_PAUSE: Duration = Duration::from_millis(300);

struct Soak {
    seed: u64,
    kills: usize,
    generate: GenerateArgs,
}

/// What a soak found.
struct Figures {
    kills: usize,
    messages: usize,
    expected: usize,
    found: usize,
    duplicates: usize,
    missing: usize,
    unexpected: usize,
    baseline_diffs_replay: usize,
    baseline_diffs_uninterrupted: usize,
    /// Over the restarts' "outbox recovered" lines: alerts found already
    /// on the topic, and alerts sent again.
    read_back: u64,
    resent: u64,
}

impl Figures {
    fn line(&self, seed: u64, seconds: f64) -> String {
        format!(
            "crash soak: seed={seed} messages={} kills={} alerts expected={} found={} \
             duplicates={} missing={} unexpected={} baseline differences={} \
             (vs uninterrupted run) {} (vs replay); after restarts {} queued alerts \
             were found on the topic and {} resent; {seconds:.1}s",
            self.messages,
            self.kills,
            self.expected,
            self.found,
            self.duplicates,
            self.missing,
            self.unexpected,
            self.baseline_diffs_uninterrupted,
            self.baseline_diffs_replay,
            self.read_back,
            self.resent,
        )
    }
}

fn settings() -> Settings {
    Settings {
        checkpoint_interval: "200ms".into(),
        ..Settings::default()
    }
}

/// Baselines that differ (missing, unexpected, or a count or statistic
/// off by more than `1e-9` relative).
fn baseline_differences(actual: &Baselines, expected: &Baselines) -> usize {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs());
    let differ = expected
        .iter()
        .filter(|(arn, want)| match actual.get(*arn) {
            None => true,
            Some(got) => {
                got.latest_count != want.latest_count
                    || got.num_data_points != want.num_data_points
                    || !close(got.avg_api_calls, want.avg_api_calls)
                    || !close(got.stdev_api_calls, want.stdev_api_calls)
            }
        })
        .count();
    differ + actual.keys().filter(|a| !expected.contains_key(*a)).count()
}

/// Copies of each alert id on the topic.
fn alert_copies(on_topic: &[Received]) -> BTreeMap<String, usize> {
    let mut copies = BTreeMap::new();
    for message in on_topic {
        let alert: serde_json::Value =
            serde_json::from_slice(&message.payload).expect("an alert is JSON");
        let id = alert["alertId"].as_str().expect("an alertId").to_string();
        *copies.entry(id).or_insert(0) += 1;
    }
    copies
}

/// The sum of `field=N` over the "outbox recovered" lines of `logs`.
fn outbox_sum(logs: &str, field: &str) -> u64 {
    let pattern = format!("{field}=");
    logs.lines()
        .filter(|line| line.contains("outbox recovered"))
        .filter_map(|line| {
            let at = line.find(&pattern)? + pattern.len();
            line[at..].split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// The same records run through once, without faults.
fn uninterrupted_run(messages: &[Outgoing], settings: &Settings) -> Baselines {
    let mut workspace = Workspace::new("soak_uninterrupted", 3, settings);
    Producer::new(&workspace.input).send(messages);
    workspace.run_to_end(RUN_TIMEOUT);
    workspace.exported_baselines()
}

impl Soak {
    fn run(&self) {
        let started = Instant::now();
        eprintln!(
            "crash soak: seed={} kills={} hours={} arns={}",
            self.seed, self.kills, self.generate.hours, self.generate.arns
        );
        let settings = settings();
        let (records, _) = generate_records(&self.generate);
        let mut messages = round_robin(&records, &[0, 1, 2]);
        let ends = sentinels(last_event_time(&records), &[0, 1, 2]);
        messages.extend(ends.iter().cloned());
        let expected = Expected::replay(&payloads(&messages), &settings.replay_config());
        let uninterrupted = uninterrupted_run(&messages, &settings);

        let mut workspace = Workspace::new("crash_soak", 3, &settings);
        let data = &messages[..records.len()];
        // One part per killed run; the last run reads what is left.
        let mut parts = data.chunks(data.len().div_ceil(self.kills + 1));
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        for kill in 1..=self.kills {
            let part = parts.next().expect("a part per kill").to_vec();
            let step = (part.len() / 10).max(1);
            let feed = Feed::start(&workspace.input, part, step, FEED_PAUSE);
            let mut process = workspace.start(false);
            let log = process.log_path().to_path_buf();
            process.wait_until("partitions are assigned", ASSIGN_TIMEOUT, || {
                std::fs::read_to_string(&log)
                    .is_ok_and(|text| text.contains("partitions assigned"))
            });
            let delay = rng.gen_range(Duration::ZERO..MAX_KILL_DELAY);
            // The kill moment itself is what is random here: this pause
            // waits for no condition.
            std::thread::sleep(delay);
            assert!(process.running(), "run {kill} was alive at its kill");
            process.kill();
            eprintln!("crash soak: kill {kill} at {delay:?} after assignment");
            feed.finish();
        }
        let rest: Vec<Outgoing> = parts.flatten().cloned().chain(ends).collect();
        Producer::new(&workspace.input).send(&rest);
        workspace.run_to_end(RUN_TIMEOUT);

        let on_topic = workspace.read_alerts();
        let copies = alert_copies(&on_topic);
        let baselines = workspace.exported_baselines();
        let figures = Figures {
            kills: self.kills,
            messages: messages.len(),
            expected: expected.alerts.len(),
            found: copies
                .keys()
                .filter(|id| expected.alerts.contains_key(*id))
                .count(),
            duplicates: copies.values().map(|&n| n - 1).sum(),
            missing: expected
                .alerts
                .keys()
                .filter(|id| !copies.contains_key(*id))
                .count(),
            unexpected: copies
                .keys()
                .filter(|id| !expected.alerts.contains_key(*id))
                .count(),
            baseline_diffs_replay: baseline_differences(&baselines, &expected.baselines),
            baseline_diffs_uninterrupted: baseline_differences(
                &baselines,
                &uninterrupted,
            ),
            read_back: outbox_sum(&workspace.logs(), "already_on_topic"),
            resent: outbox_sum(&workspace.logs(), "resent"),
        };
        eprintln!(
            "{}",
            figures.line(self.seed, started.elapsed().as_secs_f64())
        );
        assert!(figures.expected > 0, "the stream has alerts to lose");
        expected.assert_alerts(&on_topic);
        expected.assert_baselines(&baselines);
        kafka_common::assert_baselines_match(&baselines, &uninterrupted, 1e-9);
    }
}

/// Whole seconds of the clock: a new seed each run unless one is given.
fn seed_from_env() -> u64 {
    env_number("TRAILSPIKE_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    })
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={text:?} is not a whole number: {e}")),
    )
}

#[test]
fn short_crash_soak_five_random_sigkills_lose_and_repeat_nothing() {
    Soak {
        seed: seed_from_env(),
        kills: 5,
        generate: GenerateArgs {
            seed: 7,
            hours: 48,
            arns: 100,
            rate_per_hour: 300.0,
            spikes: 3,
            ..GenerateArgs::default()
        },
    }
    .run();
}

#[test]
#[ignore = "long: run with scripts/crash-soak"]
fn crash_soak_random_sigkills_lose_and_repeat_nothing() {
    let seed = seed_from_env();
    let hours = env_number("TRAILSPIKE_SOAK_HOURS").unwrap_or(168);
    Soak {
        seed,
        kills: env_number("TRAILSPIKE_SOAK_KILLS").unwrap_or(25) as usize,
        generate: GenerateArgs {
            seed,
            hours,
            arns: env_number("TRAILSPIKE_SOAK_ARNS").unwrap_or(300) as u32,
            rate_per_hour: 400.0,
            spikes: (hours / 12).max(2) as u32,
            ..GenerateArgs::default()
        },
    }
    .run();
}

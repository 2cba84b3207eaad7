//! The state store failing under trailspike: a read-only state directory,
//! a store whose files are garbage, a disk that fills up mid-run. Each
//! time trailspike must log an error (level ERROR, naming the store and
//! the cause), exit non-zero, and never commit a group offset past what
//! the store made durable; where the store survives, a later run with the
//! fault gone must equal the offline replay (nothing was lost).
//!
//! How the faults are made, as root (the tests refuse to run otherwise,
//! rather than skip): `chmod` does not stop root, so the read-only
//! directory is a read-only bind mount of the state directory onto
//! itself; the full disk is a small tmpfs mounted on the state directory,
//! filled by a file of zeros once trailspike has made some checkpoints.
//!
//! Needs `TRAILSPIKE_TEST_BOOTSTRAP` (`scripts/test` sets it).

mod kafka_common;
mod reliability_common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kafka_common::{
    a_day_and_a_half, generate_records, last_event_time, payloads, round_robin,
    sentinels, Expected, Feed, OffsetWatch, Outgoing, Producer, Settings, Workspace,
};
use reliability_common::{is_root, run_checked};
use trailspike::store::StateStore;

/// Longest a `run --stop-at-end` may take on a busy 2-core machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest trailspike may take to notice a failed store and exit.
const FAIL_TIMEOUT: Duration = Duration::from_secs(60);

/// The records over partitions 0, 1 and 2, sentinels last, split into
/// a first and a second part; and what replay makes of all of it.
struct Input {
    first: Vec<Outgoing>,
    second: Vec<Outgoing>,
    expected: Expected,
}

impl Input {
    fn new(seed: u64, settings: &Settings) -> Input {
        let (records, _) = generate_records(&a_day_and_a_half(seed));
        let mut messages = round_robin(&records, &[0, 1, 2]);
        messages.extend(sentinels(last_event_time(&records), &[0, 1, 2]));
        let expected = Expected::replay(&payloads(&messages), &settings.replay_config());
        assert!(!expected.alerts.is_empty(), "the input has alerts");
        let second = messages.split_off(messages.len() / 2);
        Input {
            first: messages,
            second,
            expected,
        }
    }
}

fn require_root(what: &str) {
    assert!(
        is_root(),
        "this test makes {what} with mount(8), which needs root; run it as root \
         (it does not skip, so a green run means the fault was made)"
    );
}

fn run(program: &str, args: &[&str]) {
    run_checked(Command::new(program).args(args));
}

/// A mount on a test's path, unmounted when dropped (lazily, so a test
/// that failed with a process still holding it does not leave it behind).
struct Mount(PathBuf);

impl Mount {
    /// `path` bound onto itself, read-only.
    fn read_only_bind(path: &Path) -> Mount {
        let text = path.to_str().expect("a UTF-8 path");
        run("mount", &["--bind", text, text]);
        let mount = Mount(path.to_path_buf());
        run("mount", &["-o", "remount,bind,ro", text]);
        mount
    }

    /// A tmpfs of `size_bytes` on `path`, which must exist.
    fn tmpfs(path: &Path, size_bytes: u64) -> Mount {
        let options = format!("size={size_bytes},mode=0700");
        let text = path.to_str().expect("a UTF-8 path");
        run("mount", &["-t", "tmpfs", "-o", &options, "tmpfs", text]);
        Mount(path.to_path_buf())
    }

    /// Unmounts now, failing the test if that fails.
    fn unmount(self) {
        let text = self.0.to_str().expect("a UTF-8 path").to_string();
        std::mem::forget(self);
        run("umount", &[&text]);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The next offset of each partition as the store made it durable.
fn durable_offsets(state_dir: &Path) -> BTreeMap<i32, i64> {
    let store = StateStore::open(state_dir).expect("the store opens");
    store
        .sources()
        .expect("the store's sources decode")
        .into_iter()
        .filter_map(|(partition, p)| p.next_offset.map(|next| (partition, next)))
        .collect()
}

/// No committed offset is past the store's.
fn assert_committed_within(committed: &BTreeMap<i32, i64>, durable: &BTreeMap<i32, i64>) {
    for (partition, &offset) in committed {
        let stored = durable.get(partition).copied().unwrap_or(0);
        assert!(
            offset <= stored,
            "partition {partition}: the group committed {offset}, past the store's \
             durable {stored} (committed {committed:?}, durable {durable:?})"
        );
    }
}

/// The log has an ERROR line of trailspike's own (not only sled's) that
/// names the state store, its directory and every one of `causes`;
/// returns that line.
fn assert_loud_store_error(log: &str, state_dir: &Path, causes: &[&str]) -> String {
    let dir = state_dir.display().to_string();
    let line = log
        .lines()
        .find(|line| {
            line.contains(" ERROR trailspike")
                && line.contains("state store")
                && line.contains(&dir)
                && causes.iter().all(|cause| line.contains(cause))
        })
        .unwrap_or_else(|| {
            panic!(
                "no ERROR line about the state store with {causes:?} in the log:\n{log}"
            )
        });
    line.to_string()
}

/// Runs trailspike on the first part to its end, so that the store and
/// the group's offsets hold something; returns the committed offsets.
fn first_run(workspace: &mut Workspace, input: &Input) -> BTreeMap<i32, i64> {
    Producer::new(&workspace.input).send(&input.first);
    workspace.run_to_end(RUN_TIMEOUT);
    let committed = workspace.offsets().committed();
    assert_eq!(
        committed.values().sum::<i64>(),
        input.first.len() as i64,
        "the first run committed all of the first part"
    );
    assert_eq!(committed, durable_offsets(&workspace.state_dir));
    committed
}

/// Starts trailspike and waits for it to fail; returns its log.
fn run_expecting_failure(workspace: &mut Workspace) -> String {
    let process = workspace.start(false);
    let status = process.wait(FAIL_TIMEOUT);
    let log = workspace.logs();
    let last = log.rsplit("--- run").next().unwrap_or_default().to_string();
    assert!(
        !status.success(),
        "trailspike exited 0 on a failed store; its log:\n{last}"
    );
    eprintln!("exit status: {status}");
    last
}

#[test]
fn read_only_state_dir_is_a_loud_failure_that_moves_no_offset() {
    require_root("a read-only state directory");
    let started = Instant::now();
    let settings = Settings::default();
    let mut workspace = Workspace::new("read_only_state", 3, &settings);
    let input = Input::new(21, &settings);
    let before = first_run(&mut workspace, &input);
    Producer::new(&workspace.input).send(&input.second);

    let mount = Mount::read_only_bind(&workspace.state_dir);
    let log = run_expecting_failure(&mut workspace);
    let line =
        assert_loud_store_error(&log, &workspace.state_dir, &["Read-only file system"]);
    let after = workspace.offsets().committed();
    assert_eq!(after, before, "no committed offset moved");
    mount.unmount();

    // With the directory writable again nothing is missing.
    workspace.run_to_end(RUN_TIMEOUT);
    input.expected.assert_workspace(&workspace);
    eprintln!(
        "read-only state dir: {line}\n  offsets stayed at {after:?}; {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Overwrites every file under `dir` but those named in `spare` with
/// pseudo-random bytes of the same length (at least 64).
fn overwrite_with_garbage(dir: &Path, spare: &[&str]) -> usize {
    let mut files = 0;
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for entry in std::fs::read_dir(dir).expect("reading the state dir") {
        let path = entry.expect("a dir entry").path();
        if path.is_dir() {
            files += overwrite_with_garbage(&path, spare);
            continue;
        }
        if path
            .file_name()
            .is_some_and(|name| spare.iter().any(|s| name == *s))
        {
            continue;
        }
        let len = std::fs::metadata(&path).expect("metadata").len() as usize;
        let garbage: Vec<u8> = (0..len.max(64))
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(&path, garbage).expect("overwriting a store file");
        files += 1;
    }
    files
}

#[test]
fn corrupted_store_is_a_loud_failure_that_moves_no_offset() {
    corrupted_store_fails_loudly("corrupted_store", 22, &[]);
}

/// sled's `conf` intact, its log and snapshot garbage: the store must
/// still refuse to open, not start empty.
#[test]
fn corrupted_store_log_with_intact_conf_is_a_loud_failure_that_moves_no_offset() {
    corrupted_store_fails_loudly("corrupted_log", 24, &["conf"]);
}

fn corrupted_store_fails_loudly(test: &str, seed: u64, spare: &[&str]) {
    let started = Instant::now();
    let settings = Settings::default();
    let mut workspace = Workspace::new(test, 3, &settings);
    let input = Input::new(seed, &settings);
    let before = first_run(&mut workspace, &input);
    Producer::new(&workspace.input).send(&input.second);

    let files = overwrite_with_garbage(&workspace.state_dir, spare);
    assert!(files > 0, "the state dir has files to corrupt");
    let log = run_expecting_failure(&mut workspace);
    let line = assert_loud_store_error(&log, &workspace.state_dir, &[]);
    let after = workspace.offsets().committed();
    assert_eq!(after, before, "no committed offset moved");
    eprintln!(
        "{test} ({files} files, {spare:?} spared): {line}\n  offsets stayed at {after:?}; \
         {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("creating the filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = file.sync_all();
    written
}

#[test]
fn full_disk_mid_run_is_a_loud_failure_that_commits_nothing_past_the_store() {
    require_root("a full disk (a small tmpfs)");
    let started = Instant::now();
    let settings = Settings {
        checkpoint_interval: "200ms".into(),
        ..Settings::default()
    };
    let mut workspace = Workspace::new("full_disk", 3, &settings);
    let input = Input::new(23, &settings);
    std::fs::create_dir_all(&workspace.state_dir).expect("creating the state dir");
    let mount = Mount::tmpfs(&workspace.state_dir, 32 * 1024 * 1024);
    let offsets: OffsetWatch = workspace.offsets();

    let mut all = input.first.clone();
    all.extend(input.second.iter().cloned());
    let feed = Feed::start(
        &workspace.input,
        all,
        input.first.len() / 10,
        Duration::from_millis(300),
    );
    let mut process = workspace.start(false);
    process.wait_until("some input is committed", RUN_TIMEOUT, || {
        offsets.total() > 0
    });
    let filled = fill(&workspace.state_dir.join("filler"));
    let committed_at_full = offsets.committed();
    let status = process.wait(FAIL_TIMEOUT);
    let log = workspace.logs();
    assert!(
        !status.success(),
        "trailspike exited 0 on a full disk; its log:\n{log}"
    );
    let line =
        assert_loud_store_error(&log, &workspace.state_dir, &["No space left on device"]);
    feed.finish();
    let committed = offsets.committed();
    std::fs::remove_file(workspace.state_dir.join("filler"))
        .expect("removing the filler");
    let durable = durable_offsets(&workspace.state_dir);
    assert_committed_within(&committed, &durable);

    // With space again, the next run picks up from the durable state
    // and nothing is lost or repeated.
    workspace.run_to_end(RUN_TIMEOUT);
    input.expected.assert_workspace(&workspace);
    drop(mount);
    eprintln!(
        "full disk ({filled} filler bytes, exit {status}): {line}\n  \
         committed {committed_at_full:?} when full, {committed:?} at exit, \
         durable {durable:?}; {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

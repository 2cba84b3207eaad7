//! State in sled: baselines, open windows, per-source progress and the
//! outbox of alerts not yet acknowledged by the broker.
//!
//! Everything lives in one tree so that a checkpoint is one atomic batch:
//! after a crash the store holds either all of a checkpoint or none of it,
//! never baselines updated for a window whose offsets were not saved.
//! Keys start with a one-byte kind:
//!
//! | kind | key | value |
//! |---|---|---|
//! | `b` | ARN | [`Baseline`], then [`KnownApis`]: the APIs it has called |
//! | `w` | window start (order-preserving) + ARN | [`ArnWindow`] |
//! | `s` | source id (order-preserving) | [`SourceProgress`] |
//! | `i` | ARN | [`Incident`]: its open incident |
//! | `o` | sequence number | alert JSON |
//! | `m` | name | metadata such as the watermark and the format |
//!
//! Values are postcard; a value that does not decode is a corrupted store
//! and an error, never skipped.
//!
//! Open windows evicted from memory past `state.max_open_arn_windows` go
//! to files in a `spill-*` directory beside the store ([`crate::spill`]):
//! scratch space, not state.
//!
//! Scaled out ([`crate::kafka::scaled`]), each partition of the internal
//! topics has a tree of its own in one sled database, with the same keys,
//! and every checkpoint's writes go first to that partition's changelog
//! topic, then to the tree ([`Changes::prepare`], [`StateStore::apply`]).
//! The tree also records how far into the changelog it is (local only).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::alert::Incident;
use crate::baseline::Baseline;
use crate::spill::Spill;
use crate::summary::KnownApis;
use crate::window::{ArnWindow, FastMap, FastSet, SourceId};

const BASELINE: u8 = b'b';
const WINDOW: u8 = b'w';
const SOURCE: u8 = b's';
const OUTBOX: u8 = b'o';
const INCIDENT: u8 = b'i';
const WATERMARK_KEY: &[u8] = b"mwatermark";
const BASELINE_COUNT_KEY: &[u8] = b"mbaseline_count";
const FORMAT_KEY: &[u8] = b"mformat";
/// Where the tree is in its changelog ([`ChangelogPosition`]); local, so
/// never itself in the changelog.
const CHANGELOG_POSITION_KEY: &[u8] = b"mchangelog_position";
/// Tree names of the partitions of a scaled-out store.
const PARTITION_TREE_PREFIX: &str = "partition-";
/// Version of the value layouts. 1 (no key) held open windows without
/// per-name counts or context, and baselines without known APIs; both are
/// converted when the store opens.
const FORMAT: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open state store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("cannot create state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state store I/O failed: {0}")]
    Sled(#[from] sled::Error),
    #[error("state store is corrupted: key {key:?} does not decode: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: postcard::Error,
    },
    #[error("spill file {path} failed: {source}")]
    Spill {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("baseline CSV line {line}: {message}")]
    Csv { line: u64, message: String },
    #[error(
        "state store format {found} was written by a newer trailspike \
         (this one reads up to {FORMAT}); run that version, or start from an \
         empty state.dir"
    )]
    NewerFormat { found: u32 },
}

/// An alert made durable and waiting for the broker's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Wall-clock milliseconds when it was queued: after a crash, the
    /// alerts topic is read back from this time to find which of the
    /// queued alerts did reach it.
    pub queued_ms: i64,
    /// The message key (the ARN).
    pub key: String,
    pub payload: String,
}

/// One key a checkpoint sets, or with `None` removes: what the tree
/// applies and what the changelog carries, in order.
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// A checkpoint's writes, not yet applied (see [`Changes::prepare`]).
#[derive(Debug, Default)]
pub struct Prepared {
    pub writes: Vec<Write>,
    /// Alerts the checkpoint made, in order; they are not in `writes`.
    pub alerts: Vec<OutboxEntry>,
    baseline_count: u64,
}

/// How far into its changelog a scaled-out partition's tree is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangelogPosition {
    /// The offset after the last write the tree holds (at most: reading
    /// from an earlier offset again is harmless).
    pub next: i64,
    /// Wall-clock milliseconds when it was last brought up to date: a
    /// tree idle past the changelog's `delete.retention.ms` may have
    /// missed tombstones that compaction dropped meanwhile.
    pub synced_ms: i64,
}

/// How far a source has been processed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceProgress {
    /// The next offset to read (Kafka) or record number (files).
    pub next_offset: Option<i64>,
    pub max_event_time: Option<i64>,
}

pub struct StateStore {
    db: sled::Db,
    tree: sled::Tree,
    /// Where the spill directory goes: the state directory, or for a
    /// temporary store a directory of its own under the system's
    /// temporary directory (sled's own temporary files are in /dev/shm,
    /// which is memory).
    spill_parent: PathBuf,
    /// That directory of a temporary store, removed with the store. Its
    /// own, because creating a spill area removes every `spill-*` beside
    /// it as left over by an earlier process: in the shared temporary
    /// directory that was the spill area of any other replay running at
    /// the same time.
    _temporary_spill_parent: Option<tempfile::TempDir>,
    /// Kept in the store beside the baselines, so that knowing how many
    /// there are never needs a scan of them.
    baseline_count: AtomicU64,
}

impl StateStore {
    /// Opens or creates the store in `dir`, private to the current user.
    pub fn open(dir: &Path) -> Result<StateStore, StoreError> {
        let db = Self::open_database(dir)?;
        Self::with_db(db, dir.to_path_buf(), None)
    }

    /// The database in `dir`, private to the current user: a scaled-out
    /// instance's holds one tree per partition of the internal topics,
    /// opened with [`StateStore::partition`].
    pub fn open_database(dir: &Path) -> Result<sled::Db, StoreError> {
        create_private_dir(dir)?;
        sled::Config::new()
            .path(dir)
            .open()
            .map_err(|source| StoreError::Open {
                path: dir.to_path_buf(),
                source,
            })
    }

    /// The state of partition `partition` in `db`, a database opened from
    /// `dir` by [`StateStore::open_database`]. Its spill area is a
    /// directory of its own, since creating one clears its siblings.
    pub fn partition(
        db: &sled::Db,
        dir: &Path,
        partition: i32,
    ) -> Result<StateStore, StoreError> {
        let name = format!("{PARTITION_TREE_PREFIX}{partition}");
        let spill_parent = dir.join("spill").join(&name);
        create_private_dir(&spill_parent)?;
        let tree = db.open_tree(&name)?;
        Self::with_tree(db.clone(), tree, spill_parent, None)
    }

    /// Every store in `dir`: the partitions of a scaled-out instance, or
    /// else the one store of a single instance.
    pub fn open_every(dir: &Path) -> Result<Vec<StateStore>, StoreError> {
        let db = Self::open_database(dir)?;
        let partitions = Self::partitions_in(&db);
        if partitions.is_empty() {
            return Ok(vec![Self::with_db(db, dir.to_path_buf(), None)?]);
        }
        partitions
            .into_iter()
            .map(|partition| Self::partition(&db, dir, partition))
            .collect()
    }

    /// The partitions that have a tree in `db`, in order.
    pub fn partitions_in(db: &sled::Db) -> Vec<i32> {
        let mut partitions: Vec<i32> = db
            .tree_names()
            .iter()
            .filter_map(|name| {
                let name = std::str::from_utf8(name).ok()?;
                name.strip_prefix(PARTITION_TREE_PREFIX)?.parse().ok()
            })
            .collect();
        partitions.sort_unstable();
        partitions
    }

    /// A store that lives only as long as the process (replay without
    /// `--state`).
    pub fn temporary() -> Result<StateStore, StoreError> {
        let db = sled::Config::new().temporary(true).open()?;
        let parent = tempfile::Builder::new()
            .prefix("trailspike-")
            .tempdir()
            .map_err(|source| StoreError::CreateDir {
                path: std::env::temp_dir(),
                source,
            })?;
        Self::with_db(db, parent.path().to_path_buf(), Some(parent))
    }

    fn with_db(
        db: sled::Db,
        spill_parent: PathBuf,
        temporary_spill_parent: Option<tempfile::TempDir>,
    ) -> Result<StateStore, StoreError> {
        let tree = db.open_tree("state")?;
        Self::with_tree(db, tree, spill_parent, temporary_spill_parent)
    }

    fn with_tree(
        db: sled::Db,
        tree: sled::Tree,
        spill_parent: PathBuf,
        temporary_spill_parent: Option<tempfile::TempDir>,
    ) -> Result<StateStore, StoreError> {
        let store = StateStore {
            db,
            tree,
            spill_parent,
            _temporary_spill_parent: temporary_spill_parent,
            baseline_count: AtomicU64::new(0),
        };
        let count = match store.tree.get(BASELINE_COUNT_KEY)? {
            Some(bytes) => decode(&bytes, BASELINE_COUNT_KEY)?,
            None => store.count_baselines()?,
        };
        store.baseline_count.store(count, Ordering::Relaxed);
        store.upgrade_format()?;
        Ok(store)
    }

    /// Converts values written by an older trailspike, once.
    fn upgrade_format(&self) -> Result<(), StoreError> {
        let found: u32 = match self.tree.get(FORMAT_KEY)? {
            Some(bytes) => decode(&bytes, FORMAT_KEY)?,
            None => 1,
        };
        if found > FORMAT {
            return Err(StoreError::NewerFormat { found });
        }
        if found == FORMAT {
            return Ok(());
        }
        // Converting again after a crash half-way is harmless: a format 2
        // baseline read as format 1 has no known APIs yet either. The
        // format is written last.
        let upgraded = self
            .tree
            .scan_prefix([WINDOW])
            .chain(self.tree.scan_prefix([BASELINE]))
            .map(|entry| {
                let (k, v) = entry?;
                let upgraded = match k.first() {
                    Some(&WINDOW) => encode(&decode::<WindowFormat1>(&v, &k)?.upgrade()),
                    _ => {
                        encode_baseline(&decode_baseline(&v, &k)?, &KnownApis::default())
                    }
                };
                Ok((k.to_vec(), Some(upgraded)))
            });
        let format = (FORMAT_KEY.to_vec(), Some(encode(&FORMAT)));
        self.apply_in_batches(upgraded.chain([Ok(format)]))?;
        self.flush()
    }

    /// Applies `writes` in order, in sled batches of [`IMPORT_BATCH_ROWS`]
    /// (not atomically): sled's memory for one batch of a million
    /// baselines runs to gigabytes.
    fn apply_in_batches(
        &self,
        writes: impl IntoIterator<Item = Result<Write, StoreError>>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for write in writes {
            match write? {
                (key, Some(value)) => batch.insert(key, value),
                (key, None) => batch.remove(key),
            }
            in_batch += 1;
            if in_batch == IMPORT_BATCH_ROWS {
                self.tree.apply_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    fn count_baselines(&self) -> Result<u64, StoreError> {
        let count = self.tree.scan_prefix([BASELINE]).count() as u64;
        self.tree.insert(BASELINE_COUNT_KEY, encode(&count))?;
        Ok(count)
    }

    pub fn baseline(&self, arn: &str) -> Result<Option<Baseline>, StoreError> {
        self.tree
            .get(key(BASELINE, arn.as_bytes()))?
            .map(|bytes| decode_baseline(&bytes, arn.as_bytes()))
            .transpose()
    }

    /// Every baseline, in ARN order.
    pub fn baselines(
        &self,
    ) -> impl Iterator<Item = Result<(String, Baseline), StoreError>> + '_ {
        self.tree.scan_prefix([BASELINE]).map(|entry| {
            let (k, v) = entry?;
            let arn = String::from_utf8_lossy(&k[1..]).into_owned();
            Ok((arn, decode_baseline(&v, &k)?))
        })
    }

    /// The APIs `arn` has called, as far as remembered.
    /// `arn`'s baseline and known APIs, read at once.
    pub fn baseline_with_apis(
        &self,
        arn: &str,
    ) -> Result<(Option<Baseline>, KnownApis), StoreError> {
        let key = key(BASELINE, arn.as_bytes());
        match self.tree.get(&key)? {
            Some(bytes) => Ok((
                Some(decode_baseline(&bytes, &key)?),
                decode_known_apis(&bytes, &key)?,
            )),
            None => Ok((None, KnownApis::default())),
        }
    }

    pub fn known_apis(&self, arn: &str) -> Result<KnownApis, StoreError> {
        Ok(self.baseline_with_apis(arn)?.1)
    }

    /// `arn`'s open incident.
    pub fn incident(&self, arn: &str) -> Result<Option<Incident>, StoreError> {
        let key = key(INCIDENT, arn.as_bytes());
        self.tree
            .get(&key)?
            .map(|bytes| decode(&bytes, &key))
            .transpose()
    }

    /// Every open incident, in ARN order.
    pub fn incidents(
        &self,
    ) -> impl Iterator<Item = Result<(Box<str>, Incident), StoreError>> + '_ {
        self.tree.scan_prefix([INCIDENT]).map(|entry| {
            let (k, v) = entry?;
            let arn = String::from_utf8_lossy(&k[1..]).into();
            Ok((arn, decode(&v, &k)?))
        })
    }

    pub fn baseline_count(&self) -> u64 {
        self.baseline_count.load(Ordering::Relaxed)
    }

    /// Every open window entry saved at the last checkpoint.
    pub fn open_windows(&self) -> Result<Vec<(i64, Box<str>, ArnWindow)>, StoreError> {
        self.open_window_entries().collect()
    }

    pub fn sources(&self) -> Result<BTreeMap<SourceId, SourceProgress>, StoreError> {
        self.tree
            .scan_prefix([SOURCE])
            .map(|entry| {
                let (k, v) = entry?;
                let id = decode_i32(&k[1..5]);
                Ok((id, decode(&v, &k)?))
            })
            .collect()
    }

    pub fn watermark(&self) -> Result<Option<i64>, StoreError> {
        self.tree
            .get(WATERMARK_KEY)?
            .map(|bytes| decode(&bytes, WATERMARK_KEY))
            .transpose()
    }

    /// Alerts made durable but not yet acknowledged, oldest first, with
    /// the sequence number that acknowledges them.
    pub fn outbox(&self) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        self.tree
            .scan_prefix([OUTBOX])
            .map(|entry| {
                let (k, v) = entry?;
                let seq = u64::from_be_bytes(k[1..9].try_into().unwrap_or_default());
                Ok((seq, decode(&v, &k)?))
            })
            .collect()
    }

    /// Removes acknowledged alerts from the outbox. Durable at the next
    /// flush: an alert acknowledged just before a crash is sent again,
    /// with the same id.
    pub fn acknowledge(&self, seq: u64) -> Result<(), StoreError> {
        self.tree.remove(outbox_key(seq))?;
        Ok(())
    }

    /// Every open window entry saved at the last checkpoint, one at a
    /// time, so that restoring more than fit in memory can spill as it
    /// goes.
    pub fn open_window_entries(
        &self,
    ) -> impl Iterator<Item = Result<(i64, Box<str>, ArnWindow), StoreError>> + '_ {
        self.tree.scan_prefix([WINDOW]).map(|entry| {
            let (k, v) = entry?;
            let start = decode_i64(&k[1..9]);
            let arn = String::from_utf8_lossy(&k[9..]).into();
            Ok((start, arn, decode(&v, &k)?))
        })
    }

    /// A new, empty spill area for open windows: what a previous process
    /// spilled is either in its last checkpoint or was never durable.
    pub fn spill(&self) -> Result<Spill, StoreError> {
        Spill::create(&self.spill_parent)
    }

    /// Starts a set of changes that [`Changes::commit`] applies at once.
    pub fn changes(&self) -> Changes<'_> {
        Changes {
            store: self,
            baselines: FastMap::default(),
            known_apis: FastMap::default(),
            incidents: FastMap::default(),
            writes: Vec::new(),
            new_alerts: Vec::new(),
            new_baselines: 0,
            expired_baselines: 0,
        }
    }

    /// Applies a prepared checkpoint at once and waits until it is on
    /// disk; `changelog`, when given, records how far into the changelog
    /// the tree now is.
    pub fn apply(
        &self,
        prepared: Prepared,
        changelog: Option<ChangelogPosition>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, value) in prepared.writes {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        if let Some(position) = changelog {
            batch.insert(CHANGELOG_POSITION_KEY, encode(&position));
        }
        self.tree.apply_batch(batch)?;
        self.baseline_count
            .store(prepared.baseline_count, Ordering::Relaxed);
        self.flush()
    }

    /// Where the tree is in its changelog, if it has ever been synced.
    pub fn changelog_position(&self) -> Result<Option<ChangelogPosition>, StoreError> {
        self.tree
            .get(CHANGELOG_POSITION_KEY)?
            .map(|bytes| decode(&bytes, CHANGELOG_POSITION_KEY))
            .transpose()
    }

    /// Applies writes read from the changelog, in batches as an import,
    /// then records `position`, the changelog's after them.
    pub fn apply_changelog(
        &self,
        writes: impl IntoIterator<Item = Write>,
        position: ChangelogPosition,
    ) -> Result<(), StoreError> {
        let position = (CHANGELOG_POSITION_KEY.to_vec(), Some(encode(&position)));
        self.apply_in_batches(writes.into_iter().chain([position]).map(Ok))?;
        let count = match self.tree.get(BASELINE_COUNT_KEY)? {
            Some(bytes) => decode(&bytes, BASELINE_COUNT_KEY)?,
            None => self.count_baselines()?,
        };
        self.baseline_count.store(count, Ordering::Relaxed);
        self.flush()
    }

    /// Empties the tree: its changelog was recreated or compacted past
    /// where the tree left it.
    pub fn clear(&self) -> Result<(), StoreError> {
        self.tree.clear()?;
        self.baseline_count.store(0, Ordering::Relaxed);
        self.tree.insert(FORMAT_KEY, encode(&FORMAT))?;
        self.flush()
    }

    /// Waits until everything written so far is on disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Writes every baseline as CSV with the Splunk lookup's header.
    pub fn export_csv(&self, out: impl io::Write) -> Result<u64, StoreError> {
        export_csv(std::slice::from_ref(self), out)
    }

    /// Reads baselines from CSV with the Splunk lookup's columns, in any
    /// order, replacing the stored baseline of each ARN in the file (the
    /// APIs it is known to call, which the CSV does not carry, are kept).
    /// `last_window_start` is set to `now_unix`, because the lookup does not
    /// record when an ARN was last active.
    pub fn import_csv(
        &self,
        input: impl io::Read,
        now_unix: i64,
    ) -> Result<u64, StoreError> {
        let mut reader = csv::Reader::from_reader(input);
        let columns =
            CsvColumns::find(reader.headers().map_err(|e| StoreError::Csv {
                line: 1,
                message: e.to_string(),
            })?)?;
        // Every row is checked before anything is written, so a bad row
        // imports nothing. The writes then go in batches: sled's memory for
        // one batch grows far faster than the batch (one batch of a million
        // baselines peaked at 4.7 GB). An I/O error between two batches
        // leaves part of the file imported; importing it again is harmless,
        // since each row overwrites its ARN's baseline.
        let mut entries = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| StoreError::Csv {
                line: e.position().map_or(0, |p| p.line()),
                message: e.to_string(),
            })?;
            let line = record.position().map_or(0, |p| p.line());
            let (arn, baseline) = columns
                .parse(&record, now_unix)
                .map_err(|message| StoreError::Csv { line, message })?;
            let known = self.known_apis(&arn)?;
            entries.push((
                key(BASELINE, arn.as_bytes()),
                encode_baseline(&baseline, &known),
            ));
        }
        let rows = entries.len() as u64;
        self.apply_in_batches(
            entries
                .into_iter()
                .map(|(key, value)| Ok((key, Some(value)))),
        )?;
        let count = self.count_baselines()?;
        self.baseline_count.store(count, Ordering::Relaxed);
        self.flush()?;
        Ok(rows)
    }
}

/// Writes every baseline of `stores` (disjoint sets of ARNs, such as the
/// partitions of a scaled-out deployment) as CSV with the Splunk lookup's
/// header.
pub fn export_csv(stores: &[StateStore], out: impl io::Write) -> Result<u64, StoreError> {
    let mut writer = csv::Writer::from_writer(out);
    let csv_error = |e: csv::Error| StoreError::Csv {
        line: 0,
        message: e.to_string(),
    };
    writer.write_record(CSV_HEADER).map_err(csv_error)?;
    let mut rows = 0;
    for entry in stores.iter().flat_map(StateStore::baselines) {
        let (arn, b) = entry?;
        writer
            .serialize((
                arn,
                b.latest_count,
                b.num_data_points,
                b.avg_api_calls,
                b.stdev_api_calls,
            ))
            .map_err(csv_error)?;
        rows += 1;
    }
    writer.flush().map_err(|e| csv_error(e.into()))?;
    Ok(rows)
}

/// Baselines written per sled batch by [`StateStore::import_csv`].
const IMPORT_BATCH_ROWS: usize = 10_000;

/// The original lookup's header, `api_call_by_user_baseline`.
pub const CSV_HEADER: [&str; 5] = [
    "arn",
    "latestCount",
    "numDataPoints",
    "avgApiCalls",
    "stdevApiCalls",
];

struct CsvColumns([usize; 5]);

impl CsvColumns {
    fn find(headers: &csv::StringRecord) -> Result<CsvColumns, StoreError> {
        let mut positions = [0; 5];
        for (slot, name) in positions.iter_mut().zip(CSV_HEADER) {
            *slot = headers.iter().position(|h| h == name).ok_or_else(|| {
                StoreError::Csv {
                    line: 1,
                    message: format!(
                        "no column {name:?}; the header must be {}",
                        CSV_HEADER.join(",")
                    ),
                }
            })?;
        }
        Ok(CsvColumns(positions))
    }

    fn parse(
        &self,
        record: &csv::StringRecord,
        now_unix: i64,
    ) -> Result<(String, Baseline), String> {
        let field = |i: usize| record.get(self.0[i]).unwrap_or("").trim();
        let number = |i: usize| -> Result<f64, String> {
            let text = field(i);
            match text {
                // Splunk leaves latestCount empty for ARNs it has not seen
                // since the last run.
                "" if i == 1 => Ok(0.0),
                _ => text
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| {
                        format!("{} = {text:?} is not a number >= 0", CSV_HEADER[i])
                    }),
            }
        };
        let arn = field(0);
        if arn.is_empty() {
            return Err("arn is empty".into());
        }
        let baseline = Baseline {
            latest_count: number(1)? as u64,
            num_data_points: number(2)? as u64,
            avg_api_calls: number(3)?,
            stdev_api_calls: number(4)?,
            last_window_start: now_unix,
            last_alert_window_start: None,
        };
        Ok((arn.to_string(), baseline))
    }
}

/// Changes gathered while closing windows or checkpointing, applied by
/// [`Changes::commit`] in one atomic batch. Reads of baselines see the
/// changes not yet committed, so two windows closed in one batch chain
/// correctly.
pub struct Changes<'s> {
    store: &'s StateStore,
    baselines: FastMap<Box<str>, Baseline>,
    known_apis: FastMap<Box<str>, KnownApis>,
    /// `None` for an incident closed in this batch.
    incidents: FastMap<Box<str>, Option<Incident>>,
    writes: Vec<Write>,
    new_alerts: Vec<OutboxEntry>,
    new_baselines: u64,
    expired_baselines: u64,
}

impl Changes<'_> {
    pub fn baseline(&self, arn: &str) -> Result<Option<Baseline>, StoreError> {
        match self.baselines.get(arn) {
            Some(b) => Ok(Some(*b)),
            None => self.store.baseline(arn),
        }
    }

    /// Sets `arn`'s baseline; `is_new` when the ARN had none before.
    pub fn set_baseline(&mut self, arn: &str, baseline: Baseline, is_new: bool) {
        self.new_baselines += u64::from(is_new);
        self.baselines.insert(arn.into(), baseline);
    }

    /// `arn`'s baseline and known APIs as of this batch.
    pub fn baseline_with_apis(
        &self,
        arn: &str,
    ) -> Result<(Option<Baseline>, KnownApis), StoreError> {
        match (self.baselines.get(arn), self.known_apis.get(arn)) {
            (Some(baseline), Some(known)) => Ok((Some(*baseline), known.clone())),
            _ => {
                let (baseline, known) = self.store.baseline_with_apis(arn)?;
                let baseline = self.baselines.get(arn).copied().or(baseline);
                let known = self.known_apis.get(arn).cloned().unwrap_or(known);
                Ok((baseline, known))
            }
        }
    }

    pub fn set_known_apis(&mut self, arn: &str, known: KnownApis) {
        self.known_apis.insert(arn.into(), known);
    }

    pub fn incident(&self, arn: &str) -> Result<Option<Incident>, StoreError> {
        match self.incidents.get(arn) {
            Some(incident) => Ok(incident.clone()),
            None => self.store.incident(arn),
        }
    }

    /// Opens, updates or (with `None`) closes `arn`'s incident.
    pub fn set_incident(&mut self, arn: &str, incident: Option<Incident>) {
        self.incidents.insert(arn.into(), incident);
    }

    /// Every incident open as of this batch, in ARN order. Incidents are
    /// few (only ARNs spiking now), so reading them all is cheap.
    pub fn open_incidents(&self) -> Result<Vec<(Box<str>, Incident)>, StoreError> {
        let mut open = BTreeMap::new();
        for entry in self.store.incidents() {
            let (arn, incident) = entry?;
            open.insert(arn, incident);
        }
        for (arn, incident) in &self.incidents {
            match incident {
                Some(incident) => open.insert(arn.clone(), incident.clone()),
                None => open.remove(arn),
            };
        }
        Ok(open.into_iter().collect())
    }

    /// Deletes every baseline last updated by a window starting before
    /// `cutoff`, as stored or as changed in this batch. Returns how many.
    pub fn expire_baselines(&mut self, cutoff: i64) -> Result<u64, StoreError> {
        let mut expired = 0;
        for entry in self.store.baselines() {
            let (arn, stored) = entry?;
            let current = self.baselines.get(arn.as_str()).unwrap_or(&stored);
            if current.last_window_start < cutoff {
                self.baselines.remove(arn.as_str());
                self.forget_arn(&arn);
                expired += 1;
            }
        }
        // Baselines created in this batch and already idle too long.
        let idle: Vec<Box<str>> = self
            .baselines
            .iter()
            .filter(|(_, b)| b.last_window_start < cutoff)
            .map(|(arn, _)| arn.clone())
            .collect();
        for arn in &idle {
            self.baselines.remove(arn);
            self.forget_arn(arn);
        }
        expired += idle.len() as u64;
        self.expired_baselines += expired;
        Ok(expired)
    }

    /// Removes what is kept about `arn` beside its baseline.
    fn forget_arn(&mut self, arn: &str) {
        self.known_apis.remove(arn);
        self.incidents.remove(arn);
        for kind in [BASELINE, INCIDENT] {
            self.writes.push((key(kind, arn.as_bytes()), None));
        }
    }

    pub fn put_window(&mut self, start: i64, arn: &str, window: &ArnWindow) {
        self.writes
            .push((window_key(start, arn), Some(encode(window))));
    }

    pub fn remove_window(&mut self, start: i64, arn: &str) {
        self.writes.push((window_key(start, arn), None));
    }

    /// Removes every entry of the window at `start` that the store holds.
    /// Cheaper than one removal per ARN of a closed window, most of which
    /// never reached a checkpoint, and sled's memory for a batch grows
    /// faster than the batch. Entries put in this same batch stay.
    pub fn remove_stored_windows(&mut self, start: i64) -> Result<(), StoreError> {
        let prefix = window_key(start, "");
        for key in self.store.tree.scan_prefix(&prefix).keys() {
            self.writes.push((key?.to_vec(), None));
        }
        Ok(())
    }

    pub fn put_source(&mut self, source: SourceId, progress: &SourceProgress) {
        self.writes
            .push((source_key(source), Some(encode(progress))));
    }

    pub fn remove_source(&mut self, source: SourceId) {
        self.writes.push((source_key(source), None));
    }

    pub fn put_watermark(&mut self, watermark: i64) {
        self.writes
            .push((WATERMARK_KEY.to_vec(), Some(encode(&watermark))));
    }

    /// Queues an alert to be produced once this batch is durable.
    pub fn enqueue_alert(&mut self, entry: OutboxEntry) {
        self.new_alerts.push(entry);
    }

    /// Applies everything at once, the new alerts into the outbox, and
    /// waits until it is on disk. Returns the new outbox entries with
    /// their sequence numbers.
    pub fn commit(self) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        let store = self.store;
        let mut prepared = self.prepare()?;
        let mut queued = Vec::with_capacity(prepared.alerts.len());
        for entry in std::mem::take(&mut prepared.alerts) {
            let seq = store.db.generate_id()?;
            prepared
                .writes
                .push((outbox_key(seq), Some(encode(&entry))));
            queued.push((seq, entry));
        }
        store.apply(prepared, None)?;
        Ok(queued)
    }

    /// Everything this batch writes, in order, and the alerts it made,
    /// for a driver that makes them durable elsewhere before it applies
    /// them with [`StateStore::apply`].
    pub fn prepare(mut self) -> Result<Prepared, StoreError> {
        // A baseline and its known APIs are one value: one read and one
        // write per ARN and window. Both are set together when a window
        // closes; one set alone keeps the stored other.
        for (arn, baseline) in &self.baselines {
            let value = match self.known_apis.get(arn) {
                Some(known) => encode_baseline(baseline, known),
                None => encode_baseline(baseline, &self.store.known_apis(arn)?),
            };
            self.writes
                .push((key(BASELINE, arn.as_bytes()), Some(value)));
        }
        for (arn, known) in &self.known_apis {
            if self.baselines.contains_key(arn) {
                continue;
            }
            if let Some(baseline) = self.store.baseline(arn)? {
                let value = encode_baseline(&baseline, known);
                self.writes
                    .push((key(BASELINE, arn.as_bytes()), Some(value)));
            }
        }
        for (arn, incident) in &self.incidents {
            let value = incident.as_ref().map(encode);
            self.writes.push((key(INCIDENT, arn.as_bytes()), value));
        }
        let count = (self.store.baseline_count() + self.new_baselines)
            .saturating_sub(self.expired_baselines);
        if self.new_baselines > 0 || self.expired_baselines > 0 {
            self.writes
                .push((BASELINE_COUNT_KEY.to_vec(), Some(encode(&count))));
        }
        Ok(Prepared {
            writes: self.writes,
            alerts: self.new_alerts,
            baseline_count: count,
        })
    }
}

/// An open window as format 1 stored it.
#[derive(Deserialize)]
struct WindowFormat1 {
    count: u64,
    event_names: FastSet<Box<str>>,
    event_ids: FastSet<Box<str>>,
}

impl WindowFormat1 {
    /// Format 1 kept no calls per name, so each name counts as called once
    /// in the explanation of the windows open at the upgrade; the window's
    /// count and distinct names, which decide alerts, are exact.
    fn upgrade(self) -> ArnWindow {
        ArnWindow {
            count: self.count,
            event_names: self.event_names.into_iter().map(|n| (n, 1)).collect(),
            event_ids: self.event_ids,
            ..ArnWindow::default()
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let error = |source| StoreError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(error)
}

fn key(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + rest.len());
    key.push(kind);
    key.extend_from_slice(rest);
    key
}

/// Flipping the sign bit makes big-endian bytes sort like the integers.
fn window_key(start: i64, arn: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + arn.len());
    key.push(WINDOW);
    key.extend_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
    key.extend_from_slice(arn.as_bytes());
    key
}

fn decode_i64(bytes: &[u8]) -> i64 {
    (u64::from_be_bytes(bytes.try_into().unwrap_or_default()) ^ (1 << 63)) as i64
}

fn source_key(source: SourceId) -> Vec<u8> {
    key(SOURCE, &((source as u32) ^ (1 << 31)).to_be_bytes())
}

fn decode_i32(bytes: &[u8]) -> i32 {
    (u32::from_be_bytes(bytes.try_into().unwrap_or_default()) ^ (1 << 31)) as i32
}

fn outbox_key(seq: u64) -> Vec<u8> {
    key(OUTBOX, &seq.to_be_bytes())
}

fn encode_baseline(baseline: &Baseline, known: &KnownApis) -> Vec<u8> {
    let mut bytes = encode(baseline);
    bytes.extend_from_slice(&encode(known));
    bytes
}

/// The baseline at the start of a `b` value, without decoding the known
/// APIs after it (format 1 values end there).
fn decode_baseline(bytes: &[u8], key: &[u8]) -> Result<Baseline, StoreError> {
    postcard::take_from_bytes(bytes)
        .map(|(baseline, _)| baseline)
        .map_err(|source| corrupt(key, source))
}

fn decode_known_apis(bytes: &[u8], key: &[u8]) -> Result<KnownApis, StoreError> {
    let (_, rest) = postcard::take_from_bytes::<Baseline>(bytes)
        .map_err(|source| corrupt(key, source))?;
    decode(rest, key)
}

fn corrupt(key: &[u8], source: postcard::Error) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Our own plain types always serialize.
    postcard::to_stdvec(value).unwrap_or_default()
}

fn decode<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    key: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| corrupt(key, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline(n: u64) -> Baseline {
        Baseline {
            latest_count: n,
            num_data_points: n,
            avg_api_calls: n as f64 / 2.0,
            stdev_api_calls: 0.25,
            last_window_start: 0,
            last_alert_window_start: None,
        }
    }

    #[test]
    fn values_of_format_1_are_upgraded_when_the_store_opens() {
        #[derive(Serialize)]
        struct Format1 {
            count: u64,
            event_names: Vec<&'static str>,
            event_ids: Vec<&'static str>,
        }
        // Format 1 values in a store as format 1 left it (no format key),
        // upgraded as opening does. Upgrading in place rather than closing
        // and reopening: sled's flusher thread can hold the directory's
        // lock for a moment after the last handle is dropped.
        let store = StateStore::temporary().unwrap();
        let old = Format1 {
            count: 7,
            event_names: vec!["GetObject", "ListBuckets"],
            event_ids: vec!["id-1"],
        };
        let tree = &store.tree;
        tree.insert(window_key(3600, "arn:a"), encode(&old))
            .unwrap();
        tree.insert(key(BASELINE, b"arn:a"), encode(&baseline(4)))
            .unwrap();
        tree.remove(FORMAT_KEY).unwrap();
        store.upgrade_format().unwrap();
        assert_eq!(store.baseline("arn:a").unwrap(), Some(baseline(4)));
        assert!(store.known_apis("arn:a").unwrap().is_empty());
        let windows = store.open_windows().unwrap();
        assert_eq!(windows.len(), 1);
        let (start, arn, window) = &windows[0];
        assert_eq!((*start, &**arn, window.count), (3600, "arn:a", 7));
        assert_eq!(window.event_names.len(), 2);
        assert!(window.event_ids.contains("id-1"));
        // Upgraded once: the next open reads format 2 as it is.
        store.upgrade_format().unwrap();
        assert_eq!(store.open_windows().unwrap()[0].2, windows[0].2);
    }

    #[test]
    fn a_store_from_a_newer_trailspike_is_refused() {
        let store = StateStore::temporary().unwrap();
        store
            .tree
            .insert(FORMAT_KEY, encode(&(FORMAT + 1)))
            .unwrap();
        let error = store.upgrade_format().expect_err("refused");
        assert!(error.to_string().contains("newer trailspike"), "{error}");
    }

    #[test]
    fn changes_are_visible_before_commit_and_durable_after() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path()).unwrap();
            let mut changes = store.changes();
            changes.set_baseline("a", baseline(3), true);
            assert_eq!(changes.baseline("a").unwrap(), Some(baseline(3)));
            assert_eq!(store.baseline("a").unwrap(), None);
            changes.put_watermark(-5);
            changes.put_source(
                -2,
                &SourceProgress {
                    next_offset: Some(9),
                    max_event_time: Some(1),
                },
            );
            changes.enqueue_alert(OutboxEntry {
                queued_ms: 1,
                key: "a".into(),
                payload: "{}".into(),
            });
            let queued = changes.commit().unwrap();
            assert_eq!(queued.len(), 1);
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.baseline("a").unwrap(), Some(baseline(3)));
        assert_eq!(store.watermark().unwrap(), Some(-5));
        assert_eq!(store.sources().unwrap()[&-2].next_offset, Some(9));
        let outbox = store.outbox().unwrap();
        assert_eq!(outbox.len(), 1);
        store.acknowledge(outbox[0].0).unwrap();
        assert!(store.outbox().unwrap().is_empty());
    }

    #[test]
    fn expiry_deletes_idle_baselines_but_not_those_updated_in_the_batch() {
        let store = StateStore::temporary().unwrap();
        let at = |start| Baseline {
            last_window_start: start,
            ..baseline(1)
        };
        let mut changes = store.changes();
        changes.set_baseline("old", at(0), true);
        changes.set_baseline("renewed", at(0), true);
        changes.set_baseline("recent", at(100), true);
        changes.commit().unwrap();
        let mut changes = store.changes();
        changes.set_baseline("renewed", at(200), false);
        assert_eq!(changes.expire_baselines(50).unwrap(), 1);
        changes.commit().unwrap();
        assert_eq!(store.baseline("old").unwrap(), None);
        assert!(store.baseline("renewed").unwrap().is_some());
        assert!(store.baseline("recent").unwrap().is_some());
        assert_eq!(store.baseline_count(), 2);
    }

    #[test]
    fn windows_come_back_in_time_order() {
        let store = StateStore::temporary().unwrap();
        let mut changes = store.changes();
        let w = ArnWindow {
            count: 2,
            ..ArnWindow::default()
        };
        changes.put_window(3600, "b", &w);
        changes.put_window(-3600, "a", &w);
        changes.put_window(0, "c", &w);
        changes.commit().unwrap();
        let starts: Vec<i64> =
            store.open_windows().unwrap().iter().map(|e| e.0).collect();
        assert_eq!(starts, [-3600, 0, 3600]);
        let mut changes = store.changes();
        changes.remove_window(0, "c");
        changes.commit().unwrap();
        assert_eq!(store.open_windows().unwrap().len(), 2);
    }

    #[test]
    fn csv_round_trips_with_the_lookup_header() {
        let store = StateStore::temporary().unwrap();
        let mut changes = store.changes();
        changes.set_baseline("arn:aws:iam::1:user/a", baseline(4), true);
        changes.set_baseline("arn:aws:iam::1:user/b,c", baseline(7), true);
        changes.commit().unwrap();
        let mut csv = Vec::new();
        assert_eq!(store.export_csv(&mut csv).unwrap(), 2);
        let text = String::from_utf8(csv.clone()).unwrap();
        assert!(
            text.starts_with("arn,latestCount,numDataPoints,avgApiCalls,stdevApiCalls\n")
        );
        assert_eq!(store.baseline_count(), 2);
        let copy = StateStore::temporary().unwrap();
        assert_eq!(copy.import_csv(csv.as_slice(), 0).unwrap(), 2);
        assert_eq!(copy.baseline_count(), 2);
        let b = copy.baseline("arn:aws:iam::1:user/b,c").unwrap().unwrap();
        assert_eq!(b, baseline(7));
    }

    #[test]
    fn csv_import_accepts_splunk_column_order_and_empty_latest_count() {
        let store = StateStore::temporary().unwrap();
        let csv =
            "arn,avgApiCalls,latestCount,numDataPoints,stdevApiCalls\nx,2.5,,10,1\n";
        store.import_csv(csv.as_bytes(), 99).unwrap();
        let b = store.baseline("x").unwrap().unwrap();
        assert_eq!(
            (b.avg_api_calls, b.latest_count, b.num_data_points),
            (2.5, 0, 10)
        );
        assert_eq!(b.last_window_start, 99);
    }

    #[test]
    fn csv_import_names_the_bad_line_and_column() {
        let store = StateStore::temporary().unwrap();
        let csv = "arn,latestCount,numDataPoints,avgApiCalls,stdevApiCalls\nx,1,2,3,4\ny,1,2,lots,4\n";
        let error = store.import_csv(csv.as_bytes(), 0).unwrap_err().to_string();
        assert!(
            error.contains("line 3") && error.contains("avgApiCalls"),
            "{error}"
        );
        assert_eq!(
            store.baseline("x").unwrap(),
            None,
            "nothing imported from a bad file"
        );
        let error = store
            .import_csv("arn,count\n".as_bytes(), 0)
            .unwrap_err()
            .to_string();
        assert!(error.contains("latestCount"), "{error}");
    }

    #[test]
    fn csv_import_spanning_several_batches_is_checked_whole_first() {
        let rows = 2 * IMPORT_BATCH_ROWS + 1;
        let mut csv =
            String::from("arn,latestCount,numDataPoints,avgApiCalls,stdevApiCalls\n");
        for i in 0..rows {
            csv.push_str(&format!("arn:aws:iam::1:user/u{i},1,20,3,1\n"));
        }
        let store = StateStore::temporary().unwrap();
        let bad = format!("{csv}late,1,2,three,4\n");
        assert!(store.import_csv(bad.as_bytes(), 0).is_err());
        assert_eq!(store.baseline_count(), 0, "a bad last row imports nothing");
        assert_eq!(store.import_csv(csv.as_bytes(), 0).unwrap(), rows as u64);
        assert_eq!(store.baseline_count(), rows as u64);
        assert!(store.baseline("arn:aws:iam::1:user/u0").unwrap().is_some());
        let last = format!("arn:aws:iam::1:user/u{}", rows - 1);
        assert!(store.baseline(&last).unwrap().is_some());
    }

    #[test]
    fn temporary_stores_keep_their_spill_areas_apart() {
        let spill_dirs = |store: &StateStore| {
            std::fs::read_dir(&store.spill_parent)
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    name.to_string_lossy().starts_with("spill-")
                })
                .count()
        };
        let first = StateStore::temporary().unwrap();
        let _first_spill = first.spill().unwrap();
        let second = StateStore::temporary().unwrap();
        let _second_spill = second.spill().unwrap();
        assert_ne!(first.spill_parent, second.spill_parent);
        assert_eq!(
            spill_dirs(&first),
            1,
            "the second store removed the first's"
        );
        assert_eq!(spill_dirs(&second), 1);
        let parent = first.spill_parent.clone();
        drop((_first_spill, first));
        assert!(!parent.exists(), "a temporary store leaves nothing behind");
    }

    #[test]
    fn corrupted_value_is_an_error_not_a_skip() {
        let store = StateStore::temporary().unwrap();
        store
            .tree
            .insert(key(BASELINE, b"x"), &[0xff, 0xff][..])
            .unwrap();
        assert!(matches!(
            store.baseline("x"),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn state_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state");
        StateStore::open(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}

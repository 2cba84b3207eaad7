//! Open (window, ARN) entries moved out of memory when there are more
//! than `state.max_open_arn_windows` of them (see [`crate::window`]).
//!
//! Each open window that has spilled gets one append-only file; memory
//! keeps only a 64-bit hash of each spilled ARN and the offset of its
//! record, about 20 bytes instead of the few hundred an entry costs. A
//! record that comes back to memory stays in the file as dead space until
//! its window closes and the file is deleted, so a file grows at most by
//! one record per spill.
//!
//! The files are scratch, not state: a checkpoint still writes every open
//! entry to the store, and the directory is emptied whenever a process
//! starts. sled was tried first and kept about as much memory per spilled
//! entry as the in-memory map does, so it bounded nothing.

use std::collections::BTreeMap;
use std::fs::File;
use std::hash::BuildHasher;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::StoreError;
use crate::window::{ArnWindow, FastMap};

/// Bytes buffered before a write to the file.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// One spilled entry as written to its window's file, after a 4-byte
/// little-endian length.
#[derive(Serialize, Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    arn: &'a str,
    /// Changed since the last checkpoint when it was spilled.
    dirty: bool,
    window: ArnWindow,
}

/// Where spilled entries go; see the module docs.
#[derive(Debug)]
pub struct Spill {
    dir: tempfile::TempDir,
    files: BTreeMap<i64, WindowFile>,
    hasher: foldhash::fast::RandomState,
}

impl Spill {
    /// A fresh spill directory in `parent`, first removing any that an
    /// earlier process left behind.
    pub fn create(parent: &Path) -> Result<Spill, StoreError> {
        let error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Spill { path, source }
        };
        if let Ok(entries) = std::fs::read_dir(parent) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
                    let stale = entry.path();
                    std::fs::remove_dir_all(&stale).map_err(error(&stale))?;
                }
            }
        }
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in(parent)
            .map_err(error(parent))?;
        Ok(Spill {
            dir,
            files: BTreeMap::new(),
            hasher: foldhash::fast::RandomState::default(),
        })
    }

    /// Moves `window`, the entry of `arn` in the window at `start`, to disk.
    pub fn put(
        &mut self,
        start: i64,
        arn: &str,
        window: &ArnWindow,
    ) -> Result<(), StoreError> {
        let hash = self.hasher.hash_one(arn);
        let file = match self.files.entry(start) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let path = self.dir.path().join(format!("{start}"));
                e.insert(WindowFile::create(path)?)
            }
        };
        let record = Record {
            arn,
            dirty: window.dirty,
            window: window.clone(),
        };
        file.append(hash, &record)
    }

    /// Takes `arn`'s entry of the window at `start` back, if spilled.
    pub fn take(
        &mut self,
        start: i64,
        arn: &str,
    ) -> Result<Option<ArnWindow>, StoreError> {
        let hash = self.hasher.hash_one(arn);
        let Some(file) = self.files.get_mut(&start) else {
            return Ok(None);
        };
        file.take(hash, arn)
    }

    /// Removes and returns every entry of the window at `start`.
    pub fn drain_window(
        &mut self,
        start: i64,
    ) -> Result<Vec<(Box<str>, ArnWindow)>, StoreError> {
        let Some(mut file) = self.files.remove(&start) else {
            return Ok(Vec::new());
        };
        let entries = file.live_records(&self.hasher)?;
        std::fs::remove_file(&file.path).map_err(|source| StoreError::Spill {
            path: file.path.clone(),
            source,
        })?;
        Ok(entries
            .into_iter()
            .map(|(_, arn, window)| (arn, window))
            .collect())
    }

    /// Hands out the spilled entries that were changed since the last
    /// checkpoint when they were spilled.
    pub fn take_dirty(&mut self) -> Result<Vec<(i64, Box<str>, ArnWindow)>, StoreError> {
        let mut changed = Vec::new();
        for (&start, file) in &mut self.files {
            for offset in std::mem::take(&mut file.dirty) {
                let (arn, window) = file.read_owned(offset)?;
                let hash = self.hasher.hash_one(&*arn);
                if file.is_live(hash, offset) {
                    changed.push((start, arn, window));
                }
            }
        }
        Ok(changed)
    }
}

const DIR_PREFIX: &str = "spill-";

/// The spilled entries of one window.
#[derive(Debug)]
struct WindowFile {
    path: PathBuf,
    file: File,
    /// Bytes already in the file; `pending` follows them.
    written: u64,
    pending: Vec<u8>,
    /// ARN hash to record offset. Hashes shared by several spilled ARNs
    /// (rare) move to `collisions`, so the common case costs one u64 pair.
    index: FastMap<u64, u64>,
    collisions: FastMap<u64, Vec<u64>>,
    /// Offsets of records spilled while dirty, since the last checkpoint.
    dirty: Vec<u64>,
}

impl WindowFile {
    fn create(path: PathBuf) -> Result<WindowFile, StoreError> {
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| StoreError::Spill {
                path: path.clone(),
                source,
            })?;
        Ok(WindowFile {
            path,
            file,
            written: 0,
            pending: Vec::new(),
            index: FastMap::default(),
            collisions: FastMap::default(),
            dirty: Vec::new(),
        })
    }

    fn io_error(&self) -> impl FnOnce(io::Error) -> StoreError + '_ {
        |source| StoreError::Spill {
            path: self.path.clone(),
            source,
        }
    }

    fn append(&mut self, hash: u64, record: &Record<'_>) -> Result<(), StoreError> {
        let offset = self.written + self.pending.len() as u64;
        let bytes =
            postcard::to_stdvec(record).map_err(|source| StoreError::Corrupt {
                key: record.arn.to_string(),
                source,
            })?;
        self.pending
            .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.pending.extend_from_slice(&bytes);
        if record.dirty {
            self.dirty.push(offset);
        }
        self.insert(hash, offset);
        if self.pending.len() >= WRITE_BUFFER_BYTES {
            self.write_pending()?;
        }
        Ok(())
    }

    fn insert(&mut self, hash: u64, offset: u64) {
        if let Some(offsets) = self.collisions.get_mut(&hash) {
            offsets.push(offset);
        } else if let Some(first) = self.index.remove(&hash) {
            self.collisions.insert(hash, vec![first, offset]);
        } else {
            self.index.insert(hash, offset);
        }
    }

    fn is_live(&self, hash: u64, offset: u64) -> bool {
        self.index.get(&hash) == Some(&offset)
            || self
                .collisions
                .get(&hash)
                .is_some_and(|offsets| offsets.contains(&offset))
    }

    fn take(&mut self, hash: u64, arn: &str) -> Result<Option<ArnWindow>, StoreError> {
        let candidates: Vec<u64> =
            match (self.index.get(&hash), self.collisions.get(&hash)) {
                (Some(&offset), _) => vec![offset],
                (None, Some(offsets)) => offsets.clone(),
                (None, None) => return Ok(None),
            };
        for offset in candidates {
            let bytes = self.read(offset)?;
            let record = decode(&bytes, &self.path)?;
            if record.arn != arn {
                continue;
            }
            self.remove(hash, offset);
            let mut window = record.window;
            window.dirty = record.dirty;
            return Ok(Some(window));
        }
        Ok(None)
    }

    fn remove(&mut self, hash: u64, offset: u64) {
        if self.index.get(&hash) == Some(&offset) {
            self.index.remove(&hash);
        } else if let Some(offsets) = self.collisions.get_mut(&hash) {
            offsets.retain(|&o| o != offset);
            if offsets.is_empty() {
                self.collisions.remove(&hash);
            }
        }
    }

    fn write_pending(&mut self) -> Result<(), StoreError> {
        let result = self.file.write_all_at(&self.pending, self.written);
        result.map_err(self.io_error())?;
        self.written += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// The length-prefixed record at `offset`, from the file or the buffer.
    fn read(&self, offset: u64) -> Result<Vec<u8>, StoreError> {
        if offset >= self.written {
            let at = (offset - self.written) as usize;
            let len = read_len(&self.pending[at..at + 4]);
            return Ok(self.pending[at + 4..at + 4 + len].to_vec());
        }
        let mut len = [0; 4];
        self.file
            .read_exact_at(&mut len, offset)
            .map_err(self.io_error())?;
        let mut bytes = vec![0; read_len(&len)];
        let result = self.file.read_exact_at(&mut bytes, offset + 4);
        result.map_err(self.io_error())?;
        Ok(bytes)
    }

    fn read_owned(&self, offset: u64) -> Result<(Box<str>, ArnWindow), StoreError> {
        let bytes = self.read(offset)?;
        let record = decode(&bytes, &self.path)?;
        Ok((record.arn.into(), record.window))
    }

    /// Every record still spilled, in file order.
    fn live_records(
        &mut self,
        hasher: &foldhash::fast::RandomState,
    ) -> Result<Vec<(u64, Box<str>, ArnWindow)>, StoreError> {
        self.write_pending()?;
        let mut live = Vec::new();
        let mut offset = 0;
        while offset < self.written {
            let bytes = self.read(offset)?;
            let record = decode(&bytes, &self.path)?;
            if self.is_live(hasher.hash_one(record.arn), offset) {
                live.push((offset, record.arn.into(), record.window));
            }
            offset += 4 + bytes.len() as u64;
        }
        Ok(live)
    }
}

fn read_len(bytes: &[u8]) -> usize {
    u32::from_le_bytes(bytes.try_into().unwrap_or_default()) as usize
}

fn decode<'a>(bytes: &'a [u8], path: &Path) -> Result<Record<'a>, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Corrupt {
        key: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(count: u64, dirty: bool) -> ArnWindow {
        ArnWindow {
            count,
            event_names: [("ListBuckets".into(), 1)].into_iter().collect(),
            dirty,
            ..ArnWindow::default()
        }
    }

    #[test]
    fn arns_sharing_a_hash_come_back_as_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = WindowFile::create(dir.path().join("0")).unwrap();
        for (arn, count) in [("a", 1), ("b", 2), ("c", 3)] {
            let record = Record {
                arn,
                dirty: false,
                window: window(count, false),
            };
            file.append(7, &record).unwrap();
        }
        assert_eq!(file.take(7, "b").unwrap().map(|w| w.count), Some(2));
        assert_eq!(file.take(7, "b").unwrap(), None);
        assert_eq!(file.take(7, "z").unwrap(), None);
        let hasher = foldhash::fast::RandomState::default();
        // live_records checks liveness by the real hash, so use that.
        let mut real = WindowFile::create(dir.path().join("1")).unwrap();
        for arn in ["a", "c"] {
            let record = Record {
                arn,
                dirty: false,
                window: window(1, false),
            };
            real.append(hasher.hash_one(arn), &record).unwrap();
        }
        let live: Vec<Box<str>> = real
            .live_records(&hasher)
            .unwrap()
            .into_iter()
            .map(|(_, arn, _)| arn)
            .collect();
        assert_eq!(live, ["a".into(), "c".into()] as [Box<str>; 2]);
    }

    #[test]
    fn entries_survive_the_write_buffer_and_dirty_ones_are_handed_out_once() {
        let parent = tempfile::tempdir().unwrap();
        let mut spill = Spill::create(parent.path()).unwrap();
        let many = WRITE_BUFFER_BYTES / 16;
        for i in 0..many {
            let arn = format!("arn-{i}");
            spill.put(0, &arn, &window(i as u64, i % 2 == 0)).unwrap();
        }
        let back = spill.take(0, "arn-3").unwrap().unwrap();
        assert_eq!((back.count, back.dirty), (3, false));
        let dirty = spill.take_dirty().unwrap();
        assert_eq!(dirty.len(), many.div_ceil(2));
        assert!(spill.take_dirty().unwrap().is_empty());
        let drained = spill.drain_window(0).unwrap();
        assert_eq!(drained.len(), many - 1);
        assert!(spill.drain_window(0).unwrap().is_empty());
    }

    #[test]
    fn a_new_spill_removes_what_an_earlier_process_left() {
        let parent = tempfile::tempdir().unwrap();
        let stale = parent.path().join("spill-old");
        std::fs::create_dir(&stale).unwrap();
        let _spill = Spill::create(parent.path()).unwrap();
        assert!(!stale.exists());
    }
}

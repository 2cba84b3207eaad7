//! Stage 2: count calls per ARN in tumbling event-time windows
//! (SPEC.md section 2).
//!
//! Windows are `[k*W, (k+1)*W)` in Unix seconds. Each input source (a
//! file, a Kafka partition) has its own high-water mark; the watermark is
//! the lowest of them over the sources that are not idle, minus the
//! allowed lateness, and it never moves backwards. A window closes once
//! the watermark reaches its end, and a record whose window has closed is
//! late: it is reported, never merged.
//!
//! Invariant: every window in `open` ends after `watermark`, so a record
//! is late exactly when its window end is at or before the watermark,
//! whether or not the caller has popped the closed windows yet. That keeps
//! the outcome independent of how often `close_ready` is called.
//!
//! Memory: with a [`Spill`] attached, at most `max_resident` (window, ARN)
//! entries stay in memory. Past that, entries move to the spill, oldest
//! window first (it takes the fewest new records); a record for a spilled
//! entry moves it back, and closing a window gathers its spilled entries,
//! so what a window yields never depends on the bound. Every window with
//! spilled entries keeps a (possibly empty) map in `open`, so the
//! watermark logic above sees it.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::parse::ApiCall;
use crate::spill::Spill;
use crate::store::StoreError;
use crate::summary::WindowContext;

/// Maps and sets keyed by ARNs and event names, which every record looks
/// up: a fast non-cryptographic hash, seeded per process so that crafted
/// ARNs cannot aim at one bucket.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// Identifies one ordered input: a file index in replay, a partition in
/// the Kafka pipeline.
pub type SourceId = i32;

/// Width and lateness of windows, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub width_secs: i64,
    pub allowed_lateness_secs: i64,
}

impl WindowSpec {
    /// Start of the window that holds `event_time`.
    pub fn start_of(&self, event_time: i64) -> i64 {
        event_time.div_euclid(self.width_secs) * self.width_secs
    }
}

/// What one ARN did in one window. `event_names` is exact, with the calls
/// of each, because `uniqueApisCalled` is an exact distinct count; the rest
/// of what explains an alert is in fixed-size `context`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArnWindow {
    pub count: u64,
    pub event_names: FastMap<Box<str>, u64>,
    /// Boxed: the map of open windows holds entries inline, with spare
    /// capacity, so a large inline context would cost more than itself.
    pub context: Box<WindowContext>,
    /// Only filled when `dedupe_event_id` is on.
    pub event_ids: FastSet<Box<str>>,
    /// Changed since the last checkpoint.
    #[serde(skip)]
    pub(crate) dirty: bool,
}

/// A window whose results are final.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedWindow {
    pub start: i64,
    pub end: i64,
    pub arns: FastMap<Box<str>, ArnWindow>,
}

/// Where a counted call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Counted,
    /// Its window had already closed.
    Late,
    /// `dedupe_event_id` is on and this eventID was counted already.
    DuplicateEventId,
}

/// High-water mark of one source, and when it last delivered anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceClock {
    /// Highest event time seen, `None` until the first record.
    pub max_event_time: Option<i64>,
    /// Wall-clock milliseconds of the last message; not persisted
    /// meaningfully across restarts, where it is reset to "now".
    pub last_activity_ms: i64,
}

/// Entries moved between memory and the spill since the last
/// [`Windows::take_spill_counts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpillCounts {
    pub spilled: u64,
    pub reloaded: u64,
}

/// The open windows and the watermark that closes them.
#[derive(Debug)]
pub struct Windows {
    spec: WindowSpec,
    idle_timeout_ms: i64,
    dedupe_event_id: bool,
    open: BTreeMap<i64, FastMap<Box<str>, ArnWindow>>,
    sources: BTreeMap<SourceId, SourceClock>,
    watermark: i64,
    spill: Option<Spill>,
    /// Entries kept in memory when `spill` is set.
    max_resident: usize,
    resident: usize,
    /// Entries in the spill, per window start.
    spilled: BTreeMap<i64, usize>,
    counts: SpillCounts,
    /// The first spill failure. Counting carries on in memory, so nothing
    /// is lost, and the next close or checkpoint returns it: a failing
    /// store is fatal, as everywhere else.
    spill_error: Option<StoreError>,
}

impl Windows {
    pub fn new(spec: WindowSpec, idle_timeout_ms: i64, dedupe_event_id: bool) -> Self {
        Windows {
            spec,
            idle_timeout_ms,
            dedupe_event_id,
            open: BTreeMap::new(),
            sources: BTreeMap::new(),
            watermark: i64::MIN,
            spill: None,
            max_resident: usize::MAX,
            resident: 0,
            spilled: BTreeMap::new(),
            counts: SpillCounts::default(),
            spill_error: None,
        }
    }

    /// Keeps at most `max_resident` entries in memory from now on, moving
    /// the rest to `spill`.
    pub fn spill_to(&mut self, spill: Spill, max_resident: usize) {
        self.spill = Some(spill);
        self.max_resident = max_resident.max(1);
        self.evict_excess();
    }

    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    /// The current watermark in event-time seconds (`i64::MIN` before any
    /// source has progressed).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    pub fn sources(&self) -> &BTreeMap<SourceId, SourceClock> {
        &self.sources
    }

    /// Starts holding the watermark for `source` until it delivers or goes
    /// idle. Registering a known source only refreshes its activity.
    pub fn add_source(&mut self, source: SourceId, now_ms: i64) {
        self.sources
            .entry(source)
            .and_modify(|clock| clock.last_activity_ms = now_ms)
            .or_insert(SourceClock {
                max_event_time: None,
                last_activity_ms: now_ms,
            });
    }

    /// Restores a source's high-water mark from a checkpoint.
    pub fn restore_source(
        &mut self,
        source: SourceId,
        max_event_time: Option<i64>,
        now_ms: i64,
    ) {
        self.sources.insert(
            source,
            SourceClock {
                max_event_time,
                last_activity_ms: now_ms,
            },
        );
    }

    /// Stops waiting for `source`: it has ended (a finished file) or moved
    /// to another instance.
    pub fn remove_source(&mut self, source: SourceId) {
        self.sources.remove(&source);
    }

    /// Counts one call from `source`, then lets its event time advance the
    /// source's high-water mark.
    pub fn observe(
        &mut self,
        source: SourceId,
        call: &ApiCall<'_>,
        now_ms: i64,
    ) -> Admission {
        let admission = self.count(call);
        self.evict_excess();
        self.progress(source, call.event_time, now_ms);
        admission
    }

    /// Records that `source` has reached `event_time` without a call to
    /// count (a skipped record still shows how far its source has come).
    pub fn progress(&mut self, source: SourceId, event_time: i64, now_ms: i64) {
        let clock = self.sources.entry(source).or_insert(SourceClock {
            max_event_time: None,
            last_activity_ms: now_ms,
        });
        clock.last_activity_ms = now_ms;
        if clock.max_event_time.is_none_or(|max| event_time > max) {
            clock.max_event_time = Some(event_time);
            self.advance_watermark(now_ms);
        }
    }

    fn count(&mut self, call: &ApiCall<'_>) -> Admission {
        let start = self.spec.start_of(call.event_time);
        if start + self.spec.width_secs <= self.watermark {
            return Admission::Late;
        }
        let arns = self.open.entry(start).or_default();
        let window = match arns.get_mut(call.arn.as_ref()) {
            Some(window) => window,
            None => {
                let arn = call.arn.as_ref();
                let earlier = match &mut self.spill {
                    Some(spill) if self.spilled.contains_key(&start) => reload(
                        spill,
                        &mut self.spilled,
                        start,
                        arn,
                        &mut self.counts,
                        &mut self.spill_error,
                    ),
                    _ => None,
                };
                self.resident += 1;
                arns.entry(arn.into())
                    .or_insert(earlier.unwrap_or_default())
            }
        };
        if self.dedupe_event_id {
            if let Some(id) = call.event_id.as_deref() {
                if window.event_ids.contains(id) {
                    return Admission::DuplicateEventId;
                }
                window.event_ids.insert(id.into());
            }
        }
        window.count += 1;
        match window.event_names.get_mut(call.event_name.as_ref()) {
            Some(calls) => *calls += 1,
            None => {
                window
                    .event_names
                    .insert(call.event_name.as_ref().into(), 1);
            }
        }
        window
            .context
            .add(call.event_time, call.event_id.as_deref(), &call.context);
        window.dirty = true;
        Admission::Counted
    }

    /// Recomputes the watermark from the sources; `now_ms` decides which
    /// sources are idle. Call it on a timer as well as on records, so that
    /// a source that goes quiet stops holding windows open.
    pub fn advance_watermark(&mut self, now_ms: i64) -> i64 {
        if let Some(candidate) = self.candidate_watermark(now_ms) {
            self.watermark = self.watermark.max(candidate);
        }
        self.watermark
    }

    fn candidate_watermark(&self, now_ms: i64) -> Option<i64> {
        let lateness = self.spec.allowed_lateness_secs;
        let active = self
            .sources
            .values()
            .filter(|clock| now_ms - clock.last_activity_ms < self.idle_timeout_ms);
        let mut lowest: Option<Option<i64>> = None;
        for clock in active {
            lowest = Some(match lowest {
                None => clock.max_event_time,
                Some(low) => low.min(clock.max_event_time),
            });
        }
        match lowest {
            // An active source that has delivered nothing yet holds
            // everything back until it does or goes idle.
            Some(None) => None,
            Some(Some(low)) => Some(low.saturating_sub(lateness)),
            // All sources idle: everything they sent is as complete as it
            // will get, so the most advanced one sets the watermark.
            None => self
                .sources
                .values()
                .filter_map(|clock| clock.max_event_time)
                .max()
                .map(|max| max.saturating_sub(lateness)),
        }
    }

    /// Whether the watermark has passed the end of an open window.
    pub fn has_ready(&self) -> bool {
        self.open
            .first_key_value()
            .is_some_and(|(start, _)| start + self.spec.width_secs <= self.watermark)
    }

    /// Pops every window that the watermark has passed, oldest first,
    /// with its spilled entries gathered back.
    pub fn close_ready(&mut self) -> Result<Vec<ClosedWindow>, StoreError> {
        self.take_spill_error()?;
        let mut closed = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            let start = *entry.key();
            let end = start + self.spec.width_secs;
            if end > self.watermark {
                break;
            }
            let mut arns = entry.remove();
            self.resident -= arns.len();
            if let (Some(spill), Some(_)) = (&mut self.spill, self.spilled.remove(&start))
            {
                arns.extend(spill.drain_window(start)?);
            }
            closed.push(ClosedWindow { start, end, arns });
        }
        Ok(closed)
    }

    /// Closes every open window: the end of a finite input.
    pub fn close_all(&mut self) -> Result<Vec<ClosedWindow>, StoreError> {
        if let Some((&last, _)) = self.open.last_key_value() {
            self.watermark = self.watermark.max(last + self.spec.width_secs);
        }
        self.close_ready()
    }

    /// Hands out the windows changed since the last call, with their
    /// current contents, for a checkpoint. A scan of the open windows is
    /// cheaper per record than tracking changed keys in a second set.
    pub fn take_dirty(&mut self) -> Result<Vec<(i64, Box<str>, ArnWindow)>, StoreError> {
        self.take_spill_error()?;
        let mut changed = match &mut self.spill {
            Some(spill) if !self.spilled.is_empty() => spill.take_dirty()?,
            _ => Vec::new(),
        };
        for (&start, arns) in &mut self.open {
            for (arn, window) in arns.iter_mut().filter(|(_, w)| w.dirty) {
                window.dirty = false;
                changed.push((start, arn.clone(), window.clone()));
            }
        }
        Ok(changed)
    }

    /// Puts back an open window read from a checkpoint.
    pub fn restore_window(&mut self, start: i64, arn: Box<str>, window: ArnWindow) {
        let arns = self.open.entry(start).or_default();
        if arns.insert(arn, window).is_none() {
            self.resident += 1;
        }
        self.evict_excess();
    }

    /// Moves entries to the spill until a few below the bound, so that
    /// the scan for victims runs once per many records, not every record.
    fn evict_excess(&mut self) {
        let Some(spill) = &mut self.spill else {
            return;
        };
        if self.resident <= self.max_resident || self.spill_error.is_some() {
            return;
        }
        let mut excess = self.resident - self.max_resident + self.max_resident / 8;
        for (&start, arns) in &mut self.open {
            arns.retain(|arn, window| {
                if excess == 0 || self.spill_error.is_some() {
                    return true;
                }
                match spill.put(start, arn, window) {
                    Ok(()) => {
                        excess -= 1;
                        self.resident -= 1;
                        self.counts.spilled += 1;
                        *self.spilled.entry(start).or_default() += 1;
                        false
                    }
                    Err(error) => {
                        self.spill_error = Some(error);
                        true
                    }
                }
            });
            if excess == 0 || self.spill_error.is_some() {
                break;
            }
        }
    }

    fn take_spill_error(&mut self) -> Result<(), StoreError> {
        self.spill_error.take().map_or(Ok(()), Err)
    }

    /// Entries moved out and back in since the last call, for metrics.
    pub fn take_spill_counts(&mut self) -> SpillCounts {
        std::mem::take(&mut self.counts)
    }

    /// Restores the watermark from a checkpoint.
    pub fn restore_watermark(&mut self, watermark: i64) {
        self.watermark = self.watermark.max(watermark);
    }

    /// Number of (window, ARN) pairs held open, in memory or spilled.
    pub fn open_arn_windows(&self) -> usize {
        self.resident + self.spilled_arn_windows()
    }

    /// Number of (window, ARN) pairs held open in memory.
    pub fn resident_arn_windows(&self) -> usize {
        self.resident
    }

    /// Number of (window, ARN) pairs held open in the spill.
    pub fn spilled_arn_windows(&self) -> usize {
        self.spilled.values().sum()
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }
}

/// Takes `arn`'s entry for the window at `start` back from the spill.
/// A failure is kept for the next close and the call counts from zero in
/// memory meanwhile; that run never commits, so no count is lost.
fn reload(
    spill: &mut Spill,
    spilled: &mut BTreeMap<i64, usize>,
    start: i64,
    arn: &str,
    counts: &mut SpillCounts,
    error: &mut Option<StoreError>,
) -> Option<ArnWindow> {
    match spill.take(start, arn) {
        Ok(Some(window)) => {
            if let Some(left) = spilled.get_mut(&start) {
                *left -= 1;
                if *left == 0 {
                    spilled.remove(&start);
                }
            }
            counts.reloaded += 1;
            Some(window)
        }
        Ok(None) => None,
        Err(e) => {
            error.get_or_insert(e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    const HOUR: i64 = 3600;

    fn spec() -> WindowSpec {
        WindowSpec {
            width_secs: HOUR,
            allowed_lateness_secs: 900,
        }
    }

    fn call(event_time: i64, arn: &str) -> ApiCall<'_> {
        ApiCall {
            event_time,
            arn: Cow::Borrowed(arn),
            event_name: Cow::Borrowed("ListBuckets"),
            event_id: None,
            context: Default::default(),
        }
    }

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        assert_eq!(spec().start_of(7199), 3600);
        assert_eq!(spec().start_of(7200), 7200);
        assert_eq!(spec().start_of(-1), -3600);
    }

    #[test]
    fn a_window_closes_once_the_watermark_passes_its_end_plus_lateness() {
        let mut windows = Windows::new(spec(), 60_000, false);
        windows.observe(0, &call(10, "a"), 0);
        windows.observe(0, &call(HOUR + 899, "a"), 0);
        assert!(windows.close_ready().unwrap().is_empty());
        windows.observe(0, &call(HOUR + 900, "a"), 0);
        let closed = windows.close_ready().unwrap();
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].start, closed[0].end), (0, HOUR));
        assert_eq!(closed[0].arns["a"].count, 1);
    }

    #[test]
    fn a_record_for_a_closed_window_is_late_and_changes_nothing() {
        let mut windows = Windows::new(spec(), 60_000, false);
        windows.observe(0, &call(10, "a"), 0);
        windows.observe(0, &call(2 * HOUR, "a"), 0);
        assert_eq!(windows.observe(0, &call(20, "a"), 0), Admission::Late);
        let closed = windows.close_ready().unwrap();
        assert_eq!(closed[0].arns["a"].count, 1);
        // Late even though nobody popped the window yet.
        let mut lazy = Windows::new(spec(), 60_000, false);
        lazy.observe(0, &call(2 * HOUR, "a"), 0);
        assert_eq!(lazy.observe(0, &call(20, "a"), 0), Admission::Late);
    }

    #[test]
    fn the_slowest_active_source_holds_the_watermark() {
        let mut windows = Windows::new(spec(), 60_000, false);
        windows.observe(0, &call(10, "a"), 0);
        windows.observe(1, &call(5 * HOUR, "b"), 0);
        assert_eq!(windows.watermark(), 10 - 900);
        assert!(windows.close_ready().unwrap().is_empty());
    }

    #[test]
    fn an_idle_source_stops_holding_the_watermark() {
        let mut windows = Windows::new(spec(), 60_000, false);
        windows.observe(0, &call(10, "a"), 0);
        windows.observe(1, &call(5 * HOUR, "b"), 0);
        windows.progress(1, 5 * HOUR, 59_999);
        windows.advance_watermark(59_999);
        assert_eq!(windows.watermark(), 10 - 900);
        windows.progress(1, 5 * HOUR, 60_000);
        windows.advance_watermark(60_000);
        assert_eq!(windows.watermark(), 5 * HOUR - 900);
        assert_eq!(windows.close_ready().unwrap().len(), 1);
    }

    #[test]
    fn a_registered_source_without_data_holds_until_idle() {
        let mut windows = Windows::new(spec(), 60_000, false);
        windows.add_source(1, 0);
        windows.observe(0, &call(5 * HOUR, "a"), 0);
        assert_eq!(windows.watermark(), i64::MIN);
        windows.progress(0, 5 * HOUR, 60_000);
        assert_eq!(windows.advance_watermark(60_000), 5 * HOUR - 900);
    }

    #[test]
    fn the_watermark_never_moves_backwards() {
        let mut windows = Windows::new(spec(), 60_000, false);
        windows.observe(0, &call(5 * HOUR, "a"), 0);
        let before = windows.watermark();
        windows.observe(1, &call(HOUR, "a"), 0);
        assert_eq!(windows.watermark(), before);
    }

    #[test]
    fn duplicate_event_ids_count_once_when_deduplicating() {
        let mut windows = Windows::new(spec(), 60_000, true);
        let mut first = call(10, "a");
        first.event_id = Some(Cow::Borrowed("id-1"));
        assert_eq!(windows.observe(0, &first, 0), Admission::Counted);
        assert_eq!(windows.observe(0, &first, 0), Admission::DuplicateEventId);
        assert_eq!(windows.close_all().unwrap()[0].arns["a"].count, 1);
    }

    #[test]
    fn close_all_closes_every_open_window_in_order() {
        let mut windows = Windows::new(spec(), 60_000, false);
        windows.observe(0, &call(3 * HOUR, "a"), 0);
        windows.observe(0, &call(3 * HOUR - 100, "b"), 0);
        let closed = windows.close_all().unwrap();
        let starts: Vec<i64> = closed.iter().map(|w| w.start).collect();
        assert_eq!(starts, [2 * HOUR, 3 * HOUR]);
        assert_eq!(windows.open_windows(), 0);
    }

    fn spilling(max_resident: usize) -> (crate::store::StateStore, Windows) {
        let store = crate::store::StateStore::temporary().unwrap();
        let mut windows = Windows::new(spec(), 60_000, true);
        windows.spill_to(store.spill().unwrap(), max_resident);
        (store, windows)
    }

    #[test]
    fn entries_past_the_bound_spill_and_come_back_whole() {
        let (_store, mut windows) = spilling(2);
        let arns = ["a", "b", "c", "d"];
        for (i, arn) in arns.iter().enumerate() {
            let mut first = call(10, arn);
            first.event_id = Some(Cow::Owned(format!("id-{i}")));
            windows.observe(0, &first, 0);
        }
        assert_eq!(windows.resident_arn_windows(), 2);
        assert_eq!(windows.spilled_arn_windows(), 2);
        assert_eq!(windows.open_arn_windows(), 4);
        // Each eventID comes back with its entry, so every repeat is still
        // a duplicate, whichever entries were spilled.
        for (i, arn) in arns.iter().enumerate() {
            let mut again = call(20, arn);
            again.event_id = Some(Cow::Owned(format!("id-{i}")));
            assert_eq!(windows.observe(0, &again, 0), Admission::DuplicateEventId);
        }
        let counts = windows.take_spill_counts();
        assert!(counts.spilled >= 2 && counts.reloaded >= 2, "{counts:?}");
        let closed = windows.close_all().unwrap();
        let total: u64 = closed[0].arns.values().map(|w| w.count).sum();
        assert_eq!((closed[0].arns.len(), total), (4, 4));
        assert_eq!(windows.open_arn_windows(), 0);
    }

    #[test]
    fn spilled_changes_still_reach_the_next_checkpoint() {
        let (_store, mut windows) = spilling(1);
        windows.observe(0, &call(10, "a"), 0);
        windows.observe(0, &call(11, "b"), 0);
        windows.observe(0, &call(12, "c"), 0);
        let mut dirty: Vec<(Box<str>, u64)> = windows
            .take_dirty()
            .unwrap()
            .into_iter()
            .map(|(_, arn, w)| (arn, w.count))
            .collect();
        dirty.sort();
        assert_eq!(dirty, [("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]);
        assert!(windows.take_dirty().unwrap().is_empty());
    }

    #[test]
    fn dirty_windows_are_handed_out_once_and_forgotten_when_closed() {
        let mut windows = Windows::new(spec(), 60_000, false);
        windows.observe(0, &call(10, "a"), 0);
        windows.observe(0, &call(11, "a"), 0);
        let dirty = windows.take_dirty().unwrap();
        assert_eq!(dirty.len(), 1);
        assert_eq!(dirty[0].2.count, 2);
        assert!(windows.take_dirty().unwrap().is_empty());
        windows.observe(0, &call(12, "b"), 0);
        windows.close_all().unwrap();
        assert!(windows.take_dirty().unwrap().is_empty());
    }
}

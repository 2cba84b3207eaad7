//! Fixed-size summaries that explain an alert: what one ARN's window was
//! made of, and which APIs the ARN usually calls.
//!
//! Every summary here has a size bound that does not depend on how many
//! records it saw, so the memory of open windows stays a constant per
//! (window, ARN) entry and `state.max_open_arn_windows` keeps bounding it:
//!
//! - [`WindowContext`]: per kind of value (source IP, user agent, region,
//!   error code) at most [`TOP_SLOTS`] values of at most
//!   [`MAX_VALUE_BYTES`] bytes each, with counts (Space-Saving);
//!   [`SAMPLE_EVENT_IDS`] eventIDs and a few integers;
//! - [`KnownApis`]: at most [`KNOWN_API_SLOTS`] API names per ARN, kept in
//!   the store beside its baseline.
//!
//! Results are exact while a window has at most [`TOP_SLOTS`] distinct
//! values of a kind; beyond that the Space-Saving counts are upper bounds
//! that over-count by at most the count they replaced, and the summary
//! says it is approximate.

use serde::{Deserialize, Serialize};

use crate::parse::CallContext;

/// Values tracked per kind in one window; alerts show the top
/// [`REPORTED_TOP`] of them. Twice as many slots as shown keeps the shown
/// ones stable when a long tail of rare values passes through.
pub const TOP_SLOTS: usize = 10;
pub const REPORTED_TOP: usize = 5;
/// Longer values (user agents can run to kilobytes) are cut at a char
/// boundary; a responder needs the start of a user agent, not all of it.
pub const MAX_VALUE_BYTES: usize = 160;
/// Event ids kept per window for pivoting to raw records: the earliest by
/// (eventTime, eventID), so the choice does not depend on arrival order.
pub const SAMPLE_EVENT_IDS: usize = 5;
/// Distinct APIs remembered per ARN. Past it, the least-called is
/// forgotten, and may be marked new again if it comes back.
pub const KNOWN_API_SLOTS: usize = 48;

/// A value and how often it was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counted {
    pub value: Box<str>,
    pub count: u64,
}

/// The kinds of value a window's context tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    SourceIp,
    UserAgent,
    Region,
    ErrorCode,
}

impl Kind {
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// One tracked value. Counts are 32-bit: one ARN's calls in one window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Slot {
    kind: Kind,
    count: u32,
    value: Box<str>,
}

/// An eventID, in 16 bytes when it is a UUID as CloudTrail writes them,
/// so a sample costs no allocation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum SampleId {
    Uuid([u8; 16]),
    Text(Box<str>),
}

impl SampleId {
    fn new(id: &str) -> SampleId {
        match uuid::Uuid::try_parse(id) {
            Ok(uuid) if uuid.hyphenated().to_string() == id => {
                SampleId::Uuid(*uuid.as_bytes())
            }
            _ => SampleId::Text(clip(id).into()),
        }
    }

    fn text(&self) -> String {
        match self {
            SampleId::Uuid(bytes) => {
                uuid::Uuid::from_bytes(*bytes).hyphenated().to_string()
            }
            SampleId::Text(text) => text.to_string(),
        }
    }
}

/// What one ARN's calls in one window were made of, beyond their count
/// and names: the most frequent values of each [`Kind`] in fixed space
/// (the Space-Saving algorithm of Metwally, Agrawal and El Abbadi: a new
/// value that finds its kind's slots taken replaces the least-counted one
/// and inherits its count plus one), failures, first and last time, and
/// the earliest eventIDs.
///
/// Laid out for size, since there is one per open (window, ARN) entry: the
/// four kinds share one vector grown a slot at a time, and UUID eventIDs
/// are kept as bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowContext {
    slots: Vec<Slot>,
    /// One bit per kind that ever replaced a value, so may over-count.
    approximate: u8,
    failed_calls: u32,
    first_event_time: Option<i64>,
    last_event_time: Option<i64>,
    /// The earliest calls' (eventTime, eventID), sorted.
    sample_event_ids: Vec<(i64, SampleId)>,
}

impl WindowContext {
    /// Adds one counted call.
    pub fn add(
        &mut self,
        event_time: i64,
        event_id: Option<&str>,
        call: &CallContext<'_>,
    ) {
        let values = [
            (Kind::SourceIp, &call.source_ip),
            (Kind::UserAgent, &call.user_agent),
            (Kind::Region, &call.region),
            (Kind::ErrorCode, &call.error_code),
        ];
        for (kind, value) in values {
            if let Some(value) = value {
                self.add_value(kind, value);
            }
        }
        if call.error_code.is_some() {
            self.failed_calls = self.failed_calls.saturating_add(1);
        }
        self.first_event_time = Some(
            self.first_event_time
                .map_or(event_time, |t| t.min(event_time)),
        );
        self.last_event_time = Some(
            self.last_event_time
                .map_or(event_time, |t| t.max(event_time)),
        );
        if let Some(id) = event_id {
            self.sample(event_time, id);
        }
    }

    fn add_value(&mut self, kind: Kind, value: &str) {
        let value = clip(value);
        let mut held = 0;
        let mut least: Option<usize> = None;
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.kind != kind {
                continue;
            }
            if &*slot.value == value {
                self.slots[i].count = slot.count.saturating_add(1);
                return;
            }
            held += 1;
            // Ties go to the greatest value, so which slot is replaced
            // depends on the counts and values only.
            let lower = |a: &Slot, b: &Slot| {
                a.count < b.count || (a.count == b.count && a.value > b.value)
            };
            if least.is_none_or(|j| lower(slot, &self.slots[j])) {
                least = Some(i);
            }
        }
        if held < TOP_SLOTS {
            // Room for the usual one value of each kind at once, then one
            // slot at a time: most entries hold four values, few hold forty.
            self.slots
                .reserve_exact(if self.slots.is_empty() { 4 } else { 1 });
            self.slots.push(Slot {
                kind,
                count: 1,
                value: value.into(),
            });
        } else if let Some(i) = least {
            let slot = &mut self.slots[i];
            slot.value = value.into();
            slot.count = slot.count.saturating_add(1);
            self.approximate |= kind.bit();
        }
    }

    fn sample(&mut self, event_time: i64, id: &str) {
        let full = self.sample_event_ids.len() >= SAMPLE_EVENT_IDS;
        // Most calls come after the earliest few: skip them before any work.
        if full
            && self
                .sample_event_ids
                .last()
                .is_some_and(|(t, _)| event_time > *t)
        {
            return;
        }
        let id = SampleId::new(id);
        let key = (event_time, id);
        let position = match self.sample_event_ids.binary_search(&key) {
            Ok(_) => return,
            Err(position) => position,
        };
        if position >= SAMPLE_EVENT_IDS {
            return;
        }
        if !full {
            self.sample_event_ids.reserve_exact(1);
        }
        self.sample_event_ids.insert(position, key);
        self.sample_event_ids.truncate(SAMPLE_EVENT_IDS);
    }

    /// Up to `n` values of `kind`, most frequent first, ties by value.
    pub fn top(&self, kind: Kind, n: usize) -> Vec<Counted> {
        let mut sorted: Vec<Counted> = self
            .slots
            .iter()
            .filter(|slot| slot.kind == kind)
            .map(|slot| Counted {
                value: slot.value.clone(),
                count: u64::from(slot.count),
            })
            .collect();
        sorted.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
        sorted.truncate(n);
        sorted
    }

    /// Whether any of the top lists may over-count.
    pub fn is_approximate(&self) -> bool {
        self.approximate != 0
    }

    /// Calls that carried an `errorCode`.
    pub fn failed_calls(&self) -> u64 {
        u64::from(self.failed_calls)
    }

    /// Event times of the earliest and latest call, `None` before the first.
    pub fn first_event_time(&self) -> Option<i64> {
        self.first_event_time
    }

    pub fn last_event_time(&self) -> Option<i64> {
        self.last_event_time
    }

    /// The eventIDs of the earliest calls, by (eventTime, eventID).
    pub fn sample_event_ids(&self) -> Vec<String> {
        self.sample_event_ids
            .iter()
            .map(|(_, id)| id.text())
            .collect()
    }
}

/// Cuts `value` to at most [`MAX_VALUE_BYTES`] at a char boundary.
fn clip(value: &str) -> &str {
    if value.len() <= MAX_VALUE_BYTES {
        return value;
    }
    let mut end = MAX_VALUE_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// The APIs an ARN has called before, with the number of windows it called
/// each in. Kept per ARN in the store and updated at every window close.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownApis {
    /// Sorted by name, for lookup by binary search.
    apis: Vec<Counted>,
}

impl KnownApis {
    pub fn contains(&self, api: &str) -> bool {
        self.position(api).is_ok()
    }

    /// Windows in which `api` was called, as far as remembered.
    pub fn windows_with(&self, api: &str) -> u64 {
        self.position(api).map_or(0, |i| self.apis[i].count)
    }

    fn position(&self, api: &str) -> Result<usize, usize> {
        self.apis
            .binary_search_by(|known| (*known.value).cmp(clip(api)))
    }

    /// Records one window's distinct APIs. When the slots run out, the
    /// APIs called in the fewest windows make room, ties by name; one just
    /// added counts as called once, so a burst of new names cannot push out
    /// what the ARN calls every window.
    pub fn record_window<'n>(&mut self, names: impl IntoIterator<Item = &'n str>) {
        for name in names {
            match self.position(name) {
                Ok(i) => self.apis[i].count += 1,
                Err(i) => self.apis.insert(
                    i,
                    Counted {
                        value: clip(name).into(),
                        count: 1,
                    },
                ),
            }
        }
        while self.apis.len() > KNOWN_API_SLOTS {
            let rarest = self
                .apis
                .iter()
                .enumerate()
                .min_by(|(_, a), (_, b)| {
                    a.count.cmp(&b.count).then_with(|| b.value.cmp(&a.value))
                })
                .map(|(i, _)| i);
            if let Some(i) = rarest {
                self.apis.remove(i);
            }
        }
    }

    /// The APIs called in the most windows, most first.
    pub fn usual(&self, n: usize) -> Vec<Counted> {
        let mut sorted = self.apis.clone();
        sorted.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
        sorted.truncate(n);
        sorted
    }

    pub fn len(&self) -> usize {
        self.apis.len()
    }

    pub fn is_empty(&self) -> bool {
        self.apis.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn ips(values: &[&str]) -> WindowContext {
        let mut context = WindowContext::default();
        for v in values {
            context.add_value(Kind::SourceIp, v);
        }
        context
    }

    fn shown(context: &WindowContext, kind: Kind) -> Vec<(String, u64)> {
        context
            .top(kind, REPORTED_TOP)
            .into_iter()
            .map(|c| (c.value.into(), c.count))
            .collect()
    }

    #[test]
    fn few_values_are_counted_exactly_and_kinds_apart() {
        let mut context = ips(&["b", "a", "b", "c", "b", "a"]);
        context.add_value(Kind::Region, "b");
        let expected = [("b", 3), ("a", 2), ("c", 1)].map(|(v, c)| (v.to_string(), c));
        assert_eq!(shown(&context, Kind::SourceIp), expected);
        assert_eq!(shown(&context, Kind::Region), [("b".to_string(), 1)]);
        assert!(!context.is_approximate());
    }

    #[test]
    fn a_long_tail_neither_grows_the_summary_nor_hides_the_heavy_hitter() {
        let mut context = WindowContext::default();
        for i in 0..10_000 {
            context.add_value(Kind::SourceIp, "198.51.100.7");
            context.add_value(Kind::SourceIp, &format!("203.0.113.{i}"));
        }
        assert!(context.slots.len() <= TOP_SLOTS);
        let first = &context.top(Kind::SourceIp, 1)[0];
        assert_eq!(&*first.value, "198.51.100.7");
        assert!(first.count >= 10_000);
        assert!(context.is_approximate());
    }

    #[test]
    fn long_values_are_clipped_at_a_char_boundary() {
        let agent = "é".repeat(MAX_VALUE_BYTES);
        let context = ips(&[&agent]);
        let kept = &context.top(Kind::SourceIp, 1)[0].value;
        assert!(kept.len() <= MAX_VALUE_BYTES);
        assert!(agent.starts_with(&**kept));
    }

    #[test]
    fn sample_ids_are_the_earliest_whatever_the_order() {
        let call = CallContext::default();
        let mut forward = WindowContext::default();
        let mut backward = WindowContext::default();
        let ids: Vec<(i64, String)> = (0..20)
            .map(|i| (100 + i % 7, format!("id-{i:02}")))
            .collect();
        for (t, id) in &ids {
            forward.add(*t, Some(id), &call);
        }
        for (t, id) in ids.iter().rev() {
            backward.add(*t, Some(id), &call);
        }
        assert_eq!(forward.sample_event_ids, backward.sample_event_ids);
        let sample = forward.sample_event_ids();
        assert_eq!(sample.len(), SAMPLE_EVENT_IDS);
        assert_eq!(sample[0], "id-00");
        assert_eq!(
            (forward.first_event_time(), forward.last_event_time()),
            (Some(100), Some(106))
        );
    }

    #[test]
    fn uuid_event_ids_are_kept_as_bytes_and_given_back_as_written() {
        let mut context = WindowContext::default();
        let uuid = "3d9a2a4e-6f0b-4c1e-9f7a-6b2d8e0c5a31";
        let upper = "3D9A2A4E-6F0B-4C1E-9F7A-6B2D8E0C5A31";
        context.add(1, Some(uuid), &CallContext::default());
        context.add(2, Some(upper), &CallContext::default());
        assert!(matches!(context.sample_event_ids[0].1, SampleId::Uuid(_)));
        assert!(matches!(context.sample_event_ids[1].1, SampleId::Text(_)));
        assert_eq!(context.sample_event_ids(), [uuid, upper]);
    }

    #[test]
    fn known_apis_forget_the_rarest_when_full() {
        let mut known = KnownApis::default();
        for _ in 0..3 {
            known.record_window(["GetObject", "ListBuckets"]);
        }
        let burst: Vec<String> = (0..KNOWN_API_SLOTS * 2)
            .map(|i| format!("Burst{i:03}"))
            .collect();
        known.record_window(burst.iter().map(String::as_str));
        assert_eq!(known.len(), KNOWN_API_SLOTS);
        assert!(known.contains("GetObject") && known.contains("ListBuckets"));
        assert_eq!(known.windows_with("GetObject"), 3);
        assert_eq!(&*known.usual(1)[0].value, "GetObject");
    }

    proptest! {
        /// Space-Saving's guarantees: the summary stays within its slots,
        /// never under-counts a value it holds, over-counts by at most the
        /// smallest count it holds, and holds every value more frequent than
        /// that smallest count.
        #[test]
        fn top_values_keep_the_space_saving_bounds(values in prop::collection::vec(0u8..40, 0..400)) {
            let mut context = WindowContext::default();
            let mut exact: BTreeMap<String, u64> = BTreeMap::new();
            for v in &values {
                let v = format!("v{v}");
                context.add_value(Kind::UserAgent, &v);
                *exact.entry(v).or_default() += 1;
            }
            let held = context.top(Kind::UserAgent, usize::MAX);
            prop_assert!(held.len() <= TOP_SLOTS);
            let least = held.iter().map(|s| s.count).min().unwrap_or(0);
            for slot in &held {
                let truth = exact[&*slot.value];
                prop_assert!(slot.count >= truth);
                prop_assert!(slot.count - truth <= least);
            }
            if held.len() == TOP_SLOTS {
                for (value, &count) in &exact {
                    if count > least {
                        prop_assert!(held.iter().any(|s| &*s.value == value));
                    }
                }
            } else {
                prop_assert!(!context.is_approximate());
                prop_assert_eq!(held.len(), exact.len());
            }
        }
    }
}

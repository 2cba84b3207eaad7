//! Fixed-size summaries that explain an alert: what one ARN's window was
//! made of, and which APIs the ARN usually calls.
//!
//! Every summary here has a size bound that does not depend on how many
//! records it saw, so the memory of open windows stays a constant per
//! (window, ARN) entry and `state.max_open_arn_windows` keeps bounding it:
//!
//! - [`TopValues`]: at most [`TOP_SLOTS`] values of at most
//!   [`MAX_VALUE_BYTES`] bytes each, with counts (Space-Saving);
//! - [`WindowContext`]: four of those, [`SAMPLE_EVENT_IDS`] event ids and
//!   a few integers;
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

/// The most frequent values of one kind, in fixed space (the Space-Saving
/// algorithm of Metwally, Agrawal and El Abbadi): a new value that finds
/// every slot taken replaces the least-counted one and inherits its count
/// plus one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopValues {
    slots: Vec<Counted>,
    /// A value was ever replaced, so counts may over-count.
    approximate: bool,
}

impl TopValues {
    pub fn add(&mut self, value: &str) {
        let value = clip(value);
        if let Some(slot) = self.slots.iter_mut().find(|s| &*s.value == value) {
            slot.count += 1;
            return;
        }
        if self.slots.len() < TOP_SLOTS {
            self.slots.push(Counted {
                value: value.into(),
                count: 1,
            });
            return;
        }
        // Ties go to the greatest value, so that which slot is replaced
        // depends on the counts and values only.
        if let Some(least) = self
            .slots
            .iter_mut()
            .min_by(|a, b| a.count.cmp(&b.count).then_with(|| b.value.cmp(&a.value)))
        {
            least.value = value.into();
            least.count += 1;
            self.approximate = true;
        }
    }

    /// Up to `n` values, most frequent first, ties by value.
    pub fn top(&self, n: usize) -> Vec<Counted> {
        let mut sorted = self.slots.clone();
        sorted.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
        sorted.truncate(n);
        sorted
    }

    pub fn is_approximate(&self) -> bool {
        self.approximate
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
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

/// What one ARN's calls in one window were made of, beyond their count
/// and names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowContext {
    pub source_ips: TopValues,
    pub user_agents: TopValues,
    pub regions: TopValues,
    pub error_codes: TopValues,
    /// Calls that carried an `errorCode`.
    pub failed_calls: u64,
    /// Event time of the earliest and latest call, `None` before the first.
    pub first_event_time: Option<i64>,
    pub last_event_time: Option<i64>,
    /// The earliest calls' (eventTime, eventID), sorted.
    pub sample_event_ids: Vec<(i64, Box<str>)>,
}

impl WindowContext {
    /// Adds one counted call.
    pub fn add(
        &mut self,
        event_time: i64,
        event_id: Option<&str>,
        call: &CallContext<'_>,
    ) {
        if let Some(ip) = &call.source_ip {
            self.source_ips.add(ip);
        }
        if let Some(agent) = &call.user_agent {
            self.user_agents.add(agent);
        }
        if let Some(region) = &call.region {
            self.regions.add(region);
        }
        if let Some(code) = &call.error_code {
            self.error_codes.add(code);
            self.failed_calls += 1;
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

    fn sample(&mut self, event_time: i64, id: &str) {
        let id = clip(id);
        let position = self
            .sample_event_ids
            .partition_point(|(t, i)| (*t, &**i) < (event_time, id));
        if position >= SAMPLE_EVENT_IDS
            || self
                .sample_event_ids
                .get(position)
                .is_some_and(|(t, i)| (*t, &**i) == (event_time, id))
        {
            return;
        }
        self.sample_event_ids
            .insert(position, (event_time, id.into()));
        self.sample_event_ids.truncate(SAMPLE_EVENT_IDS);
    }

    /// Whether any of the top lists may over-count.
    pub fn is_approximate(&self) -> bool {
        [
            &self.source_ips,
            &self.user_agents,
            &self.regions,
            &self.error_codes,
        ]
        .iter()
        .any(|top| top.is_approximate())
    }
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

    fn top_of(values: &[&str]) -> TopValues {
        let mut top = TopValues::default();
        for v in values {
            top.add(v);
        }
        top
    }

    #[test]
    fn few_values_are_counted_exactly() {
        let top = top_of(&["b", "a", "b", "c", "b", "a"]);
        let shown: Vec<(String, u64)> = top
            .top(5)
            .into_iter()
            .map(|c| (c.value.into(), c.count))
            .collect();
        let expected = [("b", 3), ("a", 2), ("c", 1)].map(|(v, c)| (v.to_string(), c));
        assert_eq!(shown, expected);
        assert!(!top.is_approximate());
    }

    #[test]
    fn a_long_tail_neither_grows_the_summary_nor_hides_the_heavy_hitter() {
        let mut top = TopValues::default();
        for i in 0..10_000 {
            top.add("198.51.100.7");
            top.add(&format!("203.0.113.{i}"));
        }
        assert!(top.slots.len() <= TOP_SLOTS);
        let first = &top.top(1)[0];
        assert_eq!(&*first.value, "198.51.100.7");
        assert!(first.count >= 10_000);
        assert!(top.is_approximate());
    }

    #[test]
    fn long_values_are_clipped_at_a_char_boundary() {
        let agent = "é".repeat(MAX_VALUE_BYTES);
        let top = top_of(&[&agent]);
        let kept = &top.top(1)[0].value;
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
        assert_eq!(forward.sample_event_ids.len(), SAMPLE_EVENT_IDS);
        assert_eq!(forward.sample_event_ids[0], (100, "id-00".into()));
        assert_eq!(
            (forward.first_event_time, forward.last_event_time),
            (Some(100), Some(106))
        );
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
            let mut top = TopValues::default();
            let mut exact: BTreeMap<String, u64> = BTreeMap::new();
            for v in &values {
                let v = format!("v{v}");
                top.add(&v);
                *exact.entry(v).or_default() += 1;
            }
            prop_assert!(top.slots.len() <= TOP_SLOTS);
            let least = top.slots.iter().map(|s| s.count).min().unwrap_or(0);
            for slot in &top.slots {
                let truth = exact[&*slot.value];
                prop_assert!(slot.count >= truth);
                prop_assert!(slot.count - truth <= least);
            }
            if top.slots.len() == TOP_SLOTS {
                for (value, &count) in &exact {
                    if count > least {
                        prop_assert!(top.slots.iter().any(|s| &*s.value == value));
                    }
                }
            } else {
                prop_assert!(!top.is_approximate());
                prop_assert_eq!(top.slots.len(), exact.len());
            }
        }
    }
}

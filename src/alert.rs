//! Stage 5: the alert a spike produces (SPEC.md section 5), with its
//! explanation and its place in an incident, and the rules that suppress
//! alerts before they are produced.
//!
//! An alert is a pure function of the ARN, its window, its baseline, its
//! incident and the APIs the ARN was known to call, all of which are
//! durable state: it holds no wall-clock time, so re-sending it after a
//! crash yields the same bytes and the same `alertId`. The JSON field names are the
//! documented schema that SIEMs consume (`schemas/alert.schema.json`);
//! changing one is a breaking change and bumps `schemaVersion`.

use globset::{Glob, GlobMatcher};
use regex::Regex;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::baseline::Baseline;
use crate::detect::Thresholds;
use crate::summary::{Kind, KnownApis, REPORTED_TOP};
use crate::window::ArnWindow;

/// The Splunk analytic this detection ports.
pub const DETECTION_ID: &str = "ada0f478-84a8-4641-a3f1-d32362d4bd55";
pub const DETECTION_NAME: &str = "Detect Spike in AWS API Activity";
pub const MITRE_TECHNIQUE: &str = "T1078.004";
/// 2 added incidents (`status`, `incident*`), `zScore`, `ratioToAverage`,
/// `overrideRule` and `explanation`.
pub const SCHEMA_VERSION: u32 = 2;

/// Namespace of the version-5 UUIDs used as alert ids; fixed forever, or
/// every re-sent alert would look new.
const ALERT_ID_NAMESPACE: Uuid =
    Uuid::from_u128(0x5f1c_2a7e_93d4_4b8a_a1e6_0c3f_7d29_b814);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Alert {
    pub schema_version: u32,
    /// Unique per message: the window's alert, or an incident's resolution.
    pub alert_id: String,
    pub detection_id: String,
    pub detection_name: String,
    pub mitre_attack: Vec<String>,
    /// Where this message stands in its incident.
    pub status: Status,
    /// The `alertId` of the incident's first alert; the same on every
    /// message of one incident.
    pub incident_id: String,
    /// Start of the incident's first spike window.
    pub incident_start: String,
    /// Spike windows in the incident so far, this one included.
    pub incident_spike_windows: u64,
    /// Most calls in one window of the incident so far.
    pub incident_peak_api_calls: u64,
    /// The ARN, named `user` as in the original's output.
    pub user: String,
    pub window_start: String,
    pub window_end: String,
    pub number_of_api_calls: u64,
    pub unique_apis_called: u64,
    /// Distinct eventNames, sorted, at most `alerts.event_name_cap`.
    pub event_name: Vec<String>,
    pub event_name_truncated: bool,
    pub avg_api_calls: f64,
    pub stdev_api_calls: f64,
    pub num_data_points: u64,
    /// `avgApiCalls + deviationThreshold * stdevApiCalls`, the count that
    /// was exceeded.
    pub threshold: f64,
    /// `(numberOfApiCalls - avgApiCalls) / stdevApiCalls`: a spike is a
    /// z-score above `deviationThreshold`. `null` when the deviation is 0.
    pub z_score: Option<f64>,
    /// `numberOfApiCalls / avgApiCalls`; `null` when the average is 0.
    pub ratio_to_average: Option<f64>,
    pub deviation_threshold: f64,
    pub data_point_threshold: u64,
    /// 1-based index of the `[[override]]` that set the two thresholds.
    pub override_rule: Option<usize>,
    pub explanation: Explanation,
}

/// An incident's stage. A spike continuing in the next window is the same
/// incident; the first window without one resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    New,
    Ongoing,
    Resolved,
}

/// A value of the window with its calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueCount {
    pub value: String,
    pub count: u64,
}

/// An eventName of the window with its calls, and whether the ARN had
/// never called it before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventNameCount {
    pub value: String,
    pub count: u64,
    pub new: bool,
}

/// What the window was made of, against what the ARN usually does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Explanation {
    /// The most called eventNames, most first (at most 5).
    pub top_event_names: Vec<EventNameCount>,
    /// eventNames of this window the ARN had not called in any earlier
    /// window, sorted, at most `alerts.event_name_cap`.
    pub new_event_names: Vec<String>,
    /// Distinct APIs the ARN was known to call before this window.
    pub known_apis: u64,
    pub top_source_ips: Vec<ValueCount>,
    pub top_user_agents: Vec<ValueCount>,
    pub top_regions: Vec<ValueCount>,
    pub top_error_codes: Vec<ValueCount>,
    /// Calls that returned an errorCode, and their share of all calls.
    pub failed_calls: u64,
    pub failure_share: f64,
    pub first_event_time: Option<String>,
    pub last_event_time: Option<String>,
    /// eventIDs of the earliest calls, to find the raw records.
    pub sample_event_ids: Vec<String>,
    /// Some top list met more distinct values than it tracks, so its
    /// counts are upper bounds.
    pub approximate: bool,
}

/// An open incident, kept per ARN in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub first_window_start: i64,
    pub last_spike_window_start: i64,
    pub spike_windows: u64,
    pub peak_api_calls: u64,
    /// An alert of this incident has been produced; until then its first
    /// produced alert is `new` (the earlier ones were suppressed).
    pub announced: bool,
}

impl Incident {
    pub fn open(window_start: i64) -> Incident {
        Incident {
            first_window_start: window_start,
            last_spike_window_start: window_start,
            spike_windows: 0,
            peak_api_calls: 0,
            announced: false,
        }
    }

    pub fn add_spike(&mut self, window_start: i64, calls: u64) {
        self.last_spike_window_start = window_start;
        self.spike_windows += 1;
        self.peak_api_calls = self.peak_api_calls.max(calls);
    }
}

/// Deterministic id of the alert for `arn` in the window starting at
/// `window_start`.
pub fn alert_id(arn: &str, window_start: i64) -> String {
    let name = format!("{DETECTION_ID}|{arn}|{window_start}");
    Uuid::new_v5(&ALERT_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// Deterministic id of the message that resolves `arn`'s incident in the
/// window starting at `window_start`: distinct from any spike alert's.
pub fn resolution_id(arn: &str, window_start: i64) -> String {
    let name = format!("{DETECTION_ID}|{arn}|{window_start}|resolved");
    Uuid::new_v5(&ALERT_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// RFC 3339 UTC text of a Unix time in seconds.
pub fn rfc3339(unix_secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix_secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix_secs.to_string())
}

/// What the alert is built from.
pub struct SpikeFacts<'a> {
    pub arn: &'a str,
    pub window_start: i64,
    pub window_end: i64,
    /// The ARN's activity in the window; empty for an incident resolved by
    /// a window the ARN made no call in.
    pub window: &'a ArnWindow,
    pub baseline: &'a Baseline,
    pub thresholds: Thresholds,
    pub override_rule: Option<usize>,
    pub event_name_cap: usize,
    pub status: Status,
    pub incident: &'a Incident,
    /// What the ARN had called before this window.
    pub known: &'a KnownApis,
}

impl Alert {
    pub fn new(facts: &SpikeFacts<'_>) -> Alert {
        let mut names: Vec<&str> =
            facts.window.event_names.keys().map(AsRef::as_ref).collect();
        names.sort_unstable();
        let unique = names.len() as u64;
        let truncated = names.len() > facts.event_name_cap;
        let baseline = facts.baseline;
        let calls = facts.window.count;
        let id = match facts.status {
            Status::Resolved => resolution_id(facts.arn, facts.window_start),
            Status::New | Status::Ongoing => alert_id(facts.arn, facts.window_start),
        };
        // `names` is sorted, so these are too.
        let new_names: Vec<String> = names
            .iter()
            .filter(|name| !facts.known.contains(name))
            .take(facts.event_name_cap)
            .map(|name| name.to_string())
            .collect();
        names.truncate(facts.event_name_cap);
        Alert {
            schema_version: SCHEMA_VERSION,
            alert_id: id,
            detection_id: DETECTION_ID.into(),
            detection_name: DETECTION_NAME.into(),
            mitre_attack: vec![MITRE_TECHNIQUE.into()],
            status: facts.status,
            incident_id: alert_id(facts.arn, facts.incident.first_window_start),
            incident_start: rfc3339(facts.incident.first_window_start),
            incident_spike_windows: facts.incident.spike_windows,
            incident_peak_api_calls: facts.incident.peak_api_calls,
            user: facts.arn.into(),
            window_start: rfc3339(facts.window_start),
            window_end: rfc3339(facts.window_end),
            number_of_api_calls: calls,
            unique_apis_called: unique,
            event_name: names.into_iter().map(String::from).collect(),
            event_name_truncated: truncated,
            avg_api_calls: baseline.avg_api_calls,
            stdev_api_calls: baseline.stdev_api_calls,
            num_data_points: baseline.num_data_points,
            threshold: facts.thresholds.threshold(baseline),
            z_score: (baseline.stdev_api_calls > 0.0).then(|| {
                (calls as f64 - baseline.avg_api_calls) / baseline.stdev_api_calls
            }),
            ratio_to_average: (baseline.avg_api_calls > 0.0)
                .then(|| calls as f64 / baseline.avg_api_calls),
            deviation_threshold: facts.thresholds.deviation,
            data_point_threshold: facts.thresholds.data_points,
            override_rule: facts.override_rule.map(|index| index + 1),
            explanation: Explanation::new(facts.window, facts.known, new_names),
        }
    }

    pub fn to_json(&self) -> String {
        // Plain strings and numbers: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Explanation {
    fn new(
        window: &ArnWindow,
        known: &KnownApis,
        new_event_names: Vec<String>,
    ) -> Explanation {
        let mut by_calls: Vec<(&str, u64)> = window
            .event_names
            .iter()
            .map(|(name, &calls)| (&**name, calls))
            .collect();
        by_calls.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let top_event_names = by_calls
            .into_iter()
            .take(REPORTED_TOP)
            .map(|(name, count)| EventNameCount {
                value: name.into(),
                count,
                new: !known.contains(name),
            })
            .collect();
        let context = &window.context;
        let top = |kind| {
            context
                .top(kind, REPORTED_TOP)
                .into_iter()
                .map(|c| ValueCount {
                    value: c.value.into(),
                    count: c.count,
                })
                .collect()
        };
        let failure_share = match window.count {
            0 => 0.0,
            calls => context.failed_calls() as f64 / calls as f64,
        };
        Explanation {
            top_event_names,
            new_event_names,
            known_apis: known.len() as u64,
            top_source_ips: top(Kind::SourceIp),
            top_user_agents: top(Kind::UserAgent),
            top_regions: top(Kind::Region),
            top_error_codes: top(Kind::ErrorCode),
            failed_calls: context.failed_calls(),
            failure_share,
            first_event_time: context.first_event_time().map(rfc3339),
            last_event_time: context.last_event_time().map(rfc3339),
            sample_event_ids: context.sample_event_ids(),
            approximate: context.is_approximate(),
        }
    }
}

/// One suppression rule as written in config (`[[suppress]]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppressionRule {
    /// Glob over the ARN, e.g. `arn:aws:sts::*:assumed-role/ci-*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// Regular expression over the whole ARN, instead of `arn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn_regex: Option<String>,
    /// Glob over eventName: the rule matches only if every eventName of
    /// the window matches it, so a spike that also contains other calls is
    /// still alerted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_name: Option<String>,
    /// Date (`2027-01-31`) or RFC 3339 time after which the rule no longer
    /// applies; compared with the window start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Why the rule exists; logged when it suppresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Which ARNs a rule applies to: a glob, or a regular expression over the
/// whole ARN.
#[derive(Debug, Clone)]
pub(crate) enum ArnMatcher {
    Glob(GlobMatcher),
    Regex(Regex),
}

impl ArnMatcher {
    /// Compiles a rule's `arn` or `arn_regex`, exactly one of which is set.
    pub(crate) fn compile(
        glob: Option<&str>,
        regex: Option<&str>,
    ) -> Result<ArnMatcher, String> {
        match (glob, regex) {
            (Some(glob), None) => Ok(ArnMatcher::Glob(compile_glob(glob, "arn")?)),
            (None, Some(pattern)) => {
                let anchored = format!("^(?:{pattern})$");
                Regex::new(&anchored)
                    .map(ArnMatcher::Regex)
                    .map_err(|e| format!("arn_regex does not compile: {e}"))
            }
            _ => Err("give exactly one of `arn` (a glob) or `arn_regex`".into()),
        }
    }

    pub(crate) fn is_match(&self, arn: &str) -> bool {
        match self {
            ArnMatcher::Glob(glob) => glob.is_match(arn),
            ArnMatcher::Regex(regex) => regex.is_match(arn),
        }
    }
}

#[derive(Debug, Clone)]
struct CompiledRule {
    arn: ArnMatcher,
    event_name: Option<GlobMatcher>,
    expires_unix: Option<i64>,
}

/// Why an alert was not produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuppressedBy {
    /// The index of the matching rule in config.
    Rule(usize),
    Throttle,
    /// The window ended longer ago than `alerts.max_alert_age`.
    Stale,
}

impl SuppressedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressedBy::Rule(_) => "rule",
            SuppressedBy::Throttle => "throttle",
            SuppressedBy::Stale => "stale",
        }
    }
}

/// The compiled `[[suppress]]` rules.
#[derive(Debug, Clone, Default)]
pub struct Suppression {
    rules: Vec<CompiledRule>,
}

impl Suppression {
    /// Compiles rules; an error gives the failing rule's index and the fix.
    pub fn compile(rules: &[SuppressionRule]) -> Result<Suppression, (usize, String)> {
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| compile_rule(rule).map_err(|fix| (i, fix)))
            .collect::<Result<_, _>>()?;
        Ok(Suppression { rules: compiled })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule that suppresses an alert for `arn` in a window
    /// starting at `window_start` with these event names.
    pub fn matching_rule(
        &self,
        arn: &str,
        window_start: i64,
        window: &ArnWindow,
    ) -> Option<usize> {
        self.rules
            .iter()
            .position(|rule| rule.matches(arn, window_start, window))
    }
}

impl CompiledRule {
    fn matches(&self, arn: &str, window_start: i64, window: &ArnWindow) -> bool {
        if self
            .expires_unix
            .is_some_and(|expiry| window_start >= expiry)
        {
            return false;
        }
        self.arn.is_match(arn)
            && self.event_name.as_ref().is_none_or(|glob| {
                window
                    .event_names
                    .keys()
                    .all(|name| glob.is_match(name.as_ref()))
            })
    }
}

fn compile_rule(rule: &SuppressionRule) -> Result<CompiledRule, String> {
    let arn = ArnMatcher::compile(rule.arn.as_deref(), rule.arn_regex.as_deref())?;
    let event_name = rule
        .event_name
        .as_deref()
        .map(|glob| compile_glob(glob, "event_name"))
        .transpose()?;
    let expires_unix = rule.expires.as_deref().map(parse_expiry).transpose()?;
    Ok(CompiledRule {
        arn,
        event_name,
        expires_unix,
    })
}

fn compile_glob(glob: &str, key: &str) -> Result<GlobMatcher, String> {
    Glob::new(glob)
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("{key} is not a valid glob: {e}"))
}

fn parse_expiry(text: &str) -> Result<i64, String> {
    if let Ok(time) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(time.unix_timestamp());
    }
    Date::parse(text, format_description!("[year]-[month]-[day]"))
        .map(|date| date.midnight().assume_utc().unix_timestamp())
        .map_err(|_| {
            format!(
                "expires {text:?} is neither a date (2027-01-31) nor an RFC 3339 time"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(names: &[&str]) -> ArnWindow {
        ArnWindow {
            count: names.len() as u64,
            event_names: names.iter().map(|n| (Box::from(*n), 1)).collect(),
            ..ArnWindow::default()
        }
    }

    fn rules(rules: &[SuppressionRule]) -> Suppression {
        Suppression::compile(rules).unwrap()
    }

    #[test]
    fn alert_id_is_deterministic_and_distinguishes_arn_and_window() {
        assert_eq!(alert_id("a", 0), alert_id("a", 0));
        assert_ne!(alert_id("a", 0), alert_id("a", 3600));
        assert_ne!(alert_id("a", 0), alert_id("b", 0));
    }

    #[test]
    fn event_name_cap_never_changes_the_unique_count() {
        let baseline = crate::baseline::update(
            None,
            3,
            0,
            crate::baseline::Smoothing::Splunk { cap: 720 },
        );
        let names = window(&["C", "A", "B"]);
        let incident = Incident::open(0);
        let alert = Alert::new(&SpikeFacts {
            arn: "arn:x",
            window_start: 0,
            window_end: 3600,
            window: &names,
            baseline: &baseline,
            thresholds: Thresholds::default(),
            override_rule: None,
            event_name_cap: 2,
            status: Status::New,
            incident: &incident,
            known: &KnownApis::default(),
        });
        assert_eq!(alert.unique_apis_called, 3);
        assert_eq!(alert.event_name, ["A", "B"]);
        assert!(alert.event_name_truncated);
        assert_eq!(alert.window_start, "1970-01-01T00:00:00Z");
        assert_eq!(alert.window_end, "1970-01-01T01:00:00Z");
    }

    #[test]
    fn the_explanation_ranks_calls_and_marks_apis_never_called_before() {
        let mut spike = window(&[]);
        let context = crate::parse::CallContext {
            source_ip: Some("198.51.100.7".into()),
            error_code: None,
            ..Default::default()
        };
        let denied = crate::parse::CallContext {
            error_code: Some("AccessDenied".into()),
            ..context.clone()
        };
        for (i, (name, calls)) in
            [("ListBuckets", 3), ("DeleteTrail", 5), ("GetObject", 1)]
                .into_iter()
                .enumerate()
        {
            spike.event_names.insert(name.into(), calls);
            for call in 0..calls {
                spike.count += 1;
                let how = if name == "DeleteTrail" {
                    &denied
                } else {
                    &context
                };
                spike
                    .context
                    .add(100 + i as i64, Some(&format!("{name}-{call}")), how);
            }
        }
        let mut known = KnownApis::default();
        known.record_window(["ListBuckets", "GetObject"]);
        let baseline = Baseline {
            latest_count: 9,
            num_data_points: 20,
            avg_api_calls: 3.0,
            stdev_api_calls: 2.0,
            last_window_start: 0,
            last_alert_window_start: None,
        };
        let incident = Incident::open(0);
        let alert = Alert::new(&SpikeFacts {
            arn: "arn:x",
            window_start: 0,
            window_end: 3600,
            window: &spike,
            baseline: &baseline,
            thresholds: Thresholds::default(),
            override_rule: Some(1),
            event_name_cap: 10,
            status: Status::New,
            incident: &incident,
            known: &known,
        });
        assert_eq!(alert.z_score, Some(3.0));
        assert_eq!(alert.ratio_to_average, Some(3.0));
        assert_eq!(alert.override_rule, Some(2));
        let e = &alert.explanation;
        let top: Vec<(&str, u64, bool)> = e
            .top_event_names
            .iter()
            .map(|n| (n.value.as_str(), n.count, n.new))
            .collect();
        assert_eq!(
            top,
            [
                ("DeleteTrail", 5, true),
                ("ListBuckets", 3, false),
                ("GetObject", 1, false)
            ]
        );
        assert_eq!(e.new_event_names, ["DeleteTrail"]);
        assert_eq!(e.known_apis, 2);
        assert_eq!((e.failed_calls, e.failure_share), (5, 5.0 / 9.0));
        assert_eq!(e.top_error_codes[0].value, "AccessDenied");
        assert_eq!(e.top_source_ips[0].count, 9);
        assert_eq!(e.first_event_time.as_deref(), Some("1970-01-01T00:01:40Z"));
        assert_eq!(e.sample_event_ids[0], "ListBuckets-0");
        assert!(!e.approximate);
    }

    #[test]
    fn a_resolution_has_its_own_id_and_keeps_the_incident_id() {
        let quiet = window(&[]);
        let baseline = crate::baseline::update(
            None,
            3,
            0,
            crate::baseline::Smoothing::Splunk { cap: 720 },
        );
        let mut incident = Incident::open(3600);
        incident.add_spike(3600, 50);
        let alert = Alert::new(&SpikeFacts {
            arn: "arn:x",
            window_start: 7200,
            window_end: 10800,
            window: &quiet,
            baseline: &baseline,
            thresholds: Thresholds::default(),
            override_rule: None,
            event_name_cap: 10,
            status: Status::Resolved,
            incident: &incident,
            known: &KnownApis::default(),
        });
        assert_eq!(alert.incident_id, alert_id("arn:x", 3600));
        assert_ne!(alert.alert_id, alert_id("arn:x", 7200));
        assert_eq!(
            (alert.number_of_api_calls, alert.incident_peak_api_calls),
            (0, 50)
        );
        assert_eq!(alert.explanation.failure_share, 0.0);
    }

    #[test]
    fn glob_rule_matches_arns() {
        let suppression = rules(&[SuppressionRule {
            arn: Some("arn:aws:sts::*:assumed-role/ci-*".into()),
            ..Default::default()
        }]);
        let w = window(&["ListBuckets"]);
        assert_eq!(
            suppression.matching_rule("arn:aws:sts::1:assumed-role/ci-build/s", 0, &w),
            Some(0)
        );
        assert_eq!(
            suppression.matching_rule("arn:aws:iam::1:user/ci-x", 0, &w),
            None
        );
    }

    #[test]
    fn event_name_rule_needs_every_call_to_match() {
        let suppression = rules(&[SuppressionRule {
            arn_regex: Some(".*:user/backup".into()),
            event_name: Some("Get*".into()),
            ..Default::default()
        }]);
        let arn = "arn:aws:iam::1:user/backup";
        assert_eq!(
            suppression.matching_rule(arn, 0, &window(&["GetObject"])),
            Some(0)
        );
        assert_eq!(
            suppression.matching_rule(arn, 0, &window(&["GetObject", "DeleteBucket"])),
            None
        );
    }

    #[test]
    fn expired_rule_stops_applying() {
        let suppression = rules(&[SuppressionRule {
            arn: Some("*".into()),
            expires: Some("1970-01-02".into()),
            ..Default::default()
        }]);
        let w = window(&["X"]);
        assert_eq!(suppression.matching_rule("a", 86_399, &w), Some(0));
        assert_eq!(suppression.matching_rule("a", 86_400, &w), None);
    }

    #[test]
    fn bad_rules_are_refused_with_the_fix() {
        let both = SuppressionRule {
            arn: Some("*".into()),
            arn_regex: Some(".*".into()),
            ..Default::default()
        };
        assert!(Suppression::compile(&[both])
            .unwrap_err()
            .1
            .contains("exactly one"));
        let bad_regex = SuppressionRule {
            arn_regex: Some("(".into()),
            ..Default::default()
        };
        assert!(Suppression::compile(&[bad_regex])
            .unwrap_err()
            .1
            .contains("arn_regex"));
        let bad_date = SuppressionRule {
            arn: Some("*".into()),
            expires: Some("next week".into()),
            ..Default::default()
        };
        assert!(Suppression::compile(&[bad_date])
            .unwrap_err()
            .1
            .contains("expires"));
    }
}

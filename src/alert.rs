//! Stage 5: the alert a spike produces (SPEC.md section 5), and the rules
//! that suppress alerts before they are produced.
//!
//! An alert is a pure function of the ARN, its window and its baseline:
//! it holds no wall-clock time, so re-sending it after a crash yields the
//! same bytes and the same `alertId`. The JSON field names are the
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
use crate::window::ArnWindow;

/// The Splunk analytic this detection ports.
pub const DETECTION_ID: &str = "ada0f478-84a8-4641-a3f1-d32362d4bd55";
pub const DETECTION_NAME: &str = "Detect Spike in AWS API Activity";
pub const MITRE_TECHNIQUE: &str = "T1078.004";
pub const SCHEMA_VERSION: u32 = 1;

/// Namespace of the version-5 UUIDs used as alert ids; fixed forever, or
/// every re-sent alert would look new.
const ALERT_ID_NAMESPACE: Uuid =
    Uuid::from_u128(0x5f1c_2a7e_93d4_4b8a_a1e6_0c3f_7d29_b814);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Alert {
    pub schema_version: u32,
    pub alert_id: String,
    pub detection_id: String,
    pub detection_name: String,
    pub mitre_attack: Vec<String>,
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
    pub deviation_threshold: f64,
    pub data_point_threshold: u64,
}

/// Deterministic id of the alert for `arn` in the window starting at
/// `window_start`.
pub fn alert_id(arn: &str, window_start: i64) -> String {
    let name = format!("{DETECTION_ID}|{arn}|{window_start}");
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
    pub window: &'a ArnWindow,
    pub baseline: &'a Baseline,
    pub thresholds: Thresholds,
    pub event_name_cap: usize,
}

impl Alert {
    pub fn new(facts: &SpikeFacts<'_>) -> Alert {
        let mut names: Vec<&str> =
            facts.window.event_names.iter().map(AsRef::as_ref).collect();
        names.sort_unstable();
        let unique = names.len() as u64;
        let truncated = names.len() > facts.event_name_cap;
        names.truncate(facts.event_name_cap);
        Alert {
            schema_version: SCHEMA_VERSION,
            alert_id: alert_id(facts.arn, facts.window_start),
            detection_id: DETECTION_ID.into(),
            detection_name: DETECTION_NAME.into(),
            mitre_attack: vec![MITRE_TECHNIQUE.into()],
            user: facts.arn.into(),
            window_start: rfc3339(facts.window_start),
            window_end: rfc3339(facts.window_end),
            number_of_api_calls: facts.baseline.latest_count,
            unique_apis_called: unique,
            event_name: names.into_iter().map(String::from).collect(),
            event_name_truncated: truncated,
            avg_api_calls: facts.baseline.avg_api_calls,
            stdev_api_calls: facts.baseline.stdev_api_calls,
            num_data_points: facts.baseline.num_data_points,
            threshold: facts.thresholds.threshold(facts.baseline),
            deviation_threshold: facts.thresholds.deviation,
            data_point_threshold: facts.thresholds.data_points,
        }
    }

    pub fn to_json(&self) -> String {
        // Plain strings and numbers: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
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

#[derive(Debug, Clone)]
enum ArnMatcher {
    Glob(GlobMatcher),
    Regex(Regex),
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
}

impl SuppressedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressedBy::Rule(_) => "rule",
            SuppressedBy::Throttle => "throttle",
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
        let arn_matches = match &self.arn {
            ArnMatcher::Glob(glob) => glob.is_match(arn),
            ArnMatcher::Regex(regex) => regex.is_match(arn),
        };
        arn_matches
            && self.event_name.as_ref().is_none_or(|glob| {
                window
                    .event_names
                    .iter()
                    .all(|name| glob.is_match(name.as_ref()))
            })
    }
}

fn compile_rule(rule: &SuppressionRule) -> Result<CompiledRule, String> {
    let arn = match (&rule.arn, &rule.arn_regex) {
        (Some(glob), None) => ArnMatcher::Glob(compile_glob(glob, "arn")?),
        (None, Some(pattern)) => {
            let anchored = format!("^(?:{pattern})$");
            ArnMatcher::Regex(
                Regex::new(&anchored)
                    .map_err(|e| format!("arn_regex does not compile: {e}"))?,
            )
        }
        _ => return Err("give exactly one of `arn` (a glob) or `arn_regex`".into()),
    };
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
            event_names: names.iter().map(|n| Box::from(*n)).collect(),
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
        let alert = Alert::new(&SpikeFacts {
            arn: "arn:x",
            window_start: 0,
            window_end: 3600,
            window: &names,
            baseline: &baseline,
            thresholds: Thresholds::default(),
            event_name_cap: 2,
        });
        assert_eq!(alert.unique_apis_called, 3);
        assert_eq!(alert.event_name, ["A", "B"]);
        assert!(alert.event_name_truncated);
        assert_eq!(alert.window_start, "1970-01-01T00:00:00Z");
        assert_eq!(alert.window_end, "1970-01-01T01:00:00Z");
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

//! The alert as an OCSF Detection Finding (class 2004, OCSF 1.3), for
//! SIEMs and security data lakes that ingest OCSF.
//!
//! Everything in the native alert is kept: the standard attributes carry
//! what OCSF has a place for (the ARN as the actor, the window as the
//! finding's first and last seen times, the analytic, ATT&CK), and the
//! baseline statistics go under `unmapped`, as OCSF prescribes for
//! attributes outside its schema. Like the native alert, a finding holds no
//! wall-clock time, so a re-sent finding is byte-for-byte the same.
//! `schemas/ocsf-detection-finding.schema.json` describes what is emitted.

use serde::Serialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::alert::Alert;

pub const OCSF_VERSION: &str = "1.3.0";
const CLASS_UID: u32 = 2004;
const CATEGORY_UID: u32 = 2;
const ACTIVITY_CREATE: u32 = 1;
/// OCSF severity 3, Medium: a statistical anomaly that needs a look, not
/// evidence of compromise on its own.
const SEVERITY_MEDIUM: u32 = 3;
const STATUS_NEW: u32 = 1;
/// OCSF analytic type 3: statistical.
const ANALYTIC_STATISTICAL: u32 = 3;

/// Which shape alerts are produced in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    /// The documented native JSON (`schemas/alert.schema.json`).
    #[default]
    Native,
    /// OCSF Detection Finding (`schemas/ocsf-detection-finding.schema.json`).
    Ocsf,
}

impl AlertFormat {
    pub fn render(self, alert: &Alert) -> String {
        match self {
            AlertFormat::Native => alert.to_json(),
            AlertFormat::Ocsf => detection_finding(alert).to_string(),
        }
    }
}

/// The alert id in a produced payload of either format.
pub fn alert_id_in(payload: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    let id = value
        .get("alertId")
        .or_else(|| value.pointer("/metadata/uid"))?;
    id.as_str().map(str::to_owned)
}

fn epoch_ms(rfc3339: &str) -> i64 {
    OffsetDateTime::parse(rfc3339, &Rfc3339)
        .map(|t| t.unix_timestamp() * 1000)
        .unwrap_or_default()
}

/// The finding for `alert`.
pub fn detection_finding(alert: &Alert) -> Value {
    let start_ms = epoch_ms(&alert.window_start);
    let end_ms = epoch_ms(&alert.window_end);
    let account = alert.user.split(':').nth(4).unwrap_or_default();
    json!({
        "activity_id": ACTIVITY_CREATE,
        "activity_name": "Create",
        "category_uid": CATEGORY_UID,
        "category_name": "Findings",
        "class_uid": CLASS_UID,
        "class_name": "Detection Finding",
        "type_uid": CLASS_UID * 100 + ACTIVITY_CREATE,
        "type_name": "Detection Finding: Create",
        "severity_id": SEVERITY_MEDIUM,
        "severity": "Medium",
        "status_id": STATUS_NEW,
        "status": "New",
        "time": end_ms,
        "start_time": start_ms,
        "end_time": end_ms,
        "message": format!(
            "{} made {} AWS API calls in {} .. {}, above its threshold of {:.1}",
            alert.user, alert.number_of_api_calls, alert.window_start, alert.window_end,
            alert.threshold
        ),
        "metadata": {
            "version": OCSF_VERSION,
            "uid": alert.alert_id,
            "product": {
                "name": "trailspike",
                "vendor_name": "trailspike",
                "version": env!("CARGO_PKG_VERSION"),
            },
        },
        "finding_info": {
            "uid": alert.alert_id,
            "title": "Spike in AWS API activity",
            "desc": format!(
                "{} API calls against a baseline of {:.2} +/- {:.2} over {} windows",
                alert.number_of_api_calls, alert.avg_api_calls, alert.stdev_api_calls,
                alert.num_data_points
            ),
            "types": ["Anomalous API Activity"],
            "first_seen_time": start_ms,
            "last_seen_time": end_ms,
            "analytic": {
                "uid": alert.detection_id,
                "name": alert.detection_name,
                "type_id": ANALYTIC_STATISTICAL,
                "type": "Statistical",
            },
            "attacks": alert.mitre_attack.iter().map(|technique| json!({
                "technique": { "uid": technique, "name": "Valid Accounts: Cloud Accounts" },
                "tactics": [
                    { "uid": "TA0005", "name": "Defense Evasion" },
                    { "uid": "TA0001", "name": "Initial Access" },
                    { "uid": "TA0003", "name": "Persistence" },
                    { "uid": "TA0004", "name": "Privilege Escalation" },
                ],
            })).collect::<Vec<_>>(),
        },
        "actor": { "user": { "uid": alert.user, "account": { "uid": account, "type": "AWS Account" } } },
        "cloud": { "provider": "AWS", "account": { "uid": account } },
        "unmapped": {
            "numberOfApiCalls": alert.number_of_api_calls,
            "uniqueApisCalled": alert.unique_apis_called,
            "eventName": alert.event_name,
            "eventNameTruncated": alert.event_name_truncated,
            "avgApiCalls": alert.avg_api_calls,
            "stdevApiCalls": alert.stdev_api_calls,
            "numDataPoints": alert.num_data_points,
            "threshold": alert.threshold,
            "deviationThreshold": alert.deviation_threshold,
            "dataPointThreshold": alert.data_point_threshold,
            "schemaVersion": alert.schema_version,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Alert, SpikeFacts};
    use crate::baseline::{update, Smoothing};
    use crate::detect::Thresholds;
    use crate::window::ArnWindow;

    fn alert() -> Alert {
        let baseline = update(None, 40, 3600, Smoothing::Adaptive { cap: 720 });
        let window = ArnWindow {
            count: 40,
            event_names: ["ListBuckets".into()].into_iter().collect(),
            ..ArnWindow::default()
        };
        Alert::new(&SpikeFacts {
            arn: "arn:aws:iam::123456789012:user/alice",
            window_start: 3600,
            window_end: 7200,
            window: &window,
            baseline: &baseline,
            thresholds: Thresholds::default(),
            event_name_cap: 10,
        })
    }

    #[test]
    fn finding_carries_the_class_ids_times_and_actor() {
        let finding = detection_finding(&alert());
        assert_eq!(finding["class_uid"], 2004);
        assert_eq!(finding["type_uid"], 200401);
        assert_eq!(finding["time"], 7_200_000);
        assert_eq!(finding["finding_info"]["first_seen_time"], 3_600_000);
        assert_eq!(
            finding["actor"]["user"]["uid"],
            "arn:aws:iam::123456789012:user/alice"
        );
        assert_eq!(finding["cloud"]["account"]["uid"], "123456789012");
        assert_eq!(finding["finding_info"]["uid"], finding["metadata"]["uid"]);
        assert_eq!(
            finding["finding_info"]["attacks"][0]["technique"]["uid"],
            "T1078.004"
        );
        assert_eq!(finding["unmapped"]["numberOfApiCalls"], 40);
    }

    #[test]
    fn rendering_is_deterministic() {
        let a = alert();
        assert_eq!(AlertFormat::Ocsf.render(&a), AlertFormat::Ocsf.render(&a));
        assert_eq!(AlertFormat::Native.render(&a), a.to_json());
    }
}

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

use crate::alert::{Alert, Status, ValueCount};

pub const OCSF_VERSION: &str = "1.3.0";
const CLASS_UID: u32 = 2004;
const CATEGORY_UID: u32 = 2;
/// OCSF severity 3, Medium: a statistical anomaly that needs a look, not
/// evidence of compromise on its own.
const SEVERITY_MEDIUM: u32 = 3;
/// Observable types: IP address and HTTP user agent.
const OBSERVABLE_IP: u32 = 2;
const OBSERVABLE_USER_AGENT: u32 = 16;

/// The finding's activity and status for an incident's stage: one finding
/// (`finding_info.uid`, the incident id) is created, updated while the
/// spike lasts, and closed.
fn activity(status: Status) -> (u32, &'static str, u32, &'static str) {
    match status {
        Status::New => (1, "Create", 1, "New"),
        Status::Ongoing => (2, "Update", 2, "In Progress"),
        Status::Resolved => (3, "Close", 4, "Resolved"),
    }
}
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
    let (activity_id, activity_name, status_id, status) = activity(alert.status);
    let explanation = &alert.explanation;
    let observables: Vec<Value> = [
        (
            &explanation.top_source_ips,
            OBSERVABLE_IP,
            "src_endpoint.ip",
        ),
        (
            &explanation.top_user_agents,
            OBSERVABLE_USER_AGENT,
            "http_request.user_agent",
        ),
    ]
    .into_iter()
    .flat_map(|(values, type_id, name): (&Vec<ValueCount>, u32, &str)| {
        values
            .iter()
            .map(move |v| json!({ "name": name, "type_id": type_id, "value": v.value }))
    })
    .collect();
    let message = match alert.status {
        Status::Resolved => format!(
            "{} is back under its threshold in {} .. {} ({} calls); the spike lasted {} window(s), peak {} calls",
            alert.user, alert.window_start, alert.window_end, alert.number_of_api_calls,
            alert.incident_spike_windows, alert.incident_peak_api_calls
        ),
        Status::New | Status::Ongoing => format!(
            "{} made {} AWS API calls in {} .. {}, above its threshold of {:.1}",
            alert.user, alert.number_of_api_calls, alert.window_start, alert.window_end,
            alert.threshold
        ),
    };
    let incident_start_ms = epoch_ms(&alert.incident_start);
    json!({
        "activity_id": activity_id,
        "activity_name": activity_name,
        "category_uid": CATEGORY_UID,
        "category_name": "Findings",
        "class_uid": CLASS_UID,
        "class_name": "Detection Finding",
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": format!("Detection Finding: {activity_name}"),
        "severity_id": SEVERITY_MEDIUM,
        "severity": "Medium",
        "status_id": status_id,
        "status": status,
        "time": end_ms,
        "start_time": start_ms,
        "end_time": end_ms,
        "message": message,
        "observables": observables,
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
            "uid": alert.incident_id,
            "title": "Spike in AWS API activity",
            "desc": format!(
                "{} API calls against a baseline of {:.2} +/- {:.2} over {} windows",
                alert.number_of_api_calls, alert.avg_api_calls, alert.stdev_api_calls,
                alert.num_data_points
            ),
            "types": ["Anomalous API Activity"],
            "first_seen_time": incident_start_ms,
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
            "zScore": alert.z_score,
            "ratioToAverage": alert.ratio_to_average,
            "overrideRule": alert.override_rule,
            "status": alert.status,
            "incidentSpikeWindows": alert.incident_spike_windows,
            "incidentPeakApiCalls": alert.incident_peak_api_calls,
            "explanation": explanation,
            "schemaVersion": alert.schema_version,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Alert, Incident, SpikeFacts};
    use crate::baseline::{update, Smoothing};
    use crate::detect::Thresholds;
    use crate::summary::KnownApis;
    use crate::window::ArnWindow;

    fn alert() -> Alert {
        let baseline = update(None, 40, 3600, Smoothing::Adaptive { cap: 720 });
        let window = ArnWindow {
            count: 40,
            event_names: [("ListBuckets".into(), 40)].into_iter().collect(),
            ..ArnWindow::default()
        };
        let mut incident = Incident::open(3600);
        incident.add_spike(3600, 40);
        Alert::new(&SpikeFacts {
            arn: "arn:aws:iam::123456789012:user/alice",
            window_start: 3600,
            window_end: 7200,
            window: &window,
            baseline: &baseline,
            thresholds: Thresholds::default(),
            override_rule: None,
            event_name_cap: 10,
            status: Status::New,
            incident: &incident,
            known: &KnownApis::default(),
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
        assert_eq!(finding["activity_id"], 1);
        assert_eq!(
            finding["finding_info"]["attacks"][0]["technique"]["uid"],
            "T1078.004"
        );
        assert_eq!(finding["unmapped"]["numberOfApiCalls"], 40);
    }

    #[test]
    fn an_incident_is_one_finding_created_updated_and_closed() {
        let first = alert();
        let mut ongoing = first.clone();
        ongoing.status = Status::Ongoing;
        ongoing.alert_id = "second window".into();
        ongoing.window_end = "1970-01-01T03:00:00Z".into();
        let mut resolved = first.clone();
        resolved.status = Status::Resolved;
        resolved.alert_id = "third window".into();
        let findings: Vec<Value> = [&first, &ongoing, &resolved]
            .into_iter()
            .map(detection_finding)
            .collect();
        let of = |key: &str| -> Vec<Value> {
            findings.iter().map(|f| f[key].clone()).collect()
        };
        assert_eq!(of("activity_id"), [json!(1), json!(2), json!(3)]);
        assert_eq!(
            of("type_uid"),
            [json!(200401), json!(200402), json!(200403)]
        );
        assert_eq!(of("status_id"), [json!(1), json!(2), json!(4)]);
        for finding in &findings {
            assert_eq!(finding["finding_info"]["uid"], json!(first.incident_id));
            assert_eq!(finding["finding_info"]["first_seen_time"], 3_600_000);
        }
        assert_eq!(findings[1]["finding_info"]["last_seen_time"], 10_800_000);
        assert_ne!(
            findings[1]["metadata"]["uid"],
            findings[0]["metadata"]["uid"]
        );
    }

    #[test]
    fn rendering_is_deterministic() {
        let a = alert();
        assert_eq!(AlertFormat::Ocsf.render(&a), AlertFormat::Ocsf.render(&a));
        assert_eq!(AlertFormat::Native.render(&a), a.to_json());
    }
}

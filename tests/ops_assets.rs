//! Checks of the operations assets that can run without Docker: the
//! Grafana dashboard, the Prometheus rules, the compose file, the
//! Dockerfile and the alert JSON Schema.
//!
//! YAML is read through python3 with PyYAML, schemas are checked with
//! python3's jsonschema, and PromQL with promtool; scripts/test installs
//! all three. Whether the metric names used here exist in a live
//! `/metrics` is tests/metrics_contract.rs's job; the rules' own unit
//! tests are dashboards/prometheus/trailspike.rules.test.yml.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

const TRAILSPIKE: &str = env!("CARGO_BIN_EXE_trailspike");
const DASHBOARD: &str = "dashboards/grafana/trailspike.json";
const RULES: &str = "dashboards/prometheus/trailspike.rules.yml";
const RULE_TESTS: &str = "dashboards/prometheus/trailspike.rules.test.yml";
const PROMETHEUS: &str = "dashboards/prometheus/prometheus.yml";
const COMPOSE: &str = "docker-compose.yml";
const COMPOSE_SCALED: &str = "docker-compose.scaled.yml";
const SCHEMA: &str = "schemas/alert.schema.json";

const INSTALL_HINT: &str =
    "run scripts/test, which installs promtool, PyYAML and jsonschema";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn run(command: &mut Command, stdin: &[u8]) -> Output {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): {INSTALL_HINT}"));
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin).expect("writing stdin");
    drop(input);
    child.wait_with_output().expect("waiting for the child")
}

fn python(script: &str, args: &[&Path], stdin: &[u8]) -> Output {
    run(
        Command::new("python3").arg("-c").arg(script).args(args),
        stdin,
    )
}

/// `path` as JSON; Compose's `!reset` tag (an override that empties a
/// key) reads as null.
fn yaml(path: &str) -> Value {
    let script = "import json, sys, yaml\n\
                  yaml.SafeLoader.add_constructor('!reset', lambda loader, node: None)\n\
                  json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)";
    let out = python(script, &[&repo(path)], b"");
    assert!(
        out.status.success(),
        "parsing {path} as YAML failed ({INSTALL_HINT}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("dashboard is JSON")
}

/// Every panel that is not a row.
fn panels(dashboard: &Value) -> Vec<&Value> {
    dashboard["panels"]
        .as_array()
        .expect("panels array")
        .iter()
        .filter(|p| p["type"] != "row")
        .collect()
}

fn strings<'a>(value: &'a Value, key: &str) -> impl Iterator<Item = &'a str> {
    value[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

#[test]
fn dashboard_panels_each_query_prometheus_through_the_variable() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "trailspike");
    assert!(dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    let variable = dashboard["templating"]["list"]
        .as_array()
        .expect("templating list")
        .iter()
        .find(|v| v["name"] == "DS_PROMETHEUS")
        .expect("a DS_PROMETHEUS variable");
    assert_eq!(variable["type"], "datasource");
    assert_eq!(variable["query"], "prometheus");
    let datasource = json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().expect("panel title");
        assert!(ids.insert(panel["id"].as_u64()), "{title}: duplicate id");
        assert_eq!(panel["datasource"], datasource, "{title}: datasource");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(
                target["datasource"], datasource,
                "{title}: target datasource"
            );
            let expr = target["expr"].as_str().unwrap_or("");
            assert!(!expr.trim().is_empty(), "{title}: empty expr");
        }
        assert!(
            panel["description"].as_str().is_some_and(|d| d.len() > 20),
            "{title}: say what the panel shows"
        );
    }
}

#[test]
fn dashboard_panels_do_not_overlap() {
    let dashboard = dashboard();
    let mut taken = BTreeMap::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let grid = &panel["gridPos"];
        let [x, y, w, h] =
            ["x", "y", "w", "h"].map(|k| grid[k].as_u64().expect("gridPos"));
        assert!(x + w <= 24, "{}: wider than the grid", panel["title"]);
        for row in y..y + h {
            for column in x..x + w {
                if let Some(other) = taken.insert((row, column), panel["title"].clone()) {
                    panic!("{} overlaps {other}", panel["title"]);
                }
            }
        }
    }
}

/// The dashboard's queries with Grafana's variables replaced, so that
/// promtool can parse them as PromQL.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard = dashboard();
    let mut queries = Vec::new();
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let promql = expr
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("$instance", ".+");
            assert!(
                !promql.contains('$'),
                "{}: unknown Grafana variable in {expr}",
                panel["title"]
            );
            let name = format!(
                "dashboard:panel_{}:{}",
                panel["id"],
                target["refId"].as_str().expect("refId")
            );
            queries.push((name, promql));
        }
    }
    queries
}

#[test]
fn dashboard_queries_parse_as_promql() {
    let rules: Vec<Value> = dashboard_queries()
        .into_iter()
        .map(|(record, expr)| json!({"record": record, "expr": expr}))
        .collect();
    let file = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().expect("temp dir");
    // JSON is YAML, which promtool reads.
    let path = dir.path().join("dashboard-queries.yml");
    std::fs::write(&path, file.to_string()).expect("writing the rules file");
    let out = run(
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(&path),
        b"",
    );
    assert!(
        out.status.success(),
        "a dashboard query is not valid PromQL:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dashboard_shows_throughput_lag_bad_input_detection_state_and_process() {
    let exprs: String = dashboard_queries()
        .into_iter()
        .map(|(_, expr)| expr + "\n")
        .collect();
    for name in [
        "trailspike_messages_consumed_total",
        "trailspike_records_counted_total",
        "trailspike_consumer_lag_messages",
        "trailspike_watermark_lag_seconds",
        "trailspike_partition_high_water_lag_seconds",
        "trailspike_records_skipped_total",
        "trailspike_records_rejected_total",
        "trailspike_dead_letter_messages_total",
        "trailspike_window_close_duration_seconds_bucket",
        "trailspike_alerts_produced_total",
        "trailspike_alerts_suppressed_total",
        "trailspike_baseline_arns",
        "trailspike_open_window_arns",
        "trailspike_state_size_bytes",
        "trailspike_checkpoints_deferred_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "trailspike_ready",
    ] {
        assert!(exprs.contains(name), "no dashboard panel queries {name}");
    }
    assert!(
        exprs.contains("histogram_quantile(0.5,"),
        "window close p50"
    );
    assert!(
        exprs.contains("histogram_quantile(0.99,"),
        "window close p99"
    );
}

const ALERTS: [&str; 11] = [
    "TrailspikeDown",
    "TrailspikeNotReady",
    "TrailspikeConsumerLagGrowing",
    "TrailspikeNoRecords",
    "TrailspikeDeadLetterRate",
    "TrailspikeWatermarkStalled",
    "TrailspikeCheckpointsDeferred",
    "TrailspikeTuningReloadRefused",
    "TrailspikeTransactionsAborting",
    "TrailspikePartitionsUnowned",
    "TrailspikeSpikeDetected",
];

#[test]
fn alert_rules_have_for_severity_and_what_to_do() {
    let rules = yaml(RULES);
    let mut names = BTreeSet::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("alerting rules only");
            names.insert(name);
            assert!(rule["for"].is_string(), "{name}: no `for`");
            let severity = rule["labels"]["severity"].as_str().unwrap_or("");
            assert!(
                ["critical", "warning", "info"].contains(&severity),
                "{name}: severity {severity:?}"
            );
            let summary = rule["annotations"]["summary"].as_str().unwrap_or("");
            let description = rule["annotations"]["description"].as_str().unwrap_or("");
            assert!(
                summary.contains("{{ $labels.instance }}"),
                "{name}: summary"
            );
            assert!(description.len() > 150, "{name}: say what to check");
        }
    }
    assert_eq!(names, BTreeSet::from(ALERTS));
}

#[test]
fn every_alert_rule_has_a_firing_and_a_quiet_unit_test() {
    let tests = yaml(RULE_TESTS);
    assert_eq!(tests["rule_files"][0], "trailspike.rules.yml");
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for test in tests["tests"].as_array().expect("tests") {
        for case in test["alert_rule_test"].as_array().into_iter().flatten() {
            let name = case["alertname"].as_str().expect("alertname");
            let expected = case["exp_alerts"].as_array().map_or(0, Vec::len);
            let set = if expected > 0 { &mut fires } else { &mut quiet };
            set.insert(name);
        }
    }
    assert_eq!(fires, BTreeSet::from(ALERTS), "rules with a firing test");
    assert_eq!(quiet, BTreeSet::from(ALERTS), "rules with a quiet test");
}

#[test]
fn prometheus_scrapes_the_compose_service_and_loads_the_rules() {
    let config = yaml(PROMETHEUS);
    assert_eq!(config["global"]["scrape_interval"], "15s");
    assert_eq!(config["rule_files"][0], "trailspike.rules.yml");
    let job = &config["scrape_configs"][0];
    assert_eq!(
        job["job_name"], "trailspike",
        "the rules expect job=\"trailspike\""
    );
    let discovery = &job["dns_sd_configs"][0];
    assert_eq!(
        discovery["names"][0], "trailspike",
        "every replica of the compose service is scraped"
    );
    assert_eq!(discovery["type"], "A");
    assert_eq!(discovery["port"], 9464);
}

fn compose_service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let service = &compose["services"][name];
    assert!(service.is_object(), "compose has no service {name}");
    service
}

#[test]
fn compose_runs_kafka_trailspike_generator_prometheus_and_grafana() {
    let compose = yaml(COMPOSE);
    let names: BTreeSet<&str> = compose["services"]
        .as_object()
        .expect("services")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "kafka",
            "kafka-init",
            "trailspike",
            "generator",
            "prometheus",
            "grafana"
        ])
    );
    let kafka = compose_service(&compose, "kafka");
    assert!(kafka["image"]
        .as_str()
        .unwrap_or("")
        .starts_with("apache/kafka:"));
    assert_eq!(
        kafka["environment"]["KAFKA_PROCESS_ROLES"],
        "broker,controller"
    );
    assert!(kafka["healthcheck"].is_object());

    let init = compose_service(&compose, "kafka-init");
    assert_eq!(init["image"], kafka["image"]);
    assert_eq!(
        init["depends_on"]["kafka"]["condition"], "service_healthy",
        "topics are created once the broker answers"
    );
    let script = init["command"][0].as_str().expect("kafka-init script");
    for topic in [
        "cloudtrail:6",
        "trailspike-alerts:",
        "trailspike-dead-letter:",
    ] {
        assert!(script.contains(topic), "kafka-init does not create {topic}");
    }

    let trailspike = compose_service(&compose, "trailspike");
    assert_eq!(trailspike["build"]["context"], ".");
    assert_eq!(trailspike["build"]["target"], "service");
    let ready = &trailspike["depends_on"]["kafka-init"]["condition"];
    assert_eq!(ready, "service_completed_successfully");
    assert!(trailspike["healthcheck"]["test"]
        .to_string()
        .contains("/readyz"));

    let generator = compose_service(&compose, "generator");
    assert_eq!(generator["build"]["target"], "generator");
    assert_eq!(generator["environment"]["FEED_TOPIC"], "cloudtrail");

    let grafana = compose_service(&compose, "grafana");
    assert_eq!(grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"], "true");
    assert_eq!(
        grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"],
        "Viewer"
    );
}

/// Every `./host/path:/container/path` bind mount names a file or folder
/// of the repository.
#[test]
fn compose_bind_mounts_exist_in_the_repository() {
    let compose = yaml(COMPOSE);
    let mut mounts = 0;
    for (name, service) in compose["services"].as_object().expect("services") {
        for volume in strings(service, "volumes") {
            let Some(source) = volume.strip_prefix("./") else {
                continue;
            };
            let source = source.split(':').next().unwrap_or(source);
            assert!(repo(source).exists(), "{name}: mounts missing {source}");
            mounts += 1;
        }
    }
    assert!(mounts >= 4, "prometheus and grafana mount their files");
    let provider = yaml("dashboards/grafana/provisioning/dashboards/trailspike.yml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("path");
    let grafana = compose_service(&compose, "grafana");
    assert!(
        strings(grafana, "volumes")
            .any(|v| v.ends_with(&format!("{path}/trailspike.json:ro"))),
        "the dashboard provider reads {path}, where compose must mount the JSON"
    );
    let datasources = yaml("dashboards/grafana/provisioning/datasources/prometheus.yml");
    let datasource = &datasources["datasources"][0];
    assert_eq!(datasource["uid"], "prometheus");
    assert_eq!(datasource["url"], "http://prometheus:9090");
}

/// The trailspike service's environment, given to `check-config`, is a
/// config trailspike accepts, with the values compose means.
#[test]
fn compose_environment_is_a_config_trailspike_accepts() {
    let printed = check_compose_environment(&compose_environment(COMPOSE));
    for expected in [
        r#"bootstrap_servers = "kafka:9092""#,
        r#"listen = "0.0.0.0:9464""#,
        r#"dir = "/var/lib/trailspike""#,
        r#"input_topic = "cloudtrail""#,
    ] {
        assert!(printed.contains(expected), "no {expected} in:\n{printed}");
    }
}

/// The scaled-out override, merged over the compose file as `docker
/// compose -f A -f B` merges environments, is a config trailspike accepts
/// with scaling out on; and it drops the shared state volume and host
/// port, which replicas cannot share.
#[test]
fn compose_scaled_override_scales_out_a_config_trailspike_accepts() {
    let mut environment = compose_environment(COMPOSE);
    environment.extend(compose_environment(COMPOSE_SCALED));
    let printed = check_compose_environment(&environment);
    for expected in [
        "[scale_out]\nenabled = true\npartitions = 6\nreplication_factor = 1",
        r#"group_id = "trailspike-scaled""#,
        r#"bootstrap_servers = "kafka:9092""#,
    ] {
        assert!(printed.contains(expected), "no {expected} in:\n{printed}");
    }
    let scaled = yaml(COMPOSE_SCALED);
    let service = compose_service(&scaled, "trailspike");
    assert!(service["volumes"].is_null(), "volumes: !reset []");
    assert!(service["ports"].is_null(), "ports: !reset []");
}

/// The trailspike service's environment in the compose file at `path`.
fn compose_environment(path: &str) -> serde_json::Map<String, Value> {
    let compose = yaml(path);
    compose_service(&compose, "trailspike")["environment"]
        .as_object()
        .expect("environment as a map")
        .clone()
}

/// Runs `check-config` with the shipped config file and `environment`;
/// returns the effective config it printed.
fn check_compose_environment(environment: &serde_json::Map<String, Value>) -> String {
    let mut command = Command::new(TRAILSPIKE);
    command
        .arg("check-config")
        .arg("--config")
        .arg(repo("config/trailspike.toml"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TRAILSPIKE_") && key.contains("__") {
            command.env_remove(key);
        }
    }
    for (key, value) in environment {
        let value = value
            .as_str()
            .map_or_else(|| value.to_string(), String::from);
        command.env(key, value);
    }
    let out = run(&mut command, b"");
    assert!(
        out.status.success(),
        "trailspike refuses the compose environment: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dockerfile_builds_a_locked_release_and_runs_unprivileged() {
    let dockerfile = read("Dockerfile");
    let has = |text: &str| dockerfile.contains(text);
    assert!(has("FROM rust:1-bookworm AS builder"));
    assert!(has("cargo build --release --locked"));
    assert!(has("FROM debian:bookworm-slim AS base"));
    assert!(has("libssl3"));
    assert!(has(
        "COPY config/trailspike.toml /etc/trailspike/trailspike.toml"
    ));
    assert!(repo("config/trailspike.toml").exists());
    assert!(has("COPY --chmod=0755 dashboards/compose/feed-cloudtrail"));
    assert!(repo("dashboards/compose/feed-cloudtrail").exists());
    assert!(has("EXPOSE 9464"));
    // The service stage is last, so a plain `docker build .` makes it.
    let last_stage = dockerfile.rsplit("\nFROM ").next().expect("a stage");
    assert!(last_stage.starts_with("base AS service"), "{last_stage}");
    assert!(last_stage.contains("USER trailspike"));
    assert!(last_stage.contains(r#"ENTRYPOINT ["trailspike"]"#));
    assert!(last_stage
        .contains(r#"CMD ["run", "--config", "/etc/trailspike/trailspike.toml"]"#));
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|line| line.trim() == "target/"));
}

/// Validates JSON lines on stdin against the schema in argv[1]; prints one
/// line per input: `ok` or the errors.
const VALIDATE: &str = r#"
import json, sys
import jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(
    schema, format_checker=jsonschema.FormatChecker())
for line in sys.stdin:
    errors = [e.message for e in validator.iter_errors(json.loads(line))]
    print("; ".join(errors) if errors else "ok")
"#;

fn validate(alerts: &[String]) -> Vec<String> {
    validate_against(SCHEMA, alerts)
}

fn validate_against(schema: &str, alerts: &[String]) -> Vec<String> {
    let input: String = alerts.iter().map(|a| format!("{a}\n")).collect();
    let out = python(VALIDATE, &[&repo(schema)], input.as_bytes());
    assert!(
        out.status.success(),
        "schema validation did not run ({INSTALL_HINT}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// Alerts that `trailspike replay` prints for generated CloudTrail, with
/// extra `TRAILSPIKE_*` config variables.
fn replayed_alerts(env: &[(&str, &str)]) -> Vec<String> {
    let mut generate = Command::new(TRAILSPIKE)
        .args(["generate", "--hours", "200", "--arns", "40"])
        .args(["--rate-per-hour", "300"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting trailspike generate");
    let records = generate.stdout.take().expect("piped stdout");
    let replay = Command::new(TRAILSPIKE)
        .args(["replay", "-"])
        .envs(env.iter().copied())
        .stdin(records)
        .stderr(Stdio::null())
        .output()
        .expect("running trailspike replay");
    assert!(generate.wait().expect("generate exit").success());
    assert!(replay.status.success(), "replay failed");
    String::from_utf8(replay.stdout)
        .expect("UTF-8 alerts")
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn replayed_alerts_match_the_schema() {
    let schema: Value = serde_json::from_str(&read(SCHEMA)).expect("schema is JSON");
    let properties: BTreeSet<&str> = schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .map(String::as_str)
        .collect();
    let required: BTreeSet<&str> = strings(&schema, "required").collect();
    assert_eq!(properties, required, "every field is required");

    let mut alerts = replayed_alerts(&[]);
    let full = alerts.len();
    alerts.extend(replayed_alerts(&[(
        "TRAILSPIKE_ALERTS__EVENT_NAME_CAP",
        "2",
    )]));
    assert!(full > 0, "the generated data has spikes");
    let truncated = alerts[full..]
        .iter()
        .filter(|a| a.contains(r#""eventNameTruncated":true"#))
        .count();
    assert!(truncated > 0, "a capped eventName list is covered too");
    let with_incidents = alerts.len();
    alerts.extend(replayed_alerts(&[(
        "TRAILSPIKE_ALERTS__RESOLVE_INCIDENTS",
        "true",
    )]));
    let resolved = alerts[with_incidents..]
        .iter()
        .filter(|a| a.contains(r#""status":"resolved""#))
        .count();
    assert!(resolved > 0, "resolutions are covered too");
    for alert in &alerts {
        let value: Value = serde_json::from_str(alert).expect("alert is JSON");
        let keys: BTreeSet<&str> = value
            .as_object()
            .expect("alert is an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, properties, "schema and alert fields differ");
    }
    let verdicts = validate(&alerts);
    assert_eq!(verdicts.len(), alerts.len());
    for (alert, verdict) in alerts.iter().zip(&verdicts) {
        assert_eq!(verdict, "ok", "{alert}");
    }
}

#[test]
fn ocsf_findings_match_their_schema() {
    let incidents = ("TRAILSPIKE_ALERTS__RESOLVE_INCIDENTS", "true");
    let findings = replayed_alerts(&[("TRAILSPIKE_ALERTS__FORMAT", "ocsf"), incidents]);
    assert!(!findings.is_empty(), "the generated data has spikes");
    let native = replayed_alerts(&[incidents]);
    assert_eq!(findings.len(), native.len(), "one finding per native alert");
    let closed = findings
        .iter()
        .filter(|f| f.contains(r#""activity_id":3"#))
        .count();
    assert!(closed > 0, "closed findings are covered too");
    let verdicts =
        validate_against("schemas/ocsf-detection-finding.schema.json", &findings);
    assert_eq!(verdicts.len(), findings.len());
    for (finding, verdict) in findings.iter().zip(&verdicts) {
        assert_eq!(verdict, "ok", "{finding}");
    }
    let first: Value = serde_json::from_str(&findings[0]).expect("JSON");
    let alert: Value = serde_json::from_str(&native[0]).expect("JSON");
    assert_eq!(
        first["finding_info"]["uid"], alert["incidentId"],
        "same incident id in both formats"
    );
    assert_eq!(first["metadata"]["uid"], alert["alertId"]);
    assert_eq!(first["class_uid"], 2004);
}

#[test]
fn schema_refuses_alerts_that_break_the_contract() {
    let alert = replayed_alerts(&[]).into_iter().next().expect("an alert");
    let good: Value = serde_json::from_str(&alert).expect("JSON");
    // (what is wrong, field, new value or None to remove the field)
    let edits = [
        ("missing field", "threshold", None),
        ("extra field", "severity", Some(json!("high"))),
        ("schema version", "schemaVersion", Some(json!(1))),
        ("status", "status", Some(json!("closed"))),
        (
            "explanation",
            "explanation",
            Some(json!({"topEventNames": "ListBuckets"})),
        ),
        ("alert id", "alertId", Some(json!("not-a-uuid"))),
        (
            "window time",
            "windowStart",
            Some(json!("2024-05-01 21:00")),
        ),
        ("technique id", "mitreAttack", Some(json!(["TA0001"]))),
        ("count type", "numberOfApiCalls", Some(json!("7"))),
        ("stdev NaN", "stdevApiCalls", Some(Value::Null)),
    ];
    let broken: Vec<String> = edits
        .iter()
        .map(|(_, field, value)| {
            let mut alert = good.clone();
            let fields = alert.as_object_mut().expect("an object");
            match value {
                Some(value) => fields.insert(field.to_string(), value.clone()),
                None => fields.remove(*field),
            };
            alert.to_string()
        })
        .collect();
    let verdicts = validate(&broken);
    for ((what, ..), verdict) in edits.iter().zip(&verdicts) {
        assert_ne!(
            verdict, "ok",
            "the schema accepts an alert with a bad {what}"
        );
    }
}

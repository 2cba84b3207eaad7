//! Configuration: one TOML file, each key overridable from the
//! environment as `TRAILSPIKE_<SECTION>__<KEY>` (for example
//! `TRAILSPIKE_DETECTION__WINDOW=30m`).
//!
//! Unknown keys are errors, every key has a named default, durations are
//! human-readable (`90s`, `15m`, `1h`), and checks that involve more than
//! one key run once at startup and quote every value involved.
//! `config/trailspike.toml` documents every key; a test keeps the two in
//! step.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::alert::{Suppression, SuppressionRule};
use crate::baseline::Smoothing;
use crate::detect::Thresholds;
use crate::ocsf::AlertFormat;
use crate::parse::ParseOptions;
use crate::tuning::{Overrides, ThresholdOverride};
use crate::window::WindowSpec;

/// Environment variables read as config overrides start with this.
pub const ENV_PREFIX: &str = "TRAILSPIKE_";

/// A config that cannot be used, with the key and the fix in the message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Load(Box<figment::Error>),
    #[error("config: key `{key}` = {value}: {fix}")]
    Invalid {
        key: &'static str,
        value: String,
        fix: String,
    },
}

fn invalid(
    key: &'static str,
    value: impl std::fmt::Debug,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: format!("{value:?}"),
        fix: fix.into(),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub detection: DetectionConfig,
    pub alerts: AlertsConfig,
    /// Suppression rules, the streaming form of the analytic's `_filter`
    /// macro.
    pub suppress: Vec<SuppressionRule>,
    /// Per-ARN thresholds, `[[override]]` in the file.
    #[serde(rename = "override")]
    pub overrides: Vec<ThresholdOverride>,
    pub input: InputConfig,
    pub kafka: KafkaConfig,
    pub state: StateConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub reload: ReloadConfig,
    pub scale_out: ScaleOutConfig,
}

/// Which divisor the baseline update uses (SPEC.md section 3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compat {
    /// `d = min(n', smoothing)`.
    #[default]
    Exact,
    /// `d = smoothing` always, as the original Splunk search.
    Splunk,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    pub smoothing: u64,
    pub compat: Compat,
    pub deviation_threshold: f64,
    pub data_point_threshold: u64,
    pub dedupe_event_id: bool,
    pub ignore_service_principals: bool,
    /// Send late records to the dead-letter topic as well as counting them.
    pub dead_letter_late_records: bool,
    /// Count `.../assumed-role/Role/session` as `.../assumed-role/Role`.
    pub collapse_assumed_role_sessions: bool,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            window: Duration::from_secs(3600),
            allowed_lateness: Duration::from_secs(15 * 60),
            idle_timeout: Duration::from_secs(60),
            max_future_skew: Duration::from_secs(3600),
            smoothing: 720,
            compat: Compat::Exact,
            deviation_threshold: 3.0,
            data_point_threshold: 15,
            dedupe_event_id: false,
            ignore_service_principals: false,
            dead_letter_late_records: false,
            collapse_assumed_role_sessions: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// `native` (the documented trailspike JSON) or `ocsf` (OCSF 1.3
    /// Detection Finding, class 2004).
    pub format: AlertFormat,
    /// Longest `eventName` list in an alert; `uniqueApisCalled` stays exact.
    pub event_name_cap: usize,
    /// After an alert for an ARN, suppress its alerts for this long
    /// (event time); `0s` turns throttling off.
    #[serde(with = "humantime_serde")]
    pub throttle: Duration,
    /// Alerts for windows that ended longer ago than this (wall clock) are
    /// counted but not produced, so a first run over weeks of history does
    /// not flood the SIEM; `0s` produces every alert.
    #[serde(with = "humantime_serde")]
    pub max_alert_age: Duration,
    /// Produce a `resolved` alert when an incident's spike ends.
    pub resolve_incidents: bool,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            format: AlertFormat::Native,
            event_name_cap: 100,
            throttle: Duration::ZERO,
            max_alert_age: Duration::ZERO,
            resolve_incidents: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// How often `run` checks the config file for changes to the tuning
    /// (`suppress`, `override`, `alerts.throttle`, `alerts.max_alert_age`);
    /// `0s` reloads on SIGHUP only.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            poll_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Largest message accepted, after gzip decompression.
    pub max_message_bytes: usize,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            max_message_bytes: ParseOptions::default().max_message_bytes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub group_id: String,
    pub input_topic: String,
    pub alerts_topic: String,
    pub dead_letter_topic: String,
    /// How long a clean stop may take: saving state, producing pending
    /// alerts, committing offsets.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// librdkafka properties passed through to every client, such as
    /// `security.protocol` or `sasl.username`. In environment variables an
    /// underscore stands for a dot: `TRAILSPIKE_KAFKA__PROPERTIES__SASL_PASSWORD`.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumer only (`fetch.wait.max.ms`).
    pub consumer_properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only (`linger.ms`).
    pub producer_properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            group_id: "trailspike".into(),
            input_topic: "cloudtrail".into(),
            alerts_topic: "trailspike-alerts".into(),
            dead_letter_topic: "trailspike-dead-letter".into(),
            shutdown_timeout: Duration::from_secs(30),
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The pass-through properties for every client, with environment
    /// spellings (`sasl_password`) turned into librdkafka's (`sasl.password`).
    pub fn librdkafka_properties(&self) -> BTreeMap<String, String> {
        dotted(&self.properties)
    }

    pub fn consumer_librdkafka_properties(&self) -> BTreeMap<String, String> {
        dotted(&self.consumer_properties)
    }

    pub fn producer_librdkafka_properties(&self) -> BTreeMap<String, String> {
        dotted(&self.producer_properties)
    }

    /// `transaction.timeout.ms` of the scaled-out producer: the producer
    /// properties', else the common ones', else trailspike's default.
    pub fn transaction_timeout_ms(&self) -> Result<u64, ConfigError> {
        let key = "transaction.timeout.ms";
        let set = self
            .producer_librdkafka_properties()
            .remove(key)
            .or_else(|| self.librdkafka_properties().remove(key));
        match set {
            None => Ok(DEFAULT_TRANSACTION_TIMEOUT_MS),
            Some(text) => text.parse().map_err(|_| {
                invalid(
                    "kafka.producer_properties.\"transaction.timeout.ms\"",
                    text,
                    "must be a whole number of milliseconds",
                )
            }),
        }
    }
}

/// How long a transaction left open by a killed instance holds back
/// read_committed readers of its partitions, as in Kafka Streams
/// (librdkafka's own default is a minute).
pub const DEFAULT_TRANSACTION_TIMEOUT_MS: u64 = 10_000;

fn dotted(properties: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    properties
        .iter()
        .map(|(key, value)| (key.replace('_', "."), value.clone()))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub dir: PathBuf,
    /// How often open windows and offsets are made durable between
    /// window closes; the most work a crash can make the pipeline redo.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// A baseline whose ARN has made no call for this long (event time) is
    /// deleted, so identities that are gone do not hold memory and disk
    /// forever; `0s` keeps every baseline.
    #[serde(with = "humantime_serde")]
    pub baseline_ttl: Duration,
    /// (window, ARN) entries of open windows kept in memory, about 1 KB
    /// each; beyond it they move to the store's spill area and back when
    /// needed, so a flood of new ARNs costs disk, not memory. Default
    /// 1,000,000.
    pub max_open_arn_windows: usize,
}

/// Below this the spill would thrash: each eviction pass moves an eighth
/// of the bound.
const MIN_OPEN_ARN_WINDOWS: usize = 1000;

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("./trailspike-state"),
            checkpoint_interval: Duration::from_secs(5),
            baseline_ttl: Duration::from_secs(90 * 86_400),
            max_open_arn_windows: 1_000_000,
        }
    }
}

/// Several instances in one consumer group sharing the work
/// ([`crate::kafka::scaled`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScaleOutConfig {
    /// Off: one instance reads every input partition and keeps all state.
    pub enabled: bool,
    /// Partitions of the internal repartition and changelog topics: the
    /// most instances that can share the detection. Fixed once the topics
    /// exist.
    pub partitions: i32,
    /// Replicas of each internal topic; -1 takes the broker's default.
    pub replication_factor: i32,
}

impl Default for ScaleOutConfig {
    fn default() -> Self {
        ScaleOutConfig {
            enabled: false,
            partitions: 6,
            replication_factor: -1,
        }
    }
}

impl ScaleOutConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=10_000).contains(&self.partitions) {
            return Err(invalid(
                "scale_out.partitions",
                self.partitions,
                "must be between 1 and 10000: at least the most instances you \
                 will run",
            ));
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            return Err(invalid(
                "scale_out.replication_factor",
                self.replication_factor,
                "must be -1 (the broker's default.replication.factor) or at least 1",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `trailspike=debug,rdkafka=warn`;
    /// `RUST_LOG`, when set, wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` if given, then the environment, and
    /// checks the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, ENV_PREFIX)
    }

    fn load_from(file: Option<&Path>, prefix: &str) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(invalid(
                    "--config",
                    path.display().to_string(),
                    "no such file; pass the path of a TOML file such as config/trailspike.toml",
                ));
            }
            figment = figment.merge(Toml::file(path));
        }
        // Only `SECTION__KEY` variables are config; others with the prefix
        // (TRAILSPIKE_CONFIG, test settings) are not. librdkafka properties
        // are taken as raw text below: parsed, a password of digits would
        // turn into a number, fail to extract, and be quoted in the error.
        let env = Env::prefixed(prefix)
            .filter(|key| {
                key.as_str().contains("__") && property_path(key.as_str()).is_none()
            })
            .split("__");
        figment = figment.merge(env);
        for (path, value) in raw_property_variables(prefix) {
            figment = figment.merge(Serialized::default(&path, value));
        }
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document alone, for tests and `check-config`.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.detection.validate()?;
        if self.alerts.event_name_cap == 0 {
            return Err(invalid("alerts.event_name_cap", 0, "must be at least 1"));
        }
        if self.input.max_message_bytes < 1024 {
            return Err(invalid(
                "input.max_message_bytes",
                self.input.max_message_bytes,
                "must be at least 1024 bytes",
            ));
        }
        if self.state.max_open_arn_windows < MIN_OPEN_ARN_WINDOWS {
            return Err(invalid(
                "state.max_open_arn_windows",
                self.state.max_open_arn_windows,
                format!(
                    "must be at least {MIN_OPEN_ARN_WINDOWS} (default 1000000); \
                     entries beyond it spill to state.dir"
                ),
            ));
        }
        self.kafka.validate()?;
        self.scale_out.validate()?;
        if self.scale_out.enabled {
            self.check_transaction_timeout()?;
        }
        self.suppression()?;
        self.overrides()?;
        Ok(())
    }

    /// Scaled out, a transaction stays open for a checkpoint interval; the
    /// broker aborts one open past `transaction.timeout.ms`, which would
    /// stop the instance, so the interval must leave room.
    fn check_transaction_timeout(&self) -> Result<(), ConfigError> {
        let timeout_ms = self.kafka.transaction_timeout_ms()?;
        let interval_ms = self.state.checkpoint_interval.as_millis() as u64;
        if interval_ms * 2 > timeout_ms {
            return Err(invalid(
                "state.checkpoint_interval",
                humantime::format_duration(self.state.checkpoint_interval).to_string(),
                format!(
                    "with scale_out.enabled it must be at most half of the producer's \
                     transaction.timeout.ms ({timeout_ms} ms): lower it, or raise \
                     [kafka.producer_properties] \"transaction.timeout.ms\""
                ),
            ));
        }
        Ok(())
    }

    /// The compiled threshold overrides.
    pub fn overrides(&self) -> Result<Overrides, ConfigError> {
        Overrides::compile(&self.overrides).map_err(rule_error(
            "override",
            "override",
            &self.overrides,
        ))
    }

    /// The compiled suppression rules.
    pub fn suppression(&self) -> Result<Suppression, ConfigError> {
        Suppression::compile(&self.suppress).map_err(rule_error(
            "suppress",
            "rule",
            &self.suppress,
        ))
    }

    /// Settings of the parse stage.
    pub fn parse_options(&self) -> ParseOptions {
        ParseOptions {
            max_message_bytes: self.input.max_message_bytes,
            ignore_service_principals: self.detection.ignore_service_principals,
        }
    }

    /// The config as TOML with secret values replaced, safe to print.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        let kafka = &mut shown.kafka;
        for properties in [
            &mut kafka.properties,
            &mut kafka.consumer_properties,
            &mut kafka.producer_properties,
        ] {
            for (key, value) in properties.iter_mut() {
                if is_secret_property(key) {
                    *value = "<redacted>".into();
                }
            }
        }
        toml_string(&shown)
    }
}

/// The error for the table at an index of `rules` (`[[key]]`) that does
/// not compile, quoting it as `label N`, N from 1.
fn rule_error<'r, T: std::fmt::Debug>(
    key: &'static str,
    label: &'static str,
    rules: &'r [T],
) -> impl FnOnce((usize, String)) -> ConfigError + 'r {
    move |(index, fix)| ConfigError::Invalid {
        key,
        value: format!("{label} {} ({:?})", index + 1, rules[index]),
        fix,
    }
}

fn toml_string(config: &Config) -> String {
    // Serializing our own plain structs cannot fail; a failure would be a
    // bug in the types, shown in place of the config rather than hidden.
    toml::to_string_pretty(config)
        .unwrap_or_else(|e| format!("# cannot render config: {e}"))
}

/// The config path (`kafka.properties.sasl_password`) of a variable name
/// without its prefix (`KAFKA__PROPERTIES__SASL_PASSWORD`), when it is a
/// librdkafka property.
fn property_path(unprefixed: &str) -> Option<String> {
    let parts: Vec<String> = unprefixed.split("__").map(str::to_lowercase).collect();
    let is_property_map = matches!(
        parts.get(1).map(String::as_str),
        Some("properties" | "consumer_properties" | "producer_properties")
    );
    (parts.len() == 3 && parts[0] == "kafka" && is_property_map).then(|| parts.join("."))
}

/// librdkafka properties from the environment, as the exact text given.
fn raw_property_variables(prefix: &str) -> Vec<(String, String)> {
    std::env::vars()
        .filter_map(|(name, value)| {
            let unprefixed = name.strip_prefix(prefix)?;
            Some((property_path(unprefixed)?, value))
        })
        .collect()
}

/// librdkafka properties whose values must never be printed or logged.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.replace('_', ".");
    key.contains("password") || key.contains("secret") || key.ends_with(".key.pem")
}

impl DetectionConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let window = self.window;
        if window < Duration::from_secs(1) || window.subsec_nanos() != 0 {
            return Err(invalid(
                "detection.window",
                humantime::format_duration(window).to_string(),
                "must be a whole number of seconds, at least 1s (e.g. \"1h\")",
            ));
        }
        if 86_400 % window.as_secs() != 0 && window.as_secs() % 86_400 != 0 {
            return Err(invalid(
                "detection.window",
                humantime::format_duration(window).to_string(),
                "must divide a day or be whole days, so windows line up with UTC days",
            ));
        }
        if self.allowed_lateness.subsec_nanos() != 0 {
            return Err(invalid(
                "detection.allowed_lateness",
                humantime::format_duration(self.allowed_lateness).to_string(),
                "must be a whole number of seconds",
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(invalid(
                "detection.idle_timeout",
                "0s",
                "must be positive, or a partition would never hold the watermark",
            ));
        }
        if self.smoothing == 0 {
            return Err(invalid(
                "detection.smoothing",
                0,
                "must be at least 1 (default 720)",
            ));
        }
        if !self.deviation_threshold.is_finite() || self.deviation_threshold < 0.0 {
            return Err(invalid(
                "detection.deviation_threshold",
                self.deviation_threshold,
                "must be a finite number >= 0 (default 3)",
            ));
        }
        Ok(())
    }

    pub fn window_spec(&self) -> WindowSpec {
        WindowSpec {
            width_secs: self.window.as_secs() as i64,
            allowed_lateness_secs: self.allowed_lateness.as_secs() as i64,
        }
    }

    pub fn smoothing(&self) -> Smoothing {
        match self.compat {
            Compat::Exact => Smoothing::Adaptive {
                cap: self.smoothing,
            },
            Compat::Splunk => Smoothing::Splunk {
                cap: self.smoothing,
            },
        }
    }

    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            deviation: self.deviation_threshold,
            data_points: self.data_point_threshold,
        }
    }
}

impl KafkaConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let topics = [
            ("kafka.input_topic", &self.input_topic),
            ("kafka.alerts_topic", &self.alerts_topic),
            ("kafka.dead_letter_topic", &self.dead_letter_topic),
        ];
        for (key, topic) in topics {
            if topic.is_empty() {
                return Err(invalid(key, topic, "must name a topic"));
            }
        }
        for (i, (key, topic)) in topics.iter().enumerate() {
            if let Some((other, _)) = topics[..i].iter().find(|(_, t)| t == topic) {
                return Err(invalid(
                    key,
                    topic,
                    format!("is also {other} = {topic:?}; each needs its own topic"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(toml: &str) -> String {
        Config::from_toml(toml).unwrap_err().to_string()
    }

    #[test]
    fn empty_file_gives_the_spec_defaults() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.detection.window, Duration::from_secs(3600));
        assert_eq!(config.detection.allowed_lateness, Duration::from_secs(900));
        assert_eq!(config.detection.smoothing, 720);
        assert_eq!(config.detection.thresholds(), Thresholds::default());
    }

    #[test]
    fn durations_are_human_readable() {
        let config = Config::from_toml("[detection]\nwindow = \"30m\"\n").unwrap();
        assert_eq!(config.detection.window, Duration::from_secs(1800));
    }

    #[test]
    fn unknown_key_is_named() {
        let message = error_of("[detection]\nwindw = \"1h\"\n");
        assert!(message.contains("windw"), "{message}");
        assert!(
            message.contains("window"),
            "lists the allowed keys: {message}"
        );
    }

    #[test]
    fn bad_value_names_key_and_fix() {
        let message = error_of("[detection]\nwindow = \"7m\"\n");
        assert!(message.contains("detection.window"), "{message}");
        assert!(message.contains("divide a day"), "{message}");
        let message = error_of("[detection]\nwindow = \"soon\"\n");
        assert!(message.contains("window"), "{message}");
    }

    #[test]
    fn same_topic_twice_quotes_both_keys() {
        let message = error_of("[kafka]\ninput_topic = \"ct\"\nalerts_topic = \"ct\"\n");
        assert!(message.contains("kafka.alerts_topic"), "{message}");
        assert!(message.contains("kafka.input_topic"), "{message}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the error type
    fn environment_overrides_file_and_ignores_plain_prefixed_variables() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[detection]\nwindow = \"2h\"\n")?;
            jail.set_env("TSTEST_DETECTION__WINDOW", "30m");
            jail.set_env("TSTEST_KAFKA__PROPERTIES__SASL_PASSWORD", "0123456789");
            jail.set_env("TSTEST_KAFKA__CONSUMER_PROPERTIES__FETCH_WAIT_MAX_MS", "50");
            jail.set_env("TSTEST_CONFIG", "ignored.toml");
            let config = Config::load_from(Some(Path::new("t.toml")), "TSTEST_")
                .map_err(|e| e.to_string())?;
            assert_eq!(config.detection.window, Duration::from_secs(1800));
            let properties = config.kafka.librdkafka_properties();
            assert_eq!(
                properties["sasl.password"], "0123456789",
                "digits stay text"
            );
            assert!(!config.to_redacted_toml().contains("0123456789"));
            let consumer = config.kafka.consumer_librdkafka_properties();
            assert_eq!(consumer["fetch.wait.max.ms"], "50");
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_named() {
        let error = Config::load(Some(Path::new("/nonexistent/t.toml"))).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/t.toml"), "{error}");
    }

    #[test]
    fn scaled_out_checkpoints_must_fit_twice_in_the_transaction_timeout() {
        let scaled =
            "[scale_out]\nenabled = true\n[state]\ncheckpoint_interval = \"6s\"\n";
        let error = Config::from_toml(scaled).unwrap_err().to_string();
        assert!(error.contains("state.checkpoint_interval"), "{error}");
        assert!(error.contains("10000 ms"), "{error}");
        let raised = format!(
            "{scaled}[kafka.producer_properties]\n\"transaction.timeout.ms\" = \"12000\"\n"
        );
        assert!(Config::from_toml(&raised).is_ok());
        let single = "[state]\ncheckpoint_interval = \"6s\"\n";
        assert!(Config::from_toml(single).is_ok(), "only scaled out");
        let bad = format!(
            "{scaled}[kafka.properties]\n\"transaction.timeout.ms\" = \"soon\"\n"
        );
        let error = Config::from_toml(&bad).unwrap_err().to_string();
        assert!(error.contains("transaction.timeout.ms"), "{error}");
    }

    #[test]
    fn shipped_config_file_documents_every_key_with_its_default() {
        let shipped = include_str!("../config/trailspike.toml");
        let config = Config::from_toml(shipped).unwrap();
        assert_eq!(config, Config::default(), "shipped values are the defaults");
        let defaults = toml_string(&Config::default());
        let mut section = String::new();
        for line in defaults.lines() {
            if line.starts_with('[') {
                section = line.trim_matches(['[', ']']).to_string();
            } else if let Some((key, _)) = line.split_once(" = ") {
                let documented = format!("{key} = ");
                assert!(
                    shipped.contains(&documented),
                    "config/trailspike.toml lacks {section}.{key}"
                );
            }
        }
    }
}

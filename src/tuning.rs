//! What operators change while trailspike runs: suppression rules,
//! per-ARN threshold overrides, throttling and the catch-up age. Together
//! they are the [`Tuning`], compiled from the config file and replaced
//! whole on SIGHUP or when the file changes ([`RulesFile`]); a file that
//! does not load leaves the running tuning as it was.
//!
//! Everything else in the config (windows, Kafka, the store) shapes state
//! and takes a restart.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::alert::{ArnMatcher, Suppression};
use crate::config::{Config, ConfigError};
use crate::detect::Thresholds;

/// One `[[override]]` table: other thresholds for the ARNs it matches,
/// typically noisy automation whose bursts are routine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdOverride {
    /// Glob over the ARN, e.g. `arn:aws:sts::*:assumed-role/etl-*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// Regular expression over the whole ARN, instead of `arn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn_regex: Option<String>,
    /// Replaces `detection.deviation_threshold` for these ARNs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deviation_threshold: Option<f64>,
    /// Replaces `detection.data_point_threshold` for these ARNs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_point_threshold: Option<u64>,
    /// Why the override exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone)]
struct CompiledOverride {
    arn: ArnMatcher,
    deviation: Option<f64>,
    data_points: Option<u64>,
}

/// The compiled `[[override]]` tables; the first that matches an ARN wins.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    rules: Vec<CompiledOverride>,
}

impl Overrides {
    /// Compiles overrides; an error gives the failing one's index and the fix.
    pub fn compile(
        overrides: &[ThresholdOverride],
    ) -> Result<Overrides, (usize, String)> {
        let rules = overrides
            .iter()
            .enumerate()
            .map(|(i, o)| compile_override(o).map_err(|fix| (i, fix)))
            .collect::<Result<_, _>>()?;
        Ok(Overrides { rules })
    }

    /// The thresholds for `arn`, and the index of the override that set
    /// them, if one did.
    pub fn for_arn(
        &self,
        arn: &str,
        defaults: Thresholds,
    ) -> (Thresholds, Option<usize>) {
        match self.rules.iter().position(|rule| rule.arn.is_match(arn)) {
            Some(index) => {
                let rule = &self.rules[index];
                let thresholds = Thresholds {
                    deviation: rule.deviation.unwrap_or(defaults.deviation),
                    data_points: rule.data_points.unwrap_or(defaults.data_points),
                };
                (thresholds, Some(index))
            }
            None => (defaults, None),
        }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn compile_override(rule: &ThresholdOverride) -> Result<CompiledOverride, String> {
    let arn = ArnMatcher::compile(rule.arn.as_deref(), rule.arn_regex.as_deref())?;
    if rule.deviation_threshold.is_none() && rule.data_point_threshold.is_none() {
        return Err("set deviation_threshold, data_point_threshold or both".into());
    }
    if let Some(deviation) = rule.deviation_threshold {
        if !deviation.is_finite() || deviation < 0.0 {
            return Err(format!(
                "deviation_threshold {deviation} must be a finite number >= 0"
            ));
        }
    }
    Ok(CompiledOverride {
        arn,
        deviation: rule.deviation_threshold,
        data_points: rule.data_point_threshold,
    })
}

/// The rules that decide which spikes become alerts, replaceable while
/// running.
#[derive(Debug, Clone, Default)]
pub struct Tuning {
    pub suppression: Suppression,
    pub overrides: Overrides,
    /// Event-time seconds after an alert during which an ARN's further
    /// alerts are suppressed; 0 turns throttling off.
    pub throttle_secs: i64,
    /// Alerts for windows that ended longer ago than this (wall clock) are
    /// counted but not produced; 0 produces them all.
    pub max_alert_age_secs: i64,
}

impl Tuning {
    pub fn from_config(config: &Config) -> Result<Tuning, ConfigError> {
        Ok(Tuning {
            suppression: config.suppression()?,
            overrides: config.overrides()?,
            throttle_secs: config.alerts.throttle.as_secs() as i64,
            max_alert_age_secs: config.alerts.max_alert_age.as_secs() as i64,
        })
    }
}

/// The config file the tuning comes from, and when it was last read.
///
/// Changes are found by polling the file's modification time and size
/// rather than by filesystem notifications: Kubernetes updates a mounted
/// ConfigMap by swapping a symlink, which a watch on the file never sees.
pub struct RulesFile {
    path: PathBuf,
    seen: Option<(SystemTime, u64)>,
}

/// The result of reading the rules again.
pub enum Reload {
    Unchanged,
    Loaded {
        tuning: Box<Tuning>,
        /// Sections that changed too but only take effect at a restart.
        needs_restart: Vec<&'static str>,
    },
    /// The file does not load; the message names the key and the fix.
    Refused(String),
}

impl RulesFile {
    pub fn new(path: &Path) -> RulesFile {
        RulesFile {
            path: path.to_path_buf(),
            seen: stamp(path),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file changed since it was last read.
    pub fn changed(&self) -> bool {
        stamp(&self.path) != self.seen
    }

    /// Reads the file (with the environment on top, as at startup) and
    /// compiles its tuning. `force` reads it even if unchanged (SIGHUP).
    /// A refused file is not read again until it changes. `running` is the
    /// config the process started with, to name what a reload cannot change.
    pub fn reload(&mut self, force: bool, running: &Config) -> Reload {
        if !force && !self.changed() {
            return Reload::Unchanged;
        }
        self.seen = stamp(&self.path);
        let loaded = Config::load(Some(&self.path)).and_then(|config| {
            Tuning::from_config(&config).map(|tuning| (config, tuning))
        });
        match loaded {
            Ok((config, tuning)) => Reload::Loaded {
                tuning: Box::new(tuning),
                needs_restart: needs_restart(running, &config),
            },
            Err(error) => Reload::Refused(error.to_string()),
        }
    }
}

/// The sections of `loaded` that differ from `running` outside the tuning.
fn needs_restart(running: &Config, loaded: &Config) -> Vec<&'static str> {
    let mut alerts = loaded.alerts.clone();
    alerts.throttle = running.alerts.throttle;
    alerts.max_alert_age = running.alerts.max_alert_age;
    [
        ("detection", running.detection != loaded.detection),
        ("alerts", running.alerts != alerts),
        ("input", running.input != loaded.input),
        ("kafka", running.kafka != loaded.kafka),
        ("state", running.state != loaded.state),
        ("metrics", running.metrics != loaded.metrics),
        ("log", running.log != loaded.log),
        ("reload", running.reload != loaded.reload),
    ]
    .into_iter()
    .filter_map(|(section, changed)| changed.then_some(section))
    .collect()
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(rules: &[ThresholdOverride]) -> Overrides {
        Overrides::compile(rules).unwrap()
    }

    #[test]
    fn the_first_matching_override_sets_only_what_it_names() {
        let defaults = Thresholds::default();
        let o = overrides(&[
            ThresholdOverride {
                arn: Some("arn:aws:sts::*:assumed-role/etl-*".into()),
                deviation_threshold: Some(6.0),
                ..Default::default()
            },
            ThresholdOverride {
                arn_regex: Some(".*".into()),
                data_point_threshold: Some(100),
                ..Default::default()
            },
        ]);
        let (etl, index) = o.for_arn("arn:aws:sts::1:assumed-role/etl-load/s", defaults);
        assert_eq!((etl.deviation, etl.data_points, index), (6.0, 15, Some(0)));
        let (other, index) = o.for_arn("arn:aws:iam::1:user/alice", defaults);
        assert_eq!(
            (other.deviation, other.data_points, index),
            (3.0, 100, Some(1))
        );
        assert_eq!(
            Overrides::default().for_arn("x", defaults),
            (defaults, None)
        );
    }

    #[test]
    fn an_override_that_changes_nothing_or_has_a_bad_value_is_refused() {
        let empty = ThresholdOverride {
            arn: Some("*".into()),
            ..Default::default()
        };
        assert!(Overrides::compile(&[empty])
            .unwrap_err()
            .1
            .contains("set deviation"));
        let negative = ThresholdOverride {
            arn: Some("*".into()),
            deviation_threshold: Some(-1.0),
            ..Default::default()
        };
        assert!(Overrides::compile(&[negative])
            .unwrap_err()
            .1
            .contains(">= 0"));
        let no_arn = ThresholdOverride {
            deviation_threshold: Some(5.0),
            ..Default::default()
        };
        assert!(Overrides::compile(&[no_arn])
            .unwrap_err()
            .1
            .contains("exactly one"));
    }

    #[test]
    fn a_changed_file_loads_and_a_broken_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trailspike.toml");
        std::fs::write(&path, "[alerts]\nthrottle = \"1h\"\n").unwrap();
        let running = Config::default();
        let mut file = RulesFile::new(&path);
        assert!(matches!(file.reload(false, &running), Reload::Unchanged));
        match file.reload(true, &running) {
            Reload::Loaded {
                tuning,
                needs_restart,
            } => {
                assert_eq!(tuning.throttle_secs, 3600);
                assert!(needs_restart.is_empty(), "{needs_restart:?}");
            }
            _ => panic!("a forced reload of a good file loads it"),
        }
        std::fs::write(&path, "[detection]\nwindow = \"30m\"\n").unwrap();
        match file.reload(false, &running) {
            Reload::Loaded { needs_restart, .. } => {
                assert_eq!(needs_restart, ["detection"])
            }
            _ => panic!("a changed window loads, for the tuning, and asks for a restart"),
        }
        std::fs::write(
            &path,
            "[[override]]\narn = \"*\"\ndeviation_threshold = \"high\"\n# longer\n",
        )
        .unwrap();
        assert!(file.changed());
        match file.reload(false, &running) {
            Reload::Refused(message) => {
                assert!(message.contains("deviation_threshold"), "{message}")
            }
            _ => panic!("a broken file is refused"),
        }
        assert!(
            !file.changed(),
            "a refused file is not read again until it changes"
        );
    }
}

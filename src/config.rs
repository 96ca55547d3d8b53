//! Configuration: the TOML file a user edits, parsed strictly and validated into
//! [`Settings`].
//!
//! It owns the file format (every key documented in `config/babycryd.toml`, unknown keys
//! refused), the defaults that let the daemon run with no file at all, where the file is
//! looked for (`--config`, then `$CONFIGURATION_DIRECTORY`, then
//! `/etc/babycryd/config.toml`) and where models are found. Each pipeline stage defines
//! its own section type next to its code; this module composes them and checks ranges.
//! Parsing is split into [`Config::parse_str`] (pure, for tests and fuzzing) and
//! [`Config::load`] (reads a file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The whole configuration file, as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub models: ModelsConfig,
    /// Per-class probability thresholds of the cry-reason model; a class missing here
    /// uses the model sidecar's threshold. Below its threshold a reason is `uncertain`.
    pub thresholds: BTreeMap<String, f32>,
    pub logging: LoggingConfig,
    pub audio: crate::source::AudioConfig,
    pub gate: crate::gate::GateConfig,
    pub detector: crate::decision::DetectorConfig,
    pub episode: crate::decision::EpisodeConfig,
    pub mqtt: crate::mqtt::MqttConfig,
    pub daemon: crate::daemon::DaemonConfig,
}

/// `[models]`: which models to load and from where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Directory holding the models; empty means search the default places.
    pub dir: String,
    /// The cry detector, relative to `dir`; empty disables it (every gate opening counts as crying).
    pub detector: String,
    /// The cry-reason classifier, relative to `dir`.
    pub reason: String,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            dir: String::new(),
            detector: "cry-detector.onnx".into(),
            reason: "cry-reason.onnx".into(),
        }
    }
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// tracing filter, e.g. "info" or "babycry=debug"; RUST_LOG wins when set.
    pub level: String,
    /// "plain" (no colour, for journald) or "json".
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Plain,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

/// A validated configuration: every range checked, paths resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub config: Config,
    /// Where the file came from (None: built-in defaults).
    pub source: Option<PathBuf>,
    /// Resolved path of the detector model, if one is configured.
    pub detector_model: Option<PathBuf>,
    /// Resolved path of the reason model.
    pub reason_model: PathBuf,
}

/// Where the config file is looked for when `--config` is not given.
pub fn default_config_path() -> Option<PathBuf> {
    config_path_from(
        std::env::var_os("CONFIGURATION_DIRECTORY").as_deref(),
        Path::new("/etc/babycryd/config.toml"),
    )
}

/// The first of `<configuration_directory>/config.toml` and `etc` that exists. The unit
/// sets `ConfigurationDirectory=` whether or not anyone wrote a config there, so a
/// missing file means the defaults, not an error.
fn config_path_from(
    configuration_directory: Option<&std::ffi::OsStr>,
    etc: &Path,
) -> Option<PathBuf> {
    // systemd may pass several directories separated by ':'; ours is the first.
    let from_systemd = configuration_directory.and_then(|dir| {
        let dir = dir.to_string_lossy();
        let first = dir.split(':').next().unwrap_or_default();
        (!first.is_empty()).then(|| Path::new(first).join("config.toml"))
    });
    from_systemd
        .into_iter()
        .chain(std::iter::once(etc.to_owned()))
        .find(|p| p.exists())
}

/// Places searched for models when `[models] dir` is empty, in order.
pub fn model_search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("BABYCRYD_MODELS") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(bin_dir) = exe.parent() {
            dirs.push(bin_dir.join("models"));
            // target/{debug,release}/babycryd in a checkout: the repository's models/.
            if let Some(repo) = bin_dir.parent().and_then(Path::parent) {
                dirs.push(repo.join("models"));
            }
        }
    }
    dirs.push(PathBuf::from("models"));
    dirs.push(PathBuf::from("/usr/share/babycryd/models"));
    dirs
}

/// Where and why TOML text does not parse, without quoting the text: toml's own message
/// shows the offending line, and serde's quotes the bad value, so a password written
/// without quotes (`password = 84736251`) or with one missing would reach the journal
/// (at start and at every SIGHUP) and `check-config`. On a line that names a password
/// (or a misspelling of one) only the place is given, or an unknown key's name.
fn parse_error_reason(text: &str, e: &toml::de::Error) -> String {
    // A span is byte offsets; one that is not on a character boundary gives no place.
    let Some(before) = e.span().and_then(|span| text.get(..span.start)) else {
        return format!("TOML parse error: {}", e.message());
    };
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_no = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    // An unknown key's message names keys only, never the value: it can be shown there.
    let unknown_key = e.message().starts_with("unknown field");
    let message = if line.to_ascii_lowercase().contains("pass") && !unknown_key {
        "not a valid password setting: a quoted string, e.g. password = \"...\" (the value is not shown)".to_owned()
    } else {
        e.message().split_whitespace().collect::<Vec<_>>().join(" ")
    };
    format!("TOML parse error at line {line_no}, column {column}: {message}")
}

impl Config {
    /// Parses TOML text; `path` only names it in errors.
    pub fn parse_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            reason: parse_error_reason(text, &e),
        })
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_str(&text, path)
    }

    /// Checks every range and resolves paths. `path` names the file in errors.
    pub fn validate(self, source: Option<PathBuf>) -> Result<Settings, ConfigError> {
        let name = source
            .clone()
            .unwrap_or_else(|| PathBuf::from("<defaults>"));
        let invalid = |reason: String| ConfigError::Invalid {
            path: name.clone(),
            reason,
        };
        for (label, &t) in &self.thresholds {
            if !(0.0..=1.0).contains(&t) {
                return Err(invalid(format!(
                    "thresholds.{label} = {t} must be within 0..=1"
                )));
            }
        }
        let level = &self.logging.level;
        if !level.trim().is_empty() {
            if let Some(problem) = log_filter_problem(level) {
                return Err(invalid(format!("logging.level = {level:?}: {problem}")));
            }
        }
        self.audio
            .validate()
            .map_err(|e| invalid(format!("audio.{e}")))?;
        self.gate
            .validate()
            .map_err(|e| invalid(format!("gate.{e}")))?;
        self.detector
            .validate()
            .map_err(|e| invalid(format!("detector.{e}")))?;
        self.episode
            .validate()
            .map_err(|e| invalid(format!("episode.{e}")))?;
        // The episode ends after quiet_seconds without a detector window saying cry, and
        // windows come every hop_seconds: a quiet time under two hops ended it between
        // two windows of one cry, a continuous cry cut into episodes.
        if self.episode.quiet_seconds < 2.0 * self.detector.hop_seconds {
            return Err(invalid(format!(
                "episode.quiet_seconds = {} must be at least twice detector.hop_seconds = {}: \
                 one cry would end its episode between two detector windows",
                self.episode.quiet_seconds, self.detector.hop_seconds
            )));
        }
        self.mqtt
            .validate()
            .map_err(|e| invalid(format!("mqtt.{e}")))?;
        self.daemon
            .validate()
            .map_err(|e| invalid(format!("daemon.{e}")))?;
        let (detector_model, reason_model) = self.resolve_models().map_err(invalid)?;
        // A misspelt label would leave its class on the model's threshold without a word.
        // (A sidecar that does not load is reported when the model is loaded.)
        if !self.thresholds.is_empty() {
            let sidecar = crate::model::Sidecar::load(&crate::model::sidecar_path(&reason_model));
            if let Ok(sidecar) = sidecar {
                if let Some(label) = self.thresholds.keys().find(|l| !sidecar.labels.contains(l)) {
                    return Err(invalid(format!(
                        "thresholds.{label}: not a label of the reason model ({})",
                        sidecar.labels.join(", ")
                    )));
                }
            }
        }
        Ok(Settings {
            config: self,
            source,
            detector_model,
            reason_model,
        })
    }

    fn resolve_models(&self) -> Result<(Option<PathBuf>, PathBuf), String> {
        let dirs = if self.models.dir.is_empty() {
            model_search_dirs()
        } else {
            vec![PathBuf::from(&self.models.dir)]
        };
        let find = |name: &str| -> Result<PathBuf, String> {
            let direct = Path::new(name);
            if direct.is_absolute() {
                // `check-config` must not pass a model `run` then cannot load.
                return if direct.is_file() {
                    Ok(direct.to_owned())
                } else {
                    Err(format!("models: {name} is not a file"))
                };
            }
            dirs.iter()
                .map(|d| d.join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    format!(
                        "models: {name} not found in {}",
                        dirs.iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
        };
        if self.models.reason.is_empty() {
            return Err("models.reason must name the cry-reason model".into());
        }
        let reason = find(&self.models.reason)?;
        let detector = if self.models.detector.is_empty() {
            None
        } else {
            Some(find(&self.models.detector)?)
        };
        Ok((detector, reason))
    }
}

/// Why `spec`, a `[logging] level` or RUST_LOG, would not log what it seems to ask for.
pub fn log_filter_problem(spec: &str) -> Option<String> {
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(spec) {
        return Some(e.to_string());
    }
    // The filter syntax reads a bare word as a target name: a misspelt level ("inof")
    // would be accepted and show only that target's (no) records, so the daemon would
    // log nothing at all, lost microphone and refused password too.
    let word = spec.split(',').map(str::trim).find(|d| {
        !d.is_empty()
            && !d.contains(['=', '['])
            && d.parse::<tracing::level_filters::LevelFilter>().is_err()
    })?;
    Some(format!(
        "{word:?} is not a level (error, warn, info, debug, trace, off) or a target=level directive"
    ))
}

/// Loads the settings: the explicit path, else the default places, else built-in defaults.
/// `uses_mqtt` false (classify, bench, `run --no-mqtt`) turns `[mqtt]` off, so its
/// password and TLS files are not read: another user may run `babycryd classify` with the
/// system config whose password file only the daemon's user can read.
pub fn load_settings(explicit: Option<&Path>, uses_mqtt: bool) -> Result<Settings, ConfigError> {
    let path = explicit.map(Path::to_owned).or_else(default_config_path);
    let mut config = match &path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    config.mqtt.enabled &= uses_mqtt;
    if let Some(p) = path
        .as_deref()
        .filter(|_| config.mqtt.enabled && !config.mqtt.password.expose().is_empty())
    {
        warn_if_readable_by_everyone(p);
    }
    if let Some(warning) = config
        .mqtt
        .unused_password_warning()
        .filter(|_| config.mqtt.enabled)
    {
        tracing::warn!("{warning}");
    }
    config.validate(path)
}

/// The packaged config is readable by everyone (mode 644), and a password written in it
/// is then every local user's: said once at each load (a password_file readable by
/// everyone is refused; this one is kept, so that an upgrade does not stop the monitor).
fn warn_if_readable_by_everyone(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(mode) = std::fs::metadata(path).map(|m| m.permissions().mode()) else {
        return;
    };
    if mode & 0o004 != 0 {
        tracing::warn!(
            "{}: holds the MQTT password and is readable by everyone (mode {:o}): put it in \
             password_file (chmod 600) or in BABYCRYD_MQTT_PASSWORD (/etc/babycryd/mqtt.env)",
            path.display(),
            mode & 0o777
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_configuration_directory_means_the_defaults() {
        let systemd = tempfile::tempdir().unwrap();
        let etc = tempfile::tempdir().unwrap();
        let etc_file = etc.path().join("config.toml");
        let dirs = format!("{}:/elsewhere", systemd.path().display());
        let find = || config_path_from(Some(std::ffi::OsStr::new(&dirs)), &etc_file);
        assert_eq!(find(), None);
        std::fs::write(&etc_file, "").unwrap();
        assert_eq!(find(), Some(etc_file.clone()));
        let ours = systemd.path().join("config.toml");
        std::fs::write(&ours, "").unwrap();
        assert_eq!(find(), Some(ours));
        assert_eq!(config_path_from(None, &etc_file), Some(etc_file));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let e = Config::parse_str("[models]\nreasn = \"x\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("reasn") && e.contains("c.toml"), "{e}");
        let e = Config::parse_str("colour = 1\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn the_documented_example_parses_to_the_defaults() {
        let text = include_str!("../config/babycryd.toml");
        let parsed = Config::parse_str(text, Path::new("config/babycryd.toml")).unwrap();
        assert_eq!(
            parsed,
            Config::default(),
            "config/babycryd.toml must state the defaults"
        );
    }

    #[test]
    fn a_password_that_does_not_parse_is_never_quoted_in_the_error() {
        for text in [
            "[mqtt]\nusername = \"baby\"\npassword = 84736251\n",
            "[mqtt]\npassword = \"84736251\n",
            "[mqtt]\npassword = 84736251x\n",
            "[mqtt]\npasword = \"84736251\"\n",
        ] {
            let e = Config::parse_str(text, Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(!e.contains("84736251"), "{text:?}: {e}");
            assert!(
                e.contains("line 2") || e.contains("line 3"),
                "{text:?}: {e}"
            );
        }
        // A misspelt key on such a line is named, with the keys that are allowed.
        let e = Config::parse_str(
            "[mqtt]\npassword_flie = \"/etc/babycryd/84736251\"\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("84736251"), "{e}");
        assert!(
            e.contains("unknown field `password_flie`") && e.contains("password_file"),
            "{e}"
        );
        // Elsewhere the reason is toml's, placed by line and column.
        let e = Config::parse_str("[gate]\nmargin_db = \"ten\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2, column 13") && e.contains("expected f64"),
            "{e}"
        );
    }

    #[test]
    fn a_misspelt_log_level_is_refused_and_directives_are_kept() {
        let with_level = |level: &str| {
            let mut c = Config::default();
            c.logging.level = level.into();
            c.validate(None)
        };
        let e = with_level("inof").unwrap_err().to_string();
        assert!(e.contains("\"inof\" is not a level"), "{e}");
        let e = with_level("warn,babycyr").unwrap_err().to_string();
        assert!(e.contains("\"babycyr\" is not a level"), "{e}");
        for ok in [
            "info",
            "WARN",
            "off",
            "warn,babycry=debug",
            "babycry::mqtt=trace",
            " debug ",
        ] {
            assert!(with_level(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn thresholds_out_of_range_are_refused() {
        let c = Config::parse_str("[thresholds]\nhungry = 1.5\n", Path::new("c.toml")).unwrap();
        let e = c.validate(Some("c.toml".into())).unwrap_err().to_string();
        assert!(e.contains("thresholds.hungry"), "{e}");
    }
}
